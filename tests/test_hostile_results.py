"""Numbers tied to the artifact: `pgolf submit` and `pgolf verify --runs` refuse a result.json that its
artifact, its scored counts or its log do not back, naming the file."""

from __future__ import annotations

import json
import math

import pytest
from forge import finished_run

from pgolf.cli import main
from pgolf.verify.result_checks import result_problems
from pgolf.verify.run_checks import check_runs


def edit_result(run, **changes):
    path = run / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def submit(run, tmp_path) -> list[str]:
    return ["submit", str(run), "--name", "n", "--author", "a", "--github-id", "g", "--no-export",
            "--out", str(tmp_path / "records")]


def test_a_consistent_run_passes(tmp_path, capsys):
    run = finished_run(tmp_path / "run", 1, 1.2345)
    assert result_problems(run, json.loads((run / "result.json").read_text())) == []
    assert main(submit(run, tmp_path)) == 0
    assert json.loads((tmp_path / "records" / "submission.json").read_text())["val_bpb"] == 1.2345


def planted(run, case: str) -> str:
    """Break `run` one way; returns words its refusal must contain."""
    if case == "edited_bpb":
        edit_result(run, val_bpb=1.1)
        return "result.json: val_bpb 1.10000000 is not val_loss"
    if case == "edited_bpb_and_loss":  # consistent with each other, not with the log
        edit_result(run, val_bpb=1.1, val_loss=1.1 * math.log(2) * 2.4)
        return "but the log's closing line says"
    if case == "swapped_artifact":  # 16.26 MB on disk, result.json still says 1 MB
        with (run / "model.pgolf").open("wb") as handle:
            handle.truncate(16_260_000)
        return "model.pgolf: sha256"
    if case == "missing_artifact":
        (run / "model.pgolf").unlink()
        return "model.pgolf: the run's artifact is missing"
    if case == "no_sha":
        result = json.loads((run / "result.json").read_text())
        del result["artifact_sha256"]
        (run / "result.json").write_text(json.dumps(result))
        return "records no artifact_sha256"
    if case == "wrong_size":
        edit_result(run, bytes_model=348_000, bytes_total=398_000)
        return "1,000,000 bytes, but result.json says bytes_model 348000"
    if case == "no_log_line":
        (run / "train.log").write_text("step:1/100 train_loss:5.0\n")
        return "no closing final_roundtrip_exact line"
    if case == "artifact_outside":
        edit_result(run, artifact="../elsewhere.pgolf")
        return "must name a file inside the run folder"
    raise AssertionError(case)


CASES = ["edited_bpb", "edited_bpb_and_loss", "swapped_artifact", "missing_artifact", "no_sha", "wrong_size",
         "no_log_line", "artifact_outside"]


@pytest.mark.parametrize("case", CASES)
def test_submit_refuses_in_one_line_naming_the_file(tmp_path, capsys, case):
    run = finished_run(tmp_path / "run", 1, 1.2345)
    words = planted(run, case)
    assert main(submit(run, tmp_path)) == 1
    error = capsys.readouterr().err
    assert error.startswith("pgolf: error: run run cannot be submitted: ") and error.count("\n") == 1, error
    assert words in error and str(run) in error, error
    assert not (tmp_path / "records").exists()


@pytest.mark.parametrize("case", CASES)
def test_verify_runs_fails_the_numbers_check(tmp_path, case):
    runs = [finished_run(tmp_path / "a", 1, 1.2345), finished_run(tmp_path / "b", 2, 1.2355)]
    words = planted(runs[1], case)
    checks = {check.name: check for check in check_runs(runs)[0]}
    numbers = checks["runs.result_numbers"]
    assert not numbers.passed and any(words in detail for detail in numbers.details), numbers.details
    assert all(str(runs[1]) in detail for detail in numbers.details)


def test_verify_runs_passes_consistent_runs(tmp_path):
    runs = [finished_run(tmp_path / "a", 1, 1.2345), finished_run(tmp_path / "b", 2, 1.2355)]
    checks = {check.name: check for check in check_runs(runs)[0]}
    assert checks["runs.result_numbers"].passed, checks["runs.result_numbers"].evidence


def test_non_numbers_in_result_json_are_one_line(tmp_path, capsys):
    run = finished_run(tmp_path / "run", 1, 1.2345)
    edit_result(run, val_bpb="1.2345")
    assert main(submit(run, tmp_path)) == 1
    error = capsys.readouterr().err
    assert "val_bpb is not a finite number" in error and error.count("\n") == 1

"""Submission packaging: seeds summarised, recipes compared, budget enforced, folder complete."""

import json
import statistics

import pytest

from pgolf.cli import main
from pgolf.config import run_config_to_dict, tiny
from pgolf.errors import PgolfError
from pgolf.packaging.submit import write_submission


def fake_run(folder, seed, val_bpb, bytes_model=1_000_000, bytes_code=50_000, **config_changes):
    folder.mkdir(parents=True)
    config = run_config_to_dict(tiny())
    config.update(seed=seed, data_dir=f"/data/{seed}", **config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    result = {"val_bpb": val_bpb, "val_loss": val_bpb * 1.5, "val_bpb_prequant": val_bpb - 0.01,
              "bytes_model": bytes_model, "bytes_code": bytes_code, "bytes_total": bytes_model + bytes_code,
              "steps": 100, "train_seconds": 60.0, "artifact": "model.pgolf", "seed": seed,
              "quant_scheme": config["quant_scheme"], "val_tokens_scored": 1000, "val_bytes_scored": 2400}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "train.log").write_text(f"seed {seed}\n")
    (folder / "model.pgolf").write_bytes(b"artifact of seed %d" % seed)
    return folder


def test_three_seeds_give_mean_spread_and_a_complete_folder(tmp_path):
    bpbs = {1: 1.20, 2: 1.22, 3: 1.21}
    runs = [fake_run(tmp_path / f"seed{seed}", seed, bpb) for seed, bpb in bpbs.items()]
    out = tmp_path / "records"
    submission = write_submission(runs, out, "tiny test", "A. Person", "aperson", "a blurb")
    assert submission["val_bpb"] == pytest.approx(statistics.fmean(bpbs.values()))
    assert submission["val_bpb_std"] == pytest.approx(statistics.stdev(bpbs.values()))
    assert submission["bytes_total"] == 1_050_000 and submission["bytes_code"] == 50_000
    for key in ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "pre_quant_val_bpb",
                "bytes_total", "bytes_model", "bytes_code"):
        assert key in json.loads((out / "submission.json").read_text())
    assert (out / "model.pgolf").read_bytes() == b"artifact of seed 1"  # the best seed's artifact
    assert sorted(p.name for p in out.glob("train_seed*.log")) == ["train_seed1.log", "train_seed2.log",
                                                                    "train_seed3.log"]
    readme = (out / "README.md").read_text()
    assert "mean of 3 seeds" in readme and "standard deviation" in readme


def test_runs_of_different_recipes_are_refused_naming_the_setting(tmp_path):
    first = fake_run(tmp_path / "a", 1, 1.2)
    other = fake_run(tmp_path / "b", 2, 1.1, matrix_lr=0.05)
    with pytest.raises(PgolfError, match="matrix_lr"):
        write_submission([first, other], tmp_path / "out", "n", "a", "g")
    assert not (tmp_path / "out").exists()


def test_a_repeated_seed_is_refused(tmp_path):
    runs = [fake_run(tmp_path / "a", 1, 1.2), fake_run(tmp_path / "b", 1, 1.2)]
    with pytest.raises(PgolfError, match="seed"):
        write_submission(runs, tmp_path / "out", "n", "a", "g")


def test_over_budget_is_refused_with_both_numbers(tmp_path, capsys):
    run = fake_run(tmp_path / "a", 1, 1.2, bytes_model=15_990_000, bytes_code=20_000)
    code = main(["submit", str(run), "--name", "n", "--author", "a", "--github-id", "g", "--no-export",
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 1 and "16,010,000" in error and "16,000,000" in error
    assert not (tmp_path / "out").exists()


def test_unfinished_run_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(PgolfError, match="result.json|config.json"):
        write_submission([tmp_path / "a"], tmp_path / "out", "n", "a", "g")

"""`pgolf demo` end to end with a reduced budget: every output exists and the model beats uniform.

The budget is in steps, never minutes: a time budget gives a machine without AMX a quarter of the
steps (19 instead of ~70 in 30 s on an AMD EPYC), and the outcome would depend on the machine."""

import json
import math
import re

import pytest

from pgolf.cli import main


DEMO_TEST_STEPS = 60


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", str(DEMO_TEST_STEPS), "--quiet"]) == 0
    run_dir = out / "run"
    for name in ("config.json", "train.log", "metrics.jsonl", "curves.png", "model.pgolf", "result.json"):
        assert (run_dir / name).is_file(), name
    for name in ("corpus.jsonl", "summary.txt", "dataset/manifest.json", "dataset/fineweb_val_000000.bin"):
        assert (out / name).is_file(), name
    result = json.loads((run_dir / "result.json").read_text())
    uniform_bpb = math.log2(1024) * result["val_tokens_scored"] / result["val_bytes_scored"]
    assert result["val_bpb"] < uniform_bpb
    assert result["bytes_total"] < 16_000_000 and result["steps"] == DEMO_TEST_STEPS
    assert result["swa_checkpoints"] > 1 and result["machine"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["smear_gate"] and config["model"]["bigram_buckets"] > 0 and config["swa_enabled"]
    summary = capsys.readouterr().out
    assert "sliding" in summary and f"{result['val_bpb']:.4f}" in summary
    # averaging and quantisation each have their own line: a short run's SWA may cost more than the round trip
    assert re.search(rf"averaged \(SWA\), before quantisation \(plain\) +{result['val_bpb_averaged']:.4f}", summary)
    assert result["machine"] in summary  # a time-budgeted score means nothing without the machine


def test_demo_rejects_a_non_positive_budget(capsys):
    assert main(["demo", "--minutes", "0"]) == 1
    assert "--minutes" in capsys.readouterr().err


def test_demo_rejects_a_non_positive_step_budget_and_both_budgets(capsys):
    assert main(["demo", "--steps", "0"]) == 1
    assert "--steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--steps", "5", "--minutes", "1"])


def test_a_step_budget_scales_warmdown_and_averaging_with_the_steps(tmp_path):
    from pgolf.demo import demo_config

    timed, counted = demo_config(tmp_path, minutes=2.0), demo_config(tmp_path, steps=400)
    assert timed.max_wallclock_seconds == 120.0 and counted.max_wallclock_seconds == 0.0
    assert counted.iterations == 400 and counted.warmdown_steps == 120 and counted.swa_every == 10
    assert demo_config(tmp_path, steps=60).swa_every == 1

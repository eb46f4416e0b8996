"""`pgolf demo` end to end with a reduced budget: every output exists and the model beats uniform."""

import json
import math

import pytest

from pgolf.cli import main


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.5", "--quiet"]) == 0
    run_dir = out / "run"
    for name in ("config.json", "train.log", "metrics.jsonl", "curves.png", "model.pgolf", "result.json"):
        assert (run_dir / name).is_file(), name
    for name in ("corpus.jsonl", "summary.txt", "dataset/manifest.json", "dataset/fineweb_val_000000.bin"):
        assert (out / name).is_file(), name
    result = json.loads((run_dir / "result.json").read_text())
    uniform_bpb = math.log2(1024) * result["val_tokens_scored"] / result["val_bytes_scored"]
    assert result["val_bpb"] < uniform_bpb
    assert result["bytes_total"] < 16_000_000 and result["steps"] > 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["smear_gate"] and config["model"]["bigram_buckets"] > 0 and config["swa_enabled"]
    summary = capsys.readouterr().out
    assert "sliding" in summary and f"{result['val_bpb']:.4f}" in summary


def test_demo_rejects_a_non_positive_budget(capsys):
    assert main(["demo", "--minutes", "0"]) == 1
    assert "--minutes" in capsys.readouterr().err

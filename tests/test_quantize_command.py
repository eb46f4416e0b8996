"""`pgolf quantize`: a finished run's weights re-quantised, written, read back, scored and tabulated."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from pgolf.weights import FULL_WEIGHTS_NAME, load_full_weights, save_full_weights


def fake_run(dataset_dir: Path, run_dir: Path) -> Path:
    """A run folder as a finished run leaves it: config.json and weights.safetensors (random weights)."""
    from pgolf.config import apply_overrides, run_config_to_dict, tiny
    from pgolf.model import GPT

    config = apply_overrides(tiny(), [
        "vocab_size=384", "num_layers=1", "model_dim=192", "num_heads=3", "num_kv_heads=1", "bigram_buckets=64",
        "bigram_dim=16", "rope_reference_len=64", "train_seq_len=64", "eval_seq_len=64", "eval_stride=64",
        "eval_batch_seqs=8", "autocast_dtype=fp32", f"data_dir={dataset_dir}"])
    torch.manual_seed(0)
    model = GPT(config.model)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(run_config_to_dict(config)))
    save_full_weights(run_dir / FULL_WEIGHTS_NAME, model.state_dict())
    return run_dir


def test_full_weights_round_trip_without_pickle(tmp_path):
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).to(torch.bfloat16)}
    path = save_full_weights(tmp_path / "w.safetensors", state)
    loaded = load_full_weights(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[name], state[name]) for name in state)
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04junk")
    with pytest.raises(Exception, match="not a readable safetensors"):
        load_full_weights(tmp_path / "bad.safetensors")


@pytest.mark.slow  # calibrates, quantises with GPTQ, writes two artifacts and scores (~30 s on 2 busy cores)
def test_quantize_command_writes_scores_and_tabulates(tiny_dataset_dir, tmp_path, capsys):
    from pgolf.cli import main

    run_dir = fake_run(tiny_dataset_dir, tmp_path / "run")
    assert main(["quantize", str(run_dir), "--scheme", "gptq-sdclip", "--compressor", "zstd",
                 "--compressor", "brotli", "--calibration-batches", "2", "--calibration-seqs", "4"]) == 0
    output = capsys.readouterr().out
    assert "gptq-sdclip" in output and "brotli" in output
    with open(run_dir / "quantize.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["scheme"], row["compressor"]) for row in rows] == [("gptq-sdclip", "zstd"),
                                                                    ("gptq-sdclip", "brotli")]
    for row in rows:
        artifact = run_dir / row["artifact"]
        assert artifact.stat().st_size == int(row["bytes_model"])
        assert int(row["bytes_total"]) == int(row["bytes_model"]) + int(row["bytes_code"])
        assert float(row["quantization_gap"]) == pytest.approx(float(row["val_bpb"])
                                                               - float(row["val_bpb_full_precision"]), abs=2e-6)
    assert rows[0]["val_bpb"] == rows[1]["val_bpb"]  # the same weights, only the compressor differs
    assert main(["inspect", str(run_dir / rows[0]["artifact"])]) == 0
    inspected = capsys.readouterr().out
    assert "int7" in inspected and "int6" in inspected  # embedding int7, MLP int6 (frontier classes)


def test_calibration_of_a_run_never_reads_the_val_split(tiny_dataset_dir, tmp_path):
    from pgolf.requantize import calibrate, load_run

    dataset = Path(shutil.copytree(tiny_dataset_dir, tmp_path / "dataset"))
    run_dir = fake_run(dataset, tmp_path / "run")
    finished = load_run(run_dir)  # scoring needs the val split; it is loaded here, before calibration
    for val in dataset.glob("*_val_*.bin"):
        val.unlink()
        os.mkdir(val)  # unreadable as a file, even for root
    calibration = calibrate(finished, num_batches=2, batch_seqs=2)
    assert calibration.num_batches == 2 and "tok_emb.weight" in calibration.hessians


def test_sweep_plot_draws_the_budget_line(tmp_path):
    from pgolf.commands.quantize import plot_sweep

    rows = [{"scheme": "pr198", "compressor": "zstd", "bytes_total": 15_000_000, "val_bpb": 1.2},
            {"scheme": "gptq", "compressor": "pergroup", "bytes_total": 14_000_000, "val_bpb": 1.19}]
    plot_sweep(rows, tmp_path / "sweep.png", 16_000_000)
    assert (tmp_path / "sweep.png").stat().st_size > 1000


def test_quantize_needs_one_of_scheme_or_sweep(tmp_path, capsys):
    from pgolf.cli import main

    assert main(["quantize", str(tmp_path)]) == 1
    assert "exactly one of" in capsys.readouterr().err

"""Curves from metrics.jsonl: loading, PNG output for one and several runs, the CLI command."""

from __future__ import annotations

import json
import math

import pytest

from pgolf.cli import main
from pgolf.errors import PgolfError
from pgolf.plot import load_metrics, moving_average, plot_run, plot_runs, run_label, series

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(run_dir, steps=60, val_every=20, preset="tiny", offset=0.0):
    run_dir.mkdir(parents=True, exist_ok=True)
    if preset is not None:
        (run_dir / "config.json").write_text(json.dumps({"preset": preset, "seed": 1}))
    with open(run_dir / "metrics.jsonl", "w") as handle:
        for step in range(1, steps + 1):
            loss = 2.5 + offset + 4.0 * math.exp(-step / 15) + 0.05 * math.sin(step)
            handle.write(json.dumps({"step": step, "train_loss": loss, "lr_mult": 1.0, "tokens_per_second": 5e4,
                                     "train_tokens": step * 4096, "elapsed_seconds": step * 0.1}) + "\n")
            if step % val_every == 0:
                handle.write(json.dumps({"step": step, "train_tokens": step * 4096, "val_loss": loss,
                                         "val_bpb": loss / 1.6}) + "\n")
    return run_dir


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000  # four labelled panels, not an empty canvas


def test_load_metrics_reads_records_and_drops_an_unfinished_last_line(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=40, val_every=20)
    with open(run_dir / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 41, "train_lo')  # interrupted write, no newline
    records = load_metrics(run_dir)
    assert len(records) == 40 + 2
    assert sum("val_bpb" in record for record in records) == 2
    steps, bpb = series(records, "step", "val_bpb")
    assert steps == [20.0, 40.0] and len(bpb) == 2


def test_load_metrics_names_the_bad_line(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=3)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "not json")
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(PgolfError, match=r"metrics\.jsonl:2: not valid JSON"):
        load_metrics(run_dir)


def test_missing_metrics_file_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PgolfError, match="metrics.jsonl not found"):
        load_metrics(tmp_path / "empty")
    with pytest.raises(PgolfError, match="does not exist"):
        plot_run(tmp_path / "absent")


def test_moving_average_is_a_trailing_mean():
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert moving_average([2.0, 4.0], 10) == [2.0, 3.0]


def test_run_label_uses_the_preset_from_config(tmp_path):
    assert run_label(write_run(tmp_path / "alpha", steps=2, preset="tiny")) == "alpha (tiny)"
    assert run_label(write_run(tmp_path / "beta", steps=2, preset=None)) == "beta"
    (tmp_path / "gamma").mkdir()
    (tmp_path / "gamma" / "config.json").write_text("{broken")
    assert run_label(tmp_path / "gamma") == "gamma"


def test_plot_run_writes_curves_png_in_the_run_folder(tmp_path):
    run_dir = write_run(tmp_path / "run")
    written = plot_run(run_dir)
    assert written == run_dir / "curves.png"
    assert_png(written)


def test_plot_run_without_validation_points_still_draws(tmp_path):
    run_dir = write_run(tmp_path / "run", steps=10, val_every=1000)
    assert_png(plot_run(run_dir, tmp_path / "out" / "train_only.png"))


def test_plot_runs_overlays_several_runs(tmp_path):
    first = write_run(tmp_path / "first", preset="tiny")
    second = write_run(tmp_path / "second", preset="baseline", offset=0.3)
    out = tmp_path / "both.png"
    assert plot_runs([first, second], out) == out
    assert_png(out)


def test_command_plots_one_run_to_its_folder(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run")
    assert main(["plot", str(run_dir)]) == 0
    assert_png(run_dir / "curves.png")
    assert "curves.png" in capsys.readouterr().out


def test_command_default_comparison_file_in_working_directory(tmp_path, monkeypatch):
    first = write_run(tmp_path / "first")
    second = write_run(tmp_path / "second", offset=0.2)
    monkeypatch.chdir(tmp_path)
    assert main(["plot", str(first), str(second)]) == 0
    assert_png(tmp_path / "comparison.png")


def test_command_missing_folder_errors_in_one_line(tmp_path, capsys):
    run_dir = write_run(tmp_path / "run")
    missing = tmp_path / "no_such_run"
    assert main(["plot", str(run_dir), str(missing), "--out", str(tmp_path / "x.png")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(missing) in error
    assert not (tmp_path / "x.png").exists()

"""Training curves: `curves.png` for one run and overlays of several runs or groups of runs.

A run folder holds `metrics.jsonl`, one JSON object per line. Training lines
carry `train_loss` (with `step`, `train_tokens`, `lr_mult`, `tokens_per_second`,
`elapsed_seconds`); validation lines carry `val_loss` and `val_bpb`. The figure
has four panels: train loss and validation bits per byte, each against step and
against training tokens. matplotlib runs on the Agg backend (no display needed)
and is imported only when a figure is drawn.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from pgolf.errors import PgolfError

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
CURVES_FILE = "curves.png"


def load_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of `run_dir/metrics.jsonl`, in file order.

    An unfinished last line (a run killed mid-write has no trailing newline) is
    dropped; any other line that is not a JSON object is an error.
    """
    path = Path(run_dir) / METRICS_FILE
    if not Path(run_dir).is_dir():
        raise PgolfError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise PgolfError(f"{path} not found: {run_dir} is not a training run folder")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # last piece, no newline after it: the writer was interrupted
                break
            raise PgolfError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(record, dict):
            raise PgolfError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_preset(run_dir: str | os.PathLike) -> str | None:
    """The preset named in `run_dir/config.json`, or None when absent or unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a label is a nicety; a missing or broken config must not stop the plot
    preset = config.get("preset") if isinstance(config, dict) else None
    return str(preset) if preset is not None else None


def run_label(run_dir: str | os.PathLike) -> str:
    """`folder (preset)`: used for titles and legends."""
    name = Path(run_dir).resolve().name
    preset = read_preset(run_dir)
    return f"{name} ({preset})" if preset else name


def series(records: Sequence[dict[str, Any]], x_key: str, y_key: str) -> tuple[list[float], list[float]]:
    """(x, y) of the records holding both keys with numeric values, sorted by x (pure)."""
    points = sorted(
        (float(record[x_key]), float(record[y_key])) for record in records
        if isinstance(record.get(x_key), (int, float)) and isinstance(record.get(y_key), (int, float))
    )
    return [x for x, _ in points], [y for _, y in points]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (pure); smooths noisy train loss."""
    smoothed, running = [], 0.0
    for index, value in enumerate(values):
        running += value
        if index >= window:
            running -= values[index - window]
        smoothed.append(running / min(index + 1, window))
    return smoothed


# Panel layout: (row, column) -> (x key, y key, x label, y label)
_PANELS = {
    (0, 0): ("step", "train_loss", "step", "train loss (nats/token)"),
    (0, 1): ("step", "val_bpb", "step", "validation bits per byte"),
    (1, 0): ("train_tokens", "train_loss", "training tokens", "train loss (nats/token)"),
    (1, 1): ("train_tokens", "val_bpb", "training tokens", "validation bits per byte"),
}


def _new_figure(title: str):
    import matplotlib

    matplotlib.use("Agg")  # file output only; works without a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    # Each row shares its x axis (step, then tokens) so loss and bpb line up by eye.
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), sharex="row", constrained_layout=True)
    figure.suptitle(title, fontsize=13)
    for (row, column), (_, _, x_label, y_label) in _PANELS.items():
        axis = axes[row][column]
        axis.set_xlabel(x_label)
        axis.set_ylabel(y_label)
        axis.grid(True, alpha=0.3)
        if x_label == "training tokens":
            axis.xaxis.set_major_formatter(EngFormatter())  # 1.5M rather than 1500000
    return plt, figure, axes


def _draw_run(axes, records: Sequence[dict[str, Any]], label: str | None, color: str,
              show_last: bool = True) -> bool:
    """Draw one run's series on the four panels; returns whether anything was drawn. With `show_last`
    the last val_bpb goes into the legend (labelled run) or next to the point (unlabelled run)."""
    drawn = False
    for (row, column), (x_key, y_key, _, _) in _PANELS.items():
        axis = axes[row][column]
        xs, ys = series(records, x_key, y_key)
        if not xs:
            continue
        drawn = True
        if y_key == "train_loss" and len(ys) >= 20:
            # Raw points are noisy: draw them faintly under a moving average.
            axis.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            axis.plot(xs, moving_average(ys, max(len(ys) // 50, 5)), color=color, linewidth=1.6, label=label)
        elif y_key == "val_bpb":
            legend_label = f"{label}: last {ys[-1]:.4f}" if label is not None and show_last else label
            axis.plot(xs, ys, color=color, linewidth=1.6, marker="o", markersize=3.5, label=legend_label)
        else:
            axis.plot(xs, ys, color=color, linewidth=1.6, label=label)
        if y_key == "val_bpb" and label is None and show_last:
            axis.annotate(f"{ys[-1]:.4f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(-8, 8),
                          ha="right", fontsize=9)
    return drawn


def _finish(plt, figure, axes, out_path: Path, legend: bool) -> Path:
    for row in axes:
        for axis in row:
            if not axis.lines:
                axis.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axis.transAxes,
                          color="gray")
            elif legend:
                axis.legend(fontsize=8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=110)
    plt.close(figure)
    return out_path


def _require_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    records = load_metrics(run_dir)
    if not any("train_loss" in record or "val_bpb" in record for record in records):
        raise PgolfError(f"{Path(run_dir) / METRICS_FILE} holds no train_loss or val_bpb values yet")
    return records


def plot_run(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """Draw one run's curves to `out_path` (default `run_dir/curves.png`); returns the path."""
    records = _require_records(run_dir)
    out_path = Path(out_path) if out_path is not None else Path(run_dir) / CURVES_FILE
    title = run_label(run_dir)
    _, final_bpb = series(records, "step", "val_bpb")
    if final_bpb:
        title += f"  -  last val_bpb {final_bpb[-1]:.4f}, best {min(final_bpb):.4f}"
    plt, figure, axes = _new_figure(title)
    _draw_run(axes, records, None, "tab:blue")
    return _finish(plt, figure, axes, out_path, legend=False)


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike) -> Path:
    """Overlay several runs on one figure, legend `folder (preset)`; returns the path."""
    if not run_dirs:
        raise PgolfError("plot_runs needs at least one run folder")
    return plot_groups([(run_label(run_dir), [run_dir]) for run_dir in run_dirs], out_path,
                       f"{len(run_dirs)} runs compared")


def plot_groups(groups: Sequence[tuple[str, Sequence[str | os.PathLike]]], out_path: str | os.PathLike,
                title: str) -> Path:
    """Overlay groups of runs (e.g. the seeds of one setting): one colour and one legend entry per group,
    the group's first run labelled; returns the path."""
    if not groups or not all(run_dirs for _, run_dirs in groups):
        raise PgolfError("plot_groups needs at least one group, each with at least one run folder")
    loaded = [(label, [_require_records(run_dir) for run_dir in run_dirs]) for label, run_dirs in groups]
    plt, figure, axes = _new_figure(title)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, runs) in enumerate(loaded):
        for number, records in enumerate(runs):
            _draw_run(axes, records, label if number == 0 else None, colors[index % len(colors)],
                      show_last=len(runs) == 1)
    return _finish(plt, figure, axes, Path(out_path), legend=True)

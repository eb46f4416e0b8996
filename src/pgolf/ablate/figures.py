"""The ablation's figures: bpb per cell with its seeds, and training curves overlaid per cell.

`ablation.png` has two panels. Left: each cell's final val bpb, one point per
seed, the mean as a bar with +- one sample std, the control's mean as a dashed
line. Right: mean(cell) - mean(control) of val_loss in nats with its 95%
Welch interval, against the shaded +-threshold band. `curves.png` overlays
the runs' training curves (`pgolf.plot.plot_groups`), one colour per cell.
"""

from __future__ import annotations

from pathlib import Path

from pgolf.ablate.table import CellRow
from pgolf.plot import plot_groups
from pgolf.verify.stats import mean_and_std

SEED_SPREAD = 0.3  # seed points spread over this width around their cell's position


def seed_offsets(count: int) -> list[float]:
    """Evenly spaced x offsets for `count` points, centred on 0 (pure)."""
    if count <= 1:
        return [0.0] * count
    return [SEED_SPREAD * (index / (count - 1) - 0.5) for index in range(count)]


def plot_cells(rows: list[CellRow], threshold: float, out_path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # file output only
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(rows) + 4), 5), constrained_layout=True)
    figure.suptitle(title, fontsize=12)
    positions = range(len(rows))
    names = [row.cell.name for row in rows]
    for position, row in zip(positions, rows):
        if not row.val_bpb:
            continue
        color = "tab:gray" if row.is_control else "tab:blue"
        offsets = seed_offsets(len(row.val_bpb))
        left.scatter([position + offset for offset in offsets], row.val_bpb, color=color, s=22, zorder=3,
                     label="one seed" if position == 0 else None)
        mean, std = mean_and_std(list(row.val_bpb))
        left.errorbar([position], [mean], yerr=[std], fmt="_", markersize=28, color="black", capsize=6, zorder=4,
                      label="mean ± std" if position == 0 else None)
        if row.is_control:
            left.axhline(mean, color="tab:gray", linestyle="--", linewidth=1, label="control mean")
    left.set_ylabel("final val bpb (round trip, sliding)")
    left.set_title("val bpb per cell")
    right.axhspan(-threshold, threshold, color="tab:green", alpha=0.12, label=f"±{threshold:g} nats")
    right.axhline(0.0, color="tab:gray", linewidth=1)
    for position, row in zip(positions, rows):
        difference = row.delta_loss
        if difference is None:
            continue
        right.errorbar([position], [difference.mean], yerr=[[difference.mean - difference.low],
                                                             [difference.high - difference.mean]],
                       fmt="o", color="tab:red" if difference.mean > 0 else "tab:blue", capsize=6)
    right.set_ylabel("Δ val_loss vs control (nats/token), 95% CI")
    right.set_title("difference to the control (lower is better)")
    for axis in (left, right):
        axis.set_xticks(list(positions), names, rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3
                        else "center")
        axis.set_xlim(-0.6, len(rows) - 0.4)
        axis.grid(True, axis="y", alpha=0.3)
        axis.legend(fontsize=8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_path, dpi=90)
    plt.close(figure)
    return out_path


def plot_cell_curves(rows: list[CellRow], out_path: Path, title: str) -> Path | None:
    """Every finished run's curves, one colour per cell; None when no run has finished."""
    groups = [(row.cell.name, list(row.run_dirs)) for row in rows if row.run_dirs]
    return plot_groups(groups, out_path, title) if groups else None

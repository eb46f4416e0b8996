"""The ablation table: per cell, the runs' numbers, the difference to the control, and a verdict.

Per cell: how many runs finished (of those planned), mean +- sample std of the
final val bpb, the round-trip gap (`val_bpb_roundtrip_plain` minus the
averaged weights' bpb before quantisation), artifact bytes, steps and
tokens/s. Against the control: mean(cell) - mean(control) of val_loss (nats
per token, the unit of the challenge's 0.005 threshold) and of val_bpb, each
with a 95% interval and Welch's two-sided p-value (`pgolf.verify.stats`).

The verdict reads the val_loss interval against +-threshold (lower is better):
wholly below -threshold "helps", wholly above +threshold "hurts", wholly
inside "no difference of that size"; an interval that excludes 0 but reaches
past the threshold on one side "helps/hurts, maybe by less"; else
"inconclusive".

Guards (a violation is an error naming the cell and the difference): every
run of a cell has the plan's config except the seed (`verify.run_checks`);
cells scored with the same evaluation window scored the same val tokens and
bytes (same tokenizer, same val set). Flags (shown, not errors): a cell with
fewer finished runs than planned; runs whose step counts differ (the
wall-clock cap ended them at different steps).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.ablate.plan import RUN_ONLY_KEYS, Cell, Plan
from pgolf.errors import PgolfError
from pgolf.verify.run_checks import (REQUIRED_IMPROVEMENT_NATS, RunRecord, check_same_config, config_differences,
                                     load_run)
from pgolf.verify.stats import Difference, mean_and_std, welch_difference

CHALLENGE_THRESHOLD_NATS = REQUIRED_IMPROVEMENT_NATS  # a new record must beat the old one by this much val_loss
CONFIDENCE = 0.95


def roundtrip_gap(result: dict[str, Any]) -> float:
    """bpb lost to the artifact's round trip: after it (plain windows) minus before it (averaged weights)."""
    before = result.get("val_bpb_averaged", result["val_bpb_prequant"])
    return float(result["val_bpb_roundtrip_plain"]) - float(before)


def verdict(difference: Difference | None, threshold: float) -> str:
    """Plain words for where the interval on mean(cell) - mean(control) (nats) lies against +-threshold."""
    if difference is None:
        return "too few runs to test (2 per cell needed)"
    low, high, size = difference.low, difference.high, f"{threshold:g} nats"
    if high < -threshold:
        return f"helps: better by more than {size}"
    if low > threshold:
        return f"hurts: worse by more than {size}"
    if -threshold <= low and high <= threshold:
        return f"no difference of {size} or more"
    if high < 0:
        return f"helps, maybe by less than {size}"
    if low > 0:
        return f"hurts, maybe by less than {size}"
    return "inconclusive: more seeds needed"


@dataclass(frozen=True)
class CellRow:
    cell: Cell
    is_control: bool
    num_planned: int
    seeds: tuple[int, ...]
    val_bpb: tuple[float, ...]  # one value per finished run, in seed order
    val_loss: tuple[float, ...]
    roundtrip_gap: tuple[float, ...]
    bytes_total: tuple[float, ...]
    steps: tuple[int, ...]
    tokens_per_second: tuple[float, ...]
    run_dirs: tuple[Path, ...]
    delta_loss: Difference | None  # mean(cell) - mean(control), val_loss in nats per token
    delta_bpb: Difference | None
    verdict: str
    flags: tuple[str, ...]

    @property
    def num_runs(self) -> int:
        return len(self.seeds)


# ---------------------------------------------------------------- loading with the guards


def _load_cell_runs(out_dir: Path, plan: Plan, cell: Cell) -> list[RunRecord]:
    runs = [load_run(out_dir / run.folder) for run in plan.runs()
            if run.cell.name == cell.name and (out_dir / run.folder / "result.json").is_file()]
    for run in runs:
        differences = config_differences(cell.config, run.config, ignored=frozenset(RUN_ONLY_KEYS))
        if differences:
            key, planned, trained = differences[0]
            raise PgolfError(f"{run.path}: trained with {key}={trained!r} but the plan's cell {cell.name!r} says "
                             f"{planned!r}")
    if len(runs) > 1:
        same = check_same_config(runs)
        if not same.passed:
            raise PgolfError(f"cell {cell.name!r}: {same.evidence}")
    return runs


def _check_same_val_data(runs_by_cell: dict[str, list[RunRecord]]) -> None:
    """Cells evaluated with the same window must have scored the same tokens and bytes."""
    seen: dict[tuple, tuple[str, tuple]] = {}
    for name, runs in runs_by_cell.items():
        for run in runs:
            window = (run.result.get("eval_seq_len"), run.result.get("eval_stride"))
            scored = (run.result.get("val_tokens_scored"), run.result.get("val_bytes_scored"))
            first = seen.setdefault(window, (f"{name!r} ({run.path})", scored))
            if scored != first[1]:
                raise PgolfError(f"cells differ in tokenizer or val set: {first[0]} scored {first[1][0]} tokens / "
                                 f"{first[1][1]} bytes, {name!r} ({run.path}) {scored[0]} / {scored[1]}")


def _flags(cell: Cell, runs: list[RunRecord], num_planned: int) -> tuple[str, ...]:
    flags = []
    if len(runs) < num_planned:
        flags.append(f"{len(runs)} of {num_planned} runs finished")
    steps = sorted({int(run.result["steps"]) for run in runs})
    if len(steps) > 1:
        capped = cell.config.get("max_wallclock_seconds", 0) > 0
        flags.append(f"runs stopped at different steps ({steps[0]}..{steps[-1]})"
                     + (": the wall-clock cap, not the step budget, ended them" if capped else ""))
    return tuple(flags)


def build_table(out_dir: Path, plan: Plan, threshold: float = CHALLENGE_THRESHOLD_NATS) -> list[CellRow]:
    """One row per cell (the control first), from the finished runs under `out_dir`."""
    out_dir = Path(out_dir)
    runs_by_cell = {cell.name: _load_cell_runs(out_dir, plan, cell) for cell in plan.cells}
    _check_same_val_data(runs_by_cell)
    control_losses = [float(run.result["val_loss"]) for run in runs_by_cell[plan.control]]
    control_bpbs = [float(run.result["val_bpb"]) for run in runs_by_cell[plan.control]]
    rows = []
    for cell in plan.cells:
        runs = runs_by_cell[cell.name]
        losses = [float(run.result["val_loss"]) for run in runs]
        bpbs = [float(run.result["val_bpb"]) for run in runs]
        is_control = cell.name == plan.control
        delta_loss = delta_bpb = None
        if not is_control and len(runs) >= 2 and len(control_losses) >= 2:
            delta_loss = welch_difference(losses, control_losses, CONFIDENCE)
            delta_bpb = welch_difference(bpbs, control_bpbs, CONFIDENCE)
        rows.append(CellRow(
            cell=cell, is_control=is_control, num_planned=len(plan.seeds),
            seeds=tuple(int(run.result["seed"]) for run in runs), val_bpb=tuple(bpbs), val_loss=tuple(losses),
            roundtrip_gap=tuple(roundtrip_gap(run.result) for run in runs),
            bytes_total=tuple(float(run.result["bytes_total"]) for run in runs),
            steps=tuple(int(run.result["steps"]) for run in runs),
            tokens_per_second=tuple(float(run.result["tokens_per_second"]) for run in runs),
            run_dirs=tuple(run.path for run in runs), delta_loss=delta_loss, delta_bpb=delta_bpb,
            verdict="control" if is_control else verdict(delta_loss, threshold),
            flags=_flags(cell, runs, len(plan.seeds))))
    return rows


# ---------------------------------------------------------------- text, markdown, CSV


def _mean_std(values: tuple[float, ...], digits: int, sign: str = "") -> str:
    if not values:
        return "-"
    mean, std = mean_and_std(list(values))
    return f"{mean:{sign}.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:{sign}.{digits}f}"


def _interval(difference: Difference | None, digits: int) -> str:
    if difference is None:
        return "-"
    return f"{difference.mean:+.{digits}f} [{difference.low:+.{digits}f}, {difference.high:+.{digits}f}]"


def _p_value(difference: Difference | None) -> str:
    if difference is None:
        return "-"
    return "n/a (no spread)" if math.isnan(difference.p_value) else f"{difference.p_value:.3g}"


def _steps(steps: tuple[int, ...]) -> str:
    if not steps:
        return "-"
    return str(steps[0]) if len(set(steps)) == 1 else f"{min(steps)}..{max(steps)} !"


HEADER = ("cell", "runs", "val_bpb", "round-trip gap (bpb)", "bytes_total", "steps", "tokens/s",
          "Δ val_loss nats [95% CI]", "p", "Δ val_bpb [95% CI]", "verdict")


def table_cells(rows: list[CellRow]) -> list[tuple[str, ...]]:
    """The table as strings, header first (shared by the text and markdown forms)."""
    lines = [HEADER]
    for row in rows:
        bytes_text = f"{sum(row.bytes_total) / len(row.bytes_total):,.0f}" if row.bytes_total else "-"
        speed = f"{sum(row.tokens_per_second) / len(row.tokens_per_second):,.0f}" if row.tokens_per_second else "-"
        lines.append((row.cell.name + (" (control)" if row.is_control else ""), f"{row.num_runs}/{row.num_planned}",
                      _mean_std(row.val_bpb, 4), _mean_std(row.roundtrip_gap, 4, "+"), bytes_text, _steps(row.steps),
                      speed, _interval(row.delta_loss, 4), _p_value(row.delta_loss), _interval(row.delta_bpb, 4),
                      row.verdict))
    return lines


def _notes(rows: list[CellRow], threshold: float) -> list[str]:
    notes = [f"mean ± sample std over seeds; Δ = cell - control (negative: better), 95% Welch interval, two-sided "
             f"Welch p; verdict against ±{threshold:g} nats of val_loss."]
    notes += [f"! {row.cell.name}: {flag}" for row in rows for flag in row.flags]
    return notes


def format_text(rows: list[CellRow], threshold: float) -> str:
    lines = table_cells(rows)
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADER))]
    text = ["  ".join(value.ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text + [""] + _notes(rows, threshold))


def format_markdown(rows: list[CellRow], threshold: float) -> str:
    lines = table_cells(rows)
    text = ["| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(HEADER)]
    text += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    return "\n".join(text + [""] + [note.replace("! ", "- ", 1) if note.startswith("! ") else note
                                    for note in _notes(rows, threshold)]) + "\n"


CSV_COLUMNS = ("cell", "is_control", "runs", "runs_planned", "seeds", "val_bpb_mean", "val_bpb_std", "val_loss_mean",
               "val_loss_std", "roundtrip_gap_mean", "roundtrip_gap_std", "bytes_total_mean", "steps_min",
               "steps_max", "tokens_per_second_mean", "delta_val_loss", "delta_val_loss_low", "delta_val_loss_high",
               "p_value", "welch_df", "delta_val_bpb", "delta_val_bpb_low", "delta_val_bpb_high", "verdict", "flags")


def _csv_row(row: CellRow) -> dict[str, Any]:
    def stats(values):
        return mean_and_std(list(values)) if values else ("", "")

    def mean(values):
        return sum(values) / len(values) if values else ""

    loss, bpb = row.delta_loss, row.delta_bpb
    return {
        "cell": row.cell.name, "is_control": row.is_control, "runs": row.num_runs, "runs_planned": row.num_planned,
        "seeds": " ".join(map(str, row.seeds)),
        "val_bpb_mean": stats(row.val_bpb)[0], "val_bpb_std": stats(row.val_bpb)[1],
        "val_loss_mean": stats(row.val_loss)[0], "val_loss_std": stats(row.val_loss)[1],
        "roundtrip_gap_mean": stats(row.roundtrip_gap)[0], "roundtrip_gap_std": stats(row.roundtrip_gap)[1],
        "bytes_total_mean": mean(row.bytes_total), "steps_min": min(row.steps, default=""),
        "steps_max": max(row.steps, default=""), "tokens_per_second_mean": mean(row.tokens_per_second),
        "delta_val_loss": loss.mean if loss else "", "delta_val_loss_low": loss.low if loss else "",
        "delta_val_loss_high": loss.high if loss else "", "p_value": loss.p_value if loss else "",
        "welch_df": loss.df if loss else "", "delta_val_bpb": bpb.mean if bpb else "",
        "delta_val_bpb_low": bpb.low if bpb else "", "delta_val_bpb_high": bpb.high if bpb else "",
        "verdict": row.verdict, "flags": "; ".join(row.flags),
    }


def write_csv(rows: list[CellRow], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(_csv_row(row))
    return path

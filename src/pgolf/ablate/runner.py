"""An ablation from start to end: fix the plan, launch the unfinished runs, report.

Files under the ablation folder OUT:
    grid.json                the plan (`plan.py`)
    runs/<cell>/seed<N>/     normal `pgolf train` run folders
    logs/<cell>__seed<N>.log each run's output, appended across attempts
    table.csv, table.md      the table (`table.py`); also printed
    ablation.png, curves.png the figures (`figures.py`)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

from pgolf.ablate.launchers import Launcher, Outcome, RunTask
from pgolf.ablate.plan import Plan, open_plan, run_state, train_arguments
from pgolf.ablate.table import CellRow, build_table, format_markdown, format_text, write_csv

LOGS_FOLDER = "logs"


def make_tasks(out_dir: Path, plan: Plan, checkpoint_every: int | None) -> tuple[list[RunTask], Counter]:
    """A task for every run without result.json, and how many runs are in each state."""
    out_dir = Path(out_dir).resolve()
    states, tasks = Counter(), []
    for run in plan.runs():
        run_dir = out_dir / run.folder
        state = run_state(run_dir)
        states[state] += 1
        if state != "finished":
            tasks.append(RunTask(name=f"{run.cell.name} seed {run.seed}", run_dir=run_dir,
                                 fresh_arguments=tuple(train_arguments(plan, run, run_dir, checkpoint_every)),
                                 log_path=out_dir / LOGS_FOLDER / f"{run.cell.folder}__seed{run.seed}.log"))
    return tasks, states


def execute(out_dir: Path, plan: Plan, launcher: Launcher, checkpoint_every: int | None,
            log: Callable[[str], None] = print) -> list[Outcome]:
    """Write or check grid.json, then run what is unfinished. Returns the outcomes of the runs launched."""
    resumed = open_plan(out_dir, plan)
    tasks, states = make_tasks(out_dir, plan, checkpoint_every)
    log(f"{'resuming' if resumed else 'new'} ablation in {out_dir}: {len(plan.cells)} cells x {len(plan.seeds)} "
        f"seeds; {states['finished']} finished (kept), {states['resumable']} resume from a checkpoint, "
        f"{states['started']} restart, {states['new']} new")
    done = Counter()

    def report(outcome: Outcome) -> None:
        done[outcome.finished] += 1
        mark = "done" if outcome.finished else "FAILED"
        log(f"[{sum(done.values())}/{len(tasks)}] {outcome.task.name}: {mark}, {outcome.message}")

    return launcher.launch(tasks, report) if tasks else []


def report(out_dir: Path, plan: Plan, threshold: float, log: Callable[[str], None] = print,
           figures: bool = True) -> list[CellRow]:
    """Print the table; write table.csv, table.md and the figures next to grid.json."""
    out_dir = Path(out_dir)
    rows = build_table(out_dir, plan, threshold)
    log(format_text(rows, threshold))
    write_csv(rows, out_dir / "table.csv")
    (out_dir / "table.md").write_text(format_markdown(rows, threshold), encoding="utf-8")
    written = [out_dir / "table.csv", out_dir / "table.md"]
    if figures and any(row.val_bpb for row in rows):
        from pgolf.ablate.figures import plot_cell_curves, plot_cells  # matplotlib only when drawing

        title = f"pgolf ablate: {plan.preset}, {len(plan.seeds)} seeds, control {plan.control}"
        written.append(plot_cells(rows, threshold, out_dir / "ablation.png", title))
        curves = plot_cell_curves(rows, out_dir / "curves.png", title)
        if curves is not None:
            written.append(curves)
    log("wrote " + ", ".join(str(path) for path in written))
    return rows

"""`pgolf ablate`: which switch helps, by how much, and is it real.

- `plan.py`: the cells (a grid, or one switch at a time from a base) x seeds, fixed in `grid.json`;
  a rerun resumes, a changed plan is refused.
- `launchers.py`: where each run goes (local subprocesses, one per GPU; or Slurm jobs through submitit).
- `table.py`: per-cell statistics, the difference to the control with Welch's test, verdicts; text,
  CSV and markdown.
- `figures.py`: bpb per cell with its seeds, and the training curves overlaid per cell.
- `runner.py`: the command's story: plan, launch what is unfinished, report.
"""

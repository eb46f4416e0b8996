"""`pgolf ablate`: train a grid of settings x seeds, then say which switch helps, by how much, and if it is real.

Every combination of the --vary values (or, with --one-at-a-time, one change at a time from the control)
is trained with every seed, each a normal run folder under OUT/runs. OUT/grid.json fixes the plan:
rerunning the same command keeps finished runs, resumes the others from their checkpoints, and refuses a
changed plan. Then a table (printed, OUT/table.csv, OUT/table.md) and figures (OUT/ablation.png,
OUT/curves.png): per cell mean +- std of the final val bpb, the round-trip gap, bytes, steps, tokens/s, and
the difference to the control with a 95% interval, Welch's p-value and a verdict against --threshold-nats.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from pgolf.errors import PgolfError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate", help="train settings x seeds; table of differences to a control with Welch's test",
        description=(__doc__ or "").split("\n", 2)[-1].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset",
                        help="preset every cell starts from (pr198, baseline, tiny, frontier, frontier-tiny)")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="a setting and its values (repeatable; cells are all combinations)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="cells: the control, plus one cell per other value of one setting")
    parser.add_argument("--seeds", default="3", help="number of seeds (from the config's seed on), or a list "
                                                     "1,2,3 (default 3)")
    parser.add_argument("--control", action="append", default=[], metavar="KEY=VALUE",
                        help="the control's value of a varied setting (default: each setting's first value)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field in every cell (repeatable), e.g. --set iterations=500")
    parser.add_argument("--out", required=True, help="ablation folder (grid.json, runs/, table, figures)")
    parser.add_argument("--threshold-nats", type=float, default=None,
                        help="a difference in val_loss that matters, in nats per token (default 0.005, the "
                             "challenge's)")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help="runs write a resumable checkpoint every N steps (default: a tenth of the steps)")
    parser.add_argument("--report-only", action="store_true",
                        help="launch nothing; table and figures from the finished runs in --out (the plan is "
                             "read from its grid.json)")
    where = parser.add_argument_group("where runs go")
    where.add_argument("--launcher", choices=("local", "slurm"), default="local",
                       help="local: subprocesses here, one per GPU (or one at a time without GPUs); "
                            "slurm: one array job through submitit")
    where.add_argument("--gpus-per-run", type=int, default=1,
                       help="GPUs per run; several are started with torchrun (default 1)")
    where.add_argument("--partition", help="Slurm partition")
    where.add_argument("--time-minutes", type=int, default=60, help="Slurm time limit per run (default 60)")
    where.add_argument("--cpus-per-run", type=int, help="Slurm CPUs per run")
    where.add_argument("--max-parallel", type=int, help="Slurm array tasks running at once")
    where.add_argument("--max-requeues", type=int, default=3, help="timeouts after which a run is requeued "
                                                                   "(default 3; preemptions always requeue)")
    where.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                       help="extra sbatch option (repeatable), e.g. account=myproject")
    parser.set_defaults(func=run)


def build_launcher(args: argparse.Namespace, out_dir: Path):
    from pgolf.ablate.launchers import LocalLauncher, SubmititLauncher

    if args.gpus_per_run < 0:
        raise PgolfError(f"--gpus-per-run must be >= 0, got {args.gpus_per_run}")
    if args.launcher == "local":
        return LocalLauncher(gpus_per_run=max(args.gpus_per_run, 1))
    options = {}
    for text in args.slurm_option:
        if "=" not in text:
            raise PgolfError(f"--slurm-option expects KEY=VALUE, got {text!r}")
        key, value = text.split("=", 1)
        options[key.strip()] = value
    return SubmititLauncher(folder=out_dir / "slurm", partition=args.partition, gpus_per_run=args.gpus_per_run,
                            time_minutes=args.time_minutes, cpus_per_run=args.cpus_per_run,
                            max_parallel=args.max_parallel, max_requeues=args.max_requeues, slurm_options=options)


def _exit_on_sigterm(signal_number, frame) -> None:
    raise SystemExit(128 + signal_number)  # unwinds like Ctrl-C: the launcher stops its runs first


def run(args: argparse.Namespace) -> int:
    from pgolf.ablate.plan import load_plan, make_plan
    from pgolf.ablate.runner import execute, report
    from pgolf.ablate.table import CHALLENGE_THRESHOLD_NATS

    out_dir = Path(args.out)
    threshold = CHALLENGE_THRESHOLD_NATS if args.threshold_nats is None else args.threshold_nats
    if threshold < 0:
        raise PgolfError(f"--threshold-nats must be >= 0, got {threshold}")
    failed = 0
    if args.report_only:
        plan = load_plan(out_dir)
    else:
        if not args.preset:
            raise PgolfError("--preset is required (unless --report-only)")
        plan = make_plan(args.preset, args.overrides, args.vary, args.seeds, args.control, args.one_at_a_time)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        outcomes = execute(out_dir, plan, build_launcher(args, out_dir), args.checkpoint_every)
        failed = sum(not outcome.finished for outcome in outcomes)
        print()
    report(out_dir, plan, threshold)
    if failed:
        print(f"{failed} run(s) failed; rerun the same command to retry them (finished runs are kept)")
    return 1 if failed else 0

"""`pgolf plot RUN_DIR [RUN_DIR ...] [--out FILE]`: training curves as a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

COMPARISON_FILE = "comparison.png"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot", help="draw training curves (train loss, validation bpb) of one or more runs",
        description="One run: RUN_DIR/curves.png. Several runs: an overlay, ./comparison.png by default.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder holding metrics.jsonl")
    parser.add_argument("--out", default=None, metavar="FILE", help="PNG file to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.plot import plot_run, plot_runs  # matplotlib loads only for this command

    if len(args.run_dirs) == 1:
        written = plot_run(args.run_dirs[0], args.out)
    else:
        written = plot_runs(args.run_dirs, args.out if args.out else Path(COMPARISON_FILE))
    print(f"wrote {written}")
    return 0

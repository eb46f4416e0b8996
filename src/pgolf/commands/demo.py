"""`pgolf demo`: the whole pipeline offline in a few minutes (the README's main command)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build a corpus, train, compress and score a model offline",
                                   description="Offline end-to-end run: Python stdlib docstrings -> tokenizer -> "
                                               "shards -> tiny model (all PR-198 techniques) -> artifact -> score.")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget in minutes (default 3)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log echo; summary only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.demo import run_demo

    if args.minutes <= 0:
        from pgolf.errors import PgolfError

        raise PgolfError(f"--minutes must be positive, got {args.minutes}")
    run_demo(Path(args.out), minutes=args.minutes, quiet=args.quiet)
    return 0

"""`pgolf demo`: the whole pipeline offline in a few minutes (the README's main command)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="build a corpus, train, compress and score a model offline",
                                   description="Offline end-to-end run: Python stdlib docstrings -> tokenizer -> "
                                               "shards -> tiny model (all PR-198 techniques) -> artifact -> score.")
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, default=3.0,
                        help="training budget in wall-clock minutes (default 3): the score depends on the "
                             "machine's speed")
    budget.add_argument("--steps", type=int,
                        help="training budget in optimiser steps instead: the same training on any machine")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log echo; summary only")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.demo import run_demo

    from pgolf.errors import PgolfError

    if args.minutes <= 0:
        raise PgolfError(f"--minutes must be positive, got {args.minutes}")
    if args.steps is not None and args.steps < 1:
        raise PgolfError(f"--steps must be at least 1, got {args.steps}")
    run_demo(Path(args.out), minutes=args.minutes, steps=args.steps, quiet=args.quiet)
    return 0

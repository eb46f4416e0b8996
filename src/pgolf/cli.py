"""Command line: the only place that reads argv and environment variables.

Each subcommand lives in `pgolf.commands.<name>` and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import pgolf
from pgolf import __version__
from pgolf.errors import PgolfError, printable

COMMAND_MODULES = ("data", "train", "eval", "inspect", "quantize", "submit", "demo", "plot", "bench", "verify",
                   "export", "ablate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgolf", description=pgolf.__doc__.strip(),
                                     epilog="Run `pgolf COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"pgolf {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"pgolf.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"pgolf.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (PgolfError, OSError) as error:
        # OSError: a file the user named is unreadable, a directory, missing or on a full disk
        if args.debug:
            raise
        print(f"pgolf: error: {printable(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130

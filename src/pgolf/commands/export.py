"""`pgolf export RUN_DIR_OR_PRESET --out DIR [--compact | --plain]`: write the challenge's single-file train_gpt.py."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="generate a self-contained train_gpt.py for the challenge",
                                   description="Bundle the pgolf modules the training path needs and the resolved "
                                               "config into DIR/train_gpt.py (run with torchrun or python; reads "
                                               "DATA_PATH, TOKENIZER_PATH, RUN_ID, SEED, MAX_WALLCLOCK_SECONDS, "
                                               "ITERATIONS) and write DIR/requirements.txt beside it.")
    parser.add_argument("source", metavar="RUN_DIR_OR_PRESET",
                        help="a run folder (its config.json) or a preset name "
                             "(pr198, baseline, tiny, frontier, frontier-tiny)")
    parser.add_argument("--out", required=True, help="folder to write train_gpt.py and requirements.txt into")
    packing = parser.add_mutually_exclusive_group()
    packing.add_argument("--compact", action="store_true",
                         help="minify (python-minifier), brotli-11 and base85 into a two-line self-extracting "
                              "script (--set code_packing=minify-brotli; every preset's default)")
    packing.add_argument("--plain", action="store_true",
                         help="the readable bundle (--set code_packing=plain); its size is then the counted code")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable), as in `pgolf train`")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.packaging.export import export_script

    overrides = args.overrides + (["code_packing=minify-brotli"] if args.compact else []) + \
        (["code_packing=plain"] if args.plain else [])
    script = export_script(args.source, Path(args.out), overrides=overrides)
    print(f"wrote {script} ({script.stat().st_size} bytes of code)")
    print(f"wrote {script.parent / 'requirements.txt'}")
    return 0

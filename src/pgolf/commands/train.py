"""`pgolf train`: resolve a config (preset + overrides), then train, or print it with --dry-run."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pgolf.config import RunConfig, apply_overrides, get_preset, run_config_from_dict, run_config_to_json
from pgolf.errors import PgolfError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train a model, write its artifact and score it",
                                   description="Train with a preset; the run folder gets config.json, train.log, "
                                               "metrics.jsonl, curves.png, model.pgolf and result.json.")
    parser.add_argument("--preset", default="pr198",
                        help="pr198 (the record recipe), baseline, tiny, frontier or frontier-tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable), e.g. --set iterations=500")
    parser.add_argument("--data", help="dataset folder (from `pgolf data fetch` or `pgolf data build`)")
    parser.add_argument("--out", help="run folder (default: runs/<preset>-<time>)")
    parser.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    parser.add_argument("--checkpoint-every", type=int, help="write a resumable checkpoint every N steps")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and parameter count, exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, log to the run folder only")
    parser.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.resume:
        config_path = Path(args.resume) / "config.json"
        if not config_path.exists():
            raise PgolfError(f"{args.resume} is not a run folder (no config.json)")
        config = run_config_from_dict(json.loads(config_path.read_text()))
    else:
        config = get_preset(args.preset)
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data_dir={args.data}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.checkpoint_every is not None:
        overrides.append(f"checkpoint_every={args.checkpoint_every}")
    config = apply_overrides(config, overrides)
    config.validate()
    return config


def dry_run(config: RunConfig) -> int:
    import torch

    from pgolf.accounting import BUDGET_BYTES, code_bytes, predict_model_bytes
    from pgolf.model import GPT, num_parameters
    from pgolf.model_summary import parameter_breakdown
    from pgolf.quant import SCHEMES

    with torch.device("meta"):
        model = GPT(config.model)
    predicted = predict_model_bytes(config.model, SCHEMES[config.quant_scheme])
    print(run_config_to_json(config))
    print(f"parameters:{num_parameters(model)}")
    for kind, num_tensors, count in parameter_breakdown(model):
        print(f"  {kind:<58} {num_tensors:>4} tensors {count:>12,}")
    print(f"grad_accum_steps_per_process:{config.grad_accum_steps(1)} (one process; divided by the world size)")
    total = predicted + code_bytes()
    print(f"predicted_bytes_total:{total} budget:{BUDGET_BYTES} fits:{total <= BUDGET_BYTES}")
    return 0


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.dry_run:
        return dry_run(config)
    from pgolf.distributed import cleanup_distributed
    from pgolf.train import run_training

    run_dir = Path(args.resume or args.out or f"runs/{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.resume and (run_dir / "result.json").exists():
        raise PgolfError(f"{run_dir} already holds a finished run; choose another --out")
    try:
        result = run_training(config, run_dir, resume=bool(args.resume), quiet=args.quiet)
    finally:
        cleanup_distributed()
    if args.quiet and "val_bpb" in result:
        print(f"val_bpb:{result['val_bpb']:.6f} bytes_total:{result['bytes_total']} run_dir:{run_dir}",
              file=sys.stdout)
    return 0

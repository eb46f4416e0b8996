"""`pgolf train`: resolve a config (preset + overrides), then train, or print it with --dry-run.

Under torchrun every rank runs this command: rank 0 decides the run folder (and checks that it
may hold this run) and tells the others, so that all ranks write one folder.
"""

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
                                               "metrics.jsonl, curves.png, model.pgolf, weights.safetensors and "
                                               "result.json (written last).")
    parser.add_argument("--preset", default="pr198",
                        help="pr198 (the record recipe), baseline, tiny, frontier or frontier-tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable), e.g. --set iterations=500")
    parser.add_argument("--data", help="dataset folder (from `pgolf data fetch` or `pgolf data build`)")
    parser.add_argument("--out", help="run folder (default: runs/<preset>-<time>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run files already in --out (other files are never touched)")
    parser.add_argument("--seed", type=int, help="random seed (same as --set seed=N)")
    parser.add_argument("--checkpoint-every", type=int, help="write a resumable checkpoint every N steps")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint, with its own config")
    parser.add_argument("--cpu-kernels", action="store_true",
                        help="build pgolf's AMX attention kernels for CPU training if not built yet "
                             "(needs the cpu-kernels extra; used anyway once built)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and parameter count, exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, log to the run folder only")
    parser.set_defaults(func=run)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    if args.resume:
        changes = [flag for flag, given in (("--set", args.overrides), ("--data", args.data),
                                            ("--seed", args.seed is not None),
                                            ("--checkpoint-every", args.checkpoint_every is not None)) if given]
        if changes:
            raise PgolfError(f"a resumed run keeps the config it started with; drop {', '.join(changes)}")
        config_path = Path(args.resume) / "config.json"
        if not config_path.exists():
            raise PgolfError(f"{args.resume} is not a run folder (no config.json)")
        try:
            config = run_config_from_dict(json.loads(config_path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as error:
            raise PgolfError(f"{config_path} is not a readable run config ({error})") from None
    else:
        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data_dir={args.data}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        if args.checkpoint_every is not None:
            overrides.append(f"checkpoint_every={args.checkpoint_every}")
        config = apply_overrides(get_preset(args.preset), overrides)
    config.validate()
    return config


BREAKDOWN_MAX_LAYERS = 64  # the per-kind table builds the model on the meta device; deeper ones print the count only


def dry_run(config: RunConfig) -> int:
    import torch

    from pgolf.challenge import BUDGET_BYTES
    from pgolf.layout import count_parameters, extrapolate_in_layers
    from pgolf.model import GPT
    from pgolf.model_summary import parameter_breakdown
    from pgolf.packaging.export import exported_code_bytes
    from pgolf.packaging.size import predict_model_bytes
    from pgolf.calibrated import get_any_scheme

    # counted from shallow copies of the model (pgolf.layout): a million layers answers at once
    scheme = get_any_scheme(config.quant_scheme)
    predicted = extrapolate_in_layers(config.model, lambda model: predict_model_bytes(model, scheme),
                                      relative_tolerance=0.01)
    print(run_config_to_json(config))
    print(f"parameters:{count_parameters(config.model)}")
    if config.model.num_layers <= BREAKDOWN_MAX_LAYERS:
        with torch.device("meta"):
            model = GPT(config.model)
        for kind, num_tensors, count in parameter_breakdown(model):
            print(f"  {kind:<58} {num_tensors:>4} tensors {count:>12,}")
    print(f"grad_accum_steps_per_process:{config.grad_accum_steps(1)} (one process; divided by the world size)")
    total = predicted + exported_code_bytes(config)
    print(f"predicted_bytes_total:{total} budget:{BUDGET_BYTES} fits:{total <= BUDGET_BYTES}")
    return 0


def decide_run_dir(args: argparse.Namespace, config: RunConfig) -> tuple[Path, bool]:
    """(the run folder, whether it holds a finished run to leave alone). Runs on rank 0 only."""
    from pgolf.runlog import claim_run_dir, is_finished

    if args.resume:
        run_dir = Path(args.resume)
        return run_dir, is_finished(run_dir)
    run_dir = Path(args.out or f"runs/{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}")
    claim_run_dir(run_dir, args.overwrite)
    return run_dir, False


def agree_on_run_dir(args: argparse.Namespace, config: RunConfig, dist) -> tuple[Path, bool]:
    """Rank 0 decides (and checks) the run folder; every rank gets its answer, or its error."""
    from pgolf.distributed import broadcast_object

    decision: tuple | str = ""
    if dist.is_main:
        try:
            run_dir, finished = decide_run_dir(args, config)
            decision = (str(run_dir), finished)
        except PgolfError as error:
            decision = str(error)
    decision = broadcast_object(decision, dist)
    if isinstance(decision, str):
        raise PgolfError(decision)
    return Path(decision[0]), decision[1]


def run(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    if args.dry_run:
        return dry_run(config)
    from pgolf.distributed import cleanup_distributed, init_distributed
    from pgolf.kernels import enable_cpu_attention
    from pgolf.train import run_training

    dist = init_distributed(config.device)
    try:
        run_dir, finished = agree_on_run_dir(args, config, dist)
        if finished:
            if dist.is_main:
                print(f"{run_dir} holds a finished run (result.json); nothing to resume")
            return 0
        if dist.device.type == "cpu":
            announce = print if dist.is_main and not args.quiet else None
            reason = enable_cpu_attention(build=args.cpu_kernels, announce=announce)
            if reason and args.cpu_kernels and dist.is_main:
                print(f"CPU attention: PyTorch's SDPA ({reason})", flush=True)
        result = run_training(config, run_dir, resume=bool(args.resume), quiet=args.quiet)
    finally:
        cleanup_distributed()
    if args.quiet and "val_bpb" in result and dist.is_main:
        print(f"val_bpb:{result['val_bpb']:.6f} bytes_total:{result['bytes_total']} run_dir:{run_dir}",
              file=sys.stdout)
    return 0

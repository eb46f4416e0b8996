"""A stand-in for `pgolf train` in the ablation tests: resolves the config as the real command does,
writes config.json, a checkpoint marker, metrics.jsonl and result.json, trains nothing (milliseconds, no torch).

Its val_loss is 2.0, plus 0.02 when smear_gate is off, plus a seed-dependent offset in [0, 0.012]; so
the tests know the true effect. Behaviour for the tests, from the environment:
FAKE_TRAIN_STALL=1: a fresh run writes its checkpoint and fake.pid, then sleeps (to be interrupted);
a resumed run finishes. FAKE_TRAIN_FAIL_SEED=N: the run of seed N fails with a one-line error.
Run as a script (`python ablate_fake_train.py train ...`) or call `fake_train(arguments)`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from pgolf.config import apply_overrides, get_preset, run_config_from_dict, run_config_to_dict

TOKENS_PER_BYTE = 0.4


def true_val_loss(config, seed: int) -> float:
    return 2.0 + (0.0 if config.model.smear_gate else 0.02) + ((seed * 7919) % 13) / 1000


def _parse(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["train"])
    parser.add_argument("--preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out")
    parser.add_argument("--resume")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(arguments)


def fake_train(arguments: list[str]) -> int:
    args = _parse(arguments)
    run_dir = Path(args.resume or args.out)
    if args.resume:
        config = run_config_from_dict(json.loads((run_dir / "config.json").read_text()))
    else:
        extra = [f"seed={args.seed}"] + ([f"checkpoint_every={args.checkpoint_every}"] if args.checkpoint_every else [])
        config = apply_overrides(get_preset(args.preset), args.overrides + extra)
        if run_dir.is_dir() and any(run_dir.iterdir()):  # what `pgolf train --out` does with a used folder
            from pgolf.runlog import claim_run_dir  # late: it imports torch

            claim_run_dir(run_dir, args.overwrite)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(run_config_to_dict(config)))
    if str(config.seed) == os.environ.get("FAKE_TRAIN_FAIL_SEED"):
        print(f"pgolf: error: fake failure for seed {config.seed}", file=sys.stderr)
        return 1
    if os.environ.get("FAKE_TRAIN_STALL") and not args.resume:
        (run_dir / "checkpoint").mkdir(exist_ok=True)
        (run_dir / "checkpoint" / "meta.json").write_text(json.dumps({"step": 1, "world_size": 1, "complete": True}))
        (run_dir / "fake.pid").write_text(str(os.getpid()))
        print("checkpoint written, stalling", flush=True)
        time.sleep(120)
        return 1
    val_loss = true_val_loss(config, config.seed)
    val_bpb = val_loss / math.log(2) * TOKENS_PER_BYTE
    result = {"preset": config.preset, "seed": config.seed, "val_loss": val_loss, "val_bpb": val_bpb,
              "val_bpb_roundtrip_plain": val_bpb + 0.003, "val_loss_roundtrip_plain": val_loss + 0.002,
              "val_bpb_prequant": val_bpb + 0.001, "bytes_total": 1_000_000 + config.seed,
              "steps": config.iterations, "train_seconds": 1.0, "tokens_per_second": 1000.0,
              "quant_scheme": config.quant_scheme, "eval_seq_len": config.eval_seq_len,
              "eval_stride": config.eval_stride, "val_tokens_scored": 4000, "val_bytes_scored": 10000,
              "resumed": bool(args.resume), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    records = [{"step": step, "train_loss": val_loss + 1.0 / step, "train_tokens": 100 * step}
               for step in range(1, config.iterations + 1)]
    records.append({"step": config.iterations, "train_tokens": 100 * config.iterations, "val_loss": val_loss,
                    "val_bpb": val_bpb})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (run_dir / "result.json").write_text(json.dumps(result))
    print(f"val_bpb:{val_bpb:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(fake_train(sys.argv[1:]))

"""What the training-step benchmarks share (`profile_step.py`, `cpu_step_bound.py`): the arguments that
shape a step, the `pgolf bench train` trainer over a temporary synthetic shard, and a hook around the
optimisers' `step`."""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch

from pgolf import bench
from pgolf.config import RunConfig, apply_overrides, get_preset


def add_step_arguments(parser: argparse.ArgumentParser, grad_accum: int, threads: int) -> None:
    parser.add_argument("--preset", default="pr198")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per micro-step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--grad-accum", type=int, default=grad_accum, help="micro-steps per optimiser step")
    parser.add_argument("--threads", type=int, default=threads)


def step_config(args: argparse.Namespace) -> RunConfig:
    """The preset with the --set overrides (the step's shape is applied by `synthetic_trainer`)."""
    return apply_overrides(get_preset(args.preset), args.overrides)


@contextlib.contextmanager
def synthetic_trainer(args: argparse.Namespace, variant: bench.Variant, device: torch.device, steps: int) -> Iterator:
    """The trainer `pgolf bench train` times, with tokens for `steps` optimiser steps plus two; on CPU with
    pgolf's AMX attention kernels where they can be built."""
    if device.type == "cpu":
        from pgolf.kernels import enable_cpu_attention

        enable_cpu_attention(build=True, announce=print)
    config = step_config(args)
    run_config = bench.bench_run_config(config, variant, args.micro_batch, args.seq_len, args.grad_accum, device)
    with tempfile.TemporaryDirectory() as folder:
        tokens = (steps + 2) * args.grad_accum * args.micro_batch * (args.seq_len + 1) + 1
        shard = bench.write_synthetic_shard(Path(folder), config.model.vocab_size, tokens)
        yield bench.build_bench_trainer(run_config, device, shard)


def around_optimizer_steps(optimizers: list, context: Callable[[str], ContextManager]) -> None:
    """Run every `optimizer.step()` inside `context(class name)` (a profiler label, a timer)."""
    for optimizer in optimizers:
        original = optimizer.step

        def step(*args, _original=original, _name=type(optimizer).__name__, **kwargs):
            with context(_name):
                return _original(*args, **kwargs)

        optimizer.step = step

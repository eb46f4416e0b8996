"""Profile training steps with torch.profiler and print which operators dominate.

    PYTHONPATH=src python benchmarks/cpu/profile_step.py --preset pr198 --micro-batch 1 --seq-len 2048 \
        --variant bf16 --steps 2 [--threads 2] [--rows 25] [--grad-accum 2] [--inductor-kernels]

Builds the same `Trainer` `pgolf bench train` times (synthetic tokens), runs one
unprofiled step, then profiles `--steps` steps and prints the operator table
sorted by self CPU time (self CUDA time on a GPU), plus the share of the step
spent in the optimisers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from pgolf import bench
from pgolf.distributed import resolve_device
from pgolf.train import train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_setup  # noqa: E402  (a sibling module: what the step benchmarks share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_setup.add_step_arguments(parser, grad_accum=1, threads=os.cpu_count() or 1)
    parser.add_argument("--variant", default="bf16")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--inductor-kernels", action="store_true",
                        help="name inductor's generated CPU kernels in the table (torch._inductor.config.cpp."
                             "enable_kernel_profile) instead of one row per compiled graph")
    args = parser.parse_args()
    if args.inductor_kernels:
        torch._inductor.config.cpp.enable_kernel_profile = True

    bench.configure_threads(args.threads)
    device = resolve_device(args.device)
    variant = bench.parse_variants(args.variant)[0]
    with step_setup.synthetic_trainer(args, variant, device, args.steps) as trainer:
        train_step(trainer)  # warm-up (compilation, allocator)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        step_setup.around_optimizer_steps(trainer.optimizers, lambda name: record_function(f"optimizer:{name}"))
        started = time.perf_counter()
        with profile(activities=activities) as profiler:
            for _ in range(args.steps):
                train_step(trainer)
            bench.synchronize(device)
        seconds = (time.perf_counter() - started) / args.steps
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(profiler.key_averages(), key=lambda event: -getattr(event, sort_key))
    total = sum(getattr(event, sort_key) for event in events)
    print(f"{variant.name}: {seconds * 1e3:.0f} ms per profiled step (profiler overhead included); "
          f"self time per step by operator ({sort_key}):")
    for event in events[:args.rows]:
        name = event.key if len(event.key) <= 100 else event.key[:48] + "..." + event.key[-49:]
        own = getattr(event, sort_key)
        print(f"{own / 1e3 / args.steps:10.1f} ms {own / total:6.1%} {event.count // args.steps:6d} calls  {name}")
    for event in profiler.key_averages():
        if event.key.startswith("optimizer:"):
            print(f"{event.key}: {event.cpu_time_total / 1e3 / args.steps:.0f} ms per step "
                  f"({event.cpu_time_total / 1e6 / args.steps / seconds:.0%} of the step)")


if __name__ == "__main__":
    main()

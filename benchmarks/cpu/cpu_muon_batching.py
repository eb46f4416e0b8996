"""Time one Muon step over pr198's 67 matrices: one matrix at a time vs batched by shape.

Decides the CPU default of `Muon(batch_by_shape=None)` (docs/performance.md). The two
settings alternate, `--tries` times, three timed steps each after one untimed step.

    PYTHONPATH=src python benchmarks/cpu/cpu_muon_batching.py --threads 2
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from pgolf import bench
from pgolf.optim import Muon

# pr198: 11 layers of c_q/proj (512, 512), c_k/c_v (256, 512), fc (1536, 512), mlp proj (512, 1536),
# and the bigram projection (512, 128)
PR198_SHAPES = [(512, 512)] * 22 + [(256, 512)] * 22 + [(1536, 512)] * 11 + [(512, 1536)] * 11 + [(512, 128)]


def step_seconds(batch_by_shape: bool, steps: int = 3) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    parameters = [nn.Parameter(0.02 * torch.randn(shape, generator=generator)) for shape in PR198_SHAPES]
    for parameter in parameters:
        parameter.grad = torch.randn(parameter.shape, generator=generator)
    optimizer = Muon(parameters, lr=0.02, momentum=0.95, ns_steps=5, batch_by_shape=batch_by_shape)
    optimizer.step()  # untimed: allocations, kernel selection
    return bench.time_calls(optimizer.step, steps, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tries", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for _ in range(args.tries):
        for batch_by_shape in (False, True):
            seconds = step_seconds(batch_by_shape)
            print(f"{'batched' if batch_by_shape else 'per-matrix'}: "
                  + ", ".join(f"{value:.3f}" for value in seconds) + " s", flush=True)


if __name__ == "__main__":
    main()

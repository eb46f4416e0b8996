"""Time causal attention forward+backward under bf16 autocast on CPU: the kernel in fp32 vs in bf16.

Decides `pgolf.attention.CPU_LOW_PRECISION_MIN_HEAD_DIM` (docs/performance.md). Prints the
median of 5 calls per (batch, heads, kv heads, T, head_dim) for: the automatic choice, fp32
forced, bf16 forced.

    PYTHONPATH=src python benchmarks/cpu/cpu_attention_dtype.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics

import torch

from pgolf import attention, bench

SHAPES = ((32, 4, 2, 256, 32), (32, 4, 2, 256, 64), (1, 8, 4, 2048, 64))  # tiny at width 128, tiny, pr198


def median_milliseconds(function, repeats: int = 5) -> float:
    function()  # warm-up (and compilation)
    return statistics.median(bench.time_calls(function, repeats, torch.device("cpu"))) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threshold = attention.CPU_LOW_PRECISION_MIN_HEAD_DIM
    for batch, heads, kv_heads, length, head_dim in SHAPES:
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch, length, count, head_dim, generator=generator).bfloat16().requires_grad_()
                   for count in (heads, kv_heads, kv_heads))

        def forward_backward():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = attention.causal_attention(q, k, v)  # (B, T, H, D) bf16
            out.float().sum().backward()

        timings = {}
        for name, value in (("auto", threshold), ("fp32", 1 << 30), ("bf16", 0)):
            attention.CPU_LOW_PRECISION_MIN_HEAD_DIM = value
            timings[name] = median_milliseconds(forward_backward)
        attention.CPU_LOW_PRECISION_MIN_HEAD_DIM = threshold
        print(f"B={batch} H={heads}/{kv_heads} T={length} D={head_dim}: "
              + ", ".join(f"{name} {ms:.1f} ms" for name, ms in timings.items()), flush=True)


if __name__ == "__main__":
    main()

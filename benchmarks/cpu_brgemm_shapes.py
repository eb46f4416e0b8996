"""Throughput of oneDNN's AMX brgemm (through PyTorch's `cpublas::brgemm`) at the tile shapes
pgolf's CPU attention kernels use, against one large `torch.matmul` timed in the same run.

It answers "how close to the matmul peak can a tiled attention kernel get on this CPU": every
call is C (M x 64, fp32) += A (M x K, bf16) B (K x 64, bf16, VNNI-packed), the N = 64 being the
widest B operand oneDNN packs. Caches stay hot (the same buffers every call), so these are
upper bounds for the kernel's products.

    PYTHONPATH=src python benchmarks/cpu_brgemm_shapes.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils import cpp_extension

from pgolf.kernels import build

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>
#include <chrono>
#include <vector>

// Seconds for `calls` products C (m x 64) += A (m x k) B (k x 64), bf16 in, fp32 out.
double time_brgemm(int64_t m, int64_t k, int64_t calls) {
  std::vector<at::BFloat16> a(m * k, at::BFloat16(0.5f)), b(k * 64, at::BFloat16(0.25f));
  std::vector<float> c(m * 64, 0.0f);
  const auto started = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < calls; ++i) {
    at::native::cpublas::brgemm(m, 64, k, k, 64, 64, true, a.data(), b.data(), c.data());
  }
  const auto finished = std::chrono::steady_clock::now();
  at::native::cpublas::brgemm_release();
  return std::chrono::duration<double>(finished - started).count();
}

TORCH_LIBRARY(pgolf_brgemm_bench, library) {
  library.def("time_brgemm(int m, int k, int calls) -> float", &time_brgemm);
}
"""

SHAPES = ((128, 64), (128, 128), (64, 128), (128, 512), (128, 2048))  # (M, K); N = 64


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size).bfloat16()
    for _ in range(2):
        a @ a
    started = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return repeats * 2 * size**3 / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the matmul; brgemm runs on one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reason = build.amx_unavailable_reason()
    if reason:
        raise SystemExit(f"no AMX brgemm here: {reason}")
    cpp_extension.load_inline(name="pgolf_brgemm_bench", cpp_sources=[SOURCE], extra_cflags=build.AVX512_FLAGS,
                              extra_ldflags=["-fopenmp"], is_python_module=False)
    peak = matmul_rate()
    print(f"torch.matmul 2048^3 bf16, {args.threads} thread(s): {peak / 1e9:.0f} GFLOP/s")
    for m, k in SHAPES:
        calls = max(200, 4_000_000 // (m * k))
        torch.ops.pgolf_brgemm_bench.time_brgemm(m, k, 50)  # generate the kernel, warm the caches
        seconds = torch.ops.pgolf_brgemm_bench.time_brgemm(m, k, calls)
        rate = 2 * m * 64 * k * calls / seconds
        print(f"brgemm M={m:4d} N=64 K={k:4d}, 1 thread: {rate / 1e9:5.0f} GFLOP/s "
              f"({rate / peak:.0%} of the matmul rate)")
    print(f"torch.matmul again: {matmul_rate() / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()

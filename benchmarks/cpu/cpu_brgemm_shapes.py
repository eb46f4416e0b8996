"""Throughput of oneDNN's AMX brgemm (through PyTorch's `cpublas::brgemm`) at the tile shapes
pgolf's CPU attention kernels use, against one large `torch.matmul` timed in the same run.

It answers "how close to the matmul peak can a tiled attention kernel get on this CPU": every
call is C (M x 64, fp32) += A (M x K, bf16) B (K x 64, bf16, VNNI-packed), the N = 64 being the
widest B operand oneDNN packs. Caches stay hot (the same buffers every call), so these are
upper bounds for the kernel's products. Last, the 128 x 128 score product with K = 64 (Q K^T at
head_dim 64, two brgemm calls in the kernels) against a hand-written AMX loop for the same product
(2 x 2 blocks of 16 x 16 tiles, one tile configuration for the whole run): how much a custom
microkernel could gain over oneDNN's there.

    PYTHONPATH=src python benchmarks/cpu/cpu_brgemm_shapes.py --threads 1
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import cpp_extension

from pgolf import bench
from pgolf.kernels import build

SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <chrono>
#include <cstring>
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

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t bytes_per_row[16];
  uint8_t rows[16];
};

// C (128 x 128 fp32) = A (128 x 64 bf16, leading dimension 512) B, B VNNI-packed per 16 columns
// (8 blocks of 32 rows x 64 bytes), with AMX intrinsics: 2 x 2 blocks of 16 x 16 output tiles.
void score_tile(const at::BFloat16* a, const at::BFloat16* b, float* c) {
  for (int m = 0; m < 128; m += 32) {
    for (int n = 0; n < 128; n += 32) {
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (int k = 0; k < 64; k += 32) {
        _tile_loadd(4, a + m * 512 + k, 1024);
        _tile_loadd(5, a + (m + 16) * 512 + k, 1024);
        _tile_loadd(6, b + (n / 16) * 1024 + k * 16, 64);
        _tile_loadd(7, b + (n / 16 + 1) * 1024 + k * 16, 64);
        _tile_dpbf16ps(0, 4, 6); _tile_dpbf16ps(1, 4, 7); _tile_dpbf16ps(2, 5, 6); _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c + m * 128 + n, 512); _tile_stored(1, c + m * 128 + n + 16, 512);
      _tile_stored(2, c + (m + 16) * 128 + n, 512); _tile_stored(3, c + (m + 16) * 128 + n + 16, 512);
    }
  }
}

// Seconds for `calls` 128 x 128 x 64 score products: hand-written AMX (mode 0) or two brgemm calls (1).
double time_score_tile(int64_t calls, int64_t mode) {
  std::vector<at::BFloat16> a(128 * 512, at::BFloat16(0.5f)), b(64 * 128, at::BFloat16(0.25f));
  std::vector<float> c(128 * 128, 0.0f);
  if (mode == 0) {
    syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
    TileConfig config;
    std::memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; ++t) {
      config.rows[t] = 16;
      config.bytes_per_row[t] = 64;
    }
    _tile_loadconfig(&config);
  }
  const auto started = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < calls; ++i) {
    const at::BFloat16* rows = a.data() + (i % 8) * 64;  // a different head's columns each call
    if (mode == 0) {
      score_tile(rows, b.data(), c.data());
    } else {
      at::native::cpublas::brgemm(128, 64, 64, 512, 64, 128, false, rows, b.data(), c.data());
      at::native::cpublas::brgemm(128, 64, 64, 512, 64, 128, false, rows, b.data() + 64 * 64, c.data() + 64);
    }
  }
  const auto finished = std::chrono::steady_clock::now();
  if (mode == 0) {
    _tile_release();
  } else {
    at::native::cpublas::brgemm_release();
  }
  return std::chrono::duration<double>(finished - started).count();
}

TORCH_LIBRARY(pgolf_brgemm_bench, library) {
  library.def("time_brgemm(int m, int k, int calls) -> float", &time_brgemm);
  library.def("time_score_tile(int calls, int mode) -> float", &time_score_tile);
}
"""

SHAPES = ((128, 64), (128, 128), (64, 128), (128, 512), (128, 2048))  # (M, K); N = 64


def load_extension() -> None:
    """Build (first time) and load the timing operators `torch.ops.pgolf_brgemm_bench.*`; exits without AMX."""
    reason = build.amx_unavailable_reason()
    if reason:
        raise SystemExit(f"no AMX brgemm here: {reason}")
    cpp_extension.load_inline(name="pgolf_brgemm_bench", cpp_sources=[SOURCE],
                              extra_cflags=build.AVX512_FLAGS + ["-mamx-tile", "-mamx-bf16"],
                              extra_ldflags=["-fopenmp"], is_python_module=False)


def brgemm_seconds(m: int, k: int, calls: int) -> float:
    """Seconds per call of C (m x 64) += A (m x k) B (k x 64) with hot caches (after 50 untimed calls)."""
    torch.ops.pgolf_brgemm_bench.time_brgemm(m, k, 50)
    return torch.ops.pgolf_brgemm_bench.time_brgemm(m, k, calls) / calls


def score_tile_seconds(calls: int, hand_written: bool = False) -> float:
    """Seconds per 128 x 128 x 64 score product: two brgemm calls, or the hand-written AMX loop."""
    mode = 0 if hand_written else 1
    torch.ops.pgolf_brgemm_bench.time_score_tile(200, mode)
    return torch.ops.pgolf_brgemm_bench.time_score_tile(calls, mode) / calls


def matmul_rate() -> float:
    """FLOP/s of a 2048^3 bf16 product (pgolf's peak probe: median of 5 after 2 warm-up calls)."""
    return bench.matmul_peak(torch.device("cpu"), torch.bfloat16, (2048,))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the matmul; brgemm runs on one")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_extension()
    peak = matmul_rate()
    print(f"torch.matmul 2048^3 bf16, {args.threads} thread(s): {peak / 1e9:.0f} GFLOP/s")
    for m, k in SHAPES:
        rate = 2 * m * 64 * k / brgemm_seconds(m, k, max(200, 4_000_000 // (m * k)))
        print(f"brgemm M={m:4d} N=64 K={k:4d}, 1 thread: {rate / 1e9:5.0f} GFLOP/s "
              f"({rate / peak:.0%} of the matmul rate)")
    flops = 2 * 128 * 128 * 64
    rates = {}
    for _ in range(3):  # alternate, so that the machine's changes of pace fall on both
        for hand_written, name in ((False, "two brgemm calls"), (True, "hand-written AMX")):
            rates.setdefault(name, []).append(flops / score_tile_seconds(20000, hand_written))
    for name, samples in rates.items():
        best = max(samples)
        print(f"score tile 128 x 128, K=64, 1 thread, {name}: {best / 1e9:5.0f} GFLOP/s "
              f"({best / peak:.0%} of the matmul rate; best of 3)")
    print(f"hand-written / brgemm: {max(rates['hand-written AMX']) / max(rates['two brgemm calls']):.2f}x")
    print(f"torch.matmul again: {matmul_rate() / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()

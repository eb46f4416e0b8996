"""Speed measurement: matmul peak, timed training steps, timed sliding-window evaluation.

What is timed is what `pgolf train` and `pgolf eval` run: a `Trainer` from
`train.build_trainer` stepping `train.train_step` over a temporary shard
of random tokens, and `evaluate.evaluate` over random validation tokens.
Utilisation is against the peak of one large matrix product of the same
dtype, timed in the same process (`matmul_peak`; for bf16 training also between
the timed rounds, see `run_train` in commands/bench.py), so a loaded or
throttled machine lowers both sides. FLOP counts come from `pgolf.flops`.

A "variant" is a precision/compilation choice: fp32 eager, bf16 autocast
eager, bf16 autocast compiled (and fp32 compiled). On CPU the fastest one
measured is recorded in `CPU_TRAINING_DEFAULT` (see docs/performance.md);
`pgolf.runtime` follows it when `autocast_dtype` and `compile` are "auto".
"""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pgolf.challenge import OFFICIAL_SP1024_VAL_TARGETS
from pgolf import flops
from pgolf.build import CPU_MICRO_TOKENS
from pgolf.config import RunConfig
from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.kernels import cpu_attention


@dataclass(frozen=True)
class Variant:
    name: str
    autocast_dtype: str  # "fp32" | "bf16", as in RunConfig.autocast_dtype
    compile: bool
    sdpa_attention: bool = False  # on CPU, PyTorch's SDPA attention instead of pgolf's AMX kernels

    def step_context(self) -> contextlib.AbstractContextManager:
        """What each of this variant's steps runs under."""
        return cpu_attention.switched_off() if self.sdpa_attention else contextlib.nullcontext()

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.autocast_dtype == "bf16" else torch.float32


VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32", "fp32", False),
    "bf16": Variant("bf16", "bf16", False),
    "bf16+compile": Variant("bf16+compile", "bf16", True),
    "fp32+compile": Variant("fp32+compile", "fp32", True),
    # For measuring pgolf's CPU attention kernels against PyTorch's SDPA in one run:
    "bf16+sdpa": Variant("bf16+sdpa", "bf16", False, sdpa_attention=True),
    "bf16+compile+sdpa": Variant("bf16+compile+sdpa", "bf16", True, sdpa_attention=True),
}
CPU_VARIANTS = ("fp32", "bf16", "bf16+compile")
GPU_VARIANTS = ("bf16+compile",)
# `pgolf bench train` warns when the bf16 peak samples of one run differ by more than this factor
PEAK_SPREAD_WARNING = 1.5

# Decided by `pgolf bench train` on this project's CPU machine (docs/performance.md): bf16 autocast
# with torch.compile (and, where the CPU has AMX, pgolf's attention kernels) was the fastest variant
# in every run (2026-11-28 afternoon: pr198 shapes 2.7-3.6x fp32 eager, tiny 3.1-4.0x). Callers
# should fall back to eager if compilation fails (no C++ compiler).
CPU_TRAINING_DEFAULT = VARIANTS["bf16+compile"]

def default_micro_batch(config: RunConfig, seq_len: int, device: torch.device) -> tuple[int, str | None]:
    """Sequences of `seq_len` tokens per micro-step when none is asked for: the preset's number of
    sequences, except on CPU where the micro-step is capped at `build.CPU_MICRO_TOKENS` (pr198's GPU
    micro-step, 48 x 2048, does not fit a CPU's memory; 4 x 2048 was also its fastest on CPU,
    docs/performance.md; tiny's 32 x 256 is that size). Returns (sequences, a note saying so when
    capped, else None)."""
    preset = max(1, config.micro_batch_tokens // config.train_seq_len)
    if device.type != "cpu" or preset * seq_len <= CPU_MICRO_TOKENS:
        return preset, None
    capped = max(1, CPU_MICRO_TOKENS // seq_len)
    return capped, (f"the preset's {preset} x {seq_len} tokens per micro-step would not fit a CPU's memory: "
                    f"{capped} x {seq_len} instead (--micro-batch to choose; --grad-accum {preset // capped} "
                    f"for the preset's tokens per step)")


def is_out_of_memory(error: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    cuda_out_of_memory = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, cuda_out_of_memory) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def parse_variants(text: str) -> list[Variant]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise PgolfError(f"unknown variant(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[name] for name in names]


def fastest_variant(tokens_per_second: dict[str, float]) -> str:
    """Name of the variant with the highest throughput (failed variants carry nan or 0)."""
    finite = {name: rate for name, rate in tokens_per_second.items() if rate == rate and rate > 0}
    if not finite:
        raise PgolfError("no variant produced a measurement")
    return max(finite, key=finite.get)


# ---------------------------------------------------------------- timing primitives


def configure_threads(num_threads: int) -> tuple[int, int]:
    """Set intra-op threads (and inter-op to 1 when still allowed); returns what torch now uses."""
    if num_threads < 1:
        raise PgolfError(f"--threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(1)  # one op at a time: the model has no parallel branches
    except RuntimeError:
        pass  # only settable before the first parallel op; keep whatever it is
    return torch.get_num_threads(), torch.get_num_interop_threads()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(function: Callable[[], object], repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` calls, the device synchronised around every call."""
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def default_matmul_sizes(device: torch.device) -> tuple[int, ...]:
    return (4096, 8192, 16384) if device.type == "cuda" else (1024, 2048, 3072)


def matmul_peak(device: torch.device, dtype: torch.dtype, sizes: tuple[int, ...] | None = None,
                repeats: int = 5) -> tuple[float, int]:
    """(FLOP/s, n) of the fastest square n x n x n product among `sizes`, median over repeats."""
    best_rate, best_size = 0.0, 0
    for size in sizes or default_matmul_sizes(device):
        generator = torch.Generator(device="cpu").manual_seed(size)
        left = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        right = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        time_calls(lambda: left @ right, 2, device)  # warm-up: kernel choice, allocator, caches
        rate = 2 * size**3 / statistics.median(time_calls(lambda: left @ right, repeats, device))
        if rate > best_rate:
            best_rate, best_size = rate, size
        del left, right
    return best_rate, best_size


def peak_memory_bytes(device: torch.device) -> int:
    """Peak allocated device memory on CUDA; on CPU the process's peak resident set (all of it)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * scale


# ---------------------------------------------------------------- training


def write_synthetic_shard(directory: Path, vocab_size: int, num_tokens: int, seed: int = 0) -> Path:
    """A train shard of uniform random tokens (speed does not depend on the token values)."""
    from pgolf.data.shards import write_shard

    tokens = np.random.default_rng(seed).integers(0, vocab_size, size=num_tokens, dtype=np.int64)
    path = Path(directory) / "fineweb_train_000000.bin"
    write_shard(path, tokens.astype(np.uint16))
    return path


def bench_run_config(config: RunConfig, variant: Variant, micro_batch: int, seq_len: int, grad_accum: int,
                     device: torch.device) -> RunConfig:
    """The config a benchmark trains with: B x T tokens per micro-step, `grad_accum` micro-steps per step."""
    if micro_batch < 1 or seq_len < 1 or grad_accum < 1:
        raise PgolfError(f"micro-batch, seq-len and grad-accum must be >= 1 "
                         f"(got {micro_batch}, {seq_len}, {grad_accum})")
    micro_tokens = micro_batch * seq_len
    return replace(config, train_seq_len=seq_len, micro_batch_tokens=micro_tokens,
                   global_batch_tokens=micro_tokens * grad_accum, warmup_steps=0, max_wallclock_seconds=0.0,
                   autocast_dtype=variant.autocast_dtype, compile="on" if variant.compile else "off",
                   device=device.type)


def build_bench_trainer(config: RunConfig, device: torch.device, shard: Path):
    """`train.build_trainer` over one synthetic shard; nothing else of a dataset is needed to train."""
    from pgolf.train import build_trainer

    return build_trainer(config, DistInfo(device=device), [shard])


@dataclass
class TrainMeasurement:
    variant: str
    tokens_per_step: int
    flops_per_token: int
    step_seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # every step's loss, warm-up included
    peak_memory: int = 0  # CUDA: bytes this variant added at its peak during warm-up; CPU: 0
    error: str = ""  # why the variant did not run (e.g. compilation failed)

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.step_seconds) if self.step_seconds else float("nan")

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.median_seconds if self.step_seconds else float("nan")

    @property
    def flops_per_second(self) -> float:
        return self.tokens_per_second * self.flops_per_token


def describe_error(error: Exception) -> str:
    first_line = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return f"{type(error).__name__}: {first_line}"


def measure_training(runs: list[tuple[Variant, RunConfig]], device: torch.device, shard: Path,
                     warmup_steps: int, timed_steps: int, after_round: Callable[[], object] | None = None,
                     keep_trainers: list | None = None) -> list[TrainMeasurement]:
    """Build and warm up (compilation, allocator) one trainer per variant, then time them round-robin.

    Round-robin, one step of each variant per round, so that load from other processes on a
    shared machine falls on every variant alike and the ratios stay meaningful; `after_round` runs
    after each round (`pgolf bench train` samples the matmul peak there, under the same load).
    Every trainer starts from the same seed and reads the same tokens, so losses are comparable
    step by step. A variant that fails to build or compile is reported with its error; fp32/bf16
    eager failures are real bugs and are raised. `keep_trainers`: a list that receives the warm
    trainers (None where a variant failed) instead of freeing them, for more measurements.
    """
    from pgolf.train import train_step

    trainers, measurements = [], []
    for variant, config in runs:
        measurement = TrainMeasurement(variant=variant.name, tokens_per_step=config.global_batch_tokens,
                                       flops_per_token=flops.training_flops_per_token(config.model,
                                                                                      config.train_seq_len))
        measurements.append(measurement)
        held_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            trainer = build_bench_trainer(config, device, shard)
            for _ in range(warmup_steps):
                with variant.step_context():
                    measurement.losses.append(float(train_step(trainer)))
        except Exception as error:  # a compile failure must not hide the other variants' numbers
            if is_out_of_memory(error):
                sequences = config.micro_batch_tokens // config.train_seq_len
                raise PgolfError(f"{variant.name} ran out of memory at {sequences} x {config.train_seq_len} tokens "
                                 f"per micro-step ({describe_error(error)}); pass a smaller --micro-batch, and a "
                                 f"larger --grad-accum to keep the tokens per step") from error
            if not variant.compile:
                raise
            measurement.error = describe_error(error)
            trainer = None
        if device.type == "cuda":
            measurement.peak_memory = torch.cuda.max_memory_allocated(device) - held_before
        trainers.append(trainer)
    for _ in range(timed_steps):
        for (variant, _), trainer, measurement in zip(runs, trainers, measurements):
            if trainer is None:
                continue
            synchronize(device)
            started = time.perf_counter()
            with variant.step_context():
                loss = train_step(trainer)
            synchronize(device)
            measurement.step_seconds.append(time.perf_counter() - started)
            measurement.losses.append(float(loss))  # after the clock: the sync is not timed
        if after_round is not None:
            after_round()
    if keep_trainers is not None:
        keep_trainers.extend(trainers)
    del trainers
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return measurements


def largest_loss_gap(losses: list[float], reference: list[float]) -> float:
    """max |loss_i - reference_i| over the steps both have: agreement of a variant with fp32 eager."""
    pairs = list(zip(losses, reference))
    return max(abs(a - b) for a, b in pairs) if pairs else float("nan")


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalMeasurement:
    windows: int
    positions: int  # windows x window length: what the model actually processes
    scored_tokens: int
    seconds: float
    full_val_seconds: float  # predicted for the official split at this stride, one process

    @property
    def positions_per_second(self) -> float:
        return self.positions / self.seconds

    @property
    def scored_tokens_per_second(self) -> float:
        """Targets scored per second over the whole official split (the first window's extra
        targets would flatter a short measurement, so this is derived from the prediction)."""
        return OFFICIAL_SP1024_VAL_TARGETS / self.full_val_seconds


def uniform_byte_tables(vocab_size: int):
    """Every token one byte, no boundaries: byte counts do not change evaluation speed."""
    from pgolf.metric import ByteTables

    return ByteTables(base_bytes=np.ones(vocab_size, dtype=np.int16),
                      has_leading_space=np.zeros(vocab_size, dtype=bool), is_boundary=np.zeros(vocab_size, dtype=bool))


def measure_eval(model: torch.nn.Module, config: RunConfig, device: torch.device, num_batches: int,
                 batch_seqs: int, autocast_dtype: torch.dtype | None, seed: int = 0) -> EvalMeasurement:
    """Sliding-window evaluation of `num_batches` full batches of windows, after one warm-up batch."""
    from pgolf.evaluate import evaluate

    seq_len, stride = config.eval_seq_len, config.eval_stride
    vocab = config.model.vocab_size
    tables = uniform_byte_tables(vocab)
    generator = np.random.default_rng(seed)

    def tokens_for(num_windows: int) -> torch.Tensor:
        num_targets = seq_len + (num_windows - 1) * stride
        return torch.from_numpy(generator.integers(0, vocab, size=num_targets + 1, dtype=np.int64))

    dist = DistInfo(device=device)
    evaluate(model, tokens_for(batch_seqs), tables, seq_len, stride, batch_seqs, dist, autocast_dtype)
    num_windows = num_batches * batch_seqs
    synchronize(device)
    result = evaluate(model, tokens_for(num_windows), tables, seq_len, stride, batch_seqs, dist, autocast_dtype)
    positions = num_windows * seq_len
    rate = positions / result.seconds
    full_positions = flops.sliding_positions(OFFICIAL_SP1024_VAL_TARGETS, seq_len, stride)
    return EvalMeasurement(windows=num_windows, positions=positions, scored_tokens=result.tokens,
                           seconds=result.seconds, full_val_seconds=full_positions / rate)


# ---------------------------------------------------------------- output


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, columns padded to line up in a terminal too."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(headers), "|" + "|".join("-" * (width + 2) for width in widths) + "|"]
                     + [line(row) for row in rows])

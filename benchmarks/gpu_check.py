"""One-table speed check of the PR-198 shapes on a single GPU (synthetic tokens, nothing downloaded).

    PYTHONPATH=src python benchmarks/gpu_check.py              # on the GPU machine (see gpu_check.sh)
    PGOLF_GPU_CHECK_DRY=1 PYTHONPATH=src python benchmarks/gpu_check.py   # tiny shapes on CPU: does it run?

Measures, in one process: the bf16 matmul peak; `pr198` training steps of
8 micro-steps of 48 x 2048 tokens (what `pgolf train` runs on one GPU: the
same tokens per step and the same share of Muon work per micro-step as the
8-GPU reference) with bf16 autocast and torch.compile; the Muon step alone;
host-device synchronisations inside one training step; sliding-window
evaluation (window 2048, stride 64, 32 windows per batch). If FlashAttention
3 is importable, training and evaluation are measured again with SDPA.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import types
import warnings
from dataclasses import replace
from pathlib import Path

import torch

DRY = os.environ.get("PGOLF_GPU_CHECK_DRY", "") not in ("", "0")


def _placeholder_zstandard(force: bool) -> None:
    """The GPU machine has no zstandard, and `pgolf.train` imports `pgolf.artifact`, which imports it
    at module level. Nothing here compresses, so a placeholder that fails only when used lets the
    import through. The dry run installs it even where zstandard exists, to prove the path needs none."""
    if not force:
        try:
            import zstandard  # noqa: F401
            return
        except ImportError:
            pass

    def missing(name: str):
        if name.startswith("__"):  # torch.compile inspects modules (e.g. __file__): plain "not there"
            raise AttributeError(name)
        raise ImportError(f"zstandard is not installed (zstandard.{name} was needed)")

    placeholder = types.ModuleType("zstandard")
    placeholder.__getattr__ = missing
    sys.modules["zstandard"] = placeholder


_placeholder_zstandard(force=DRY)

from pgolf import attention, bench, flops  # noqa: E402  (after the placeholder, on purpose)
from pgolf.config import get_preset  # noqa: E402
from pgolf.model import GPT  # noqa: E402
from pgolf.train import train_step  # noqa: E402

TARGET_TOKENS_PER_SECOND = 1.17e6  # 786,432 tokens / 84 ms / 8 GPUs: the reference's per-GPU rate
TARGET_MFU = 0.35
TARGET_EVAL_POSITIONS_PER_SECOND = 3.6e6


def settings() -> dict:
    if DRY:
        config = get_preset("tiny")
        config = replace(config, model=replace(config.model, num_layers=2, model_dim=64, num_heads=2, num_kv_heads=1),
                         eval_seq_len=64, eval_stride=16, eval_batch_seqs=4)
        return dict(config=config, device=torch.device("cpu"), micro_batch=2, seq_len=64, grad_accum=2,
                    warmup=2, steps=2, eval_batches=2, matmul_sizes=(128, 256))
    return dict(config=get_preset("pr198"), device=torch.device("cuda", 0), micro_batch=48, seq_len=2048,
                grad_accum=8, warmup=3, steps=5, eval_batches=24, matmul_sizes=(4096, 8192, 16384))


def muon_step_seconds(trainer, device: torch.device, repeats: int = 5) -> float:
    """Median time of the Muon step alone, on random gradients of the right shapes."""
    muon = trainer.optimizers[0]
    parameters = [p for group in muon.param_groups for p in group["params"]]

    for parameter in parameters:  # the step reads the gradients and leaves them in place
        parameter.grad = torch.randn_like(parameter)
    muon.step()  # warm-up (compilation)
    seconds = statistics.median(bench.time_calls(muon.step, repeats, device))
    muon.zero_grad(set_to_none=True)
    return seconds


def count_host_syncs(trainer, device: torch.device) -> str:
    """Synchronising CUDA calls inside one `train_step` (torch's sync debug mode turns each into a warning)."""
    if device.type != "cuda":
        return "n/a (CPU)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_step(trainer)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    messages = sorted({str(w.message).splitlines()[0][:60] for w in caught if "synchroniz" in str(w.message)})
    synced = [w for w in caught if "synchroniz" in str(w.message)]
    return f"{len(synced)}" + (f" ({'; '.join(messages)})" if messages else "")


def measure(label: str, setup: dict, shard: Path, peak: float, rows: list, extra: bool) -> None:
    device, config = setup["device"], setup["config"]
    variant = bench.VARIANTS["bf16+compile"]
    run_config = bench.bench_run_config(config, variant, setup["micro_batch"], setup["seq_len"],
                                        setup["grad_accum"], device)
    backend = attention.attention_backend_name(device) if device.type == "cuda" else "sdpa"
    started = time.perf_counter()
    [result] = bench.measure_training([(variant, run_config)], device, shard, setup["warmup"], setup["steps"])
    if result.error:
        rows.append([f"{label} training", "failed", result.error, ""])
        return
    mfu = result.flops_per_second / peak
    micro_steps = setup["grad_accum"]
    rows += [
        [f"{label} train ms/step ({micro_steps} x {setup['micro_batch']} x {setup['seq_len']} tokens)",
         f"{result.median_seconds * 1e3:.1f}", f"{result.median_seconds * 1e3 / micro_steps:.1f} ms/micro-step", ""],
        [f"{label} train tokens/s", f"{result.tokens_per_second:,.0f}", f">= {TARGET_TOKENS_PER_SECOND:,.0f}",
         _verdict(result.tokens_per_second >= TARGET_TOKENS_PER_SECOND)],
        [f"{label} train MFU (bf16 peak)", f"{mfu:.1%}", f">= {TARGET_MFU:.0%}", _verdict(mfu >= TARGET_MFU)],
        [f"{label} peak memory", f"{result.peak_memory / 2**30:.1f} GiB", "", ""],
        [f"{label} attention backend", backend, "", ""],
        [f"{label} losses (first, last)", f"{result.losses[0]:.4f}, {result.losses[-1]:.4f}", "", ""],
    ]
    print(f"{label}: training measured in {time.perf_counter() - started:.0f} s", flush=True)
    if extra:
        trainer = bench.build_bench_trainer(run_config, device, shard)
        train_step(trainer)
        muon = muon_step_seconds(trainer, device)
        rows.append([f"{label} Muon step alone (one rank does all)", f"{muon * 1e3:.1f} ms",
                     f"{muon / result.median_seconds:.1%} of a step", ""])
        rows.append([f"{label} host syncs in one train_step", count_host_syncs(trainer, device), "0 wanted", ""])
        del trainer

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = torch.compile(GPT(config.model).to(device), dynamic=False)
    evaluation = bench.measure_eval(model, config, device, setup["eval_batches"], config.eval_batch_seqs,
                                    torch.bfloat16)
    del model
    rate = evaluation.positions_per_second
    rows += [
        [f"{label} sliding eval positions/s", f"{rate:,.0f}", f">= {TARGET_EVAL_POSITIONS_PER_SECOND:,.0f}",
         _verdict(rate >= TARGET_EVAL_POSITIONS_PER_SECOND)],
        [f"{label} sliding eval scored tokens/s", f"{evaluation.scored_tokens_per_second:,.0f}",
         f"full val {evaluation.full_val_seconds:,.0f} s on 1 GPU", ""],
    ]
    print(f"{label}: evaluation measured in {time.perf_counter() - started:.0f} s", flush=True)


def _verdict(passed: bool) -> str:
    return "" if DRY else ("PASS" if passed else "FAIL")


def main() -> int:
    setup = settings()
    device = setup["device"]
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device; set PGOLF_GPU_CHECK_DRY=1 for the CPU dry run", file=sys.stderr)
        return 1
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        machine = f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        bench.configure_threads(os.cpu_count() or 1)
        machine = f"CPU dry run (tiny shapes), torch {torch.__version__}"
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\nmachine: {machine}", flush=True)
    peak, size = bench.matmul_peak(device, torch.bfloat16, setup["matmul_sizes"])
    config = setup["config"]
    rows = [["bf16 matmul peak", f"{peak / 1e12:.1f} TFLOP/s", f"{size}^3, median of 5", ""],
            ["FLOP per training token", f"{flops.training_flops_per_token(config.model, setup['seq_len']):,}",
             f"{flops.matrix_parameters(config.model):,} matrix parameters", ""]]
    fa3 = attention._fa3_func is not None and attention.attention_backend_name(device) == "fa3"
    with tempfile.TemporaryDirectory(prefix="pgolf-gpu-check-") as folder:
        tokens_needed = ((setup["warmup"] + setup["steps"] + 4) * setup["grad_accum"]
                         * (setup["micro_batch"] * setup["seq_len"] + 1) + 1)
        shard = bench.write_synthetic_shard(Path(folder), config.model.vocab_size, tokens_needed, seed=config.seed)
        measure("fa3" if fa3 else "sdpa", setup, shard, peak, rows, extra=True)
        if fa3:  # the same with SDPA: hide FA3 from the dispatcher and recompile
            attention._fa3_func = attention._fa3_varlen_func = None
            torch._dynamo.reset()
            measure("sdpa", setup, shard, peak, rows, extra=False)
    print()
    print(bench.format_table(["measure", "value", "target / note", "met?"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

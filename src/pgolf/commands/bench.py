"""`pgolf bench train|eval`: measure training and sliding-window evaluation speed on this machine.

Every number printed is measured in the one run: the matmul peak the
utilisation is relative to, and (for `train`) every variant the speed-ups are
relative to. Data are random tokens; nothing is read from a dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from pgolf.challenge import OFFICIAL_SP1024_VAL_TARGETS
from pgolf.errors import PgolfError
from pgolf.machine import describe_machine


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure training/evaluation speed (tokens/s, FLOP utilisation)",
                                   description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    parser.set_defaults(func=lambda args: parser.print_help() or 2)

    train = commands.add_parser("train", help="time full training steps (forward, backward, optimiser)")
    _common_arguments(train)
    train.add_argument("--micro-batch", type=int, help="sequences per micro-step (default: the preset's, on CPU "
                                                       "capped to fit memory, with a note saying so)")
    train.add_argument("--seq-len", type=int, help="tokens per sequence (default: the preset's)")
    train.add_argument("--grad-accum", type=int, default=1, help="micro-steps per optimiser step (default 1)")
    train.add_argument("--variants", help="comma list of fp32, bf16, bf16+compile, fp32+compile, and on CPU "
                                          "bf16+sdpa, bf16+compile+sdpa (PyTorch's SDPA attention instead of "
                                          "pgolf's AMX kernels) (default: fp32,bf16,bf16+compile on "
                                          "CPU, bf16+compile on CUDA)")
    train.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation; default 2)")
    train.add_argument("--steps", type=int, default=5, help="timed steps per variant; the median is reported")
    train.set_defaults(func=run_train)

    evaluate = commands.add_parser("eval", help="time sliding-window evaluation and predict the full val split")
    _common_arguments(evaluate)
    evaluate.add_argument("--variant", help="bf16, fp32, bf16+compile or fp32+compile "
                                            "(default: bf16+compile on CUDA, the CPU training default on CPU)")
    evaluate.add_argument("--batch-seqs", type=int, help="windows per forward pass (default: preset on CUDA, 4 on CPU)")
    evaluate.add_argument("--batches", type=int, default=2, help="timed batches of windows (default 2)")
    evaluate.set_defaults(func=run_eval)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="pr198", help="pr198, baseline or tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op CPU threads (default: all cores); inter-op is set to 1")
    parser.add_argument("--matmul-sizes", help="comma list of n for the n x n x n peak product "
                                               "(default 1024,2048,3072 on CPU, 4096,8192,16384 on CUDA)")
    parser.add_argument("--json", dest="json_path", help="also write the measurements to this JSON file")
    parser.add_argument("--cpu-kernels", action="store_true",
                        help="build pgolf's AMX attention kernels if not built yet (the cpu-kernels extra)")


def _setup(args: argparse.Namespace):
    import torch

    from pgolf.bench import configure_threads
    from pgolf.config import apply_overrides, get_preset
    from pgolf.distributed import resolve_device

    config = apply_overrides(get_preset(args.preset), args.overrides)
    config.validate()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    threads = configure_threads(args.threads)
    if device.type == "cpu":
        from pgolf.kernels import enable_cpu_attention

        enable_cpu_attention(build=args.cpu_kernels, announce=print)
    try:
        args.sizes = tuple(int(size) for size in args.matmul_sizes.split(",")) if args.matmul_sizes else None
    except ValueError:
        raise PgolfError(f"--matmul-sizes expects integers separated by commas, got {args.matmul_sizes!r}") from None
    return config, device, threads


def _header(args, device, threads) -> list[str]:
    return [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
            f"machine: {describe_machine(device)}",
            f"threads: intra-op {threads[0]}, inter-op {threads[1]}",
            f"preset: {args.preset}" + (f" with {' '.join(args.overrides)}" if args.overrides else "")]


def run_train(args: argparse.Namespace) -> int:
    import torch

    from pgolf import bench, flops

    config, device, threads = _setup(args)
    variants = bench.parse_variants(args.variants or ",".join(
        bench.GPU_VARIANTS if device.type == "cuda" else bench.CPU_VARIANTS))
    seq_len = args.seq_len or config.train_seq_len
    micro_batch, capped_note = (args.micro_batch, None) if args.micro_batch else \
        bench.default_micro_batch(config, seq_len, device)
    if args.steps < 1 or args.warmup < 1:
        raise PgolfError(f"--steps and --warmup must be >= 1 (got {args.steps}, {args.warmup})")
    print("\n".join(_header(args, device, threads)))
    print(f"shape: {micro_batch} x {seq_len} tokens per micro-step, {args.grad_accum} micro-step(s) per step; "
          f"{flops.training_flops_per_token(config.model, seq_len):,} FLOP per token "
          f"({flops.matrix_parameters(config.model):,} matrix parameters)")
    if capped_note:
        print(f"note: {capped_note}")

    peaks = {}
    for dtype_name in sorted({variant.autocast_dtype for variant in variants} | {"bf16"}):
        rate, size = bench.matmul_peak(device, torch.bfloat16 if dtype_name == "bf16" else torch.float32,
                                         args.sizes)
        peaks[dtype_name] = rate
        if dtype_name == "bf16":
            bf16_size = size
        print(f"matmul peak {dtype_name}: {rate / 1e12:.3f} TFLOP/s ({size}x{size}x{size}, median of 5)")

    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as folder:
        num_tokens = (args.warmup + args.steps + 1) * args.grad_accum * (micro_batch * seq_len + 1) + 1
        shard = bench.write_synthetic_shard(Path(folder), config.model.vocab_size, num_tokens, seed=config.seed)
        runs = [(variant, bench.bench_run_config(config, variant, micro_batch, seq_len, args.grad_accum, device))
                for variant in variants]
        # The bf16 peak is sampled again after every round of steps, every candidate size each
        # time, so that MFU compares with what the matmul unit gave while the steps ran: on a shared
        # machine the same product measured 0.4-2.1 TFLOP/s within an hour, and a size that won one
        # noisy opening probe (1024 on two threads) can cap every later sample (docs/performance.md).
        samples, sample_sizes = [peaks["bf16"]], [bf16_size]

        def sample_peak() -> None:
            rate, size = bench.matmul_peak(device, torch.bfloat16, args.sizes, repeats=3)
            samples.append(rate)
            sample_sizes.append(size)

        measurements = bench.measure_training(runs, device, shard, args.warmup, args.steps, after_round=sample_peak)
    sample_peak()
    peaks["bf16"] = statistics.median(samples)
    print(f"matmul peak bf16 through the run: median {peaks['bf16'] / 1e12:.3f} TFLOP/s of {len(samples)} "
          f"samples ({min(samples) / 1e12:.3f}-{max(samples) / 1e12:.3f}; winning sizes "
          f"{','.join(map(str, sample_sizes))}); MFU below is against the median")
    if max(samples) > bench.PEAK_SPREAD_WARNING * min(samples):
        print(f"warning: the bf16 peak varied {max(samples) / min(samples):.1f}x through the run (other load on "
              "the machine?); MFU is only as steady as that median")

    if device.type == "cpu" and any(variant.autocast_dtype == "bf16" for variant in variants):
        from pgolf.kernels import enable_cpu_attention

        reason = enable_cpu_attention()  # already tried: the reason it gave
        print("bf16 attention: " + (f"PyTorch's SDPA ({reason})" if reason else
                                    "pgolf's AMX kernels (PyTorch's SDPA in *+sdpa variants)"))
    baseline = next((m for m in measurements if m.variant == "fp32" and not m.error), None)
    rows = []
    for variant, m in zip(variants, measurements):
        if m.error:
            rows.append([variant.name, f"failed ({m.error})"] + ["-"] * 8)
            continue
        speedup = m.tokens_per_second / baseline.tokens_per_second if baseline else float("nan")
        loss_gap = bench.largest_loss_gap(m.losses, baseline.losses) if baseline else float("nan")
        memory = f"{m.peak_memory / 2**30:.2f}" if device.type == "cuda" else "-"
        rows.append([variant.name, f"{m.median_seconds * 1e3:.1f}", f"{m.tokens_per_second:,.0f}",
                     f"{m.flops_per_second / 1e12:.3f}", f"{m.flops_per_second / peaks[variant.autocast_dtype]:.1%}",
                     f"{m.flops_per_second / peaks['bf16']:.1%}", f"{speedup:.2f}x" if baseline else "-",
                     f"{m.losses[-1]:.4f}", f"{loss_gap:.4f}" if baseline else "-", memory])
    print()
    print(bench.format_table(["variant", "ms/step", "tokens/s", "TFLOP/s", "MFU (own dtype)", "MFU (bf16 peak)",
                              "vs fp32", "last loss", "max |Δloss| vs fp32", "peak mem GiB"], rows))
    if device.type == "cpu":
        print(f"process peak RSS: {bench.peak_memory_bytes(device) / 2**30:.2f} GiB (all variants together)")
    rates = {m.variant: m.tokens_per_second for m in measurements if not m.error}
    fastest = bench.fastest_variant(rates)
    print(f"fastest: {fastest}")
    if args.json_path:
        payload = {"header": _header(args, device, threads), "peaks": peaks, "bf16_peak_samples": samples,
                   "fastest": fastest,
                   "micro_batch": micro_batch, "seq_len": seq_len, "grad_accum": args.grad_accum,
                   "measurements": [{**vars(m), "median_seconds": m.median_seconds,
                                     "tokens_per_second": m.tokens_per_second} for m in measurements]}
        Path(args.json_path).write_text(json.dumps(payload, indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from pgolf import bench, flops
    from pgolf.attention import attention_backend_name
    from pgolf.model import GPT

    config, device, threads = _setup(args)
    if args.variant:
        variant = bench.parse_variants(args.variant)[0]
    else:
        variant = bench.VARIANTS["bf16+compile"] if device.type == "cuda" else bench.CPU_TRAINING_DEFAULT
    batch_seqs = args.batch_seqs or (config.eval_batch_seqs if device.type == "cuda" else 4)
    if batch_seqs < 1 or args.batches < 1:
        raise PgolfError(f"--batch-seqs and --batches must be >= 1 (got {batch_seqs}, {args.batches})")
    print("\n".join(_header(args, device, threads)))
    torch.manual_seed(config.seed)
    model = GPT(config.model).to(device)
    runnable = torch.compile(model, dynamic=False) if variant.compile else model
    dtype = torch.bfloat16 if variant.autocast_dtype == "bf16" else None
    result = bench.measure_eval(runnable, config, device, args.batches, batch_seqs, dtype)
    peak, size = bench.matmul_peak(device, variant.torch_dtype, args.sizes)
    print(f"matmul peak {variant.autocast_dtype}: {peak / 1e12:.3f} TFLOP/s ({size}x{size}x{size}, median of 5, "
          "timed once after the evaluation: MFU below is against it)")
    achieved = result.positions_per_second * flops.forward_flops_per_position(config.model, config.eval_seq_len)
    full_windows = flops.sliding_window_count(OFFICIAL_SP1024_VAL_TARGETS, config.eval_seq_len, config.eval_stride)
    print(f"variant: {variant.name}, attention: {attention_backend_name(device)}, window {config.eval_seq_len}, "
          f"stride {config.eval_stride}, {batch_seqs} windows per batch")
    print(bench.format_table(
        ["windows", "seconds", "scored tokens/s", "positions/s", "TFLOP/s", "MFU", "full val (s, 1 process)"],
        [[str(result.windows), f"{result.seconds:.2f}", f"{result.scored_tokens_per_second:,.0f}",
          f"{result.positions_per_second:,.0f}", f"{achieved / 1e12:.3f}", f"{achieved / peak:.1%}",
          f"{result.full_val_seconds:,.0f}"]]))
    print(f"full val split: {OFFICIAL_SP1024_VAL_TARGETS:,} targets = {full_windows:,} windows of "
          f"{config.eval_seq_len} at stride {config.eval_stride}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"header": _header(args, device, threads), **vars(result),
                                                    "positions_per_second": result.positions_per_second,
                                                    "peak": peak, "variant": variant.name}, indent=2))
    return 0

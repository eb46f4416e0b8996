"""`pgolf quantize RUN_DIR --scheme S [--compressor C] | --sweep`: re-quantise a finished run.

Reads the run's averaged full-precision weights (RUN_DIR/weights.safetensors), quantises them
with the scheme (GPTQ schemes calibrate on the run's train shards first), writes the artifact
under RUN_DIR/requantized/, reads it back, scores it with the run's evaluation settings and
appends a row to RUN_DIR/quantize.csv: scheme, compressor, model and total bytes, bpb, the
quantisation gap against the full-precision weights scored the same way, and the time.
`--sweep` runs every scheme of the sweep with every compressor, prints the bytes-vs-bpb table
and draws RUN_DIR/quantize_sweep.png with the 16,000,000-byte line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SWEEP_SCHEMES = ("pr198", "pr198-nofloor", "gptq", "gptq-sdclip", "gptq-sdclip-lqer", "gptq-sdclip-lqer-awq")
SWEEP_COMPRESSORS = ("zstd", "brotli", "pergroup")
SWEEP_PLOT = "quantize_sweep.png"


def register(subparsers) -> None:
    parser = subparsers.add_parser("quantize", help="re-quantise a finished run's weights with another scheme",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a finished run folder holding weights.safetensors and config.json")
    parser.add_argument("--scheme", help="quantisation scheme (pgolf.quant / pgolf.calibrated)")
    parser.add_argument("--compressor", action="append", help="payload compressor (repeatable; default: the "
                                                              "scheme's)")
    parser.add_argument("--sweep", action="store_true", help=f"every scheme of {', '.join(SWEEP_SCHEMES)} with "
                                                             f"{', '.join(SWEEP_COMPRESSORS)}")
    parser.add_argument("--stride", type=int, help="evaluation stride (default: the run's)")
    parser.add_argument("--calibration-batches", type=int, default=16, help="GPTQ calibration batches")
    parser.add_argument("--calibration-seqs", type=int, default=16, help="sequences per calibration batch")
    parser.set_defaults(func=run)


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'scheme':<22} {'compressor':<10} {'bytes_model':>12} {'bytes_total':>12} {'val_bpb':>9} "
             f"{'gap':>8} {'seconds':>8}"]
    for row in rows:
        lines.append(f"{row['scheme']:<22} {row['compressor']:<10} {row['bytes_model']:>12,} "
                     f"{row['bytes_total']:>12,} {row['val_bpb']:>9.4f} {row['quantization_gap']:>+8.4f} "
                     f"{row['seconds_quantize'] + row['seconds_compress']:>8.1f}")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], path: Path, budget: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    for compressor in sorted({row["compressor"] for row in rows}):
        chosen = [row for row in rows if row["compressor"] == compressor]
        axes.scatter([row["bytes_total"] for row in chosen], [row["val_bpb"] for row in chosen], label=compressor)
        for row in chosen:
            axes.annotate(row["scheme"], (row["bytes_total"], row["val_bpb"]), fontsize=7)
    axes.axvline(budget, color="red", linestyle="--", label=f"budget {budget:,} bytes")
    axes.set_xlabel("bytes (model + code)")
    axes.set_ylabel("val bpb after the round trip")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    from pgolf.challenge import BUDGET_BYTES
    from pgolf.calibrated import CalibratedScheme, get_any_scheme
    from pgolf.errors import PgolfError
    from pgolf.requantize import calibrate, load_run, requantize, score

    if args.sweep == bool(args.scheme):
        raise PgolfError("give exactly one of --scheme S or --sweep")
    schemes = SWEEP_SCHEMES if args.sweep else (args.scheme,)
    compressors = list(SWEEP_COMPRESSORS) if args.sweep and not args.compressor else args.compressor
    resolved = [get_any_scheme(name) for name in schemes]  # unknown names fail before any work
    finished = load_run(Path(args.run_dir), stride=args.stride)
    calibration = None
    if any(isinstance(scheme, CalibratedScheme) and scheme.needs_calibration for scheme in resolved):
        calibration = calibrate(finished, args.calibration_batches, args.calibration_seqs)
    full_precision_bpb = score(finished, finished.state)
    rows = []
    for scheme in resolved:
        rows += requantize(finished, scheme.name, compressors, calibration, full_precision_bpb)
    print(f"full precision val_bpb: {full_precision_bpb:.4f}  (rows appended to {finished.run_dir}/quantize.csv)")
    print(format_rows(rows))
    if args.sweep:
        plot_sweep(rows, finished.run_dir / SWEEP_PLOT, BUDGET_BYTES)
        print(f"plot: {finished.run_dir / SWEEP_PLOT}")
    return 0

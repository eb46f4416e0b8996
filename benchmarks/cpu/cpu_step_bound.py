"""Where a pr198 training step's time goes on this CPU, and the MFU it could reach if parts of it ran
at the rates the hardware shows elsewhere: a measured ceiling for `pgolf bench train`'s MFU.

    PYTHONPATH=src python benchmarks/cpu/cpu_step_bound.py --threads 1 [--micro-batch 1] [--grad-accum 8] [--steps 2]

In one run it times:
  * whole bf16+compile training steps (the trainer `pgolf bench train` times, synthetic tokens),
    with the optimisers' share measured by wrapping their `step`;
  * every matrix product of the model's linears on its own, in the layouts the compiled backward
    runs them (forward X W^T, input gradient dY W, weight gradient dY^T X with dY^T a transposed
    view), plus the weight gradient with a contiguous dY^T (what it would cost if the transpose
    were free);
  * pgolf's AMX attention kernels, forward and backward, at the model's shape;
  * the products alone that those kernels make per 128 x 128 tile pair (oneDNN brgemm with hot
    caches, `benchmarks/cpu/cpu_brgemm_shapes.py`'s operators): attention with a free softmax;
  * the bf16 matmul peak (`pgolf.bench.matmul_peak`), before and after.

It prints the split of a micro-step and the MFU of the step with, in turn, the weight gradients at
the contiguous layout's rate, attention at its products' rate, both, then also every model product
at the peak, and last the optimisers' step spread over as many micro-steps as the reference's batch
makes on one of its 8 GPUs (48 x 2048 tokens for pr198). What is left ("rest": inductor's
element-wise kernels, copies, and whatever the step's products and attention lose against their
isolated, hot-cache timings) is kept as measured. Each line is a ceiling for what those changes
could give, not a prediction; the machine's pace changes during a run, so run it more than once.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from pgolf import bench, flops
from pgolf.train import train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_brgemm_shapes  # noqa: E402  (a sibling script: the brgemm timing operators)
from cpu_attention_dtype import median_milliseconds  # noqa: E402  (sibling: median of timed calls after a warm-up)
import step_setup  # noqa: E402  (a sibling module: what the step benchmarks share)

TILE = 128  # pgolf's attention tiles (pgolf.kernels.cpu_attention.TILE)


def median_seconds(function, repeats: int) -> float:
    return median_milliseconds(function, repeats) / 1e3


def time_steps(args: argparse.Namespace) -> tuple[float, float, nn.Module]:
    """(seconds per optimiser step, seconds of it in the optimisers' `step`, the model) after one untimed step."""
    in_optimizers = [0.0]

    @contextlib.contextmanager
    def timed(_name):
        started = time.perf_counter()
        try:
            yield
        finally:
            in_optimizers[0] += time.perf_counter() - started

    with step_setup.synthetic_trainer(args, bench.VARIANTS["bf16+compile"], torch.device("cpu"), args.steps) as trainer:
        step_setup.around_optimizer_steps(trainer.optimizers, timed)
        train_step(trainer)  # compilation, allocator
        in_optimizers[0] = 0.0
        started = time.perf_counter()
        for _ in range(args.steps):
            train_step(trainer)
        elapsed = time.perf_counter() - started
    return elapsed / args.steps, in_optimizers[0] / args.steps, trainer.base_model


def linear_shapes(model: nn.Module) -> Counter:
    """(out, in) of every weight the tokens are multiplied by (flops.matrix_parameters_of_model's set), counted."""
    shapes = Counter(tuple(module.weight.shape) for module in model.modules() if isinstance(module, nn.Linear))
    shapes[tuple(model.tok_emb.weight.shape)] += 1  # the tied output head
    return shapes


def product_seconds(shapes: Counter, tokens: int, repeats: int) -> dict[str, float]:
    """Seconds per micro-step of each kind of model product, summed over the model's linears."""
    totals = dict.fromkeys(("forward", "input grad", "weight grad", "weight grad, contiguous dY^T"), 0.0)
    generator = torch.Generator().manual_seed(0)
    for (out, inp), count in shapes.items():
        x = torch.randn(tokens, inp, generator=generator).bfloat16()
        w = torch.randn(out, inp, generator=generator).bfloat16()
        dy = torch.randn(tokens, out, generator=generator).bfloat16()
        dy_t = dy.t().contiguous()
        timings = {
            "forward": median_seconds(lambda: torch.mm(x, w.t()), repeats),
            "input grad": median_seconds(lambda: torch.mm(dy, w), repeats),
            "weight grad": median_seconds(lambda: torch.mm(dy.t(), x), repeats),
            "weight grad, contiguous dY^T": median_seconds(lambda: torch.mm(dy_t, x), repeats),
        }
        for kind, seconds in timings.items():
            totals[kind] += count * seconds
    return totals


def attention_seconds(model, batch: int, length: int, repeats: int) -> float:
    """pgolf's AMX kernels, forward + backward, for one micro-step's layers."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(batch, length, model.num_heads, model.head_dim, generator=generator).bfloat16()
    k = torch.randn(batch, length, model.num_kv_heads, model.head_dim, generator=generator).bfloat16()
    v = torch.randn(batch, length, model.num_kv_heads, model.head_dim, generator=generator).bfloat16()
    grad_out = torch.randn_like(q)
    scale = model.head_dim ** -0.5
    ops = torch.ops.pgolf_cpu

    def forward_backward():
        out, lse = ops.causal_attention_forward(q, k, v, scale)
        ops.causal_attention_backward(q, k, v, out, grad_out, lse, scale)

    return model.num_layers * median_seconds(forward_backward, repeats)


def attention_products_seconds(model, batch: int, length: int, threads: int) -> float:
    """The kernels' products alone for one micro-step (brgemm, hot caches, timed on one thread and
    divided by `threads`, i.e. perfect scaling): per tile pair the forward's
    S = Q K^T (a 128 x 128 x 64 score tile) and P V (M 128, K 128), the backward's S and dP (two score
    tiles), dV^T and dK^T (two M 64, K 128 calls each) and dQ (M 128, K 128); head_dim / 64 calls where
    a product's N is the head dimension."""
    tiles = length // TILE
    pairs = tiles * (tiles + 1) // 2
    chunks = model.head_dim // 64
    score = cpu_brgemm_shapes.score_tile_seconds(20000) * model.head_dim / 64
    square = cpu_brgemm_shapes.brgemm_seconds(128, 128, 20000)
    narrow = cpu_brgemm_shapes.brgemm_seconds(model.head_dim, 128, 20000)
    per_pair = 3 * score + 2 * chunks * square + 4 * narrow
    return batch * model.num_layers * model.num_heads * pairs * per_pair / threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_setup.add_step_arguments(parser, grad_accum=8, threads=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per product / attention median")
    args = parser.parse_args()

    bench.configure_threads(args.threads)
    cpu_brgemm_shapes.load_extension()
    config = step_setup.step_config(args)
    from pgolf.kernels import cpu_attention
    reason = cpu_attention.prepare()
    if reason:
        raise SystemExit(f"pgolf's attention kernels are not available here: {reason}")

    peaks = [bench.matmul_peak(torch.device("cpu"), torch.bfloat16)[0]]
    step, in_optimizers, model = time_steps(args)
    products = product_seconds(linear_shapes(model), args.micro_batch * args.seq_len, args.repeats)
    attention = attention_seconds(config.model, args.micro_batch, args.seq_len, args.repeats)
    attention_products = attention_products_seconds(config.model, args.micro_batch, args.seq_len, args.threads)
    peaks.append(bench.matmul_peak(torch.device("cpu"), torch.bfloat16)[0])
    peak = statistics.median(peaks)

    micro = step / args.grad_accum
    optimizer_share = in_optimizers / args.grad_accum
    model_products = products["forward"] + products["input grad"] + products["weight grad"]
    rest = micro - model_products - attention - optimizer_share
    micro_tokens = args.micro_batch * args.seq_len
    step_flops = flops.training_flops_per_token(config.model, args.seq_len) * micro_tokens
    product_flops = 6 * flops.matrix_parameters_of_model(model) * micro_tokens

    def mfu(seconds: float) -> str:
        return f"{step_flops / seconds / peak:6.1%} MFU"

    samples = ", ".join(f"{p / 1e12:.2f}" for p in peaks)
    print(f"{args.preset}, {args.micro_batch} x {args.seq_len} tokens x {args.grad_accum} micro-steps, "
          f"{args.threads} thread(s); bf16 peak {peak / 1e12:.2f} TFLOP/s (samples {samples})")
    print(f"per micro-step: {micro * 1e3:7.1f} ms  {mfu(micro)} (the step as measured)")
    rows = [("model products", model_products, product_flops),
            ("  forward X W^T", products["forward"], product_flops / 3),
            ("  input grads dY W", products["input grad"], product_flops / 3),
            ("  weight grads dY^T X", products["weight grad"], product_flops / 3),
            ("attention (pgolf kernels)", attention, step_flops - product_flops),
            ("optimisers (per micro-step)", optimizer_share, 0),
            ("rest: element-wise, copies, ...", rest, 0)]
    for name, seconds, work in rows:
        rate = f"{work / seconds / 1e12:5.2f} TFLOP/s" if work and seconds > 0 else ""
        print(f"  {name:34s} {seconds * 1e3:7.1f} ms {seconds / micro:6.1%}  {rate}")
    dw_saving = max(0.0, products["weight grad"] - products["weight grad, contiguous dY^T"])
    attention_saving = attention - attention_products
    best_products = min(product_flops / peak, model_products - dw_saving)
    ideal = micro - attention_saving - model_products + best_products
    # the reference's batch on one of its 8 GPUs, in micro-steps of this run's size (never fewer than
    # this run has: the line only ever spreads the optimiser's step wider)
    reference_micro_steps = max(args.grad_accum, config.global_batch_tokens // (8 * micro_tokens))
    ideal_reference_batch = ideal - optimizer_share + in_optimizers / reference_micro_steps
    print("if only this changed, everything else as measured:")
    for name, seconds in (
            (f"weight grads at the contiguous layout's rate ({-dw_saving * 1e3:+.0f} ms)", micro - dw_saving),
            (f"attention at its brgemm products' rate, softmax free ({-attention_saving * 1e3:+.0f} ms)",
             micro - attention_saving),
            ("both", micro - dw_saving - attention_saving),
            ("both, and the model products at the peak (or as measured, if faster)", ideal),
            (f"that, and the optimisers' step spread over {reference_micro_steps} micro-steps", ideal_reference_batch)):
        print(f"  {name:80s} {seconds * 1e3:7.1f} ms {mfu(seconds)}")


if __name__ == "__main__":
    main()

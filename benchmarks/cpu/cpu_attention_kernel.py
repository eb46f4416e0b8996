"""pgolf's AMX attention kernels against SDPA's CPU flash attention, bf16, forward + backward.

For the `tiny` and `pr198` attention shapes, alternating the candidates call by call (so load
from other processes falls on all of them), prints the median milliseconds of forward+backward,
the ratios to SDPA, and each one's largest gradient error relative to a float64 computation on
the same bf16 inputs. Candidates: SDPA (PyTorch's flash forward and backward); "aten fwd + pgolf
bwd" (PyTorch's flash forward with pgolf's backward, what pgolf trained with before its own
forward); "pgolf" (pgolf's forward and backward, what training uses).

    PYTHONPATH=src python benchmarks/cpu/cpu_attention_kernel.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from pgolf.kernels import cpu_attention

SHAPES = ((32, 4, 2, 256, 64), (1, 8, 4, 2048, 64))  # (B, H, Hkv, T, D): tiny, pr198


def sdpa_forward_backward(q, k, v, grad_out):
    leaves = [t.transpose(1, 2).detach().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*leaves, is_causal=True, enable_gqa=True).backward(grad_out.transpose(1, 2))
    return [leaf.grad.transpose(1, 2) for leaf in leaves]


def kernel_forward_backward(q, k, v, grad_out):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    cpu_attention.causal_attention(*leaves).backward(grad_out)
    return [leaf.grad for leaf in leaves]


def aten_forward_pgolf_backward(q, k, v, grad_out):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)[:2]
    return list(torch.ops.pgolf_cpu.causal_attention_backward(
        q, k, v, out.transpose(1, 2).contiguous(), grad_out, lse.contiguous(), q.shape[-1] ** -0.5))


def float64_gradients(q, k, v, grad_out):
    leaves = [t.double().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*leaves, is_causal=True, enable_gqa=True).backward(grad_out.double().transpose(1, 2))
    return [leaf.grad.transpose(1, 2) for leaf in leaves]


def aten_forward(q, k, v, _grad_out):
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)[0]
    return [out.transpose(1, 2)]


def pgolf_forward(q, k, v, _grad_out):
    return [torch.ops.pgolf_cpu.causal_attention_forward(q, k, v, q.shape[-1] ** -0.5)[0]]


def float64_output(q, k, v, _grad_out):
    out = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v)), is_causal=True,
                                         enable_gqa=True)
    return [out.transpose(1, 2)]


def largest_relative_error(grads, reference) -> float:
    return max(((g.double() - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, reference))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--forward", action="store_true", help="time the forwards alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reason = cpu_attention.prepare()
    if reason:
        raise SystemExit(f"pgolf's AMX kernel is unavailable here: {reason}")
    for batch, heads, kv_heads, length, head_dim in SHAPES:
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(batch, length, count, head_dim, generator=generator).bfloat16()
                   for count in (heads, kv_heads, kv_heads))
        grad_out = torch.randn(batch, length, heads, head_dim, generator=generator).bfloat16()
        if args.forward:
            candidates, reference_of, what = {"aten": aten_forward, "pgolf": pgolf_forward}, float64_output, "output"
        else:
            candidates = {"sdpa": sdpa_forward_backward, "aten fwd + pgolf bwd": aten_forward_pgolf_backward,
                          "pgolf": kernel_forward_backward}
            reference_of, what = float64_gradients, "grad"
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for function in candidates.values():
            function(q, k, v, grad_out)  # warm-up
        for _ in range(args.repeats):
            for name, function in candidates.items():
                started = time.perf_counter()
                function(q, k, v, grad_out)
                times[name].append(time.perf_counter() - started)
        reference = reference_of(q, k, v, grad_out)
        medians = {name: statistics.median(seconds) * 1e3 for name, seconds in times.items()}
        errors = {name: largest_relative_error(function(q, k, v, grad_out), reference)
                  for name, function in candidates.items()}
        first = next(iter(candidates))
        print(f"B={batch} H={heads}/{kv_heads} T={length} D={head_dim}, {args.threads} thread(s): "
              + ", ".join(f"{name} {medians[name]:.1f} ms ({what} error {errors[name]:.4f})" for name in candidates)
              + f"; speed-up over {first}: " + ", ".join(f"{name} {medians[first] / medians[name]:.2f}x"
                                                         for name in candidates if name != first), flush=True)


if __name__ == "__main__":
    main()

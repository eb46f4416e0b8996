"""Time causal attention forward+backward on CPU: SDPA's flash kernel vs matmul-built alternatives.

Why pgolf keeps SDPA on CPU (docs/log.md, 2026-11-28): at the `pr198` shape every alternative
below was slower; at the `tiny` shape only the compiled matmul backward came close (0-20% faster
than SDPA over three runs, about 3% of a training step). For each (batch, heads, kv heads, T,
head_dim) and dtype it prints the median of 5 forward+backward calls and the largest gradient
error relative to an fp32 SDPA reference:

* sdpa:        `F.scaled_dot_product_attention(is_causal=True)`
* blocked-N:   scores from matmuls, query blocks of N against the keys up to the block's end
               (skips most of the masked half), softmax in fp32; N = T is the full square
* flash+mm-bwd: SDPA's flash forward (keeps its log-sum-exp), a backward written with matmuls
* flash+mm-bwd-8rows: the same backward, eager, over chunks of 8 (batch, head) rows at a time

    PYTHONPATH=src python benchmarks/cpu/cpu_attention_alternatives.py --threads 2
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from cpu_attention_dtype import median_milliseconds  # sibling script: benchmarks/ is on sys.path

SHAPES = ((32, 4, 2, 256, 64), (1, 8, 4, 2048, 64))  # tiny, pr198


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, T, H, D) layout in and out, as pgolf.attention."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)


def blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int) -> torch.Tensor:
    batch, length, heads, head_dim = q.shape
    groups = heads // k.shape[2]
    grouped_q = q.reshape(batch, length, k.shape[2], groups, head_dim).permute(0, 2, 3, 1, 4)  # (B, Hkv, g, T, D)
    keys = k.permute(0, 2, 1, 3).unsqueeze(2)  # (B, Hkv, 1, T, D)
    values = v.permute(0, 2, 1, 3).unsqueeze(2)
    outputs = []
    for start in range(0, length, block):
        end = min(start + block, length)
        scores = torch.matmul(grouped_q[..., start:end, :], keys[..., :end, :].transpose(-1, -2)).float()
        scores = scores * head_dim ** -0.5  # (B, Hkv, g, block, end)
        masked = torch.arange(end, device=q.device)[None, :] > torch.arange(start, end, device=q.device)[:, None]
        weights = torch.softmax(scores.masked_fill(masked, float("-inf")), dim=-1).to(v.dtype)
        outputs.append(torch.matmul(weights, values[..., :end, :]))
    return torch.cat(outputs, dim=-2).permute(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


def matmul_attention_backward(q, k, v, out, log_sum_exp, grad_out):
    """Gradients of causal attention for (N, T, D) tensors from the forward's output and log-sum-exp."""
    scale = q.shape[-1] ** -0.5
    length = q.shape[-2]
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2))  # fp32: P = exp(S - lse) needs it exact
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    probabilities = torch.where(causal, torch.exp(scores * scale - log_sum_exp.unsqueeze(-1)), 0.0)
    grad_out = grad_out.to(q.dtype)
    grad_v = torch.matmul(probabilities.to(q.dtype).transpose(-1, -2), grad_out)
    grad_p = torch.matmul(grad_out, v.transpose(-1, -2)).float()
    row_dot = (grad_out.float() * out.float()).sum(-1, keepdim=True)
    grad_s = (probabilities * (grad_p - row_dot) * scale).to(q.dtype)
    return torch.matmul(grad_s, k), torch.matmul(grad_s.transpose(-1, -2), q), grad_v


class FlashForwardMatmulBackward(torch.autograd.Function):
    """q, k, v (B, H, T, D) with k, v already repeated to H heads. `rows`: the backward runs over
    chunks of that many (batch, head) rows, so each chunk's score matrices stay in cache; 0 = all."""

    @staticmethod
    def forward(ctx, q, k, v, rows):
        out, log_sum_exp = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, is_causal=True)
        ctx.save_for_backward(q, k, v, out, log_sum_exp)
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        tensors = [t.flatten(0, 1) for t in (*ctx.saved_tensors, grad_out)]  # (B*H, T, ...)
        rows = ctx.rows or tensors[0].shape[0]
        chunks = [matmul_attention_backward(*(t[start:start + rows] for t in tensors))
                  for start in range(0, tensors[0].shape[0], rows)]
        shape = ctx.saved_tensors[0].shape
        return (*(torch.cat(parts).view(shape) for parts in zip(*chunks)), None)


def flash_with_matmul_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int = 0) -> torch.Tensor:
    groups = q.shape[2] // k.shape[2]
    heads_first = [t.transpose(1, 2) for t in (q, k, v)]
    keys, values = (t.repeat_interleave(groups, dim=1) for t in heads_first[1:])
    return FlashForwardMatmulBackward.apply(heads_first[0], keys, values, rows).transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for batch, heads, kv_heads, length, head_dim in SHAPES:
        candidates = {"sdpa": sdpa, "flash+mm-bwd": flash_with_matmul_backward,
                      "flash+mm-bwd-8rows": lambda q, k, v: flash_with_matmul_backward(q, k, v, rows=8)}
        for block in sorted({256, 512, length}):
            candidates[f"blocked-{block}"] = lambda q, k, v, block=block: blocked(q, k, v, block)
        for dtype in (torch.bfloat16, torch.float32):
            generator = torch.Generator().manual_seed(0)
            q, k, v = (torch.randn(batch, length, count, head_dim, generator=generator).to(dtype).requires_grad_()
                       for count in (heads, kv_heads, kv_heads))
            weights = torch.randn(batch, length, heads, head_dim, generator=generator)
            reference = [t.detach().float().requires_grad_() for t in (q, k, v)]
            (sdpa(*reference) * weights).sum().backward()
            for name, function in candidates.items():
                for compiled in (False, True) if "rows" not in name else (False,):  # chunks would unroll
                    torch._dynamo.reset()  # the blocked lambdas share one code object: no recompile limit
                    run = torch.compile(function) if compiled else function

                    def forward_backward():
                        for tensor in (q, k, v):
                            tensor.grad = None
                        (run(q, k, v).float() * weights).sum().backward()

                    milliseconds = median_milliseconds(forward_backward)
                    error = max(((mine.grad.float() - ref.grad).abs().max() / ref.grad.abs().max()).item()
                                for mine, ref in zip((q, k, v), reference))
                    print(f"B={batch} H={heads}/{kv_heads} T={length} D={head_dim} {str(dtype)[6:]:>8} "
                          f"{name + ('+compile' if compiled else ''):>22}: {milliseconds:7.1f} ms, "
                          f"relative grad error {error:.4f}", flush=True)


if __name__ == "__main__":
    main()

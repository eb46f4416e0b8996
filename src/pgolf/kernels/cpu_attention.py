"""Causal attention on CPU with pgolf's AMX kernels (`cpu_attention.cpp`), forward and backward.

Both run their products on the AMX tile unit with fp32 accumulation: forward+backward ~2x faster
than SDPA's at the `pr198` shape and 3.2-3.5x at `tiny`'s, with gradients closer to float64
(benchmarks/cpu/cpu_attention_kernel.py, docs/performance.md). They are wrapped as one
`torch.library` custom op with its own autograd formula, so `torch.compile` keeps it as a single
opaque node and the model still compiles to one graph.

`prepare()` compiles and loads the kernels (once per machine, ~20 s; cached after that) and
registers them with `pgolf.attention`; until then `usable()` says no: the model code never
triggers a build.
"""

from __future__ import annotations

import contextlib

import torch

from pgolf import attention
from pgolf.kernels.build import amx_unavailable_reason, load_operator_library

LIBRARY_NAME = "pgolf_cpu_attention"
TILE = 128  # the kernel's query/key block: T must be a multiple of it
CHUNK = 64  # head_dim must be a multiple of it

_ready = False
_reason: str | None = None  # why prepare() failed
_switched_off = False  # see switched_off()


def prepare() -> str | None:
    """Build and load the kernel if this machine can run it. None when ready, else the reason why not."""
    global _ready, _reason
    if attempted():
        return _reason
    reason = amx_unavailable_reason() or load_operator_library(LIBRARY_NAME, "cpu_attention.cpp")
    if reason is None and not torch.ops.pgolf_cpu.supported():
        reason = "oneDNN reports no AMX bf16 packing on this CPU"
    if reason is None:
        _register_backward_fake()
        attention.register_cpu_training_kernel(usable, causal_attention)
    _ready, _reason = reason is None, reason
    return reason


def attempted() -> bool:
    """Whether `prepare()` has run in this process (successfully or not)."""
    return _ready or _reason is not None


def unavailable_reason() -> str | None:
    """None when `prepare()` succeeded, else why the kernel is not in use."""
    if _ready:
        return None
    return _reason or "pgolf.kernels.cpu_attention.prepare() was not called"


@contextlib.contextmanager
def switched_off():
    """Within the block `usable` says no, so attention trains with SDPA, forward and backward (for A/B timing)."""
    global _switched_off
    was_off, _switched_off = _switched_off, True
    try:
        yield
    finally:
        _switched_off = was_off


def usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `causal_attention` handles these (B, T, H, D) / (B, T, Hkv, D) tensors: bf16 on CPU, a
    gradient wanted, T a multiple of 128 and D of 64. Otherwise the caller uses SDPA."""
    if not _ready or _switched_off or q.device.type != "cpu" or not torch.is_grad_enabled():
        return False
    if not (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    if any(t.dtype != torch.bfloat16 for t in (q, k, v)):
        return False
    length, heads, head_dim = q.shape[1:]
    return length % TILE == 0 and head_dim % CHUNK == 0 and heads % k.shape[2] == 0


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention, (B, T, H, D) queries and (B, T, Hkv, D) keys/values; scale 1/sqrt(D)."""
    out, _ = _flash_attention(q.contiguous(), k.contiguous(), v.contiguous())
    return out


@torch.library.custom_op("pgolf::cpu_flash_attention", mutates_args=())
def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, T, H, D) and the log-sum-exp of the scaled scores (B, H, T) fp32."""
    return torch.ops.pgolf_cpu.causal_attention_forward(q, k, v, q.shape[-1] ** -0.5)


@_flash_attention.register_fake
def _flash_attention_fake(q, k, v):
    batch, length, heads, _ = q.shape
    return torch.empty_like(q), q.new_empty((batch, heads, length), dtype=torch.float32)


def _save_for_backward(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)


def _flash_attention_backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    grad_q, grad_k, grad_v = torch.ops.pgolf_cpu.causal_attention_backward(
        q, k, v, out, grad_out.contiguous(), lse, q.shape[-1] ** -0.5)
    return grad_q, grad_k, grad_v


_flash_attention.register_autograd(_flash_attention_backward, setup_context=_save_for_backward)


def _register_backward_fake() -> None:
    """Shapes of the C++ operator's outputs, so that compiled graphs can trace its call."""
    try:
        torch.library.register_fake("pgolf_cpu::causal_attention_backward")(
            lambda q, k, v, out, grad_out, lse, scale: (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)))
    except RuntimeError:  # already registered in this process
        pass

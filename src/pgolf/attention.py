"""Causal attention backends: FlashAttention 3 when it can run, PyTorch SDPA otherwise.

One entry point, `causal_attention(q, k, v, document_ids=None)`, with the
layout FlashAttention uses natively:

    q: (B, T, H, D)      k, v: (B, T, Hkv, D)      H a multiple of Hkv (GQA)
    document_ids: (B, T) integer, or None
    returns (B, T, H, D) in q's dtype

Query head h reads key/value head h // (H / Hkv). The softmax scale is
1/sqrt(D). With `document_ids`, position t may attend to position s only if
s <= t and both carry the same document id (block-diagonal causal attention);
ids must be non-decreasing along T, as they are when they come from a running
count of document starts. Packed training rows may pass their precomputed
boundaries as well (`cu_seqlens` over the flattened B*T positions, `max_seqlen`):
FlashAttention's varlen kernel then takes them as they are; SDPA uses the ids.

FlashAttention 3 (`flash_attn_interface`, the Hopper build) is used when it
imports, the tensors are on a CUDA device of compute capability 9.x, and the
dtype is bf16 or fp16 (FA3 has no fp32 kernels). Everything else goes through
`torch.nn.functional.scaled_dot_product_attention`.

A CPU training kernel can be registered from outside this file (`register_cpu_training_kernel`;
the optional `pgolf.kernels` package registers pgolf's AMX kernels when a command asks for them).
It is asked first for inputs without document ids; nothing in pgolf imports it here, so the
model and the exported script know nothing of it. `select_backend` is the one place that
chooses among the three.

On CPU, bf16/fp16 inputs with head_dim below `CPU_LOW_PRECISION_MIN_HEAD_DIM`
are attended in fp32 and the result cast back: PyTorch's CPU flash kernel is
slower in bf16 than in fp32 at head_dim 32 (docs/performance.md), and faster
at 64. The result differs from a bf16 kernel only by bf16 rounding.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

try:  # the FA3 wheel is optional; without it we run SDPA everywhere
    from flash_attn_interface import flash_attn_func as _fa3_func
    from flash_attn_interface import flash_attn_varlen_func as _fa3_varlen_func
except (ImportError, OSError):  # OSError: the wheel is there but its CUDA library does not load
    _fa3_func = None
    _fa3_varlen_func = None

# Measured with torch 2.13 on AMX Xeon cores (docs/performance.md): SDPA forward+backward at
# (32, 4/2 heads, 256, 32) fp32 101 ms vs bf16 174 ms; at (1, 8/4, 2048, 64) fp32 429 ms vs bf16 238 ms.
CPU_LOW_PRECISION_MIN_HEAD_DIM = 64

# `enable_gqa` arrived in torch 2.5; older versions need k/v repeated per query head.
_SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2] if part.isdigit()) >= (2, 5)


# (usable(q, k, v) -> bool, attend(q, k, v) -> output), or None: see register_cpu_training_kernel.
_cpu_training_kernel: tuple[Callable[..., bool], Callable[..., torch.Tensor]] | None = None


def register_cpu_training_kernel(usable: Callable[..., bool], attend: Callable[..., torch.Tensor]) -> None:
    """Route causal attention without document ids through `attend(q, k, v)` whenever `usable(q, k, v)`."""
    global _cpu_training_kernel
    _cpu_training_kernel = (usable, attend)


@functools.lru_cache(maxsize=None)
def _is_hopper(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index)[0] == 9


def _fa3_available_on(device: torch.device) -> bool:
    if _fa3_func is None or device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _is_hopper(index)


def attention_backend_name(device: torch.device | str) -> str:
    """The backend `causal_attention` trains with in bf16 on `device` (for logs): "fa3", "sdpa", or on CPU
    with a registered training kernel "pgolf-amx"."""
    device = torch.device(device)
    if _fa3_available_on(device):
        return "fa3"
    if device.type == "cpu" and _cpu_training_kernel is not None:
        return "pgolf-amx"
    return "sdpa"


def select_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor | None) -> str:
    """"fa3" (bf16/fp16 on Hopper with the wheel), "cpu-kernel" (a registered CPU training kernel that
    takes these tensors, no document ids), else "sdpa"."""
    if q.dtype in (torch.bfloat16, torch.float16) and _fa3_available_on(q.device):
        return "fa3"
    if document_ids is None and _cpu_training_kernel is not None and _cpu_training_kernel[0](q, k, v):
        return "cpu-kernel"
    return "sdpa"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     document_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                     max_seqlen: int | None = None) -> torch.Tensor:
    """Causal (optionally per-document) GQA attention; shapes in the module docstring."""
    backend = select_backend(q, k, v, document_ids)
    if backend == "fa3":
        if document_ids is None:
            return _fa3_dense(q, k, v)
        return _fa3_documents(q, k, v, document_ids, cu_seqlens, max_seqlen)
    if backend == "cpu-kernel":
        return _cpu_training_kernel[1](q, k, v)
    return _sdpa(q, k, v, document_ids)


# ---------------------------------------------------------------- FlashAttention 3


def _first_output(result):
    # Some FA3 releases return (out, softmax_lse), others only out.
    return result[0] if isinstance(result, tuple) else result


def _fa3_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _first_output(_fa3_func(q, k, v, causal=True))


def document_boundaries(document_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence lengths (int32, (N+1,)) of the documents in a flattened (B*T) batch.

    A segment starts at t = 0 of every row and wherever the id changes, so a
    document never spans two rows.
    """
    batch, length = document_ids.shape
    starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_positions = starts.flatten().nonzero().squeeze(1)  # (N,)
    end = torch.full((1,), batch * length, dtype=start_positions.dtype, device=start_positions.device)
    return torch.cat([start_positions, end]).to(torch.int32)


def _fa3_documents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor,
                   cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
    batch, length, num_heads, head_dim = q.shape
    if cu_seqlens is None:
        cu_seqlens = document_boundaries(document_ids)
    # T is an upper bound on every segment length; passing it avoids a device->host sync.
    max_seqlen = length if max_seqlen is None else max_seqlen
    out = _first_output(_fa3_varlen_func(
        q.reshape(batch * length, num_heads, head_dim),
        k.reshape(batch * length, k.shape[2], head_dim),
        v.reshape(batch * length, v.shape[2], head_dim),
        cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True,
    ))
    return out.reshape(batch, length, num_heads, head_dim)


# ---------------------------------------------------------------- SDPA


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where query t may attend key s: s <= t and same document."""
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()  # (T, T)
    same_document = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    return (same_document & causal)[:, None]


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          document_ids: torch.Tensor | None) -> torch.Tensor:
    output_dtype = q.dtype
    if (q.device.type == "cpu" and output_dtype in (torch.bfloat16, torch.float16)
            and q.shape[-1] < CPU_LOW_PRECISION_MIN_HEAD_DIM):
        # CPU autocast would cast fp32 inputs straight back to bf16: switch it off for the kernel
        with torch.autocast(device_type="cpu", enabled=False):
            return _sdpa(q.float(), k.float(), v.float(), document_ids).to(output_dtype)
    # SDPA wants (B, H, T, D).
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    extra = {}
    if q.shape[1] != k.shape[1]:
        if _SDPA_HAS_GQA:
            extra["enable_gqa"] = True
        else:
            repeats = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)
    if document_ids is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra)
    else:
        mask = document_causal_mask(document_ids)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)
    return out.transpose(1, 2)

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

FlashAttention 3 (`pgolf.flash3`: the Hopper wheel wrapped as custom ops, so a compiled
model keeps one graph) is used when it imports, the tensors are on a CUDA device of
compute capability 9.x, and the dtype is bf16 or fp16 (FA3 has no fp32 kernels).
Everything else goes through `torch.nn.functional.scaled_dot_product_attention`.
Whether FA3 runs is decided once per process, outside compiled code
(`resolve_backend`, which `runtime.compiled` calls when a model is built): the
hot path reads a plain module value.

FA3 takes document boundaries, not ids. Finding them in the ids (`nonzero`) waits
for the GPU, so they are computed once per batch: by the loader on the host
(`data.packing`), or once per forward (`model.bos_boundaries`, kept out of the
compiled graph), never in every layer.

SDPA with GQA: `enable_gqa` only when the flash kernel can take the call (no mask,
bf16/fp16) or on CPU, whose kernel handles it; on CUDA with a mask or in fp32 the
kernel that runs (memory-efficient) has no GQA, and `enable_gqa` would drop to the
math kernel with its full (B, H, T, T) score tensor, so k and v are repeated instead.

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

from typing import Callable

import torch
import torch.nn.functional as F

from pgolf import flash3

# Measured with torch 2.13 on AMX Xeon cores (docs/performance.md): SDPA forward+backward at
# (32, 4/2 heads, 256, 32) fp32 101 ms vs bf16 174 ms; at (1, 8/4, 2048, 64) fp32 429 ms vs bf16 238 ms.
CPU_LOW_PRECISION_MIN_HEAD_DIM = 64

# `enable_gqa` arrived in torch 2.5; older versions need k/v repeated per query head.
_SDPA_HAS_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2] if part.isdigit()) >= (2, 5)


# (usable(q, k, v) -> bool, attend(q, k, v) -> output), or None: see register_cpu_training_kernel.
_cpu_training_kernel: tuple[Callable[..., bool], Callable[..., torch.Tensor]] | None = None

# The device type FA3 runs on ("cuda"), or None: decided by resolve_backend, a plain value for compiled code.
_fa3_device_type: str | None = None
_cuda_resolved = False  # whether resolve_backend has looked at a CUDA device yet


def register_cpu_training_kernel(usable: Callable[..., bool], attend: Callable[..., torch.Tensor]) -> None:
    """Route causal attention without document ids through `attend(q, k, v)` whenever `usable(q, k, v)`."""
    global _cpu_training_kernel
    _cpu_training_kernel = (usable, attend)


def resolve_backend(device: torch.device | str, allow_fa3: bool = True) -> None:
    """Decide, once per process and outside compiled code, whether FA3 runs on `device` (a CUDA device of
    compute capability 9.x with the wheel imported). `allow_fa3=False` switches it off (measurements)."""
    global _fa3_device_type, _cuda_resolved
    device = torch.device(device)
    if not allow_fa3:
        _fa3_device_type, _cuda_resolved = None, True
    elif device.type == "cuda" and not _cuda_resolved:
        index = device.index if device.index is not None else torch.cuda.current_device()
        hopper = torch.cuda.get_device_capability(index)[0] == 9
        _fa3_device_type = "cuda" if flash3.available() and hopper else None
        _cuda_resolved = True


@torch.compiler.disable
def _resolve_late(device: torch.device) -> None:
    # only when nothing called resolve_backend before the first CUDA call (a graph break if compiled)
    resolve_backend(device)


def attention_backend_name(device: torch.device | str) -> str:
    """The backend `causal_attention` trains with in bf16 on `device` (for logs): "fa3", "sdpa", or on CPU
    with a registered training kernel "pgolf-amx"."""
    device = torch.device(device)
    resolve_backend(device)
    if device.type == _fa3_device_type:
        return "fa3"
    if device.type == "cpu" and _cpu_training_kernel is not None:
        return "pgolf-amx"
    return "sdpa"


def takes_boundaries(device: torch.device) -> bool:
    """Whether attention on `device` wants document boundaries (`cu_seqlens`) rather than ids: FA3's varlen kernel."""
    return device.type == _fa3_device_type


def select_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, document_ids: torch.Tensor | None) -> str:
    """"fa3" (bf16/fp16 on Hopper with the wheel), "cpu-kernel" (a registered CPU training kernel that
    takes these tensors, no document ids), else "sdpa"."""
    if q.device.type == _fa3_device_type and q.dtype in (torch.bfloat16, torch.float16):
        return "fa3"
    if document_ids is None and _cpu_training_kernel is not None and _cpu_training_kernel[0](q, k, v):
        return "cpu-kernel"
    return "sdpa"


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     document_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                     max_seqlen: int | None = None) -> torch.Tensor:
    """Causal (optionally per-document) GQA attention; shapes in the module docstring."""
    if q.is_cuda and not _cuda_resolved:
        _resolve_late(q.device)
    backend = select_backend(q, k, v, document_ids)
    if backend == "fa3":
        if document_ids is None and cu_seqlens is None:
            return flash3.attend(q, k, v)
        if cu_seqlens is None:  # a host sync: GPT.forward passes them, computed once per batch
            cu_seqlens = document_boundaries(document_ids)
        # T bounds every segment; passing it avoids a device->host sync
        return flash3.attend(q, k, v, cu_seqlens, q.shape[1] if max_seqlen is None else max_seqlen)
    if backend == "cpu-kernel":
        return _cpu_training_kernel[1](q, k, v)
    return _sdpa(q, k, v, document_ids)


def document_boundaries(document_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative sequence lengths (int32, (N+1,)) of the documents in a flattened (B*T) batch.

    A segment starts at t = 0 of every row and wherever the id changes, so a
    document never spans two rows. `nonzero` waits for the device (a host sync).
    """
    batch, length = document_ids.shape
    starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    start_positions = starts.flatten().nonzero().squeeze(1)  # (N,)
    end = torch.full((1,), batch * length, dtype=start_positions.dtype, device=start_positions.device)
    return torch.cat([start_positions, end]).to(torch.int32)


# ---------------------------------------------------------------- SDPA


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """Boolean (B, 1, T, T) mask, True where query t may attend key s: s <= t and same document."""
    length = document_ids.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=document_ids.device).tril()  # (T, T)
    same_document = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    return (same_document & causal)[:, None]


def sdpa_takes_gqa(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether SDPA gets `enable_gqa` (else k/v are repeated): CPU's kernel takes GQA with or without a mask;
    CUDA's flash kernel takes it (no mask, bf16/fp16), the memory-efficient one (masks, fp32) does not."""
    if not _SDPA_HAS_GQA:
        return False
    return device_type == "cpu" or (not masked and dtype in (torch.bfloat16, torch.float16))


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
        if sdpa_takes_gqa(q.device.type, q.dtype, masked=document_ids is not None):
            extra["enable_gqa"] = True
        else:
            repeats = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(repeats, dim=1)  # (B, H, T, D)
            v = v.repeat_interleave(repeats, dim=1)
    if document_ids is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra)
    else:
        mask = document_causal_mask(document_ids)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **extra)
    return out.transpose(1, 2)

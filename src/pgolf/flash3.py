"""FlashAttention 3 (`flash_attn_interface`, the Hopper wheel) as two `torch.library` custom ops.

Why: older FA3 builds call their CUDA extension from a `torch.autograd.Function` that
torch.compile cannot trace, so a compiled model broke its graph at every attention call
(11 to 17 breaks a step). Wrapped here as custom ops with fake (shape-only) implementations
and their own autograd formula, attention is one opaque node in the graph and any FA3 build
compiles to one graph (newer builds register ops of their own; wrapping them costs nothing).

    pgolf::fa3_forward(q, k, v, cu_seqlens, max_seqlen) -> (out, lse)
        dense  (cu_seqlens None): q (B, T, H, D), k, v (B, T, Hkv, D); out like q, lse (B, H, T) fp32
        varlen (cu_seqlens (N+1,) int32 over the packed positions): q (S, H, D), k, v (S, Hkv, D);
               out like q, lse (H, S) fp32
    pgolf::fa3_backward(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen) -> (dq, dk, dv)

Always causal, scale 1/sqrt(D). The backward calls the wheel's own backward function
(`_flash_attn_varlen_backward` or `_flash_attn_backward`; their signatures changed across
releases, so the arguments go by name, `_backward_arguments`). A build whose backward takes a
required argument we cannot fill is differentiated by recomputing the forward through the
wheel's public autograd function (one extra attention forward per backward, correct on any build).

The wheel's functions are module globals (`forward_function`, `varlen_forward_function`,
`backward_function`, `varlen_backward_function`) read at call time, so tests can put a CPU
stand-in in their place. `pgolf.attention` decides when this backend runs.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from pgolf.errors import PgolfError

try:  # the FA3 wheel is optional; without it attention runs on SDPA everywhere
    import flash_attn_interface as _wheel
except (ImportError, OSError):  # OSError: the wheel is there but its CUDA library does not load
    _wheel = None

forward_function: Callable | None = getattr(_wheel, "flash_attn_func", None)
varlen_forward_function: Callable | None = getattr(_wheel, "flash_attn_varlen_func", None)
backward_function: Callable | None = getattr(_wheel, "_flash_attn_backward", None)
varlen_backward_function: Callable | None = getattr(_wheel, "_flash_attn_varlen_backward", None)


def available() -> bool:
    """Whether the FA3 wheel imported (it still needs a Hopper GPU and bf16/fp16 tensors to run)."""
    return forward_function is not None and varlen_forward_function is not None


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
           max_seqlen: int = 0) -> torch.Tensor:
    """Causal GQA attention through the custom op: dense q (B, T, H, D), or with `cu_seqlens` (N+1,)
    over the flattened B*T positions block-diagonal by segment (segments no longer than `max_seqlen`)."""
    batch, length, num_heads, head_dim = q.shape
    if cu_seqlens is None:
        return torch.ops.pgolf.fa3_forward(q, k, v, None, 0)[0]
    flat = batch * length
    out, _ = torch.ops.pgolf.fa3_forward(q.reshape(flat, num_heads, head_dim), k.reshape(flat, k.shape[2], head_dim),
                                         v.reshape(flat, v.shape[2], head_dim), cu_seqlens, max_seqlen)
    return out.reshape(batch, length, num_heads, head_dim)


def _lse_shape(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> tuple[int, ...]:
    if cu_seqlens is None:
        batch, length, num_heads, _ = q.shape
        return batch, num_heads, length
    total, num_heads, _ = q.shape
    return num_heads, total


_parameters: dict[Callable, dict[str, inspect.Parameter]] = {}  # signatures, read once per function


def _signature(function: Callable) -> dict[str, inspect.Parameter]:
    if function not in _parameters:
        # newer wheels make their backward a torch.library custom op: its Python function is `_init_fn`
        _parameters[function] = dict(inspect.signature(getattr(function, "_init_fn", function)).parameters)
    return _parameters[function]


@torch.library.custom_op("pgolf::fa3_forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor | None,
             max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor]:
    function = forward_function if cu_seqlens is None else varlen_forward_function
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # compiled graphs may hand over other strides
    # newer releases return the log-sum-exp only when asked; older ones always return (out, lse)
    extra = {"return_attn_probs": True} if "return_attn_probs" in _signature(function) else {}
    with torch.no_grad():
        if cu_seqlens is None:
            result = function(q, k, v, causal=True, **extra)
        else:
            result = function(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True, **extra)
    if not isinstance(result, tuple):
        raise PgolfError("this flash_attn_interface build returns no softmax_lse; pgolf's FA3 backward needs it")
    out, lse = result[0], result[1]
    expected = _lse_shape(q, cu_seqlens)
    if tuple(lse.shape) != expected:
        raise PgolfError(f"this flash_attn_interface build's softmax_lse has shape {tuple(lse.shape)}, pgolf "
                         f"expects {expected}")
    return out.contiguous(), lse.contiguous()  # the strides the fake promises


@_forward.register_fake
def _forward_fake(q, k, v, cu_seqlens, max_seqlen):
    return q.new_empty(q.shape), q.new_empty(_lse_shape(q, cu_seqlens), dtype=torch.float32)


def _backward_arguments(function: Callable, values: dict) -> dict | None:
    """`values` by name for the parameters `function` takes, or None when it needs one we cannot give."""
    arguments = {}
    for name, parameter in _signature(function).items():
        if name in values:
            arguments[name] = values[name]
        elif parameter.default is inspect.Parameter.empty and parameter.kind not in (
                inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            return None
    return arguments


def _recomputed_gradients(grad_out, q, k, v, cu_seqlens, max_seqlen):
    """(dq, dk, dv) through the wheel's public autograd function: the forward again, then its backward."""
    with torch.enable_grad():
        inputs = [tensor.detach().requires_grad_() for tensor in (q, k, v)]
        if cu_seqlens is None:
            out = forward_function(*inputs, causal=True)
        else:
            out = varlen_forward_function(*inputs, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, causal=True)
        out = out[0] if isinstance(out, tuple) else out
        return torch.autograd.grad(out, inputs, grad_out)


@torch.library.custom_op("pgolf::fa3_backward", mutates_args=())
def _backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, cu_seqlens: torch.Tensor | None,
              max_seqlen: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grad_out, q, k, v, out = (tensor.contiguous() for tensor in (grad_out, q, k, v, out))
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # Names across releases: causal/is_causal, sequed/seqused, window_size or its two halves.
    values = dict(dout=grad_out, q=q, k=k, v=v, out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv,
                  softmax_scale=q.shape[-1] ** -0.5, causal=True, is_causal=True, deterministic=False,
                  window_size=(-1, -1), window_size_left=-1, window_size_right=-1, softcap=0.0, sm_margin=0,
                  sequed_q=None, sequed_k=None, seqused_q=None, seqused_k=None, cu_seqlens_q=cu_seqlens,
                  cu_seqlens_k=cu_seqlens, max_seqlen_q=None if cu_seqlens is None else max_seqlen,
                  max_seqlen_k=None if cu_seqlens is None else max_seqlen)
    candidates = [backward_function] if cu_seqlens is None else [varlen_backward_function, backward_function]
    for function in candidates:
        if function is None or (cu_seqlens is not None and "cu_seqlens_q" not in _signature(function)):
            continue
        arguments = _backward_arguments(function, values)
        if arguments is not None:
            function(**arguments)  # writes dq, dk, dv
            return dq, dk, dv
    return tuple(gradient.contiguous() for gradient in _recomputed_gradients(grad_out, q, k, v, cu_seqlens,
                                                                             max_seqlen))


@_backward.register_fake
def _backward_fake(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _save_for_backward(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], cu_seqlens)
    ctx.max_seqlen = max_seqlen


def _forward_gradients(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    dq, dk, dv = torch.ops.pgolf.fa3_backward(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen)
    return dq, dk, dv, None, None


_forward.register_autograd(_forward_gradients, setup_context=_save_for_backward)

"""A CPU stand-in for the FlashAttention 3 wheel (`flash_attn_interface`), from its documented interface.

Like an older FA3 build, its public functions are a `torch.autograd.Function` around a kernel that
torch.compile cannot trace (there a C++ extension, here a `torch.compiler.disable`d function), and
`_flash_attn_backward` takes the saved log-sum-exp by keyword names of the newest releases. The
math is a plain masked softmax in fp32 (`attention_math`), the backward the FlashAttention formula
from the log-sum-exp (dS = P * (dP - rowsum(dO * O))), written out here independently of pgolf.

`install(monkeypatch)` puts it in place of the wheel and turns FA3 on for CPU tensors.
"""

from __future__ import annotations

import torch

from pgolf import attention, flash3

backward_calls: list[dict] = []  # the keyword names each _flash_attn_backward call received


def _segments(length: int, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(S,) segment index of each packed position."""
    return torch.searchsorted(cu_seqlens.long(), torch.arange(length), right=True)


def _flatten(q, k, v, cu_seqlens):
    """Dense (B, T, H, D) -> packed (B*T, H, D) with one segment per row; varlen inputs as they are."""
    if cu_seqlens is not None:
        return q, k, v, _segments(q.shape[0], cu_seqlens)
    batch, length = q.shape[:2]
    segments = torch.arange(batch).repeat_interleave(length)
    return q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), segments


def _scores(q, k, segments):
    """Scaled scores (H, S, S) fp32 with -inf where causal-within-segment forbids."""
    group = q.shape[1] // k.shape[1]
    keys = k.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("nhd,mhd->hnm", q.float(), keys) * q.shape[-1] ** -0.5
    length = q.shape[0]
    allowed = (segments[:, None] == segments[None, :]) & torch.ones(length, length, dtype=torch.bool).tril()
    return scores.masked_fill(~allowed, float("-inf"))


def attention_math(q, k, v, cu_seqlens=None):
    """(out like q, lse): lse (B, H, T) dense or (H, S) varlen, fp32."""
    flat_q, flat_k, flat_v, segments = _flatten(q, k, v, cu_seqlens)
    scores = _scores(flat_q, flat_k, segments)
    lse = scores.logsumexp(dim=-1)  # (H, S)
    group = flat_q.shape[1] // flat_k.shape[1]
    values = flat_v.float().repeat_interleave(group, dim=1)
    out = torch.einsum("hnm,mhd->nhd", (scores - lse[..., None]).exp(), values).to(q.dtype)
    if cu_seqlens is None:
        batch, length, num_heads = q.shape[:3]
        return out.reshape(q.shape), lse.view(num_heads, batch, length).transpose(0, 1).contiguous()
    return out, lse


def gradients_from_lse(dout, q, k, v, out, lse, cu_seqlens=None):
    """(dq, dk, dv) fp32 from the saved output and log-sum-exp."""
    flat_q, flat_k, flat_v, segments = _flatten(q, k, v, cu_seqlens)
    if cu_seqlens is None:
        lse = lse.transpose(0, 1).flatten(1)  # (B, H, T) -> (H, B*T)
    dout, out = dout.reshape(flat_q.shape).float(), out.reshape(flat_q.shape).float()
    group = flat_q.shape[1] // flat_k.shape[1]
    keys = flat_k.float().repeat_interleave(group, dim=1)
    values = flat_v.float().repeat_interleave(group, dim=1)
    probabilities = (_scores(flat_q, flat_k, segments) - lse[..., None]).exp()  # (H, S, S)
    grad_scores = probabilities * (torch.einsum("nhd,mhd->hnm", dout, values)
                                   - (dout * out).sum(-1).transpose(0, 1)[..., None])
    scale = q.shape[-1] ** -0.5
    dq = torch.einsum("hnm,mhd->nhd", grad_scores, keys) * scale
    dk = torch.einsum("hnm,nhd->mhd", grad_scores, flat_q.float()) * scale
    dv = torch.einsum("hnm,nhd->mhd", probabilities, dout)

    def per_kv_head(gradient):  # sum the query heads of each kv head
        return gradient.reshape(gradient.shape[0], flat_k.shape[1], group, -1).sum(2)

    return dq.reshape(q.shape), per_kv_head(dk).reshape(k.shape), per_kv_head(dv).reshape(v.shape)


@torch.compiler.disable
def _opaque_forward(q, k, v, cu_seqlens):
    return attention_math(q, k, v, cu_seqlens)


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_seqlens):
        out, lse = _opaque_forward(q, k, v, cu_seqlens)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cu_seqlens = cu_seqlens
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = gradients_from_lse(dout, q, k, v, out, lse, ctx.cu_seqlens)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None


def flash_attn_func(q, k, v, softmax_scale=None, causal=False, return_attn_probs=False):
    assert causal and softmax_scale is None
    out, lse = _AttentionFunction.apply(q, k, v, None)
    return (out, lse) if return_attn_probs else out


def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None,
                           causal=False, return_attn_probs=False):
    assert causal and cu_seqlens_q is cu_seqlens_k and max_seqlen_q == max_seqlen_k
    assert int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max()) <= max_seqlen_q
    out, lse = _AttentionFunction.apply(q, k, v, cu_seqlens_q)
    return (out, lse) if return_attn_probs else out


def _flash_attn_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, sequed_q, sequed_k,
                         max_seqlen_q, max_seqlen_k, dq, dk, dv, softmax_scale, is_causal, window_size_left=-1,
                         window_size_right=-1, softcap=0.0, deterministic=False, sm_margin=0):
    backward_calls.append({"varlen": cu_seqlens_q is not None, "causal": is_causal, "scale": softmax_scale,
                           "window": (window_size_left, window_size_right)})
    for target, gradient in zip((dq, dk, dv), gradients_from_lse(dout, q, k, v, out, softmax_lse, cu_seqlens_q)):
        target.copy_(gradient)
    return torch.empty(0)


@torch.library.custom_op("pgolf_test::flash_attn_backward", mutates_args=("dq", "dk", "dv"))
def _flash_attn_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                            softmax_lse: torch.Tensor, cu_seqlens_q: torch.Tensor | None = None,
                            cu_seqlens_k: torch.Tensor | None = None, sequed_q: torch.Tensor | None = None,
                            sequed_k: torch.Tensor | None = None, max_seqlen_q: int | None = None,
                            max_seqlen_k: int | None = None, dq: torch.Tensor | None = None,
                            dk: torch.Tensor | None = None, dv: torch.Tensor | None = None,
                            softmax_scale: float | None = None, is_causal: bool = False, window_size_left: int = -1,
                            window_size_right: int = -1, softcap: float = 0.0, deterministic: bool = False,
                            sm_margin: int = 0) -> torch.Tensor:
    """The newest wheels' form: the backward itself a custom op writing dq, dk, dv (its Python signature hidden)."""
    return _flash_attn_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, sequed_q, sequed_k,
                                max_seqlen_q, max_seqlen_k, dq, dk, dv, softmax_scale, is_causal, window_size_left,
                                window_size_right, softcap, deterministic, sm_margin)


BACKWARDS = {"function": _flash_attn_backward, "custom op": _flash_attn_backward_op, "none": None}


def install(monkeypatch, backward: str = "function") -> None:
    """The stand-in in place of the wheel, FA3 on for CPU tensors (bf16/fp16, as on a GPU). `backward`: the
    wheel's backward as a plain function, as a custom op (newer wheels), or none usable ("none")."""
    backward_calls.clear()
    monkeypatch.setattr(flash3, "forward_function", flash_attn_func)
    monkeypatch.setattr(flash3, "varlen_forward_function", flash_attn_varlen_func)
    monkeypatch.setattr(flash3, "backward_function", BACKWARDS[backward])
    monkeypatch.setattr(flash3, "varlen_backward_function", None)
    monkeypatch.setattr(attention, "_fa3_device_type", "cpu")


"""Attention backends against a plain float64 reference written here."""

import math

import pytest
import torch

import fa3_stand_in
from pgolf import attention, flash3
from pgolf.attention import (attention_backend_name, causal_attention, document_boundaries,
                             document_causal_mask)
from pgolf.errors import PgolfError


def naive_attention(q, k, v, document_ids=None):
    """Loop-free but kernel-free reference: (B, T, H, D) q, (B, T, Hkv, D) k/v, float64."""
    q, k, v = q.double(), k.double(), v.double()
    batch, length, num_heads, head_dim = q.shape
    group = num_heads // k.shape[2]
    # Query head h uses key/value head h // group.
    k = k[:, :, [h // group for h in range(num_heads)]]
    v = v[:, :, [h // group for h in range(num_heads)]]
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(head_dim)
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    if document_ids is not None:
        allowed = allowed & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("bhts,bshd->bthd", scores.softmax(dim=-1), v)


def random_qkv(batch=2, length=24, num_heads=4, num_kv_heads=2, head_dim=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, length, num_heads, head_dim, generator=generator)
    k = torch.randn(batch, length, num_kv_heads, head_dim, generator=generator)
    v = torch.randn(batch, length, num_kv_heads, head_dim, generator=generator)
    return q, k, v


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_causal_attention_matches_naive_reference(num_kv_heads):
    q, k, v = random_qkv(num_kv_heads=num_kv_heads)
    out = causal_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), naive_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_causal_attention_without_native_gqa_repeats_kv(monkeypatch):
    monkeypatch.setattr(attention, "_SDPA_HAS_GQA", False)
    q, k, v = random_qkv(num_kv_heads=2, seed=3)
    torch.testing.assert_close(causal_attention(q, k, v).double(), naive_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_document_attention_matches_naive_reference():
    q, k, v = random_qkv(length=20, seed=1)
    # Row 0: documents of length 5, 9, 6; row 1: one partial document then one of length 8.
    document_ids = torch.tensor([[0] * 5 + [1] * 9 + [2] * 6, [0] * 12 + [1] * 8])
    out = causal_attention(q, k, v, document_ids)
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, document_ids), atol=1e-5, rtol=1e-5)
    # And it really differs from plain causal attention.
    assert not torch.allclose(out, causal_attention(q, k, v), atol=1e-3)


def test_document_attention_with_one_document_is_plain_causal():
    q, k, v = random_qkv(seed=2)
    same = torch.full(q.shape[:2], 7)
    torch.testing.assert_close(causal_attention(q, k, v, same), causal_attention(q, k, v), atol=1e-6, rtol=1e-6)


def test_document_causal_mask_small_example():
    mask = document_causal_mask(torch.tensor([[0, 0, 1, 1]]))
    expected = torch.tensor([[1, 0, 0, 0],
                             [1, 1, 0, 0],
                             [0, 0, 1, 0],
                             [0, 0, 1, 1]], dtype=torch.bool)
    assert mask.shape == (1, 1, 4, 4)
    assert torch.equal(mask[0, 0], expected)


def test_document_boundaries_restart_at_every_row():
    # Row 0: docs of length 2 and 3; row 1: a single id throughout (one segment of 5).
    ids = torch.tensor([[1, 1, 2, 2, 2], [2, 2, 2, 2, 2]])
    assert document_boundaries(ids).tolist() == [0, 2, 5, 10]
    assert document_boundaries(ids).dtype == torch.int32


def test_backend_name_on_cpu_is_sdpa(monkeypatch):
    monkeypatch.setattr(attention, "_cpu_training_kernel", None)
    assert attention_backend_name("cpu") == "sdpa"
    assert attention_backend_name(torch.device("cpu")) == "sdpa"
    attention.register_cpu_training_kernel(lambda q, k, v: False, lambda q, k, v: q)
    assert attention_backend_name("cpu") == "pgolf-amx"


def test_registered_cpu_training_kernel_is_asked_first(monkeypatch):
    monkeypatch.setattr(attention, "_cpu_training_kernel", None)
    q, k, v = random_qkv(seed=5)
    attention.register_cpu_training_kernel(lambda q, k, v: True, lambda q, k, v: torch.zeros_like(q))
    assert causal_attention(q, k, v).abs().sum() == 0
    ids = torch.zeros(q.shape[:2], dtype=torch.long)
    assert causal_attention(q, k, v, document_ids=ids).abs().sum() > 0  # documents: never the kernel
    attention.register_cpu_training_kernel(lambda q, k, v: False, lambda q, k, v: torch.zeros_like(q))
    assert causal_attention(q, k, v).abs().sum() > 0


def test_bf16_inputs_give_bf16_output_close_to_reference():
    q, k, v = random_qkv(seed=4)
    out = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), naive_attention(q, k, v), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("head_dim", [16, 64])
def test_cpu_bf16_under_autocast_on_both_sides_of_the_fp32_threshold(head_dim, monkeypatch):
    # below CPU_LOW_PRECISION_MIN_HEAD_DIM the kernel runs in fp32 even inside bf16 autocast
    kernel_dtypes = []
    real_sdpa = attention.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        kernel_dtypes.append(q.dtype)
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    q, k, v = random_qkv(head_dim=head_dim, seed=5)
    document_ids = torch.tensor([[0] * 10 + [1] * 14, [0] * 24])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), document_ids)
    assert out.dtype == torch.bfloat16
    expected_kernel = torch.float32 if head_dim < attention.CPU_LOW_PRECISION_MIN_HEAD_DIM else torch.bfloat16
    assert kernel_dtypes == [expected_kernel]
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, document_ids), atol=5e-2, rtol=5e-2)


def reference_gradients(q, k, v, document_ids, grad_out):
    """d(sum(out * grad_out)) / d(q, k, v) of the float64 reference."""
    inputs = [tensor.detach().double().requires_grad_() for tensor in (q, k, v)]
    out = naive_attention(*inputs, document_ids)
    return torch.autograd.grad(out, inputs, grad_out.double())


@pytest.mark.parametrize("documents", [False, True])
@pytest.mark.parametrize("backward", ["function", "custom op", "none"])
def test_fa3_custom_op_forward_and_backward_match_the_reference(documents, backward, monkeypatch):
    """Through the custom ops with the stand-in wheel: the output, and the gradients from the wheel's own
    backward (the saved log-sum-exp, by keyword; a plain function or, as in newer wheels, a custom op) or,
    where a build has no usable one, by recomputation."""
    fa3_stand_in.install(monkeypatch, backward=backward)
    q, k, v = (tensor.bfloat16().requires_grad_() for tensor in random_qkv(length=20, seed=6))
    document_ids = torch.tensor([[0] * 5 + [1] * 9 + [2] * 6, [0] * 12 + [1] * 8]) if documents else None
    out = causal_attention(q, k, v, document_ids)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    out.backward(grad_out.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), naive_attention(q, k, v, document_ids), atol=3e-2, rtol=3e-2)
    for got, expected in zip((q.grad, k.grad, v.grad), reference_gradients(q, k, v, document_ids, grad_out)):
        torch.testing.assert_close(got.double(), expected, atol=6e-2, rtol=6e-2)
    if backward != "none":
        [call] = fa3_stand_in.backward_calls
        assert call == {"varlen": documents, "causal": True, "scale": 16 ** -0.5, "window": (-1, -1)}
    else:
        assert fa3_stand_in.backward_calls == []


def test_packed_boundaries_go_to_the_fa3_varlen_kernel_as_given(monkeypatch):
    """Precomputed cu_seqlens and max_seqlen reach the varlen kernel untouched; without them the
    boundaries come from the ids and max_seqlen is T."""
    fa3_stand_in.install(monkeypatch)
    calls = []

    def recording_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal=False, return_attn_probs=False):
        calls.append((cu_q, cu_k, max_q, max_k, causal, return_attn_probs))
        return fa3_stand_in.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal,
                                                   return_attn_probs=return_attn_probs)

    monkeypatch.setattr(flash3, "varlen_forward_function", recording_varlen)
    q = torch.randn(1, 8, 4, 16, dtype=torch.bfloat16)
    k = v = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16)
    cu_seqlens = torch.tensor([0, 3, 8, 8], dtype=torch.int32)
    document_ids = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 2]])
    out = attention.causal_attention(q, k, v, document_ids, cu_seqlens, max_seqlen=5)
    assert out.shape == q.shape
    assert calls[0][0] is cu_seqlens and calls[0][1] is cu_seqlens and calls[0][2:] == (5, 5, True, True)
    attention.causal_attention(q, k, v, document_ids)  # without them: derived from the ids, max T
    assert calls[1][0].tolist() == [0, 3, 8] and calls[1][2:4] == (8, 8)


def test_an_fa3_build_with_another_lse_layout_fails_in_one_line(monkeypatch):
    fa3_stand_in.install(monkeypatch)
    monkeypatch.setattr(flash3, "forward_function",
                        lambda q, k, v, **keywords: (torch.zeros_like(q), torch.zeros(q.shape[0], q.shape[1])))
    q, k, v = (tensor.bfloat16() for tensor in random_qkv(seed=8))
    with pytest.raises(PgolfError, match="softmax_lse has shape"):
        causal_attention(q, k, v)


def test_fa3_is_decided_once_and_read_as_a_plain_value(monkeypatch):
    monkeypatch.setattr(attention, "_fa3_device_type", None)
    monkeypatch.setattr(attention, "_cuda_resolved", False)
    attention.resolve_backend("cpu")  # no CUDA call on a CPU device
    assert attention._fa3_device_type is None and not attention._cuda_resolved
    assert not attention.takes_boundaries(torch.device("cpu"))
    attention.resolve_backend("cuda", allow_fa3=False)  # switched off: no CUDA query either
    assert attention._fa3_device_type is None and attention._cuda_resolved


@pytest.mark.parametrize("device_type, dtype, masked, expected", [
    ("cpu", torch.float32, True, True), ("cpu", torch.bfloat16, False, True),
    ("cuda", torch.bfloat16, False, True), ("cuda", torch.float16, False, True),
    ("cuda", torch.bfloat16, True, False), ("cuda", torch.float32, False, False),
    ("cuda", torch.float32, True, False)])
def test_sdpa_gets_enable_gqa_only_where_its_kernel_takes_it(device_type, dtype, masked, expected, monkeypatch):
    monkeypatch.setattr(attention, "_SDPA_HAS_GQA", True)
    assert attention.sdpa_takes_gqa(device_type, dtype, masked) is expected


def test_sdpa_repeats_kv_when_enable_gqa_would_fall_back(monkeypatch):
    seen = []
    real_sdpa = attention.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        seen.append((k.shape[1], kwargs.get("enable_gqa", False)))
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", recording_sdpa)
    monkeypatch.setattr(attention, "sdpa_takes_gqa", lambda device_type, dtype, masked: not masked)
    q, k, v = random_qkv(length=12, seed=9)
    document_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    torch.testing.assert_close(causal_attention(q, k, v, document_ids).double(),
                               naive_attention(q, k, v, document_ids), atol=1e-5, rtol=1e-5)
    causal_attention(q, k, v)
    assert seen == [(4, False), (2, True)]  # masked: k/v repeated to the 4 query heads

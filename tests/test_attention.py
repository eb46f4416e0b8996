"""Attention backends against a plain float64 reference written here."""

import math

import pytest
import torch

from pgolf import attention
from pgolf.attention import (attention_backend_name, causal_attention, document_boundaries,
                             document_causal_mask)


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


def test_packed_boundaries_go_to_the_fa3_varlen_kernel_as_given(monkeypatch):
    """On a GPU with FA3, precomputed cu_seqlens and max_seqlen are passed through untouched."""
    calls = []

    def recording_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal):
        calls.append((cu_q, cu_k, max_q, max_k, causal))
        return torch.zeros_like(q)

    monkeypatch.setattr(attention, "_fa3_available_on", lambda device: True)
    monkeypatch.setattr(attention, "_fa3_varlen_func", recording_varlen)
    q = torch.randn(1, 8, 4, 16, dtype=torch.bfloat16)
    k = v = torch.randn(1, 8, 2, 16, dtype=torch.bfloat16)
    cu_seqlens = torch.tensor([0, 3, 8, 8], dtype=torch.int32)
    document_ids = torch.tensor([[1, 1, 1, 2, 2, 2, 2, 2]])
    out = attention.causal_attention(q, k, v, document_ids, cu_seqlens, max_seqlen=5)
    assert out.shape == q.shape
    assert calls[0][0] is cu_seqlens and calls[0][1] is cu_seqlens and calls[0][2:] == (5, 5, True)
    attention.causal_attention(q, k, v, document_ids)  # without them: derived from the ids, max T
    assert calls[1][0].tolist() == [0, 3, 8] and calls[1][2:] == (8, 8, True)

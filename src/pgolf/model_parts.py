"""Model pieces beyond pr198 that the frontier recipe switches on (spec frontier.md §3).

Each is a function or a small module used by `pgolf.model` behind one
`ModelConfig` field:

- `exclusive_self_attention` (XSA): remove from each query head's output its
  component along the token's own (unit-normalised) value vector;
- `sparse_attention_gate` (SparseAttnGate): scale each head's output by
  sigmoid(scale * W_h . n[0:window]), n the attention input;
- `InputSmearGate`: e'_t = e_t + lam * sigmoid(w . e_t[0:window]) * e_{t-1} * [id_t != bos]
  on the raw embeddings;
- `document_ids_from_boundaries`: per-position document ids from packed-row
  boundaries (cu_seqlens), for the masked SDPA path;
- `parameter_breakdown`: parameter counts by kind, in the rows of the spec's
  table (frontier.md §3), for `pgolf train --dry-run`.

Shapes follow the attention layout: y (B, T, H, D), v (B, T, Hkv, D).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

# (row of the breakdown, full-match pattern on the parameter name); first match wins
PARAMETER_KINDS = (
    ("tied embedding", r"tok_emb\.weight"),
    ("q and out proj", r"blocks\.\d+\.attn\.(c_q|proj)\.weight"),
    ("k and v proj", r"blocks\.\d+\.attn\.(c_k|c_v)\.weight"),
    ("MLP up / down", r"blocks\.\d+\.mlp\.(fc|proj)\.weight"),
    ("per block: q_gain, attn/mlp scale, resid_mix, sparse gate",
     r"blocks\.\d+\.(attn\.q_gain|attn_scale|mlp_scale|resid_mix|attn\.gate)"),
    ("skip weights + skip gates", r"skip_weights|skip_gates"),
    ("lane mix + lane residual scales", r"lane_mix|lane_residual"),
    ("smear gate + smear scalar", r"smear\..+"),
    ("bigram table, projection, scale", r"bigram\..+"),
    ("other", r".+"),
)


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y - (y . v_hat) v_hat per query head, v_hat = v / |v| of the head's kv head at the same position.

    y (B, T, H, D), v (B, T, Hkv, D) -> (B, T, H, D). Query heads are grouped as the attention
    groups them (head h reads kv head h // (H / Hkv)), so v is broadcast, never repeated.
    """
    batch, length, num_heads, head_dim = y.shape
    num_kv_heads = v.shape[2]
    grouped = y.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)  # (B, T, Hkv, G, D)
    unit = F.normalize(v, dim=-1).unsqueeze(3)  # (B, T, Hkv, 1, D)
    projection = (grouped * unit).sum(dim=-1, keepdim=True)  # (B, T, Hkv, G, 1)
    return (grouped - projection * unit).reshape(batch, length, num_heads, head_dim)


def sparse_attention_gate(y: torch.Tensor, attention_input: torch.Tensor, weight: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """y_h * sigmoid(scale * W_h . n[0:window]); y (B, T, H, D), n (B, T, C), W (H, window)."""
    window = weight.shape[1]
    gate_input = attention_input[..., :window]  # (B, T, window)
    gate = torch.sigmoid(scale * F.linear(gate_input, weight.to(gate_input.dtype)))  # (B, T, H)
    return y * gate.unsqueeze(-1).to(y.dtype)


class InputSmearGate(nn.Module):
    """Adds a gated copy of the previous token's raw embedding; identity at initialisation (w, lam = 0).

    The gate reads the current token's first `window` raw channels; a position holding
    the bos id never receives anything (no leak across documents in a packed row).
    """

    def __init__(self, window: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(window, dtype=torch.float32))  # w
        self.strength = nn.Parameter(torch.zeros((), dtype=torch.float32))  # lam

    def forward(self, embeddings: torch.Tensor, is_bos: torch.Tensor) -> torch.Tensor:
        """embeddings (B, T, C) raw, is_bos (B, T) bool -> (B, T, C)."""
        window = self.gate.shape[0]
        gate = torch.sigmoid(embeddings[..., :window] @ self.gate.to(embeddings.dtype))  # (B, T)
        gate = gate * (~is_bos).to(gate.dtype)
        previous = F.pad(embeddings[:, :-1], (0, 0, 1, 0))  # (B, T, C); zero at t = 0, which gets nothing
        return embeddings + self.strength.to(embeddings.dtype) * gate.unsqueeze(-1) * previous


def document_ids_from_boundaries(cu_seqlens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """(B, T) document index of each position of the flattened batch, from cumulative boundaries.

    cu_seqlens (N,) int: segment starts over the B*T flattened positions, then the total;
    padding entries repeat the total (empty segments). Ids are non-decreasing, as the
    masked attention path wants; the boundaries must include every row start.
    """
    positions = torch.arange(batch * length, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True).reshape(batch, length)


def parameter_breakdown(model: nn.Module) -> list[tuple[str, int, int]]:
    """(kind, number of tensors, number of elements) per kind present, in PARAMETER_KINDS order."""
    totals: dict[str, list[int]] = {}
    for name, parameter in model.named_parameters():
        kind = next(kind for kind, pattern in PARAMETER_KINDS if re.fullmatch(pattern, name))
        entry = totals.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += parameter.numel()
    return [(kind, *totals[kind]) for kind, _ in PARAMETER_KINDS if kind in totals]

"""Parameter counts by kind, in the rows of the spec's table (frontier.md §3), for `pgolf train --dry-run`."""

from __future__ import annotations

import re

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


def parameter_breakdown(model: nn.Module) -> list[tuple[str, int, int]]:
    """(kind, number of tensors, number of elements) per kind present, in PARAMETER_KINDS order."""
    totals: dict[str, list[int]] = {}
    for name, parameter in model.named_parameters():
        kind = next(kind for kind, pattern in PARAMETER_KINDS if re.fullmatch(pattern, name))
        entry = totals.setdefault(kind, [0, 0])
        entry[0] += 1
        entry[1] += parameter.numel()
    return [(kind, *totals[kind]) for kind, _ in PARAMETER_KINDS if kind in totals]

"""Schemes beyond round-to-nearest: SDClip scales, integer widths per class, GPTQ, AWQ-lite, LQER.

The frontier recipe (spec frontier.md §5, §9; beyond.md §6). A `CalibratedScheme` is a
`pgolf.quant.Scheme` whose rules may be `CalibratedRule`s:

- `clip`: how a row's scale is chosen: "max" (max|row| / R), "percentile" (pr198's int8 clip)
  or "std" (SDClip: k * std(row) / R, unbiased std; `std_multiple` = k);
- the width comes from the method, "int{bits}": R = 2^(bits-1) - 1;
- `gptq`: the integers are chosen by GPTQ (pgolf.gptq) with the input Hessian of the tensor
  (pgolf.hessians), the scale staying fixed; otherwise round to nearest.

Scheme-wide: AWQ-lite (`awq_columns`: the single most salient group of that many consecutive
input columns in the whole model, saliency = input RMS * mean |W| per column, is quantised at
int8 with its own row scale k * std / 127) and LQER (`lqer_top` tensors with the largest
||W - W_hat||_F get a rank-`lqer_rank` correction A B, A int2 with one fp16 scale max|A| / 1.5,
B int4 in groups of `lqer_group` values with fp16 scales group max / 7.5).

Values are divided by the stored fp16 scale. Dequantisation lives in pgolf.quant (it is part of
the counted code); everything here runs only when an artifact is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from typing import TYPE_CHECKING

from pgolf.errors import PgolfError
if TYPE_CHECKING:  # GPTQ and the Hessians load only where a scheme uses them (an exported script's bundle)
    from pgolf.gptq import ColumnGroup
    from pgolf.hessians import Calibration
from pgolf.quant import (
    LQER_GROUP,
    SCALE_DTYPE,
    SCHEMES,
    SMALL_TENSOR_MAX_ELEMENTS,
    QuantizedState,
    QuantizedTensor,
    Rule,
    Scheme,
    choose_rule,
    dequantize_tensor,
    int8_clip_bounds,
    quantize_state_dict,
    quantize_tensor,
)

LQER_A_RANGE = (-2, 1)  # int2
LQER_A_DIVISOR = 1.5  # scale = max|A| / 1.5
LQER_B_RANGE = (-8, 7)  # int4
LQER_B_DIVISOR = 7.5  # scale = group max / 7.5
AWQ_BITS = 8


@dataclass(frozen=True)
class CalibratedRule(Rule):
    clip: str = "max"  # "max" | "percentile" | "std"
    std_multiple: float = 0.0  # SDClip k
    gptq: bool = False


@dataclass(frozen=True)
class CalibratedScheme(Scheme):
    lqer_rank: int = 0
    lqer_top: int = 0
    lqer_group: int = LQER_GROUP
    awq_columns: int = 0

    @property
    def needs_calibration(self) -> bool:
        return self.awq_columns > 0 or any(getattr(rule, "gptq", False) for rule in self.rules)


# ---------------------------------------------------------------- per-row scales and ranges


def bits_of(method: str) -> int:
    if not (method.startswith("int") and method[3:].isdigit() and 2 <= int(method[3:]) <= 8):
        raise PgolfError(f"a calibrated rule needs a method int2..int8, got {method!r}")
    return int(method[3:])


def max_value(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def value_range(bits: int, clip: str) -> tuple[int, int]:
    """[low, high] of the integers. Row-max clipping below 8 bits keeps the reference's extra negative
    value (int6: [-32, 31]); SDClip, percentile and int8 are symmetric (spec: q in [-R, R])."""
    top = max_value(bits)
    return (-(top + 1), top) if clip == "max" and bits < 8 else (-top, top)


def row_bounds(weight: Tensor, rule: CalibratedRule) -> Tensor:
    """The |w| each row's top integer stands for, (R,) float32: max, percentile clip or k * std."""
    if rule.clip == "max":
        bound = weight.abs().amax(dim=1)
    elif rule.clip == "percentile":
        bound = int8_clip_bounds(weight)
    elif rule.clip == "std":
        bound = rule.std_multiple * weight.std(dim=1, unbiased=True)
    else:
        raise PgolfError(f"unknown clip {rule.clip!r}; known: max, percentile, std")
    return bound.clamp_min(1.0) if rule.floor else bound


def stored_scale(bound: Tensor, top: int) -> Tensor:
    """fp16 row scale bound / top; a zero (or underflowing) scale becomes 1 (its row is all zeros)."""
    scale = (bound / top).to(SCALE_DTYPE)
    if not torch.isfinite(scale).all():
        raise PgolfError(f"a row bound of {float(bound.max()):.3g} does not fit an fp16 scale")
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def round_to_nearest(weight: Tensor, scale: Tensor, low: int, high: int, group: ColumnGroup | None) -> Tensor:
    values = torch.clamp(torch.round(weight / scale.float()[:, None]), low, high)  # (R, C)
    if group is not None:
        columns = slice(group.start, group.start + group.size)
        values[:, columns] = torch.clamp(torch.round(weight[:, columns] / group.scale.float()[:, None]),
                                         group.low, group.high)
    return values.to(torch.int8)


# ---------------------------------------------------------------- AWQ-lite and LQER


def awq_saliency(weight: Tensor, column_rms: Tensor, group_columns: int) -> Tensor:
    """Saliency of each aligned group of `group_columns` input columns: sum of rms_c * mean_r |W_rc|."""
    per_column = column_rms.float() * weight.abs().mean(dim=0)  # (C,)
    usable = (per_column.numel() // group_columns) * group_columns
    return per_column[:usable].reshape(-1, group_columns).sum(dim=1)  # (C // group_columns,)


def most_salient_group(weights: dict[str, Tensor], column_rms: dict[str, Tensor],
                       group_columns: int) -> tuple[str, int] | None:
    """(tensor name, first column) of the single most salient column group over all candidates."""
    best: tuple[float, str, int] | None = None
    for name, weight in weights.items():
        if name not in column_rms or weight.shape[1] < group_columns:
            continue
        scores = awq_saliency(weight, column_rms[name], group_columns)
        index = int(torch.argmax(scores))
        if best is None or float(scores[index]) > best[0]:
            best = (float(scores[index]), name, index * group_columns)
    return None if best is None else (best[1], best[2])


def quantize_lqer_factors(error: Tensor, rank: int, group: int) -> dict[str, Tensor]:
    """Rank-`rank` SVD of the error E (R, C): A = U_r S_r -> int2, B = V_r^T -> int4 in groups of `group`."""
    u, s, vh = torch.linalg.svd(error.float(), full_matrices=False)
    rank = min(rank, s.numel())
    a = u[:, :rank] * s[:rank]  # (R, r)
    b = vh[:rank]  # (r, C)
    a_scale = stored_scale(a.abs().amax().reshape(1) / LQER_A_DIVISOR, 1)  # (1,)
    a_values = torch.clamp(torch.round(a / a_scale.float()), *LQER_A_RANGE)
    flat = b.reshape(-1)  # row-major
    padded = torch.nn.functional.pad(flat, (0, math.ceil(flat.numel() / group) * group - flat.numel()))
    group_max = padded.reshape(-1, group).abs().amax(dim=1)  # (groups,)
    b_scale = stored_scale(group_max / LQER_B_DIVISOR, 1)
    b_values = torch.clamp(torch.round(flat / b_scale.float().repeat_interleave(group)[: flat.numel()]),
                           *LQER_B_RANGE)
    return {"lqer_a": a_values.to(torch.int8).contiguous(), "lqer_a_scale": a_scale.contiguous(),
            "lqer_b": b_values.reshape(b.shape).to(torch.int8).contiguous(), "lqer_b_scale": b_scale.contiguous()}


def lqer_method_suffix(rank: int, group: int) -> str:
    return f"+lqer{rank}" + ("" if group == LQER_GROUP else f"g{group}")


# ---------------------------------------------------------------- whole state dicts


def quantize_row_tensor(weight: Tensor, rule: CalibratedRule, calibration: Calibration | None, name: str,
                        awq_start: int | None, awq_columns: int) -> QuantizedTensor:
    """One 2-D tensor under a CalibratedRule (scale, AWQ group, GPTQ or round to nearest)."""
    from pgolf.gptq import ColumnGroup, gptq_quantize  # here: a plain scheme's exported script has no GPTQ

    bits = bits_of(rule.method)
    low, high = value_range(bits, rule.clip)
    rows = weight.detach().to(device="cpu", dtype=torch.float32).reshape(weight.shape[0], -1)  # (R, C)
    bound = row_bounds(rows, rule)  # (R,)
    scale = stored_scale(bound, max_value(bits))
    group, method, parts = None, rule.method, {}
    if awq_start is not None:
        awq_scale = stored_scale(bound, max_value(AWQ_BITS))
        top = max_value(AWQ_BITS)
        group = ColumnGroup(awq_start, awq_columns, awq_scale.float(), -top, top)
        method += f"+awq{awq_columns}"
        parts = {"awq_start": torch.tensor([awq_start], dtype=torch.int32), "awq_scale": awq_scale}
    if rule.gptq:
        if calibration is None or name not in calibration.hessians:
            raise PgolfError(f"GPTQ needs the input Hessian of {name!r}; calibrate the model first "
                             "(pgolf.hessians.collect_hessians)")
        values = gptq_quantize(rows, calibration.hessians[name], scale.float(), low, high, group=group)
    else:
        values = round_to_nearest(rows, scale, low, high, group)
    return QuantizedTensor(method=method, shape=tuple(weight.shape), dtype=weight.dtype,
                           parts={"values": values.contiguous(), "scale": scale.contiguous(), **parts})


def quantize_calibrated(state: dict[str, Tensor], scheme: str | Scheme,
                        calibration: Calibration | None = None) -> QuantizedState:
    """Quantise a state dict under any scheme; plain `pgolf.quant` schemes go straight to it."""
    resolved = get_any_scheme(scheme)
    if not isinstance(resolved, CalibratedScheme):
        return quantize_state_dict(state, resolved)
    if resolved.needs_calibration and calibration is None:
        raise PgolfError(f"scheme {resolved.name!r} needs calibration statistics (GPTQ Hessians / AWQ input RMS)")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PgolfError(f"tensor {name!r} has NaN or infinite values; refusing to quantise it")
    rules = {name: choose_rule(name, tensor, resolved) for name, tensor in state.items()}
    row_tensors = {name: state[name].detach().float().reshape(state[name].shape[0], -1)
                   for name, rule in rules.items() if isinstance(rule, CalibratedRule)}
    awq = None
    if resolved.awq_columns:
        candidates = {name: weight for name, weight in row_tensors.items() if bits_of(rules[name].method) < AWQ_BITS}
        awq = most_salient_group(candidates, calibration.column_rms, resolved.awq_columns)

    quantized = QuantizedState(scheme=resolved.name)
    for name, tensor in state.items():
        rule = rules[name]
        if isinstance(rule, CalibratedRule):
            awq_start = awq[1] if awq is not None and awq[0] == name else None
            quantized.tensors[name] = quantize_row_tensor(tensor, rule, calibration, name, awq_start,
                                                          resolved.awq_columns)
        else:
            quantized.tensors[name] = quantize_tensor(tensor, rule.method, rule.floor)

    if resolved.lqer_rank and resolved.lqer_top:
        errors = {name: row_tensors[name] - dequantize_tensor(quantized.tensors[name]).reshape(weight.shape)
                  for name, weight in row_tensors.items()}
        ranked = sorted(errors, key=lambda name: float(errors[name].norm()), reverse=True)
        for name in ranked[: resolved.lqer_top]:
            entry = quantized.tensors[name]
            entry.parts.update(quantize_lqer_factors(errors[name], resolved.lqer_rank, resolved.lqer_group))
            entry.method += lqer_method_suffix(resolved.lqer_rank, resolved.lqer_group)
    return quantized


# ---------------------------------------------------------------- the schemes

ATTENTION_PATTERNS = ("blocks.*.attn.c_q.weight", "blocks.*.attn.c_k.weight", "blocks.*.attn.c_v.weight",
                      "blocks.*.attn.proj.weight")
MLP_PATTERNS = ("blocks.*.mlp.fc.weight", "blocks.*.mlp.proj.weight")
EMBEDDING_PATTERNS = ("tok_emb.weight",)
# The frontier model's sparse attention gates (8 x 12 per layer, `model.SparseAttnGate`).
SPARSE_GATE_PATTERNS = ("blocks.*.attn.gate",)


def frontier_rules(gptq: bool, clip: str) -> tuple[Rule, ...]:
    """Frontier §5 classes: attention int6 (k 13.0), MLP int6 (k 11.5), embedding int7 (k 14.0), gates int8
    row-max; other small floats fp16; any other large float (a bigram table) int8 with pr198's clip."""
    def row_rule(method: str, patterns: tuple[str, ...], k: float) -> CalibratedRule:
        return CalibratedRule(method, kind="float", ndim=2, patterns=patterns, clip=clip, std_multiple=k, gptq=gptq)

    return (
        Rule("exact", kind="nonfloat"),
        CalibratedRule("int8", kind="float", ndim=2, patterns=SPARSE_GATE_PATTERNS, clip="max"),
        Rule("fp16", kind="float", max_elements=SMALL_TENSOR_MAX_ELEMENTS),
        row_rule("int6", ATTENTION_PATTERNS, 13.0),
        row_rule("int6", MLP_PATTERNS, 11.5),
        row_rule("int7" if clip == "std" else "int8", EMBEDDING_PATTERNS, 14.0),
        CalibratedRule("int8", kind="float", ndim=2, clip="percentile"),
        Rule("int8", kind="float"),
    )


def gptq_pr198_rules() -> tuple[Rule, ...]:
    """pr198's table (no floor) with GPTQ on the int6 matrices: isolates what GPTQ alone buys."""
    return (
        Rule("exact", kind="nonfloat"),
        Rule("fp16", kind="float", max_elements=SMALL_TENSOR_MAX_ELEMENTS),
        CalibratedRule("int6", kind="float", ndim=2, patterns=ATTENTION_PATTERNS + MLP_PATTERNS, gptq=True),
        Rule("int8", kind="float"),
    )


CALIBRATED_SCHEMES: dict[str, CalibratedScheme] = {
    scheme.name: scheme for scheme in (
        CalibratedScheme("gptq", gptq_pr198_rules(), compressor="zstd", level=22),
        CalibratedScheme("sdclip", frontier_rules(gptq=False, clip="std"), compressor="zstd", level=22),
        CalibratedScheme("gptq-sdclip", frontier_rules(gptq=True, clip="std"), compressor="zstd", level=22),
        CalibratedScheme("gptq-sdclip-lqer", frontier_rules(gptq=True, clip="std"), compressor="zstd", level=22,
                         lqer_rank=4, lqer_top=3),
        CalibratedScheme("gptq-sdclip-lqer-awq", frontier_rules(gptq=True, clip="std"), compressor="zstd",
                         level=22, lqer_rank=4, lqer_top=3, awq_columns=64),
        # the #1855 artifact (frontier.md §5): GPTQ + SDClip, int7 embedding, LQER rank 4 on the top 3,
        # the per-group layout (ZPAQ streams with the zpaq extra, else lzma)
        CalibratedScheme("frontier", frontier_rules(gptq=True, clip="std"), compressor="pergroup", level=4,
                         lqer_rank=4, lqer_top=3),
    )
}


def get_any_scheme(scheme: str | Scheme) -> Scheme:
    """A scheme by name from pgolf.quant.SCHEMES or CALIBRATED_SCHEMES (or the Scheme itself)."""
    if isinstance(scheme, Scheme):
        return scheme
    known = {**SCHEMES, **CALIBRATED_SCHEMES}
    if scheme not in known:
        raise PgolfError(f"unknown quantisation scheme {scheme!r}; choose one of {', '.join(sorted(known))}")
    return known[scheme]


def with_compressor(scheme: Scheme, compressor: str, level: int) -> Scheme:
    return replace(scheme, compressor=compressor, level=level)

"""Quantisation schemes and the pure quantise / dequantise functions.

A scheme is data: an ordered table of `Rule`s (first match wins) that picks a
storage method for each tensor of a state dict, plus the compressor used for the
artifact payload. Methods:

- "exact": stored as is (non-float tensors);
- "fp16":  stored as float16, restored to the original dtype;
- "int6":  per-row symmetric, scale = max|row| / 31 (fp16), values
           clamp(round(w / scale), -32, 31) in int8 containers;
- "int8":  per-row with the clip at the 99.99984th percentile of |row|,
           scale = clip / 127 (fp16), values clamp(round(clip(w) / scale), -127, 127).

"pr198" and "baseline" reproduce the two recipes of the challenge (spec §5, §8),
floors included: a rule with `floor=True` never lets a row's scale drop below
1/31 (int6) or 1/127 (int8). With weight decay most trained rows have
max|row| < 1, so the floor puts them on the fixed grid 1/31 (1/127): far fewer
distinct values, a much smaller compressed artifact, a slightly larger error.
"pr198-nofloor" is the same table without the floor (every row uses its full
range: smaller error, larger file). Rounding follows the reference: int6
divides by the stored fp16 scale; floored int8 divides by the fp32 scale and
stores it as fp16. Without the floor, int8 also divides by the stored fp16
scale (every value inside the clip then comes back within half a step), and an
all-zero row gets scale 1 (its values are 0, so it still dequantises to zeros).

Everything here is pure: tensors in, tensors out, no I/O.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import re
from dataclasses import dataclass, field

import torch
from torch import Tensor

from pgolf.errors import PgolfError

METHODS = ("exact", "fp16", "int6", "int8")
INT6_MAX = 31  # scale = max|row| / 31
INT6_MIN = -32  # the int6 range is [-32, 31]; -32 is only reachable through rounding noise
INT8_MAX = 127
INT8_CLIP_QUANTILE = 0.9999984  # the 99.99984th percentile of |row|
SMALL_TENSOR_MAX_ELEMENTS = 65_536  # float tensors this small are kept as fp16
SCALE_DTYPE = torch.float16
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
PartLayout = dict[str, tuple[tuple[int, ...], torch.dtype]]  # {part name: (shape, dtype)}
QUANTILE_MAX_ELEMENTS = 2**24
LQER_GROUP = 64  # values of B per fp16 scale
ROW_METHOD = re.compile(r"int([2-8])(?:\+awq([0-9]{1,5}))?(?:\+lqer([0-9]{1,3})(?:g([0-9]{1,5}))?)?")


# ---------------------------------------------------------------- schemes as data


@dataclass(frozen=True)
class Rule:
    """One line of a scheme's table: the tensors it matches and the method they get.

    A tensor matches when every given condition holds: its kind ("float",
    "nonfloat" or "any"), at most `max_elements` elements, exactly `ndim`
    dimensions, and its name matching one of `patterns` (fnmatch globs; empty =
    every name). `floor` keeps every int6/int8 row scale at or above 1/31 / 1/127
    (the reference's floor, module docstring).
    """

    method: str
    kind: str = "any"
    max_elements: int | None = None
    ndim: int | None = None
    patterns: tuple[str, ...] = ()
    floor: bool = False

    def matches(self, name: str, tensor: Tensor) -> bool:
        is_float = tensor.is_floating_point()
        if self.kind == "float" and not is_float:
            return False
        if self.kind == "nonfloat" and is_float:
            return False
        if self.max_elements is not None and tensor.numel() > self.max_elements:
            return False
        if self.ndim is not None and tensor.ndim != self.ndim:
            return False
        return not self.patterns or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)


@dataclass(frozen=True)
class Scheme:
    name: str
    rules: tuple[Rule, ...]
    compressor: str  # "zstd" | "zlib"
    level: int


PR198_RULES = (
    Rule("exact", kind="nonfloat"),
    Rule("fp16", kind="float", max_elements=SMALL_TENSOR_MAX_ELEMENTS),
    Rule("int6", kind="float", ndim=2, patterns=("blocks.*.attn.*.weight", "blocks.*.mlp.*.weight"), floor=True),
    Rule("int8", kind="float", floor=True),  # token embedding, bigram table, anything else large
)
BASELINE_RULES = (
    Rule("exact", kind="nonfloat"),
    Rule("fp16", kind="float", max_elements=SMALL_TENSOR_MAX_ELEMENTS),
    Rule("int8", kind="float", floor=True),
)


def without_floor(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    return tuple(dataclasses.replace(rule, floor=False) for rule in rules)


SCHEMES: dict[str, Scheme] = {
    "pr198": Scheme("pr198", PR198_RULES, compressor="zstd", level=22),
    "pr198-nofloor": Scheme("pr198-nofloor", without_floor(PR198_RULES), compressor="zstd", level=22),
    "baseline": Scheme("baseline", BASELINE_RULES, compressor="zlib", level=9),
}


def get_scheme(scheme: str | Scheme) -> Scheme:
    if isinstance(scheme, Scheme):
        return scheme
    if scheme not in SCHEMES:
        raise PgolfError(f"unknown quantisation scheme {scheme!r}; choose one of {', '.join(sorted(SCHEMES))}")
    return SCHEMES[scheme]


def choose_rule(name: str, tensor: Tensor, scheme: str | Scheme) -> Rule:
    """The first rule of the scheme that matches this tensor."""
    for rule in get_scheme(scheme).rules:
        if rule.matches(name, tensor):
            return rule
    raise PgolfError(f"quantisation scheme {get_scheme(scheme).name!r} has no rule for tensor {name!r}")


def choose_method(name: str, tensor: Tensor, scheme: str | Scheme) -> str:
    """The method of the first rule that matches this tensor."""
    return choose_rule(name, tensor, scheme).method


# ---------------------------------------------------------------- per-tensor functions


def _as_rows(weight: Tensor) -> Tensor:
    """View any tensor as (rows, columns) in float32: dim 0 is the row, a vector is one row."""
    weight = weight.detach().to(device="cpu", dtype=torch.float32)
    if weight.ndim == 0:
        return weight.reshape(1, 1)
    if weight.ndim == 1:
        return weight.reshape(1, -1)
    return weight.reshape(weight.shape[0], -1)


def _stored_scale(row_bound: Tensor, max_value: int) -> Tensor:
    """fp16 scale per row, (rows,); an all-zero row (bound 0) gets scale 1 so division is safe.

    Rows whose bound is below about 2e-3 get a subnormal fp16 scale with fewer
    significant bits; values are divided by that stored scale, so the half-step
    bound still holds except, by a few percent of a step, at the row's extreme.
    """
    scale = (row_bound / max_value).to(SCALE_DTYPE)
    if not torch.isfinite(scale).all():
        raise PgolfError(f"a row bound of {float(row_bound.max()):.3g} does not fit an fp16 scale")
    # A scale can also underflow to 0 for rows below ~1e-6; their values all round to 0 either way.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_int6_rows(weight: Tensor, floor: bool = False) -> tuple[Tensor, Tensor]:
    """Per-row symmetric int6: (values int8 (rows, cols) in [-32, 31], scale fp16 (rows,)).

    With `floor`, scale = max(max|row| / 31, 1/31) as in the reference (a row below 1 lands on the grid 1/31).
    """
    rows = _as_rows(weight)  # (R, C)
    bound = rows.abs().amax(dim=1) if rows.numel() else rows.new_zeros(rows.shape[0])
    if floor:
        bound = bound.clamp_min(1.0)  # bound / 31 >= 1/31
    scale = _stored_scale(bound, INT6_MAX)
    values = torch.clamp(torch.round(rows / scale.float()[:, None]), INT6_MIN, INT6_MAX)
    return values.to(torch.int8).contiguous(), scale.contiguous()


def int8_clip_bounds(weight: Tensor) -> Tensor:
    """Per-row clip |w| <= bound, (rows,): linear-interpolated 99.99984th percentile of |row|."""
    rows = _as_rows(weight)  # (R, C)
    if rows.numel() == 0:
        return rows.new_zeros(rows.shape[0])
    if rows.shape[1] > QUANTILE_MAX_ELEMENTS:
        raise PgolfError(f"cannot take a percentile over rows of {rows.shape[1]} elements (torch limit 2**24)")
    # torch.quantile refuses inputs above 2**24 elements, so large tables go in row chunks.
    rows_per_chunk = max(1, QUANTILE_MAX_ELEMENTS // rows.shape[1])
    chunks = [torch.quantile(chunk.abs(), INT8_CLIP_QUANTILE, dim=1) for chunk in rows.split(rows_per_chunk)]
    return torch.cat(chunks)


def quantize_int8_rows(weight: Tensor, floor: bool = False) -> tuple[Tensor, Tensor]:
    """Per-row int8 with percentile clip: (values int8 (rows, cols) in [-127, 127], scale fp16 (rows,)).

    As in the challenge's baseline, values are clamped to the clip before dividing. With `floor`,
    exactly the reference: scale = max(clip / 127, 1/127) in fp32 for rounding, stored as fp16.
    """
    rows = _as_rows(weight)  # (R, C)
    bound = int8_clip_bounds(rows)  # (R,)
    clipped = torch.maximum(torch.minimum(rows, bound[:, None]), -bound[:, None])
    if floor:
        scale32 = (bound / INT8_MAX).clamp_min(1.0 / INT8_MAX)  # (R,) fp32, what the values are divided by
        values = torch.clamp(torch.round(clipped / scale32[:, None]), -INT8_MAX, INT8_MAX)
        return values.to(torch.int8).contiguous(), scale32.to(SCALE_DTYPE).contiguous()
    scale = _stored_scale(bound, INT8_MAX)
    values = torch.clamp(torch.round(clipped / scale.float()[:, None]), -INT8_MAX, INT8_MAX)
    return values.to(torch.int8).contiguous(), scale.contiguous()


def row_layout(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, columns) that a tensor of this shape is quantised as (see `_as_rows`)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


@dataclass(frozen=True)
class RowMethod:
    """A per-row integer method parsed from its name, "int{bits}[+awq{G}][+lqer{r}[g{group}]]":

    values (R, C) in int8 containers times a per-row fp16 scale; optionally AWQ-lite's G columns
    from `awq_start` with their own row scale; optionally a rank-r LQER correction A (R, r) int2
    with one fp16 scale times B (r, C) int4 with one fp16 scale per `group` values of B flattened
    row-major (pgolf.calibrated writes these).
    """

    bits: int
    awq_columns: int = 0
    lqer_rank: int = 0
    lqer_group: int = LQER_GROUP


def parse_row_method(method: str) -> RowMethod | None:
    """The RowMethod a name describes, or None when it is not one ("exact", "fp16", nonsense)."""
    match = ROW_METHOD.fullmatch(method) if isinstance(method, str) else None
    if match is None:
        return None
    bits, awq, rank, group = match.groups()
    parsed = RowMethod(int(bits), int(awq or 0), int(rank or 0), int(group or LQER_GROUP))
    if (awq is not None and parsed.awq_columns < 1) or (rank is not None and parsed.lqer_rank < 1) \
            or parsed.lqer_group < 1:
        return None
    return parsed


def is_known_method(method: str) -> bool:
    return method in ("exact", "fp16") or parse_row_method(method) is not None


def stored_layout(shape: tuple[int, ...], dtype: torch.dtype, method: str) -> PartLayout:
    """The parts a tensor is stored as under `method`: {part: (shape, dtype)}; no data needed."""
    if method == "exact":
        return {"data": (tuple(shape), dtype)}
    if method == "fp16":
        return {"data": (tuple(shape), torch.float16)}
    parsed = parse_row_method(method)
    if parsed is None:
        raise PgolfError(f"unknown quantisation method {method!r}; known: exact, fp16, int2..int8 "
                         "[+awqG][+lqerR[gN]]")
    rows, columns = row_layout(tuple(shape))
    layout = {"values": ((rows, columns), torch.int8), "scale": ((rows,), SCALE_DTYPE)}
    if parsed.awq_columns:
        if parsed.awq_columns > columns:
            raise PgolfError(f"method {method} needs {parsed.awq_columns} columns, the tensor has {columns}")
        layout.update(awq_start=((1,), torch.int32), awq_scale=((rows,), SCALE_DTYPE))
    if parsed.lqer_rank:
        rank, groups = parsed.lqer_rank, math.ceil(parsed.lqer_rank * columns / parsed.lqer_group)
        layout.update(lqer_a=((rows, rank), torch.int8), lqer_a_scale=((1,), SCALE_DTYPE),
                      lqer_b=((rank, columns), torch.int8), lqer_b_scale=((groups,), SCALE_DTYPE))
    return layout


def dequantize_rows(values: Tensor, scale: Tensor, shape: tuple[int, ...]) -> Tensor:
    """values (R, C) int8 times scale (R,) -> float32 tensor of the original shape."""
    return (values.float() * scale.float()[:, None]).reshape(shape).contiguous()


def lqer_correction(parts: dict[str, Tensor], group: int) -> Tensor:
    """A_hat (R, r) @ B_hat (r, C): int2 A times its one scale, int4 B times its per-group scales."""
    a = parts["lqer_a"].float() * parts["lqer_a_scale"].float()  # (R, r)
    b_values = parts["lqer_b"].float().reshape(-1)  # (r*C,), row-major
    group_scale = parts["lqer_b_scale"].float().repeat_interleave(group)[: b_values.numel()]
    return a @ (b_values * group_scale).reshape(parts["lqer_b"].shape)  # (R, C)


def dequantize_row_method(entry: "QuantizedTensor", parsed: RowMethod) -> Tensor:
    values, parts = entry.parts["values"], entry.parts
    restored = values.float() * parts["scale"].float()[:, None]  # (R, C)
    if parsed.awq_columns:
        start = int(parts["awq_start"][0])
        if not 0 <= start <= values.shape[1] - parsed.awq_columns:
            raise PgolfError(f"AWQ columns start at {start}, outside 0..{values.shape[1] - parsed.awq_columns}")
        group = slice(start, start + parsed.awq_columns)
        restored[:, group] = values[:, group].float() * parts["awq_scale"].float()[:, None]
    if parsed.lqer_rank:
        restored = restored + lqer_correction(parts, parsed.lqer_group)
    return restored.reshape(entry.shape).contiguous()


# ---------------------------------------------------------------- whole state dicts


@dataclass
class QuantizedTensor:
    """One tensor as stored: its method, original shape/dtype and the stored parts.

    parts: {"data": tensor} for exact/fp16; {"values": int8 (R, C), "scale": fp16 (R,)} for int6/int8.
    """

    method: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: dict[str, Tensor]

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_bytes(self) -> int:
        return sum(part.numel() * part.element_size() for part in self.parts.values())


@dataclass
class QuantizedState:
    scheme: str
    tensors: dict[str, QuantizedTensor] = field(default_factory=dict)

    def flat(self) -> dict[str, Tensor]:
        """Flat {"name#part": tensor} view ("#" never occurs in parameter names)."""
        return {f"{name}#{part}": data for name, entry in self.tensors.items() for part, data in entry.parts.items()}


def quantize_tensor(weight: Tensor, method: str, floor: bool = False) -> QuantizedTensor:
    shape, dtype = tuple(weight.shape), weight.dtype
    weight = weight.detach().to("cpu")
    if method == "exact":
        parts = {"data": weight.contiguous().clone()}
    elif method == "fp16":
        parts = {"data": weight.to(torch.float16).contiguous()}
    elif method in ("int6", "int8"):
        values, scale = (quantize_int6_rows if method == "int6" else quantize_int8_rows)(weight, floor)
        parts = {"values": values, "scale": scale}
    else:
        raise PgolfError(f"unknown quantisation method {method!r}; known: {', '.join(METHODS)}")
    return QuantizedTensor(method=method, shape=shape, dtype=dtype, parts=parts)


def dequantize_tensor(entry: QuantizedTensor) -> Tensor:
    if entry.method == "exact":
        return entry.parts["data"].clone()
    if entry.method == "fp16":
        return entry.parts["data"].to(entry.dtype).contiguous()
    if entry.method in ("int6", "int8"):
        return dequantize_rows(entry.parts["values"], entry.parts["scale"], entry.shape)
    parsed = parse_row_method(entry.method)
    if parsed is None:
        raise PgolfError(f"unknown quantisation method {entry.method!r}; known: {', '.join(METHODS)}")
    return dequantize_row_method(entry, parsed)


def quantize_state_dict(state: dict[str, Tensor], scheme: str | Scheme) -> QuantizedState:
    resolved = get_scheme(scheme)
    quantized = QuantizedState(scheme=resolved.name)
    for name, tensor in state.items():
        if "#" in name:
            raise PgolfError(f"tensor name {name!r} contains '#', which the artifact format reserves")
        if name.startswith(WRAPPER_PREFIXES):
            # The rule patterns would silently miss "_orig_mod.blocks.0..." and store int8 instead of int6.
            raise PgolfError(f"tensor name {name!r} comes from a wrapped model (DDP / torch.compile); "
                             "quantise the base model's state_dict")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise PgolfError(f"tensor {name!r} has NaN or infinite values; refusing to quantise it")
        rule = choose_rule(name, tensor, resolved)
        quantized.tensors[name] = quantize_tensor(tensor, rule.method, rule.floor)
    return quantized


def dequantize_state_dict(quantized: QuantizedState) -> dict[str, Tensor]:
    """Quantised tensors come back as float32, passthrough tensors in their original dtype."""
    return {name: dequantize_tensor(entry) for name, entry in quantized.tensors.items()}

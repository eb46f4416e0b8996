"""GPTQ: quantise a weight matrix column by column, feeding each column's rounding error forward.

Frantar et al. 2023, with the details of the frontier recipe (spec frontier.md §5, beyond.md §6.2):
for W (rows = outputs, columns = inputs) and H = X^T X / batches over calibration inputs X,

1. dead columns (H_jj = 0) get H_jj = 1 and W[:, j] = 0;
2. damping: H += 0.01 * mean(diag H) * I;
3. act-order: columns by descending diag H;
4. U = the upper Cholesky factor of H^-1;
5. columns in blocks of 128: q_j = clamp(round(w_j / s), low, high) with the row scale s fixed
   beforehand, err_j = (w_j - q_j s) / U_jj, subtract err_j U_{j, j+1:} from the later columns of
   the block; after each block, the block's errors times U_{block, rest} from all later columns;
6. columns back in their original order.

The scales are chosen before GPTQ runs (row max, SDClip, ...: see `pgolf.calibrated`), so GPTQ
only decides the integers. Optionally a set of columns (AWQ-lite's salient group) is quantised
with a second row scale and a wider range. Pure: tensors in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pgolf.errors import PgolfError

BLOCK_COLUMNS = 128
DAMPING = 0.01  # times mean(diag H)


@dataclass(frozen=True)
class ColumnGroup:
    """Columns [start, start + size) quantised with their own row scale (R,) and range [low, high]."""

    start: int
    size: int
    scale: Tensor  # (R,) float
    low: int
    high: int


def prepare_hessian(hessian: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """(damped H (C, C), dead-column mask (C,)): steps 1-2 on H (W's dead columns are zeroed by the caller)."""
    hessian = hessian.detach().to(device="cpu", dtype=dtype).clone()
    dead = torch.diagonal(hessian) == 0
    hessian[dead, dead] = 1.0
    damping = DAMPING * torch.diagonal(hessian).mean()
    hessian += damping * torch.eye(hessian.shape[0], dtype=dtype)
    return hessian, dead


def upper_inverse_cholesky(hessian: Tensor) -> Tensor:
    """U with U^T U = H^-1 (upper triangular), from a damped, positive definite H."""
    lower, info = torch.linalg.cholesky_ex(hessian)
    if int(info) != 0:
        raise PgolfError("GPTQ: the damped Hessian is not positive definite (calibration inputs broken?)")
    inverse = torch.cholesky_inverse(lower)
    return torch.linalg.cholesky(inverse, upper=True)


def gptq_quantize(weight: Tensor, hessian: Tensor, scale: Tensor, low: int, high: int,
                  group: ColumnGroup | None = None, block_columns: int = BLOCK_COLUMNS, act_order: bool = True,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Integer values (R, C) int8 for weight (R, C) with fixed row scales `scale` (R,), range [low, high].

    `hessian` (C, C) is the (undamped) input second moment. `dtype` is the arithmetic (float64 in tests).
    """
    if weight.ndim != 2 or hessian.shape != (weight.shape[1], weight.shape[1]) or scale.shape != weight.shape[:1]:
        raise PgolfError(f"GPTQ: weight {tuple(weight.shape)}, Hessian {tuple(hessian.shape)} and scale "
                         f"{tuple(scale.shape)} do not fit together")
    rows, columns = weight.shape
    work = weight.detach().to(device="cpu", dtype=dtype).clone()  # (R, C), updated in place
    hessian, dead = prepare_hessian(hessian, dtype)
    work[:, dead] = 0.0

    # Per column: the scale it is divided by and its range (the AWQ group's columns differ).
    column_scale = scale.to(dtype)[:, None].expand(rows, columns).clone()  # (R, C)
    column_low = torch.full((columns,), float(low), dtype=dtype)
    column_high = torch.full((columns,), float(high), dtype=dtype)
    if group is not None:
        columns_of_group = slice(group.start, group.start + group.size)
        column_scale[:, columns_of_group] = group.scale.to(dtype)[:, None]
        column_low[columns_of_group], column_high[columns_of_group] = group.low, group.high

    order = torch.argsort(torch.diagonal(hessian), descending=True, stable=True) if act_order \
        else torch.arange(columns)
    work, column_scale = work[:, order], column_scale[:, order]
    column_low, column_high = column_low[order], column_high[order]
    hessian = hessian[order][:, order]
    upper = upper_inverse_cholesky(hessian)  # (C, C)

    values = torch.zeros_like(work)
    for first in range(0, columns, block_columns):
        last = min(first + block_columns, columns)
        block = work[:, first:last].clone()  # (R, b)
        errors = torch.zeros_like(block)
        block_upper = upper[first:last, first:last]
        for offset in range(last - first):
            column = first + offset
            w = block[:, offset]
            s = column_scale[:, column]
            q = torch.clamp(torch.round(w / s), column_low[column], column_high[column])
            values[:, column] = q
            error = (w - q * s) / block_upper[offset, offset]
            block[:, offset:] -= error[:, None] * block_upper[offset, offset:][None, :]
            errors[:, offset] = error
        work[:, last:] -= errors @ upper[first:last, last:]
    inverse_order = torch.argsort(order)
    return values[:, inverse_order].to(torch.int8).contiguous()


def reconstruction_error(weight: Tensor, restored: Tensor, hessian: Tensor) -> float:
    """tr((W - Q) H (W - Q)^T) in float64: the output error GPTQ minimises, summed over rows."""
    difference = (weight.double() - restored.double())  # (R, C)
    return float(torch.einsum("rc,cd,rd->", difference, hessian.double(), difference))

"""Validation scoring: plain and sliding-window evaluation in bits per byte.

The val token array of length N+1 holds N targets: target i is token i+1,
predicted from tokens up to i. A window (start, score_from, score_to) feeds
tokens [start, start + L) to the model (L = min(seq_len, N)) and scores the
targets in [score_from, score_to) (absolute target indices), each from the
context [start, i]. `sliding_windows` decides these ranges (pure);
`evaluate` runs them in batches, spread over ranks, and sums NLL, tokens and
bytes in float64. Bytes come from the look-up tables (`metric.count_bytes`)
or, for a dataset with a byte sidecar, from the sidecar (`metric.sidecar_bytes`),
never both; bpb is `metric.bits_per_byte`.

Every target is scored exactly once. The reference lets its trailing windows
run past the end and re-score the same last tokens; here the last window is
aligned to end at the last target and scores only the targets not yet
scored (a change in the 5th decimal of bpb). With stride == seq_len this is
plain non-overlapping evaluation; a final partial chunk (only when the split
was not cut by `truncate_val_tokens`) is scored by a full-length window
aligned to the end, so every window has the same length L.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.distributed import DistInfo, all_reduce_sum
from pgolf.errors import PgolfError
from pgolf.metric import ByteTables, bits_per_byte, count_bytes, sidecar_bytes

if TYPE_CHECKING:  # the tilt stage imports this module
    from pgolf.tilt import TiltSettings, TokenTilt


@dataclass
class EvalResult:
    loss: float  # mean NLL per target token, nats
    bpb: float
    tokens: int
    bytes: int
    seconds: float


def sliding_windows(num_targets: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, score_from, score_to) for each window; the score ranges tile [0, num_targets) exactly.

    Window w starts at stride*w; the first scores all its targets, each later one its last
    `stride` targets; the window that would run past the end is moved back to end at the last
    target and scores the remainder.
    """
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise PgolfError(f"evaluation needs seq_len >= 1 and stride in 1..seq_len, got {seq_len} and {stride}")
    if num_targets <= 0:
        return []
    length = min(seq_len, num_targets)
    windows = [(0, 0, length)]
    scored_to = length
    window_index = 1
    while scored_to < num_targets:
        start = stride * window_index
        end = start + length
        if end >= num_targets:
            windows.append((num_targets - length, scored_to, num_targets))
            break
        windows.append((start, scored_to, end))  # scored_to == end - stride here
        scored_to = end
        window_index += 1
    return windows


def truncate_val_tokens(tokens, seq_len: int):
    """Cut the split to a multiple of seq_len plus one token, as the reference does.

    The official split (62,021,846 tokens) keeps 62,021,633 tokens, i.e. 62,021,632 targets.
    """
    usable = ((len(tokens) - 1) // seq_len) * seq_len
    if usable <= 0:
        raise PgolfError(f"validation split has {len(tokens)} tokens, too few for sequence length {seq_len}")
    return tokens[: usable + 1]


def _as_token_tensor(val_tokens) -> torch.Tensor:
    """1-D int32/int64 torch tensor (uint16 shards are widened: torch indexes few uint16 ops)."""
    if isinstance(val_tokens, torch.Tensor):
        tokens = val_tokens
    else:
        array = np.asarray(val_tokens)
        tokens = torch.from_numpy(array.astype(np.int32) if array.dtype != np.int64 else array)
    if tokens.dtype not in (torch.int32, torch.int64):
        tokens = tokens.to(torch.int32)
    if tokens.ndim != 1:
        raise PgolfError(f"validation tokens must be 1-D, got shape {tuple(tokens.shape)}")
    return tokens


def check_val_inputs(tokens: torch.Tensor, tables: ByteTables | None, val_bytes) -> torch.Tensor | None:
    """The split's byte sidecar as a tensor (or None), after checking tokens, tables and sidecar agree."""
    if tokens.numel() < 2:
        raise PgolfError("validation split has fewer than 2 tokens")
    if val_bytes is not None:
        if tables is not None:
            raise PgolfError("evaluate counts bytes from the sidecar or from byte tables, not both")
        split_bytes = _as_token_tensor(val_bytes)
        if split_bytes.numel() != tokens.numel():
            raise PgolfError(f"byte sidecar has {split_bytes.numel():,} values for {tokens.numel():,} val tokens")
        return split_bytes
    if int(tokens.max()) >= tables.vocab_size:
        raise PgolfError(f"validation token id {int(tokens.max())} is outside the byte tables "
                         f"({tables.vocab_size} entries); tokenizer and data do not match")
    return None


# ---------------------------------------------------------------- the procedure interface


@dataclass
class Scored:
    """Targets whose NLL a procedure has settled, in the order it settled them; each target once, never revised."""

    targets: torch.Tensor  # (S,) int64 absolute target indices (target i is token i + 1)
    nll: torch.Tensor  # (S,) NLL in nats, fp32 or wider
    log_probs: torch.Tensor | None = None  # (S, V) fp32: the full distribution read, only when recording
    # (S,) bool: only these entries are scored (the others are window positions outside the score range;
    # their targets and NLL mean nothing). None: all of them. The scorer's fast path, without a host sync.
    mask: torch.Tensor | None = None


@dataclass
class Updated:
    """A change of the procedure's state (adapters, weights) computed from the losses of `targets`."""

    targets: torch.Tensor  # (U,) int64 target indices whose losses the update's gradient uses
    kind: str  # e.g. "lora", "global"


Event = Scored | Updated


class Procedure(Protocol):
    """An evaluation procedure: given a model and the val tokens, yields `Scored` (and, for procedures that
    adapt, `Updated`) events in the order it does them. Every target is to be scored exactly once over all
    ranks; bytes and the bpb are the scorer's business (`run_procedure`), never the procedure's.
    `record` asks for the full distribution of every scored target (`Scored.log_probs`), for the checker."""

    name: str

    def events(self, model: nn.Module, tokens: torch.Tensor, dist: DistInfo, record: bool = False,
               progress: Callable[[int, int], None] | None = None) -> Iterator[Event]: ...


def scored_nll(logits: torch.Tensor, targets: torch.Tensor, target_index: torch.Tensor,
               tilt: "TokenTilt | None", record: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NLL (S,) of each target from its logits (S, V), with the optional n-gram tilt (`pgolf.tilt`); with
    `record`, also the full log-distribution (S, V) the NLL was read from. Untilted, the NLL is exactly
    `F.cross_entropy`'s."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    nll = F.cross_entropy(logits, targets, reduction="none")
    if tilt is None:
        return nll, (torch.log_softmax(logits, dim=-1) if record else None)
    return tilt.apply(logits, targets, target_index, nll, record)


@dataclass
class SlidingProcedure:
    """Windows of `seq_len` every `stride` tokens (`sliding_windows`); stride == seq_len is plain scoring."""

    seq_len: int
    stride: int
    batch_seqs: int
    autocast_dtype: torch.dtype | None = None
    tilt_settings: "TiltSettings | None" = None

    @property
    def name(self) -> str:
        return "plain" if self.stride == self.seq_len else "sliding"

    def events(self, model: nn.Module, tokens: torch.Tensor, dist: DistInfo, record: bool = False,
               progress: Callable[[int, int], None] | None = None) -> Iterator[Event]:
        tilt = None
        if self.tilt_settings is not None:
            from pgolf.tilt import TokenTilt

            config = getattr(getattr(model, "_orig_mod", model), "config", None)
            tilt = TokenTilt.from_tokens(tokens, self.tilt_settings, getattr(config, "bos_id", None))
        return sliding_events(model, tokens, self.seq_len, self.stride, self.batch_seqs, dist,
                              self.autocast_dtype, progress, tilt=tilt, record=record)


def sliding_events(model: nn.Module, tokens: torch.Tensor, seq_len: int, stride: int, batch_seqs: int,
                   dist: DistInfo, autocast_dtype: torch.dtype | None = None,
                   progress: Callable[[int, int], None] | None = None, tilt=None,
                   record: bool = False) -> Iterator[Scored]:
    """One `Scored` per batch of windows; window i goes to rank i % world_size. The model runs in eval
    mode under inference_mode (restored when the generator finishes)."""
    if batch_seqs < 1:
        raise PgolfError(f"eval batch_seqs must be >= 1, got {batch_seqs}")
    device = tokens.device
    num_targets = tokens.numel() - 1
    windows = sliding_windows(num_targets, seq_len, stride)
    local_windows = windows[dist.rank::dist.world_size]
    length = min(seq_len, num_targets)  # every window has this length
    positions = torch.arange(length + 1, device=device)
    # keep one batch shape (a compiled model would recompile for a short last batch): the last batch
    # repeats a window with an empty score range
    padding = -len(local_windows) % batch_seqs if len(local_windows) > batch_seqs else 0
    padded = local_windows + [(local_windows[-1][0], 0, 0)] * padding
    # on the device once: a table built per batch would be a blocking host-to-device copy each time
    window_table = torch.tensor(padded, dtype=torch.int64, device=device).reshape(-1, 3)  # (windows, 3)
    # without the checker's recording or a tilt, events carry the whole (B, L) batch and a mask: no
    # boolean indexing, so no host sync per batch
    masked = not record and tilt is None
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    try:
        for first in range(0, len(local_windows), batch_seqs):
            with torch.inference_mode():
                batch = window_table[first:first + batch_seqs]  # (B, 3)
                starts, score_from, score_to = batch[:, 0], batch[:, 1], batch[:, 2]
                chunk = tokens[starts[:, None] + positions[None, :]].long()  # (B, L+1)
                inputs, targets = chunk[:, :-1], chunk[:, 1:]
                target_index = starts[:, None] + positions[None, :-1]  # (B, L) absolute target indices
                scored = (target_index >= score_from[:, None]) & (target_index < score_to[:, None])
                with autocast:
                    logits = model(inputs)  # (B, L, V)
                if masked:
                    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
                    event = Scored(targets=target_index.flatten(), nll=nll, mask=scored.flatten())
                else:
                    nll, log_probs = scored_nll(logits[scored], targets[scored], target_index[scored], tilt,
                                                record)
                    event = Scored(targets=target_index[scored], nll=nll, log_probs=log_probs)
            yield event
            if progress is not None:
                progress(min(first + batch_seqs, len(local_windows)), len(local_windows))
    finally:
        model.train(was_training)


# ---------------------------------------------------------------- the scorer


def run_procedure(procedure: Procedure, model: nn.Module, val_tokens, tables: ByteTables | None, dist: DistInfo,
                  progress: Callable[[int, int], None] | None = None, val_bytes=None) -> EvalResult:
    """Sum a procedure's NLL and the bytes of the targets it scored; the one bpb formula over the sums.

    Bytes of target i: from the look-up tables given tokens i and i + 1 (`metric.count_bytes`), or the
    sidecar's value at position i + 1 (`metric.sidecar_bytes`). Sums are fp64, all-reduced over ranks.
    """
    started = time.perf_counter()
    device = next(model.parameters()).device
    tokens = _as_token_tensor(val_tokens)
    split_bytes = check_val_inputs(tokens, tables, val_bytes)
    tokens = tokens.to(device)
    split_bytes = None if split_bytes is None else split_bytes.to(device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nll nats, targets, bytes
    for event in procedure.events(model, tokens, dist, progress=progress):
        if not isinstance(event, Scored):
            continue
        target_index = event.targets.to(device)
        if split_bytes is not None:  # a target's bytes sit at its own position, target index + 1
            num_bytes = sidecar_bytes(split_bytes, target_index + 1)
        else:
            num_bytes = count_bytes(tokens[target_index], tokens[target_index + 1], tables)
        if event.mask is None:
            sums[0] += event.nll.double().sum()
            sums[1] += target_index.numel()
            sums[2] += num_bytes.double().sum()
        else:  # where, not a product: a non-finite NLL outside the scored range must not reach the sum
            sums[0] += torch.where(event.mask, event.nll.double(), 0.0).sum()
            sums[1] += event.mask.sum()
            sums[2] += (num_bytes * event.mask).double().sum()
    all_reduce_sum(sums, dist)
    sum_nll, num_tokens, num_bytes_total = sums.tolist()
    if num_bytes_total <= 0:
        raise PgolfError("validation targets cover 0 bytes; the byte counts look wrong")
    if not math.isfinite(sum_nll):
        # a NaN score would print as val_bpb:nan and exit 0; it is a failure
        raise PgolfError(f"evaluation loss is {sum_nll} over {int(num_tokens)} tokens: the model's weights or "
                         "outputs are not finite")
    return EvalResult(loss=sum_nll / num_tokens, bpb=bits_per_byte(sum_nll, num_bytes_total),
                      tokens=int(num_tokens), bytes=int(num_bytes_total), seconds=time.perf_counter() - started)


def evaluate(model: nn.Module, val_tokens, tables: ByteTables | None, seq_len: int, stride: int, batch_seqs: int,
             dist: DistInfo, autocast_dtype: torch.dtype | None = None,
             progress: Callable[[int, int], None] | None = None, val_bytes=None) -> EvalResult:
    """Score every target of `val_tokens` once with sliding windows; `model(input_ids)` must return logits (B, T, V).

    Window i goes to rank i % world_size; sums are all-reduced, so every rank gets the result.
    `progress(done, total)` counts this rank's windows. Callers cut the split first with
    `truncate_val_tokens` to match the reference's token count. `val_bytes` is the split's byte
    sidecar, shape (N,) like `val_tokens` (cut the same way); with it `tables` must be None.
    """
    if batch_seqs < 1:
        raise PgolfError(f"eval batch_seqs must be >= 1, got {batch_seqs}")
    procedure = SlidingProcedure(seq_len, stride, batch_seqs, autocast_dtype)
    return run_procedure(procedure, model, val_tokens, tables, dist, progress=progress, val_bytes=val_bytes)

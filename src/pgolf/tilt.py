"""Token n-gram tilt (#2135, spec frontier.md §9): an optional scoring stage of any eval procedure.

Target i (token i+1, predicted from tokens <= i) has the context of the `order - 1`
tokens ending at token i, inside its document (positions before its bos count as
empty: a hint never reads another document). A table holds the pair
(context_j -> token j+1) of every target j already scored; if the context of i was
seen before and its most frequent continuation h has an empirical probability
>= `threshold`, target i gets the hint h. For a procedure that scores in stream order
(plain, sliding) the hints are one vectorised pass over the stream (`ngram_hints`, as
#2135 precomputes them); TTT scores documents longest first, so its table is filled
in its own scoring order (`OnlineHints`): either way only already-scored targets.

At scoring time only (never in a TTT loss), the model's distribution p is tilted
towards the hint and renormalised over the whole vocabulary:

    p'(v) = p(v) * exp(beta * [v = h]) / Z,   Z = 1 + q_h (e^beta - 1),   q_h = p(h)
    nll'  = nll - beta * [y = h] + log Z

Contexts are keyed by a 64-bit polynomial hash of their tokens (a collision can only
change which hints fire, never what they read). `tests/test_tilt.py` checks both
against a plain dictionary walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.errors import PgolfError

HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: contexts as base-M numbers mod 2^64


@dataclass(frozen=True)
class TiltSettings:
    order: int = 16  # context = the previous order - 1 tokens
    threshold: float = 0.8  # the top continuation's empirical probability needed for a hint
    beta: float = 2.625  # the boost of the hinted token, in nats

    def validate(self) -> None:
        # above 0.5 the top continuation is unique whenever a hint fires
        if self.order < 2 or not 0.5 < self.threshold <= 1 or not self.beta >= 0:
            raise PgolfError(f"tilt needs order >= 2, threshold in (0.5, 1] and beta >= 0, got {self}")


def context_keys(tokens, context_length: int, bos_id: int | None) -> np.ndarray:
    """(N,) uint64 key of each target's context: tokens i - context_length + 1 .. i of a stream of N + 1,
    where a position before the stream or before the target's document (its last bos) counts as 0."""
    tokens = np.asarray(tokens, dtype=np.int64)
    num_targets = tokens.size - 1
    values = tokens[:num_targets].astype(np.uint64) + np.uint64(1)  # + 1: token 0 differs from "nothing"
    positions = np.arange(num_targets)
    if bos_id is None:
        document_start = np.zeros(num_targets, dtype=np.int64)
    else:
        document_start = np.maximum.accumulate(np.where(tokens[:num_targets] == bos_id, positions, 0))
    keys = np.zeros(num_targets, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for back in range(context_length - 1, -1, -1):  # oldest first: key = sum_k v_{i-k} M^k
            source = positions - back
            present = source >= document_start
            keys = keys * HASH_MULTIPLIER + np.where(present, values[np.maximum(source, 0)], np.uint64(0))
    return keys


def ngram_hints(tokens, order: int = 16, threshold: float = 0.8, bos_id: int | None = None) -> np.ndarray:
    """(N,) int64 hint of each target of `tokens` (N + 1 tokens) in stream order, -1 where there is none."""
    tokens = np.asarray(tokens, dtype=np.int64)
    num_targets = tokens.size - 1
    if num_targets <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = context_keys(tokens, order - 1, bos_id)
    following = tokens[1:]  # the continuation (target token) of each
    count = keys.size
    by_context = np.argsort(keys, kind="stable")  # grouped by context, in stream order inside a group
    sorted_keys = keys[by_context]
    sorted_following = following[by_context]
    starts = np.ones(count, dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    group = np.cumsum(starts) - 1
    seen_before = np.arange(count) - np.flatnonzero(starts)[group]  # earlier occurrences of the context
    # occurrences of the same (context, continuation) pair up to and including this one
    by_pair = np.lexsort((np.arange(count), sorted_following, group))
    pair_starts = np.ones(count, dtype=bool)
    pair_starts[1:] = (group[by_pair][1:] != group[by_pair][:-1]) | (
        sorted_following[by_pair][1:] != sorted_following[by_pair][:-1])
    pair_count = np.empty(count, dtype=np.int64)
    pair_count[by_pair] = np.arange(count) - np.flatnonzero(pair_starts)[np.cumsum(pair_starts) - 1] + 1
    # the largest pair count so far, running inside each group (groups are offset so the max resets)
    offset = group.astype(np.int64) * (count + 1)
    running_max = np.maximum.accumulate(pair_count + offset) - offset
    record = starts.copy()
    record[1:] |= running_max[1:] > running_max[:-1]
    leader = np.maximum.accumulate(np.where(record, np.arange(count), -1))  # the last strict record setter
    # the table before each occurrence: the previous occurrence's running values (empty at a group start)
    previous = np.maximum(np.arange(count) - 1, 0)
    max_before = np.where(starts, 0, running_max[previous])
    fire = (seen_before > 0) & (max_before >= threshold * np.maximum(seen_before, 1))
    hints = np.full(count, -1, dtype=np.int64)
    hints[by_context] = np.where(fire, sorted_following[leader[previous]], -1)
    return hints


class OnlineHints:
    """The same table, filled in the order a procedure scores (for TTT, which does not go in stream order):
    `hints_for(targets)` reads each target's hint, then adds its pair, in ascending target order."""

    def __init__(self, tokens, order: int, threshold: float, bos_id: int | None):
        tokens = np.asarray(tokens, dtype=np.int64)
        self.keys = context_keys(tokens, order - 1, bos_id).tolist()
        self.following = tokens[1:].tolist()
        self.threshold = threshold
        self.table: dict[int, list] = {}  # key -> [total, top count, top token, {token: count}]

    def hints_for(self, targets: np.ndarray) -> np.ndarray:
        hints = np.full(targets.size, -1, dtype=np.int64)
        for position in np.argsort(targets, kind="stable").tolist():
            target = int(targets[position])
            entry = self.table.get(self.keys[target])
            if entry is None:
                entry = self.table[self.keys[target]] = [0, 0, -1, {}]
            elif entry[1] >= self.threshold * entry[0]:
                hints[position] = entry[2]
            token = self.following[target]
            count = entry[3].get(token, 0) + 1
            entry[3][token] = count
            entry[0] += 1
            if count > entry[1]:
                entry[1], entry[2] = count, token
        return hints


class TokenTilt:
    """The hints of one token stream (precomputed in stream order, or online in scoring order) and the tilt."""

    def __init__(self, hints_for, beta: float):
        self.hints_for = hints_for  # target indices (S,) int64 tensor -> hints (S,) int64 tensor, -1 = none
        self.beta = float(beta)

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, settings: TiltSettings, bos_id: int | None = None,
                    online: bool = False) -> "TokenTilt":
        """`online`: hints from the targets already scored in the procedure's own order (`OnlineHints`);
        otherwise from the stream-order prefix (for procedures that score in stream order)."""
        settings.validate()
        values = tokens.detach().cpu().numpy()
        if online:
            table = OnlineHints(values, settings.order, settings.threshold, bos_id)
            return cls(lambda index: torch.from_numpy(table.hints_for(index.cpu().numpy())).to(index.device),
                       settings.beta)
        hints = torch.from_numpy(ngram_hints(values, settings.order, settings.threshold, bos_id)).to(tokens.device)
        return cls(lambda index: hints[index], settings.beta)

    def apply(self, logits: torch.Tensor, targets: torch.Tensor, target_index: torch.Tensor, nll: torch.Tensor,
              record: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tilted NLL (S,) for logits (S, V) fp32, targets (S,), their indices (S,) and untilted NLL (S,);
        with `record` the tilted log-distribution (S, V)."""
        hint = self.hints_for(target_index)  # (S,)
        has_hint = hint >= 0
        safe_hint = hint.clamp(min=0)
        log_probs = torch.log_softmax(logits, dim=-1)  # (S, V)
        hint_log_prob = log_probs.gather(1, safe_hint[:, None]).squeeze(1)  # log q_h
        log_normaliser = torch.log1p(hint_log_prob.exp() * math.expm1(self.beta)) * has_hint  # log Z, 0 unhinted
        bonus = self.beta * (has_hint & (targets == hint)).to(nll.dtype)
        tilted = nll - bonus + log_normaliser.to(nll.dtype)
        if not record:
            return tilted, None
        boost = torch.zeros_like(log_probs).scatter_(1, safe_hint[:, None], self.beta) * has_hint[:, None]
        return tilted, log_probs + boost - log_normaliser[:, None]

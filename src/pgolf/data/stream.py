"""The training token stream: sequential over train shards, wrapping, resumable.

One stream is read by every rank in the same order. Each micro-step takes one
contiguous chunk of `world_size * (local + 1)` tokens (`local` = tokens per
process per micro-step) and rank r keeps span `[r*(local+1), (r+1)*(local+1))`;
x = span[:-1], y = span[1:]. So 1 process with accumulation 2 reads exactly
the same data as 2 processes with accumulation 1. The position is two
integers, `{"shard": i, "offset": j}`, saved and restored exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgolf.data.shards import check_token_range, read_shard, validate_shard
from pgolf.errors import PgolfError


class TokenStream:
    """`vocab_size` given: each shard's ids are checked against it once, when the stream first opens it."""

    def __init__(self, files: list[Path], vocab_size: int | None = None):
        self.files = [Path(path) for path in files]
        self.vocab_size = vocab_size
        self._range_checked: set[int] = set()
        if not self.files:
            raise PgolfError("no training shards given; run `pgolf data fetch` or `pgolf data build`")
        for path in self.files:
            # the validation split is opened only by the evaluation path, never trained on
            if "_val_" in path.name or not path.name.startswith("fineweb_train_"):
                raise PgolfError(f"{path} is not a training shard (fineweb_train_*.bin); "
                                 "the training stream never reads the validation split")
        self.counts = [validate_shard(path) for path in self.files]
        if sum(self.counts) == 0:
            raise PgolfError(f"training shards {self.files[0].parent} hold no tokens")
        self.shard = 0
        self.offset = 0
        self._tokens: np.ndarray | None = None  # memmap of self.shard, opened lazily

    def _current(self) -> np.ndarray:
        if self._tokens is None:
            self._tokens = read_shard(self.files[self.shard])
            if self.vocab_size is not None and self.shard not in self._range_checked:
                check_token_range(self._tokens, self.vocab_size, self.files[self.shard])
                self._range_checked.add(self.shard)
        return self._tokens

    def _advance_shard(self) -> None:
        self.shard = (self.shard + 1) % len(self.files)
        self.offset = 0
        self._tokens = None

    def take(self, n: int) -> np.ndarray:
        """The next n tokens as uint16 (shape (n,)), crossing shard ends and wrapping to the first shard."""
        parts = []
        remaining = n
        while remaining > 0:
            available = self.counts[self.shard] - self.offset
            if available <= 0:
                self._advance_shard()
                continue
            step = min(available, remaining)
            parts.append(np.array(self._current()[self.offset:self.offset + step]))
            self.offset += step
            remaining -= step
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)

    def state(self) -> dict:
        return {"shard": self.shard, "offset": self.offset}

    def load_state(self, state: dict) -> None:
        shard, offset = int(state["shard"]), int(state["offset"])
        if not 0 <= shard < len(self.files) or not 0 <= offset <= self.counts[shard]:
            raise PgolfError(f"stream state {state} does not fit the {len(self.files)} training shards given")
        self.shard, self.offset, self._tokens = shard, offset, None


def rank_batch(stream: TokenStream, micro_batch_tokens_global: int, seq_len: int, rank: int, world_size: int):
    """x, y int64 tensors of shape (B, T) for this rank's span of the next micro-step."""
    import torch

    if micro_batch_tokens_global % (world_size * seq_len):
        raise PgolfError(
            f"micro-batch of {micro_batch_tokens_global} tokens does not split into {world_size} ranks "
            f"x sequences of {seq_len}"
        )
    local = micro_batch_tokens_global // world_size
    chunk = stream.take(world_size * (local + 1))
    span = torch.from_numpy(chunk[rank * (local + 1):(rank + 1) * (local + 1)].astype(np.int64))
    return span[:-1].reshape(-1, seq_len), span[1:].reshape(-1, seq_len)

"""Document-packed training rows (spec frontier.md §4): one long row per rank plus its document boundaries.

Each optimiser step reads one contiguous chunk of `world_size * (row_tokens + 1)`
tokens; rank r keeps span r, inputs = its first `row_tokens`, targets = the same
shifted by one (as `stream.rank_batch`). Unlike `TokenStream.take`, a chunk never
crosses a shard: reading a shard starts at its first bos, and a shard whose rest
is shorter than a chunk is left for the next one (shards in order, wrapping).

Boundaries (`row_boundaries`): a segment starts at position 0 of the row and at
every bos; a segment longer than `max_length` is cut into pieces of `max_length`
from its start; the list ends with the row length and is padded, repeating the
row length (empty segments), to a multiple of `BOUNDARY_MULTIPLE` entries, so a
compiled model sees few distinct shapes. That is FlashAttention's `cu_seqlens`;
`GPT.forward(..., cu_seqlens=...)` restricts attention to the segments.

Plain (B, T) rows of a model with document isolation get theirs from
`batch_boundaries`, on the host before the batch goes to the device: the model
would otherwise find them in the ids on the device, which waits for the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.data.stream import TokenStream
from pgolf.errors import PgolfError

BOUNDARY_MULTIPLE = 64
SEARCH_BLOCK = 1 << 20  # tokens scanned at a time for a shard's first bos


def row_boundaries(inputs: np.ndarray, bos_id: int, max_length: int,
                   multiple: int = BOUNDARY_MULTIPLE) -> np.ndarray:
    """int32 cumulative segment boundaries of one row of input ids (module docstring); (K * multiple,)."""
    length = len(inputs)
    starts = np.flatnonzero(inputs == bos_id)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    ends = np.append(starts[1:], length)
    pieces = [np.arange(start, end, max_length) for start, end in zip(starts, ends)]  # cuts every max_length
    boundaries = np.append(np.concatenate(pieces), length)
    padded = -(-len(boundaries) // multiple) * multiple
    return np.pad(boundaries, (0, padded - len(boundaries)), constant_values=length).astype(np.int32)


def batch_boundaries(inputs, bos_id: int, max_length: int, multiple: int = BOUNDARY_MULTIPLE) -> torch.Tensor:
    """int32 boundaries of a (B, T) batch of input ids over its flattened B*T positions: a segment starts at
    every row start and every bos (documents never span rows), longer ones are cut every `max_length`; the
    list ends with B*T and is padded with it to a multiple of `multiple` entries, as `row_boundaries`."""
    rows = np.asarray(inputs)
    length = rows.shape[1]
    starts = [row_boundaries(row, bos_id, max_length, multiple=1)[:-1].astype(np.int64) + index * length
              for index, row in enumerate(rows)]
    boundaries = np.append(np.concatenate(starts), rows.size)
    padded = -(-len(boundaries) // multiple) * multiple
    return torch.from_numpy(np.pad(boundaries, (0, padded - len(boundaries)), constant_values=rows.size)
                            .astype(np.int32))


def rank_row(chunk: np.ndarray, rank: int, world_size: int, bos_id: int,
             max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """This rank's (inputs (1, R) int64, targets (1, R) int64, cu_seqlens int32) from one step's chunk."""
    if len(chunk) % world_size:
        raise PgolfError(f"a chunk of {len(chunk)} tokens does not split into {world_size} ranks")
    span_length = len(chunk) // world_size
    span = chunk[rank * span_length:(rank + 1) * span_length].astype(np.int64)
    inputs, targets = span[:-1], span[1:]
    cu_seqlens = row_boundaries(inputs, bos_id, max_length)
    return (torch.from_numpy(inputs)[None], torch.from_numpy(targets)[None], torch.from_numpy(cu_seqlens))


class PackedRowStream(TokenStream):
    """Training shards read shard by shard, from each shard's first bos, in whole chunks (module docstring)."""

    def __init__(self, files: list[Path], bos_id: int):
        super().__init__(files)
        self.bos_id = bos_id

    def take_chunk(self, n: int) -> np.ndarray:
        """The next n tokens (uint16), all from one shard; shards too short for them are passed over."""
        for _ in range(len(self.files) + 1):
            if self.offset == 0:  # a shard not yet started begins at its first bos
                self.offset = self._first_bos()
            if self.counts[self.shard] - self.offset >= n:
                chunk = np.array(self._current()[self.offset:self.offset + n])
                self.offset += n
                return chunk
            self._advance_shard()
        raise PgolfError(f"no training shard holds {n} tokens after its first bos (id {self.bos_id})")

    def _first_bos(self) -> int:
        """Position of the current shard's first bos; the shard's length when it has none."""
        tokens, count = self._current(), self.counts[self.shard]
        for start in range(0, count, SEARCH_BLOCK):
            hits = np.flatnonzero(np.asarray(tokens[start:start + SEARCH_BLOCK]) == self.bos_id)
            if len(hits):
                return start + int(hits[0])
        return count


def packed_rank_batch(stream: PackedRowStream, row_tokens: int, rank: int, world_size: int,
                      max_length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs (1, row_tokens), targets (1, row_tokens), cu_seqlens) for this rank's next packed row."""
    chunk = stream.take_chunk(world_size * (row_tokens + 1))
    return rank_row(chunk, rank, world_size, stream.bos_id, max_length)

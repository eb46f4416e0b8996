"""Bits per byte: byte look-up tables from a SentencePiece model, and the formula.

For a scored target token t with previous token p (spec §2):

    bytes(t) = base_bytes[t] + (has_leading_space[t] and not is_boundary[p])

`base_bytes` is the UTF-8 length of the piece with its leading "▁" removed
(any other "▁" decodes to a space, one byte); a byte-fallback piece `<0xNN>`
is one byte; control, unknown and unused ids (and ids past the tokenizer's
size when the model's vocabulary is padded) are boundary tokens with 0 bytes.
A leading space right after a boundary is not counted: SentencePiece drops it
when decoding the first piece of a sequence, so the count equals the UTF-8
length of the decoded text of each run of tokens between boundaries.

    bpb = (sum of NLL in nats / ln 2) / (sum of bytes)

Two ways to count the bytes of a target, one pure function each:
`count_bytes` (the look-up tables above, pr198 §2) and `sidecar_bytes` (a
dataset's byte sidecar, frontier §2: one stored count per val token, used
whenever the dataset has one). `bits_per_byte` is the one formula both feed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pgolf.errors import PgolfError

SPACE_MARK = "\u2581"  # "▁", SentencePiece's visible space


@dataclass(frozen=True, eq=False)
class ByteTables:
    """Per-id byte facts, each of shape (vocab_size,)."""

    base_bytes: np.ndarray  # int16
    has_leading_space: np.ndarray  # bool
    is_boundary: np.ndarray  # bool

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.shape[0])


def byte_tables_from_sentencepiece(sp_or_path, vocab_size: int | None = None) -> ByteTables:
    """Tables for every id below `vocab_size` (default: the tokenizer's size; larger pads with boundaries)."""
    if isinstance(sp_or_path, (str, Path)):
        from pgolf.data.tokenizer import load_sentencepiece

        processor = load_sentencepiece(sp_or_path)
    else:
        processor = sp_or_path
    piece_count = processor.get_piece_size()
    vocab_size = piece_count if vocab_size is None else int(vocab_size)
    if vocab_size < piece_count:
        raise PgolfError(f"vocab_size {vocab_size} is smaller than the tokenizer's {piece_count} pieces")
    base_bytes = np.zeros(vocab_size, dtype=np.int16)
    has_leading_space = np.zeros(vocab_size, dtype=bool)
    is_boundary = np.ones(vocab_size, dtype=bool)
    for token_id in range(piece_count):
        if processor.is_control(token_id) or processor.is_unknown(token_id) or processor.is_unused(token_id):
            continue
        is_boundary[token_id] = False
        if processor.is_byte(token_id):
            base_bytes[token_id] = 1
            continue
        piece = processor.id_to_piece(token_id)
        if piece.startswith(SPACE_MARK):
            has_leading_space[token_id] = True
            piece = piece[1:]
        base_bytes[token_id] = len(piece.replace(SPACE_MARK, " ").encode("utf-8"))
    return ByteTables(base_bytes, has_leading_space, is_boundary)


@functools.lru_cache(maxsize=8)
def _torch_tables(tables: ByteTables, device):
    import torch

    return (torch.as_tensor(tables.base_bytes, dtype=torch.int64, device=device),
            torch.as_tensor(tables.has_leading_space, device=device),
            torch.as_tensor(tables.is_boundary, device=device))


def count_bytes(prev_ids, target_ids, tables: ByteTables):
    """Bytes of each target token given its predecessor; same shape as `target_ids`.

    Accepts numpy arrays (returns int64 numpy) or torch tensors (returns int64 torch on their device).
    """
    try:
        import torch
    except ImportError:  # numpy-only use
        torch = None
    if torch is not None and isinstance(target_ids, torch.Tensor):
        base_bytes, has_leading_space, is_boundary = _torch_tables(tables, target_ids.device)
        targets = target_ids.long()
        previous = prev_ids.long()
        space = has_leading_space[targets] & ~is_boundary[previous]
        return base_bytes[targets] + space.long()
    targets = np.asarray(target_ids, dtype=np.int64)
    previous = np.asarray(prev_ids, dtype=np.int64)
    space = tables.has_leading_space[targets] & ~tables.is_boundary[previous]
    return tables.base_bytes[targets].astype(np.int64) + space


def sidecar_bytes(split_bytes, target_index):
    """Bytes of each scored target under the sidecar method: the stored count at the target's own position.

    `split_bytes` is the sidecar of the split, shape (N,), aligned with its tokens; `target_index` holds
    absolute token positions (any shape; target i of a split is token i + 1). numpy or torch alike.
    """
    return split_bytes[target_index]


def bits_per_byte(sum_nll_nats: float, sum_bytes: float) -> float:
    """(sum of NLL in nats / ln 2) / (sum of bytes)."""
    if sum_bytes <= 0:
        raise PgolfError(f"cannot compute bits per byte over {sum_bytes} bytes")
    return float(sum_nll_nats) / math.log(2.0) / float(sum_bytes)

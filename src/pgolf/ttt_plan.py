"""The arithmetic of score-first TTT (spec frontier.md §6), pure: documents, batches, chunk windows,
and the sequences of a global phase.

Target i of the val stream is token i + 1. A document is a bos-delimited span plus
the next bos: tokens [p, q] with p a bos and q the next one (or the end of the
stream), i.e. targets p .. q - 1; together the documents cover every target once
(a stream not starting with bos gets a first document from 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pgolf.errors import PgolfError


@dataclass(frozen=True)
class Document:
    first_target: int  # absolute index of its first target (its bos position)
    num_targets: int


def document_spans(tokens, bos_id: int) -> list[Document]:
    """The documents of a stream of N + 1 tokens, in stream order; their targets tile [0, N)."""
    tokens = np.asarray(tokens)
    num_targets = tokens.size - 1
    starts = np.flatnonzero(tokens[:num_targets] == bos_id).tolist()
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    ends = starts[1:] + [num_targets]
    return [Document(start, end - start) for start, end in zip(starts, ends) if end > start]


def length_batches(documents: list[Document], batch_docs: int) -> list[list[int]]:
    """Document indices sorted by length (then position) and cut into batches of `batch_docs` from the
    shortest; the remainder is the last, longest batch. Batch index ascending = shortest first;
    TTT processes them in reverse (longest first)."""
    if batch_docs < 1:
        raise PgolfError(f"TTT batch_docs must be >= 1, got {batch_docs}")
    order = sorted(range(len(documents)), key=lambda index: (documents[index].num_targets,
                                                             documents[index].first_target))
    return [order[start:start + batch_docs] for start in range(0, len(order), batch_docs)]


@dataclass(frozen=True)
class ChunkWindow:
    """Chunk of a document: targets [score_from, score_to) (document-local), scored from the inputs
    [window_start, score_to) of the document, i.e. up to `context` tokens ending at the chunk's end."""

    window_start: int
    score_from: int
    score_to: int


def chunk_windows(num_targets: int, chunk_tokens: int, context_tokens: int) -> list[ChunkWindow]:
    if chunk_tokens < 1 or context_tokens < chunk_tokens:
        raise PgolfError(f"TTT needs chunk >= 1 and context >= chunk, got {chunk_tokens} and {context_tokens}")
    windows = []
    for score_from in range(0, num_targets, chunk_tokens):
        score_to = min(score_from + chunk_tokens, num_targets)
        windows.append(ChunkWindow(max(0, score_to - context_tokens), score_from, score_to))
    return windows


def num_chunks(num_targets: int, chunk_tokens: int) -> int:
    return math.ceil(num_targets / chunk_tokens)


@dataclass(frozen=True)
class PhaseSequences:
    """One global phase's training data: the documents' (input, target) pairs concatenated and cut into
    rows of `seq_len`, `batch_seqs` rows per chunk; the last chunk is skipped."""

    inputs: np.ndarray  # (num_chunks_trained, batch_seqs, seq_len) token ids
    targets: np.ndarray  # (num_chunks_trained, batch_seqs, seq_len) token ids
    target_index: np.ndarray  # (num_chunks_trained, batch_seqs, seq_len) absolute target indices
    row_starts: list[list[list[int]]]  # per chunk and row: offsets where a document starts (0 always)


def phase_sequences(tokens, documents: list[Document], seq_len: int, batch_seqs: int) -> PhaseSequences:
    """Documents in the given order; each contributes its targets (input token j, target token j + 1)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    index = np.concatenate([np.arange(doc.first_target, doc.first_target + doc.num_targets)
                            for doc in documents]) if documents else np.zeros(0, dtype=np.int64)
    starts_flat = np.zeros(index.size, dtype=bool)
    offset = 0
    for doc in documents:
        starts_flat[offset] = True
        offset += doc.num_targets
    per_chunk = seq_len * batch_seqs
    trained = max(math.ceil(index.size / per_chunk) - 1, 0)  # skip the last chunk
    used = trained * per_chunk
    shape = (trained, batch_seqs, seq_len)
    index = index[:used].reshape(shape)
    starts = starts_flat[:used].reshape(shape)
    row_starts = [[sorted({0, *np.flatnonzero(starts[chunk, row]).tolist()}) for row in range(batch_seqs)]
                  for chunk in range(trained)]
    return PhaseSequences(inputs=tokens[index], targets=tokens[index + 1], target_index=index,
                          row_starts=row_starts)


def cosine_lr(base_lr: float, step: int, num_steps: int) -> float:
    """lr * (1 + cos(pi * step / (num_steps - 1))) / 2: from lr at the first chunk to 0 at the last."""
    if num_steps <= 1:
        return base_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / (num_steps - 1)))


def segment_boundaries(row_starts: list[list[int]], seq_len: int) -> np.ndarray:
    """cu_seqlens (int32) over the flattened rows: every segment start, then the total."""
    starts = [row * seq_len + start for row, row_list in enumerate(row_starts) for start in row_list]
    return np.asarray(starts + [len(row_starts) * seq_len], dtype=np.int32)

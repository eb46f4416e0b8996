"""The byte sidecar: how many bytes of the ORIGINAL text each token stands for (frontier.md §2).

With CaseOps the tokenizer reads transformed text, so per-piece byte tables
would count marker characters (3 UTF-8 bytes each) that the original never
had. The sidecar stores, for every val token, the original UTF-8 bytes its
SentencePiece *surface* (the span of the tokenizer's input it was cut from)
stands for:

- a CaseOps operator (TITLE, ALLCAPS, CAPNEXT, or an ESC) counts 0, a marker
  character escaped by ESC (literal in the original) counts its 3 bytes;
- every other character counts its UTF-8 length (an ASCII letter 1);
- a BOS counts 0;
- a multi-byte character split into byte-fallback pieces: SentencePiece gives
  the whole character to the last byte piece (the earlier ones have empty
  surfaces and count 0);
- whitespace SentencePiece drops at the ends of a document lies in no
  surface and is counted nowhere; a run of spaces or newlines inside the text
  (normalised to one "▁") lies in the next piece's surface and is counted in
  full.

So a document's values sum to the UTF-8 length of its original text without
the whitespace at its ends, whatever SentencePiece's normaliser did to it.
Without CaseOps the same rules give a sidecar for any dataset (every
character counts its UTF-8 length).

Everything here is pure except `encode_with_bytes`, which asks a
SentencePiece processor for ids and surface offsets.
"""

from __future__ import annotations

import numpy as np

from pgolf.data import caseops
from pgolf.errors import PgolfError

MAX_TOKEN_BYTES = 0xFFFF  # a sidecar value is one uint16


def character_bytes(text: str, is_caseops: bool) -> np.ndarray:
    """(len(text),) int64: original bytes of each character of the tokenizer's input `text`."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    weights = (1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)).astype(np.int64)
    if not is_caseops:
        return weights
    first, last = ord(caseops.MARKERS[0]), ord(caseops.MARKERS[-1])
    escape = ord(caseops.ESC)
    escaped = False  # the previous character was an operator ESC
    for position in np.flatnonzero((code_points >= first) & (code_points <= last)).tolist():
        if escaped and position > 0 and code_points[position - 1] == escape:
            escaped = False  # a literal marker of the original: keeps its 3 bytes
            continue
        weights[position] = 0  # an operator stands for no byte of the original
        escaped = code_points[position] == escape
    return weights


def token_bytes(text: str, offsets, is_caseops: bool) -> np.ndarray:
    """(num_tokens,) int64: original bytes of each token whose surface is text[begin:end] for (begin, end) in
    `offsets` (character offsets, as SentencePiece's offset mapping gives them)."""
    cumulative = np.concatenate(([0], np.cumsum(character_bytes(text, is_caseops))))
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    return cumulative[spans[:, 1]] - cumulative[spans[:, 0]]


def encode_with_bytes(processor, texts: list[str], is_caseops: bool) -> list[tuple[list[int], np.ndarray]]:
    """(ids, per-token original bytes) of each input text (already CaseOps-encoded when `is_caseops`)."""
    mappings = processor.encode(texts, return_type="offset_mapping", num_threads=1)
    results = []
    for text, mapping in zip(texts, mappings):
        counts = token_bytes(text, mapping["offsets"], is_caseops)
        if counts.size and int(counts.max()) > MAX_TOKEN_BYTES:
            raise PgolfError(f"a token stands for {int(counts.max()):,} bytes, more than a uint16 sidecar holds")
        results.append((list(mapping["ids"]), counts))
    return results


"""Tokenizer and byte accounting: the byte look-up tables against the tokenizer's own decoding.

The score divides by a byte count that comes from per-piece tables
(`pgolf.metric.ByteTables`). Claimed scores have been thrown out because those
tables were wrong: a leading space counted twice, byte-fallback pieces counted
as 3 bytes (the length of U+FFFD, what one byte decodes to on its own), a
tokenizer with no standalone "▁" piece. The checks here never trust the
tables: the reference is SentencePiece's `decode`, and the boundary ids
(control, unknown, unused) come from the tokenizer, not from the tables.

Reference byte count of a document: split its ids at boundary ids, decode each
run on its own (SentencePiece drops a leading space at the start of a decode,
as the metric drops it after a boundary) and sum the UTF-8 lengths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from pgolf.metric import SPACE_MARK, ByteTables, count_bytes
from pgolf.verify.report import Check

DECODE_BATCH_TOKENS = 1 << 20  # tokens converted to Python lists per decode call (bounds memory)
THREADS = max(1, min(8, os.cpu_count() or 1))  # SentencePiece's batch encode/decode threads


def reference_boundaries(processor, size: int | None = None) -> np.ndarray:
    """(size,) bool: control, unknown and unused ids, and ids past the tokenizer's pieces."""
    piece_count = processor.get_piece_size()
    size = piece_count if size is None else max(size, piece_count)
    boundary = np.ones(size, dtype=bool)
    for token_id in range(piece_count):
        boundary[token_id] = bool(processor.is_control(token_id) or processor.is_unknown(token_id)
                                  or processor.is_unused(token_id))
    return boundary


def _piece(processor, token_id: int) -> str:
    return repr(processor.id_to_piece(int(token_id))) if token_id < processor.get_piece_size() else "(past vocab)"


# ---------------------------------------------------------------- piece-level checks


def check_space_piece(processor, tables: ByteTables) -> Check:
    """A tokenizer needs a standalone "▁" piece, else a lone space falls back to the 3 bytes of U+2581."""
    token_id = processor.piece_to_id(SPACE_MARK)
    if processor.is_unknown(token_id) or processor.id_to_piece(token_id) != SPACE_MARK:
        return Check("tokenizer.space_piece", False,
                     f"no standalone {SPACE_MARK!r} piece: a space that merges with nothing is encoded as "
                     f"<unk> or as the 3 UTF-8 bytes of U+2581, and byte counts stop matching the text")
    counted = int(tables.base_bytes[token_id]) + int(tables.has_leading_space[token_id])
    if counted != 1:
        return Check("tokenizer.space_piece", False,
                     f"{SPACE_MARK!r} is piece {token_id} but the LUT counts it as {counted} bytes after a "
                     f"normal token (a space is 1 byte)")
    return Check("tokenizer.space_piece", True, f"{SPACE_MARK!r} is piece {token_id}, counted 1 byte after a "
                                                f"normal token, 0 after a boundary")


def check_byte_fallback(processor, tables: ByteTables) -> Check:
    """Every byte-fallback piece <0xNN> stands for exactly one byte."""
    byte_ids = [i for i in range(processor.get_piece_size()) if processor.is_byte(i)]
    if not byte_ids:
        return Check("tokenizer.byte_fallback", True,
                     "no byte-fallback pieces (characters outside the vocabulary become <unk>, counted 0 bytes)")
    ids = np.asarray(byte_ids)
    counted = tables.base_bytes[ids].astype(np.int64) + tables.has_leading_space[ids]
    wrong = ids[(counted != 1) | tables.is_boundary[ids]]
    if wrong.size:
        details = tuple(f"piece {i} {_piece(processor, i)}: counted {int(tables.base_bytes[i])} "
                        f"+ {int(tables.has_leading_space[i])} bytes, boundary={bool(tables.is_boundary[i])}; "
                        f"must be 1 byte, not a boundary" for i in wrong)
        first = int(wrong[0])
        return Check("tokenizer.byte_fallback", False,
                     f"{wrong.size} of {ids.size} byte-fallback pieces not counted as 1 byte (e.g. piece {first} "
                     f"{_piece(processor, first)} counted {int(counted[byte_ids.index(first)])})", details)
    return Check("tokenizer.byte_fallback", True, f"{ids.size} byte-fallback pieces, each counted as 1 byte")


def check_piece_bytes(processor, tables: ByteTables) -> Check:
    """Each id's LUT bytes, after a boundary and after a normal token, against decoding that piece."""
    piece_count = processor.get_piece_size()
    if tables.vocab_size < piece_count:
        return Check("tokenizer.piece_bytes", False,
                     f"LUT covers {tables.vocab_size} ids but the tokenizer has {piece_count} pieces")
    boundary = reference_boundaries(processor, tables.vocab_size)
    normal_ids = [i for i in range(piece_count) if not boundary[i] and not processor.is_byte(i)]
    anchor = next((i for i in normal_ids if not processor.id_to_piece(i).startswith(SPACE_MARK)
                   and processor.decode([i])), None)
    expected_first = np.zeros(tables.vocab_size, dtype=np.int64)  # bytes right after a boundary
    expected_next = np.zeros(tables.vocab_size, dtype=np.int64)  # bytes after a normal token
    for i in range(piece_count):
        if processor.is_byte(i):
            expected_first[i] = expected_next[i] = 1
    if anchor is not None and normal_ids:
        anchor_bytes = len(processor.decode([anchor]).encode("utf-8"))
        alone = processor.decode([[i] for i in normal_ids])
        after = processor.decode([[anchor, i] for i in normal_ids])
        for i, text_alone, text_after in zip(normal_ids, alone, after):
            expected_first[i] = len(text_alone.encode("utf-8"))
            expected_next[i] = len(text_after.encode("utf-8")) - anchor_bytes
    counted_first = tables.base_bytes.astype(np.int64)
    counted_next = counted_first + tables.has_leading_space
    details = []
    for i in np.flatnonzero(tables.is_boundary != boundary):
        kind = "boundary" if boundary[i] else "normal piece"
        details.append(f"piece {i} {_piece(processor, i)}: the tokenizer makes it a {kind}, the LUT does not")
    for i in np.flatnonzero((counted_first != expected_first) | (counted_next != expected_next)):
        details.append(f"piece {i} {_piece(processor, i)}: LUT counts {counted_first[i]} bytes after a boundary "
                       f"and {counted_next[i]} after a normal token; decoding gives {expected_first[i]} and "
                       f"{expected_next[i]}")
    if details:
        return Check("tokenizer.piece_bytes", False,
                     f"{len(details)} of {tables.vocab_size} ids have LUT byte counts that disagree with decoding",
                     tuple(details))
    return Check("tokenizer.piece_bytes", True,
                 f"all {tables.vocab_size} ids: LUT bytes equal decoded bytes after a boundary and after a normal "
                 f"token ({int(boundary.sum())} boundary ids, 0 bytes)")


# ---------------------------------------------------------------- document-level checks


def document_starts(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """Index of each document's first token: every bos, plus 0 when the split does not open with one."""
    starts = np.flatnonzero(np.asarray(tokens) == bos_id)
    if tokens.size and (starts.size == 0 or starts[0] != 0):
        starts = np.concatenate(([0], starts))
    return starts.astype(np.int64)


def lut_bytes_per_document(tokens: np.ndarray, tables: ByteTables, starts: np.ndarray) -> np.ndarray:
    """(num_docs,) int64: the metric's byte count of every token of each document (a bos counts 0)."""
    tokens = np.asarray(tokens)
    per_position = np.zeros(tokens.size, dtype=np.int16)
    chunk = DECODE_BATCH_TOKENS * 8
    for begin in range(1, tokens.size, chunk):  # chunked: count_bytes makes int64 copies
        end = min(begin + chunk, tokens.size)
        per_position[begin:end] = count_bytes(tokens[begin - 1:end - 1], tokens[begin:end], tables)
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.add.reduceat(per_position, starts, dtype=np.int64)


@dataclass
class DecodeSummary:
    decoded_bytes: np.ndarray  # (num_docs,) int64, reference bytes per document
    text_failures: list  # [(doc, text)]: decode(encode(text)) != text
    id_failures: list  # [(doc, first differing index)]: a plain document's ids do not survive decode -> encode
    num_plain_docs: int  # documents whose only boundary is the opening bos


def _batches(lengths: np.ndarray):
    """(begin, end) index ranges holding about DECODE_BATCH_TOKENS tokens each (at least one item)."""
    begin = 0
    while begin < lengths.size:
        end = int(np.searchsorted(np.cumsum(lengths[begin:]), DECODE_BATCH_TOKENS)) + begin + 1
        yield begin, min(end, lengths.size)
        begin = min(end, lengths.size)


def _id_lists(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, replace=None) -> list[list[int]]:
    """Python lists of tokens[s:e] for each range (the ranges are increasing and lie in one stretch).

    One `tolist` over the whole stretch, then list slices: per-range `tolist` calls dominate otherwise.
    `replace = (mask over ids, id)` substitutes that id for every masked one.
    """
    if starts.size == 0:
        return []
    base = int(starts[0])
    stretch = np.asarray(tokens[base:int(ends[-1])], dtype=np.int64)
    if replace is not None:
        mask, substitute = replace
        stretch = np.where(mask[stretch], substitute, stretch)
    flat = stretch.tolist()
    return [flat[s - base:e - base] for s, e in zip(starts.tolist(), ends.tolist())]


def _placeholder_id(processor) -> int | None:
    """A normal piece without a leading space, used in place of <unk> when round-tripping whole documents."""
    for token_id in range(processor.get_piece_size()):
        if processor.is_control(token_id) or processor.is_unknown(token_id) or processor.is_unused(token_id) \
                or processor.is_byte(token_id):
            continue
        piece = processor.id_to_piece(token_id)
        if piece.isalpha() and not piece.startswith(SPACE_MARK):
            return token_id
    return None


def decoded_bytes_per_document(tokens: np.ndarray, processor, starts: np.ndarray) -> DecodeSummary:
    """Reference bytes per document by decoding runs between boundary ids, and the round trips.

    Round trip: each document's decoded text (with <unk> replaced by a plain piece, since SentencePiece
    renders it as " ⁇ ") must be a fixed point of encode -> decode, i.e. the normaliser is idempotent on
    what is scored; a plain document (no boundary but its bos) must also give back exactly its ids.
    """
    tokens = np.asarray(tokens)
    boundary = reference_boundaries(processor, int(tokens.max()) + 1 if tokens.size else 0)
    is_boundary = boundary[tokens]
    positions = np.flatnonzero(is_boundary)
    run_starts = np.concatenate(([0], positions + 1))
    run_ends = np.concatenate((positions, [tokens.size]))
    keep = run_ends > run_starts
    run_starts, run_ends = run_starts[keep], run_ends[keep]
    run_docs = np.searchsorted(starts, run_starts, side="right") - 1
    decoded = np.zeros(starts.size, dtype=np.int64)
    for begin, end in _batches(run_ends - run_starts):
        texts = processor.decode(_id_lists(tokens, run_starts[begin:end], run_ends[begin:end]),
                                 num_threads=THREADS)
        np.add.at(decoded, run_docs[begin:end], [len(text.encode("utf-8")) for text in texts])

    boundaries_per_doc = np.add.reduceat(is_boundary.astype(np.int64), starts) if starts.size else np.zeros(0)
    opening = is_boundary[starts] if starts.size else np.zeros(0, dtype=bool)
    plain = boundaries_per_doc == opening
    summary = DecodeSummary(decoded, [], [], int(np.count_nonzero(plain)))
    placeholder = _placeholder_id(processor)
    unknown = np.zeros(boundary.size, dtype=bool)
    unknown[[i for i in range(processor.get_piece_size()) if processor.is_unknown(i)]] = True
    doc_ends = np.append(starts[1:], tokens.size)
    body_starts = starts + opening  # skip the opening bos
    for begin, end in _batches(doc_ends - body_starts):
        id_lists = _id_lists(tokens, body_starts[begin:end], doc_ends[begin:end],
                             replace=(unknown, placeholder) if placeholder is not None else None)
        texts = processor.decode(id_lists, num_threads=THREADS)
        reencoded = processor.encode(texts, num_threads=THREADS)
        for offset, (text, again, ids, ids_again) in enumerate(zip(texts, processor.decode(reencoded,
                                                                                           num_threads=THREADS),
                                                                    id_lists, reencoded)):
            doc = begin + offset
            if again != text:
                summary.text_failures.append((doc, text))
            elif plain[doc] and ids_again != ids:
                differ = next((j for j, (a, b) in enumerate(zip(ids_again, ids)) if a != b),
                              min(len(ids), len(ids_again)))
                summary.id_failures.append((doc, differ))
    return summary


def check_documents(tokens: np.ndarray, processor, tables: ByteTables, bos_id: int,
                    split_name: str = "val") -> list[Check]:
    """LUT bytes against decoded bytes for every document (and in total), and the normalisation round trip."""
    tokens = np.asarray(tokens)
    piece_count = processor.get_piece_size()
    if tokens.size and int(tokens.max()) >= min(piece_count, tables.vocab_size):
        bad = int(np.flatnonzero(tokens >= min(piece_count, tables.vocab_size))[0])
        return [Check("tokenizer.lut_vs_decoded", False,
                      f"{split_name} token {bad} has id {int(tokens[bad])}, outside the tokenizer's {piece_count} "
                      f"pieces or the LUT's {tables.vocab_size} ids: the shards were not made with this tokenizer")]
    starts = document_starts(tokens, bos_id)
    lut = lut_bytes_per_document(tokens, tables, starts)
    summary = decoded_bytes_per_document(tokens, processor, starts)
    decoded = summary.decoded_bytes
    unknown = int(sum(np.count_nonzero(tokens == i) for i in range(piece_count) if processor.is_unknown(i)))
    total_lut, total_decoded = int(lut.sum()), int(decoded.sum())
    differing = np.flatnonzero(lut != decoded)
    unknown_note = f"; {unknown:,} <unk> tokens counted 0 bytes" if unknown else ""
    if differing.size:
        details = tuple(f"doc {d} (tokens {starts[d]}..): LUT {lut[d]:,} bytes, decoded text {decoded[d]:,} bytes "
                        f"({lut[d] - decoded[d]:+,})" for d in differing)
        byte_check = Check("tokenizer.lut_vs_decoded", False,
                           f"{differing.size:,} of {starts.size:,} {split_name} docs differ; total LUT "
                           f"{total_lut:,} vs decoded {total_decoded:,} bytes ({total_lut - total_decoded:+,}, "
                           f"{(total_lut - total_decoded) / max(total_decoded, 1):+.3%}){unknown_note}", details)
    else:
        byte_check = Check("tokenizer.lut_vs_decoded", True,
                           f"all {starts.size:,} {split_name} docs: LUT bytes == UTF-8 bytes of the decoded text; "
                           f"total {total_lut:,} bytes for {tokens.size:,} tokens "
                           f"({tokens.size / max(total_lut, 1):.4f} tokens/byte){unknown_note}")
    failures = ([f"doc {doc}: decode(encode(text)) != text, text starts {text[:60]!r}"
                 for doc, text in summary.text_failures]
                + [f"doc {doc}: re-encoding its decoded text changes token {index}"
                   for doc, index in summary.id_failures])
    scope = (f"{starts.size:,} {split_name} docs (text level; {summary.num_plain_docs:,} docs without <unk> "
             f"also id for id)")
    if failures:
        trip_check = Check("tokenizer.round_trip", False,
                           f"{len(failures):,} failures among {scope}: normalisation is not idempotent, or the "
                           f"shards were made with another tokenizer", tuple(failures))
    else:
        trip_check = Check("tokenizer.round_trip", True, f"decode -> encode -> decode is exact for {scope}")
    return [byte_check, trip_check]


def tokens_per_byte(tokens: np.ndarray, tables: ByteTables) -> float:
    """Tokens per LUT byte of a split (converts bits per byte to nats per token and back)."""
    tokens = np.asarray(tokens)
    total = int(lut_bytes_per_document(tokens, tables, np.zeros(1, dtype=np.int64)).sum()) if tokens.size else 0
    return (tokens.size - 1) / total if total else float("nan")

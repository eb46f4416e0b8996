"""Train/val disjointness: no val document may occur in the train shards.

A document is the token ids after one bos up to the next bos. Each val
document is hashed (blake2b, 16 bytes, over its little-endian uint16 ids); the
train shards are cut at bos tokens the same way (documents may straddle
shards) and every train document is looked up.

Very short documents (headings, boilerplate) occur in any two samples of real
text by chance; documents under `min_tokens` are still looked up and their hits
reported, but they do not fail the check.

A train set larger than `full_scan_tokens` is sampled: random windows of
`window_tokens`, and the complete documents inside them. With n train
documents examined and no hit, the fraction f of train documents that are val
documents satisfies (1 - f)^n >= 0.05 at 95% confidence, i.e.
f <= 1 - 0.05^(1/n) (about 3/n).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf.data.shards import read_shard
from pgolf.verify.report import Check

DEFAULT_MIN_TOKENS = 32
DEFAULT_FULL_SCAN_TOKENS = 2_000_000_000
DEFAULT_WINDOW_TOKENS = 1_000_000
DEFAULT_SAMPLE_TOKENS = 400_000_000
CONFIDENCE = 0.95


def document_digest(document: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(document, dtype="<u2").tobytes(), digest_size=16).digest()


def val_document_hashes(val_tokens: np.ndarray, bos_id: int) -> dict[bytes, tuple[int, int]]:
    """digest -> (val document index, its token count), for every document that opens with bos."""
    tokens = np.asarray(val_tokens)
    starts = np.flatnonzero(tokens == bos_id)
    ends = np.append(starts[1:], tokens.size)
    hashes: dict[bytes, tuple[int, int]] = {}
    for index, (start, end) in enumerate(zip(starts, ends)):
        hashes.setdefault(document_digest(tokens[start + 1:end]), (index, int(end - start - 1)))
    return hashes


@dataclass
class _Scan:
    documents: int = 0
    tokens: int = 0
    hits: list[tuple[int, int, str, int]] = field(default_factory=list)  # (val doc, length, shard name, offset)


def _look_up(tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray, origin, bos_id: int,
             val_hashes: dict[bytes, tuple[int, int]], scan: _Scan) -> None:
    """Look up the documents [starts[i], ends[i]) of `tokens`; origin(start) -> (shard name, token offset)."""
    for start, end in zip(starts, ends):
        scan.documents += 1
        scan.tokens += int(end - start)
        found = val_hashes.get(document_digest(tokens[start + 1:end]))
        if found is not None:
            scan.hits.append((found[0], found[1], *origin(int(start))))


def scan_train_full(train_files: list[Path], val_hashes, bos_id: int) -> _Scan:
    """Every train document; a document that straddles shards is carried into the next one.
    Tokens before the first bos of the first shard (a cut document) are not looked up."""
    scan = _Scan()
    carry = np.zeros(0, dtype=np.uint16)
    carry_name, carry_offset = "", 0
    for position, path in enumerate(train_files):
        shard = np.asarray(read_shard(path))
        joined = np.concatenate((carry, shard)) if carry.size else shard
        starts = np.flatnonzero(joined == bos_id)
        ends = np.append(starts[1:], joined.size)
        is_last = position == len(train_files) - 1
        complete = starts.size if is_last else max(starts.size - 1, 0)

        def origin(start: int, held=carry.size, name=carry_name, offset=carry_offset, shard_name=path.name):
            return (name, offset + start) if start < held else (shard_name, start - held)

        _look_up(joined, starts[:complete], ends[:complete], origin, bos_id, val_hashes, scan)
        if is_last:
            break
        if starts.size:
            carry_name, carry_offset = origin(int(starts[-1]))
            carry = np.array(joined[starts[-1]:], dtype=np.uint16)
        elif carry.size:
            carry = np.array(joined, dtype=np.uint16)  # one document spans this whole shard
    return scan


def scan_train_sampled(train_files: list[Path], counts: list[int], val_hashes, bos_id: int, sample_tokens: int,
                       window_tokens: int, seed: int) -> _Scan:
    """Complete documents inside randomly chosen windows: each shard is cut into windows of
    `window_tokens` (the last one shorter) and windows are drawn in random order, without
    replacement, until `sample_tokens` tokens have been examined."""
    scan = _Scan()
    slots = [(index, begin) for index, count in enumerate(counts) for begin in range(0, count, window_tokens)]
    if not slots:
        return scan
    rng = np.random.default_rng(seed)
    examined = 0
    for slot in rng.permutation(len(slots)):
        if examined >= sample_tokens:
            break
        index, begin = slots[slot]
        window = np.asarray(read_shard(train_files[index])[begin:begin + window_tokens])
        examined += window.size
        starts = np.flatnonzero(window == bos_id)  # complete documents: from one bos to the next
        _look_up(window, starts[:-1], starts[1:], lambda offset, base=begin, name=train_files[index].name:
                 (name, base + offset), bos_id, val_hashes, scan)
    return scan


def contamination_bound(num_documents: int, confidence: float = CONFIDENCE) -> float:
    """Largest fraction of val documents among train documents consistent with 0 hits in n draws."""
    if num_documents <= 0:
        return 1.0
    return 1.0 - (1.0 - confidence) ** (1.0 / num_documents)


def check_disjoint(val_tokens: np.ndarray, train_files: list[Path], counts: list[int], bos_id: int,
                   min_tokens: int = DEFAULT_MIN_TOKENS, full_scan_tokens: int = DEFAULT_FULL_SCAN_TOKENS,
                   sample_tokens: int = DEFAULT_SAMPLE_TOKENS, window_tokens: int = DEFAULT_WINDOW_TOKENS,
                   seed: int = 0) -> Check:
    """No val document of at least `min_tokens` tokens occurs in the train shards."""
    if not train_files:
        return Check("split.train_val_disjoint", True, "no train shards present (evaluation-only dataset)")
    val_hashes = val_document_hashes(val_tokens, bos_id)
    total = sum(counts)
    sampled = total > full_scan_tokens
    if sampled:
        scan = scan_train_sampled(train_files, counts, val_hashes, bos_id, sample_tokens, window_tokens, seed)
    else:
        scan = scan_train_full(train_files, val_hashes, bos_id)
    long_hits = [hit for hit in scan.hits if hit[1] >= min_tokens]
    short_hits = [hit for hit in scan.hits if hit[1] < min_tokens]
    short_note = (f"; {len(short_hits)} short docs (< {min_tokens} tokens) also occur in train, "
                  f"not counted" if short_hits else "")
    coverage = (f"sampled {scan.documents:,} train docs ({scan.tokens:,} of {total:,} tokens, windows of "
                f"{window_tokens:,}, seed {seed})" if sampled else
                f"all {scan.documents:,} train docs ({scan.tokens:,} tokens)")
    if long_hits:
        details = tuple(f"val doc {doc} ({length} tokens) occurs in {shard} at token {offset}"
                        for doc, length, shard, offset in long_hits)
        return Check("split.train_val_disjoint", False,
                     f"{len(long_hits)} val document(s) found in the train shards, e.g. val doc {long_hits[0][0]} "
                     f"({long_hits[0][1]} tokens) in {long_hits[0][2]} at token {long_hits[0][3]}; "
                     f"checked {coverage}{short_note}", details)
    evidence = f"0 of {len(val_hashes):,} distinct val docs found among {coverage}{short_note}"
    if sampled:
        bound = contamination_bound(scan.documents)
        evidence += (f"; at {CONFIDENCE:.0%} confidence fewer than {bound:.2e} of train docs "
                     f"(about {bound * scan.documents * total / max(scan.tokens, 1):,.0f} docs) are val docs")
    return Check("split.train_val_disjoint", True, evidence)

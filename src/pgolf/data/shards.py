"""The challenge's token shard format, and locating a dataset on disk.

A shard is a 256 x int32 little-endian header followed by uint16 little-endian
tokens. header[0] = 20240520 (magic), header[1] = 1 (version), header[2] =
number of tokens; the file size must be exactly 1024 + 2 * count bytes.
Anything else is a corrupt shard and raises `ShardError` naming the file.

A dataset may carry a byte sidecar beside its val shards (frontier.md §1):
`fineweb_val_bytes_NNNNNN.bin`, the same format, one uint16 per val token
(`pgolf.data.sidecar`). A val glob must not pick those up as val shards.

Reading is memory-mapped, so taking a slice of a 200 MB shard does not copy it
into RAM. Writing goes to a temporary name in the same folder and is renamed
into place, so a half-written shard never carries the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pgolf.errors import PgolfError

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_BYTES = 2
DEFAULT_VARIANT_DIR = "fineweb10B_sp1024"
DEFAULT_TOKENIZER_NAME = "fineweb_1024_bpe.model"
MANIFEST_NAME = "manifest.json"
SIDECAR_MARK = "_bytes_"  # in the name of a byte sidecar shard, never of a token shard
SIDECAR_PREFIX = "fineweb_val_bytes_"


class ShardError(PgolfError):
    """A shard file is missing, truncated or not in the challenge format."""


def read_shard_header(path) -> int:
    """Validate the header and the file size; return the token count."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw = handle.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file not found") from None
    except OSError as error:
        raise ShardError(f"{path}: cannot read shard ({error.strerror})") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({len(raw)} of {HEADER_BYTES} bytes)")
    header = np.frombuffer(raw, dtype="<i4", count=HEADER_INTS)
    if int(header[0]) != SHARD_MAGIC:
        raise ShardError(f"{path}: wrong magic {int(header[0])} (expected {SHARD_MAGIC}); not a challenge shard")
    if int(header[1]) != SHARD_VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])} (expected {SHARD_VERSION})")
    count = int(header[2])
    if count < 0:
        raise ShardError(f"{path}: negative token count {count} in header")
    expected = HEADER_BYTES + TOKEN_BYTES * count
    if size != expected:
        problem = "truncated" if size < expected else "has trailing bytes"
        raise ShardError(
            f"{path}: size mismatch, file {problem}: {size} bytes but header says {count} tokens = {expected} bytes"
        )
    return count


def validate_shard(path) -> int:
    """Token count of a valid shard, or ShardError."""
    return read_shard_header(path)


def read_shard(path) -> np.memmap:
    """Validated, read-only, memory-mapped uint16 tokens of one shard (shape (count,))."""
    count = read_shard_header(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)  # np.memmap cannot map zero bytes
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def check_token_range(tokens: np.ndarray, vocab_size: int, path) -> None:
    """ShardError when a token id is outside 0..vocab_size-1 (one pass over a memory-mapped shard:
    an id past the embedding would otherwise fail mid-training as an IndexError, or on GPU as a device assert)."""
    if tokens.size == 0:
        return
    highest = int(tokens.max())
    if highest >= vocab_size:
        position = int(np.argmax(tokens >= vocab_size))
        raise ShardError(f"{path}: token id {highest} (first bad id at position {position:,}) is outside the "
                         f"{vocab_size}-piece vocabulary; the shard was made with another tokenizer")


def write_shard(path, tokens: np.ndarray) -> None:
    """Write tokens (any integer array with values in 0..65535) atomically."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ShardError(f"{path}: tokens must be one-dimensional, got shape {tokens.shape}")
    if tokens.dtype != np.uint16:
        if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
            raise ShardError(f"{path}: token ids must lie in 0..65535 to fit uint16")
        tokens = tokens.astype(np.uint16)
    if tokens.size >= 2**31:
        raise ShardError(f"{path}: {tokens.size} tokens do not fit the int32 header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, tokens.size
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(header.tobytes())
            handle.write(tokens.astype("<u2", copy=False).tobytes())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def list_shards(data_dir, split: str) -> list[Path]:
    """Sorted `fineweb_{split}_*.bin` token shards of a dataset folder (byte sidecars excluded)."""
    if split not in ("train", "val"):
        raise PgolfError(f"split must be 'train' or 'val', got {split!r}")
    return sorted(path for path in Path(data_dir).glob(f"fineweb_{split}_*.bin") if SIDECAR_MARK not in path.name)


def sidecar_path(val_shard) -> Path:
    """`fineweb_val_bytes_NNNNNN.bin` beside `fineweb_val_NNNNNN.bin`."""
    val_shard = Path(val_shard)
    return val_shard.with_name(val_shard.name.replace("fineweb_val_", SIDECAR_PREFIX, 1))


def list_sidecar_shards(data_dir) -> list[Path]:
    """Sorted byte sidecar shards of a dataset folder (empty when it has none)."""
    return sorted(Path(data_dir).glob(f"{SIDECAR_PREFIX}*.bin"))


def load_val_bytes(data_dir, val_tokens=None) -> np.ndarray | None:
    """The byte sidecar as int32 of shape (N,), aligned with `load_val_tokens`; None when there is none.

    Opening checks: one sidecar shard per val shard with the same token count, (given the val tokens)
    0 bytes at every bos, a positive sum, equal to the manifest's `bytes_val` when it records one.
    """
    sidecars, val_files = list_sidecar_shards(data_dir), list_shards(data_dir, "val")
    if not sidecars:
        return None
    if [sidecar_path(path) for path in val_files] != sidecars:
        raise ShardError(f"{data_dir}: byte sidecars {[p.name for p in sidecars]} do not pair one to one with "
                         f"val shards {[p.name for p in val_files]}")
    parts = []
    for val_file, sidecar in zip(val_files, sidecars):
        count, expected = read_shard_header(sidecar), read_shard_header(val_file)
        if count != expected:
            raise ShardError(f"{sidecar}: {count:,} byte counts but {val_file.name} has {expected:,} tokens")
        parts.append(np.asarray(read_shard(sidecar), dtype=np.int32))
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    if val_tokens is not None:
        from pgolf.data.tokenizer import BOS_ID

        bos_bytes = values[np.asarray(val_tokens) == BOS_ID]
        if bos_bytes.size and int(bos_bytes.max()) != 0:
            raise ShardError(f"{data_dir}: the byte sidecar gives {int(np.count_nonzero(bos_bytes))} bos "
                             f"token(s) a nonzero byte count; a bos stands for no byte")
    total = int(values.sum(dtype=np.int64))
    if total <= 0:
        raise ShardError(f"{data_dir}: the byte sidecar sums to {total} bytes")
    found = find_manifest(data_dir)
    entry = dataset_entry(found[1], Path(data_dir).name) if found else None
    expected_sum = ((entry or {}).get("stats") or {}).get("bytes_val")
    if expected_sum is not None and total != int(expected_sum):
        raise ShardError(f"{data_dir}: the byte sidecar sums to {total:,} bytes but the manifest says "
                         f"bytes_val = {int(expected_sum):,}")
    return values


def load_val_tokens(data_dir):
    """All val shards concatenated, as a torch int64 tensor of shape (N,)."""
    import torch

    files = list_shards(data_dir, "val")
    if not files:
        raise PgolfError(f"{data_dir}: no fineweb_val_*.bin shards; run `pgolf data fetch` or `pgolf data build`")
    parts = [np.asarray(read_shard(path), dtype=np.int64) for path in files]
    return torch.from_numpy(np.concatenate(parts))


# ---------------------------------------------------------------- locating a dataset

_HOW_TO_GET = ("run `pgolf data fetch --variant sp1024 --train-shards N` or "
               "`pgolf data build --input FILE --out DIR --vocab-size V`")


def resolve_dataset_dir(path) -> Path:
    """The folder holding the .bin shards: `path` itself, or `path/datasets/fineweb10B_sp1024` (fetch layout)."""
    path = Path(path)
    if not path.exists():
        raise PgolfError(f"dataset folder {path} does not exist; {_HOW_TO_GET}")
    for candidate in (path, path / "datasets" / DEFAULT_VARIANT_DIR):
        if candidate.is_dir() and (list_shards(candidate, "val") or list_shards(candidate, "train")):
            return candidate
    datasets = path / "datasets"
    if datasets.is_dir():
        found = [child for child in sorted(datasets.iterdir()) if child.is_dir() and list_shards(child, "val")]
        if len(found) == 1:
            return found[0]
    raise PgolfError(f"{path} holds no fineweb_*.bin shards (nor datasets/{DEFAULT_VARIANT_DIR}/); {_HOW_TO_GET}")


def find_manifest(dataset_dir) -> tuple[Path, dict] | None:
    """The manifest describing a dataset folder: its own manifest.json (build layout) or the fetch root's."""
    dataset_dir = Path(dataset_dir)
    for candidate in (dataset_dir / MANIFEST_NAME, dataset_dir.parent.parent / MANIFEST_NAME):
        if candidate.is_file():
            try:
                return candidate, json.loads(candidate.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise PgolfError(f"{candidate}: not valid JSON ({error})") from None
    return None


def dataset_entry(manifest: dict, name: str) -> dict | None:
    """The `datasets` entry named `name` (or the only one) of an official-shaped manifest."""
    entries = [entry for entry in manifest.get("datasets", []) if isinstance(entry, dict)]
    for entry in entries:
        if entry.get("name") == name:
            return entry
    return entries[0] if len(entries) == 1 else None


def tokenizer_entry(manifest: dict, entry: dict | None) -> dict | None:
    tokenizers = [item for item in manifest.get("tokenizers", []) if isinstance(item, dict)]
    wanted = entry.get("tokenizer_name") if entry else None
    for item in tokenizers:
        if wanted is not None and item.get("name") == wanted:
            return item
    return tokenizers[0] if len(tokenizers) == 1 else None


def find_tokenizer(dataset_dir) -> Path:
    """The SentencePiece model of a dataset: from its manifest, else the fetch layout's tokenizers/ folder."""
    dataset_dir = Path(dataset_dir)
    found = find_manifest(dataset_dir)
    if found is not None:
        manifest_path, manifest = found
        item = tokenizer_entry(manifest, dataset_entry(manifest, dataset_dir.name))
        for key in ("model_path", "path"):
            if item and item.get(key):
                candidate = manifest_path.parent / item[key]
                if candidate.is_file():
                    return candidate
                raise PgolfError(f"tokenizer {candidate} named by {manifest_path} is missing; {_HOW_TO_GET}")
    fallback = dataset_dir.parent.parent / "tokenizers" / DEFAULT_TOKENIZER_NAME
    if fallback.is_file():
        return fallback
    models = sorted((dataset_dir.parent.parent / "tokenizers").glob("*.model"))
    if len(models) == 1:  # the fetch layout of another export (e.g. the CaseOps one)
        return models[0]
    raise PgolfError(
        f"no tokenizer for {dataset_dir}: no manifest names one and {fallback} is missing; {_HOW_TO_GET}"
    )

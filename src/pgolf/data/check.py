"""Validation of a dataset folder: shards, the manifest's counts, the tokenizer.

`check_dataset` raises `PgolfError` (naming the file) at the first problem and
returns a summary otherwise. A byte sidecar, when present, must pair with
the val shards value for value (and match the manifest's `bytes_val`). It accepts both layouts: a built folder with its
own manifest.json, and the fetch layout DEST/datasets/<name>/ whose manifest
(the official one) lies at DEST/manifest.json and describes every train shard
published, of which only a prefix may be present.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf.data.shards import (dataset_entry, find_manifest, find_tokenizer, list_shards, load_val_bytes, read_shard,
                               resolve_dataset_dir, tokenizer_entry, validate_shard)
from pgolf.data.tokenizer import BOS_ID, load_sentencepiece, sha256_file
from pgolf.errors import PgolfError


@dataclass
class CheckSummary:
    dataset_dir: Path
    tokenizer_path: Path
    vocab_size: int
    num_val_files: int
    num_val_tokens: int
    num_train_files: int
    num_train_tokens: int
    manifest_path: Path | None
    notes: list[str] = field(default_factory=list)
    num_val_bytes: int | None = None  # the byte sidecar's sum, when the dataset has one

    def lines(self) -> list[str]:
        lines = [
            f"dataset: {self.dataset_dir}",
            f"tokenizer: {self.tokenizer_path} (vocab {self.vocab_size})",
            f"manifest: {self.manifest_path or 'none'}",
            f"val: {self.num_val_files} shard(s), {self.num_val_tokens:,} tokens",
            f"train: {self.num_train_files} shard(s), {self.num_train_tokens:,} tokens",
        ]
        if self.num_val_bytes is not None:
            lines.append(f"val byte sidecar: {self.num_val_bytes:,} original bytes (bpb counts these)")
        return lines + [f"note: {note}" for note in self.notes] + ["check: ok"]


def _expect(actual: int, expected, what: str, where: Path) -> None:
    if expected is not None and int(expected) != actual:
        raise PgolfError(f"{where}: manifest says {what} = {int(expected):,} but the folder has {actual:,}")


def check_dataset(path, scan_tokens: bool = False) -> CheckSummary:
    """Validate every shard, the manifest's counts and the tokenizer; `scan_tokens` also reads every token."""
    dataset_dir = resolve_dataset_dir(path)
    val_files, train_files = list_shards(dataset_dir, "val"), list_shards(dataset_dir, "train")
    if not val_files:
        raise PgolfError(f"{dataset_dir}: no fineweb_val_*.bin shard")
    val_counts = [validate_shard(file) for file in val_files]
    train_counts = [validate_shard(file) for file in train_files]
    notes = []
    if not train_files:
        notes.append("no train shards (evaluation only)")

    tokenizer_path = find_tokenizer(dataset_dir)
    vocab_size = load_sentencepiece(tokenizer_path).get_piece_size()
    found = find_manifest(dataset_dir)
    manifest_path = None
    if found is None:
        notes.append("no manifest.json; counts not cross-checked")
    else:
        manifest_path, manifest = found
        entry = dataset_entry(manifest, dataset_dir.name)
        if entry is None:
            raise PgolfError(f"{manifest_path}: no dataset entry named {dataset_dir.name}")
        stats = entry.get("stats") or {}
        _expect(len(val_files), stats.get("files_val"), "files_val", manifest_path)
        _expect(sum(val_counts), stats.get("tokens_val"), "tokens_val", manifest_path)
        listed_train = stats.get("files_train")
        if listed_train is not None and len(train_files) > int(listed_train):
            raise PgolfError(f"{manifest_path}: manifest lists {listed_train} train shards but the folder has "
                             f"{len(train_files)}")
        if listed_train is not None and len(train_files) == int(listed_train):
            _expect(sum(train_counts), stats.get("tokens_train"), "tokens_train", manifest_path)
        elif listed_train is not None and manifest_path.parent == dataset_dir:
            # a built folder's own manifest describes exactly what it holds: a shard is missing
            _expect(len(train_files), listed_train, "files_train", manifest_path)
        elif listed_train is not None:
            notes.append(f"{len(train_files)} of {listed_train} published train shards present")
        item = tokenizer_entry(manifest, entry)
        for source in (entry, item or {}):
            if source.get("vocab_size") is not None and int(source["vocab_size"]) != vocab_size:
                raise PgolfError(f"{tokenizer_path} has {vocab_size} pieces but {manifest_path} says vocab_size "
                                 f"{source['vocab_size']}")
        if item and item.get("sha256") and sha256_file(tokenizer_path) != item["sha256"]:
            raise PgolfError(f"{tokenizer_path}: sha256 differs from the one in {manifest_path}")
        if scan_tokens and stats.get("docs_val") is not None:
            documents = sum(int(np.count_nonzero(read_shard(file) == BOS_ID)) for file in val_files)
            _expect(documents, stats["docs_val"], "docs_val (bos tokens in val)", manifest_path)
    val_tokens = np.concatenate([read_shard(file) for file in val_files]) if scan_tokens else None
    val_bytes = load_val_bytes(dataset_dir, val_tokens)
    if scan_tokens:
        for file in val_files + train_files:
            tokens = read_shard(file)
            if tokens.size and int(tokens.max()) >= vocab_size:
                raise PgolfError(f"{file}: token id {int(tokens.max())} is outside the vocabulary of {vocab_size}")
    return CheckSummary(dataset_dir, tokenizer_path, vocab_size, len(val_files), sum(val_counts),
                        len(train_files), sum(train_counts), manifest_path, notes,
                        None if val_bytes is None else int(val_bytes.sum(dtype=np.int64)))

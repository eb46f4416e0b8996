"""The val split itself: shard headers and sizes, and its token and document counts against the manifest.

A truncated val shard scores fewer (and different) tokens than everyone
else's; its header may even be consistent with its size (re-written short).
So the counts are compared with what the dataset's manifest says (for the
official sp1024 export, also with the published figures).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgolf.challenge import OFFICIAL_SP1024_TOKENIZER_SHA256, OFFICIAL_SP1024_VAL_DOCS, OFFICIAL_SP1024_VAL_TOKENS
from pgolf.data.shards import ShardError, dataset_entry, find_manifest, list_shards, validate_shard
from pgolf.verify.report import Check


def check_shards(dataset_dir) -> tuple[Check, dict[str, list[int]]]:
    """Validate the header and size of every val and train shard. Returns the check and token counts per split."""
    dataset_dir = Path(dataset_dir)
    counts: dict[str, list[int]] = {"val": [], "train": []}
    problems = []
    for split in ("val", "train"):
        for path in list_shards(dataset_dir, split):
            try:
                counts[split].append(validate_shard(path))
            except ShardError as error:
                problems.append(str(error))
                counts[split].append(-1)
    if not counts["val"]:
        problems.append(f"{dataset_dir}: no fineweb_val_*.bin shard")
    if problems:
        return Check("split.shards", False, f"{len(problems)} shard problem(s): {problems[0]}", tuple(problems)), counts
    evidence = (f"{len(counts['val'])} val shard(s) ({sum(counts['val']):,} tokens), {len(counts['train'])} train "
                f"shard(s) ({sum(counts['train']):,} tokens); every header has magic 20240520 version 1 and "
                f"file size = 1024 + 2 x tokens")
    return Check("split.shards", True, evidence), counts


def expected_val_counts(dataset_dir, tokenizer_sha256: str | None) -> tuple[int | None, int | None, str]:
    """(tokens, documents, where from): the manifest's `stats`, else the official figures for sp1024."""
    found = find_manifest(Path(dataset_dir))
    if found is not None:
        manifest_path, manifest = found
        entry = dataset_entry(manifest, Path(dataset_dir).name) or {}
        stats = entry.get("stats") or {}
        tokens, docs = stats.get("tokens_val"), stats.get("docs_val")
        if tokens is not None or docs is not None:
            return (None if tokens is None else int(tokens), None if docs is None else int(docs), str(manifest_path))
    if tokenizer_sha256 == OFFICIAL_SP1024_TOKENIZER_SHA256 and Path(dataset_dir).name == "fineweb10B_sp1024":
        return OFFICIAL_SP1024_VAL_TOKENS, OFFICIAL_SP1024_VAL_DOCS, "the official sp1024 export"
    return None, None, "no manifest"


def check_val_counts(val_tokens: np.ndarray, bos_id: int, expected_tokens: int | None, expected_docs: int | None,
                     source: str) -> Check:
    """Token and document (bos) counts of the val split against the expected ones; the split opens with bos."""
    num_tokens = int(val_tokens.size)
    num_docs = int(np.count_nonzero(np.asarray(val_tokens) == bos_id))
    problems = []
    if num_tokens and int(val_tokens[0]) != bos_id:
        problems.append(f"the val split opens with token {int(val_tokens[0])}, not bos {bos_id} "
                        f"(its first document is cut)")
    if expected_tokens is not None and num_tokens != expected_tokens:
        gap = expected_tokens - num_tokens
        problems.append(f"val has {num_tokens:,} tokens but {source} says {expected_tokens:,} "
                        f"({abs(gap):,} {'missing' if gap > 0 else 'extra'})")
    if expected_docs is not None and num_docs != expected_docs:
        gap = expected_docs - num_docs
        problems.append(f"val has {num_docs:,} documents (bos tokens) but {source} says {expected_docs:,} "
                        f"({abs(gap):,} {'missing' if gap > 0 else 'extra'})")
    if problems:
        return Check("split.val_counts", False, "; ".join(problems))
    if expected_tokens is None and expected_docs is None:
        return Check("split.val_counts", False,
                     f"val has {num_tokens:,} tokens, {num_docs:,} documents, but {source} gives no counts to "
                     f"compare with (a truncated split would go unnoticed)")
    return Check("split.val_counts", True, f"val has {num_tokens:,} tokens and {num_docs:,} documents, as "
                                           f"{source} says")

"""`pgolf verify`: the checks a claimed score must survive, run over a dataset, an artifact and runs.

Each concern has its own module of pure check functions returning `Check`
objects (`report.py`): byte accounting against the tokenizer
(`tokenizer_checks`) or, for a dataset with a byte sidecar, the sidecar against
the original text (`sidecar_checks`), the val split's shards and counts (`split_checks`),
train/val disjointness (`disjoint_checks`), which modules can read val
(`isolation_checks`), the artifact (`artifact_checks`), the multi-seed run
set and its significance test (`run_checks`, `stats`), and the evaluation time
budget (`eval_budget`). `run_verify` here only loads the inputs and calls them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from pgolf.verify.report import Check, format_report

__all__ = ["Check", "format_report", "run_verify"]


def _quiet(_: str) -> None:
    return None


def run_verify(data_dir, artifact=None, runs=(), baseline_bpb=(), tokenizer=None, eval_seq_len: int = 2048,
               eval_stride: int = 64, min_doc_tokens: int | None = None, full_scan_tokens: int | None = None,
               sample_tokens: int | None = None, seed: int = 0, tables=None, corpus=None,
               sidecar_docs: int | None = None, log: Callable[[str], None] = _quiet) -> list[Check]:
    """Every check that applies to the given inputs, in report order. `tables` overrides the byte tables
    built from the tokenizer (tests feed doctored ones). `corpus` (the files the dataset was built from,
    in order) makes the sidecar check exact; a built dataset's manifest names them otherwise."""
    from pgolf.config import model_config_from_dict
    from pgolf.data.shards import find_tokenizer, list_shards, list_sidecar_shards, read_shard, resolve_dataset_dir
    from pgolf.data.tokenizer import is_caseops_tokenizer, load_sentencepiece, sha256_file
    from pgolf.metric import byte_tables_from_sentencepiece
    from pgolf.verify import disjoint_checks, eval_budget, sidecar_checks, tokenizer_checks
    from pgolf.verify.artifact_checks import check_artifact
    from pgolf.verify.isolation_checks import check_val_isolation
    from pgolf.verify.run_checks import check_runs
    from pgolf.verify.split_checks import (OFFICIAL_SP1024_VAL_TOKENS, check_shards, check_val_counts,
                                           expected_val_counts)

    dataset_dir = resolve_dataset_dir(data_dir)
    tokenizer_path = Path(tokenizer) if tokenizer else find_tokenizer(dataset_dir)
    processor = load_sentencepiece(tokenizer_path)
    tables = byte_tables_from_sentencepiece(processor) if tables is None else tables
    tokenizer_sha256 = sha256_file(tokenizer_path)
    bos_id = processor.bos_id()
    log(f"verify: dataset {dataset_dir}, tokenizer {tokenizer_path} (sha256 {tokenizer_sha256[:16]}...)")

    # with a sidecar every evaluation counts bytes from it, never from the look-up tables
    has_sidecar = bool(list_sidecar_shards(dataset_dir))
    checks = [] if has_sidecar else [tokenizer_checks.check_space_piece(processor, tables),
                                     tokenizer_checks.check_byte_fallback(processor, tables),
                                     tokenizer_checks.check_piece_bytes(processor, tables)]
    shard_check, counts = check_shards(dataset_dir)
    checks.append(shard_check)
    val_tokens = val_bytes = None
    if -1 not in counts["val"] and counts["val"]:
        val_tokens = np.concatenate([np.asarray(read_shard(path)) for path in list_shards(dataset_dir, "val")])
        log(f"verify: decoding {val_tokens.size:,} val tokens")
        byte_check, trip_check = tokenizer_checks.check_documents(val_tokens, processor, tables, bos_id)
        checks.extend([trip_check] if has_sidecar else [byte_check, trip_check])
        if has_sidecar:
            shape_check, val_bytes = sidecar_checks.check_sidecar_shape(dataset_dir, val_tokens)
            checks.append(shape_check)
            if val_bytes is not None:
                source = ((list(map(Path, corpus)), False) if corpus else
                          sidecar_checks.corpus_from_manifest(dataset_dir))
                options = {} if sidecar_docs is None else {"sample_docs": sidecar_docs}
                checks.append(sidecar_checks.check_sidecar_documents(
                    val_tokens, val_bytes, processor, is_caseops_tokenizer(processor), bos_id, source, seed=seed,
                    **options))
        expected_tokens, expected_docs, source = expected_val_counts(dataset_dir, tokenizer_sha256)
        checks.append(check_val_counts(val_tokens, bos_id, expected_tokens, expected_docs, source))
        if -1 not in counts["train"]:
            log(f"verify: looking up val documents in {sum(counts['train']):,} train tokens")
            options = {key: value for key, value in (("min_tokens", min_doc_tokens),
                                                     ("full_scan_tokens", full_scan_tokens),
                                                     ("sample_tokens", sample_tokens)) if value is not None}
            checks.append(disjoint_checks.check_disjoint(val_tokens, list_shards(dataset_dir, "train"),
                                                         counts["train"], bos_id, seed=seed, **options))
    checks.append(check_val_isolation())

    # eval time is predicted for the split a submission is scored on (see eval_budget's docstring)
    num_val_tokens = max(int(val_tokens.size) if val_tokens is not None else 0, OFFICIAL_SP1024_VAL_TOKENS)
    if artifact is not None:
        artifact_checks, header = check_artifact(artifact, tokenizer_sha256, processor.get_piece_size())
        checks.extend(artifact_checks)
        if header is not None:
            model = model_config_from_dict(header["model_config"])
            checks.append(eval_budget.check_eval_budget(f"artifact {Path(artifact).name}", model, num_val_tokens,
                                                        eval_seq_len, eval_stride))
    if runs:
        if val_bytes is not None:
            tokens_per_byte = (val_tokens.size - 1) / max(int(val_bytes[1:].sum(dtype=np.int64)), 1)
        else:
            tokens_per_byte = (tokenizer_checks.tokens_per_byte(val_tokens, tables)
                               if val_tokens is not None else None)
        run_results, records = check_runs(list(runs), list(baseline_bpb or []), tokens_per_byte)
        checks.extend(run_results)
        # one prediction per distinct (model, window, stride) among the runs
        groups: dict[str, list] = {}
        for record in records:
            config = record.config
            key = json.dumps([config.get("model", {}), config.get("eval_seq_len", eval_seq_len),
                              config.get("eval_stride", eval_stride)], sort_keys=True)
            groups.setdefault(key, []).append(record)
        for members in groups.values():
            config = members[0].config
            checks.append(eval_budget.check_eval_budget(
                f"run{'s' if len(members) > 1 else ''} {', '.join(record.name for record in members)}",
                model_config_from_dict(config.get("model", {})), num_val_tokens,
                int(config.get("eval_seq_len", eval_seq_len)), int(config.get("eval_stride", eval_stride))))
    return checks

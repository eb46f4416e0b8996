"""`pgolf verify` end to end: a clean built dataset passes; each deliberately broken input fails precisely.

Everything is generated here: synthetic documents (with accents, CJK and emoji so the tokenizer needs
byte fallback), a small SentencePiece model with the official settings, shards via `build_dataset`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from pgolf.cli import main
from pgolf.data.build import build_dataset
from pgolf.data.shards import list_shards, read_shard, write_shard
from pgolf.data.synthetic import synthetic_documents, write_txt
from pgolf.data.tokenizer import load_sentencepiece, train_sentencepiece
from pgolf.metric import SPACE_MARK, ByteTables, byte_tables_from_sentencepiece
from pgolf.verify import run_verify
from pgolf.verify.split_checks import check_val_counts
from pgolf.verify.tokenizer_checks import (check_byte_fallback, check_documents, check_piece_bytes,
                                           check_space_piece)

VAL_DOCS = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A built dataset: 40 val docs, the rest in several small train shards (documents straddle them)."""
    root = tmp_path_factory.mktemp("verify")
    documents = synthetic_documents(160, seed=3, rare_probability=0.4)
    text = write_txt(root / "corpus.txt", documents)
    model = train_sentencepiece(documents, root / "tok" / "tiny.model", vocab_size=320)
    result = build_dataset([text], root / "clean", tokenizer=model, val_docs=VAL_DOCS, tokens_per_shard=4000,
                           log=lambda line: None, progress=False)
    return result.out_dir


@pytest.fixture
def copy_of(dataset, tmp_path):
    """A private copy of the dataset to break."""
    target = tmp_path / "broken"
    shutil.copytree(dataset, target)
    return target


def _by_name(checks):
    return {check.name: check for check in checks}


def _val_tokens(data_dir):
    return np.concatenate([np.asarray(read_shard(path)) for path in list_shards(data_dir, "val")])


def _processor(data_dir):
    return load_sentencepiece(data_dir / "tiny.model")


def test_clean_dataset_passes_every_check(dataset):
    checks = run_verify(dataset)
    failed = [f"{check.name}: {check.evidence}" for check in checks if not check.passed]
    assert failed == []
    names = {check.name for check in checks}
    assert {"tokenizer.lut_vs_decoded", "tokenizer.byte_fallback", "tokenizer.space_piece", "split.val_counts",
            "split.train_val_disjoint", "split.shards", "tokenizer.round_trip"} <= names
    assert len(list_shards(dataset, "train")) >= 3  # the disjointness scan crosses shard boundaries


def test_leading_space_counted_twice_is_caught(dataset):
    processor = _processor(dataset)
    tables = byte_tables_from_sentencepiece(processor)
    # the classic bug: "▁the" counted as 4 bytes of base plus the leading space again
    doubled = dataclasses.replace(tables, base_bytes=(tables.base_bytes + tables.has_leading_space).astype(np.int16))
    tokens = _val_tokens(dataset)
    byte_check, _ = check_documents(tokens, processor, doubled, processor.bos_id())
    assert not byte_check.passed
    # every token whose piece starts with "▁" gets exactly one byte too many
    spaced = {i for i in range(processor.get_piece_size()) if processor.id_to_piece(i).startswith(SPACE_MARK)}
    excess = sum(1 for token in tokens.tolist() if token in spaced)
    assert excess > 0
    assert f"({excess:+,}," in byte_check.evidence
    piece_check = check_piece_bytes(processor, doubled)
    assert not piece_check.passed
    the_id = next(i for i in sorted(spaced) if len(processor.id_to_piece(i)) >= 2)
    piece = processor.id_to_piece(the_id)
    true_length = len(piece[1:].encode("utf-8"))
    expected = (f"piece {the_id} {piece!r}: LUT counts {true_length + 1} bytes after a boundary and "
                f"{true_length + 2} after a normal token; decoding gives {true_length} and {true_length + 1}")
    assert expected in piece_check.details


def test_byte_fallback_counted_as_three_bytes_is_caught(dataset):
    processor = _processor(dataset)
    tables = byte_tables_from_sentencepiece(processor)
    byte_ids = np.array([i for i in range(processor.get_piece_size()) if processor.is_byte(i)])
    assert byte_ids.size == 256
    base = tables.base_bytes.copy()
    base[byte_ids] = 3  # len("\ufffd".encode()): what one byte decodes to on its own
    doctored = dataclasses.replace(tables, base_bytes=base)
    check = check_byte_fallback(processor, doctored)
    assert not check.passed
    assert check.evidence.startswith(f"256 of 256 byte-fallback pieces not counted as 1 byte (e.g. piece "
                                     f"{byte_ids[0]} '<0x00>' counted 3)")
    tokens = _val_tokens(dataset)
    byte_tokens = int(np.isin(tokens, byte_ids).sum())
    assert byte_tokens > 0  # the synthetic text has CJK and emoji outside the small vocabulary
    byte_check, _ = check_documents(tokens, processor, doctored, processor.bos_id())
    assert not byte_check.passed and f"({2 * byte_tokens:+,}," in byte_check.evidence
    assert check_byte_fallback(processor, tables).passed


class _WithoutSpacePiece:
    """The tokenizer as seen by a vocabulary that lacks a standalone "▁" piece."""

    def __init__(self, processor):
        self._processor = processor

    def piece_to_id(self, piece):
        return self._processor.unk_id() if piece == SPACE_MARK else self._processor.piece_to_id(piece)

    def __getattr__(self, name):
        return getattr(self._processor, name)


def test_missing_or_miscounted_space_piece_is_caught(dataset):
    processor = _processor(dataset)
    tables = byte_tables_from_sentencepiece(processor)
    assert check_space_piece(processor, tables).passed
    missing = check_space_piece(_WithoutSpacePiece(processor), tables)
    assert not missing.passed and missing.evidence.startswith("no standalone '▁' piece")
    space_id = processor.piece_to_id(SPACE_MARK)
    base = tables.base_bytes.copy()
    base[space_id] = 3  # "▁" measured as its own UTF-8 (U+2581) instead of a space
    wrong = check_space_piece(processor, dataclasses.replace(tables, base_bytes=base))
    assert not wrong.passed
    assert f"'▁' is piece {space_id} but the LUT counts it as 4 bytes" in wrong.evidence


def test_val_shard_missing_its_last_1000_tokens(copy_of):
    total = _val_tokens(copy_of).size
    val_path = list_shards(copy_of, "val")[-1]
    tokens = np.asarray(read_shard(val_path)).copy()
    assert tokens.size > 1000
    write_shard(val_path, tokens[:-1000])  # a consistent header: only the manifest reveals the cut
    checks = _by_name(run_verify(copy_of))
    counts = checks["split.val_counts"]
    assert not counts.passed
    assert (f"val has {total - 1000:,} tokens but {copy_of / 'manifest.json'} says {total:,} "
            f"(1,000 missing)") in counts.evidence
    assert checks["split.shards"].passed


def test_val_shard_cut_without_fixing_its_header(copy_of):
    val_path = list_shards(copy_of, "val")[-1]
    data = val_path.read_bytes()
    val_path.write_bytes(data[:-2000])
    check = _by_name(run_verify(copy_of))["split.shards"]
    assert not check.passed
    assert str(val_path) in check.evidence and "truncated" in check.evidence


def test_val_counts_without_any_reference_fail():
    tokens = np.array([1, 5, 6, 1, 7], dtype=np.uint16)
    assert not check_val_counts(tokens, 1, None, None, "no manifest").passed
    assert check_val_counts(tokens, 1, 5, 2, "m").passed
    opens_wrong = check_val_counts(tokens[1:], 1, 4, 2, "m")
    assert not opens_wrong.passed and "opens with token 5, not bos 1" in opens_wrong.evidence


def _doc_bounds(tokens, bos_id, index):
    starts = np.flatnonzero(tokens == bos_id)
    end = starts[index + 1] if index + 1 < starts.size else tokens.size
    return int(starts[index]), int(end)


@pytest.mark.parametrize("where", ["inside", "straddling"])
def test_train_shard_containing_a_val_document(copy_of, where):
    val = _val_tokens(copy_of)
    start, end = _doc_bounds(val, 1, 7)
    document = val[start:end]
    assert document.size >= 32
    train_paths = list_shards(copy_of, "train")
    first = np.asarray(read_shard(train_paths[0])).copy()
    second = np.asarray(read_shard(train_paths[1])).copy()
    # documents straddle shards: shard 1 opens with the end of shard 0's last document
    end_of_last = int(np.flatnonzero(second == 1)[0])
    if where == "inside":  # a whole copy right before the first bos of shard 1
        write_shard(train_paths[1], np.concatenate((second[:end_of_last], document, second[end_of_last:])))
        expected_shard, expected_offset = train_paths[1].name, end_of_last
    else:  # the copy starts at the end of shard 0 and finishes in shard 1
        write_shard(train_paths[0], np.concatenate((first, second[:end_of_last], document[:10])))
        write_shard(train_paths[1], np.concatenate((document[10:], second[end_of_last:])))
        expected_shard, expected_offset = train_paths[0].name, first.size + end_of_last
    check = _by_name(run_verify(copy_of))["split.train_val_disjoint"]
    assert not check.passed
    assert check.details[0] == (f"val doc 7 ({document.size - 1} tokens) occurs in {expected_shard} at token "
                                f"{expected_offset}")
    if where == "inside":  # a sample covering every window finds it too (windows never join shards)
        sampled = _by_name(run_verify(copy_of, full_scan_tokens=0, sample_tokens=10**6))["split.train_val_disjoint"]
        assert not sampled.passed and "sampled" in sampled.evidence


def test_sampled_scan_reports_its_bound(dataset):
    check = _by_name(run_verify(dataset, full_scan_tokens=0, sample_tokens=4000))["split.train_val_disjoint"]
    assert check.passed
    assert "sampled" in check.evidence and "at 95% confidence fewer than" in check.evidence


def test_cli_exit_status_and_report(dataset, copy_of, capsys):
    assert main(["verify", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().endswith("all checks passed")
    val_path = list_shards(copy_of, "val")[-1]
    write_shard(val_path, np.asarray(read_shard(val_path))[:-1000].copy())
    assert main(["verify", str(copy_of), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    failed = [check["name"] for check in report["checks"] if check["status"] == "FAIL"]
    assert failed == ["split.val_counts"]

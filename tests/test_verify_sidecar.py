"""`pgolf verify` on a CaseOps dataset: a clean build passes; a sidecar count off by one, a val document copied
into train, and shards that are not the corpus's are each named."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pgolf.cli import main
from pgolf.data.build import build_dataset
from pgolf.data.shards import list_shards, read_shard, write_shard
from pgolf.data.synthetic import synthetic_documents, write_jsonl
from pgolf.verify import run_verify

VAL_DOCS = 25


def _by_name(checks):
    return {check.name: check for check in checks}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A CaseOps dataset whose val split has whitespace runs and edges SentencePiece normalises away."""
    root = tmp_path_factory.mktemp("verify_caseops")
    documents = synthetic_documents(200, seed=8, rare_probability=0.3)
    documents[2] = "  Two  spaces,\n\na Blank LINE and an iPhone \ue002 marker.  "
    corpus = write_jsonl(root / "corpus.jsonl", documents)
    result = build_dataset([corpus], root / "dataset", vocab_size=420, val_docs=VAL_DOCS, tokens_per_shard=3000,
                           is_caseops=True, progress=False, log=lambda line: None)
    return result.out_dir, corpus, documents


@pytest.fixture
def copy_of(built, tmp_path):
    target = tmp_path / "dataset"
    shutil.copytree(built[0], target)
    return target


def _edit_sidecar(dataset, position: int, delta: int, fix_manifest: bool = True) -> None:
    path = dataset / "fineweb_val_bytes_000000.bin"
    values = np.asarray(read_shard(path)).astype(np.int64)
    values[position] += delta
    write_shard(path, values)
    if fix_manifest:  # a consistent forgery: only the original text reveals it
        manifest = json.loads((dataset / "manifest.json").read_text())
        manifest["datasets"][0]["stats"]["bytes_val"] += delta
        (dataset / "manifest.json").write_text(json.dumps(manifest))


def _val(dataset):
    return np.concatenate([np.asarray(read_shard(path)) for path in list_shards(dataset, "val")])


def test_clean_caseops_dataset_passes(built):
    checks = run_verify(built[0])
    assert [f"{c.name}: {c.evidence}" for c in checks if not c.passed] == []
    names = {check.name for check in checks}
    assert {"sidecar.shape", "sidecar.document_bytes", "tokenizer.round_trip", "split.train_val_disjoint"} <= names
    assert "tokenizer.lut_vs_decoded" not in names  # bytes never come from the look-up tables here
    evidence = _by_name(checks)["sidecar.document_bytes"].evidence
    assert evidence.startswith(f"{VAL_DOCS} of {VAL_DOCS} sampled val docs") and "original corpus text" in evidence


def test_a_count_off_by_one_is_named(copy_of):
    val = _val(copy_of)
    starts = np.flatnonzero(val == 1)
    position = int(starts[4]) + 3  # the third token of val doc 4
    _edit_sidecar(copy_of, position, +1)
    check = _by_name(run_verify(copy_of))["sidecar.document_bytes"]
    assert not check.passed
    assert check.details == (check.details[0],)
    assert check.details[0].startswith(f"val doc 4 (tokens {starts[4]:,}..{starts[5] - 1:,}): sidecar sums to ")
    assert "(+1); first at token 3 (" in check.details[0]


def test_a_count_changed_without_the_manifest_fails_on_opening(copy_of):
    _edit_sidecar(copy_of, 10, -1, fix_manifest=False)
    check = _by_name(run_verify(copy_of))["sidecar.shape"]
    assert not check.passed and "the manifest says bytes_val" in check.evidence


def test_a_val_document_in_train_is_named(copy_of):
    val = _val(copy_of)
    starts = np.flatnonzero(val == 1)
    document = val[starts[6]:starts[7]]
    assert document.size > 32
    train_path = list_shards(copy_of, "train")[1]
    train = np.asarray(read_shard(train_path))
    first_bos = int(np.flatnonzero(train == 1)[0])
    write_shard(train_path, np.concatenate((train[:first_bos], document, train[first_bos:])))
    check = _by_name(run_verify(copy_of))["split.train_val_disjoint"]
    assert not check.passed
    assert check.details[0] == (f"val doc 6 ({document.size - 1} tokens) occurs in {train_path.name} at token "
                                f"{first_bos}")


def test_without_the_corpus_the_decoded_text_is_the_reference(built, copy_of, tmp_path):
    _, corpus, documents = built
    manifest = json.loads((copy_of / "manifest.json").read_text())
    manifest["sources"] = [str(tmp_path / "gone.jsonl")]
    (copy_of / "manifest.json").write_text(json.dumps(manifest))
    check = _by_name(run_verify(copy_of))["sidecar.document_bytes"]
    # doc 2's double space and blank line decode as single spaces: 2 bytes the decoded text cannot show
    # (the whitespace at its ends is in neither)
    assert check.passed and "decoded text" in check.evidence
    assert check.evidence.startswith(f"{VAL_DOCS - 1} of {VAL_DOCS} sampled val docs")
    assert "1 docs count 2 bytes more than their decoded text" in check.evidence
    # a sidecar below the decoded text is wrong whatever the normaliser did
    val = _val(copy_of)
    position = int(np.flatnonzero(val == 1)[9]) + 2
    _edit_sidecar(copy_of, position, -1)
    check = _by_name(run_verify(copy_of))["sidecar.document_bytes"]
    assert not check.passed and check.details[0].startswith("val doc 9 ")
    # the corpus given on the command line makes the check exact again
    assert main(["verify", str(copy_of), "--corpus", str(corpus), "--json"]) == 1


def test_shards_that_are_not_the_corpus_are_named(built, tmp_path, capsys):
    dataset, _, documents = built
    shuffled = write_jsonl(tmp_path / "other.jsonl", documents[1:] + documents[:1])
    assert main(["verify", str(dataset), "--corpus", str(shuffled), "--sidecar-docs", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL sidecar.document_bytes" in out and "its tokens are not the encoding of corpus document" in out
    assert "5 of 5 sampled val docs (of 25, seed 0)" in out

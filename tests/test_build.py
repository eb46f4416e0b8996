"""`pgolf data build`: document reading, shards equal [bos] + encode(text), manifest, user errors."""

import json

import numpy as np
import pytest

from pgolf.cli import main
from pgolf.data.build import build_dataset, iter_documents
from pgolf.data.shards import list_shards, read_shard
from pgolf.data.synthetic import synthetic_documents, write_jsonl, write_txt
from pgolf.data.tokenizer import load_sentencepiece, sha256_file


def _split_documents(tokens):
    starts = np.flatnonzero(tokens == 1).tolist() + [len(tokens)]
    return [tokens[a:b].tolist() for a, b in zip(starts, starts[1:])]


def test_jsonl_build_matches_encoding(tmp_path, tiny_tokenizer_path, capsys):
    documents = synthetic_documents(120, seed=5)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", documents)
    out = tmp_path / "built"
    code = main(["data", "build", "--input", str(corpus), "--out", str(out), "--tokenizer", str(tiny_tokenizer_path),
                 "--val-docs", "15", "--tokens-per-shard", "1500"])
    assert code == 0
    processor = load_sentencepiece(tiny_tokenizer_path)
    expected = [[1] + processor.encode(text) for text in documents]
    val = np.concatenate([read_shard(p) for p in list_shards(out, "val")])
    train_files = list_shards(out, "train")
    assert len(train_files) > 1 and all(len(read_shard(p)) == 1500 for p in train_files[:-1])
    train = np.concatenate([read_shard(p) for p in train_files])
    assert _split_documents(val) == expected[:15]
    assert _split_documents(train) == expected[15:]

    manifest = json.loads((out / "manifest.json").read_text())
    stats = manifest["datasets"][0]["stats"]
    assert stats["docs_val"] == 15 and stats["docs_train"] == 105
    assert stats["tokens_val"] == len(val) and stats["tokens_train"] == len(train)
    assert stats["files_train"] == len(train_files)
    tokenizer = manifest["tokenizers"][0]
    assert (out / tokenizer["model_path"]).is_file()
    assert tokenizer["sha256"] == sha256_file(tiny_tokenizer_path)
    assert manifest["datasets"][0]["vocab_size"] == processor.get_piece_size()


def test_txt_documents_and_workers(tmp_path, tiny_tokenizer_path):
    documents = synthetic_documents(30, seed=2)
    corpus = write_txt(tmp_path / "corpus.txt", documents)
    assert list(iter_documents([corpus])) == documents
    single = build_dataset([corpus], tmp_path / "one", tokenizer=tiny_tokenizer_path, val_docs=3,
                           progress=False, log=lambda line: None)
    pooled = build_dataset([corpus], tmp_path / "two", tokenizer=tiny_tokenizer_path, val_docs=3, workers=2,
                           progress=False, log=lambda line: None)
    for split in ("val", "train"):
        a = [read_shard(p).tolist() for p in list_shards(single.out_dir, split)]
        b = [read_shard(p).tolist() for p in list_shards(pooled.out_dir, split)]
        assert a == b and a


def test_one_doc_per_file(tmp_path, tiny_tokenizer_path):
    files = []
    for index, text in enumerate(["first doc\n\nstill first", "second doc", "third doc"]):
        files.append(tmp_path / f"d{index}.txt")
        files[-1].write_text(text)
    assert list(iter_documents(files, one_doc_per_file=True)) == ["first doc\n\nstill first", "second doc", "third doc"]
    assert len(list(iter_documents(files))) == 4


def test_trains_tokenizer_with_official_settings(tmp_path, tiny_documents):
    corpus = write_jsonl(tmp_path / "c.jsonl", tiny_documents[:200])
    result = build_dataset([corpus], tmp_path / "out", vocab_size=400, val_docs=10, progress=False,
                           log=lambda line: None)
    processor = load_sentencepiece(result.tokenizer_path)
    assert processor.get_piece_size() == 400
    assert (processor.pad_id(), processor.bos_id(), processor.eos_id(), processor.unk_id()) == (0, 1, 2, 3)
    assert sum(processor.is_byte(i) for i in range(400)) == 256
    assert processor.encode("2024") == [processor.piece_to_id(c) for c in "2024"]  # split_digits
    assert result.tokenizer_path.with_suffix(".vocab").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--val-docs", "500"], "lower --val-docs"),
    (["--vocab-size", "100"], "--vocab-size 100"),
])
def test_user_errors_are_one_line(tmp_path, tiny_documents, capsys, extra, message):
    corpus = write_jsonl(tmp_path / "c.jsonl", tiny_documents[:20])
    arguments = ["data", "build", "--input", str(corpus), "--out", str(tmp_path / "o")]
    if "--vocab-size" not in extra:
        arguments += ["--vocab-size", "400"]
    code = main(arguments + extra)
    error = capsys.readouterr().err
    assert code == 1 and message in error and error.count("\n") == 1 and "Traceback" not in error


def test_bad_inputs(tmp_path, tiny_tokenizer_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": 1}\n')
    code = main(["data", "build", "--input", str(bad), "--out", str(tmp_path / "o"), "--tokenizer",
                 str(tiny_tokenizer_path), "--val-docs", "1"])
    assert code == 1 and f"{bad}:2" in capsys.readouterr().err
    code = main(["data", "build", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o"),
                 "--tokenizer", str(tiny_tokenizer_path)])
    assert code == 1 and "missing.txt not found" in capsys.readouterr().err


def test_refuses_to_overwrite(tmp_path, tiny_tokenizer_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", synthetic_documents(10, seed=1))
    arguments = ["data", "build", "--input", str(corpus), "--out", str(tmp_path / "o"), "--tokenizer",
                 str(tiny_tokenizer_path), "--val-docs", "2"]
    assert main(arguments) == 0
    capsys.readouterr()
    assert main(arguments) == 1 and "--overwrite" in capsys.readouterr().err
    assert main(arguments + ["--overwrite"]) == 0

"""CaseOps datasets and byte sidecars: what `data build --caseops/--sidecar` writes, how a dataset's sidecar is
opened, and that the LUT and sidecar methods count the same bytes where both are honest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from pgolf.cli import main
from pgolf.data import caseops
from pgolf.data.build import build_dataset
from pgolf.data.shards import (ShardError, list_shards, list_sidecar_shards, load_val_bytes, read_shard,
                               write_shard)
from pgolf.data.sidecar import encode_with_bytes
from pgolf.data.synthetic import synthetic_documents, write_jsonl
from pgolf.data.tokenizer import load_sentencepiece
from pgolf.distributed import DistInfo
from pgolf.evaluate import evaluate
from pgolf.metric import SPACE_MARK, byte_tables_from_sentencepiece, count_bytes
from pgolf.verify.tokenizer_checks import check_space_piece

VAL_DOCS = 30

# Documents that exercise every rule: case patterns, literal markers, whitespace runs and document-edge
# whitespace (dropped by SentencePiece), tabs and newlines, characters the small vocabulary lacks.
TRICKY = [
    "  The NASA Launch  \n\n iPhone OpenAI \ue001 lit \ue004\ue004 x  ",
    "ALL CAPS AND Mixed CaSe text\twith\ttabs and  double  spaces",
    "\n\nI saw A cat. ABc aBC McDonald x2Y_Z\n",
    "Zürich 東京 😀 façade ꙮ naïve Ω",
]


def _documents() -> list[str]:
    documents = synthetic_documents(240, seed=4, rare_probability=0.4)
    documents[3:3] = TRICKY  # inside the val split
    return documents


def _split_documents(tokens: np.ndarray) -> list[np.ndarray]:
    starts = np.flatnonzero(tokens == 1).tolist() + [tokens.size]
    return [tokens[a:b] for a, b in zip(starts, starts[1:])]


def _quiet(_line: str) -> None:
    return None


@pytest.fixture(scope="module")
def caseops_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("caseops")
    documents = _documents()
    corpus = write_jsonl(root / "corpus.jsonl", documents)
    out = root / "built"
    assert main(["data", "build", "--input", str(corpus), "--out", str(out), "--vocab-size", "400", "--caseops",
                 "--val-docs", str(VAL_DOCS), "--tokens-per-shard", "1500"]) == 0
    return out, documents


def test_caseops_build_shards_and_sidecar(caseops_dataset):
    out, documents = caseops_dataset
    manifest = json.loads((out / "manifest.json").read_text())
    processor = load_sentencepiece(out / manifest["tokenizers"][0]["model_path"])
    assert [processor.id_to_piece(i) for i in range(4, 8)] == list(caseops.MARKERS)
    assert [processor.is_byte(i) for i in (7, 8, 263, 264)] == [False, True, True, False]
    assert manifest["tokenizers"][0]["text_transform"] == caseops.NAME

    # shards: [bos] + ids of the CaseOps form, val first, train from the first document after the val split
    val_files, sidecars = list_shards(out, "val"), list_sidecar_shards(out)
    assert len(val_files) > 1 and [p.name.replace("_bytes", "") for p in sidecars] == [p.name for p in val_files]
    val = np.concatenate([read_shard(path) for path in val_files])
    train = np.concatenate([read_shard(path) for path in list_shards(out, "train")])
    expected = [[1] + processor.encode(caseops.encode(text)) for text in documents]
    assert [doc.tolist() for doc in _split_documents(val)] == expected[:VAL_DOCS]
    assert [doc.tolist() for doc in _split_documents(train)] == expected[VAL_DOCS:]

    # sidecar: one value per val token, 0 at every bos, each document summing to its original UTF-8 bytes
    # without the whitespace at its ends (the test documents have only ASCII whitespace there)
    values = load_val_bytes(out, val)
    assert values.size == val.size and (values[val == 1] == 0).all()
    starts = np.flatnonzero(val == 1).tolist() + [val.size]
    sums = [int(values[a:b].sum()) for a, b in zip(starts, starts[1:])]
    assert sums == [len(text.strip().encode("utf-8")) for text in documents[:VAL_DOCS]]
    assert manifest["datasets"][0]["stats"]["bytes_val"] == sum(sums)
    # operators count 0 wherever they stand; the escaped marker of TRICKY[0] keeps its 3 bytes
    marker_tokens = np.isin(val, [4, 5, 6, 7])
    assert marker_tokens.any() and int(values[marker_tokens].sum()) == 3 * 3  # literal U+E001, U+E004, U+E004


def test_sidecar_is_the_same_for_any_worker_count(caseops_dataset, tmp_path):
    out, documents = caseops_dataset
    model = next(out.glob("*.model"))
    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    pooled = build_dataset([corpus], tmp_path / "pooled", tokenizer=model, val_docs=VAL_DOCS, tokens_per_shard=1500,
                           workers=2, is_caseops=True, progress=False, log=_quiet)
    for name in [p.name for p in list_sidecar_shards(out)] + [p.name for p in list_shards(out, "val")]:
        assert (pooled.out_dir / name).read_bytes() == (out / name).read_bytes()


def test_existing_tokenizers_are_checked(caseops_dataset, tiny_tokenizer_path, tmp_path, capsys):
    out, documents = caseops_dataset
    corpus = write_jsonl(tmp_path / "c.jsonl", documents[:40])
    arguments = ["data", "build", "--input", str(corpus), "--val-docs", "5"]
    assert main(arguments + ["--out", str(tmp_path / "a"), "--tokenizer", str(tiny_tokenizer_path), "--caseops"]) == 1
    error = capsys.readouterr().err
    assert "not a CaseOps tokenizer: id 4 must be the user-defined symbol U+E001" in error and error.count("\n") == 1
    caseops_model = str(next(out.glob("*.model")))
    assert main(arguments + ["--out", str(tmp_path / "b"), "--tokenizer", caseops_model]) == 1
    assert "pass --caseops" in capsys.readouterr().err


def test_a_build_never_mixes_with_another(caseops_dataset, tmp_path, capsys):
    out, documents = caseops_dataset
    corpus = write_jsonl(tmp_path / "c.jsonl", documents[:40])
    target = tmp_path / "o"
    target.mkdir()
    stale = target / "fineweb_train_000099.bin"  # e.g. left by a build with another --val-docs or shard size
    write_shard(stale, np.array([1, 5, 6], dtype=np.uint16))
    arguments = ["data", "build", "--input", str(corpus), "--out", str(target), "--val-docs", "5",
                 "--tokenizer", str(next(out.glob("*.model"))), "--caseops"]
    assert main(arguments) == 1
    error = capsys.readouterr().err
    assert "fineweb_train_000099.bin" in error and "never mix" in error and error.count("\n") == 1
    assert main(arguments + ["--overwrite"]) == 0
    assert not stale.exists() and list_sidecar_shards(target)


def test_opening_a_broken_sidecar_names_the_problem(caseops_dataset, tmp_path):
    out, _ = caseops_dataset
    val = np.concatenate([read_shard(path) for path in list_shards(out, "val")])

    def broken(edit):
        copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, copy)
        edit(copy)
        return copy

    short = broken(lambda d: write_shard(d / "fineweb_val_bytes_000000.bin",
                                         np.asarray(read_shard(d / "fineweb_val_bytes_000000.bin"))[:-1]))
    with pytest.raises(ShardError, match="byte counts but fineweb_val_000000.bin has"):
        load_val_bytes(short)

    def bump(directory, position):
        path = directory / "fineweb_val_bytes_000000.bin"
        values = np.asarray(read_shard(path)).copy()
        values[position] += 1
        write_shard(path, values)

    with pytest.raises(ShardError, match="bos token"):
        load_val_bytes(broken(lambda d: bump(d, 0)), val)
    with pytest.raises(ShardError, match="the manifest says bytes_val"):
        load_val_bytes(broken(lambda d: bump(d, 5)), val)
    missing = broken(lambda d: (d / "fineweb_val_bytes_000001.bin").unlink())
    with pytest.raises(ShardError, match="do not pair one to one"):
        load_val_bytes(missing)


class _Bigram(torch.nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, ids):
        return self.table(ids)


def test_lut_and_sidecar_give_the_same_bpb(tiny_tokenizer_path, tmp_path):
    """A plain dataset with a sidecar: the synthetic text survives SentencePiece's normaliser unchanged, so the
    LUT (pr198 §2) and the sidecar count the same bytes per document, and evaluation gives the same bpb."""
    documents = synthetic_documents(80, seed=6, rare_probability=0.5)  # byte fallback for CJK and emoji
    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    out = tmp_path / "plain"
    assert main(["data", "build", "--input", str(corpus), "--out", str(out), "--tokenizer", str(tiny_tokenizer_path),
                 "--val-docs", "40", "--sidecar"]) == 0
    processor = load_sentencepiece(tiny_tokenizer_path)
    val = np.asarray(read_shard(out / "fineweb_val_000000.bin"))
    values = load_val_bytes(out, val)
    assert any(processor.is_byte(int(token)) for token in val)
    tables = byte_tables_from_sentencepiece(processor)
    lut = np.concatenate(([0], count_bytes(val[:-1], val[1:], tables)))
    starts = np.flatnonzero(val == 1)
    assert np.array_equal(np.add.reduceat(lut, starts), np.add.reduceat(values, starts))  # document by document
    # token by token too, except inside a character split into byte pieces (the LUT gives each piece 1 byte,
    # the sidecar the whole character to the last one)
    is_byte = np.array([processor.is_byte(int(token)) for token in val])
    assert np.array_equal(lut[~is_byte], values[~is_byte]) and not np.array_equal(lut, values)
    assert int(values.sum()) == sum(len(text.encode("utf-8")) for text in documents[:40])

    model = _Bigram(processor.get_piece_size())
    tokens = torch.from_numpy(val.astype(np.int64))
    by_table = evaluate(model, tokens, tables, seq_len=64, stride=16, batch_seqs=4, dist=DistInfo())
    by_sidecar = evaluate(model, tokens, None, seq_len=64, stride=16, batch_seqs=4, dist=DistInfo(),
                          val_bytes=torch.from_numpy(values))
    assert by_table.bytes == by_sidecar.bytes and by_table.bpb == by_sidecar.bpb


# ---------------------------------------------------------------- planted tokenizers


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, position


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _mark_piece_unused(model: bytes, piece: str) -> bytes:
    """The SentencePiece model with `piece` typed UNUSED (ModelProto field 1 = pieces; in each, field 1 = the
    piece string, field 3 = its type, 5 = UNUSED). Every top-level field of ModelProto is length-delimited."""
    out, position = bytearray(), 0
    while position < len(model):
        tag, after_tag = _varint(model, position)
        length, start = _varint(model, after_tag)
        payload, position = model[start:start + length], start + length
        if tag == (1 << 3 | 2):
            inner_tag, after_inner = _varint(payload, 0)
            inner_length, text_start = _varint(payload, after_inner)
            if inner_tag == (1 << 3 | 2) and payload[text_start:text_start + inner_length] == piece.encode():
                payload += bytes([3 << 3 | 0, 5])  # a later value of a field wins
        out += _varint_bytes(tag) + _varint_bytes(len(payload)) + payload
    return bytes(out)


def test_tokenizer_without_a_space_piece(tiny_tokenizer_path, tmp_path):
    """Without a standalone "▁" a lone space (before a character that falls back to bytes) becomes the 3 byte
    pieces of U+2581. The sidecar still counts the 1 original byte; the LUT counts 3 (and decoding gives "▁"),
    which `tokenizer.space_piece` reports. With the sidecar present, evaluation counts the sidecar."""
    model = tmp_path / "no_space.model"
    model.write_bytes(_mark_piece_unused(tiny_tokenizer_path.read_bytes(), SPACE_MARK))
    processor = load_sentencepiece(model)
    space_id = processor.piece_to_id(SPACE_MARK)
    assert processor.is_unused(space_id)
    documents = ["the cat 😀 and 東京 x", "a dog sees 😀 the bird", "plain words only"]
    (ids, values), = encode_with_bytes(processor, [documents[0]], False)
    space_bytes = [processor.piece_to_id(f"<0x{byte:02X}>") for byte in SPACE_MARK.encode("utf-8")]
    lone_spaces = sum(ids[i:i + 3] == space_bytes for i in range(len(ids)))
    assert lone_spaces >= 2 and space_id not in ids
    assert int(values.sum()) == len(documents[0].encode("utf-8"))
    tables = byte_tables_from_sentencepiece(processor)
    ids = np.asarray([1, *ids])
    assert int(count_bytes(ids[:-1], ids[1:], tables).sum()) == len(documents[0].encode("utf-8")) + 2 * lone_spaces
    assert not check_space_piece(processor, tables).passed

    corpus = write_jsonl(tmp_path / "c.jsonl", documents)
    built = build_dataset([corpus], tmp_path / "d", tokenizer=model, val_docs=2, sidecar=True, progress=False,
                          log=_quiet)
    val = np.asarray(read_shard(built.out_dir / "fineweb_val_000000.bin"))
    values = load_val_bytes(built.out_dir, val)
    result = evaluate(_Bigram(processor.get_piece_size()), torch.from_numpy(val.astype(np.int64)), None, seq_len=8,
                      stride=8, batch_seqs=2, dist=DistInfo(), val_bytes=torch.from_numpy(values))
    assert result.bytes == int(values[1:].sum()) == sum(len(text.encode("utf-8")) for text in documents[:2])


# ---------------------------------------------------------------- a run's evaluation


def test_scoring_uses_the_sidecar(tiny_documents, tiny_tokenizer_path, tmp_path):
    """`scoring.load_val_data` opens the sidecar and drops the tables; `score` divides by the sidecar: doubling
    every count halves bpb, and without a sidecar the LUT gives the same bpb (this text survives normalisation)."""
    from pgolf.build import load_run_data
    from pgolf.config import apply_overrides, tiny
    from pgolf.scoring import load_val_data, score

    corpus = write_jsonl(tmp_path / "c.jsonl", tiny_documents[:120])
    with_sidecar = build_dataset([corpus], tmp_path / "sidecar", tokenizer=tiny_tokenizer_path, val_docs=20,
                                 sidecar=True, progress=False, log=_quiet).out_dir
    plain = build_dataset([corpus], tmp_path / "plain", tokenizer=tiny_tokenizer_path, val_docs=20,
                          progress=False, log=_quiet).out_dir
    doubled = tmp_path / "doubled"
    shutil.copytree(with_sidecar, doubled)
    path = doubled / "fineweb_val_bytes_000000.bin"
    write_shard(path, 2 * np.asarray(read_shard(path)))
    manifest = json.loads((doubled / "manifest.json").read_text())
    manifest["datasets"][0]["stats"]["bytes_val"] *= 2
    (doubled / "manifest.json").write_text(json.dumps(manifest))

    model = _Bigram(load_sentencepiece(tiny_tokenizer_path).get_piece_size())
    results = {}
    for name, dataset in (("sidecar", with_sidecar), ("plain", plain), ("doubled", doubled)):
        val = load_val_data(dataset, 32)
        assert (val.tables is None) == (val.val_bytes is not None) == (name != "plain")
        if val.val_bytes is not None:
            assert val.val_bytes.shape == val.tokens.shape
        results[name] = score(model, val, 32, 8, 8, DistInfo(), None, show_progress=False)
    assert results["sidecar"]["val_loss"] == results["plain"]["val_loss"] == results["doubled"]["val_loss"]
    assert results["sidecar"]["val_bytes_scored"] == results["plain"]["val_bytes_scored"]
    assert results["sidecar"]["val_bpb"] == pytest.approx(results["plain"]["val_bpb"], rel=1e-12)
    assert results["doubled"]["val_bytes_scored"] == 2 * results["sidecar"]["val_bytes_scored"]
    assert results["doubled"]["val_bpb"] == pytest.approx(results["sidecar"]["val_bpb"] / 2, rel=1e-12)
    # a training run opens its data the same way
    config = apply_overrides(tiny(), ["vocab_size=384", f"data_dir={doubled}"])
    run = load_run_data(config)
    assert run.val.tables is None
    assert torch.equal(run.val.val_bytes, 2 * load_val_data(with_sidecar, config.eval_seq_len).val_bytes)


def test_demo_builds_a_caseops_dataset(tmp_path, monkeypatch):
    import pgolf.demo as demo
    from pgolf.verify import run_verify

    monkeypatch.setattr(demo, "iter_stdlib_documents", lambda: iter(synthetic_documents(300, seed=1)))
    dataset, info = demo.build_demo_dataset(tmp_path, quiet=True, log=_quiet, caseops=True)
    assert dataset == tmp_path / "dataset_caseops" and info["bytes_val"] > 0
    assert list_sidecar_shards(dataset) and (tmp_path / "corpus.jsonl").is_file()
    failed = [f"{check.name}: {check.evidence}" for check in run_verify(dataset) if not check.passed]
    assert failed == []

"""Shard format: round trip, memory mapping, every corruption named, dataset location helpers."""

import numpy as np
import pytest
import torch

from pgolf.data.shards import (HEADER_BYTES, SHARD_MAGIC, ShardError, find_tokenizer, list_shards, load_val_tokens,
                               read_shard, read_shard_header, resolve_dataset_dir, validate_shard, write_shard)
from pgolf.errors import PgolfError


def _write(tmp_path, tokens, name="fineweb_train_000000.bin"):
    path = tmp_path / name
    write_shard(path, np.asarray(tokens))
    return path


def test_round_trip_and_layout(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 65536, size=1000)
    path = _write(tmp_path, tokens)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [SHARD_MAGIC, 1, 1000] and not header[3:].any()
    assert len(raw) == HEADER_BYTES + 2 * 1000
    assert np.array_equal(np.frombuffer(raw[HEADER_BYTES:], dtype="<u2"), tokens)
    loaded = read_shard(path)
    assert isinstance(loaded, np.memmap)
    assert np.array_equal(loaded, tokens)
    assert validate_shard(path) == read_shard_header(path) == 1000
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_write_rejects_out_of_range(tmp_path):
    with pytest.raises(ShardError, match="0..65535"):
        _write(tmp_path, [1, 70000])
    assert not (tmp_path / "fineweb_train_000000.bin").exists()


def _corrupt(path, edit):
    data = bytearray(path.read_bytes())
    data = edit(data)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda data: data[:100], "truncated header"),
    (lambda data: np.int32(123).tobytes() + data[4:], "wrong magic 123"),
    (lambda data: data[:4] + np.int32(2).tobytes() + data[8:], "unsupported version 2"),
    (lambda data: data[:-1], "size mismatch, file truncated"),
    (lambda data: data + b"\0\0", "size mismatch, file has trailing bytes"),
    (lambda data: data[:8] + np.int32(11).tobytes() + data[12:], "header says 11 tokens"),
])
def test_each_corruption_is_named(tmp_path, edit, message):
    path = _corrupt(_write(tmp_path, np.arange(10)), edit)
    for reader in (read_shard, validate_shard):
        with pytest.raises(ShardError, match=message) as caught:
            reader(path)
        assert str(path) in str(caught.value)


def test_missing_file(tmp_path):
    with pytest.raises(ShardError, match="not found"):
        read_shard(tmp_path / "nope.bin")


def test_list_and_load_val_tokens(tmp_path):
    _write(tmp_path, [5, 6], "fineweb_val_000001.bin")
    _write(tmp_path, [1, 2, 3], "fineweb_val_000000.bin")
    _write(tmp_path, [9], "fineweb_train_000000.bin")
    assert [p.name for p in list_shards(tmp_path, "val")] == ["fineweb_val_000000.bin", "fineweb_val_000001.bin"]
    tokens = load_val_tokens(tmp_path)
    assert tokens.dtype == torch.int64 and tokens.tolist() == [1, 2, 3, 5, 6]


def test_resolve_dataset_dir_both_layouts(tmp_path, tiny_tokenizer_path):
    flat = tmp_path / "flat"
    _write(flat, [1, 2], "fineweb_val_000000.bin")
    assert resolve_dataset_dir(flat) == flat
    root = tmp_path / "fetched"
    nested = root / "datasets" / "fineweb10B_sp1024"
    _write(nested, [1, 2], "fineweb_val_000000.bin")
    assert resolve_dataset_dir(root) == nested
    with pytest.raises(PgolfError, match="pgolf data fetch"):
        find_tokenizer(nested)
    (root / "tokenizers").mkdir()
    (root / "tokenizers" / "fineweb_1024_bpe.model").write_bytes(tiny_tokenizer_path.read_bytes())
    assert find_tokenizer(nested) == root / "tokenizers" / "fineweb_1024_bpe.model"
    with pytest.raises(PgolfError, match="does not exist"):
        resolve_dataset_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PgolfError, match="pgolf data build"):
        resolve_dataset_dir(tmp_path / "empty")


def test_find_tokenizer_from_manifest(tiny_dataset_dir):
    path = find_tokenizer(tiny_dataset_dir)
    assert path.parent == tiny_dataset_dir and path.suffix == ".model"

"""TokenStream: order, wrapping, state round trip, per-rank spans."""

import json

import numpy as np
import pytest
import torch

from pgolf.data.shards import write_shard
from pgolf.data.stream import TokenStream, rank_batch
from pgolf.errors import PgolfError


@pytest.fixture
def shard_files(tmp_path):
    sizes = [7, 0, 5, 11]
    files, start = [], 0
    for index, size in enumerate(sizes):
        path = tmp_path / f"fineweb_train_{index:06d}.bin"
        write_shard(path, np.arange(start, start + size))
        files.append(path)
        start += size
    return files, start  # 23 tokens: 0..22 in order


def test_take_crosses_and_wraps(shard_files):
    files, total = shard_files
    stream = TokenStream(files)
    taken = np.concatenate([stream.take(n) for n in (3, 6, 10, 9, 1)])
    expected = np.arange(3 + 6 + 10 + 9 + 1) % total
    assert np.array_equal(taken, expected)


def test_state_round_trip_is_exact(shard_files):
    files, _ = shard_files
    stream = TokenStream(files)
    stream.take(13)
    saved = json.loads(json.dumps(stream.state()))
    ahead = stream.take(30)
    restored = TokenStream(files)
    restored.load_state(saved)
    assert np.array_equal(restored.take(30), ahead)
    with pytest.raises(PgolfError, match="does not fit"):
        restored.load_state({"shard": 9, "offset": 0})


def test_one_process_accumulating_matches_two_ranks(shard_files):
    files, _ = shard_files
    local, seq_len = 4, 2
    single = TokenStream(files)
    single_batches = [rank_batch(single, local, seq_len, 0, 1) for _ in range(2)]
    double = [TokenStream(files), TokenStream(files)]
    rank_batches = [rank_batch(double[rank], 2 * local, seq_len, rank, 2) for rank in range(2)]
    for (x1, y1), (x2, y2) in zip(single_batches, rank_batches):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x, y = rank_batches[1]
    assert x.dtype == torch.int64 and x.shape == (2, 2)
    # rank 1's span starts after rank 0's local+1 tokens; y is x shifted by one
    assert x.flatten().tolist() == [5, 6, 7, 8] and y.flatten().tolist() == [6, 7, 8, 9]
    assert double[0].state() == double[1].state()


def test_rejects_bad_split(shard_files):
    with pytest.raises(PgolfError, match="does not split"):
        rank_batch(TokenStream(shard_files[0]), 10, 3, 0, 2)
    with pytest.raises(PgolfError, match="no training shards"):
        TokenStream([])


def test_the_training_stream_refuses_validation_shards(tmp_path):
    val_shard = tmp_path / "fineweb_val_000000.bin"
    write_shard(val_shard, np.arange(100, dtype=np.uint16))
    with pytest.raises(PgolfError, match="never reads the validation split"):
        TokenStream([val_shard])

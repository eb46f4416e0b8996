"""Document-packed training rows: boundaries against a plain transcription, the shard-wise stream, rank spans."""

import numpy as np
import pytest
import torch

from pgolf.attention import document_boundaries
from pgolf.data.packing import PackedRowStream, batch_boundaries, packed_rank_batch, rank_row, row_boundaries
from pgolf.data.shards import write_shard
from pgolf.errors import PgolfError

BOS = 1


def test_boundaries_hand_worked_example():
    # starts: 0 (row start), 1 and 5 (bos); the document [1, 5) of 4 tokens is cut at 1 + 3 = 4
    inputs = np.array([5, 1, 7, 8, 9, 1, 2, 3])
    assert row_boundaries(inputs, BOS, max_length=3, multiple=4).tolist() == [0, 1, 4, 5, 8, 8, 8, 8]
    assert row_boundaries(inputs, BOS, max_length=3, multiple=4).dtype == np.int32
    # a row opening on a bos does not list 0 twice; exactly a multiple stays unpadded
    assert row_boundaries(np.array([1, 4, 4, 1]), BOS, max_length=8, multiple=3).tolist() == [0, 3, 4]


@pytest.mark.parametrize("seed", range(5))
def test_boundaries_match_a_position_by_position_transcription(seed):
    generator = np.random.default_rng(seed)
    inputs = generator.integers(2, 50, size=300)
    inputs[generator.choice(300, size=6, replace=False)] = BOS
    max_length = 16
    starts, document_start = [], 0
    for position, token in enumerate(inputs):
        if position == 0 or token == BOS:
            document_start = position
        if (position - document_start) % max_length == 0:  # a document start, or every max_length inside it
            starts.append(position)
    expected = starts + [300]
    expected += [300] * (-len(expected) % 64)
    assert row_boundaries(inputs, BOS, max_length).tolist() == expected
    assert len(expected) % 64 == 0 and np.diff(expected).max() <= max_length


def test_batch_boundaries_hand_worked_example():
    # row 0: starts 0, 2 (bos); row 1 (positions 5..9): starts 5 (row start), 8 (bos)
    inputs = torch.tensor([[4, 5, 1, 6, 7], [8, 9, 4, 1, 2]])
    boundaries = batch_boundaries(inputs, BOS, max_length=5, multiple=8)
    assert boundaries.dtype == torch.int32 and boundaries.tolist() == [0, 2, 5, 8, 10, 10, 10, 10]


@pytest.mark.parametrize("seed", range(3))
def test_batch_boundaries_are_the_models_own_boundaries_found_on_the_host(seed):
    """Without cutting (max_length = T) they are the segments the model finds from the bos positions
    on the device (`attention.document_boundaries` of the running bos count), padded."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randint(2, 50, (4, 40), generator=generator)
    inputs.view(-1)[torch.randperm(160, generator=generator)[:9]] = BOS
    found = document_boundaries((inputs == BOS).cumsum(dim=1))
    boundaries = batch_boundaries(inputs, BOS, max_length=40)
    assert boundaries[:len(found)].tolist() == found.tolist() and len(boundaries) % 64 == 0
    assert (boundaries[len(found):] == 160).all()


def test_rank_row_splits_spans_and_shifts_targets():
    chunk = np.arange(2, 2 + 3 * 9, dtype=np.uint16)  # 3 ranks x (8 + 1)
    chunk[10] = BOS
    inputs, targets, cu_seqlens = rank_row(chunk, rank=1, world_size=3, bos_id=BOS, max_length=64)
    assert inputs.tolist() == [chunk[9:17].tolist()] and targets.tolist() == [chunk[10:18].tolist()]
    assert inputs.dtype == targets.dtype == torch.int64 and cu_seqlens.dtype == torch.int32
    assert cu_seqlens[:3].tolist() == [0, 1, 8] and len(cu_seqlens) == 64


@pytest.fixture
def shards(tmp_path):
    """Shard 0: bos at 3, 12 tokens; shard 1: 5 tokens (too short once started); shard 2: bos at 0, 20 tokens."""
    contents = [
        [9, 9, 9, 1, 10, 11, 12, 1, 13, 14, 15, 16],
        [9, 1, 20, 21, 22],
        [1, 30, 31, 32, 33, 1, 34, 35, 36, 37, 38, 39, 40, 1, 41, 42, 43, 44, 45, 46],
    ]
    files = []
    for index, tokens in enumerate(contents):
        path = tmp_path / f"fineweb_train_{index:06d}.bin"
        write_shard(path, np.array(tokens))
        files.append(path)
    return files, contents


def test_stream_starts_each_shard_at_its_first_bos_and_skips_short_rests(shards):
    files, contents = shards
    stream = PackedRowStream(files, BOS)
    assert stream.take_chunk(6).tolist() == contents[0][3:9]  # from the first bos of shard 0
    assert stream.take_chunk(6).tolist() == contents[2][0:6]  # 3 left in shard 0, 4 in shard 1: both skipped
    assert stream.take_chunk(6).tolist() == contents[2][6:12]
    state = stream.state()
    following = stream.take_chunk(6).tolist()
    assert following == contents[2][12:18]
    stream.load_state(state)
    assert stream.take_chunk(6).tolist() == following
    assert stream.take_chunk(6).tolist() == contents[0][3:9]  # wraps to the first shard
    with pytest.raises(PgolfError, match="no training shard holds 30"):
        stream.take_chunk(30)


def test_packed_rank_batch_reads_one_chunk_for_all_ranks(shards):
    files, contents = shards
    rows = [packed_rank_batch(PackedRowStream(files, BOS), 2, rank, 2, max_length=4) for rank in (0, 1)]
    assert rows[0][0].tolist() == [contents[0][3:5]] and rows[0][1].tolist() == [contents[0][4:6]]
    assert rows[1][0].tolist() == [contents[0][6:8]] and rows[1][1].tolist() == [contents[0][7:9]]
    assert rows[1][2][:3].tolist() == [0, 1, 2]  # the second rank's row starts mid-document, bos at 1

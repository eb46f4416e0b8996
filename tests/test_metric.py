"""Byte tables and bpb, checked against what SentencePiece really decodes."""

import math

import numpy as np
import pytest
import torch

from pgolf.data.tokenizer import load_sentencepiece
from pgolf.errors import PgolfError
from pgolf.metric import bits_per_byte, byte_tables_from_sentencepiece, count_bytes

RARE_TEXT = ["é", "ü", "東", "京", "😀", "ß", "Ω", "ñ"]


@pytest.fixture(scope="module")
def processor(tiny_tokenizer_path):
    return load_sentencepiece(tiny_tokenizer_path)


@pytest.fixture(scope="module")
def tables(tiny_tokenizer_path):
    return byte_tables_from_sentencepiece(tiny_tokenizer_path)


def _segments(ids, processor):
    """Runs of ids between boundary ids (control, unknown, unused), with their start positions."""
    runs, current, start = [], [], 0
    for position, token in enumerate(ids):
        if processor.is_control(token) or processor.is_unknown(token) or processor.is_unused(token):
            if current:
                runs.append((start, current))
            current = []
            continue
        if not current:
            start = position
        current.append(token)
    if current:
        runs.append((start, current))
    return runs


def _assert_counts_match_decoding(ids, processor, tables):
    ids = np.asarray(ids, dtype=np.int64)
    previous = np.concatenate([[1], ids[:-1]])  # the sequence follows a bos
    counted = count_bytes(previous, ids, tables)
    boundary_positions = [i for i, t in enumerate(ids) if processor.is_control(int(t)) or processor.is_unknown(int(t))]
    assert all(counted[i] == 0 for i in boundary_positions)
    for start, run in _segments(ids.tolist(), processor):
        decoded = processor.decode(run)
        assert counted[start:start + len(run)].sum() == len(decoded.encode("utf-8")), (run, decoded)
    return counted


def test_tokenizer_has_byte_fallback(processor, tables):
    byte_ids = [i for i in range(processor.get_piece_size()) if processor.is_byte(i)]
    assert len(byte_ids) == 256 and all(tables.base_bytes[i] == 1 for i in byte_ids)
    assert all(tables.is_boundary[i] for i in (0, 1, 2, 3))
    assert all(tables.base_bytes[i] == 0 for i in (0, 1, 2, 3))
    assert not tables.is_boundary[byte_ids].any()


def test_random_sequences_count_decoded_bytes(processor, tables):
    rng = np.random.default_rng(0)
    normal = [i for i in range(processor.get_piece_size())
              if not (processor.is_byte(i) or processor.is_control(i) or processor.is_unknown(i))]
    # byte-fallback groups that form whole UTF-8 characters (a lone continuation byte decodes to U+FFFD)
    byte_groups = [processor.encode(text) for text in RARE_TEXT]
    byte_groups = [group for group in byte_groups if all(processor.is_byte(i) for i in group)]
    assert byte_groups, "the tiny tokenizer should fall back to bytes for some characters"
    space_pieces = [i for i in normal if processor.id_to_piece(i).startswith("▁")]
    for _ in range(50):
        ids = []
        for _ in range(int(rng.integers(1, 40))):
            kind = rng.random()
            if kind < 0.1:
                ids.append(int(rng.choice([0, 1, 2, 3])))
            elif kind < 0.25:
                ids.extend(byte_groups[int(rng.integers(len(byte_groups)))])
            elif kind < 0.5:
                ids.append(int(rng.choice(space_pieces)))
            else:
                ids.append(int(rng.choice(normal)))
        _assert_counts_match_decoding(ids, processor, tables)


def test_encoded_documents_count_their_bytes(processor, tables, tiny_documents):
    stream = []
    for document in tiny_documents[:60]:
        stream += [1] + processor.encode(document)
    counted = _assert_counts_match_decoding(stream, processor, tables)
    normalised_total = sum(len(processor.decode(processor.encode(d)).encode("utf-8")) for d in tiny_documents[:60])
    assert counted.sum() == normalised_total
    # these synthetic documents survive nmt_nfkc unchanged, so the count is the raw text's UTF-8 length
    assert counted.sum() == sum(len(d.encode("utf-8")) for d in tiny_documents[:60])


def test_leading_space_not_counted_after_boundary(processor, tables):
    piece = processor.piece_to_id("▁the")
    assert processor.id_to_piece(piece) == "▁the"
    assert processor.decode([piece]) == "the"  # SentencePiece drops the space of a sequence's first piece
    other = processor.piece_to_id("e")
    got = count_bytes(np.array([1, 3, other]), np.array([piece, piece, piece]), tables)
    assert got.tolist() == [3, 3, 4]


def test_torch_matches_numpy_and_padding(processor, tiny_tokenizer_path):
    tables = byte_tables_from_sentencepiece(processor, vocab_size=processor.get_piece_size() + 8)
    assert tables.vocab_size == processor.get_piece_size() + 8 and tables.is_boundary[-8:].all()
    rng = np.random.default_rng(1)
    previous, targets = rng.integers(0, tables.vocab_size, size=(2, 4, 16))
    expected = count_bytes(previous, targets, tables)
    got = count_bytes(torch.from_numpy(previous), torch.from_numpy(targets), tables)
    assert got.dtype == torch.int64 and got.shape == (4, 16)
    assert np.array_equal(got.numpy(), expected)
    with pytest.raises(PgolfError, match="smaller"):
        byte_tables_from_sentencepiece(tiny_tokenizer_path, vocab_size=10)


def test_bits_per_byte():
    assert bits_per_byte(10 * math.log(2.0), 5) == pytest.approx(2.0)
    assert bits_per_byte(3.0, 4.0) == pytest.approx(3.0 / math.log(2.0) / 4.0)
    with pytest.raises(PgolfError):
        bits_per_byte(1.0, 0)

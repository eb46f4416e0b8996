"""Every payload compressor round-trips exactly; the per-group layout and its refusals."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
import torch

from pgolf import pergroup
from pgolf.artifact import MAGIC, ArtifactError, build_payload, load_artifact, read_artifact, write_artifact
from pgolf.compressors import COMPRESSORS, PayloadError, byte_shuffle, byte_unshuffle, compress, decompress
from pgolf.config import ModelConfig
from pgolf.quant import Rule, Scheme, dequantize_state_dict, quantize_state_dict

CONFIG = ModelConfig(vocab_size=60, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                     bigram_buckets=0, smear_gate=False)
# int6 for every matrix of these small shapes (pr198 would keep them fp16)
SCHEME = Scheme("test-int6", (Rule("exact", kind="nonfloat"), Rule("fp16", kind="float", max_elements=256),
                              Rule("int6", kind="float", ndim=2)), compressor="zstd", level=22)
FAST_LEVELS = {"zpaq": 1, "pergroup": 1}  # ZPAQ's default level 5 runs at tens of kB/s


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"tok_emb.weight": torch.randn(60, 32, generator=generator) * 0.05}
    for layer in range(2):
        prefix = f"blocks.{layer}"
        tensors.update({
            f"{prefix}.attn.c_q.weight": torch.randn(48, 32, generator=generator) * 0.05,
            f"{prefix}.attn.c_k.weight": torch.randn(40, 32, generator=generator) * 0.05,
            f"{prefix}.mlp.fc.weight": torch.randn(50, 32, generator=generator) * 0.05,
            f"{prefix}.mlp.proj.weight": torch.randn(32, 50, generator=generator) * 0.05,
            f"{prefix}.attn_scale": torch.rand(32, generator=generator),
        })
    return tensors


def test_byte_shuffle_is_a_bijection():
    for length in (0, 1, 2, 7, 1000):
        data = bytes(np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8))
        shuffled = byte_shuffle(data)
        assert byte_unshuffle(shuffled) == data
        assert shuffled == data[0::2] + data[1::2]


def test_nearest_neighbour_order_matches_a_brute_force_transcription():
    rng = np.random.default_rng(0)
    matrix = rng.integers(-5, 6, size=(40, 16)).astype(np.int8)
    order, unused = [0], set(range(1, 40))
    while unused:
        last = matrix[order[-1]].astype(np.int64)
        chosen = min(unused, key=lambda row: (np.abs(matrix[row].astype(np.int64) - last).sum(), row))
        order.append(chosen)
        unused.remove(chosen)
    np.testing.assert_array_equal(pergroup.nearest_neighbour_order(matrix), order)


@pytest.mark.parametrize("compressor", sorted(COMPRESSORS))
def test_every_compressor_round_trips_an_artifact_exactly(tmp_path, compressor):
    if compressor in ("zpaq", "pergroup"):
        pytest.importorskip("brotli")
    if compressor == "zpaq":
        pytest.importorskip("zpaq")
    tensors = state()
    quantized = quantize_state_dict(tensors, SCHEME)
    path = tmp_path / f"{compressor}.pgolf"
    level = FAST_LEVELS.get(compressor)
    info = write_artifact(path, CONFIG, quantized, "0" * 64, 60, compressor=compressor, level=level)
    assert info.compressor == compressor
    assert info.level == (COMPRESSORS[compressor].default_level if level is None else level)
    loaded = dequantize_state_dict(read_artifact(path).quantized)  # the container (this state is no whole model)
    for name, tensor in dequantize_state_dict(quantized).items():
        assert torch.equal(loaded[name], tensor), name
    raw, table = build_payload(quantized)
    assert decompress(compress(raw, compressor, info.level, table), compressor, len(raw), table) == raw


def pergroup_file(tmp_path):
    path = tmp_path / "model.pgolf"
    write_artifact(path, CONFIG, quantize_state_dict(state(), SCHEME), "0" * 64, 60, compressor="pergroup", level=1)
    return path


def replace_payload(path, payload: bytes) -> None:
    """Swap the payload and keep the header consistent with it (length, payload hash and the file
    checksum), as an attacker would."""
    from forge import seal, split_artifact

    version, header_bytes, _ = split_artifact(path.read_bytes())
    header = json.loads(header_bytes)
    header["payload"].update(compressed_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    path.write_bytes(seal(json.dumps(header).encode(), payload, version))


def test_pergroup_layout_groups_the_matrices_by_role(tmp_path):
    contents = read_artifact(pergroup_file(tmp_path))
    groups = pergroup.grouped_matrices(contents.header["tensors"])
    sizes = {role: [(rows, columns, reorder) for _, rows, columns, reorder in members]
             for (role, _, _), members in zip(pergroup.ROLES, groups)}
    assert sizes == {"embedding": [(60, 32, True)], "k": [(40, 32, False)] * 2, "q": [(48, 32, True)] * 2,
                     "v": [], "out": [], "mlp_up": [(50, 32, True)] * 2, "mlp_down": [(32, 50, False)] * 2}


def crafted_payloads(payload: bytes, table: list, raw_bytes: int):
    head = len(pergroup.MAGIC) + 5
    count = struct.unpack_from("<I", payload, len(pergroup.MAGIC) + 1)[0]
    yield "magic", b"XXXX" + payload[4:]
    yield "version", payload[:4] + b"\x07" + payload[5:]
    yield "count", payload[:5] + struct.pack("<I", count + 1) + payload[9:]
    yield "truncated", payload[:-10]
    yield "extra", payload + b"\x00"
    yield "codec", payload[:head] + b"\x09" + payload[head + 1:]
    yield "tiny", pergroup.MAGIC
    # a structurally valid container whose row order is not a permutation
    raw = decompress(payload, "pergroup", raw_bytes, table)
    groups = pergroup.grouped_matrices(table)
    streams = pergroup._split(payload, len(groups) + 2)
    orders = bytearray(pergroup._decode(*streams[len(groups)], sum(2 * rows for members in groups
                                                                     for _, rows, _, reorder in members if reorder)))
    orders[0:2] = orders[2:4]  # a repeated row index
    bad = list(streams)
    bad[len(groups)] = (pergroup.CODEC_RAW, bytes(orders))
    yield "permutation", pergroup.MAGIC + struct.pack("<BI", pergroup.VERSION, len(bad)) + b"".join(
        struct.pack("<BI", codec, len(data)) for codec, data in bad) + b"".join(data for _, data in bad)
    # a stream that decompresses to the wrong size
    short = list(streams)
    short[-1] = (pergroup.CODEC_RAW, streams[-1][1][:5])
    yield "stream size", pergroup.MAGIC + struct.pack("<BI", pergroup.VERSION, len(short)) + b"".join(
        struct.pack("<BI", codec, len(data)) for codec, data in short) + b"".join(data for _, data in short)
    assert len(raw) == raw_bytes


def test_crafted_pergroup_payloads_are_refused_in_one_line(tmp_path):
    path = pergroup_file(tmp_path)
    contents = read_artifact(path)
    payload = path.read_bytes()[contents.bytes_header:]
    table, raw_bytes = contents.header["tensors"], contents.header["payload"]["raw_bytes"]
    for label, crafted in crafted_payloads(payload, table, raw_bytes):
        replace_payload(path, crafted)
        with pytest.raises(ArtifactError) as caught:
            read_artifact(path)
        message = str(caught.value)
        assert "\n" not in message and "does not decompress" in message, (label, message)


def test_decompressors_refuse_a_wrong_length():
    raw = bytes(range(256)) * 20
    for name in ("zstd", "zlib", "lzma", "brotli"):
        blob = compress(raw, name, COMPRESSORS[name].default_level)
        with pytest.raises(PayloadError):
            decompress(blob, name, len(raw) - 1)
        with pytest.raises(PayloadError):
            decompress(blob, name, len(raw) + 1)


def test_inspect_compares_every_compressor_on_the_same_payload(tmp_path, capsys):
    from pgolf.cli import main
    from pgolf.commands.inspect import inspect_artifact

    path = tmp_path / "model.pgolf"
    write_artifact(path, CONFIG, quantize_state_dict(state(), SCHEME), "0" * 64, 60, compressor="zstd")
    report = inspect_artifact(path, compare_compressors=True)
    assert set(report["compressors"]) | set(report["compressors_unavailable"]) == set(COMPRESSORS)
    assert report["compressors"]["zstd"] == report["totals"]["bytes_payload_compressed"]
    assert main(["inspect", str(path), "--compare-compressors"]) == 0
    assert "payload bytes by compressor" in capsys.readouterr().out


def test_inspect_names_a_compressor_whose_package_is_missing(tmp_path, monkeypatch, capsys):
    """The optional zpaq package may be absent: the comparison measures the rest and says what is missing."""
    from pgolf.cli import main
    from pgolf.commands.inspect import inspect_artifact

    path = tmp_path / "model.pgolf"
    write_artifact(path, CONFIG, quantize_state_dict(state(), SCHEME), "0" * 64, 60, compressor="zstd")
    monkeypatch.setitem(COMPRESSORS, "zpaq", COMPRESSORS["zpaq"]._replace(requires=("no_such_zpaq_package",)))
    report = inspect_artifact(path, compare_compressors=True)
    assert "zpaq" not in report["compressors"] and "lzma" in report["compressors"]
    assert report["compressors_unavailable"] == {"zpaq": "needs the no_such_zpaq_package package"}
    assert main(["inspect", str(path), "--compare-compressors"]) == 0
    assert "zpaq: not measured, needs the no_such_zpaq_package package" in capsys.readouterr().out

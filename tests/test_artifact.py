"""The .pgolf file: exact round trip, refusal of damaged or foreign files, atomic writes."""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from forge import rewrite_header, seal, split_artifact

from pgolf import artifact
from pgolf.artifact import ArtifactError, MAGIC, load_artifact, read_artifact, save_artifact
from pgolf.config import ModelConfig, model_config_to_dict
from pgolf.errors import PgolfError
from pgolf.quant import dequantize_state_dict, quantize_state_dict

SMALL_CONFIG = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1,
                           bigram_buckets=16, bigram_dim=8, rope_reference_len=32)
TOKENIZER_SHA = "c0ffee" * 10 + "abcd"


def mixed_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every method: int6 (large attn/mlp matrices), int8 (large embedding), fp16 (small), exact (ints)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "tok_emb.weight": torch.randn(300, 256, generator=generator) * 0.1,
        "blocks.0.attn.c_q.weight": torch.randn(288, 256, generator=generator) * 0.05,
        "blocks.0.mlp.fc.weight": torch.randn(512, 160, generator=generator) * 0.05,
        "blocks.0.attn_scale": torch.rand(256, generator=generator),
        "blocks.0.resid_mix": torch.randn(2, 256, generator=generator).to(torch.bfloat16),
        "bigram.scale": torch.tensor(0.05),
        "step_counter": torch.tensor([7, 11], dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }


def write(tmp_path: Path, scheme: str = "pr198", state=None) -> Path:
    path = tmp_path / "model.pgolf"
    save_artifact(path, SMALL_CONFIG, mixed_state() if state is None else state, scheme, TOKENIZER_SHA, 64)
    return path


@pytest.mark.parametrize("scheme", ["pr198", "baseline"])
def test_round_trip_is_bitwise_the_in_memory_dequantisation(tmp_path, scheme):
    state = mixed_state()
    path = tmp_path / "model.pgolf"
    info = save_artifact(path, SMALL_CONFIG, state, scheme, TOKENIZER_SHA, 64)
    assert info.bytes_model == path.stat().st_size
    assert info.bytes_model == info.bytes_header + info.bytes_payload_compressed
    # mixed_state is no GPT's state (load_artifact would refuse it against SMALL_CONFIG): read the container
    contents = read_artifact(path)
    from_file = dequantize_state_dict(contents.quantized)
    expected = dequantize_state_dict(quantize_state_dict(state, scheme))
    assert list(from_file) == list(state)
    for name, tensor in expected.items():
        got = from_file[name]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert torch.equal(got.reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    meta = contents.header
    assert meta["model_config"] == model_config_to_dict(SMALL_CONFIG)
    assert meta["scheme"] == scheme and meta["tokenizer_sha256"] == TOKENIZER_SHA
    assert meta["vocab_size"] == 64
    assert meta["compressor"] == {"pr198": "zstd", "baseline": "zlib"}[scheme]
    methods = {row[0]: row[1] for row in meta["tensors"]}
    if scheme == "pr198":
        assert methods["blocks.0.attn.c_q.weight"] == "int6" and methods["tok_emb.weight"] == "int8"
    assert methods["step_counter"] == "exact" and methods["bigram.scale"] == "fp16"


def test_same_state_gives_the_same_bytes(tmp_path):
    first, second = tmp_path / "a.pgolf", tmp_path / "b.pgolf"
    save_artifact(first, SMALL_CONFIG, mixed_state(), "pr198", TOKENIZER_SHA, 64)
    save_artifact(second, SMALL_CONFIG, mixed_state(), "pr198", TOKENIZER_SHA, 64)
    assert first.read_bytes() == second.read_bytes()


def test_real_model_round_trip_gives_identical_outputs(tmp_path):
    from pgolf.model import GPT

    torch.manual_seed(0)
    model = GPT(SMALL_CONFIG)
    with torch.no_grad():  # give the zero-initialised matrices some content
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    path = tmp_path / "gpt.pgolf"
    save_artifact(path, SMALL_CONFIG, model.state_dict(), "pr198", TOKENIZER_SHA, SMALL_CONFIG.vocab_size)
    loaded = load_artifact(path)
    from_file = GPT(loaded.model_config)
    from_file.load_state_dict(loaded.state_dict, strict=True)
    in_memory = GPT(SMALL_CONFIG)
    in_memory.load_state_dict(dequantize_state_dict(quantize_state_dict(model.state_dict(), "pr198")), strict=True)
    tokens = torch.randint(0, SMALL_CONFIG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(from_file(tokens), in_memory(tokens))


@pytest.mark.parametrize("keep", [3, 10, 40, -1])
def test_truncated_file_is_refused(tmp_path, keep):
    path = write(tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[:keep] if keep >= 0 else blob[:-5])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(path)


def test_bit_flip_in_payload_is_refused(tmp_path):
    path = write(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0x04
    path.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(path)


def test_header_problems_are_named(tmp_path):
    path = write(tmp_path)
    original = path.read_bytes()

    path.write_bytes(original.replace(b'"scheme"', b'"scheme\x01', 1))
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(path)
    version, header_bytes, payload = split_artifact(original)
    path.write_bytes(seal(header_bytes.replace(b'"scheme"', b'"scheme\x01', 1), payload, version))
    with pytest.raises(ArtifactError, match="header JSON is invalid"):
        load_artifact(path)

    path.write_bytes(original[:6] + struct.pack("<H", 99) + original[8:])
    with pytest.raises(ArtifactError, match="unknown artifact format version 99"):
        load_artifact(path)

    path.write_bytes(b"XGOLF\x00" + original[6:])
    with pytest.raises(ArtifactError, match="not a pgolf artifact"):
        load_artifact(path)

    path.write_bytes(original + b"junk")
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        load_artifact(path)
    path.write_bytes(seal(header_bytes, payload + b"junk", version))
    with pytest.raises(ArtifactError, match="4 unexpected bytes"):
        load_artifact(path)

    path.write_bytes(original)
    rewrite_header(path, lambda header: header.update(compressor="rar"))
    with pytest.raises(ArtifactError, match="unknown compressor 'rar'"):
        load_artifact(path)


def test_tensor_table_inconsistent_with_payload_is_refused(tmp_path):
    path = write(tmp_path)

    def grow_first_tensor(header):
        header["tensors"][0][2][0] += 1  # tok_emb claims one more row than was stored

    rewrite_header(path, grow_first_tensor)
    with pytest.raises(ArtifactError, match="tensor table inconsistent"):
        load_artifact(path)

    path = write(tmp_path)

    def claim_int6(header):
        for row in header["tensors"]:
            if row[0] == "blocks.0.attn_scale":
                row[1] = "int6"  # the parts are fp16 "data", int6 needs "values" + "scale"

    rewrite_header(path, claim_int6)
    with pytest.raises(ArtifactError, match="tensor table inconsistent"):
        load_artifact(path)

    path = write(tmp_path)
    rewrite_header(path, lambda header: header["model_config"].update(num_wings=2))
    with pytest.raises(ArtifactError, match="bad model config"):
        load_artifact(path)


class WritesMarker:
    """Unpickling this object runs exec(), which creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_pickles_are_refused_and_never_executed(tmp_path):
    armed_check = tmp_path / "armed.txt"
    pickle.loads(pickle.dumps(WritesMarker(armed_check)))  # the payload really fires when unpickled
    assert armed_check.exists()

    marker = tmp_path / "marker.txt"
    crafted = tmp_path / "evil.pgolf"
    crafted.write_bytes(pickle.dumps({"state": WritesMarker(marker)}))
    with pytest.raises(ArtifactError, match="not a pgolf artifact.*pickle"):
        load_artifact(crafted)

    zipped = tmp_path / "torch_save.pgolf"
    buffer = io.BytesIO()
    torch.save({"state": WritesMarker(marker)}, buffer)
    zipped.write_bytes(buffer.getvalue())
    with pytest.raises(ArtifactError, match="not a pgolf artifact.*zip"):
        load_artifact(zipped)

    # A pickle hidden after a valid magic is refused as a broken header, still never unpickled.
    disguised = tmp_path / "disguised.pgolf"
    disguised.write_bytes(MAGIC + struct.pack("<HI", 1, 40) + pickle.dumps(WritesMarker(marker))[:40])
    with pytest.raises(ArtifactError):
        load_artifact(disguised)
    assert not marker.exists()


def test_artifact_and_quant_modules_never_unpickle():
    import ast

    from pgolf import quant

    for module in (artifact, quant):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names} | {node.module for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not {"pickle", "cPickle", "dill", "marshal"} & imported, module.__name__
        loads = [node for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "load"
                 and isinstance(node.value, ast.Name) and node.value.id == "torch"]
        assert not loads, module.__name__


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    path = write(tmp_path)
    good = path.read_bytes()

    def broken_compressor(data, level, table):
        raise RuntimeError("compressor died")

    broken = artifact.COMPRESSORS["zstd"]._replace(compress=broken_compressor)
    monkeypatch.setitem(artifact.COMPRESSORS, "zstd", broken)
    with pytest.raises(RuntimeError, match="compressor died"):
        write(tmp_path)
    monkeypatch.undo()

    def broken_fsync(descriptor):
        raise OSError("disk full")

    monkeypatch.setattr(artifact.os, "fsync", broken_fsync)  # fails after the bytes were written
    with pytest.raises(OSError, match="disk full"):
        save_artifact(tmp_path / "fresh.pgolf", SMALL_CONFIG, mixed_state(), "pr198", TOKENIZER_SHA, 64)
    with pytest.raises(OSError, match="disk full"):
        write(tmp_path)
    monkeypatch.undo()

    assert path.read_bytes() == good  # the old artifact is untouched
    assert sorted(file.name for file in tmp_path.iterdir()) == ["model.pgolf"]  # no temporaries, no fresh.pgolf
    assert read_artifact(path).header["scheme"] == "pr198"


def test_missing_file_and_unknown_scheme(tmp_path):
    with pytest.raises(ArtifactError, match="no such artifact"):
        load_artifact(tmp_path / "absent.pgolf")
    with pytest.raises(PgolfError, match="unknown quantisation scheme"):
        save_artifact(tmp_path / "x.pgolf", SMALL_CONFIG, mixed_state(), "int3", TOKENIZER_SHA, 64)


def test_inspect_command_reports_tensors_categories_and_budget(tmp_path, capsys):
    from pgolf.cli import main

    state = mixed_state()
    path = write(tmp_path, state=state)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    for word in ("attention", "mlp", "embedding", "bigram", "control", "tok_emb.weight", "int6", "16,000,000",
                 TOKENIZER_SHA):
        assert word in text

    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in report["tensors"]}
    assert set(rows) == set(state)
    assert rows["blocks.0.attn.c_q.weight"]["method"] == "int6"
    assert rows["blocks.0.attn.c_q.weight"]["stored_bytes"] == 288 * 256 + 2 * 288  # int8 values + fp16 scales
    assert rows["blocks.0.mlp.fc.weight"]["category"] == "mlp"
    assert rows["tok_emb.weight"]["category"] == "embedding"
    assert rows["blocks.0.attn_scale"]["category"] == "control"
    elements = sum(tensor.numel() for tensor in state.values())
    assert report["totals"]["elements"] == elements
    assert sum(category["elements"] for category in report["categories"].values()) == elements
    assert report["totals"]["bytes_model"] == path.stat().st_size
    assert report["totals"]["bytes_budget"] == 16_000_000
    assert report["header"]["model_config"]["model_dim"] == SMALL_CONFIG.model_dim
    big = rows["blocks.0.mlp.fc.weight"]
    assert 0 < big["compressed_bytes"] < big["stored_bytes"]
    assert big["bits_per_parameter"] == pytest.approx(8 * big["compressed_bytes"] / big["elements"])


def test_inspect_refuses_a_foreign_file(tmp_path, capsys):
    from pgolf.cli import main

    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(3)}, path)
    assert main(["inspect", str(path)]) == 1
    assert "not a pgolf artifact" in capsys.readouterr().err

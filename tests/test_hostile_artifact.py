"""Hostile artifacts: every planted file is refused with a one-line error, within bounded memory.

The memory promise is tested in a child process whose address space is capped (RLIMIT_AS): the
decompression bomb below declares 3 GiB, which pgolf before format 2 allocated in full.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from forge import rewrite_header, seal, split_artifact

from pgolf import artifact
from pgolf.artifact import ArtifactError, load_artifact, read_artifact, save_artifact
from pgolf.cli import main
from pgolf.config import ModelConfig
from pgolf.model import GPT
from pgolf.quant import dequantize_state_dict, quantize_state_dict

CONFIG = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, bigram_buckets=16,
                     bigram_dim=8, rope_reference_len=32)
TOKENIZER_SHA = "ab" * 32
BOMB_BYTES = 3 << 30
RLE_BLOCK_BYTES = 1 << 17  # the largest zstd block
# `import torch` and pgolf take ~0.7 GiB of address space here (VmPeak, 2026-12-01); 2 GiB leaves room for
# the work and stays far below the 3 GiB a bomb declares and the 6.5 GB the old reader reached.
ADDRESS_SPACE_CAP = 2 << 30


def gpt_state(config: ModelConfig = CONFIG, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():  # give the zero-initialised matrices some content
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


@pytest.fixture
def good(tmp_path) -> Path:
    path = tmp_path / "good.pgolf"
    save_artifact(path, CONFIG, gpt_state(), "pr198", TOKENIZER_SHA, CONFIG.vocab_size)
    return path


def zstd_rle_frame(total_bytes: int, declare_size: bool) -> bytes:
    """A zstd frame of RLE blocks expanding to `total_bytes` zeros: 4 bytes per 128 KiB, so 3 GiB fit in 96 KiB.
    With `declare_size` the frame header states the size (8-byte Frame_Content_Size)."""
    descriptor = 0xC0 if declare_size else 0x00  # FCS field of 8 bytes, or none; not single-segment
    window = bytes([(17 - 10) << 3])  # window log 17 = one block
    header = struct.pack("<IB", 0xFD2FB528, descriptor) + window
    if declare_size:
        header += struct.pack("<Q", total_bytes)
    blocks = []
    remaining = total_bytes
    while remaining:
        size = min(remaining, RLE_BLOCK_BYTES)
        remaining -= size
        last = 1 if remaining == 0 else 0
        blocks.append(struct.pack("<I", last | (1 << 1) | (size << 3))[:3] + b"\x00")  # type 1: RLE
    return header + b"".join(blocks)


def test_the_hand_made_frame_is_a_real_zstd_stream():
    import zstandard

    frame = zstd_rle_frame(3 * RLE_BLOCK_BYTES + 5, declare_size=True)
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(3 * RLE_BLOCK_BYTES + 5)
    assert zstandard.frame_content_size(zstd_rle_frame(BOMB_BYTES, declare_size=True)) == BOMB_BYTES


def plant_payload(source: Path, target: Path, payload: bytes) -> Path:
    """`source` with its payload replaced (header's sha256 and length updated, file re-sealed)."""
    import hashlib

    version, header_bytes, _ = split_artifact(source.read_bytes())
    header = json.loads(header_bytes)
    header["payload"].update(sha256=hashlib.sha256(payload).hexdigest(), compressed_bytes=len(payload))
    target.write_bytes(seal(json.dumps(header).encode(), payload, version))
    return target


def plant_header(source: Path, target: Path, edit) -> Path:
    target.write_bytes(source.read_bytes())
    rewrite_header(target, edit)
    return target


def nested(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def planted(good: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """{case: (file, words its refusal must contain)}."""

    def config(**changes):
        return lambda header: header["model_config"].update(changes)

    version, header_bytes, payload = split_artifact(good.read_bytes())
    cases = {
        "bomb_declared": (plant_payload(good, folder / "bomb_declared.pgolf",
                                        zstd_rle_frame(BOMB_BYTES, declare_size=True)), "frame claims 3221225472"),
        "bomb_streamed": (plant_payload(good, folder / "bomb_streamed.pgolf",
                                        zstd_rle_frame(BOMB_BYTES, declare_size=False)), "decompresses to more than"),
        "raw_bytes_huge": (plant_header(good, folder / "raw_huge.pgolf",
                                        lambda header: header["payload"].update(raw_bytes=BOMB_BYTES)),
                           "declared raw payload"),
        "many_layers": (plant_header(good, folder / "layers.pgolf", config(num_layers=100_000, model_dim=4096)),
                        "model config says 100000 layers"),
        "wider": (plant_header(good, folder / "wider.pgolf", config(model_dim=4096, num_heads=64, num_kv_heads=32)),
                  "the model config needs"),
        "config_list": (plant_header(good, folder / "config_list.pgolf",
                                     lambda header: header.update(model_config=[1, 2])), "bad model config"),
        "config_null": (plant_header(good, folder / "config_null.pgolf",
                                     lambda header: header.update(model_config=None)), "bad model config"),
        "config_string_layers": (plant_header(good, folder / "config_str.pgolf", config(num_layers="2")),
                                 "bad model config"),
        "zero_heads": (plant_header(good, folder / "zero_heads.pgolf", config(num_heads=0)), "num_heads must be"),
        "nested_deep": (plant_header(good, folder / "nested.pgolf",
                                     lambda header: header.update(extra=nested(50))), "nests deeper"),
        "nested_recursion": (folder / "recursion.pgolf", "nests too deeply"),
        "header_length": (folder / "header_length.pgolf", "over the"),
        "version_1": (folder / "version1.pgolf", "format version 1"),
        "flipped_softcap": (folder / "softcap.pgolf", "checksum mismatch"),
    }
    # 100,000 levels of [: beyond what json's recursion limit allows
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases["nested_recursion"][0].write_bytes(seal(deep, payload, version))
    blob = bytearray(good.read_bytes())
    struct.pack_into("<I", blob, len(artifact.MAGIC) + 2, 0xFFFFFFFF)
    cases["header_length"][0].write_bytes(bytes(blob))
    cases["version_1"][0].write_bytes(seal(header_bytes, payload, version=1))
    softcap = bytearray(good.read_bytes())
    position = softcap.index(b'"logit_softcap":30.0') + len(b'"logit_softcap":')
    softcap[position] = ord("9")  # 30.0 -> 90.0: changes every score; the old format did not notice
    cases["flipped_softcap"][0].write_bytes(bytes(softcap))
    return cases


def test_each_planted_artifact_is_refused_naming_the_problem(good, tmp_path):
    for case, (path, words) in planted(good, tmp_path).items():
        with pytest.raises(ArtifactError) as caught:
            load_artifact(path)
        message = str(caught.value)
        assert words in message and str(path) in message and "\n" not in message, (case, message)


def test_refusals_through_the_cli_are_one_line(good, tmp_path, capsys):
    for case, (path, words) in planted(good, tmp_path).items():
        assert main(["eval", str(path), "--data", str(tmp_path / "unused")]) == 1, case
        error = capsys.readouterr().err
        assert error.startswith("pgolf: error: ") and error.count("\n") == 1 and words in error, (case, error)


def test_caps_on_sizes_and_names(good, tmp_path, monkeypatch):
    huge = tmp_path / "huge.pgolf"
    with huge.open("wb") as handle:  # sparse: no disk used
        handle.write(good.read_bytes())
        handle.truncate(artifact.MAX_FILE_BYTES + 1)
    with pytest.raises(ArtifactError, match="more than any artifact"):
        read_artifact(huge)
    with pytest.raises(ArtifactError, match="not a file"):
        read_artifact(tmp_path)

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ArtifactError, match="cannot read \\(Permission denied\\)"):
        read_artifact(good)


def test_a_zstd_stream_is_not_called_a_pickle(tmp_path):
    import zstandard

    path = tmp_path / "bare.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"weights"))
    with pytest.raises(ArtifactError, match="bare zstd stream"):
        read_artifact(path)


def test_every_compressor_bounds_its_output():
    """A stream of 64 MiB of zeros asked for 1 KiB: no compressor may return more than 1 KiB + 1."""
    from pgolf.compressors import COMPRESSORS

    for name, compressor in COMPRESSORS.items():
        if name == "zpaq":
            continue  # the optional zpaq package has no output bound (docs/reliability.md): not a default
        stream = compressor.compress(bytes(64 << 20), 1, [])
        try:
            out = compressor.decompress(stream, 1024, [])
        except artifact.PayloadError:
            continue
        assert len(out) <= 1025, name


def test_inspect_escapes_control_characters_in_names(tmp_path, capsys):
    path = tmp_path / "names.pgolf"
    state = {"evil\x1b[2J\nname": torch.zeros(4), "plain": torch.ones(3)}
    save_artifact(path, CONFIG, state, "pr198", TOKENIZER_SHA, 64)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "\x1b" not in text and "evil\\x1b[2J\\nname" in text


# ---------------------------------------------------------------- memory: a child under an address-space cap

CHILD = r"""
import json, resource, sys
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    bytearray(3 << 30)
    print(json.dumps({"cap_bites": False}))
except MemoryError:
    print(json.dumps({"cap_bites": True}))
import contextlib, io
from pgolf.cli import main
for argv in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    print(json.dumps({"argv": argv, "code": code, "err": err.getvalue()}), flush=True)
"""


@pytest.mark.slow  # one child process, ~15 s on the 2-core machine (mostly importing torch)
def test_hostile_artifacts_stay_within_two_gib_of_address_space(good, tmp_path):
    cases = planted(good, tmp_path)
    runs = [["inspect", str(good)]]  # a good file still works under the cap
    for case in ("bomb_declared", "bomb_streamed", "raw_bytes_huge"):  # inspect reads the container only
        runs.append(["inspect", str(cases[case][0])])
    for case in ("bomb_declared", "bomb_streamed", "raw_bytes_huge", "many_layers", "wider"):
        runs.append(["eval", str(cases[case][0]), "--data", str(tmp_path / "unused")])
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2",
                   "PYTHONPATH": str(Path(artifact.__file__).parents[1])}
    completed = subprocess.run([sys.executable, "-c", CHILD, str(ADDRESS_SPACE_CAP), json.dumps(runs)],
                               capture_output=True, text=True, env=environment, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert lines[0] == {"cap_bites": True}  # the cap is real: 3 GiB cannot be allocated under it
    results = lines[1:]
    assert len(results) == len(runs)
    assert results[0]["code"] == 0
    for result in results[1:]:
        assert result["code"] == 1 and result["err"].startswith("pgolf: error: "), result
        assert result["err"].count("\n") == 1 and "MemoryError" not in result["err"], result


# ---------------------------------------------------------------- fuzz: every byte of the header


def test_every_single_byte_flip_of_the_header_is_refused_or_harmless(tmp_path, monkeypatch):
    config = ModelConfig(vocab_size=16, num_layers=1, model_dim=8, num_heads=2, num_kv_heads=1, bigram_buckets=0,
                         smear_gate=False, rope_reference_len=8)
    path = tmp_path / "small.pgolf"
    save_artifact(path, config, gpt_state(config), "pr198", TOKENIZER_SHA, 16)
    original = path.read_bytes()
    expected = load_artifact(path)
    _, header_bytes, _ = split_artifact(original)
    header_end = artifact.PREFIX_BYTES + len(header_bytes)
    positions = list(range(header_end)) + list(range(header_end, len(original), 7))  # and a sample of the payload
    flipped = {"blob": original}
    monkeypatch.setattr(artifact, "_read_file", lambda _: flipped["blob"])  # the file's bytes, without disk writes
    accepted = 0
    for position in positions:
        for mask in (0x01, 0x80, 0xFF):
            blob = bytearray(original)
            blob[position] ^= mask
            flipped["blob"] = bytes(blob)
            try:
                loaded = load_artifact(path)
            except ArtifactError:
                continue
            accepted += 1  # only acceptable if nothing that matters changed
            assert loaded.model_config == expected.model_config
            assert list(loaded.state_dict) == list(expected.state_dict)
            assert all(torch.equal(loaded.state_dict[name], tensor) for name, tensor in expected.state_dict.items())
    # the checksum covers every byte but its own field, and a flip there fails it: nothing is accepted
    assert accepted == 0
    assert len(positions) > 300


def test_format_round_trip_is_unchanged_by_the_checksum(good):
    loaded = load_artifact(good)
    expected = dequantize_state_dict(quantize_state_dict(gpt_state(), "pr198"))
    assert all(torch.equal(loaded.state_dict[name], tensor) for name, tensor in expected.items())
    assert loaded.model_config == CONFIG and good.read_bytes()[6:8] == struct.pack("<H", 2)


def test_resealed_header_flips_never_raise_anything_but_an_artifact_error(tmp_path, monkeypatch):
    """A forger can recompute the checksum; then each flipped header must still parse to a clean refusal
    or to a consistent artifact (no traceback, whatever the byte)."""
    config = ModelConfig(vocab_size=16, num_layers=1, model_dim=8, num_heads=2, num_kv_heads=1, bigram_buckets=0,
                         smear_gate=False, rope_reference_len=8)
    path = tmp_path / "small.pgolf"
    save_artifact(path, config, gpt_state(config), "pr198", TOKENIZER_SHA, 16)
    version, header_bytes, payload = split_artifact(path.read_bytes())
    current = {"blob": b""}
    monkeypatch.setattr(artifact, "_read_file", lambda _: current["blob"])
    outcomes = {"refused": 0, "loaded": 0}
    for position in range(len(header_bytes)):
        for mask in (0x01,):  # one mask: a flip that parses costs a shallow meta-device model (~25 ms)
            header = bytearray(header_bytes)
            header[position] ^= mask
            current["blob"] = seal(bytes(header), payload, version)
            try:
                loaded = load_artifact(path)
            except ArtifactError:
                outcomes["refused"] += 1
                continue
            outcomes["loaded"] += 1
            model = GPT(loaded.model_config)  # what loaded must be usable: the state fits the config
            model.load_state_dict(loaded.state_dict, strict=True)
    assert outcomes["refused"] > outcomes["loaded"] > 0  # some flips (a digit of the softcap) stay valid


def test_inspect_refuses_a_level_its_compressor_rejects(good, tmp_path, capsys):
    for level in (10**9, 2**40):
        forged = plant_header(good, tmp_path / f"level{level}.pgolf", lambda header: header.update(level=level))
        assert main(["inspect", str(forged)]) == 1
        error = capsys.readouterr().err
        assert f"compression level {level} is not valid for zstd" in error and error.count("\n") == 1

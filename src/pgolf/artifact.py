"""The `.pgolf` artifact: one self-describing, pickle-free file holding a quantised model.

Layout (all integers little-endian):

    b"PGOLF\\x00"            6 bytes, magic
    format version          uint16 (2; version 1 had no checksum over the header and is refused)
    header length H         uint32
    file checksum           32 bytes: sha256 of every other byte of the file (magic, version,
                            length, header, payload), so no byte of the header can change unnoticed
    header                  H bytes of UTF-8 JSON (compact, sorted keys)
    payload                 the compressed concatenation of every stored tensor part

The header carries the model config, the quantisation scheme, the compressor and
level, the tokenizer's sha256 and vocabulary size, the payload's sha256 and
lengths, the pgolf version, and the tensor table: for every tensor its name,
method, original shape and dtype, and for each stored part (values / scale /
data) its dtype, shape, offset and length inside the decompressed payload.
Tensor bytes are raw little-endian, in table order.

Loading never unpickles anything and never trusts a size before checking it:
the file's size and the header's length are capped, the file checksum is
verified before the JSON is parsed, the JSON's nesting depth is bounded, the
tensor table must cover the declared raw payload exactly, the payload is
decompressed into at most that many bytes (whatever the compressed stream
claims), and `load_artifact` checks the model config against the tensor table
(`check_model_config_against_table`) before anything builds a model. Only then
are tensors decoded with `torch.frombuffer`. Every refusal is an
`ArtifactError` naming the file and the problem.

The payload's compressor is a row of pgolf.compressors.COMPRESSORS (zstd, zlib, lzma, brotli,
zpaq, pergroup); "pergroup" reorders the payload by the tensor table before compressing it,
and its reader checks that layout against the same table.

"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgolf import __version__
from pgolf.compressors import COMPRESSORS, PayloadError, compress, decompress
from pgolf.config import ModelConfig, model_config_from_dict, model_config_to_dict
from pgolf.errors import PgolfError
from pgolf.quant import (
    PartLayout,
    QuantizedState,
    QuantizedTensor,
    Scheme,
    dequantize_state_dict,
    get_scheme,
    is_known_method,
    quantize_state_dict,
    stored_layout,
)

MAGIC = b"PGOLF\x00"
FORMAT_VERSION = 2
PREFIX = struct.Struct("<HI32s")  # format version, header length, file checksum (sha256)
CHECKSUM_OFFSET = len(MAGIC) + 6  # where the checksum sits: after magic, version and header length
PREFIX_BYTES = len(MAGIC) + PREFIX.size
# Caps on what a file may declare, far above anything a 16,000,000-byte submission holds (the pr198
# artifact: 15.6 MB file, 14 KB header, 27 MB raw payload), so that memory stays bounded for any file.
MAX_FILE_BYTES = 1 << 30
MAX_HEADER_BYTES = 4 << 20
MAX_RAW_PAYLOAD_BYTES = 1 << 30
MAX_TENSOR_DIMS = 8
MAX_HEADER_DEPTH = 8  # header -> tensors -> row -> parts -> part -> shape is 6 deep

# The only dtypes a file may name; strings from a file are never passed to getattr(torch, ...).
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
    "int64": torch.int64, "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


class ArtifactError(PgolfError):
    """A file that is not a valid pgolf artifact; the message names the file and the problem."""


# ---------------------------------------------------------------- results


@dataclass(frozen=True)
class ArtifactInfo:
    path: Path
    bytes_model: int  # the whole file: what counts against the budget
    bytes_header: int  # magic + prefix + JSON header
    bytes_payload_raw: int
    bytes_payload_compressed: int
    payload_sha256: str
    scheme: str
    compressor: str
    level: int


@dataclass
class LoadedArtifact:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # dequantised, ready for GPT.load_state_dict
    meta: dict[str, Any]  # the JSON header


@dataclass
class ArtifactContents:
    """A checked artifact before dequantisation (what `pgolf inspect` looks at)."""

    header: dict[str, Any]
    quantized: QuantizedState
    bytes_file: int
    bytes_header: int


# ---------------------------------------------------------------- writing


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor, whatever its dtype (bf16 and bool included)."""
    if sys.byteorder != "little":
        raise PgolfError("pgolf artifacts are little-endian; writing them on a big-endian machine is not supported")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def table_row(name: str, method: str, shape, dtype: torch.dtype, parts: PartLayout, offset: int) -> tuple[list, int]:
    """One tensor-table row, [name, method, shape, dtype, [[part, dtype, shape, offset, bytes], ...]],
    and the offset after its parts."""
    rows = []
    for part, (part_shape, part_dtype) in parts.items():
        length = math.prod(part_shape) * torch.empty((), dtype=part_dtype).element_size()
        rows.append([part, DTYPE_NAMES[part_dtype], list(part_shape), offset, length])
        offset += length
    return [name, method, list(shape), DTYPE_NAMES[dtype], rows], offset


def build_payload(quantized: QuantizedState) -> tuple[bytes, list]:
    """Concatenate every stored part in table order; returns (raw payload, tensor table)."""
    chunks: list[bytes] = []
    table: list = []
    offset = 0
    for name, entry in quantized.tensors.items():
        layout = {part: (tuple(tensor.shape), tensor.dtype) for part, tensor in entry.parts.items()}
        row, offset = table_row(name, entry.method, entry.shape, entry.dtype, layout, offset)
        table.append(row)
        chunks.extend(tensor_bytes(tensor) for tensor in entry.parts.values())
    raw = b"".join(chunks)
    if len(raw) != offset:
        raise PgolfError(f"internal error: payload has {len(raw)} bytes, table says {offset}")
    return raw, table


def build_header(model_config: ModelConfig, scheme: Scheme, tokenizer_sha256: str, vocab_size: int, table: list,
                 payload_sha256: str, compressed_bytes: int, raw_bytes: int) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "pgolf_version": __version__,
        "model_config": model_config_to_dict(model_config),
        "scheme": scheme.name,
        "compressor": scheme.compressor,
        "level": scheme.level,
        "tokenizer_sha256": tokenizer_sha256,
        "vocab_size": int(vocab_size),
        "payload": {"sha256": payload_sha256, "compressed_bytes": compressed_bytes, "raw_bytes": raw_bytes},
        "tensors": table,
    }


def encode_header(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")


def file_checksum(prefix: bytes, header: bytes, payload: bytes) -> bytes:
    """sha256 of the whole file except the checksum field itself (the 32 bytes at CHECKSUM_OFFSET)."""
    digest = hashlib.sha256(prefix[:CHECKSUM_OFFSET])
    digest.update(header)
    digest.update(payload)
    return digest.digest()


def file_chunks(header: bytes, payload: bytes, version: int = FORMAT_VERSION) -> list[bytes]:
    """[prefix with the file checksum, header, payload]: the bytes of an artifact file, in order."""
    checksum = file_checksum(MAGIC + struct.pack("<HI", version, len(header)), header, payload)
    return [MAGIC + PREFIX.pack(version, len(header), checksum), header, payload]


def _atomic_write(path: Path, chunks: list[bytes]) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it; nothing partial survives."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_artifact(path, model_config: ModelConfig, quantized: QuantizedState, tokenizer_sha256: str,
                   vocab_size: int, compressor: str | None = None, level: int | None = None) -> ArtifactInfo:
    """Serialise an already quantised state (see `quantize_state_dict`) into a `.pgolf` file.

    The compressor and level default to the scheme's (a scheme of pgolf.quant.SCHEMES); states from
    other schemes (pgolf.calibrated) name theirs."""
    path = Path(path)
    if compressor is None:
        scheme = get_scheme(quantized.scheme)
    else:
        if compressor not in COMPRESSORS:
            raise PgolfError(f"unknown compressor {compressor!r}; known: {', '.join(sorted(COMPRESSORS))}")
        scheme = Scheme(quantized.scheme, (), compressor, COMPRESSORS[compressor].default_level if level is None
                        else level)
    raw, table = build_payload(quantized)
    payload = compress(raw, scheme.compressor, scheme.level, table)
    payload_sha256 = hashlib.sha256(payload).hexdigest()
    header = build_header(model_config, scheme, tokenizer_sha256, vocab_size, table, payload_sha256, len(payload),
                          len(raw))
    chunks = file_chunks(encode_header(header), payload)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, chunks)
    return ArtifactInfo(
        path=path,
        bytes_model=path.stat().st_size,
        bytes_header=len(chunks[0]) + len(chunks[1]),
        bytes_payload_raw=len(raw),
        bytes_payload_compressed=len(payload),
        payload_sha256=payload_sha256,
        scheme=scheme.name,
        compressor=scheme.compressor,
        level=scheme.level,
    )


def save_artifact(path, model_config: ModelConfig, state_dict: dict[str, torch.Tensor], scheme_name: str,
                  tokenizer_sha256: str, vocab_size: int) -> ArtifactInfo:
    """Quantise `state_dict` with the named scheme and write it as a `.pgolf` file (atomically)."""
    return write_artifact(path, model_config, quantize_state_dict(state_dict, scheme_name), tokenizer_sha256,
                          vocab_size)


# ---------------------------------------------------------------- reading


def _describe_foreign(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save output?)"
    if head.startswith(b"\x28\xb5\x2f\xfd"):  # before the pickle test: 0x28 is also pickle's "("
        return "a bare zstd stream"
    if head[:1] == b"\x80" or head[:1] in (b"(", b"}", b"]", b"c"):
        return "a pickle"
    return "unknown content"


def shown(text: Any, limit: int = 80) -> str:
    """A string from a file, safe for a one-line message: repr (control characters escaped), cut short."""
    text = repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ArtifactError(f"{path}: not a file")
        if size > MAX_FILE_BYTES:
            raise ArtifactError(f"{path}: {size:,} bytes, more than any artifact pgolf reads ({MAX_FILE_BYTES:,})")
        return path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no such artifact file") from None
    except OSError as error:
        raise ArtifactError(f"{path}: cannot read ({error.strerror or error})") from None


def _header_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether JSON data nests deeper than `limit` (iterative: a hostile header cannot exhaust the stack)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _split_file(path: Path, blob: bytes) -> tuple[dict[str, Any], bytes, int]:
    """Check magic, version, lengths and the file checksum; parse the header JSON.
    Returns (header, payload, header end)."""
    if len(blob) < len(MAGIC) and MAGIC.startswith(blob):
        raise ArtifactError(f"{path}: truncated artifact ({len(blob)} bytes)")
    if not blob.startswith(MAGIC):
        raise ArtifactError(f"{path}: not a pgolf artifact (no PGOLF magic; looks like {_describe_foreign(blob[:8])})")
    if len(blob) >= len(MAGIC) + 2:
        (version,) = struct.unpack_from("<H", blob, len(MAGIC))
        if version == 1:
            raise ArtifactError(f"{path}: artifact format version 1 (its header has no checksum) is no longer "
                                f"read; this pgolf reads version {FORMAT_VERSION}: write the artifact again")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{path}: unknown artifact format version {version} "
                                f"(this pgolf reads {FORMAT_VERSION})")
    if len(blob) < PREFIX_BYTES:
        raise ArtifactError(f"{path}: truncated artifact ({len(blob)} bytes, shorter than the fixed prefix)")
    _, header_length, checksum = PREFIX.unpack_from(blob, len(MAGIC))
    if header_length > MAX_HEADER_BYTES:
        raise ArtifactError(f"{path}: header length {header_length:,} is over the {MAX_HEADER_BYTES:,}-byte cap")
    header_end = PREFIX_BYTES + header_length
    if len(blob) < header_end:
        raise ArtifactError(f"{path}: truncated artifact (header needs {header_end} bytes, file has {len(blob)})")
    view = memoryview(blob)
    if file_checksum(blob[:CHECKSUM_OFFSET], view[PREFIX_BYTES:header_end], view[header_end:]) != checksum:
        raise ArtifactError(f"{path}: checksum mismatch (the file is corrupt or was edited)")
    try:
        header = json.loads(blob[PREFIX_BYTES:header_end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path}: header JSON is invalid ({error})") from None
    except RecursionError:
        raise ArtifactError(f"{path}: header JSON nests too deeply") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: header JSON is not an object")
    if _header_depth_exceeds(header, MAX_HEADER_DEPTH):
        raise ArtifactError(f"{path}: header JSON nests deeper than {MAX_HEADER_DEPTH} levels")
    for key in ("model_config", "scheme", "compressor", "level", "payload", "tensors", "tokenizer_sha256",
                "vocab_size"):
        if key not in header:
            raise ArtifactError(f"{path}: header lacks {key!r}")
    for key, want in (("scheme", str), ("compressor", str), ("level", int), ("tokenizer_sha256", str),
                      ("vocab_size", int)):
        if not isinstance(header[key], want) or isinstance(header[key], bool):
            raise ArtifactError(f"{path}: header {key!r} is not a {want.__name__}: {shown(header[key])}")
    payload_info = header["payload"]
    if not isinstance(payload_info, dict) or not all(
            isinstance(payload_info.get(key), want) and not isinstance(payload_info.get(key), bool)
            for key, want in (("sha256", str), ("compressed_bytes", int), ("raw_bytes", int))):
        raise ArtifactError(f"{path}: header 'payload' entry is malformed")
    if not 0 <= payload_info["raw_bytes"] <= MAX_RAW_PAYLOAD_BYTES:
        raise ArtifactError(f"{path}: declared raw payload of {payload_info['raw_bytes']:,} bytes is outside "
                            f"0..{MAX_RAW_PAYLOAD_BYTES:,}")
    expected_size = header_end + payload_info["compressed_bytes"]
    if len(blob) < expected_size:
        raise ArtifactError(f"{path}: truncated artifact ({len(blob)} bytes, header promises {expected_size})")
    if len(blob) > expected_size:
        raise ArtifactError(f"{path}: {len(blob) - expected_size} unexpected bytes after the payload")
    return header, blob[header_end:], header_end


def _check_table(path: Path, table: Any, raw_bytes: int) -> list:
    """Validate the tensor table against the methods' layouts and the payload length."""

    def fail(problem: str) -> ArtifactError:
        return ArtifactError(f"{path}: tensor table inconsistent with payload: {problem}")

    if not isinstance(table, list):
        raise fail("'tensors' is not a list")
    offset, seen = 0, set()
    for row in table:
        if not (isinstance(row, list) and len(row) == 5):
            raise fail(f"malformed entry {shown(row)}")
        name, method, shape, dtype_name, parts = row
        if not isinstance(name, str) or name in seen or "#" in name:
            raise fail(f"bad or repeated tensor name {shown(name)}")
        seen.add(name)
        if not is_known_method(method) or dtype_name not in DTYPES:
            raise fail(f"{shown(name)}: unknown method {shown(method)} or dtype {shown(dtype_name)}")
        if not (isinstance(shape, list) and len(shape) <= MAX_TENSOR_DIMS and all(
                isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= MAX_RAW_PAYLOAD_BYTES
                for size in shape)):
            raise fail(f"{shown(name)}: bad shape {shown(shape)}")
        if math.prod(shape) > 8 * raw_bytes:  # no method stores an element in less than one bit
            raise fail(f"{shown(name)}: shape {shape} holds more elements than the payload has bits")
        try:
            layout = stored_layout(tuple(shape), DTYPES[dtype_name], method)
        except PgolfError as error:
            raise fail(f"{shown(name)}: {error}") from None
        well_formed = isinstance(parts, list) and all(
            isinstance(part, list) and len(part) == 5 and isinstance(part[3], int) and isinstance(part[4], int)
            for part in parts)
        if not well_formed or [part[0] for part in parts] != list(layout):
            raise fail(f"{shown(name)}: parts {shown(parts, 120)} do not match method {method}")
        for part_name, part_dtype, part_shape, part_offset, part_bytes in parts:
            want_shape, want_dtype = layout[part_name]
            if part_dtype != DTYPE_NAMES[want_dtype] or part_shape != list(want_shape):
                raise fail(f"{shown(name)}#{part_name}: stored as {shown(part_dtype)} {shown(part_shape)}, method "
                           f"needs {DTYPE_NAMES[want_dtype]} {list(want_shape)}")
            itemsize = torch.empty((), dtype=want_dtype).element_size()
            if part_offset != offset or part_bytes != math.prod(want_shape) * itemsize:
                raise fail(f"{shown(name)}#{part_name}: offset {part_offset} / length {part_bytes} do not follow "
                           f"the previous part (expected offset {offset}, length {math.prod(want_shape) * itemsize})")
            offset += part_bytes
            if offset > raw_bytes:
                raise fail(f"parts run past the {raw_bytes}-byte payload at {shown(name)}")
    if offset != raw_bytes:
        raise fail(f"parts cover {offset} bytes but the payload has {raw_bytes}")
    return table


def read_artifact(path) -> ArtifactContents:
    """Read and check an artifact; returns its header and the stored (still quantised) tensors.

    Checks the container (see the module docstring); the model config is checked by `load_artifact`.
    """
    path = Path(path)
    blob = _read_file(path)
    header, payload, header_end = _split_file(path, blob)
    payload_info = header["payload"]
    if hashlib.sha256(payload).hexdigest() != payload_info["sha256"]:
        raise ArtifactError(f"{path}: payload checksum mismatch (the file is corrupt)")
    if header["compressor"] not in COMPRESSORS:
        raise ArtifactError(f"{path}: unknown compressor {shown(header['compressor'])}")
    table = _check_table(path, header["tensors"], payload_info["raw_bytes"])
    try:
        raw = decompress(payload, header["compressor"], payload_info["raw_bytes"], table)
    except PayloadError as error:
        raise ArtifactError(f"{path}: payload does not decompress ({error})") from None
    if len(raw) > payload_info["raw_bytes"]:  # the bounded decompressors stop one byte past the declared size
        raise ArtifactError(f"{path}: payload decompresses to more than the {payload_info['raw_bytes']} bytes "
                            "the header says")
    if len(raw) < payload_info["raw_bytes"]:
        raise ArtifactError(f"{path}: payload decompresses to {len(raw)} bytes, header says "
                            f"{payload_info['raw_bytes']}")
    buffer = raw if isinstance(raw, bytearray) else bytearray(raw)
    quantized = QuantizedState(scheme=str(header["scheme"]))
    for name, method, shape, dtype_name, parts in table:
        stored = {}
        for part_name, part_dtype, part_shape, part_offset, part_bytes in parts:
            dtype = DTYPES[part_dtype]
            if part_bytes == 0:
                stored[part_name] = torch.empty(part_shape, dtype=dtype)
                continue
            flat = torch.frombuffer(buffer, dtype=torch.uint8, count=part_bytes, offset=part_offset)
            stored[part_name] = flat.view(dtype).reshape(part_shape).clone()
        quantized.tensors[name] = QuantizedTensor(method=method, shape=tuple(shape), dtype=DTYPES[dtype_name],
                                                  parts=stored)
    return ArtifactContents(header=header, quantized=quantized, bytes_file=len(blob), bytes_header=header_end)


def check_model_config_against_table(path, model_config: Any, table: list) -> ModelConfig:
    """The header's model config, parsed, validated and matched to the tensor table name by name and
    shape by shape, before anything builds a model. Cheap for any config: the layer count is compared
    first, and the expected layout comes from `pgolf.layout` (shallow models on the meta device)."""
    from pgolf.layout import BLOCK_NAME, state_layout

    try:
        config = model_config_from_dict(model_config)
        config.validate()
    except (PgolfError, TypeError, ValueError) as error:
        raise ArtifactError(f"{path}: bad model config in header ({error})") from None
    table_layers = {int(match.group(1)) for row in table if (match := BLOCK_NAME.fullmatch(row[0]))}
    if table_layers != set(range(config.num_layers)):
        raise ArtifactError(f"{path}: model config says {config.num_layers} layers, the tensor table holds blocks "
                            f"{shown(sorted(table_layers))}")
    expected = {name: shape for name, (shape, _) in state_layout(config).items()}
    stored = {row[0]: tuple(row[2]) for row in table}
    for name in sorted(set(expected) | set(stored)):
        if name not in stored:
            raise ArtifactError(f"{path}: model config needs tensor {name}, the table lacks it")
        if name not in expected:
            raise ArtifactError(f"{path}: the table holds {shown(name)}, which the model config has no place for")
        if stored[name] != expected[name]:
            raise ArtifactError(f"{path}: {shown(name)} is stored as {list(stored[name])}, the model config "
                                f"needs {list(expected[name])}")
    return config


def load_artifact(path) -> LoadedArtifact:
    """Read, check (container, then model config against the tensor table) and dequantise an artifact."""
    contents = read_artifact(path)
    model_config = check_model_config_against_table(path, contents.header["model_config"],
                                                    contents.header["tensors"])
    try:
        state_dict = dequantize_state_dict(contents.quantized)
    except PgolfError as error:  # e.g. AWQ columns outside the matrix
        raise ArtifactError(f"{path}: tensors do not dequantise ({error})") from None
    return LoadedArtifact(model_config=model_config, state_dict=state_dict, meta=contents.header)

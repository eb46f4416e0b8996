"""The per-group payload layout of the frontier recipe (spec frontier.md §5, beyond.md §7).

A bijection on the raw payload, driven by the artifact's tensor table:

1. the int8 "values" matrices are routed into groups by role, in the order embedding, k, q, v,
   out, MLP-up, MLP-down (layers ascending: table order);
2. for the embedding, q and MLP-up, each matrix's rows are reordered by a greedy L1
   nearest-neighbour chain from row 0 (similar rows next to each other); the permutation is
   stored as uint16;
3. every matrix is written transposed (column-major), and each group's concatenation is one
   stream, compressed with ZPAQ (the `zpaq` package; lzma where it is missing);
4. the permutations are one brotli-11 stream, everything else in the payload (scales, LQER
   factors, fp16 tensors, ...) in table order one byte-shuffled brotli-11 stream.

Container: b"PGRP", version uint8, stream count uint32, then per stream a codec id uint8 and
its length uint32, then the streams. Reading checks every length, codec and permutation and
decompresses each stream to exactly the size the table implies.
"""

from __future__ import annotations

import fnmatch
import lzma
import struct

import numpy as np

from pgolf.compressors import PayloadError, brotli_decompress_exact, byte_shuffle, byte_unshuffle

MAGIC = b"PGRP"
VERSION = 1
ROLES = (  # (role, name patterns, rows reordered)
    ("embedding", ("tok_emb.weight",), True),
    ("k", ("blocks.*.attn.c_k.weight",), False),
    ("q", ("blocks.*.attn.c_q.weight",), True),
    ("v", ("blocks.*.attn.c_v.weight",), False),
    ("out", ("blocks.*.attn.proj.weight",), False),
    ("mlp_up", ("blocks.*.mlp.fc.weight",), True),
    ("mlp_down", ("blocks.*.mlp.proj.weight",), False),
)
CODEC_RAW, CODEC_LZMA, CODEC_BROTLI, CODEC_ZPAQ, CODEC_BROTLI_SHUFFLED = range(5)
MAX_ROWS = 65536  # permutations are uint16


# ---------------------------------------------------------------- the layout from the table


def grouped_matrices(table: list) -> list[list[tuple[int, int, int, bool]]]:
    """Per role: [(payload offset, rows, columns, reorder)] of its int8 2-D "values" parts."""
    groups: list[list[tuple[int, int, int, bool]]] = [[] for _ in ROLES]
    for name, _method, _shape, _dtype, parts in table:
        for part_name, part_dtype, part_shape, offset, _length in parts:
            if part_name != "values" or part_dtype != "int8" or len(part_shape) != 2:
                continue
            for index, (_role, patterns, reorder) in enumerate(ROLES):
                if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
                    rows, columns = part_shape
                    groups[index].append((offset, rows, columns, reorder and 1 < rows <= MAX_ROWS))
                    break
    return groups


def nearest_neighbour_order(matrix: np.ndarray) -> np.ndarray:
    """Greedy L1 chain over the rows of an int8 matrix (R, C): start at row 0, then always the
    closest unused row (lowest index on ties). Returns the row order (R,)."""
    import torch

    rows = torch.from_numpy(matrix.astype(np.int16))  # (R, C)
    used = torch.zeros(rows.shape[0], dtype=torch.bool)
    order = [0]
    used[0] = True
    big = torch.iinfo(torch.int32).max
    for _ in range(rows.shape[0] - 1):
        distance = (rows - rows[order[-1]]).abs().sum(dim=1, dtype=torch.int32)  # (R,)
        distance[used] = big
        chosen = int(torch.argmin(distance))
        order.append(chosen)
        used[chosen] = True
    return np.asarray(order, dtype=np.int64)


# ---------------------------------------------------------------- streams


def _encode(codec: int, data: bytes, level: int) -> bytes:
    if codec == CODEC_RAW:
        return data
    if codec == CODEC_LZMA:
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if codec == CODEC_ZPAQ:
        import zpaq

        return zpaq.compress(data, level=level, threads=1)
    import brotli

    return brotli.compress(byte_shuffle(data) if codec == CODEC_BROTLI_SHUFFLED else data, quality=11, lgwin=24)


def _decode(codec: int, data: bytes, size: int) -> bytes:
    from pgolf.compressors import COMPRESSORS

    if codec == CODEC_RAW:
        raw = data
    elif codec == CODEC_LZMA:
        raw = COMPRESSORS["lzma"].decompress(data, size, None)
    elif codec == CODEC_ZPAQ:
        raw = COMPRESSORS["zpaq"].decompress(data, size, None)
    elif codec in (CODEC_BROTLI, CODEC_BROTLI_SHUFFLED):
        raw = brotli_decompress_exact(data, size)
        raw = byte_unshuffle(raw) if codec == CODEC_BROTLI_SHUFFLED else raw
    else:
        raise PayloadError(f"per-group stream has unknown codec {codec}")
    if len(raw) != size:
        raise PayloadError(f"per-group stream decompresses to {len(raw)} bytes, the table implies {size}")
    return raw


def _group_codec() -> int:
    try:
        import zpaq  # noqa: F401
    except ImportError:
        return CODEC_LZMA
    return CODEC_ZPAQ


def pack(raw: bytes, table: list, level: int = 4) -> bytes:
    payload = np.frombuffer(raw, dtype=np.uint8)
    grouped = np.zeros(len(raw), dtype=bool)
    streams: list[tuple[int, bytes]] = []
    permutations: list[bytes] = []
    group_codec = _group_codec()
    for members in grouped_matrices(table):
        pieces = []
        for offset, rows, columns, reorder in members:
            matrix = payload[offset:offset + rows * columns].view(np.int8).reshape(rows, columns)
            grouped[offset:offset + rows * columns] = True
            if reorder:
                order = nearest_neighbour_order(matrix)
                matrix = matrix[order]
                permutations.append(order.astype("<u2").tobytes())
            pieces.append(np.ascontiguousarray(matrix.T).tobytes())  # column-major
        streams.append((group_codec, _encode(group_codec, b"".join(pieces), level)))
    streams.append((CODEC_BROTLI, _encode(CODEC_BROTLI, b"".join(permutations), level)))
    streams.append((CODEC_BROTLI_SHUFFLED, _encode(CODEC_BROTLI_SHUFFLED, payload[~grouped].tobytes(), level)))
    head = MAGIC + struct.pack("<BI", VERSION, len(streams))
    head += b"".join(struct.pack("<BI", codec, len(data)) for codec, data in streams)
    return head + b"".join(data for _, data in streams)


def _split(blob: bytes, expected_streams: int) -> list[tuple[int, bytes]]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 5:
        raise PayloadError("not a per-group container (no PGRP magic)")
    version, count = struct.unpack_from("<BI", blob, len(MAGIC))
    if version != VERSION or count != expected_streams:
        raise PayloadError(f"per-group container version {version} with {count} streams; "
                           f"expected version {VERSION} with {expected_streams}")
    position = len(MAGIC) + 5
    if len(blob) < position + 5 * count:
        raise PayloadError("per-group container truncated in its stream table")
    entries = [struct.unpack_from("<BI", blob, position + 5 * index) for index in range(count)]
    position += 5 * count
    streams = []
    for codec, length in entries:
        if position + length > len(blob):
            raise PayloadError("per-group container truncated in its streams")
        streams.append((codec, blob[position:position + length]))
        position += length
    if position != len(blob):
        raise PayloadError(f"{len(blob) - position} unexpected bytes after the per-group streams")
    return streams


def unpack(blob: bytes, raw_bytes: int, table: list) -> bytes:
    groups = grouped_matrices(table)
    streams = _split(blob, len(groups) + 2)
    payload = np.zeros(raw_bytes, dtype=np.uint8)
    grouped = np.zeros(raw_bytes, dtype=bool)
    permuted = [(rows, columns) for members in groups for _, rows, columns, reorder in members if reorder]
    permutation_bytes = _decode(*streams[len(groups)], 2 * sum(rows for rows, _ in permuted))
    orders = np.frombuffer(permutation_bytes, dtype="<u2").astype(np.int64)
    used_orders = 0
    for members, (codec, data) in zip(groups, streams):
        size = sum(rows * columns for _, rows, columns, _ in members)
        flat = np.frombuffer(_decode(codec, data, size), dtype=np.int8)
        position = 0
        for offset, rows, columns, reorder in members:
            matrix = flat[position:position + rows * columns].reshape(columns, rows).T  # back to (R, C)
            position += rows * columns
            if reorder:
                order = orders[used_orders:used_orders + rows]
                used_orders += rows
                if not np.array_equal(np.sort(order), np.arange(rows)):
                    raise PayloadError("a stored row order is not a permutation")
                restored = np.empty_like(matrix)
                restored[order] = matrix
                matrix = restored
            payload[offset:offset + rows * columns] = np.ascontiguousarray(matrix).reshape(-1).view(np.uint8)
            grouped[offset:offset + rows * columns] = True
    remainder = _decode(*streams[-1], int((~grouped).sum()))
    payload[~grouped] = np.frombuffer(remainder, dtype=np.uint8)
    return payload.tobytes()

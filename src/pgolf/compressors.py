"""The artifact payload's compressors, as a table: name -> (compress, decompress, default level).

    compress(raw, level, table) -> bytes
    decompress(blob, raw_bytes, table) -> raw bytes (at most raw_bytes + 1 are produced)

`table` is the artifact's checked tensor table (pgolf.artifact); only "pergroup" uses it.

- zstd (22), zlib (9): the pr198 and baseline payloads;
- lzma (preset 9 | extreme, xz container);
- brotli (quality 11, window 2^24) after a stride-2 byte shuffle: every even-offset byte first,
  then every odd one, so the two byte planes of 16-bit data sit together (beyond.md §7);
- zpaq (level 5, one thread: the output must not depend on the machine's core count), from the
  `zpaq` PyPI package (no system binary); its decompressor cannot be bounded, see `_zpaq_decompress`;
- pergroup: the frontier layout (frontier.md §5), see pgolf.pergroup; its level is the ZPAQ level
  of the group streams (4 by default).

Decompressors raise `PayloadError` for anything that does not decompress to the promised length.
"""

from __future__ import annotations

import lzma
import zlib
from typing import Callable, NamedTuple


class PayloadError(Exception):
    """A compressed payload that does not decompress (raised by every compressor alike)."""


class Compressor(NamedTuple):
    compress: Callable[[bytes, int, list | None], bytes]
    decompress: Callable[[bytes, int, list | None], bytes]
    default_level: int
    # the packages it imports (pergroup: brotli for its remainder; its ZPAQ streams fall back to lzma
    # without the optional zpaq package)
    requires: tuple[str, ...] = ()


def missing_package(compressor: str) -> str | None:
    """A package `compressor` needs that this environment lacks, or None."""
    import importlib.util

    return next((package for package in COMPRESSORS[compressor].requires
                 if importlib.util.find_spec(package) is None), None)


def byte_shuffle(data: bytes, stride: int = 2) -> bytes:
    """All bytes at offset 0 mod stride, then 1 mod stride, ...: groups the byte planes of wide values."""
    return b"".join(data[offset::stride] for offset in range(stride))


def byte_unshuffle(data: bytes, stride: int = 2) -> bytes:
    out = bytearray(len(data))
    position = 0
    for offset in range(stride):
        count = len(range(offset, len(data), stride))
        out[offset::stride] = data[position:position + count]
        position += count
    return bytes(out)


def _checked(raw: bytes, raw_bytes: int, name: str) -> bytes:
    if len(raw) > raw_bytes:  # the bounded decompressors stop one byte past the declared size
        raise PayloadError(f"{name} payload decompresses to more than the {raw_bytes} bytes the header says")
    if len(raw) < raw_bytes:
        raise PayloadError(f"{name} payload decompresses to {len(raw)} bytes, the header says {raw_bytes}")
    return raw


def _zstd_compress(data: bytes, level: int, table=None) -> bytes:
    import zstandard  # imported on use: training and benchmarks run where zstandard is not installed

    return zstandard.ZstdCompressor(level=level).compress(data)


def _zstd_decompress(data: bytes, raw_bytes: int, table=None) -> bytes:
    """At most raw_bytes + 1 bytes out (one more shows an over-long stream as a length error).

    `ZstdDecompressor.decompress` allocates whatever size the frame header claims (a 99 KB file
    can claim 3 GiB), so the claim is checked first and the stream is read through a bounded reader.
    """
    import io

    import zstandard

    try:
        claimed = zstandard.frame_content_size(data)
        if claimed > raw_bytes:  # -1: the frame does not say; the bounded read below still holds
            raise PayloadError(f"the zstd frame claims {claimed} bytes, the header {raw_bytes}")
        output = bytearray()
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
            while len(output) <= raw_bytes:
                chunk = reader.read(min(raw_bytes + 1 - len(output), 1 << 24))
                if not chunk:
                    break
                output += chunk
        return output
    except zstandard.ZstdError as error:
        raise PayloadError(str(error)) from None


def _zlib_compress(data: bytes, level: int, table=None) -> bytes:
    return zlib.compress(data, level)


def _zlib_decompress(data: bytes, raw_bytes: int, table=None) -> bytes:
    decompressor = zlib.decompressobj()
    try:
        return decompressor.decompress(data, raw_bytes + 1)  # +1: an over-long payload shows as a length error
    except zlib.error as error:
        raise PayloadError(str(error)) from None


def _lzma_compress(data: bytes, level: int, table=None) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ, preset=level | lzma.PRESET_EXTREME)


def _lzma_decompress(data: bytes, raw_bytes: int, table=None) -> bytes:
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        raw = decompressor.decompress(data, max_length=raw_bytes + 1)
    except lzma.LZMAError as error:
        raise PayloadError(str(error)) from None
    if not decompressor.eof or decompressor.unused_data:
        raise PayloadError("lzma stream is truncated or followed by extra bytes")
    return raw


def _brotli_compress(data: bytes, level: int, table=None) -> bytes:
    import brotli

    return brotli.compress(byte_shuffle(data), quality=level, lgwin=24)


def brotli_decompress_exact(data: bytes, raw_bytes: int) -> bytes:
    """A brotli stream that must decompress to exactly raw_bytes (output capped just above)."""
    import brotli

    decompressor = brotli.Decompressor()
    try:
        raw = decompressor.process(data, output_buffer_limit=raw_bytes + 1)
    except brotli.error as error:
        raise PayloadError(str(error)) from None
    if len(raw) != raw_bytes or not decompressor.is_finished():
        raise PayloadError(f"brotli stream does not decompress to exactly {raw_bytes} bytes")
    return raw


def _brotli_decompress(data: bytes, raw_bytes: int, table=None) -> bytes:
    return byte_unshuffle(brotli_decompress_exact(data, raw_bytes))


def _zpaq_module():
    try:
        import zpaq
    except ImportError:
        raise PayloadError("the zpaq compressor needs the `zpaq` package (pip install zpaq)") from None
    return zpaq


def _zpaq_compress(data: bytes, level: int, table=None) -> bytes:
    return _zpaq_module().compress(data, level=level, threads=1)


def _zpaq_decompress(data: bytes, raw_bytes: int, table=None) -> bytes:
    # The zpaq package offers no output bound: a crafted stream could expand far beyond raw_bytes
    # before the length check below (the header checksum is the only guard before this point).
    zpaq = _zpaq_module()
    try:
        return zpaq.decompress(data, threads=1)
    except zpaq.Error as error:
        raise PayloadError(str(error)) from None


def _pergroup_compress(data: bytes, level: int, table=None) -> bytes:
    from pgolf.pergroup import pack

    return pack(data, table or [], level)


def _pergroup_decompress(data: bytes, raw_bytes: int, table=None) -> bytes:
    from pgolf.pergroup import unpack

    return unpack(data, raw_bytes, table or [])


COMPRESSORS: dict[str, Compressor] = {
    "zstd": Compressor(_zstd_compress, _zstd_decompress, 22, requires=("zstandard",)),
    "zlib": Compressor(_zlib_compress, _zlib_decompress, 9),
    "lzma": Compressor(_lzma_compress, _lzma_decompress, 9),
    "brotli": Compressor(_brotli_compress, _brotli_decompress, 11, requires=("brotli",)),
    "zpaq": Compressor(_zpaq_compress, _zpaq_decompress, 5, requires=("zpaq",)),
    # ZPAQ level 4 for the per-group streams: level 3 barely compressed trained int6 rows (435,396 bytes
    # of 442,368 for one MLP matrix, where level 4 gave 307,489 and lzma 303,288); level 5 is ~3x
    # slower than 4 (docs/log.md)
    "pergroup": Compressor(_pergroup_compress, _pergroup_decompress, 4, requires=("brotli",)),
}


def compress(data: bytes, compressor: str, level: int, table: list | None = None) -> bytes:
    from pgolf.errors import PgolfError

    if compressor not in COMPRESSORS:
        raise PgolfError(f"unknown compressor {compressor!r}; known: {', '.join(sorted(COMPRESSORS))}")
    return COMPRESSORS[compressor].compress(data, level, table)


def decompress(data: bytes, compressor: str, raw_bytes: int, table: list | None = None) -> bytes:
    """Raw bytes of exactly `raw_bytes`, or PayloadError."""
    if compressor not in COMPRESSORS:
        raise PayloadError(f"unknown compressor {compressor!r}")
    return _checked(COMPRESSORS[compressor].decompress(data, raw_bytes, table), raw_bytes, compressor)

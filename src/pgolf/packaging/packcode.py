"""Packed code: Python source -> minified -> compressed -> base85 in a two-line exec stub.

The frontier records count their code as such a self-extracting wrapper (frontier.md §5,
beyond.md §7): python-minifier with no local or global renaming and no literal hoisting,
docstrings (literal statements) and asserts removed, one statement per line where it can;
then brotli-11 (or lzma) and base85. The stub is

    import brotli as C,base64 as B
    exec(C.decompress(B.b85decode('...')))

so the packed file runs as the original in the module's own namespace (imports, __name__,
dataclasses all behave the same). Pure functions: text in, text out.
"""

from __future__ import annotations

import base64
import lzma

from pgolf.errors import PgolfError

PACKERS = ("brotli", "lzma")


def minify_source(source: str) -> str:
    """python-minifier with the frontier's settings (names and literals untouched). A module that
    defines torch.library custom ops keeps its argument and return annotations: torch reads each
    op's schema from them."""
    try:
        import python_minifier
    except ImportError:
        raise PgolfError("packing code needs python-minifier (pip install python-minifier)") from None
    signatures_needed = "custom_op(" in source
    annotations = python_minifier.RemoveAnnotationsOptions(
        remove_variable_annotations=True, remove_return_annotations=not signatures_needed,
        remove_argument_annotations=not signatures_needed, remove_class_attribute_annotations=False)
    return python_minifier.minify(source, remove_annotations=annotations, remove_literal_statements=True,
                                  hoist_literals=False, rename_locals=False, rename_globals=False,
                                  remove_asserts=True, prefer_single_line=True)


def _compress(data: bytes, packer: str) -> bytes:
    if packer == "brotli":
        import brotli

        return brotli.compress(data, quality=11)
    if packer == "lzma":  # the .lzma container: its header is smaller than xz's; lzma.decompress reads both
        return lzma.compress(data, format=lzma.FORMAT_ALONE, preset=9 | lzma.PRESET_EXTREME)
    raise PgolfError(f"unknown code packer {packer!r}; known: {', '.join(PACKERS)}")


def pack_source(source: str, packer: str = "brotli", minify: bool = True) -> str:
    """The two-line stub that runs `source`; its length is what the code counts as."""
    text = minify_source(source) if minify else source
    encoded = base64.b85encode(_compress(text.encode("utf-8"), packer)).decode("ascii")
    return f"import {packer} as C,base64 as B\nexec(C.decompress(B.b85decode({encoded!r})))\n"


def packed_bytes(source: str, packer: str = "brotli") -> int:
    return len(pack_source(source, packer).encode("utf-8"))

"""An offline demo corpus: the docstrings of the installed Python standard library.

Every machine that runs pgolf has Python, and the standard library's docstrings
are English prose written by people (PSF licence), so they make a small real-text
corpus that needs no download. The `.py` files under
`sysconfig.get_paths()["stdlib"]` are parsed with `ast` (never imported: importing
runs code and is slow); test suites, `site-packages` and generated codec tables
are skipped.

One module is one document: its module, class and function docstrings in source
order, separated by blank lines. Whole modules (rather than single docstrings)
give documents of web-page length, and a validation split made of whole modules
does not share a class's docstrings with the training split.

The corpus depends on the Python version (docstrings change between releases);
the same Python always yields the identical bytes. `write_stdlib_corpus` records
the version and the sha256 of the file it writes.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import platform
import sysconfig
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from pgolf.data.tokenizer import sha256_file
from pgolf.errors import PgolfError

# Folder names skipped anywhere below the stdlib root: test suites, third-party
# packages, build leftovers, and the machine-generated codec tables.
SKIPPED_FOLDERS = frozenset({
    "test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib-dynload",
    "encodings", "_bundled",
})
DEFAULT_MIN_DOCSTRING_CHARS = 40  # drops one-liners such as "Return self." that carry no prose
DEFAULT_MIN_CHARS = 200  # a document shorter than a short paragraph is not worth a bos token

_DOCUMENTED_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class CorpusInfo:
    path: Path
    documents: int
    bytes: int  # UTF-8 bytes of the document texts (what bits per byte counts)
    file_bytes: int  # bytes of the .jsonl file
    sha256: str  # of the .jsonl file
    python_version: str


def stdlib_dir() -> Path:
    """The folder holding this Python's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_source_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Every `.py` file below `root` (default: the stdlib), sorted by relative path, tests skipped."""
    root = Path(root) if root is not None else stdlib_dir()
    if not root.is_dir():
        raise PgolfError(f"standard library folder {root} does not exist")
    files = []
    for folder, subfolders, names in os.walk(root):
        # Pruning in place stops os.walk from descending; os.walk does not follow symlinks.
        subfolders[:] = [name for name in subfolders
                         if name not in SKIPPED_FOLDERS and not name.startswith("config-")]
        files.extend(Path(folder) / name for name in names if name.endswith(".py"))
    return sorted(files, key=lambda path: path.relative_to(root).as_posix())


def _docstrings_in_source_order(node: ast.AST) -> Iterator[str]:
    if isinstance(node, _DOCUMENTED_NODES):
        docstring = ast.get_docstring(node, clean=False)
        if docstring:
            yield docstring
    for child in ast.iter_child_nodes(node):
        yield from _docstrings_in_source_order(child)


def clean_docstring(text: str) -> str:
    """Stable cleaning: uniform newlines, `inspect.cleandoc` indentation, no trailing spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in inspect.cleandoc(text).split("\n")]
    return "\n".join(lines).strip()


def module_document(source: bytes, min_docstring_chars: int = DEFAULT_MIN_DOCSTRING_CHARS) -> str:
    """All docstrings of one module's source, cleaned, deduplicated, joined by blank lines.

    Returns "" when the source does not parse (a few stdlib files are deliberately
    broken or Python-2 samples).
    """
    with warnings.catch_warnings():
        # Invalid escape sequences in old docstrings warn on newer Pythons; the text is still fine.
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return ""
    seen: set[str] = set()
    kept = []
    for raw in _docstrings_in_source_order(tree):
        text = clean_docstring(raw)
        # Overridden methods often repeat their parent's docstring word for word.
        if len(text) >= min_docstring_chars and text not in seen:
            seen.add(text)
            kept.append(text)
    return "\n\n".join(kept)


def iter_stdlib_documents(min_chars: int = DEFAULT_MIN_CHARS,
                          min_docstring_chars: int = DEFAULT_MIN_DOCSTRING_CHARS,
                          root: str | os.PathLike | None = None) -> Iterator[str]:
    """One document per standard-library module, in sorted file order, duplicates dropped."""
    seen: set[str] = set()
    for path in stdlib_source_files(root):
        document = module_document(path.read_bytes(), min_docstring_chars)
        if len(document) < min_chars:
            continue
        digest = hashlib.sha256(document.encode("utf-8")).hexdigest()
        if digest in seen:  # e.g. a compatibility alias module that copies another
            continue
        seen.add(digest)
        yield document


def _hash_order_key(text: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\n".encode("utf-8") + text.encode("utf-8")).digest()


def split_documents(documents: Sequence[str], val_fraction: float,
                    seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split by the sha256 of each text (salted by `seed`).

    The stdlib is walked alphabetically, so "the first N documents" would hold out
    only `__future__` ... `asyncio`; ranking by hash draws the held-out modules from
    everywhere. Exactly `round(val_fraction * n)` documents go to validation (at
    least one, and at least one stays for training, when 0 < val_fraction and n >= 2).
    Both lists keep the input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise PgolfError(f"val_fraction must be in [0, 1), got {val_fraction}")
    count = len(documents)
    num_val = round(val_fraction * count)
    if val_fraction > 0 and count >= 2:
        num_val = min(max(num_val, 1), count - 1)
    ranked = sorted(range(count), key=lambda index: _hash_order_key(documents[index], seed))
    val_indices = set(ranked[:num_val])
    train = [text for index, text in enumerate(documents) if index not in val_indices]
    val = [text for index, text in enumerate(documents) if index in val_indices]
    return train, val


def select_within_bytes(documents: Sequence[str], max_bytes: int | None) -> list[str]:
    """Documents (input order kept) whose UTF-8 texts sum to at most `max_bytes`.

    Candidates are taken in hash order, not file order, so a capped corpus samples
    the whole library instead of its alphabetical beginning.
    """
    if max_bytes is None:
        return list(documents)
    if max_bytes <= 0:
        raise PgolfError(f"max_bytes must be positive, got {max_bytes}")
    chosen: set[int] = set()
    total = 0
    for index in sorted(range(len(documents)), key=lambda i: _hash_order_key(documents[i], 0)):
        size = len(documents[index].encode("utf-8"))
        if total + size <= max_bytes:
            chosen.add(index)
            total += size
    return [text for index, text in enumerate(documents) if index in chosen]


def write_jsonl(path: str | os.PathLike, documents: Iterable[str]) -> tuple[int, int]:
    """Write `{"text": ...}` lines atomically; returns (documents, text bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    count = text_bytes = 0
    with open(temporary, "w", encoding="utf-8", newline="\n") as handle:
        for text in documents:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            count += 1
            text_bytes += len(text.encode("utf-8"))
    os.replace(temporary, path)
    return count, text_bytes


def write_stdlib_corpus(path: str | os.PathLike, max_bytes: int | None = None,
                        min_chars: int = DEFAULT_MIN_CHARS,
                        root: str | os.PathLike | None = None) -> CorpusInfo:
    """Extract the stdlib docstring corpus to a `.jsonl` file that `pgolf data build` reads."""
    documents = select_within_bytes(list(iter_stdlib_documents(min_chars=min_chars, root=root)), max_bytes)
    if not documents:
        raise PgolfError(f"no docstrings of at least {min_chars} characters found under "
                         f"{root if root is not None else stdlib_dir()}")
    count, text_bytes = write_jsonl(path, documents)
    path = Path(path)
    return CorpusInfo(path=path, documents=count, bytes=text_bytes, file_bytes=path.stat().st_size,
                      sha256=sha256_file(path), python_version=platform.python_version())

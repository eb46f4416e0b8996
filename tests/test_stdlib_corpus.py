"""The offline stdlib docstring corpus: extraction rules, the .jsonl file, the hash split."""

from __future__ import annotations

import hashlib
import json
import platform
import textwrap

import pytest

from pgolf.data.stdlib_corpus import (
    clean_docstring,
    iter_stdlib_documents,
    module_document,
    select_within_bytes,
    split_documents,
    stdlib_dir,
    stdlib_source_files,
    write_stdlib_corpus,
)
from pgolf.errors import PgolfError

LONG = "This sentence is here so that the docstring is long enough to be kept in the corpus."

MODULE_B = f'''"""Module b explains things.

    {LONG}
    """

class Widget:
    """A widget holds parts.

    {LONG}
    """

    def size(self):
        """Short."""

    def copy(self):
        """Return a copy of the widget, deep enough that changing one never changes the other."""

    def clone(self):
        """Return a copy of the widget, deep enough that changing one never changes the other."""

async def fetch():
    """Fetch the widget from somewhere far away and bring it back here for further use."""
'''

MODULE_A = f'''def helper():
    """Helper explains how a helper helps when it helps. {LONG}"""
'''


def make_fake_stdlib(root):
    (root / "pkg" / "tests").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "site-packages").mkdir()
    (root / "encodings").mkdir()
    (root / "b.py").write_text(MODULE_B)
    (root / "a.py").write_text(MODULE_A)
    (root / "pkg" / "__init__.py").write_text(MODULE_A.replace("helper", "package_helper"))
    (root / "pkg" / "alias.py").write_text(MODULE_A)  # same text as a.py: a duplicate document
    (root / "pkg" / "tests" / "test_pkg.py").write_text(f'"""Tests. {LONG}"""\n')
    (root / "test" / "test_a.py").write_text(f'"""Tests. {LONG}"""\n')
    (root / "site-packages" / "third.py").write_text(f'"""Third party. {LONG}"""\n')
    (root / "encodings" / "cp999.py").write_text(f'"""Generated codec. {LONG}"""\n')
    (root / "broken.py").write_text(f'"""Broken. {LONG}"""\nprint "python 2"\n')
    (root / "notes.txt").write_text(f"Not Python. {LONG}")
    latin = f'# -*- coding: latin-1 -*-\n"""Caf\xe9 au lait is described here. {LONG}"""\n'
    (root / "latin.py").write_bytes(latin.encode("latin-1"))
    return root


def test_clean_docstring_dedents_and_normalises():
    raw = "First line.\r\n\n        indented body  \n          more\n    "
    assert clean_docstring(raw) == "First line.\n\nindented body\n  more"


def test_module_document_keeps_long_unique_docstrings_in_source_order():
    document = module_document(MODULE_B.encode(), min_docstring_chars=40)
    parts = document.split("\n\n")
    assert parts == [
        "Module b explains things.", LONG,
        "A widget holds parts.", LONG,
        "Return a copy of the widget, deep enough that changing one never changes the other.",
        "Fetch the widget from somewhere far away and bring it back here for further use.",
    ]
    assert "Short." not in document
    assert module_document(b'print "python 2"\n') == ""


def test_source_files_skip_tests_third_party_and_generated(tmp_path):
    root = make_fake_stdlib(tmp_path)
    names = [path.relative_to(root).as_posix() for path in stdlib_source_files(root)]
    assert names == ["a.py", "b.py", "broken.py", "latin.py", "pkg/__init__.py", "pkg/alias.py"]


def test_documents_sorted_deduplicated_and_filtered(tmp_path):
    root = make_fake_stdlib(tmp_path)
    documents = list(iter_stdlib_documents(min_chars=100, root=root))
    assert len(documents) == 4  # a, b, latin, pkg; alias duplicates a; broken does not parse
    assert documents[0].startswith("Helper explains")
    assert documents[1].startswith("Module b explains")
    assert documents[2].startswith("Caf\u00e9 au lait")  # the coding cookie was honoured
    assert documents[3].startswith("Helper explains how a package_helper")  # pkg/__init__.py
    assert list(iter_stdlib_documents(min_chars=10_000, root=root)) == []


def test_write_corpus_is_jsonl_with_counts_and_reproducible(tmp_path):
    root = make_fake_stdlib(tmp_path / "lib")
    first = write_stdlib_corpus(tmp_path / "out" / "corpus.jsonl", min_chars=100, root=root)
    lines = (tmp_path / "out" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(line)["text"] for line in lines]
    assert texts == list(iter_stdlib_documents(min_chars=100, root=root))
    assert first.documents == 4
    assert first.bytes == sum(len(text.encode("utf-8")) for text in texts)
    assert first.file_bytes == (tmp_path / "out" / "corpus.jsonl").stat().st_size
    assert first.sha256 == hashlib.sha256((tmp_path / "out" / "corpus.jsonl").read_bytes()).hexdigest()
    assert first.python_version == platform.python_version()
    second = write_stdlib_corpus(tmp_path / "again.jsonl", min_chars=100, root=root)
    assert second.sha256 == first.sha256
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_max_bytes_caps_the_text_and_errors_are_clear(tmp_path):
    root = make_fake_stdlib(tmp_path / "lib")
    documents = list(iter_stdlib_documents(min_chars=100, root=root))
    sizes = [len(text.encode("utf-8")) for text in documents]
    cap = sum(sizes) - 1
    capped = select_within_bytes(documents, cap)
    assert 0 < len(capped) < len(documents)
    assert sum(len(text.encode("utf-8")) for text in capped) <= cap
    assert [text for text in documents if text in capped] == capped  # file order kept
    info = write_stdlib_corpus(tmp_path / "capped.jsonl", max_bytes=cap, min_chars=100, root=root)
    assert info.bytes <= cap
    with pytest.raises(PgolfError, match="no docstrings"):
        write_stdlib_corpus(tmp_path / "none.jsonl", min_chars=10_000, root=root)
    with pytest.raises(PgolfError, match="does not exist"):
        list(iter_stdlib_documents(root=tmp_path / "missing"))


def test_split_is_deterministic_exact_and_not_a_prefix():
    documents = [f"document number {index} " * 5 for index in range(200)]
    train, val = split_documents(documents, 0.1, seed=0)
    assert len(val) == 20 and len(train) == 180
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(documents)
    assert val == [text for text in documents if text in set(val)]  # input order kept
    assert val != documents[:20]
    assert split_documents(documents, 0.1, seed=0) == (train, val)
    assert split_documents(documents, 0.1, seed=1)[1] != val
    # the assignment follows the text, not the position
    assert set(split_documents(list(reversed(documents)), 0.1, seed=0)[1]) == set(val)


def test_split_edge_cases():
    assert split_documents(["one", "two"], 0.01)[1] != []  # at least one held out
    assert len(split_documents(["one", "two", "three"], 0.9)[0]) == 1  # at least one kept
    assert split_documents(["one", "two"], 0.0) == (["one", "two"], [])
    with pytest.raises(PgolfError, match="val_fraction"):
        split_documents(["one"], 1.0)


def test_real_stdlib_package_gives_english_text():
    json_package = stdlib_dir() / "json"
    documents = list(iter_stdlib_documents(root=json_package))
    assert documents and all(len(text) >= 200 for text in documents)
    assert any("JSON" in text and " the " in text for text in documents)


@pytest.mark.slow
def test_whole_stdlib_corpus_is_reproducible(tmp_path):
    first = write_stdlib_corpus(tmp_path / "first.jsonl")
    second = write_stdlib_corpus(tmp_path / "second.jsonl")
    assert first.sha256 == second.sha256
    assert first.documents > 100 and first.bytes > 500_000

"""The CaseOps transform and the sidecar's per-token bytes: frontier.md §1-§2 check vectors and round trips."""

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.data import caseops
from pgolf.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE
from pgolf.data.sidecar import character_bytes, token_bytes

# frontier.md §1: the published tokenizer's file and the check vectors computed with it
PUBLISHED_TOKENIZER = "fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model"
PUBLISHED_SHA256 = "97754754561f20def5edd99765ca0668f880bd94e67316d54aa10ab25f45cc4d"
CHECK_VECTORS = [
    # text, CaseOps form, ids, the surface of each id, bytes per token
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch",
     [4, 320, 8133, 5, 5566, 8136, 8133, 4, 1632, 1709],
     [TITLE, "the", " ", ALLCAPS, "nas", "a", " ", TITLE, "la", "unch"],
     [0, 3, 1, 0, 3, 1, 1, 0, 2, 4]),
    ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i",
     [8138, 6, 2087, 8133, 4, 3094, 6, 8136, 6, 8138],
     ["i", CAPNEXT, "phone", " ", TITLE, "open", CAPNEXT, "a", CAPNEXT, "i"],
     [1, 0, 5, 1, 0, 4, 0, 1, 0, 1]),
]


@pytest.mark.parametrize("text, transformed", [
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
    ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i"),
    ("I saw A cat", f"{TITLE}i saw {TITLE}a cat"),  # one upper-case letter: TITLE, never ALLCAPS
    ("ABc aBC McDonald", f"{TITLE}a{CAPNEXT}bc a{CAPNEXT}b{CAPNEXT}c {TITLE}mc{CAPNEXT}donald"),
    ("ÉCOLE Zürich", f"É{ALLCAPS}cole {TITLE}z\u00fcrich"),  # non-ASCII letters untouched, they end a run
    ("x2Y_Z", f"x2{TITLE}y_{TITLE}z"),
    (f"a{TITLE}b {ESC}", f"a{ESC}{TITLE}b {ESC}{ESC}"),  # literal marker characters are escaped
    ("", ""),
])
def test_transform_check_vectors(text, transformed):
    assert caseops.encode(text) == transformed
    assert caseops.decode(transformed) == text


def _reference_encode(text: str) -> str:
    """A straight transcription of the §1 rules, character by character (independent of the module's regex)."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char in (TITLE, ALLCAPS, CAPNEXT, ESC):
            out.append(ESC + char)
            index += 1
            continue
        if not (char.isascii() and char.isalpha()):
            out.append(char)
            index += 1
            continue
        end = index
        while end < len(text) and text[end].isascii() and text[end].isalpha():
            end += 1
        run = text[index:end]
        uppers = [letter.isupper() for letter in run]
        if not any(uppers):
            out.append(run)
        elif len(run) >= 2 and all(uppers):
            out.append(ALLCAPS + run.lower())
        elif uppers[0] and not any(uppers[1:]):
            out.append(TITLE + run.lower())
        else:
            out.append((TITLE if uppers[0] else "") + run[0].lower()
                       + "".join(CAPNEXT + letter.lower() if upper else letter
                                 for letter, upper in zip(run[1:], uppers[1:])))
        index = end
    return "".join(out)


ASCII_HEAVY = st.text(alphabet=st.sampled_from(list("abcXYZ iI\n.,'-0") + [TITLE, ALLCAPS, CAPNEXT, ESC, "é", "東"]),
                      max_size=60)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), ASCII_HEAVY))
def test_round_trip_and_original_bytes(text):
    encoded = caseops.encode(text)
    assert caseops.decode(encoded) == text
    assert encoded == _reference_encode(text)
    assert not any("A" <= char <= "Z" for char in encoded)
    # the sidecar's per-character weights of the CaseOps form add up to the original's UTF-8 length
    assert int(character_bytes(encoded, True).sum()) == len(text.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=40), ASCII_HEAVY), st.data())
def test_any_cut_into_surfaces_keeps_the_total(text, data):
    """However SentencePiece cuts the CaseOps form into surfaces (an ESC apart from the marker it escapes
    included), the per-token bytes sum to the original's length."""
    encoded = caseops.encode(text)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=8)))
    bounds = [0, *cuts, len(encoded)]
    counts = token_bytes(encoded, list(zip(bounds, bounds[1:])), True)
    assert int(counts.sum()) == len(text.encode("utf-8"))


@pytest.mark.parametrize("text, transformed, ids, surfaces, expected", CHECK_VECTORS)
def test_per_token_bytes_check_vectors(text, transformed, ids, surfaces, expected):
    """The surfaces of the published ids, laid over the CaseOps form by hand (frontier §1-§2)."""
    assert caseops.encode(text) == transformed == "".join(surfaces)
    ends = np.cumsum([len(surface) for surface in surfaces])
    offsets = list(zip(np.concatenate(([0], ends[:-1])), ends))
    counts = token_bytes(transformed, offsets, True)
    assert counts.tolist() == expected
    assert counts.sum() == len(text.encode("utf-8"))


def test_character_weights():
    # an escaped marker keeps its 3 bytes, the ESC before it and the operators count 0; ESC ESC is one literal ESC
    text = f"{TITLE}a{ESC}{TITLE}{ESC}{ESC}{ESC}{CAPNEXT}é東😀"
    assert character_bytes(text, True).tolist() == [0, 1, 0, 3, 0, 3, 0, 3, 2, 3, 4]
    assert character_bytes(text, False).tolist() == [3, 1, 3, 3, 3, 3, 3, 3, 2, 3, 4]
    # byte fallback: the pieces of one character, the earlier with empty surfaces (as SentencePiece gives them)
    assert token_bytes("a東", [(0, 1), (1, 1), (1, 1), (1, 2)], True).tolist() == [1, 0, 0, 3]


def _published_tokenizer() -> Path | None:
    candidates = [os.environ.get("PGOLF_CASEOPS_TOKENIZER", ""),
                  f"data/tokenizers/{PUBLISHED_TOKENIZER}"]
    return next((Path(path) for path in candidates if path and Path(path).is_file()), None)


@pytest.mark.skipif(_published_tokenizer() is None,
                    reason=f"the published {PUBLISHED_TOKENIZER} is not present (set PGOLF_CASEOPS_TOKENIZER)")
@pytest.mark.parametrize("text, transformed, ids, surfaces, expected", CHECK_VECTORS)
def test_published_tokenizer_ids_and_bytes(text, transformed, ids, surfaces, expected):
    from pgolf.data.sidecar import encode_with_bytes
    from pgolf.data.tokenizer import check_caseops_tokenizer, load_sentencepiece, sha256_file

    path = _published_tokenizer()
    assert sha256_file(path) == PUBLISHED_SHA256
    processor = load_sentencepiece(path)
    check_caseops_tokenizer(processor, path)
    assert processor.get_piece_size() == 8192 and processor.id_to_piece(8133) == "\u2581"
    got_ids, counts = encode_with_bytes(processor, [caseops.encode(text)], True)[0]
    assert got_ids == ids and counts.tolist() == expected

"""CaseOps: the lossless case transform of the frontier recipe (frontier.md §1), and its inverse.

Upper-case ASCII letters are replaced by lower-case ones plus marker characters
from Unicode's private-use area, so a tokenizer learns one piece for "the",
"The" and "THE":

    TITLE   U+E001  the next letter is upper case ("The" -> TITLE "the")
    ALLCAPS U+E002  the whole letter run is upper case ("NASA" -> ALLCAPS "nasa")
    CAPNEXT U+E003  the next letter is upper case, inside a mixed-case run
    ESC     U+E004  the next character is a literal marker character of the text

`encode` scans maximal runs of ASCII letters [A-Za-z]; everything else passes
through unchanged, except a literal U+E001..U+E004, which becomes ESC + that
character. A run `w` becomes: `w` when all lower case; ALLCAPS + lower(w) when
at least 2 letters long and all upper case; TITLE + lower(w) when its first
letter is upper case and the rest lower case (one-letter "I", "A" included);
otherwise TITLE (if the first letter is upper case), then the lower-cased
letters with CAPNEXT before every later letter that was upper case.
Non-ASCII letters are never touched. `decode(encode(s)) == s` for every string.

`decode` also reads text that did not come from `encode` (for instance the
text SentencePiece gives back after its normalisation): a marker with no
letter after it is dropped and an upper-case letter stays as it is.
"""

from __future__ import annotations

import re

TITLE = "\ue001"
ALLCAPS = "\ue002"
CAPNEXT = "\ue003"
ESC = "\ue004"
MARKERS = (TITLE, ALLCAPS, CAPNEXT, ESC)  # the tokenizer's user-defined symbols, ids 4..7 in this order
NAME = "caseops_v1"

_LETTER_RUN_OR_MARKER = re.compile(r"[A-Za-z]+|[\ue001-\ue004]")


def _encode_run(run: str) -> str:
    lower = run.lower()
    if run == lower:
        return run
    if len(run) >= 2 and run.isupper():
        return ALLCAPS + lower
    first_upper = run[0].isupper()
    rest = run[1:]
    if first_upper and rest == rest.lower():
        return TITLE + lower
    pieces = [TITLE] if first_upper else []
    pieces.append(lower[0])
    for letter in rest:
        pieces.append(CAPNEXT + letter.lower() if letter.isupper() else letter)
    return "".join(pieces)


def _encode_match(match: re.Match) -> str:
    token = match.group(0)
    if token in MARKERS:
        return ESC + token
    return _encode_run(token)


def encode(text: str) -> str:
    """The CaseOps form of `text` (a pure function; see the module docstring)."""
    return _LETTER_RUN_OR_MARKER.sub(_encode_match, text)


def decode(text: str) -> str:
    """The original text of a CaseOps string: the inverse of `encode`."""
    out: list[str] = []
    position, length = 0, len(text)
    while position < length:
        char = text[position]
        if char == ESC:
            if position + 1 < length:
                out.append(text[position + 1])
            position += 2
        elif char == ALLCAPS:
            end = position + 1
            while end < length and "a" <= text[end] <= "z":
                end += 1
            out.append(text[position + 1:end].upper())
            position = end
        elif char in (TITLE, CAPNEXT):
            if position + 1 < length and "a" <= text[position + 1] <= "z":
                out.append(text[position + 1].upper())
                position += 2
            else:
                position += 1  # a marker with no letter to act on: nothing of the original
        else:
            out.append(char)
            position += 1
    return "".join(out)

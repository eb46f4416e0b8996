"""Seeded synthetic English-like documents for tests and demos.

Words come from a small fixed list drawn with Zipfian frequencies and are put
into simple sentences (determiner, adjective, noun, verb, ...). A few
documents carry digits, punctuation and characters outside a small vocabulary
(accents, CJK, emoji) so that tokenizers trained on them meet byte fallback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

_DETERMINERS = ["the", "a", "this", "that", "every", "some", "my", "our"]
_ADJECTIVES = ["small", "large", "quiet", "bright", "old", "new", "green", "quick", "heavy", "simple",
               "strange", "warm", "cold", "early", "late", "happy"]
_NOUNS = ["cat", "dog", "river", "model", "city", "house", "tree", "garden", "letter", "engine", "bird",
          "window", "teacher", "market", "song", "road", "field", "stone", "machine", "child", "book", "ship"]
_VERBS = ["sees", "finds", "likes", "builds", "carries", "follows", "reads", "opens", "paints", "moves",
          "watches", "holds", "writes", "keeps"]
_ADVERBS = ["slowly", "quietly", "often", "never", "again", "today", "always"]
_CONNECTORS = ["and", "but", "because", "while", "so"]
_RARE = ["café", "naïve", "Zürich", "東京", "😀", "façade", "smörgåsbord", "π≈3.14"]


def _zipf_choice(rng: np.random.Generator, words: list[str]) -> str:
    ranks = np.arange(1, len(words) + 1)
    weights = 1.0 / ranks
    return words[rng.choice(len(words), p=weights / weights.sum())]


def _sentence(rng: np.random.Generator, rare_probability: float) -> str:
    def noun_phrase() -> str:
        parts = [_zipf_choice(rng, _DETERMINERS)]
        if rng.random() < 0.5:
            parts.append(_zipf_choice(rng, _ADJECTIVES))
        parts.append(_zipf_choice(rng, _NOUNS))
        return " ".join(parts)

    words = [noun_phrase(), _zipf_choice(rng, _VERBS), noun_phrase()]
    if rng.random() < 0.3:
        words.append(_zipf_choice(rng, _ADVERBS))
    if rng.random() < 0.3:
        words += [_zipf_choice(rng, _CONNECTORS), noun_phrase(), _zipf_choice(rng, _VERBS), noun_phrase()]
    if rng.random() < 0.15:
        words.append(f"in {int(rng.integers(1800, 2030))}")
    if rng.random() < rare_probability:
        words.insert(int(rng.integers(0, len(words) + 1)), _RARE[int(rng.integers(len(_RARE)))])
    text = " ".join(words)
    return text[0].upper() + text[1:] + str(rng.choice([".", ".", ".", "!", "?"]))


def synthetic_documents(num_documents: int, seed: int = 0, min_sentences: int = 2, max_sentences: int = 12,
                        rare_probability: float = 0.05) -> list[str]:
    """`num_documents` documents, each a few sentences over one or two lines; same seed, same text."""
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(num_documents):
        sentences = [_sentence(rng, rare_probability) for _ in range(int(rng.integers(min_sentences, max_sentences + 1)))]
        cut = int(rng.integers(1, len(sentences) + 1))
        lines = [" ".join(sentences[:cut]), " ".join(sentences[cut:])]
        documents.append("\n".join(line for line in lines if line))
    return documents


def write_txt(path, documents: list[str]) -> Path:
    """Documents separated by one blank line (the layout `pgolf data build` reads from .txt)."""
    path = Path(path)
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, documents: list[str]) -> Path:
    """One `{"text": ...}` object per line."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as handle:
        for document in documents:
            handle.write(json.dumps({"text": document}, ensure_ascii=False) + "\n")
    return path

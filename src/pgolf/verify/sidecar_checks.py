"""The byte sidecar: its shape, and its byte counts against the original text of val documents.

When a dataset has a sidecar (`fineweb_val_bytes_*.bin`), every evaluation
divides by its counts, so a sidecar that counts too much lowers the score.
Two checks:

- `sidecar.shape`: one value per val token, shard for shard; 0 at every bos;
  the sum the manifest records (what `pgolf.data.shards.load_val_bytes`
  checks when a run opens the dataset).
- `sidecar.document_bytes`: for a sample of val documents, the values of a
  document must sum to the UTF-8 length of its original text without the
  whitespace SentencePiece drops at its ends. The original text is the
  corpus document itself when the corpus is at hand (a built dataset's
  manifest names its sources; `--corpus` gives the official one), and then
  the document's tokens must also be exactly the encoding of that text. Without
  the corpus the reference is the text the tokens decode to (CaseOps undone):
  exact where SentencePiece's normaliser left the text alone, but a run of
  spaces or newlines, or an NFKC-changed character, is shorter there than in
  the original, so a document whose sidecar exceeds its decoded text is
  reported as unverifiable, and only a sidecar below it fails.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from pgolf.data import caseops
from pgolf.data.shards import ShardError, find_manifest, load_val_bytes
from pgolf.verify.report import Check
from pgolf.verify.tokenizer_checks import document_starts

DEFAULT_SAMPLE_DOCS = 2000


def check_sidecar_shape(dataset_dir, val_tokens: np.ndarray) -> tuple[Check, np.ndarray | None]:
    """The sidecar as the evaluation opens it; the check fails with the opener's message."""
    try:
        values = load_val_bytes(dataset_dir, val_tokens)
    except ShardError as error:
        return Check("sidecar.shape", False, str(error)), None
    if values is None:
        return Check("sidecar.shape", False, f"{dataset_dir}: no fineweb_val_bytes_*.bin sidecar"), None
    return Check("sidecar.shape", True,
                 f"{values.size:,} byte counts, one per val token, shard for shard; 0 at every bos; "
                 f"sum {int(values.sum(dtype=np.int64)):,} bytes ({val_tokens.size / max(int(values.sum()), 1):.4f} "
                 f"tokens/byte)"), values


def corpus_from_manifest(dataset_dir) -> tuple[list[Path], bool] | None:
    """(source files, one_doc_per_file) a built dataset was made from, when its manifest names them and all exist."""
    found = find_manifest(Path(dataset_dir))
    if found is None:
        return None
    manifest = found[1]
    sources = manifest.get("sources")
    if not isinstance(sources, list) or not sources or not all(Path(str(path)).is_file() for path in sources):
        return None
    return [Path(str(path)) for path in sources], bool(manifest.get("one_doc_per_file", False))


def sample_documents(num_docs: int, sample_docs: int, seed: int) -> np.ndarray:
    """Sorted document indices: all of them, or `sample_docs` drawn without replacement."""
    if num_docs <= sample_docs:
        return np.arange(num_docs)
    return np.sort(np.random.default_rng(seed).choice(num_docs, size=sample_docs, replace=False))


def kept_text(text: str, processor) -> str:
    """`text` without the characters at its ends that SentencePiece's normaliser removes (whitespace and
    the like): the span whose bytes the sidecar counts."""
    begin, end = 0, len(text)
    while begin < end and processor.normalize(text[begin]) == "":
        begin += 1
    while end > begin and processor.normalize(text[end - 1]) == "":
        end -= 1
    return text[begin:end]


def _first_token_difference(processor, text: str, stored: np.ndarray, is_caseops: bool) -> str:
    """Where in a document its stored counts first part from the counts recomputed from its text."""
    from pgolf.data.sidecar import encode_with_bytes

    ids, counts = encode_with_bytes(processor, [caseops.encode(text) if is_caseops else text], is_caseops)[0]
    for position, (got, expected) in enumerate(zip(stored.tolist(), counts.tolist())):
        if got != expected:
            return (f"; first at token {position + 1} ({processor.id_to_piece(ids[position])!r}): "
                    f"sidecar {got}, its surface {expected}")
    return ""


def check_sidecar_documents(val_tokens: np.ndarray, val_bytes: np.ndarray, processor, is_caseops: bool, bos_id: int,
                            corpus: tuple[list[Path], bool] | None = None, sample_docs: int = DEFAULT_SAMPLE_DOCS,
                            seed: int = 0) -> Check:
    """Sidecar sums of sampled val documents against the bytes of their original (or decoded) text."""
    from pgolf.data.build import iter_documents

    tokens = np.asarray(val_tokens)
    starts = document_starts(tokens, bos_id)
    ends = np.append(starts[1:], tokens.size)
    chosen = sample_documents(starts.size, sample_docs, seed)
    originals: dict[int, str] = {}
    if corpus is not None and chosen.size:
        wanted = set(chosen.tolist())
        documents = itertools.islice(iter_documents(*corpus), int(chosen[-1]) + 1)
        originals = {index: text for index, text in enumerate(documents) if index in wanted}
    mismatches, unverifiable_docs, unverifiable_bytes = [], 0, 0
    for doc in chosen.tolist():
        start, end = int(starts[doc]), int(ends[doc])
        body = start + int(tokens[start] == bos_id)
        ids = tokens[body:end].tolist()
        stored = np.asarray(val_bytes[body:end], dtype=np.int64)
        total = int(np.asarray(val_bytes[start:end], dtype=np.int64).sum())  # the bos included: it must add 0
        where = f"val doc {doc} (tokens {start:,}..{end - 1:,})"
        if doc in originals:
            original = originals[doc]
            if ids != processor.encode(caseops.encode(original) if is_caseops else original):
                mismatches.append(f"{where}: its tokens are not the encoding of corpus document {doc}")
                continue
            reference = len(kept_text(original, processor).encode("utf-8"))
            if total != reference:
                mismatches.append(f"{where}: sidecar sums to {total:,} bytes, the original text has {reference:,} "
                                  f"({total - reference:+,})"
                                  + _first_token_difference(processor, original, stored, is_caseops))
            continue
        decoded = processor.decode(ids)
        reference = len((caseops.decode(decoded) if is_caseops else decoded).encode("utf-8"))
        if total < reference:
            mismatches.append(f"{where}: sidecar sums to {total:,} bytes, less than the {reference:,} of the text "
                              f"its tokens decode to ({total - reference:+,})")
        elif total > reference:
            unverifiable_docs += 1
            unverifiable_bytes += total - reference
    source = (f"original corpus text ({', '.join(path.name for path in corpus[0])})" if corpus is not None
              else "decoded text (no corpus at hand; pass --corpus for an exact check)")
    scope = f"{chosen.size:,} sampled val docs (of {starts.size:,}, seed {seed})"
    if mismatches:
        return Check("sidecar.document_bytes", False,
                     f"{len(mismatches):,} of {scope} disagree with their {source}: {mismatches[0]}",
                     tuple(mismatches))
    note = (f"; {unverifiable_docs:,} docs count {unverifiable_bytes:,} bytes more than their decoded text "
            f"(whitespace runs or NFKC-changed characters SentencePiece normalised; unverifiable without "
            f"the corpus)" if unverifiable_docs else "")
    equal = chosen.size - unverifiable_docs
    return Check("sidecar.document_bytes", True, f"{equal:,} of {scope}: sidecar sum == UTF-8 length of their "
                                                 f"{source}{note}")

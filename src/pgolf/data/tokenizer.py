"""SentencePiece training with the challenge's settings, and file hashing.

The official sp1024 tokenizer is a BPE model with ids pad=0, bos=1, eos=2,
unk=3, byte fallback, digits split, nmt_nfkc normalisation, no dummy prefix
and character coverage 0.999. `train_sentencepiece` reproduces those settings
for any vocabulary size, training on a bounded sample of documents. With
`is_caseops` it trains the frontier's CaseOps tokenizer instead (frontier.md
§1): the four CaseOps markers as user-defined symbols at ids 4-7,
`hard_vocab_limit` off and pieces of at most 16 characters, on text the
caller has already CaseOps-encoded.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Iterable, Iterator

from pgolf.errors import PgolfError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
DEFAULT_SAMPLE_BYTES = 200_000_000  # bound on the text SentencePiece holds in memory while training


def sha256_file(path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _sample_sentences(documents: Iterable[str], max_bytes: int) -> Iterator[str]:
    """Lines of the first documents, until `max_bytes` of UTF-8 have been given out."""
    used = 0
    for document in documents:
        for line in document.split("\n"):
            if not line.strip():
                continue
            used += len(line.encode("utf-8")) + 1
            if used > max_bytes:
                return
            yield line


def train_sentencepiece(documents: Iterable[str], model_path, vocab_size: int,
                        max_sample_bytes: int = DEFAULT_SAMPLE_BYTES, num_threads: int = 1,
                        is_caseops: bool = False) -> Path:
    """Train a BPE model with the official settings; writes `model_path` (and the .vocab beside it)."""
    import sentencepiece as spm

    from pgolf.data.caseops import MARKERS

    model_path = Path(model_path)
    if model_path.suffix != ".model":
        raise PgolfError(f"tokenizer path {model_path} must end in .model")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_buffer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sample_sentences(documents, max_sample_bytes),
            model_writer=model_buffer,
            vocab_size=vocab_size,
            model_type="bpe",
            pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False,
            character_coverage=0.999,
            remove_extra_whitespaces=True,
            max_sentencepiece_length=16,
            user_defined_symbols=list(MARKERS) if is_caseops else [],
            hard_vocab_limit=not is_caseops,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as error:
        raise PgolfError(f"SentencePiece training for {model_path} failed: {str(error).splitlines()[-1]}") from None
    temporary = model_path.with_name(model_path.name + ".tmp")
    temporary.write_bytes(model_buffer.getvalue())
    temporary.replace(model_path)
    write_vocab_listing(model_path)
    return model_path


def write_vocab_listing(model_path) -> Path:
    """The human-readable `.vocab` beside a model: `piece<TAB>score` per id."""
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    lines = [f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}" for i in range(processor.get_piece_size())]
    vocab_path = Path(model_path).with_suffix(".vocab")
    vocab_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab_path


def load_sentencepiece(model_path):
    import sentencepiece as spm

    model_path = Path(model_path)
    if not model_path.is_file():
        raise PgolfError(f"tokenizer {model_path} not found")
    try:
        return spm.SentencePieceProcessor(model_file=str(model_path))
    except (RuntimeError, OSError) as error:
        raise PgolfError(f"{model_path}: not a SentencePiece model ({str(error).splitlines()[-1]})") from None


def check_caseops_tokenizer(processor, where) -> None:
    """PgolfError unless ids 4-7 are the CaseOps markers TITLE, ALLCAPS, CAPNEXT, ESC, each encoded alone."""
    from pgolf.data.caseops import MARKERS

    for offset, marker in enumerate(MARKERS):
        token_id = 4 + offset
        if (token_id >= processor.get_piece_size() or processor.id_to_piece(token_id) != marker
                or processor.encode(marker) != [token_id]):
            raise PgolfError(f"{where}: not a CaseOps tokenizer: id {token_id} must be the user-defined symbol "
                             f"U+{ord(marker):04X}")


def is_caseops_tokenizer(processor) -> bool:
    try:
        check_caseops_tokenizer(processor, "")
    except PgolfError:
        return False
    return True

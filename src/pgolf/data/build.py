"""Corpus -> (optional tokenizer training) -> challenge shards + manifest.json.

Inputs are `.txt` files (documents separated by blank lines, or one document
per file) and `.jsonl` files (one object per line with a `text` field). Each
document becomes `[bos] + encode(text)` (no eos, as in the official export);
the first `val_docs` documents go to `fineweb_val_*.bin`, the rest to
`fineweb_train_*.bin`, `tokens_per_shard` tokens per file. Documents stream
through: they are read lazily, encoded in chunks (optionally by a process
pool, order preserved) and shards are flushed as they fill, so memory stays
bounded by one shard buffer per split.

Nothing in `--out` changes until the build has succeeded: the dataset is
built in a temporary folder beside `--out` and only then swapped in (the old
dataset's shards, manifest and tokenizer replaced, any other file left alone).
A failed build leaves `--out` exactly as it was and no stray files in it. A
file in `--out` that no dataset build made is never overwritten: the build
refuses when it would have to.

With `is_caseops` every document is CaseOps-encoded (`pgolf.data.caseops`)
before tokenising, the tokenizer must carry the four CaseOps markers at ids
4-7 (a trained one gets them), and the val split gets its byte sidecar
`fineweb_val_bytes_*.bin` (`pgolf.data.sidecar`), shard for shard with the
val shards. `sidecar` builds the sidecar for a plain dataset too.

A build never mixes with another: a folder that already holds shards (val,
train or sidecar, of any shard size) or a manifest is refused unless
`overwrite`, and then every one of them is replaced. Stale shards of an earlier build
with fewer val documents are how train came to hold val documents in the
#2127 CaseOps exports (frontier.md §1).

manifest.json follows the official export's shape: `tokenizers` and
`datasets` lists, the dataset entry carrying `stats` (docs/files/tokens per
split); the tokenizer entry carries `model_path` relative to the output folder
and the model's sha256.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from pgolf.data import caseops
from pgolf.data.shards import MANIFEST_NAME, SIDECAR_PREFIX, write_shard
from pgolf.data.sidecar import encode_with_bytes
from pgolf.data.tokenizer import (BOS_ID, EOS_ID, check_caseops_tokenizer, is_caseops_tokenizer,
                                  load_sentencepiece, sha256_file, train_sentencepiece)
from pgolf.errors import PgolfError

DEFAULT_TOKENS_PER_SHARD = 100_000_000
DOCS_PER_CHUNK = 256


def iter_documents(paths: Iterable, one_doc_per_file: bool = False) -> Iterator[str]:
    """Documents of every input file, in order, read lazily; unreadable or non-UTF-8 input is a PgolfError."""
    for path in map(Path, paths):
        if path.is_dir():
            raise PgolfError(f"input {path} is a directory; expected a .txt or .jsonl file")
        if not path.is_file():
            raise PgolfError(f"input {path} not found")
        if path.suffix not in (".jsonl", ".txt"):
            raise PgolfError(f"input {path}: expected a .txt or .jsonl file")
        try:
            if path.suffix == ".jsonl":
                yield from _jsonl_documents(path)
            elif one_doc_per_file:
                text = path.read_text(encoding="utf-8").strip("\n")
                if text.strip():
                    yield text
            else:
                yield from _blank_line_documents(path)
        except UnicodeDecodeError as error:
            raise PgolfError(f"input {path} is not UTF-8 text ({error.reason}); convert it, e.g. "
                             f"`iconv -f latin1 -t utf-8`") from None
        except OSError as error:
            raise PgolfError(f"input {path}: cannot read ({error.strerror or error})") from None


def _jsonl_documents(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PgolfError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise PgolfError(f"{path}:{line_number}: expected an object with a string 'text' field")
            try:
                record["text"].encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800": no UTF-8 text
                raise PgolfError(f"{path}:{line_number}: 'text' holds an unpaired surrogate, not text") from None
            yield record["text"]


def _blank_line_documents(path: Path) -> Iterator[str]:
    lines: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                lines.append(line.rstrip("\n"))
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


# ---------------------------------------------------------------- encoding (possibly in worker processes)

@dataclass(frozen=True)
class _EncodeSettings:
    model_path: str
    is_caseops: bool
    val_docs: int
    with_sidecar: bool


_worker_processor = None
_worker_settings: _EncodeSettings | None = None


def _init_worker(settings: _EncodeSettings) -> None:
    global _worker_processor, _worker_settings
    _worker_processor = load_sentencepiece(settings.model_path)
    _worker_settings = settings


def _encode_chunk(chunk: tuple[int, list[str]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """([bos] + ids, [0] + per-token original bytes or None) for each document, as uint16 arrays.

    `chunk` is (index of its first document, documents); the bytes are computed for val documents only.
    """
    first_index, documents = chunk
    settings = _worker_settings
    texts = [caseops.encode(text) for text in documents] if settings.is_caseops else documents
    num_val = min(max(settings.val_docs - first_index, 0), len(texts)) if settings.with_sidecar else 0
    results = []
    if num_val:
        for ids, counts in encode_with_bytes(_worker_processor, texts[:num_val], settings.is_caseops):
            results.append((np.asarray([BOS_ID, *ids], dtype=np.uint16),
                            np.concatenate(([0], counts)).astype(np.uint16)))
    if num_val < len(texts):
        for ids in _worker_processor.encode(texts[num_val:]):
            results.append((np.asarray([BOS_ID, *ids], dtype=np.uint16), None))
    return results


def _chunks(documents: Iterator[str], size: int) -> Iterator[tuple[int, list[str]]]:
    first_index = 0
    while chunk := list(itertools.islice(documents, size)):
        yield first_index, chunk
        first_index += len(chunk)


class _ShardWriter:
    """Fills a fixed buffer (tokens_per_shard,) and writes `{prefix}_NNNNNN.bin` each time it is full."""

    def __init__(self, out_dir: Path, prefix: str, split: str, tokens_per_shard: int, log):
        self.out_dir, self.prefix, self.split, self.log = out_dir, prefix, split, log
        self.buffer = np.empty(tokens_per_shard, dtype=np.uint16)
        self.fill = 0
        self.num_files = 0
        self.num_tokens = 0
        self.num_docs = 0
        self.total = 0  # sum of the values written (the byte count of a sidecar)

    def add(self, tokens: np.ndarray) -> None:
        self.num_docs += 1
        self.num_tokens += tokens.size
        self.total += int(tokens.sum(dtype=np.int64))
        position = 0
        while position < tokens.size:
            step = min(self.buffer.size - self.fill, tokens.size - position)
            self.buffer[self.fill:self.fill + step] = tokens[position:position + step]
            self.fill += step
            position += step
            if self.fill == self.buffer.size:
                self.flush()

    def flush(self) -> None:
        if self.fill == 0:
            return
        path = self.out_dir / f"{self.prefix}_{self.num_files:06d}.bin"
        write_shard(path, self.buffer[:self.fill])
        self.log(f"wrote {path.name}: {self.fill:,} values")
        self.num_files += 1
        self.fill = 0

    def stats(self) -> dict:
        return {f"docs_{self.split}": self.num_docs, f"files_{self.split}": self.num_files,
                f"tokens_{self.split}": self.num_tokens}


@dataclass
class BuildResult:
    out_dir: Path
    manifest_path: Path
    tokenizer_path: Path
    stats: dict


def existing_dataset_files(out_dir: Path) -> list[Path]:
    """The files of a dataset already in `out_dir`: shards, manifest.json and the tokenizer it names."""
    if not out_dir.is_dir():
        return []
    files = sorted(out_dir.glob("fineweb_*.bin"))  # any shard size, sidecars included: builds never mix
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.is_file():
        files.append(manifest_path)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            named = [item.get("model_path") for item in manifest.get("tokenizers", []) if isinstance(item, dict)]
        except (ValueError, AttributeError, OSError):
            named = []  # a broken manifest is replaced; a file it might have named is left alone
        for name in named:
            # only a plain file name inside out_dir counts; a manifest cannot make us touch other paths
            if isinstance(name, str) and name and Path(name).name == name and (out_dir / name).is_file():
                files.append(out_dir / name)
                if (out_dir / name).with_suffix(".vocab").is_file():
                    files.append((out_dir / name).with_suffix(".vocab"))
    return sorted(set(files))


def _same_bytes(first: Path, second: Path) -> bool:
    return first.stat().st_size == second.stat().st_size and sha256_file(first) == sha256_file(second)


def _swap_in(staging: Path, out_dir: Path, old_files: list[Path]) -> None:
    """Replace the old dataset in `out_dir` by the files built in `staging`; refuses (changing nothing)
    when a new file would replace a different file that no dataset build made."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    new_files = sorted(staging.iterdir())
    keep = set()
    for path in new_files:
        target = out_dir / path.name
        if target.exists() and target not in old_files:
            if target.is_file() and _same_bytes(path, target):
                keep.add(path.name)  # e.g. the --tokenizer given from inside --out
                continue
            raise PgolfError(f"{target} exists and is not part of the dataset in {out_dir}; the build would "
                             "overwrite it: move it away or pick another --out")
    backup = _sibling_folder(out_dir, "old")
    moved_old, moved_new, completed = [], [], False
    try:
        for path in old_files:
            os.replace(path, backup / path.name)
            moved_old.append(path)
        for path in new_files:
            if path.name not in keep:
                os.replace(path, out_dir / path.name)
                moved_new.append(out_dir / path.name)
        completed = True
    except OSError:
        for target in moved_new:  # put everything back as it was
            target.unlink(missing_ok=True)
        for path in moved_old:
            os.replace(backup / path.name, path)
        raise
    finally:
        if completed:
            shutil.rmtree(backup, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                backup.rmdir()  # empty after the roll-back; kept (with the old files) if that failed too


def _sibling_folder(out_dir: Path, purpose: str) -> Path:
    """A new hidden folder beside `out_dir` (same file system, so renames are atomic), made with the
    umask's permissions so that renaming it to `out_dir` gives an ordinary folder."""
    folder = out_dir.parent / f".{out_dir.name}.{purpose}-{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    return folder


def _install_tokenizer(tokenizer: Path | None, vocab_size: int | None, inputs, one_doc_per_file: bool,
                       out_dir: Path, max_sample_bytes: int, is_caseops: bool, log) -> Path:
    if tokenizer is not None:
        processor = load_sentencepiece(tokenizer)  # fail early on a bad file
        if is_caseops:
            check_caseops_tokenizer(processor, tokenizer)
        elif is_caseops_tokenizer(processor):
            raise PgolfError(f"{tokenizer} is a CaseOps tokenizer (markers at ids 4-7); pass --caseops")
        target = out_dir / tokenizer.name
        if tokenizer.resolve() != target.resolve():
            shutil.copyfile(tokenizer, target)
            if tokenizer.with_suffix(".vocab").is_file():
                shutil.copyfile(tokenizer.with_suffix(".vocab"), target.with_suffix(".vocab"))
        return target
    target = out_dir / f"tokenizer_{vocab_size}_bpe{'_caseops' if is_caseops else ''}.model"
    log(f"training a {vocab_size}-piece SentencePiece BPE tokenizer on up to {max_sample_bytes:,} bytes of "
        f"{'CaseOps-encoded ' if is_caseops else ''}text")
    documents = iter_documents(inputs, one_doc_per_file)
    if is_caseops:
        documents = map(caseops.encode, documents)
    return train_sentencepiece(documents, target, vocab_size, max_sample_bytes=max_sample_bytes,
                               is_caseops=is_caseops)


def build_dataset(inputs: list, out_dir, *, tokenizer=None, vocab_size: int | None = None, val_docs: int = 50_000,
                  tokens_per_shard: int = DEFAULT_TOKENS_PER_SHARD, one_doc_per_file: bool = False,
                  workers: int = 1, max_sample_bytes: int = 200_000_000, overwrite: bool = False,
                  is_caseops: bool = False, sidecar: bool | None = None,
                  progress: bool | None = None, log=print) -> BuildResult:
    """Tokenise `inputs` into shards under `out_dir` and write its manifest.json.

    `sidecar` (default: on exactly when `is_caseops`) writes the val split's byte sidecar.
    """
    with_sidecar = is_caseops if sidecar is None else bool(sidecar)
    if is_caseops and not with_sidecar:
        raise PgolfError("a CaseOps dataset needs its byte sidecar: bits per byte must count the original bytes")
    if (tokenizer is None) == (vocab_size is None):
        raise PgolfError("give exactly one of --tokenizer MODEL or --vocab-size V")
    reserved = 264 if is_caseops else 260  # 4 special (+ 4 CaseOps markers) + 256 byte pieces
    if vocab_size is not None and not reserved < vocab_size <= 65536:
        raise PgolfError(f"--vocab-size {vocab_size} must be above {reserved} (special, "
                         f"{'CaseOps marker ' if is_caseops else ''}and 256 byte pieces) and at most 65536")
    if val_docs < 1 or tokens_per_shard < 1 or workers < 1:
        raise PgolfError("--val-docs, --tokens-per-shard and --workers must be positive")
    out_dir = Path(out_dir)
    inputs = [Path(path) for path in inputs]
    next(iter_documents(inputs, one_doc_per_file), None)  # fail early on a missing or unreadable first input
    if out_dir.exists() and not out_dir.is_dir():
        raise PgolfError(f"--out {out_dir} is a file, not a folder")
    old_files = existing_dataset_files(out_dir)
    if old_files and not overwrite:
        raise PgolfError(f"{out_dir} already holds {len(old_files)} file(s) of another build ({old_files[0].name}); "
                         "shards of two builds must never mix: pass --overwrite (replaces them) or pick another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling_folder(out_dir, "build")
    try:
        result = _build_into(staging, out_dir.name, inputs, tokenizer, vocab_size, val_docs, tokens_per_shard,
                             one_doc_per_file, workers, max_sample_bytes, is_caseops, with_sidecar, progress, log)
        _swap_in(staging, out_dir, old_files)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sidecar_note = f" / {result.stats['bytes_val']:,} original bytes in the sidecar" if with_sidecar else ""
    log(f"dataset {out_dir}: {result.stats['docs_val']:,} val docs / {result.stats['tokens_val']:,} tokens"
        f"{sidecar_note}, "
        f"{result.stats['docs_train']:,} train docs / {result.stats['tokens_train']:,} tokens in "
        f"{result.stats['files_train']} shard(s)")
    return BuildResult(out_dir, out_dir / MANIFEST_NAME, out_dir / result.tokenizer_path.name, result.stats)


def _build_into(out_dir: Path, name: str, inputs: list[Path], tokenizer, vocab_size: int | None, val_docs: int,
                tokens_per_shard: int, one_doc_per_file: bool, workers: int, max_sample_bytes: int,
                is_caseops: bool, with_sidecar: bool, progress: bool | None, log) -> BuildResult:
    """The build itself, into an empty folder; the dataset is named `name` in its manifest."""
    model_path = _install_tokenizer(Path(tokenizer) if tokenizer else None, vocab_size, inputs, one_doc_per_file,
                                    out_dir, max_sample_bytes, is_caseops, log)
    processor = load_sentencepiece(model_path)
    if processor.get_piece_size() > 65536:
        raise PgolfError(f"{model_path}: {processor.get_piece_size()} pieces do not fit uint16 shards")

    show_bar = sys.stderr.isatty() if progress is None else progress
    writers = {split: _ShardWriter(out_dir, f"fineweb_{split}", split, tokens_per_shard, log)
               for split in ("val", "train")}
    sidecar_writer = _ShardWriter(out_dir, SIDECAR_PREFIX.rstrip("_"), "val_bytes", tokens_per_shard, log)
    settings = _EncodeSettings(str(model_path), is_caseops, val_docs, with_sidecar)
    chunks = _chunks(iter_documents(inputs, one_doc_per_file), DOCS_PER_CHUNK)
    pool = get_context("spawn").Pool(workers, _init_worker, (settings,)) if workers > 1 else None
    try:
        if pool is None:
            _init_worker(settings)
            encoded_chunks = map(_encode_chunk, chunks)
        else:
            encoded_chunks = pool.imap(_encode_chunk, chunks)  # imap keeps document order
        from tqdm import tqdm

        with tqdm(unit="docs", desc="encoding", disable=not show_bar) as bar:
            document_index = 0
            for encoded in encoded_chunks:
                for tokens, token_bytes in encoded:
                    if document_index == val_docs:  # train starts after the last val document
                        writers["val"].flush()
                        sidecar_writer.flush()
                    if document_index < val_docs:
                        writers["val"].add(tokens)
                        if token_bytes is not None:
                            sidecar_writer.add(token_bytes)
                    else:
                        writers["train"].add(tokens)
                    document_index += 1
                bar.update(len(encoded))
    finally:
        if pool is not None:
            pool.terminate()
    for writer in (*writers.values(), sidecar_writer):
        writer.flush()
    if writers["train"].num_docs == 0:
        raise PgolfError(f"the input holds only {writers['val'].num_docs} documents and --val-docs {val_docs} "
                         "takes them all; lower --val-docs so some are left for training")

    stats = {"docs_total": 0, "files_total": 0, "tokens_total": 0}
    for writer in writers.values():
        stats.update(writer.stats())
    for key in ("docs", "files", "tokens"):
        stats[f"{key}_total"] = stats[f"{key}_val"] + stats[f"{key}_train"]
    if with_sidecar:
        stats.update(files_val_bytes=sidecar_writer.num_files, bytes_val=sidecar_writer.total)
    manifest_path = write_manifest(out_dir, model_path, processor.get_piece_size(), stats, tokens_per_shard,
                                   [str(path) for path in inputs], name=name, one_doc_per_file=one_doc_per_file,
                                   is_caseops=is_caseops, with_sidecar=with_sidecar)
    return BuildResult(out_dir, manifest_path, model_path, stats)


def write_manifest(out_dir: Path, model_path: Path, vocab_size: int, stats: dict, tokens_per_shard: int,
                   sources: list[str], name: str | None = None, one_doc_per_file: bool = False,
                   is_caseops: bool = False, with_sidecar: bool = False) -> Path:
    """`sources` and `one_doc_per_file` let `pgolf verify` re-read the original val documents."""
    tokenizer_name = model_path.stem
    dataset = {
        "name": name or out_dir.name,
        "tokenizer_name": tokenizer_name,
        "path": ".",
        "train_glob": "fineweb_train_*.bin",
        "val_glob": "fineweb_val_[0-9]*.bin",
        "vocab_size": vocab_size,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "stats": stats,
    }
    if with_sidecar:
        dataset["val_bytes_glob"] = f"{SIDECAR_PREFIX}*.bin"
    manifest = {
        "format": "pgolf-dataset-1",
        "shard_size": tokens_per_shard,
        "append_eos": False,
        "sources": sources,
        "one_doc_per_file": one_doc_per_file,
        "tokenizers": [{
            "name": tokenizer_name,
            "kind": "sentencepiece_bpe",
            "vocab_size": vocab_size,
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
            "model_path": model_path.name,
            "sha256": sha256_file(model_path),
            "text_transform": caseops.NAME if is_caseops else "identity",
        }],
        "datasets": [dataset],
    }
    path = out_dir / MANIFEST_NAME
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)
    return path

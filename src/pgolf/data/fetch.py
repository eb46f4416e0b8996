"""Download the official challenge export from the Hugging Face Hub.

Repository `willdepueoai/parameter-golf` (a dataset repo); everything lives
under its `datasets/` folder and is laid out locally without that prefix:

    datasets/manifest.json                                -> DEST/manifest.json
    datasets/datasets/fineweb10B_sp1024/fineweb_*.bin     -> DEST/datasets/fineweb10B_sp1024/
    datasets/tokenizers/fineweb_1024_bpe.{model,vocab}    -> DEST/tokenizers/

The manifest's schema is not documented; the reader is tolerant. Assumed shape
(the one the challenge's export script writes):

    {"datasets":   [{"name": "fineweb10B_sp1024", "tokenizer_name": "...",
                     "stats": {"files_train": 195, "files_val": 1, "tokens_val": ..., ...}}],
     "tokenizers": [{"name": "...", "model_path": "tokenizers/fineweb_1024_bpe.model",
                     "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}]}

The dataset entry is the one named `fineweb10B_<variant>` (or `<variant>`, or
whose name contains the variant). Shard counts are read from `stats` or the
entry itself (`files_train`/`files_val`, `num_train_shards`/...); explicit
file lists (`train_files`/`val_files`) win when present; otherwise names are
derived from the counts (`fineweb_train_{i:06d}.bin`). Missing pieces fall
back to one val shard and the sp1024 tokenizer file names.

Every file is fetched with `hf_hub_download` into DEST/.download/ (its own
temporary names), validated there, then renamed into place: a file under its
final name is always complete. Files already present and valid are skipped,
so rerunning after an interruption fetches only what is missing.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.data.shards import ShardError, validate_shard
from pgolf.errors import PgolfError

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
STAGING_DIR = ".download"
VARIANTS = ("byte260", "sp512", "sp1024", "sp2048", "sp4096")


@dataclass
class FetchPlan:
    dataset_name: str
    val_files: list[str]
    train_files: list[str]  # every train shard the manifest lists, in order
    tokenizer_files: list[str] = field(default_factory=list)  # paths relative to the remote root


def _first_int(mappings: list[dict], keys: tuple[str, ...]) -> int | None:
    for mapping in mappings:
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, (int, float, str)) and str(value).isdigit():
                return int(value)
    return None


def _file_list(mappings: list[dict], keys: tuple[str, ...]) -> list[str] | None:
    for mapping in mappings:
        for key in keys:
            value = mapping.get(key)
            if isinstance(value, list) and all(isinstance(item, str) for item in value):
                return [Path(item).name for item in value]
    return None


def plan_from_manifest(manifest: dict, variant: str) -> FetchPlan:
    """What to fetch for `variant`, read tolerantly from the manifest (see the module docstring)."""
    dataset_name = f"fineweb10B_{variant}"
    entries = [entry for entry in manifest.get("datasets", []) if isinstance(entry, dict)] \
        if isinstance(manifest, dict) else []
    entry = next((e for e in entries if e.get("name") in (dataset_name, variant)), None) \
        or next((e for e in entries if variant in str(e.get("name", ""))), None) or {}
    dataset_name = str(entry.get("name", dataset_name))
    scopes = [entry.get("stats") or {}, entry]
    val_files = _file_list(scopes, ("val_files", "files_val_list"))
    if val_files is None:
        num_val = _first_int(scopes, ("files_val", "num_val_shards", "val_shards", "num_val_files"))
        val_files = [f"fineweb_val_{i:06d}.bin" for i in range(1 if num_val is None else num_val)]
    train_files = _file_list(scopes, ("train_files", "files_train_list"))
    if train_files is None:
        num_train = _first_int(scopes, ("files_train", "num_train_shards", "train_shards", "num_train_files"))
        train_files = [f"fineweb_train_{i:06d}.bin" for i in range(num_train if num_train is not None else 10**6)]

    tokenizers = [t for t in manifest.get("tokenizers", []) if isinstance(t, dict)] if isinstance(manifest, dict) else []
    wanted = entry.get("tokenizer_name")
    tokenizer = next((t for t in tokenizers if wanted is not None and t.get("name") == wanted), None)
    tokenizer_files = [str(tokenizer[key]) for key in ("model_path", "vocab_path", "path")
                       if tokenizer and tokenizer.get(key)]
    if not tokenizer_files:
        size = variant.removeprefix("sp")
        tokenizer_files = [f"tokenizers/fineweb_{size}_bpe.model", f"tokenizers/fineweb_{size}_bpe.vocab"]
    return FetchPlan(dataset_name, val_files, train_files, list(dict.fromkeys(tokenizer_files)))


def _is_valid(local: Path) -> bool:
    if not local.is_file():
        return False
    if local.suffix == ".bin":
        try:
            validate_shard(local)
        except ShardError:
            return False
        return True
    return local.stat().st_size > 0


class _Downloader:
    def __init__(self, dest: Path, repo_id: str, revision: str | None, endpoint: str | None, cache_dir):
        self.dest, self.repo_id, self.revision = dest, repo_id, revision
        self.endpoint, self.cache_dir = endpoint, cache_dir
        self.staging = dest / STAGING_DIR

    def download(self, relative: str) -> Path:
        """Fetch REMOTE_ROOT/relative into the staging folder; returns the staged path."""
        from huggingface_hub import hf_hub_download

        remote = f"{REMOTE_ROOT}/{relative}"
        where = self.endpoint or "the Hugging Face Hub"
        try:
            return Path(hf_hub_download(self.repo_id, remote, repo_type="dataset", revision=self.revision,
                                        local_dir=self.staging, cache_dir=self.cache_dir, endpoint=self.endpoint))
        except Exception as error:  # huggingface_hub raises many kinds (HTTP, OS, offline); all mean "not fetched"
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise PgolfError(f"download of {remote} from {self.repo_id} on {where} failed: {first_line}; "
                             "rerun the same command to resume (files already fetched are kept)") from error

    def install(self, relative: str, local: Path) -> str:
        """Fetch, validate and rename one file into place; returns a short status."""
        staged = self.download(relative)
        if local.suffix == ".bin":
            try:
                count = validate_shard(staged)
            except ShardError as error:
                staged.unlink(missing_ok=True)
                raise PgolfError(f"downloaded {relative} is corrupt ({error}); rerun to fetch it again") from None
            status = f"{count:,} tokens"
        else:
            status = f"{staged.stat().st_size:,} bytes"
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, local)
        return status


def fetch_dataset(dest="data", variant: str = "sp1024", train_shards: int = 1, *, repo_id: str = REPO_ID,
                  revision: str | None = None, endpoint: str | None = None, cache_dir=None,
                  progress: bool | None = None, log=print) -> Path:
    """Fetch the manifest, the tokenizer, the whole val split and the first `train_shards` train shards.

    Returns the dataset folder DEST/datasets/<dataset name>/.
    """
    if variant not in VARIANTS:
        raise PgolfError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if train_shards < 0:
        raise PgolfError(f"--train-shards must be >= 0, got {train_shards}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    show_bar = sys.stderr.isatty() if progress is None else progress
    if not show_bar:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    downloader = _Downloader(dest, repo_id, revision, endpoint, cache_dir)

    # The manifest is re-fetched every time (huggingface_hub skips the body when its ETag is unchanged).
    manifest_staged = downloader.download("manifest.json")
    try:
        manifest = json.loads(manifest_staged.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PgolfError(f"{manifest_staged}: the Hub's manifest.json is not valid JSON ({error})") from None
    temporary = dest / "manifest.json.tmp"
    temporary.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    temporary.replace(dest / "manifest.json")
    plan = plan_from_manifest(manifest, variant)
    known_count = len(plan.train_files) < 10**6
    if known_count and train_shards > len(plan.train_files):
        raise PgolfError(f"{plan.dataset_name} has only {len(plan.train_files)} train shards, "
                         f"--train-shards {train_shards} asks for more")

    shard_prefix = f"datasets/{plan.dataset_name}"
    wanted = list(plan.tokenizer_files)
    wanted += [f"{shard_prefix}/{name}" for name in plan.val_files]
    wanted += [f"{shard_prefix}/{name}" for name in plan.train_files[:train_shards]]

    from tqdm import tqdm

    fetched = skipped = 0
    with tqdm(total=len(wanted), unit="file", desc="fetch", disable=not show_bar) as bar:
        for index, relative in enumerate(wanted, 1):
            local = dest / relative
            if _is_valid(local):
                skipped += 1
                status = "present, skipped"
            else:
                status = downloader.install(relative, local)
                fetched += 1
            if not show_bar:
                log(f"[{index}/{len(wanted)}] {relative}: {status}")
            bar.update(1)
    log(f"fetch done: {fetched} downloaded, {skipped} already present, dataset in {dest / shard_prefix}")
    return dest / shard_prefix

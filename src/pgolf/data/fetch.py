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

Variant `sp8192-caseops` is the frontier's CaseOps export (frontier.md §1),
another dataset repo with the same layout:

    romeerp/parameter-golf-caseops-v1
    datasets/datasets/fineweb10B_sp8192_lossless_caps_caseops_v1_reserved/
        fineweb_train_*.bin, fineweb_val_000000.bin, fineweb_val_bytes_000000.bin (the byte sidecar)
    datasets/tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model

Its val byte sidecar comes with the val split (`val_bytes_files` in the
manifest, else one `fineweb_val_bytes_*` per val shard), and its tokenizer
must have the published sha256.

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

from pgolf.data.shards import ShardError, sidecar_path, validate_shard
from pgolf.data.tokenizer import sha256_file
from pgolf.errors import PgolfError

REPO_ID = "willdepueoai/parameter-golf"
REMOTE_ROOT = "datasets"
STAGING_DIR = ".download"


@dataclass(frozen=True)
class Variant:
    repo_id: str
    dataset_name: str
    tokenizer_files: tuple[str, ...]  # used when the manifest names none; relative to the remote root
    tokenizer_sha256: str | None = None  # the published model's, checked after download
    has_sidecar: bool = False


def _official(size: str) -> Variant:
    return Variant(REPO_ID, f"fineweb10B_{size}",
                   (f"tokenizers/fineweb_{size.removeprefix('sp')}_bpe.model",
                    f"tokenizers/fineweb_{size.removeprefix('sp')}_bpe.vocab"))


CASEOPS_NAME = "sp8192_lossless_caps_caseops_v1_reserved"
VARIANTS = {
    **{size: _official(size) for size in ("byte260", "sp512", "sp1024", "sp2048", "sp4096")},
    "sp8192-caseops": Variant("romeerp/parameter-golf-caseops-v1", f"fineweb10B_{CASEOPS_NAME}",
                              ("tokenizers/fineweb_8192_bpe_lossless_caps_caseops_v1_reserved.model",),
                              "97754754561f20def5edd99765ca0668f880bd94e67316d54aa10ab25f45cc4d", has_sidecar=True),
}


@dataclass
class FetchPlan:
    dataset_name: str
    val_files: list[str]
    train_files: list[str]  # every train shard the manifest lists, in order
    tokenizer_files: list[str] = field(default_factory=list)  # paths relative to the remote root
    val_bytes_files: list[str] = field(default_factory=list)  # the val split's byte sidecar, when it has one


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
    known = VARIANTS.get(variant)
    dataset_name = known.dataset_name if known else f"fineweb10B_{variant}"
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
        tokenizer_files = list(known.tokenizer_files) if known else [f"tokenizers/fineweb_{size}_bpe.model",
                                                                     f"tokenizers/fineweb_{size}_bpe.vocab"]
    val_bytes_files = []
    if known is not None and known.has_sidecar:
        val_bytes_files = _file_list(scopes, ("val_bytes_files",)) or [sidecar_path(name).name for name in val_files]
    return FetchPlan(dataset_name, val_files, train_files, list(dict.fromkeys(tokenizer_files)), val_bytes_files)


def _is_valid(local: Path, expected_sha256: str | None) -> bool:
    if not local.is_file():
        return False
    if local.suffix == ".bin":
        try:
            validate_shard(local)
        except ShardError:
            return False
        return True
    if expected_sha256 is not None and local.suffix == ".model":
        return sha256_file(local) == expected_sha256
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

    def install(self, relative: str, local: Path, expected_sha256: str | None = None) -> str:
        """Fetch, validate and rename one file into place; returns a short status."""
        staged = self.download(relative)
        if expected_sha256 is not None and local.suffix == ".model":
            actual = sha256_file(staged)
            if actual != expected_sha256:
                staged.unlink(missing_ok=True)
                raise PgolfError(f"downloaded {relative} has sha256 {actual[:16]}..., not the published "
                                 f"{expected_sha256[:16]}...; refusing a tokenizer that is not the recipe's")
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


def _refuse_other_export(dest: Path, dataset_name: str) -> None:
    """DEST/manifest.json describes the export in DEST; fetching another one there would replace it and
    leave the first export's dataset with a manifest (and tokenizer) that is not its own."""
    current = dest / "manifest.json"
    try:
        entries = json.loads(current.read_text(encoding="utf-8")).get("datasets", []) if current.is_file() else []
    except (OSError, ValueError, AttributeError):
        return
    names = [str(entry.get("name")) for entry in entries if isinstance(entry, dict)]
    present = [name for name in names if (dest / "datasets" / name).is_dir()]
    if dataset_name not in names and present:
        raise PgolfError(f"{dest} already holds {present[0]} from another export, whose manifest this fetch "
                         f"would replace; pass another --dest")


def fetch_dataset(dest="data", variant: str = "sp1024", train_shards: int = 1, *, repo_id: str | None = None,
                  revision: str | None = None, endpoint: str | None = None, cache_dir=None,
                  progress: bool | None = None, log=print) -> Path:
    """Fetch the manifest, the tokenizer, the whole val split (and its byte sidecar) and the first
    `train_shards` train shards. `repo_id` defaults to the variant's.

    Returns the dataset folder DEST/datasets/<dataset name>/.
    """
    if variant not in VARIANTS:
        raise PgolfError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    repo_id = repo_id or VARIANTS[variant].repo_id
    expected_sha256 = VARIANTS[variant].tokenizer_sha256
    if train_shards < 0:
        raise PgolfError(f"--train-shards must be >= 0, got {train_shards}")
    dest = Path(dest)
    _refuse_other_export(dest, VARIANTS[variant].dataset_name)
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
    wanted += [f"{shard_prefix}/{name}" for name in plan.val_files + plan.val_bytes_files]
    wanted += [f"{shard_prefix}/{name}" for name in plan.train_files[:train_shards]]

    from tqdm import tqdm

    fetched = skipped = 0
    with tqdm(total=len(wanted), unit="file", desc="fetch", disable=not show_bar) as bar:
        for index, relative in enumerate(wanted, 1):
            local = dest / relative
            if _is_valid(local, expected_sha256):
                skipped += 1
                status = "present, skipped"
            else:
                status = downloader.install(relative, local, expected_sha256)
                fetched += 1
            if not show_bar:
                log(f"[{index}/{len(wanted)}] {relative}: {status}")
            bar.update(1)
    log(f"fetch done: {fetched} downloaded, {skipped} already present, dataset in {dest / shard_prefix}")
    return dest / shard_prefix

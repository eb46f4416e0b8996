"""A run's written record: the human log, metrics.jsonl, config.json, result.json; and the rule
that a run folder holds one run.

Only rank 0 writes. Log lines are grep-able `key:value` pairs; the log opens
with a header (resolved config, versions, device, source hash) and closes
with one exact final line.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch

import pgolf
from pgolf.config import RunConfig, run_config_to_json
from pgolf.errors import PgolfError


def source_hash() -> str:
    """sha256 over the package's .py files (sorted paths and contents): which code produced a run."""
    if Path(pgolf.__file__).name != "__init__.py":  # an exported train_gpt.py: the code is that one file
        return hashlib.sha256(Path(pgolf.__file__).read_bytes()).hexdigest()
    root = Path(pgolf.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def format_fields(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            value = f"{value:.6g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.3e}"
        parts.append(f"{key}:{value}")
    return " ".join(parts)


class RunLog:
    """Writes `train.log` and `metrics.jsonl` in RUN_DIR; echoes log lines to `stream` unless quiet."""

    def __init__(self, run_dir: Path | None, enabled: bool = True, stream: TextIO | None = None,
                 echo: bool = True, resume_step: int | None = None):
        self.enabled = enabled and run_dir is not None
        self.stream = stream if stream is not None else sys.stdout
        self.echo = echo
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._log = None
        self._metrics = None
        if self.enabled:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if resume_step is not None:
                self._truncate_metrics(resume_step)
            self._log = open(self.run_dir / "train.log", "a", buffering=1)
            self._metrics = open(self.run_dir / "metrics.jsonl", "a", buffering=1)

    def _truncate_metrics(self, step: int) -> None:
        """On resume, drop metrics logged after the checkpoint so the file has no duplicates."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in kept))

    def line(self, text: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        self._log.write(text + "\n")
        if self.echo and echo:
            print(text, file=self.stream, flush=True)

    def fields(self, **fields: Any) -> None:
        self.line(format_fields(fields))

    def metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._metrics.write(json.dumps(record) + "\n")

    def header(self, config_json: str, device: str, world_size: int, extra: dict[str, Any]) -> None:
        self.line(f"pgolf:{pgolf.__version__} python:{platform.python_version()} torch:{torch.__version__} "
                  f"device:{device} world_size:{world_size} source_sha256:{source_hash()[:16]} "
                  f"started:{time.strftime('%Y-%m-%dT%H:%M:%S')}")
        self.fields(**extra)
        for config_line in config_json.splitlines():  # the file keeps the whole config; the screen is spared
            self.line(f"config {config_line}", echo=False)

    def close(self) -> None:
        for handle in (self._log, self._metrics):
            if handle is not None:
                handle.close()
        self._log = self._metrics = None


def config_sha256(config: RunConfig) -> str:
    """sha256 of the resolved config as saved in config.json: which recipe a run folder holds."""
    return hashlib.sha256(run_config_to_json(config).encode()).hexdigest()


# ---------------------------------------------------------------- a run folder holds one run

# What a run writes into its folder (checkpoint folders included); `--overwrite` removes only these.
RUN_FILES = ("config.json", "train.log", "metrics.jsonl", "result.json", "model.pgolf", "curves.png",
             "weights.safetensors", "checkpoint", "checkpoint.partial", "checkpoint.previous")


def claim_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Make `run_dir` ready for a new run: it must be empty, or hold only a run's files and `overwrite`
    be given (they are removed). Never removes a file a run does not write."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise PgolfError(f"{run_dir} is a file, not a run folder")
    present = sorted(entry.name for entry in run_dir.iterdir())
    if not present:
        return
    if not overwrite:
        what = "a finished run" if "result.json" in present else "another run's files"
        raise PgolfError(f"{run_dir} already holds {what} ({', '.join(present[:4])}); choose another --out, "
                         "--resume it, or pass --overwrite")
    foreign = [name for name in present if name not in RUN_FILES]
    if foreign:
        raise PgolfError(f"{run_dir} holds files a run does not write ({', '.join(foreign[:4])}); "
                         "--overwrite only replaces a run's own files")
    for name in present:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def is_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` finished: its result.json is the last file a run writes."""
    return (Path(run_dir) / "result.json").is_file()

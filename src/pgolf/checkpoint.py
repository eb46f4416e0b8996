"""Resume state: weights, optimiser, SWA sum, data position, RNG, elapsed time.

A checkpoint is not an artifact: it is our own file, written and read by the
same run, holding full-precision state. Tensors go through `torch.save` and
are read back with `torch.load(weights_only=True)` (no arbitrary objects).

Layout inside RUN_DIR:
    checkpoint/            the latest complete checkpoint
        state.pt           model, SWA, RNG (rank 0), step, elapsed, stream state
        optim_rank{r}.pt   each rank's optimiser state (Muon shards differ per rank)
        meta.json          step, world size, completion marker
    checkpoint.partial/    being written; never read
    checkpoint.previous/   the old one, kept until the new one is in place

The swap is two renames; a crash between them leaves `checkpoint.previous/`,
which `load_checkpoint` falls back to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.errors import PgolfError

CURRENT = "checkpoint"
PARTIAL = "checkpoint.partial"
PREVIOUS = "checkpoint.previous"


def rng_state() -> dict[str, Any]:
    """Every random generator a run may touch, as plain lists and tensors (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_rank_state(run_dir: Path, rank: int, optimizer_states: list[dict], shared: dict | None) -> None:
    """Write this rank's part into `checkpoint.partial/` (rank 0 also writes the shared state). A write
    that fails (a full disk) removes the partial folder and is one line; the last checkpoint stays."""
    partial = Path(run_dir) / PARTIAL
    try:
        partial.mkdir(parents=True, exist_ok=True)
        optim_path = partial / f"optim_rank{rank}.pt"
        torch.save(optimizer_states, optim_path)
        _fsync_file(optim_path)
        if shared is not None:
            state_path = partial / "state.pt"
            torch.save(shared, state_path)
            _fsync_file(state_path)
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as RuntimeError
        clear_partial(run_dir)
        kept = find_checkpoint(run_dir)
        raise PgolfError(f"writing a checkpoint in {partial} failed ({str(error).strip().splitlines()[0]}); "
                         + (f"the last one ({kept.name}/) is kept" if kept else "no earlier checkpoint")) from None


def publish(run_dir: Path, step: int, world_size: int) -> None:
    """Rank 0, after every rank wrote its part: make the partial checkpoint the current one."""
    run_dir = Path(run_dir)
    partial, current, previous = run_dir / PARTIAL, run_dir / CURRENT, run_dir / PREVIOUS
    (partial / "meta.json").write_text(json.dumps({"step": step, "world_size": world_size, "complete": True}))
    if previous.exists():
        shutil.rmtree(previous)
    if current.exists():
        current.rename(previous)
    partial.rename(current)
    if previous.exists():
        shutil.rmtree(previous)


def clear_partial(run_dir: Path) -> None:
    partial = Path(run_dir) / PARTIAL
    if partial.exists():
        shutil.rmtree(partial, ignore_errors=True)


def find_checkpoint(run_dir: Path) -> Path | None:
    for name in (CURRENT, PREVIOUS):
        folder = Path(run_dir) / name
        meta = folder / "meta.json"
        if meta.exists() and json.loads(meta.read_text()).get("complete"):
            return folder
    return None


def load_checkpoint(run_dir: Path, rank: int, world_size: int) -> tuple[dict, list[dict]]:
    """Return (shared state, this rank's optimiser states) of the latest complete checkpoint."""
    folder = find_checkpoint(run_dir)
    if folder is None:
        raise PgolfError(f"no complete checkpoint in {run_dir} (was the run started with --checkpoint-every?)")
    meta = json.loads((folder / "meta.json").read_text())
    if meta["world_size"] != world_size:
        raise PgolfError(
            f"checkpoint in {folder} was written by {meta['world_size']} processes; resume with the same number "
            f"(got {world_size})"
        )
    shared = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    optimizer_states = torch.load(folder / f"optim_rank{rank}.pt", map_location="cpu", weights_only=True)
    return shared, optimizer_states

"""Helpers that forge files the way an attacker or a careless edit would (shared by the hardening tests).

- `split_artifact(blob)`: (format version, header bytes, payload) of a .pgolf file, unchecked;
- `seal(header, payload, version)`: a .pgolf file around these bytes with a matching checksum;
- `rewrite_header(path, edit)`: edit the header JSON in place and re-seal;
- `finished_run(folder, seed, val_bpb, ...)`: a run folder whose result.json agrees with its artifact
  (sha256, size), its scored counts and its train.log closing line.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from pgolf import artifact
from pgolf.config import run_config_to_dict, tiny


def split_artifact(blob: bytes) -> tuple[int, bytes, bytes]:
    version, length, _ = artifact.PREFIX.unpack_from(blob, len(artifact.MAGIC))
    end = artifact.PREFIX_BYTES + length
    return version, blob[artifact.PREFIX_BYTES:end], blob[end:]


def seal(header: bytes, payload: bytes, version: int = artifact.FORMAT_VERSION) -> bytes:
    return b"".join(artifact.file_chunks(header, payload, version))


def rewrite_header(path: Path, edit) -> None:
    version, header_bytes, payload = split_artifact(path.read_bytes())
    header = json.loads(header_bytes)
    edit(header)
    path.write_bytes(seal(json.dumps(header).encode(), payload, version))


def finished_run(folder: Path, seed: int, val_bpb: float, bytes_model: int = 1_000_000, bytes_code: int = 50_000,
                 **config_changes) -> Path:
    """`bytes_model` bytes of artifact (a sparse file), val_loss = val_bpb * ln 2 * 2400 / 1000 (1000 tokens
    scored over 2400 bytes), and the log's closing line printed as the run prints it."""
    folder.mkdir(parents=True)
    config = run_config_to_dict(tiny())
    config.update(seed=seed, data_dir=f"/data/{seed}", **config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    with (folder / "model.pgolf").open("wb") as handle:
        handle.write(b"artifact of seed %d" % seed)
        handle.truncate(bytes_model)
    val_loss = val_bpb * math.log(2) * 2400 / 1000
    result = {"val_bpb": val_bpb, "val_loss": val_loss, "val_bpb_prequant": val_bpb - 0.01,
              "bytes_model": bytes_model, "bytes_code": bytes_code, "bytes_total": bytes_model + bytes_code,
              "steps": 100, "train_seconds": 60.0, "artifact": "model.pgolf", "seed": seed,
              "artifact_sha256": hashlib.sha256((folder / "model.pgolf").read_bytes()).hexdigest(),
              "quant_scheme": config["quant_scheme"], "val_tokens_scored": 1000, "val_bytes_scored": 2400}
    (folder / "result.json").write_text(json.dumps(result))
    (folder / "train.log").write_text(f"seed {seed}\nfinal_roundtrip_exact val_loss:{val_loss:.8f} "
                                      f"val_bpb:{val_bpb:.8f} stride:64 steps:100 train_seconds:60.0 "
                                      f"bytes_total:{bytes_model + bytes_code}\n")
    return folder


def grow_artifact(run_dir: Path, bytes_model: int, bytes_code: int | None = None) -> None:
    """Extend a run's artifact to `bytes_model` bytes (sparse) and update everything that records its
    size or hash (result.json, the log's closing line), as if the run had written that artifact
    (and, given `bytes_code`, counted that much code)."""
    import re

    artifact_path = run_dir / "model.pgolf"
    with artifact_path.open("r+b") as handle:
        handle.truncate(bytes_model)
    result = json.loads((run_dir / "result.json").read_text())
    result["bytes_code"] = result["bytes_code"] if bytes_code is None else bytes_code
    result.update(bytes_model=bytes_model, bytes_total=bytes_model + result["bytes_code"],
                  artifact_sha256=hashlib.sha256(artifact_path.read_bytes()).hexdigest())
    (run_dir / "result.json").write_text(json.dumps(result))
    log = (run_dir / "train.log").read_text()
    (run_dir / "train.log").write_text(re.sub(r"(final_roundtrip_exact .* bytes_total:)\d+",
                                              rf"\g<1>{result['bytes_total']}", log))

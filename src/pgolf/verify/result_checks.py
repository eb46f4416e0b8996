"""A run's result.json against the files beside it: the artifact, the scored counts and train.log.

result.json is a plain file; an edited `val_bpb`, an artifact swapped for a
larger one, or a missing artifact would otherwise be packaged as claimed. So
every number that can be recomputed is:

- the artifact (`artifact`, default model.pgolf, a plain name inside the run
  folder) exists, its sha256 is `artifact_sha256` and its size `bytes_model`;
  `bytes_total` is `bytes_model + bytes_code`;
- `val_bpb` is `val_loss / ln 2 * val_tokens_scored / val_bytes_scored`
  (bits per byte from nats per token), to float rounding;
- train.log's closing `final_roundtrip_exact` line gives the same val_loss and
  val_bpb (printed with 8 decimals) and the same bytes_total.

This shows the numbers are one run's, not that the score is right: `pgolf
eval` recomputes the score from the artifact.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pgolf.verify.report import Check

DEFAULT_ARTIFACT = "model.pgolf"
LOG_NAME = "train.log"
FINAL_LINE = re.compile(r"final_roundtrip_exact val_loss:(\S+) val_bpb:(\S+)(?:.* bytes_total:(\d+))?")
LOG_TOLERANCE = 0.5e-8 + 1e-12  # the log rounds to 8 decimals
FORMULA_RELATIVE_TOLERANCE = 1e-9  # float rounding of the two divisions


def _number(result: dict[str, Any], key: str) -> float | None:
    value = result.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _final_log_line(log_path: Path) -> str | None:
    """The last `final_roundtrip_exact` line of train.log (a resumed run appends to the same log)."""
    final = None
    with log_path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("final_roundtrip_exact "):
                final = line.strip()
    return final


def _artifact_problems(run_dir: Path, result: dict[str, Any]) -> tuple[list[str], int | None]:
    """Problems with the artifact's identity and size; also the file's real size (None when unreadable)."""
    from pgolf.data.tokenizer import sha256_file

    name = result.get("artifact", DEFAULT_ARTIFACT)
    if not isinstance(name, str) or not name or Path(name).name != name:
        return [f"{run_dir / 'result.json'}: 'artifact' must name a file inside the run folder, got {name!r}"], None
    path = run_dir / name
    if not path.is_file():
        return [f"{path}: the run's artifact is missing"], None
    size = path.stat().st_size
    problems = []
    recorded = result.get("artifact_sha256")
    if not isinstance(recorded, str):
        problems.append(f"{run_dir / 'result.json'} records no artifact_sha256, so nothing ties its numbers to "
                        f"{path.name}")
    elif sha256_file(path) != recorded:
        problems.append(f"{path}: sha256 {sha256_file(path)[:16]}... is not the {recorded[:16]}... that "
                        "result.json records (the artifact was replaced or edited)")
    if result.get("bytes_model") != size:
        problems.append(f"{path}: {size:,} bytes, but result.json says bytes_model {result.get('bytes_model')!r}")
    if result.get("bytes_total") != size + (result.get("bytes_code") or 0) or not isinstance(
            result.get("bytes_code"), int):
        problems.append(f"{run_dir / 'result.json'}: bytes_total {result.get('bytes_total')!r} is not the artifact's "
                        f"{size:,} bytes + bytes_code {result.get('bytes_code')!r}")
    return problems, size


def _score_problems(run_dir: Path, result: dict[str, Any], bytes_model: int | None) -> list[str]:
    result_path = run_dir / "result.json"
    val_bpb, val_loss = _number(result, "val_bpb"), _number(result, "val_loss")
    tokens, num_bytes = _number(result, "val_tokens_scored"), _number(result, "val_bytes_scored")
    if None in (val_bpb, val_loss, tokens, num_bytes) or tokens <= 0 or num_bytes <= 0:
        return [f"{result_path}: val_bpb, val_loss, val_tokens_scored and val_bytes_scored must be finite numbers "
                "(counts positive)"]
    problems = []
    expected = val_loss / math.log(2.0) * tokens / num_bytes
    if abs(val_bpb - expected) > FORMULA_RELATIVE_TOLERANCE * max(1.0, abs(expected)):
        problems.append(f"{result_path}: val_bpb {val_bpb:.8f} is not val_loss / ln 2 x tokens / bytes = "
                        f"{expected:.8f}")
    log_path = run_dir / LOG_NAME
    final = _final_log_line(log_path) if log_path.is_file() else None
    match = FINAL_LINE.match(final) if final else None
    if match is None:
        problems.append(f"{log_path}: no closing final_roundtrip_exact line to check result.json against")
        return problems
    try:
        log_loss, log_bpb = float(match.group(1)), float(match.group(2))
    except ValueError:
        return problems + [f"{log_path}: unreadable closing line {final[:120]!r}"]
    for key, logged, recorded in (("val_loss", log_loss, val_loss), ("val_bpb", log_bpb, val_bpb)):
        if not abs(logged - recorded) <= LOG_TOLERANCE:
            problems.append(f"{result_path}: {key} {recorded:.8f} but the log's closing line says {logged:.8f}")
    if match.group(3) is not None and bytes_model is not None and isinstance(result.get("bytes_code"), int):
        if int(match.group(3)) != bytes_model + result["bytes_code"]:
            problems.append(f"{log_path}: closing line says bytes_total:{match.group(3)}, the artifact and code "
                            f"make {bytes_model + result['bytes_code']}")
    return problems


def result_problems(run_dir, result: dict[str, Any]) -> list[str]:
    """Every way `result` (the run's result.json) disagrees with the files in `run_dir`; [] when none.
    Each problem is one line naming the file."""
    run_dir = Path(run_dir)
    problems, bytes_model = _artifact_problems(run_dir, result)
    return problems + _score_problems(run_dir, result, bytes_model)


def check_result_numbers(runs: list) -> Check:
    """One check over a run set (RunRecord objects): every result.json agrees with its files."""
    details = [problem for run in runs for problem in result_problems(run.path, run.result)]
    if details:
        return Check("runs.result_numbers", False, f"{len(details)} number(s) not backed by the files: {details[0]}",
                     tuple(details))
    return Check("runs.result_numbers", True,
                 f"{len(runs)} run(s): artifact sha256 and size, val_bpb from val_loss and the scored counts, and "
                 "the log's closing line all match result.json")

"""Re-quantising a finished run: its full-precision weights, a new artifact, its score, a table row.

A run keeps its averaged full-precision weights (the base model's state dict after SWA) in
`RUN_DIR/weights.safetensors` (`pgolf.weights`, written by the run's finish).
`requantize_run` quantises them with any scheme and compressor, writes the artifact under
`RUN_DIR/requantized/`, reads it back, scores it with the run's own evaluation settings
(RUN_DIR/config.json) and appends a row to `RUN_DIR/quantize.csv`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.errors import PgolfError
from pgolf.weights import FULL_WEIGHTS_NAME, load_full_weights

TABLE_NAME = "quantize.csv"
TABLE_COLUMNS = ("scheme", "compressor", "bytes_model", "bytes_code", "bytes_total", "val_bpb",
                 "val_bpb_full_precision", "quantization_gap", "seconds_quantize", "seconds_compress", "artifact")


# ---------------------------------------------------------------- a finished run


@dataclass
class FinishedRun:
    run_dir: Path
    config: "RunConfig"
    state: dict[str, torch.Tensor]  # full-precision weights
    val: "ValData"  # pgolf.scoring: the val split, byte tables or sidecar, tokenizer sha256
    train_files: list[Path]

    @property
    def tokenizer_sha256(self) -> str:
        return self.val.tokenizer_sha256


def load_run(run_dir, stride: int | None = None) -> FinishedRun:
    """A run folder's config (RUN_DIR/config.json), full weights and evaluation data.
    `stride` overrides the run's eval stride (faster sliding evaluation on CPU)."""
    from pgolf.build import load_run_data
    from pgolf.config import run_config_from_dict

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise PgolfError(f"{run_dir}: no config.json; not a finished training run folder")
    config = run_config_from_dict(json.loads(config_path.read_text()))
    if stride is not None:
        config = dataclasses.replace(config, eval_stride=stride)
        config.validate()
    state = load_full_weights(run_dir / FULL_WEIGHTS_NAME)
    data = load_run_data(config)
    return FinishedRun(run_dir=run_dir, config=config, state=state, val=data.val, train_files=data.train_files)


def build_model(run: FinishedRun, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    from pgolf.model import GPT

    model = GPT(run.config.model)
    model.load_state_dict(state, strict=True)
    return model


def score(run: FinishedRun, state: dict[str, torch.Tensor]) -> float:
    """val bpb of these weights with the run's evaluation settings (eager, the run's autocast)."""
    from pgolf import scoring
    from pgolf.distributed import DistInfo
    from pgolf.runtime import autocast_dtype

    config = run.config
    result = scoring.score(build_model(run, state), run.val, config.eval_seq_len, config.eval_stride,
                           config.eval_batch_seqs, DistInfo(device=torch.device("cpu")),
                           autocast_dtype(config.autocast_dtype), show_progress=False)
    return result["val_bpb"]


def calibrate(run: FinishedRun, num_batches: int = 16, batch_seqs: int = 16, seq_len: int | None = None,
              seed: int = 0):
    """GPTQ / AWQ statistics of the run's full-precision model on random windows of its TRAIN shards."""
    from pgolf.hessians import calibration_batches, collect_hessians

    seq_len = seq_len or run.config.train_seq_len
    batches = calibration_batches(run.train_files, num_batches, batch_seqs, seq_len, seed)
    return collect_hessians(build_model(run, run.state), batches)


def requantize(run: FinishedRun, scheme_name: str, compressors: list[str] | None = None, calibration=None,
               full_precision_bpb: float | None = None) -> list[dict]:
    """Quantise the run's weights once with `scheme_name`, write one artifact per compressor, score the
    first one read back from disk (the others must dequantise to the same tensors), append the rows."""
    from pgolf.artifact import load_artifact, write_artifact
    from pgolf.packaging.export import exported_code_bytes
    from pgolf.calibrated import CalibratedScheme, get_any_scheme, quantize_calibrated

    scheme = get_any_scheme(scheme_name)
    compressors = compressors or [scheme.compressor]
    if isinstance(scheme, CalibratedScheme) and scheme.needs_calibration and calibration is None:
        calibration = calibrate(run)
    started = time.perf_counter()
    quantized = quantize_calibrated(run.state, scheme, calibration)
    seconds_quantize = time.perf_counter() - started
    if full_precision_bpb is None:
        full_precision_bpb = score(run, run.state)
    bytes_code = exported_code_bytes(run.config)  # what the run's own exported script counts
    rows, reference, bpb = [], None, None
    for compressor in compressors:
        level = scheme.level if compressor == scheme.compressor else None
        path = run.run_dir / "requantized" / f"{scheme.name}-{compressor}.pgolf"
        started = time.perf_counter()
        info = write_artifact(path, run.config.model, quantized, run.tokenizer_sha256, run.config.model.vocab_size,
                              compressor=compressor, level=level)
        seconds_compress = time.perf_counter() - started
        loaded = load_artifact(path).state_dict
        if reference is None:
            reference, bpb = loaded, score(run, loaded)
        elif any(not torch.equal(loaded[name], reference[name]) for name in reference):
            raise PgolfError(f"{path}: reads back different tensors than the {compressors[0]} artifact")
        rows.append({"scheme": scheme.name, "compressor": compressor, "bytes_model": info.bytes_model,
                     "bytes_code": bytes_code, "bytes_total": info.bytes_model + bytes_code, "val_bpb": bpb,
                     "val_bpb_full_precision": full_precision_bpb, "quantization_gap": bpb - full_precision_bpb,
                     "seconds_quantize": seconds_quantize, "seconds_compress": seconds_compress,
                     "artifact": str(path.relative_to(run.run_dir))})
    append_rows(run.run_dir / TABLE_NAME, rows)
    return rows


def append_rows(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.6f}" if isinstance(value, float) else value) for key, value in row.items()})

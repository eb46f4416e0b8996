"""The end of a training run: score the live weights, average, quantise, write, read back, score
what we ship, report.

Reported numbers, named as the reference reports them (spec pr198 §4):
`val_bpb_prequant` is the live weights at the last step, before averaging;
`val_bpb_averaged` the averaged weights (SWA) before quantisation (equal to
prequant when no snapshot was taken); `val_bpb_roundtrip_plain` and the
submission score `val_bpb` are measured on the model rebuilt from the artifact
file on disk (decompressed and dequantised into a fresh network), never on the
in-memory weights. `result.json` is written last: its presence marks a
finished run.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pgolf.artifact import load_artifact, write_artifact
from pgolf.averaging import WeightAverager
from pgolf.calibrated import get_any_scheme, quantize_calibrated
from pgolf.challenge import ARTIFACT_NAME, BUDGET_BYTES
from pgolf.config import RunConfig
from pgolf.distributed import DistInfo, barrier
from pgolf.machine import describe_machine
from pgolf.model import GPT
from pgolf.runlog import RunLog, config_sha256, write_json_atomic
from pgolf.procedures import procedure_from_config
from pgolf.runtime import autocast_dtype
from pgolf.scoring import ValData, model_from_artifact, score
from pgolf.weights import FULL_WEIGHTS_NAME, save_full_weights



@dataclass
class FinishInputs:
    """What the finish needs from the run that trained: plain values, no trainer."""

    config: RunConfig
    dist: DistInfo
    base_model: GPT
    eval_model: torch.nn.Module  # the compiled view of base_model when there is one
    averager: WeightAverager  # or averaging.ExponentialAverager: the same interface
    val: ValData
    steps: int
    train_seconds: float
    train_tokens: int
    bytes_code: int
    train_files: list[Path]  # calibration (GPTQ Hessians) reads train shards only
    tokenizer_is_the_datasets: bool = True


def finish_run(run: FinishInputs, run_dir: Path | None, log: RunLog, quiet: bool = False) -> dict[str, Any]:
    config, dist = run.config, run.dist

    def evaluate_plain(model: torch.nn.Module, desc: str) -> dict[str, float]:
        return score(model, run.val, config.eval_seq_len, config.eval_seq_len, config.eval_batch_seqs, dist,
                     autocast_dtype(config.autocast_dtype), desc=desc, show_progress=not quiet)

    prequant = evaluate_plain(run.eval_model, "eval live weights")
    log.fields(stage="prequant_plain", **prequant)
    snapshots = run.averager.count
    run.averager.apply_to(run.base_model)  # nothing happens without a snapshot
    log.fields(averaged_snapshots=snapshots)
    averaged = evaluate_plain(run.eval_model, "eval averaged") if snapshots else prequant
    log.fields(stage="averaged_plain", **averaged)
    # the curve's last point: plain evaluation like the periodic ones, on the whole split, after averaging
    log.metrics({"step": run.steps, "train_tokens": run.train_tokens, "final": True, **averaged})

    artifact_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="pgolf-"))
    artifact_path = artifact_dir / ARTIFACT_NAME
    calibration = calibrate(run, log)  # every rank: each quantises with its own Hessians; rank 0's file is kept
    if dist.is_main:
        state_dict = {name: tensor.detach().cpu() for name, tensor in run.base_model.state_dict().items()}
        scheme = get_any_scheme(config.quant_scheme)
        write_artifact(artifact_path, config.model, quantize_calibrated(state_dict, scheme, calibration),
                       run.val.tokenizer_sha256, config.model.vocab_size, compressor=scheme.compressor,
                       level=scheme.level)
        if run_dir is not None:
            keep_full_weights(Path(run_dir) / FULL_WEIGHTS_NAME, state_dict, log)
    barrier(dist)

    shipped = model_from_artifact(load_artifact(artifact_path), dist.device, config.compile)
    roundtrip_plain = evaluate_plain(shipped, "eval round trip")
    log.fields(stage="roundtrip_plain", **roundtrip_plain)
    if config.eval_procedure == "sliding" and config.eval_stride == config.eval_seq_len and not config.eval_tilt:
        scored = roundtrip_plain
    else:  # the submission score: sliding window, or score-first TTT, each optionally tilted
        scored = score(shipped, run.val, config.eval_seq_len, config.eval_stride, config.eval_batch_seqs, dist,
                       autocast_dtype(config.autocast_dtype), desc=f"eval {config.eval_procedure}",
                       show_progress=not quiet, procedure=procedure_from_config(config))
        stage = (f"roundtrip_sliding_stride{config.eval_stride}" if config.eval_procedure == "sliding"
                 else f"roundtrip_{config.eval_procedure}")
        log.fields(stage=stage + ("_tilt" if config.eval_tilt else ""), **scored)

    bytes_model = artifact_path.stat().st_size
    result = {
        "preset": config.preset,
        "seed": config.seed,
        "config_sha256": config_sha256(config),
        "val_loss": scored["val_loss"],
        "val_bpb": scored["val_bpb"],
        "val_bpb_roundtrip_plain": roundtrip_plain["val_bpb"],
        "val_loss_roundtrip_plain": roundtrip_plain["val_loss"],
        "val_bpb_averaged": averaged["val_bpb"],
        "val_loss_averaged": averaged["val_loss"],
        "val_bpb_prequant": prequant["val_bpb"],
        "val_loss_prequant": prequant["val_loss"],
        "val_tokens_scored": scored["val_tokens_scored"],
        "val_bytes_scored": scored["val_bytes_scored"],
        "eval_procedure": config.eval_procedure + ("+tilt" if config.eval_tilt else ""),
        "eval_stride": config.eval_stride,
        "eval_seq_len": config.eval_seq_len,
        "eval_seconds": scored["eval_seconds"],
        "bytes_model": bytes_model,
        "bytes_code": run.bytes_code,
        "bytes_total": bytes_model + run.bytes_code,
        "bytes_budget": BUDGET_BYTES,
        "artifact": ARTIFACT_NAME,
        "artifact_sha256": hashlib.sha256(artifact_path.read_bytes()).hexdigest(),
        "quant_scheme": config.quant_scheme,
        "tokenizer_sha256": run.val.tokenizer_sha256,
        "tokenizer_is_the_datasets": run.tokenizer_is_the_datasets,
        "steps": run.steps,
        "train_seconds": run.train_seconds,
        "train_tokens": run.train_tokens,
        "tokens_per_second": run.train_tokens / max(run.train_seconds, 1e-9),
        "world_size": dist.world_size,
        "machine": describe_machine(dist.device),
        "swa_checkpoints": snapshots,
    }
    log.fields(bytes_model=bytes_model, bytes_code=run.bytes_code, bytes_total=bytes_model + run.bytes_code,
               bytes_budget=BUDGET_BYTES, fits=bytes_model + run.bytes_code <= BUDGET_BYTES)
    log.line(f"final_roundtrip_exact val_loss:{scored['val_loss']:.8f} val_bpb:{scored['val_bpb']:.8f} "
             f"stride:{config.eval_stride} steps:{run.steps} train_seconds:{run.train_seconds:.1f} "
             f"bytes_total:{bytes_model + run.bytes_code}")
    if dist.is_main and run_dir is not None:
        write_curves(Path(run_dir), log)
        write_json_atomic(Path(run_dir) / "result.json", result)  # last: marks the run finished
    return result


def calibrate(run: FinishInputs, log: RunLog):
    """GPTQ / AWQ statistics of the averaged model on random windows of this rank's TRAIN shards (never
    val), looped layers accumulating every pass (frontier.md §5); None when the scheme needs none."""
    scheme = get_any_scheme(run.config.quant_scheme)
    if not getattr(scheme, "needs_calibration", False):
        return None
    from pgolf.hessians import calibration_batches, collect_hessians  # only calibrated schemes' scripts bundle it

    config, dist = run.config, run.dist
    started = time.perf_counter()
    files = run.train_files[dist.rank::dist.world_size] or run.train_files  # the rank's own shards
    batches = calibration_batches(files, config.calibration_batches, config.calibration_batch_seqs,
                                  config.train_seq_len, seed=dist.rank)
    calibration = collect_hessians(run.base_model, batches)
    log.fields(calibration_batches=calibration.num_batches, calibration_tokens=calibration.num_tokens,
               calibration_seconds=round(time.perf_counter() - started, 2))
    return calibration


def keep_full_weights(path: Path, state_dict: dict[str, torch.Tensor], log: RunLog) -> None:
    """The averaged weights as trained, so they can be quantised again later (`pgolf quantize`)."""
    try:
        save_full_weights(path, state_dict)
    except ModuleNotFoundError:  # an exported script may run where safetensors is not installed
        log.fields(full_weights="skipped (safetensors is not installed)")


def write_curves(run_dir: Path, log: RunLog) -> None:
    """curves.png next to metrics.jsonl; a failed plot never fails a finished run."""
    try:
        from pgolf.plot import plot_run
    except ModuleNotFoundError as error:
        if error.name in ("pgolf.plot", "matplotlib"):
            return  # an exported single-file script ships without plotting
        raise
    try:
        plot_run(run_dir)
    except Exception as error:  # plotting is a convenience, the numbers are already written
        log.fields(curves_error=repr(error))

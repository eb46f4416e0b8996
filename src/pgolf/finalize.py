"""After the last step: average, score, quantise, write, read back, score what we ship, report.

The submission score is measured on the model rebuilt from the artifact file
on disk (decompressed and dequantised into a fresh network), never on the
in-memory weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from pgolf import accounting
from pgolf.artifact import LoadedArtifact, load_artifact, save_artifact
from pgolf.assemble import RunData, Trainer, should_compile, validate
from pgolf.distributed import barrier
from pgolf.machine import describe_machine
from pgolf.model import GPT
from pgolf.runlog import RunLog, write_json_atomic

ARTIFACT_NAME = "model.pgolf"


def model_from_artifact(loaded: LoadedArtifact, device: torch.device, compile_setting: str) -> torch.nn.Module:
    """A fresh network holding the artifact's dequantised weights, compiled as training's was, so that
    `pgolf eval` reproduces the score `pgolf train` reported (bf16 kernels differ compiled vs eager)."""
    model = GPT(loaded.model_config).to(device)
    model.load_state_dict(loaded.state_dict, strict=True)
    if should_compile(compile_setting, device):
        return torch.compile(model, dynamic=False)
    return model


def finish_run(trainer: Trainer, run: RunData, run_dir: Path | None, log: RunLog,
               code_path: Path | None = None) -> dict[str, Any]:
    config, dist, state = trainer.config, trainer.dist, trainer.state
    if trainer.averager.count > 0:
        trainer.averager.apply_to(trainer.base_model)
        log.fields(swa_checkpoints_averaged=trainer.averager.count)

    prequant = validate(trainer, run, stride=config.eval_seq_len, desc="eval prequant")
    log.fields(stage="prequant_plain", **prequant)
    # the curve's last point: plain evaluation like the periodic ones, on the whole split, after SWA
    log.metrics({"step": state.step, "train_tokens": state.train_tokens, "final": True, **prequant})

    artifact_dir = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="pgolf-"))
    artifact_path = artifact_dir / ARTIFACT_NAME
    if dist.is_main:
        state_dict = {name: tensor.detach().cpu() for name, tensor in trainer.base_model.state_dict().items()}
        save_artifact(artifact_path, config.model, state_dict, config.quant_scheme, run.tokenizer_sha256,
                      config.model.vocab_size)
    barrier(dist)

    shipped = model_from_artifact(load_artifact(artifact_path), dist.device, config.compile)
    roundtrip_plain = validate(trainer, run, model=shipped, stride=config.eval_seq_len, desc="eval roundtrip")
    log.fields(stage="roundtrip_plain", **roundtrip_plain)
    if config.eval_stride == config.eval_seq_len:
        scored = roundtrip_plain
    else:
        scored = validate(trainer, run, model=shipped, stride=config.eval_stride, desc="eval sliding")
        log.fields(stage=f"roundtrip_sliding_stride{config.eval_stride}", **scored)

    bytes_model = artifact_path.stat().st_size
    bytes_code = Path(code_path).stat().st_size if code_path is not None else accounting.code_bytes()
    result = {
        "preset": config.preset,
        "seed": config.seed,
        "val_loss": scored["val_loss"],
        "val_bpb": scored["val_bpb"],
        "val_bpb_roundtrip_plain": roundtrip_plain["val_bpb"],
        "val_loss_roundtrip_plain": roundtrip_plain["val_loss"],
        "val_bpb_prequant": prequant["val_bpb"],
        "val_loss_prequant": prequant["val_loss"],
        "val_tokens_scored": scored["val_tokens_scored"],
        "val_bytes_scored": scored["val_bytes_scored"],
        "eval_stride": config.eval_stride,
        "eval_seq_len": config.eval_seq_len,
        "eval_seconds": scored["eval_seconds"],
        "bytes_model": bytes_model,
        "bytes_code": bytes_code,
        "bytes_total": bytes_model + bytes_code,
        "bytes_budget": accounting.BUDGET_BYTES,
        "steps": state.step,
        "train_seconds": state.train_seconds,
        "train_tokens": state.train_tokens,
        "tokens_per_second": state.train_tokens / max(state.train_seconds, 1e-9),
        "world_size": dist.world_size,
        "machine": describe_machine(dist.device),
        "swa_checkpoints": trainer.averager.count,
        "artifact": ARTIFACT_NAME,
        "quant_scheme": config.quant_scheme,
    }
    if dist.is_main and run_dir is not None:
        write_json_atomic(Path(run_dir) / "result.json", result)
        write_curves(Path(run_dir), log)
    log.fields(bytes_model=bytes_model, bytes_code=bytes_code, bytes_total=bytes_model + bytes_code,
               bytes_budget=accounting.BUDGET_BYTES, fits=bytes_model + bytes_code <= accounting.BUDGET_BYTES)
    log.line(f"final_roundtrip_exact val_loss:{scored['val_loss']:.8f} val_bpb:{scored['val_bpb']:.8f} "
             f"stride:{config.eval_stride} steps:{state.step} train_seconds:{state.train_seconds:.1f} "
             f"bytes_total:{bytes_model + bytes_code}")
    return result


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

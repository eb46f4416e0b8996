"""Entry point of an exported `train_gpt.py`: the challenge's environment variables -> one training run.

`pgolf export` (see `pgolf.packaging.export`) writes a single file that embeds the
resolved `RunConfig` as JSON and calls `main_from_environment(config_json,
script_path)`. This module turns the environment variables the challenge's
own scripts use into config fields, runs `pgolf.train.run_training` exactly
as `pgolf train` would, and prints the challenge's familiar closing lines.
It is the only bundled module that reads the environment (torchrun's RANK /
WORLD_SIZE / LOCAL_RANK aside, which `pgolf.distributed` reads).

Where things go, relative to the script's own folder (the records folder):
the run's logs, metrics and result in `logs/<RUN_ID>/`, and the artifact
`model.pgolf` both there and next to the script.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Mapping

from pgolf.challenge import ARTIFACT_NAME
from pgolf.config import RunConfig, apply_overrides, run_config_from_dict
from pgolf.errors import PgolfError

DEFAULT_DATA_PATH = "./data/datasets/fineweb10B_sp1024"  # the challenge's layout, relative to the working folder

# challenge environment variable -> RunConfig field. TOKENIZER_PATH unset means: the dataset's
# manifest, else ./data/tokenizers/fineweb_1024_bpe.model beside the dataset (pgolf.data.shards).
ENVIRONMENT_SETTINGS: dict[str, str] = {
    "DATA_PATH": "data_dir",
    "TOKENIZER_PATH": "tokenizer_path",
    "SEED": "seed",
    "ITERATIONS": "iterations",
    "MAX_WALLCLOCK_SECONDS": "max_wallclock_seconds",
    "WARMUP_STEPS": "warmup_steps",
    "WARMDOWN_ITERS": "warmdown_steps",
    "VAL_LOSS_EVERY": "val_every",
    "TRAIN_LOG_EVERY": "log_every",
}


def config_from_environment(config_json: str, environment: Mapping[str, str]) -> RunConfig:
    """The embedded config with the challenge's environment variables applied (pure: no os.environ here)."""
    config = run_config_from_dict(json.loads(config_json))
    if not config.data_dir:
        config = apply_overrides(config, [f"data_dir={DEFAULT_DATA_PATH}"])
    for variable, field_name in ENVIRONMENT_SETTINGS.items():
        value = environment.get(variable)
        if value is None or value == "":
            continue
        try:
            config = apply_overrides(config, [f"{field_name}={value}"])
        except PgolfError as error:
            raise PgolfError(f"environment variable {variable}={value!r} is invalid: {error}") from None
    config.validate()
    return config


def run_id_from_environment(config: RunConfig, environment: Mapping[str, str]) -> str:
    """RUN_ID, else a name every rank derives alike (the ranks must agree on the run folder)."""
    run_id = environment.get("RUN_ID") or f"{config.preset}_seed{config.seed}"
    if run_id in (".", "..") or "/" in run_id or "\\" in run_id:
        raise PgolfError(f"RUN_ID={run_id!r} must be a plain folder name")
    return run_id


def closing_lines(result: dict) -> list[str]:
    """The challenge's familiar summary lines: byte counts and the exact round-trip scores."""
    lines = [
        f"Serialized model {result['quant_scheme']}: {result['bytes_model']} bytes",
        f"Code size: {result['bytes_code']} bytes",
        f"Total submission size {result['quant_scheme']}: {result['bytes_total']} bytes "
        f"(budget {result['bytes_budget']})",
        f"final_roundtrip_plain_exact val_loss:{result['val_loss_roundtrip_plain']:.8f} "
        f"val_bpb:{result['val_bpb_roundtrip_plain']:.8f}",
    ]
    if result["eval_stride"] != result["eval_seq_len"]:
        lines.append(f"final_sliding_window_exact val_loss:{result['val_loss']:.8f} "
                     f"val_bpb:{result['val_bpb']:.8f} stride:{result['eval_stride']}")
    return lines


def copy_atomic(source: Path, destination: Path) -> None:
    partial = destination.with_name(destination.name + ".tmp")
    shutil.copyfile(source, partial)
    os.replace(partial, destination)


def wait_for_all_ranks() -> None:
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def run_exported(config_json: str, script_path: Path, environment: Mapping[str, str]) -> dict:
    """Train with the embedded config; returns the result dict (also `logs/<RUN_ID>/result.json`)."""
    from pgolf.distributed import cleanup_distributed
    from pgolf.train import run_training

    script_path = Path(script_path).resolve()
    config = config_from_environment(config_json, environment)
    run_dir = script_path.parent / "logs" / run_id_from_environment(config, environment)
    if (run_dir / "result.json").exists():
        raise PgolfError(f"{run_dir} already holds a finished run; set RUN_ID to another name")
    is_main = int(environment.get("RANK", "0")) == 0
    try:
        result = run_training(config, run_dir, code_path=script_path)
        if is_main:
            copy_atomic(run_dir / ARTIFACT_NAME, script_path.parent / ARTIFACT_NAME)
            lines = closing_lines(result)
            with open(run_dir / "train.log", "a") as log:
                log.write("".join(line + "\n" for line in lines))
            for line in lines:
                print(line, flush=True)
        wait_for_all_ranks()  # no rank tears the process group down while rank 0 still works
    finally:
        cleanup_distributed()
    return result


def main_from_environment(config_json: str, script_path: str | Path) -> int:
    """What an exported script runs: errors print as one line, like `pgolf` itself."""
    try:
        run_exported(config_json, Path(script_path), os.environ)
    except PgolfError as error:
        print(f"{Path(script_path).name}: error: {error}", file=sys.stderr)
        return 1
    return 0

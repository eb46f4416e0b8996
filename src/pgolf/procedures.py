"""Which eval procedure scores a model: plain, sliding-window or score-first TTT, each with the optional
n-gram tilt, built from a run config's fields (`eval_procedure`, `ttt_*`, `eval_tilt`, `tilt_*`).

Every procedure yields `evaluate.Scored` events (and `evaluate.Updated` for the ones that adapt);
`evaluate.run_procedure` sums them into the bpb, and `pgolf verify --eval-compliance` runs them
to check the rules of a legal evaluation.
"""

from __future__ import annotations

import torch

from pgolf.config import RunConfig
from pgolf.errors import PgolfError
from pgolf.evaluate import Procedure, SlidingProcedure
from pgolf.runtime import autocast_dtype

# TTT, LoRA and the tilt are imported where they are used: an exported script whose config uses none
# of them leaves them out of its bundle (packaging.bundle.unused_feature_modules)

PROCEDURE_NAMES = ("sliding", "plain", "ttt")


def ttt_settings(config: RunConfig, adapt: bool = True):
    from pgolf.ttt import TTTSettings

    targets = tuple(name.strip() for name in config.ttt_lora_targets.split(",") if name.strip())
    return TTTSettings(
        context_tokens=config.ttt_context_tokens, chunk_tokens=config.ttt_chunk_tokens,
        batch_docs=config.ttt_batch_docs, lora_rank=config.ttt_lora_rank, lora_alpha=config.ttt_lora_alpha,
        lora_targets=targets, lr=config.ttt_lr, beta1=config.ttt_beta1, beta2=config.ttt_beta2,
        eps=config.ttt_eps, weight_decay=config.ttt_weight_decay, phase_boundaries=config.ttt_phase_boundaries,
        global_lr=config.ttt_global_lr, global_momentum=config.ttt_global_momentum,
        global_clip=config.ttt_global_clip, global_seq_len=config.ttt_global_seq_len,
        global_batch_seqs=config.ttt_global_batch_seqs, seed=config.seed, adapt=adapt)


def tilt_settings(config: RunConfig):
    if not config.eval_tilt:
        return None
    from pgolf.tilt import TiltSettings

    settings = TiltSettings(order=config.tilt_order, threshold=config.tilt_threshold, beta=config.tilt_beta)
    settings.validate()
    return settings


def procedure_from_config(config: RunConfig, name: str | None = None,
                          precision: torch.dtype | None | str = "config") -> Procedure:
    """The procedure `name` (default: the config's `eval_procedure`) with the config's numbers.
    `precision`: an autocast dtype, None for fp32, or "config" for the config's `autocast_dtype`."""
    name = config.eval_procedure if name is None else name
    dtype = autocast_dtype(config.autocast_dtype) if precision == "config" else precision
    tilt = tilt_settings(config)
    if name == "sliding":
        return SlidingProcedure(config.eval_seq_len, config.eval_stride, config.eval_batch_seqs, dtype, tilt)
    if name == "plain":
        return SlidingProcedure(config.eval_seq_len, config.eval_seq_len, config.eval_batch_seqs, dtype, tilt)
    if name == "ttt":
        from pgolf.ttt import TTTProcedure

        return TTTProcedure(ttt_settings(config), dtype, tilt)
    raise PgolfError(f"unknown eval procedure {name!r}; choose one of {', '.join(PROCEDURE_NAMES)}")


def eval_config(config_path=None, overrides: list[str] = (), base: RunConfig | None = None,
                procedure: str | None = None, tilt: bool = False, **eval_fields) -> RunConfig:
    """The run config a command scores with: a run's config.json (or `base`, default RunConfig()), then
    `--set` overrides, then the command's own choices (procedure, tilt, window fields); validated."""
    import dataclasses
    import json
    from pathlib import Path

    from pgolf.config import apply_overrides, run_config_from_dict

    config = base or RunConfig()
    if config_path:
        try:
            config = run_config_from_dict(json.loads(Path(config_path).read_text()))
        except (OSError, ValueError) as error:
            raise PgolfError(f"cannot read the run config {config_path}: {error}") from None
    config = apply_overrides(config, list(overrides))
    config = dataclasses.replace(config, eval_procedure=procedure or config.eval_procedure,
                                 eval_tilt=config.eval_tilt or tilt, **eval_fields)
    config.validate()
    return config

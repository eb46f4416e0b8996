"""The training run: build everything, loop over `train_step`, then score what we ship.

`run_training(config, run_dir)` reads as the story of a run:
build the model, optimisers, data stream and averager; run and undo the
compile warm-up; train until the step budget or the wall-clock cap; average
the weights (SWA); evaluate; quantise and write the artifact; read it back
and score it with sliding-window evaluation; write `result.json`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf import accounting, checkpoint
from pgolf.config import RunConfig, run_config_to_dict, run_config_to_json
from pgolf.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from pgolf.errors import PgolfError
from pgolf.optim import set_learning_rate, set_muon_momentum
from pgolf.runlog import RunLog, write_json_atomic
from pgolf.schedule import lr_multiplier, muon_momentum
from pgolf.data.stream import rank_batch
from pgolf import assemble, finalize
from pgolf.assemble import Trainer, TrainState


class NonFiniteLossError(PgolfError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------- one step


def train_step(trainer: Trainer) -> torch.Tensor:
    """Forward/backward over the accumulation micro-steps, clip, optimiser step. Returns the mean loss
    (a 0-dim tensor on the device, not synchronised)."""
    config, dist = trainer.config, trainer.dist
    local_tokens = config.micro_batch_tokens
    total_loss = torch.zeros((), device=dist.device, dtype=torch.float32)
    for micro_step in range(trainer.grad_accum_steps):
        inputs, targets = rank_batch(trainer.stream, local_tokens * dist.world_size, config.train_seq_len,
                                     dist.rank, dist.world_size)
        if dist.device.type == "cuda":  # page-locked, so the copies below really run asynchronously
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        inputs = inputs.to(dist.device, non_blocking=True)
        targets = targets.to(dist.device, non_blocking=True)
        is_last = micro_step == trainer.grad_accum_steps - 1
        sync = contextlib.nullcontext() if is_last or not isinstance(trainer.model, DistributedDataParallel) \
            else trainer.model.no_sync()
        with sync:
            with trainer.autocast():
                loss = trainer.model(inputs, targets)
            (loss / trainer.grad_accum_steps).backward()
        total_loss += loss.detach().float()
    if config.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainer.base_model.parameters(), config.grad_clip_norm)
    for optimizer in trainer.optimizers:
        optimizer.step()
    for optimizer in trainer.optimizers:
        optimizer.zero_grad(set_to_none=True)
    return total_loss / trainer.grad_accum_steps


def mean_over_ranks(value: torch.Tensor, dist: DistInfo) -> float:
    value = value.detach().double().clone()
    return all_reduce_sum(value, dist).item() / dist.world_size


# ---------------------------------------------------------------- warm-up and checkpoints


def run_compile_warmup(trainer: Trainer) -> None:
    """Run `warmup_steps` real steps (compilation, allocator) and undo them: weights, optimiser state
    and data position go back to the true initialisation."""
    if trainer.config.warmup_steps <= 0:
        return
    model_state = copy.deepcopy(trainer.base_model.state_dict())
    optimizer_states = [copy.deepcopy(optimizer.state_dict()) for optimizer in trainer.optimizers]
    stream_state = trainer.stream.state()
    for _ in range(trainer.config.warmup_steps):
        train_step(trainer)
    trainer.base_model.load_state_dict(model_state)
    for optimizer, state in zip(trainer.optimizers, optimizer_states):
        optimizer.load_state_dict(state)
    trainer.stream.load_state(stream_state)
    if trainer.dist.device.type == "cuda":
        torch.cuda.synchronize()


def save_checkpoint(trainer: Trainer, run_dir: Path) -> None:
    dist = trainer.dist
    shared = None
    if dist.is_main:
        shared = {
            "model": trainer.base_model.state_dict(),
            "averager": trainer.averager.state_dict(),
            "stream": trainer.stream.state(),
            "rng": checkpoint.rng_state(),
            "step": trainer.state.step,
            "train_seconds": trainer.state.train_seconds,
            "train_tokens": trainer.state.train_tokens,
            "config": run_config_to_dict(trainer.config),
        }
    checkpoint.write_rank_state(run_dir, dist.rank, [o.state_dict() for o in trainer.optimizers], shared)
    barrier(dist)
    if dist.is_main:
        checkpoint.publish(run_dir, trainer.state.step, dist.world_size)
    barrier(dist)


def restore_checkpoint(trainer: Trainer, run_dir: Path) -> None:
    shared, optimizer_states = checkpoint.load_checkpoint(run_dir, trainer.dist.rank, trainer.dist.world_size)
    trainer.base_model.load_state_dict(shared["model"])
    for optimizer, state in zip(trainer.optimizers, optimizer_states):
        optimizer.load_state_dict(state)
    trainer.averager.load_state_dict(shared["averager"])
    trainer.stream.load_state(shared["stream"])
    checkpoint.set_rng_state(shared["rng"])
    trainer.state = TrainState(step=shared["step"], train_seconds=shared["train_seconds"],
                               train_tokens=shared["train_tokens"])


# ---------------------------------------------------------------- the loop


def should_stop_for_time(trainer: Trainer) -> bool:
    cap = trainer.config.max_wallclock_seconds
    if cap <= 0:
        return False
    reached = torch.tensor(float(trainer.state.train_seconds >= cap), device=trainer.dist.device)
    # every rank must agree, or one would wait forever in the next all-reduce
    return all_reduce_sum(reached, trainer.dist).item() > 0


def train_loop(trainer: Trainer, run_dir: Path | None, log: RunLog, validate: Callable[[int], dict],
               progress, halt_at_step: int | None = None) -> None:
    config, dist, state = trainer.config, trainer.dist, trainer.state
    tokens_per_step = config.global_batch_tokens
    last_log_time, last_log_tokens = state.train_seconds, state.train_tokens
    synchronize = torch.cuda.synchronize if dist.device.type == "cuda" else (lambda: None)
    stop_for_time = should_stop_for_time(trainer)
    while state.step < config.iterations and not stop_for_time:
        multiplier = lr_multiplier(state.step, state.train_seconds, config)
        set_learning_rate(trainer.optimizers, multiplier)
        set_muon_momentum(trainer.optimizers, muon_momentum(state.step, config))
        synchronize()
        started = time.perf_counter()
        loss = train_step(trainer)
        synchronize()
        step_seconds = time.perf_counter() - started
        state.train_seconds += step_seconds
        state.step += 1
        state.train_tokens += tokens_per_step
        trainer.averager.maybe_add(trainer.base_model, state.step, multiplier)
        stop_for_time = should_stop_for_time(trainer)  # a collective: every rank decides alike

        is_last_step = stop_for_time or state.step == config.iterations
        is_log_step = state.step % config.log_every == 0 or is_last_step
        is_checkpoint_step = run_dir is not None and config.checkpoint_every > 0 \
            and state.step % config.checkpoint_every == 0
        if is_log_step or is_checkpoint_step:
            loss_value = mean_over_ranks(loss, dist)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss became {loss_value} at step {state.step}; stopping"
                    + (f" (last good checkpoint kept in {run_dir})" if run_dir and config.checkpoint_every else "")
                )
            seconds = max(state.train_seconds - last_log_time, 1e-9)
            tokens_per_second = (state.train_tokens - last_log_tokens) / seconds
            last_log_time, last_log_tokens = state.train_seconds, state.train_tokens
            record = {"step": state.step, "train_loss": loss_value, "lr_mult": multiplier,
                      "tokens_per_second": tokens_per_second, "train_tokens": state.train_tokens,
                      "elapsed_seconds": state.train_seconds}
            log.metrics(record)
            if progress is not None:
                progress.set_postfix({"loss": f"{loss_value:.4f}", "tok/s": f"{tokens_per_second:,.0f}"})
            if is_log_step:
                log.fields(step=f"{state.step}/{config.iterations}", train_loss=loss_value, lr_mult=multiplier,
                           train_time=f"{state.train_seconds:.1f}s", tokens_per_second=round(tokens_per_second))
        if progress is not None:  # the bar counts seconds when the wall clock ends the run
            progress.update(step_seconds if config.max_wallclock_seconds > 0 else 1)
        if config.val_every > 0 and state.step % config.val_every == 0 and not is_last_step:
            result = validate(state.step)
            log.metrics({"step": state.step, "train_tokens": state.train_tokens, **result})
            log.fields(step=state.step, **result)
        if is_checkpoint_step:
            save_checkpoint(trainer, run_dir)
        if halt_at_step is not None and state.step >= halt_at_step:
            return  # simulate a crash right here (tests of resume)


def run_training(config: RunConfig, run_dir: Path | None, resume: bool = False, quiet: bool = False,
                 halt_at_step: int | None = None, code_path: Path | None = None) -> dict[str, Any]:
    """Train, average, quantise, round-trip and score. Returns the result dict (also `result.json`).

    `code_path`: the single file whose bytes count as the code size (an exported train_gpt.py);
    by default the package files listed in `pgolf.accounting` are counted.
    `halt_at_step`: stop abruptly after that step, as a crash would (resume tests)."""
    config.validate()
    dist = init_distributed(config.device)
    run_dir = Path(run_dir) if run_dir is not None else None
    log = RunLog(run_dir, enabled=dist.is_main, echo=not quiet, resume_step=None)
    run = assemble.prepare(config)
    trainer = assemble.build_trainer(config, dist, run, quiet=quiet)
    if resume:
        restore_checkpoint(trainer, run_dir)
        log.close()
        log = RunLog(run_dir, enabled=dist.is_main, echo=not quiet, resume_step=trainer.state.step)
        log.fields(resumed_from_step=trainer.state.step, train_seconds=trainer.state.train_seconds)
    else:
        if dist.is_main and run_dir is not None:
            write_json_atomic(run_dir / "config.json", run_config_to_dict(config))
        description = assemble.describe(trainer, run)
        log.header(run_config_to_json(config), str(dist.device), dist.world_size, description)
        bytes_code = Path(code_path).stat().st_size if code_path is not None else accounting.code_bytes()
        for warning in (assemble.budget_warning(config, bytes_code), assemble.cpu_memory_warning(config, dist.device)):
            if warning:
                log.line(warning)
        run_compile_warmup(trainer)

    def validate(step: int) -> dict:
        return assemble.validate(trainer, run, max_tokens=config.val_max_tokens)

    progress = assemble.training_progress(config, trainer.state, dist, quiet)
    try:
        train_loop(trainer, run_dir, log, validate, progress, halt_at_step)
    finally:
        if progress is not None:
            progress.close()
    if halt_at_step is not None and trainer.state.step >= halt_at_step and trainer.state.step < config.iterations:
        log.close()
        return {"halted_at_step": trainer.state.step}
    result = finalize.finish_run(trainer, run, run_dir, log, code_path)
    log.close()
    return result

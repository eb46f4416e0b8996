"""The training run, start to end: `run_training` tells the story.

build (config -> data -> model -> optimisers; `pgolf.build`) -> compile
warm-up, undone -> `train_loop` over `train_step` until the step budget or the
wall clock -> finish (average, quantise, write, read back, score what we ship;
`pgolf.finish`). This module owns the run: the modules it calls never call
back into it.

The clock (spec pr198 §4): the whole loop counts towards `max_wallclock_seconds`
(steps, weight-average snapshots, the stop check, logging), except validation
passes and checkpoint writes; the run stops `train_reserve_seconds` before the cap.

Per step, the schedule decides (pure functions of step and training time, `pgolf.schedule`): the
learning-rate multiplier, Muon's momentum, whether the looped layer order runs (frontier depth
recurrence) and the training context length (progressive context, with its LR ramp).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf import build, checkpoint, finish
from pgolf.averaging import build_weight_averager
from pgolf.config import RunConfig, run_config_to_dict, run_config_to_json
from pgolf.data.packing import PackedRowStream, batch_boundaries, packed_rank_batch
from pgolf.data.stream import TokenStream, rank_batch
from pgolf.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from pgolf.errors import PgolfError
from pgolf.model import GPT
from pgolf.optim import build_optimizers, set_learning_rate, set_muon_momentum
from pgolf.packaging.size import predict_model_bytes
from pgolf.runlog import RunLog, config_sha256, write_json_atomic
from pgolf.runtime import autocast_context, autocast_dtype
from pgolf.schedule import ProgressiveContext, looping_active, lr_multiplier, muon_momentum, training_fraction
from pgolf.scoring import score


class NonFiniteLossError(PgolfError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainState:
    step: int = 0
    train_seconds: float = 0.0  # the clock: the loop minus validation and checkpoints (module docstring)
    train_tokens: int = 0


@dataclass
class Trainer:
    """Everything one optimiser step touches."""

    config: RunConfig
    dist: DistInfo
    base_model: GPT
    model: torch.nn.Module  # compiled and/or DDP-wrapped view of base_model
    optimizers: list
    stream: TokenStream  # a PackedRowStream with `packed_rows`
    averager: object  # averaging.WeightAverager (SWA) or ExponentialAverager (EMA): one interface
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum_steps: int
    progressive: ProgressiveContext
    state: TrainState = field(default_factory=TrainState)


def build_trainer(config: RunConfig, dist: DistInfo, train_files: list[Path]) -> Trainer:
    """Model (seeded), optimisers, token stream and weight averager for this config."""
    base_model, model = build.build_model(config, dist)
    stream = (PackedRowStream(train_files, config.model.bos_id) if config.packed_rows
              else TokenStream(train_files, vocab_size=config.model.vocab_size))
    return Trainer(
        config=config, dist=dist, base_model=base_model, model=model,
        optimizers=build_optimizers(base_model, config, dist),
        stream=stream,
        averager=build_weight_averager(config),
        autocast=autocast_context(autocast_dtype(config.autocast_dtype), dist.device),
        grad_accum_steps=config.grad_accum_steps(dist.world_size),
        progressive=ProgressiveContext(config),
    )


# ---------------------------------------------------------------- one step


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":  # page-locked, so the copy really runs asynchronously
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def boundaries_on(cu_seqlens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Document boundaries on the device, their length marked dynamic: a new document count does not
    recompile the model (the count varies from row to row)."""
    cu_seqlens = to_device(cu_seqlens, device)
    if device.type == "cuda":
        torch._dynamo.mark_dynamic(cu_seqlens, 0)
    return cu_seqlens


def train_step(trainer: Trainer, seq_len: int | None = None) -> torch.Tensor:
    """Forward/backward over the accumulation micro-steps, clip, optimiser step. Returns the mean loss
    (a 0-dim tensor on the device, not synchronised). `seq_len`: the training context (default the
    config's; progressive context changes it): plain rows of that length, or with `packed_rows` one
    document-packed row per rank, documents cut into pieces of at most that length."""
    config, dist = trainer.config, trainer.dist
    seq_len = seq_len or config.train_seq_len
    # frontier §4: each rank clips its own gradient, then the ranks average (no averaging in backward)
    clip_locally = config.grad_clip_local and dist.is_distributed
    total_loss = torch.zeros((), device=dist.device, dtype=torch.float32)
    for micro_step in range(trainer.grad_accum_steps):
        extra = {}
        if config.packed_rows:
            inputs, targets, cu_seqlens = packed_rank_batch(trainer.stream, config.micro_batch_tokens, dist.rank,
                                                            dist.world_size, max_length=seq_len)
            extra = {"cu_seqlens": boundaries_on(cu_seqlens, dist.device), "max_seqlen": seq_len}
        else:
            inputs, targets = rank_batch(trainer.stream, config.micro_batch_tokens * dist.world_size, seq_len,
                                         dist.rank, dist.world_size)
            if config.model.document_isolation and dist.device.type == "cuda":
                # the boundaries on the host, once per micro-step: the model would otherwise find them on the
                # GPU with a synchronising nonzero()
                boundaries = batch_boundaries(inputs, config.model.bos_id, seq_len)
                extra = {"cu_seqlens": boundaries_on(boundaries, dist.device), "max_seqlen": seq_len}
        inputs, targets = to_device(inputs, dist.device), to_device(targets, dist.device)
        is_last = micro_step == trainer.grad_accum_steps - 1
        sync = contextlib.nullcontext() if (is_last and not clip_locally) or not isinstance(
            trainer.model, DistributedDataParallel) else trainer.model.no_sync()
        with sync:
            with trainer.autocast():
                loss = trainer.model(inputs, targets, **extra)
            (loss / trainer.grad_accum_steps).backward()
        total_loss += loss.detach().float()
    if clip_locally:
        torch.nn.utils.clip_grad_norm_(trainer.base_model.parameters(), config.grad_clip_norm)
        average_gradients(trainer.base_model, dist)
    elif config.grad_clip_norm > 0:
        torch.nn.utils.clip_grad_norm_(trainer.base_model.parameters(), config.grad_clip_norm)
    for optimizer in trainer.optimizers:
        optimizer.step()
    for optimizer in trainer.optimizers:
        optimizer.zero_grad(set_to_none=True)
    return total_loss / trainer.grad_accum_steps


def average_gradients(model: torch.nn.Module, dist: DistInfo) -> None:
    """Every rank's gradients replaced by their mean over ranks (what DDP does in backward otherwise)."""
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([gradient.reshape(-1).float() for gradient in gradients])
    all_reduce_sum(flat, dist).div_(dist.world_size)
    offset = 0
    for gradient in gradients:
        gradient.copy_(flat[offset:offset + gradient.numel()].view_as(gradient))
        offset += gradient.numel()


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
    looping_before = trainer.base_model.looping
    for index in range(trainer.config.warmup_steps):
        # with depth recurrence, the first half compiles the plain layer order and the second the looped one
        trainer.base_model.looping = bool(trainer.config.model.loop_layers) and 2 * index >= trainer.config.warmup_steps
        for seq_len in warmup_lengths(trainer.config) if index == 0 else [None]:
            train_step(trainer, seq_len)
    trainer.base_model.looping = looping_before
    trainer.base_model.load_state_dict(model_state)
    for optimizer, state in zip(trainer.optimizers, optimizer_states):
        optimizer.load_state_dict(state)
    trainer.stream.load_state(stream_state)
    if trainer.dist.device.type == "cuda":
        torch.cuda.synchronize()


def warmup_lengths(config: RunConfig) -> list[int | None]:
    """The training context lengths the run will see, so the warm-up compiles each (progressive context)."""
    return list(config.progressive_seq_lens) if config.progressive_seq_lens else [None]


def save_checkpoint(trainer: Trainer, run_dir: Path) -> None:
    dist = trainer.dist
    shared = None
    if dist.is_main:
        shared = {
            "model": trainer.base_model.state_dict(),
            "averager": trainer.averager.state_dict(),
            "stream": trainer.stream.state(),
            "progressive": trainer.progressive.state(),
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
    shared, optimizer_states = checkpoint.load_checkpoint(run_dir, trainer.dist.rank, trainer.dist.world_size,
                                                          model=trainer.base_model, optimizers=trainer.optimizers)
    if shared.get("config") != run_config_to_dict(trainer.config):
        raise PgolfError(f"the checkpoint in {run_dir} was written by another config than its config.json; "
                         "refusing to resume a different run")
    trainer.base_model.load_state_dict(shared["model"])
    for optimizer, state in zip(trainer.optimizers, optimizer_states):
        optimizer.load_state_dict(state)
    trainer.averager.load_state_dict(shared["averager"])
    trainer.stream.load_state(shared["stream"])
    trainer.progressive.load_state(shared["progressive"])
    checkpoint.set_rng_state(shared["rng"])
    trainer.state = TrainState(step=shared["step"], train_seconds=shared["train_seconds"],
                               train_tokens=shared["train_tokens"])


# ---------------------------------------------------------------- the loop


def should_stop_for_time(config: RunConfig, elapsed_seconds: float, dist: DistInfo) -> bool:
    cap = config.max_wallclock_seconds - config.train_reserve_seconds  # the reserve: post-training work
    if config.max_wallclock_seconds <= 0:
        return False
    reached = torch.tensor(float(elapsed_seconds >= cap), device=dist.device)
    # every rank must agree, or one would wait forever in the next all-reduce
    return all_reduce_sum(reached, dist).item() > 0


def validate(trainer: Trainer, data: build.RunData) -> dict[str, float]:
    """Plain evaluation of the live weights on the val split's prefix (`val_max_tokens`)."""
    config = trainer.config
    return score(build.evaluation_model(trainer.model), data.val, config.eval_seq_len, config.eval_seq_len,
                 config.eval_batch_seqs, trainer.dist, autocast_dtype(config.autocast_dtype),
                 max_tokens=config.val_max_tokens, show_progress=False)


def train_loop(trainer: Trainer, data: build.RunData, run_dir: Path | None, log: RunLog, progress,
               halt_at_step: int | None = None) -> None:
    config, dist, state = trainer.config, trainer.dist, trainer.state
    last_log_time, last_log_tokens = state.train_seconds, state.train_tokens
    synchronize = torch.cuda.synchronize if dist.device.type == "cuda" else (lambda: None)
    stop_for_time = should_stop_for_time(config, state.train_seconds, dist)
    while state.step < config.iterations and not stop_for_time:
        synchronize()
        started = time.perf_counter()  # the clock runs from here to the end of the logging below
        fraction = training_fraction(state.step, state.train_seconds, config)
        trainer.base_model.looping = looping_active(fraction, config)
        seq_len, ramp = trainer.progressive.at(state.step, fraction)
        multiplier = lr_multiplier(state.step, state.train_seconds, config) * ramp
        set_learning_rate(trainer.optimizers, multiplier)
        set_muon_momentum(trainer.optimizers, muon_momentum(state.step, config))
        loss = train_step(trainer, seq_len)
        state.step += 1
        state.train_tokens += config.global_batch_tokens
        trainer.averager.maybe_add(trainer.base_model, state.step, multiplier)
        synchronize()
        # a collective: every rank decides alike
        stop_for_time = should_stop_for_time(config, state.train_seconds + time.perf_counter() - started, dist)

        is_last_step = stop_for_time or state.step == config.iterations
        is_log_step = state.step % config.log_every == 0 or is_last_step
        is_checkpoint_step = run_dir is not None and config.checkpoint_every > 0 \
            and state.step % config.checkpoint_every == 0
        if is_log_step or is_checkpoint_step:
            loss_value = mean_over_ranks(loss, dist)
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss became {loss_value} at step {state.step}; stopping"
                    + (f" (last good checkpoint kept in {run_dir})" if run_dir and config.checkpoint_every else ""))
            seconds = max(state.train_seconds + time.perf_counter() - started - last_log_time, 1e-9)
            tokens_per_second = (state.train_tokens - last_log_tokens) / seconds
            last_log_time, last_log_tokens = state.train_seconds + time.perf_counter() - started, state.train_tokens
            log.metrics({"step": state.step, "train_loss": loss_value, "lr_mult": multiplier,
                         "tokens_per_second": tokens_per_second, "train_tokens": state.train_tokens,
                         "elapsed_seconds": state.train_seconds})
            if progress is not None:
                progress.set_postfix({"loss": f"{loss_value:.4f}", "tok/s": f"{tokens_per_second:,.0f}"})
            if is_log_step:
                log.fields(step=f"{state.step}/{config.iterations}", train_loss=loss_value, lr_mult=multiplier,
                           train_time=f"{state.train_seconds:.1f}s", tokens_per_second=round(tokens_per_second))
        iteration_seconds = time.perf_counter() - started
        state.train_seconds += iteration_seconds
        if progress is not None:  # the bar counts seconds when the wall clock ends the run
            progress.update(iteration_seconds if config.max_wallclock_seconds > 0 else 1)
        if config.val_every > 0 and state.step % config.val_every == 0 and not is_last_step:
            result = validate(trainer, data)
            log.metrics({"step": state.step, "train_tokens": state.train_tokens, **result})
            log.fields(step=state.step, **result)
        if is_checkpoint_step:
            save_checkpoint(trainer, run_dir)
        if halt_at_step is not None and state.step >= halt_at_step:
            return  # simulate a crash right here (tests of resume)


def training_progress(config: RunConfig, state: TrainState, dist: DistInfo, quiet: bool):
    """A bar over steps, or over training seconds when the wall clock ends the run (ETA that means it)."""
    from pgolf.progress import progress_bar

    if not dist.is_main or quiet:
        return None
    if config.max_wallclock_seconds > 0:
        bar = progress_bar(total=round(config.max_wallclock_seconds), desc="train", unit="s")
        bar.update(state.train_seconds)
    else:
        bar = progress_bar(total=config.iterations, desc="train", unit="step")
        bar.update(state.step)
    return bar


# ---------------------------------------------------------------- the story


def run_training(config: RunConfig, run_dir: Path | None, resume: bool = False, quiet: bool = False,
                 halt_at_step: int | None = None, code_path: Path | None = None) -> dict[str, Any]:
    """Train, average, quantise, round-trip and score. Returns the result dict (also `result.json`).

    `code_path`: the single file whose bytes count as the code size (an exported train_gpt.py runs with
    its own path); by default the `train_gpt.py` that `pgolf export` would write for this config.
    `halt_at_step`: stop abruptly after that step, as a crash would (resume tests)."""
    config.validate()
    dist = init_distributed(config.device)
    run_dir = Path(run_dir) if run_dir is not None else None

    # build: config -> data -> model -> optimisers
    data = build.load_run_data(config)
    trainer = build_trainer(config, dist, data.train_files)
    predicted_model_bytes = predicted_artifact_bytes(config)
    bytes_code = code_bytes(config, code_path)
    problems = build.preflight_problems(config, run_dir, bytes_needed=checkpoint_bytes(trainer) + 2 * (
        predicted_model_bytes + bytes_code), device=dist.device)
    if problems:
        raise PgolfError("; ".join(problems))  # in seconds, not after the training minutes

    log = RunLog(run_dir, enabled=dist.is_main, echo=not quiet, resume_step=None)
    if resume:
        restore_checkpoint(trainer, run_dir)
        log.close()
        log = RunLog(run_dir, enabled=dist.is_main, echo=not quiet, resume_step=trainer.state.step)
        log.fields(resumed_from_step=trainer.state.step, train_seconds=trainer.state.train_seconds)
    else:
        if dist.is_main and run_dir is not None:
            write_json_atomic(run_dir / "config.json", run_config_to_dict(config))
        log.header(run_config_to_json(config), str(dist.device), dist.world_size,
                   {**build.describe(config, dist, trainer.base_model, data, trainer.grad_accum_steps,
                                     predicted_model_bytes), "config_sha256": config_sha256(config)[:16]})
        for warning in (build.budget_warning(predicted_model_bytes + bytes_code),
                        build.cpu_memory_warning(config, dist.device)):
            if warning:
                log.line(warning)
        run_compile_warmup(trainer)
        trainer.averager.begin(trainer.base_model)  # EMA starts from the true initialisation (SWA: nothing)

    # loop
    progress = training_progress(config, trainer.state, dist, quiet)
    try:
        train_loop(trainer, data, run_dir, log, progress, halt_at_step)
    finally:
        if progress is not None:
            progress.close()
    if halt_at_step is not None and trainer.state.step >= halt_at_step and trainer.state.step < config.iterations:
        log.close()
        return {"halted_at_step": trainer.state.step}

    # finish: score the live weights, average, quantise, write, read back, score what we ship
    state = trainer.state
    trainer.base_model.looping = bool(config.model.loop_layers)  # evaluation always runs the looped order
    result = finish.finish_run(
        finish.FinishInputs(config=config, dist=dist, base_model=trainer.base_model,
                            eval_model=build.evaluation_model(trainer.model), averager=trainer.averager,
                            val=data.val, steps=state.step, train_seconds=state.train_seconds,
                            train_tokens=state.train_tokens, bytes_code=bytes_code, train_files=data.train_files,
                            tokenizer_is_the_datasets=data.tokenizer_is_the_datasets),
        run_dir, log, quiet)
    log.close()
    return result


def predicted_artifact_bytes(config: RunConfig) -> int:
    return predict_model_bytes(config.model, config.quant_scheme)


def code_bytes(config: RunConfig, code_path: Path | None) -> int:
    """The counted code size: the file an exported script runs from, else what `pgolf export` writes.
    One definition: `pgolf.packaging.export.exported_code_bytes` measures the same script."""
    if code_path is not None:
        return Path(code_path).stat().st_size
    # not part of an exported script's bundle (packaging.export.OPTIONAL_MODULES): it always passes its path
    from pgolf.packaging.export import exported_code_bytes

    return exported_code_bytes(config)


def checkpoint_bytes(trainer: Trainer) -> int:
    """Disk a checkpoint takes at most (current + previous while swapping): weights, averages, optimiser."""
    if trainer.config.checkpoint_every <= 0:
        return 0
    weights = sum(p.numel() * 4 for p in trainer.base_model.parameters())
    return 2 * 4 * weights  # weights, SWA sum, two optimiser moments

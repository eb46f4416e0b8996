"""Calibration for GPTQ: input second moments H = sum X^T X / batches, collected with forward hooks.

`collect_hessians(model, batches)` runs the model on an iterator of TRAINING token batches
(never the val split: `calibration_batches` reads train shards only) and returns, per quantised
weight name, H (C, C) float32 and the per-column RMS of its inputs (AWQ-lite's activation
statistic). Hooks (spec frontier.md §5):

- the input of q (shared by k and v: one H for all three), of the attention out projection, of
  MLP-up and of MLP-down in every block; a block run several times (looped layers) adds every pass;
- for the tied embedding, the final-norm output (the tied head's input): the embedding is
  quantised as the output projection it also is.

Which modules share an input is a small table (`SHARED_INPUTS`); the head's input is the output of
the model's `final_norm` module (whatever layer order or residual lanes came before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from pgolf.errors import PgolfError

# module name suffix -> sibling whose input it shares (its H is that sibling's)
SHARED_INPUTS = {"attn.c_k": "attn.c_q", "attn.c_v": "attn.c_q"}
HOOKED_SUFFIXES = ("attn.c_q", "attn.proj", "mlp.fc", "mlp.proj")
EMBEDDING_NAME = "tok_emb.weight"


@dataclass
class Calibration:
    hessians: dict[str, Tensor]  # weight name -> (C, C) float32, sum X^T X / num_batches (k/v share q's)
    column_rms: dict[str, Tensor]  # weight name -> (C,) float32, RMS of each input column
    num_batches: int
    num_tokens: int


class _Accumulator:
    def __init__(self):
        self.sum: Tensor | None = None  # (C, C) float64
        self.rows = 0

    def add(self, inputs: Tensor) -> None:
        flat = inputs.detach().reshape(-1, inputs.shape[-1]).double()  # (tokens, C)
        product = flat.T @ flat
        self.sum = product if self.sum is None else self.sum + product
        self.rows += flat.shape[0]


def hooked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{module name: module} whose input H is collected (weight name = module name + '.weight')."""
    return {name: module for name, module in model.named_modules() if name.endswith(HOOKED_SUFFIXES)
            and isinstance(getattr(module, "weight", None), Tensor) and module.weight.ndim == 2}


def collect_hessians(model: nn.Module, batches: Iterable[Tensor]) -> Calibration:
    """Run `model(inputs)` on every batch (B, T) under no_grad and collect the Hessians."""
    accumulators: dict[str, _Accumulator] = {}
    handles = []

    def input_hook(name: str):
        def hook(module, args):
            accumulators.setdefault(name, _Accumulator()).add(args[0])
        return hook

    for name, module in hooked_modules(model).items():
        handles.append(module.register_forward_pre_hook(input_hook(name + ".weight")))
    def head_hook(module, args, output):
        accumulators.setdefault(EMBEDDING_NAME, _Accumulator()).add(output)
    handles.append(model.final_norm.register_forward_hook(head_hook))

    device = next(model.parameters()).device
    num_batches = num_tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in batches:
                model(inputs.to(device))
                num_batches += 1
                num_tokens += inputs.numel()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if num_batches == 0:
        raise PgolfError("calibration got no batches")
    hessians, column_rms = {}, {}
    for name, accumulator in accumulators.items():
        hessians[name] = (accumulator.sum / num_batches).float()
        column_rms[name] = (torch.diagonal(accumulator.sum) / accumulator.rows).sqrt().float()
    for name in list(hessians):
        for suffix, source in SHARED_INPUTS.items():
            sibling = name.replace(source + ".weight", suffix + ".weight")
            if name.endswith(source + ".weight") and sibling != name:
                hessians[sibling], column_rms[sibling] = hessians[name], column_rms[name]
    return Calibration(hessians=hessians, column_rms=column_rms, num_batches=num_batches, num_tokens=num_tokens)


def calibration_batches(train_files: list[Path], num_batches: int, batch_seqs: int, seq_len: int,
                        seed: int = 0) -> Iterator[Tensor]:
    """`num_batches` batches (batch_seqs, seq_len) int64 of random windows from the TRAIN shards.

    Only the given files are opened (callers pass `list_shards(dir, "train")`), so calibration can
    never read validation tokens.
    """
    from pgolf.data.shards import read_shard

    if not train_files:
        raise PgolfError("calibration needs at least one train shard")
    if any("_val_" in Path(path).name for path in train_files):
        raise PgolfError("calibration must not read validation shards")
    shards = [read_shard(path) for path in train_files]
    usable = [index for index, shard in enumerate(shards) if len(shard) > seq_len]
    if not usable:
        raise PgolfError(f"no train shard is longer than the calibration window ({seq_len} tokens)")
    generator = np.random.default_rng(seed)
    for _ in range(num_batches):
        windows = []
        for _ in range(batch_seqs):
            shard = shards[usable[generator.integers(len(usable))]]
            start = int(generator.integers(0, len(shard) - seq_len))
            windows.append(np.asarray(shard[start:start + seq_len], dtype=np.int64))
        yield torch.from_numpy(np.stack(windows))

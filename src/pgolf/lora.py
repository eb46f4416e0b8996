"""Batched per-document LoRA adapters on a GPT, added through forward hooks (score-first TTT only).

Spec frontier.md §6: one adapter per document of a batch on each named target of
every virtual-layer slot (a looped block gets one adapter per pass), plus one on
the head:

    target  input (B, T, in)                        added to
    q k v   the normed attention input              the c_q / c_k / c_v output
    out     the normed attention input              the attention output (after its projection)
    mlp     the normed MLP input                    the MLP output
    head    the final normed hidden state           the logits, before the soft-cap

    delta = (alpha / rank) * (x @ A^T) @ B^T,  A (B, rank, in) ~ uniform(+-1/sqrt(in)),  B (B, out, rank) = 0

Nothing in the model changes: forward pre-hooks count which pass of a physical
block is running (the slot), forward hooks add the deltas, and the head's goes
through `GPT.logit_delta` (None everywhere else). `attached(model)` installs
them and removes them on exit. Row d of every A and B belongs to document d of
the batch; `select(rows)` restricts the forward batch to some documents (those
with a chunk left), whose rows the next forward uses.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
from torch import nn

from pgolf.config import ModelConfig
from pgolf.errors import PgolfError

LORA_TARGETS = ("q", "k", "v", "out", "mlp", "head")


def adapter_shapes(config: ModelConfig, looping: bool, targets: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every adapter, named "slot<s>_<target>" and "head"."""
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown:
        raise PgolfError(f"unknown LoRA targets {sorted(unknown)}; choose from {', '.join(LORA_TARGETS)}")
    dim, kv_dim = config.model_dim, config.num_kv_heads * config.head_dim
    outputs = {"q": dim, "k": kv_dim, "v": kv_dim, "out": dim, "mlp": dim}
    shapes = {}
    for slot in range(len(config.layer_order(looping))):
        for target in LORA_TARGETS[:-1]:
            if target in targets:
                shapes[f"slot{slot}_{target}"] = (dim, outputs[target])
    if "head" in targets:
        shapes["head"] = (dim, config.vocab_size)
    return shapes


def parameters_per_document(config: ModelConfig, looping: bool, targets: tuple[str, ...], rank: int) -> int:
    return sum(rank * (fan_in + fan_out) for fan_in, fan_out in adapter_shapes(config, looping, targets).values())


class BatchedLoRA(nn.Module):
    def __init__(self, config: ModelConfig, looping: bool, targets: tuple[str, ...], rank: int, alpha: float,
                 num_docs: int, generator: torch.Generator, device: torch.device):
        super().__init__()
        if rank < 1 or num_docs < 1:
            raise PgolfError(f"LoRA needs rank >= 1 and at least one document, got {rank} and {num_docs}")
        self.layer_order = config.layer_order(looping)
        self.targets = tuple(targets)
        self.scale = alpha / rank
        self.num_docs = num_docs
        shapes = adapter_shapes(config, looping, self.targets)
        self.a = nn.ParameterDict({name: nn.Parameter(torch.empty(num_docs, rank, fan_in, device=device))
                                   for name, (fan_in, _) in shapes.items()})
        self.b = nn.ParameterDict({name: nn.Parameter(torch.zeros(num_docs, fan_out, rank, device=device))
                                   for name, (_, fan_out) in shapes.items()})
        self.rows: torch.Tensor | None = None  # documents in the forward batch; None = all
        self.draw_a(generator)

    @torch.no_grad()
    def draw_a(self, generator: torch.Generator) -> None:
        for a in self.a.values():
            bound = 1.0 / math.sqrt(a.shape[-1])
            a.copy_(torch.rand(a.shape, generator=generator, device=generator.device).to(a.device) * 2 * bound
                    - bound)

    @torch.no_grad()
    def zero_b(self) -> None:
        for b in self.b.values():
            b.zero_()

    def select(self, rows: torch.Tensor | None) -> None:
        self.rows = rows

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """(B, T, out) for x (B, T, in), B the selected documents."""
        a, b = self.a[name], self.b[name]
        if self.rows is not None:
            a, b = a[self.rows], b[self.rows]
        return torch.bmm(torch.bmm(x, a.transpose(1, 2).to(x.dtype)), b.transpose(1, 2).to(x.dtype)) * self.scale

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[None]:
        """The adapters added to `model`'s forward (a GPT, not a compiled wrapper) inside the block."""
        slots_of_layer: dict[int, list[int]] = {}
        for slot, layer in enumerate(self.layer_order):
            slots_of_layer.setdefault(layer, []).append(slot)
        calls = {"attn": [0] * len(model.blocks), "mlp": [0] * len(model.blocks)}
        current = {"attn": [0] * len(model.blocks), "mlp": [0] * len(model.blocks)}
        handles = []

        def reset_counts(module, args):
            for counts in calls.values():
                counts[:] = [0] * len(counts)

        def enter(kind: str, layer: int):
            def hook(module, args):  # the n-th call of this block in a forward is its n-th slot
                current[kind][layer] = slots_of_layer[layer][calls[kind][layer]]
                calls[kind][layer] += 1
            return hook

        def add(kind: str, layer: int, target: str):
            def hook(module, args, output):
                return output + self.delta(f"slot{current[kind][layer]}_{target}", args[0]).to(output.dtype)
            return hook

        handles.append(model.register_forward_pre_hook(reset_counts))
        for layer, block in enumerate(model.blocks):
            handles.append(block.attn.register_forward_pre_hook(enter("attn", layer)))
            handles.append(block.mlp.register_forward_pre_hook(enter("mlp", layer)))
            for target, module in (("q", block.attn.c_q), ("k", block.attn.c_k), ("v", block.attn.c_v),
                                   ("out", block.attn), ("mlp", block.mlp)):
                if target in self.targets:
                    handles.append(module.register_forward_hook(add("mlp" if target == "mlp" else "attn",
                                                                    layer, target)))
        if "head" in self.targets:
            model.logit_delta = lambda hidden: self.delta("head", hidden)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            model.logit_delta = None

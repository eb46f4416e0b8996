"""Stochastic weight averaging (SWA) of the late-training weights.

Once the learning-rate multiplier has fallen below `swa_start_lr_mult`, every
`swa_every` steps the current weights are added to a running fp32 sum; at the
end the mean replaces the weights (about 8 snapshots in the recipe). Only
parameters are averaged; buffers are left alone.
"""

from __future__ import annotations

import torch
from torch import nn

from pgolf.config import RunConfig
from pgolf.errors import PgolfError


class WeightAverager:
    """Running sum of selected weight snapshots. `storage_device` None keeps each sum next to its parameter."""

    def __init__(self, config: RunConfig, storage_device: torch.device | str | None = None):
        self.enabled = config.swa_enabled
        self.every = config.swa_every
        self.start_lr_mult = config.swa_start_lr_mult
        if self.enabled and self.every < 1:
            raise PgolfError(f"swa_every must be >= 1, got {self.every}")
        self.storage_device = storage_device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def should_add(self, step: int, lr_mult: float) -> bool:
        return self.enabled and lr_mult < self.start_lr_mult and step % self.every == 0

    @torch.no_grad()
    def maybe_add(self, model: nn.Module, step: int, lr_mult: float) -> bool:
        """Add the current weights when the rule selects this step; returns whether it did."""
        if not self.should_add(step, lr_mult):
            return False
        for name, parameter in model.named_parameters():
            device = parameter.device if self.storage_device is None else self.storage_device
            snapshot = parameter.detach().to(device=device, dtype=torch.float32)
            if name in self.sums:  # a sum restored from a checkpoint sits on the CPU until here
                self.sums[name] = self.sums[name].to(device).add_(snapshot)
            else:
                self.sums[name] = snapshot.clone()
        self.count += 1
        return True

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Replace the weights by the average of the snapshots (nothing happens with no snapshot)."""
        if self.count == 0:
            return
        named = dict(model.named_parameters())
        if set(named) != set(self.sums):
            missing = sorted(set(named) ^ set(self.sums))
            raise PgolfError(f"weight average does not match the model; differing parameters: {missing[:5]}")
        for name, parameter in named.items():
            parameter.copy_((self.sums[name] / self.count).to(device=parameter.device, dtype=parameter.dtype))

    def state_dict(self) -> dict:
        return {"count": self.count, "sums": {name: tensor.detach().cpu() for name, tensor in self.sums.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"count", "sums"}:
            raise PgolfError(f"weight averager state must have keys count and sums, got {sorted(state)}")
        count = int(state["count"])
        if count < 0 or (count == 0) != (len(state["sums"]) == 0):
            raise PgolfError(f"weight averager state is inconsistent: count {count}, {len(state['sums'])} sums")
        self.count = count
        self.sums = {}
        for name, tensor in state["sums"].items():
            tensor = tensor.to(torch.float32)
            self.sums[name] = tensor if self.storage_device is None else tensor.to(self.storage_device)

"""Weight averaging: stochastic weight averaging (SWA, pr198) or an exponential moving average (EMA, frontier).

SWA: once the learning-rate multiplier has fallen below `swa_start_lr_mult`, every
`swa_every` steps the current weights are added to a running fp32 sum; at the
end the mean replaces the weights (about 8 snapshots in the recipe).

EMA (`ema_decay > 0`, spec frontier.md §4): an fp32 copy of every weight, taken
at `begin` (the initial weights, after the compile warm-up is undone) and updated
after every step, ema <- d*ema + (1-d)*w; at the end it replaces the weights,
cast back to each parameter's dtype.

Both have the same interface (begin, maybe_add, apply_to, state_dict,
load_state_dict); `build_weight_averager` picks one. Only parameters are
averaged (the model has no buffers in its state dict).
"""

from __future__ import annotations

import torch
from torch import nn

from pgolf.config import RunConfig
from pgolf.errors import PgolfError


@torch.no_grad()
def copy_into(model: nn.Module, averages: dict[str, torch.Tensor]) -> None:
    """Overwrite every parameter with its average, cast to the parameter's device and dtype."""
    named = dict(model.named_parameters())
    if set(named) != set(averages):
        missing = sorted(set(named) ^ set(averages))
        raise PgolfError(f"weight average does not match the model; differing parameters: {missing[:5]}")
    for name, parameter in named.items():
        parameter.copy_(averages[name].to(device=parameter.device, dtype=parameter.dtype))


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

    def begin(self, model: nn.Module) -> None:
        """Nothing to do for SWA (its snapshots start late); the EMA copies the initial weights here."""

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
        copy_into(model, {name: total / self.count for name, total in self.sums.items()})

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


class ExponentialAverager:
    """fp32 EMA of every parameter, updated after every step. `storage_device` None keeps each copy by its parameter."""

    def __init__(self, config: RunConfig, storage_device: torch.device | str | None = None):
        if not 0 < config.ema_decay < 1:
            raise PgolfError(f"ema_decay must be in (0, 1), got {config.ema_decay}")
        self.decay = config.ema_decay
        self.storage_device = storage_device
        self.averages: dict[str, torch.Tensor] = {}
        self.count = 0  # updates since begin (logged like SWA's snapshot count)

    @torch.no_grad()
    def begin(self, model: nn.Module) -> None:
        """Start from the current (initial) weights."""
        self.averages = {name: self._stored(parameter).clone() for name, parameter in model.named_parameters()}
        self.count = 0

    def _stored(self, parameter: torch.Tensor) -> torch.Tensor:
        device = parameter.device if self.storage_device is None else self.storage_device
        return parameter.detach().to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def maybe_add(self, model: nn.Module, step: int, lr_mult: float) -> bool:
        """ema <- decay*ema + (1-decay)*w after every step; starts from these weights if `begin` was not called."""
        if not self.averages:
            self.begin(model)
            return True
        for name, parameter in model.named_parameters():
            average = self.averages[name]
            weights = self._stored(parameter).to(average.device)
            average.mul_(self.decay).add_(weights, alpha=1.0 - self.decay)
        self.count += 1
        return True

    @torch.no_grad()
    def apply_to(self, model: nn.Module) -> None:
        """Replace the weights by the average (nothing happens before `begin`)."""
        if self.averages:
            copy_into(model, self.averages)

    def state_dict(self) -> dict:
        return {"count": self.count, "decay": self.decay,
                "averages": {name: tensor.detach().cpu() for name, tensor in self.averages.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != {"count", "decay", "averages"}:
            raise PgolfError(f"EMA state must have keys count, decay and averages, got {sorted(state)}")
        if float(state["decay"]) != self.decay:
            raise PgolfError(f"EMA state has decay {state['decay']}, the run uses {self.decay}")
        self.count = int(state["count"])
        self.averages = {}
        for name, tensor in state["averages"].items():
            tensor = tensor.to(torch.float32)
            self.averages[name] = tensor if self.storage_device is None else tensor.to(self.storage_device)


def build_weight_averager(config: RunConfig, storage_device: torch.device | str | None = None):
    """The EMA when `ema_decay > 0`, else SWA (which is a no-op when `swa_enabled` is off)."""
    if config.ema_decay > 0:
        return ExponentialAverager(config, storage_device)
    return WeightAverager(config, storage_device)

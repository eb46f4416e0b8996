"""Learning-rate multiplier and Muon momentum as pure functions of the step (and elapsed time).

The recipe keeps the learning rate constant, then decays it linearly to zero
over the last `warmdown_steps` steps. A run stopped by the wall clock does not
know its last step in advance, so with a cap the warmdown is measured in time:
with the average step time so far, the multiplier is
`remaining_time / (warmdown_steps * step_time)` once that is below 1.

The frontier (spec frontier.md §4, `lr_schedule="fraction_warmdown"`) measures
training by its fraction instead: frac = training seconds / (cap - reserve), or
step / iterations without a cap (`training_fraction`); the multiplier is 1 while
frac < 1 - warmdown_fraction, then max((1 - frac) / warmdown_fraction, lr_floor).
The same fraction switches looping on (`looping_active`) and picks the
progressive training context of #2014 (`progressive_context`), whose LR ramp
after each switch is `context_ramp_multiplier`.
"""

from __future__ import annotations

from pgolf.config import RunConfig


def step_count_multiplier(step: int, iterations: int, warmdown_steps: int) -> float:
    """1 until `iterations - warmdown_steps`, then linear down to 0 at `iterations` (0 afterwards)."""
    if warmdown_steps <= 0:
        return 1.0
    remaining_steps = iterations - step
    return min(1.0, max(0.0, remaining_steps / warmdown_steps))


def wallclock_multiplier(step: int, elapsed_seconds: float, cap_seconds: float, warmdown_steps: int) -> float:
    """The time-measured warmdown: remaining time over the time `warmdown_steps` steps take."""
    if warmdown_steps <= 0:
        return 1.0
    step_seconds = elapsed_seconds / max(step, 1)  # average so far; 0 before the first step
    warmdown_seconds = warmdown_steps * step_seconds
    remaining_seconds = max(cap_seconds - elapsed_seconds, 0.0)
    if remaining_seconds >= warmdown_seconds:
        return 1.0  # also covers step 0, where no step time is known yet
    return remaining_seconds / warmdown_seconds


def training_fraction(step: int, elapsed_seconds: float, config: RunConfig) -> float:
    """How far training is, in [0, 1]: seconds / (cap - reserve) with a wall-clock cap, else step / iterations."""
    if config.max_wallclock_seconds > 0:
        budget = config.max_wallclock_seconds - config.train_reserve_seconds
        return min(max(elapsed_seconds / budget, 0.0), 1.0)
    return min(max(step / config.iterations, 0.0), 1.0) if config.iterations > 0 else 1.0


def fraction_warmdown_multiplier(fraction: float, warmdown_fraction: float, floor: float) -> float:
    """1 while fraction < 1 - warmdown_fraction, then max((1 - fraction) / warmdown_fraction, floor)."""
    if fraction < 1.0 - warmdown_fraction:
        return 1.0
    return max((1.0 - fraction) / warmdown_fraction, floor)


def looping_active(fraction: float, config: RunConfig) -> bool:
    """Whether the looped layer order runs at this training fraction (first step with fraction >= start)."""
    return bool(config.model.loop_layers) and fraction >= config.looping_start_fraction


def progressive_context(fraction: float, config: RunConfig) -> tuple[int, int]:
    """(training sequence length, index of the stage) at this fraction; without stages (train_seq_len, 0).

    Stage k holds from progressive_fractions[k-1] (inclusive) to progressive_fractions[k]: for #2014,
    lengths (1024, 2048, 3072) at fractions (0.10, 0.70): 1024 below 0.10, 2048 below 0.70, 3072 after.
    """
    if not config.progressive_seq_lens:
        return config.train_seq_len, 0
    stage = sum(1 for start in config.progressive_fractions if fraction >= start)
    return config.progressive_seq_lens[stage], stage


def context_ramp_multiplier(steps_since_switch: int | None, ramp_steps: int) -> float:
    """(k + 1) / ramp_steps for the k-th step (0-based) after a context switch, 1 otherwise or before any switch."""
    if steps_since_switch is None or ramp_steps <= 0 or steps_since_switch >= ramp_steps:
        return 1.0
    return (steps_since_switch + 1) / ramp_steps


class ProgressiveContext:
    """Remembers the step of the last context switch, for the LR ramp after it (#2014).

    `at(step, fraction)` -> (training sequence length, LR factor) for the step about to run; the
    loop multiplies `lr_multiplier` by the factor. `state()` / `load_state()` go into checkpoints.
    """

    def __init__(self, config: RunConfig):
        self.config = config
        self.stage = 0
        self.switch_step: int | None = None

    def at(self, step: int, fraction: float) -> tuple[int, float]:
        seq_len, stage = progressive_context(fraction, self.config)
        if stage != self.stage:
            self.stage, self.switch_step = stage, step
        since = None if self.switch_step is None else step - self.switch_step
        return seq_len, context_ramp_multiplier(since, self.config.progressive_ramp_steps)

    def state(self) -> dict:
        return {"stage": self.stage, "switch_step": self.switch_step}

    def load_state(self, state: dict) -> None:
        self.stage, self.switch_step = int(state["stage"]), state["switch_step"]


def lr_multiplier(step: int, elapsed_seconds: float, config: RunConfig) -> float:
    """Multiplier on every group's base learning rate for the step about to run.

    `lr_schedule="fraction_warmdown"`: `fraction_warmdown_multiplier` of `training_fraction`
    (the context ramp, if any, multiplies on top; the loop tracks the switches).

    With a wall-clock cap (`max_wallclock_seconds > 0`) the time rule decides; the step
    rule is applied too (the smaller wins) so that a run whose `iterations` end before the
    cap still warms down. With the recipe's numbers (20,000 iterations, about 7,100 steps
    fit in 600 s) the step rule is 1 throughout and the result is the reference's.
    """
    if config.lr_schedule == "fraction_warmdown":
        fraction = training_fraction(step, elapsed_seconds, config)
        return fraction_warmdown_multiplier(fraction, config.warmdown_fraction, config.lr_floor)
    by_steps = step_count_multiplier(step, config.iterations, config.warmdown_steps)
    if config.max_wallclock_seconds <= 0:
        return by_steps
    by_time = wallclock_multiplier(step, elapsed_seconds, config.max_wallclock_seconds, config.warmdown_steps)
    return min(by_steps, by_time)


def muon_momentum(step: int, config: RunConfig) -> float:
    """Linear from `muon_momentum_start` to `muon_momentum` over the warm-up steps, then constant."""
    warmup = config.muon_momentum_warmup_steps
    if warmup <= 0:
        return config.muon_momentum
    fraction = min(step / warmup, 1.0)
    return (1.0 - fraction) * config.muon_momentum_start + fraction * config.muon_momentum

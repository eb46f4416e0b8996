"""Learning-rate multiplier and Muon momentum as pure functions of the step (and elapsed time).

The recipe keeps the learning rate constant, then decays it linearly to zero
over the last `warmdown_steps` steps. A run stopped by the wall clock does not
know its last step in advance, so with a cap the warmdown is measured in time:
with the average step time so far, the multiplier is
`remaining_time / (warmdown_steps * step_time)` once that is below 1.
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


def lr_multiplier(step: int, elapsed_seconds: float, config: RunConfig) -> float:
    """Multiplier on every group's base learning rate for the step about to run.

    With a wall-clock cap (`max_wallclock_seconds > 0`) the time rule decides; the step
    rule is applied too (the smaller wins) so that a run whose `iterations` end before the
    cap still warms down. With the recipe's numbers (20,000 iterations, about 7,100 steps
    fit in 600 s) the step rule is 1 throughout and the result is the reference's.
    """
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

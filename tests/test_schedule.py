"""LR multiplier (step-count and wall-clock warmdown) and the Muon momentum ramp."""

from dataclasses import replace

import pytest

from pgolf.config import RunConfig
from pgolf.schedule import lr_multiplier, muon_momentum


def step_config(**changes) -> RunConfig:
    return replace(RunConfig(), max_wallclock_seconds=0.0, iterations=1000, warmdown_steps=200, **changes)


@pytest.mark.parametrize("step, expected", [
    (0, 1.0), (500, 1.0), (799, 1.0), (800, 1.0), (850, 0.75), (900, 0.5), (999, 0.005), (1000, 0.0), (1200, 0.0),
])
def test_step_count_warmdown(step, expected):
    assert lr_multiplier(step, elapsed_seconds=12345.0, config=step_config()) == pytest.approx(expected)


def test_step_count_ignores_elapsed_time():
    config = step_config()
    assert lr_multiplier(100, 0.0, config) == lr_multiplier(100, 1e9, config) == 1.0


def test_warmdown_longer_than_run_starts_below_one():
    config = replace(step_config(), iterations=100, warmdown_steps=400)
    assert lr_multiplier(0, 0.0, config) == pytest.approx(0.25)
    assert lr_multiplier(50, 0.0, config) == pytest.approx(0.125)


def test_wallclock_warmdown_uses_average_step_time():
    # the recipe: 600 s cap, 3000 warmdown steps, many iterations (the cap ends the run)
    config = replace(RunConfig(), max_wallclock_seconds=600.0, warmdown_steps=3000, iterations=20_000)
    # 0.1 s per step: warmdown lasts 300 s, so it starts when 300 s remain
    assert lr_multiplier(1000, 100.0, config) == 1.0
    assert lr_multiplier(3000, 300.0, config) == 1.0
    assert lr_multiplier(4000, 400.0, config) == pytest.approx(200.0 / 300.0)
    assert lr_multiplier(5500, 550.0, config) == pytest.approx(50.0 / 300.0)
    # 0.084 s per step: 7,000 steps took 588 s; 12 s remain of a 252 s warmdown
    assert lr_multiplier(7000, 588.0, config) == pytest.approx(12.0 / 252.0)
    # past the cap: clamped at zero
    assert lr_multiplier(6100, 610.0, config) == 0.0


def test_wallclock_first_step_is_full_rate():
    config = replace(RunConfig(), max_wallclock_seconds=600.0)
    assert lr_multiplier(0, 0.0, config) == 1.0


def test_wallclock_mode_still_warms_down_when_iterations_end_first():
    # fast steps: the time rule stays at 1, the step rule takes over near `iterations`
    config = replace(RunConfig(), max_wallclock_seconds=600.0, iterations=1000, warmdown_steps=200)
    assert lr_multiplier(900, 9.0, config) == pytest.approx(0.5)


def test_zero_warmdown_is_constant():
    config = replace(step_config(), warmdown_steps=0)
    assert lr_multiplier(999, 0.0, config) == 1.0


def test_muon_momentum_ramp():
    config = replace(RunConfig(), muon_momentum_start=0.92, muon_momentum=0.99, muon_momentum_warmup_steps=1500)
    assert muon_momentum(0, config) == pytest.approx(0.92)
    assert muon_momentum(750, config) == pytest.approx(0.955)
    assert muon_momentum(1500, config) == pytest.approx(0.99)
    assert muon_momentum(10_000, config) == pytest.approx(0.99)
    values = [muon_momentum(step, config) for step in range(0, 1600, 100)]
    assert values == sorted(values)


def test_muon_momentum_without_ramp():
    config = replace(RunConfig(), muon_momentum_warmup_steps=0, muon_momentum=0.95)
    assert muon_momentum(0, config) == 0.95

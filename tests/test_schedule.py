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


# ---------------------------------------------------------------- frontier (spec frontier.md §4, #2014)

from pgolf.schedule import ProgressiveContext, context_ramp_multiplier, fraction_warmdown_multiplier, \
    looping_active, progressive_context, training_fraction  # noqa: E402


def spec_multiplier(fraction: float) -> float:
    """frac = training seconds / 599.5; 1 while frac < 0.15, then max((1 - frac) / 0.85, 0.10)."""
    return 1.0 if fraction < 0.15 else max((1 - fraction) / 0.85, 0.10)


def frontier_schedule(**changes) -> RunConfig:
    settings = dict(lr_schedule="fraction_warmdown", warmdown_fraction=0.85, lr_floor=0.10,
                    max_wallclock_seconds=600.0, train_reserve_seconds=0.5)
    return replace(RunConfig(), **{**settings, **changes})


@pytest.mark.parametrize("seconds", [0.0, 50.0, 89.9, 89.925, 120.0, 300.0, 500.0, 548.0, 548.6, 599.5, 650.0])
def test_fraction_warmdown_is_the_spec_rule(seconds):
    config = frontier_schedule()
    fraction = min(seconds / 599.5, 1.0)
    assert training_fraction(3, seconds, config) == pytest.approx(fraction)
    assert lr_multiplier(3, seconds, config) == pytest.approx(spec_multiplier(fraction))


def test_fraction_warmdown_floor_and_continuity():
    assert fraction_warmdown_multiplier(0.15, 0.85, 0.10) == pytest.approx(1.0)
    assert fraction_warmdown_multiplier(0.915, 0.85, 0.10) == pytest.approx(0.10)  # floor reached at 0.915
    assert fraction_warmdown_multiplier(0.99, 0.85, 0.10) == 0.10
    assert fraction_warmdown_multiplier(0.5, 0.85, 0.0) == pytest.approx(0.5 / 0.85)


def test_without_a_cap_the_fraction_counts_steps():
    config = frontier_schedule(max_wallclock_seconds=0.0, iterations=300)
    assert training_fraction(150, 1e6, config) == 0.5
    assert lr_multiplier(150, 1e6, config) == pytest.approx(spec_multiplier(0.5))


def test_looping_switches_on_at_its_fraction():
    from pgolf.config import frontier

    config = frontier()
    assert not looping_active(0.3499, config) and looping_active(0.35, config) and looping_active(0.9, config)
    assert not looping_active(0.9, replace(config, model=replace(config.model, loop_layers=(), num_loop_passes=1)))


def progressive_config() -> RunConfig:  # #2014: 1024 up to 0.10, 2048 up to 0.70, 3072 after
    return replace(RunConfig(), progressive_seq_lens=(1024, 2048, 3072), progressive_fractions=(0.10, 0.70))


@pytest.mark.parametrize("fraction, length", [(0.0, 1024), (0.0999, 1024), (0.10, 2048), (0.6999, 2048),
                                              (0.70, 3072), (1.0, 3072)])
def test_progressive_context_lengths(fraction, length):
    assert progressive_context(fraction, progressive_config())[0] == length
    assert progressive_context(fraction, RunConfig())[0] == 2048  # off: train_seq_len


def test_context_ramp_after_each_switch():
    assert [context_ramp_multiplier(k, 32) for k in (0, 1, 15, 31, 32, 100)] == [1 / 32, 2 / 32, 16 / 32, 1.0, 1.0, 1.0]
    assert context_ramp_multiplier(None, 32) == 1.0
    tracker = ProgressiveContext(progressive_config())
    fractions = [0.05, 0.09, 0.10, 0.11, 0.12] + [0.2] * 30 + [0.71, 0.72]
    seen = [tracker.at(step, fraction) for step, fraction in enumerate(fractions)]
    assert seen[:2] == [(1024, 1.0), (1024, 1.0)]  # before any switch: no ramp
    assert seen[2:5] == [(2048, 1 / 32), (2048, 2 / 32), (2048, 3 / 32)]
    assert seen[33] == (2048, 32 / 32) and seen[34] == (2048, 1.0)
    assert seen[35:] == [(3072, 1 / 32), (3072, 2 / 32)]
    restored = ProgressiveContext(progressive_config())
    restored.load_state(tracker.state())
    assert restored.at(37, 0.73) == tracker.at(37, 0.73) == (3072, 3 / 32)

"""SWA: exactly the steps the rule selects are averaged; state round-trips; disabled is a no-op."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from pgolf.averaging import WeightAverager
from pgolf.config import RunConfig
from pgolf.errors import PgolfError


class TwoTensors(nn.Module):
    def __init__(self):
        super().__init__()
        self.matrix = nn.Parameter(torch.zeros(3, 4))
        self.vector = nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))


def fake_lr_mult(step: int) -> float:
    return max(0.0, 1.0 - step / 100.0)  # crosses 0.5 at step 50


def weights_at(step: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return {"matrix": torch.randn(3, 4, generator=generator), "vector": torch.randn(4, generator=generator)}


def drive(averager: WeightAverager, model: TwoTensors, steps) -> dict[int, dict[str, torch.Tensor]]:
    """Set the weights to a step-dependent value each step and feed the averager; return all snapshots."""
    snapshots = {}
    for step in steps:
        with torch.no_grad():
            for name, value in weights_at(step).items():
                getattr(model, name).copy_(value)
        snapshots[step] = {name: p.detach().float().clone() for name, p in model.named_parameters()}
        averager.maybe_add(model, step, fake_lr_mult(step))
    return snapshots


def test_average_is_the_mean_of_the_selected_snapshots():
    config = replace(RunConfig(), swa_enabled=True, swa_every=7, swa_start_lr_mult=0.5)
    model, averager = TwoTensors(), WeightAverager(config)
    snapshots = drive(averager, model, range(1, 101))
    selected = [step for step in snapshots if fake_lr_mult(step) < 0.5 and step % 7 == 0]
    assert selected == [56, 63, 70, 77, 84, 91, 98]
    assert averager.count == len(selected)
    averager.apply_to(model)
    for name, parameter in model.named_parameters():
        expected = torch.stack([snapshots[step][name] for step in selected]).mean(0)
        tolerance = 1e-2 if parameter.dtype == torch.bfloat16 else 1e-6
        torch.testing.assert_close(parameter.float(), expected.to(parameter.dtype).float(), atol=tolerance, rtol=0)


def test_maybe_add_reports_whether_it_added():
    config = replace(RunConfig(), swa_enabled=True, swa_every=10, swa_start_lr_mult=0.5)
    averager = WeightAverager(config)
    model = TwoTensors()
    assert not averager.maybe_add(model, 10, 0.6)  # lr too high
    assert not averager.maybe_add(model, 11, 0.4)  # not a multiple of 10
    assert averager.maybe_add(model, 20, 0.4)
    assert averager.count == 1


def test_disabled_never_adds_and_apply_is_noop():
    config = replace(RunConfig(), swa_enabled=False, swa_every=1)
    averager = WeightAverager(config)
    model = TwoTensors()
    drive(averager, model, range(1, 101))
    before = model.matrix.detach().clone()
    averager.apply_to(model)
    assert averager.count == 0
    assert torch.equal(model.matrix, before)


def test_state_dict_round_trip_continues_the_same_sum():
    config = replace(RunConfig(), swa_enabled=True, swa_every=5, swa_start_lr_mult=0.5)
    uninterrupted, model_a = WeightAverager(config), TwoTensors()
    drive(uninterrupted, model_a, range(1, 101))

    first, model_b = WeightAverager(config), TwoTensors()
    drive(first, model_b, range(1, 71))
    state = first.state_dict()
    assert set(state) == {"count", "sums"} and all(t.dtype == torch.float32 for t in state["sums"].values())
    resumed = WeightAverager(config)
    resumed.load_state_dict(state)
    drive(resumed, model_b, range(71, 101))

    assert resumed.count == uninterrupted.count == 10  # steps 55, 60, ..., 100
    resumed.apply_to(model_b)
    uninterrupted.apply_to(model_a)
    for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(a, b), name


def test_resume_mid_run_then_keep_adding():
    config = replace(RunConfig(), swa_enabled=True, swa_every=1, swa_start_lr_mult=2.0)
    model = TwoTensors()
    averager = WeightAverager(config)
    with torch.no_grad():
        model.matrix.fill_(1.0)
    averager.maybe_add(model, 1, 1.0)
    restored = WeightAverager(config)
    restored.load_state_dict(averager.state_dict())
    with torch.no_grad():
        model.matrix.fill_(4.0)
    restored.maybe_add(model, 2, 1.0)
    restored.apply_to(model)
    assert torch.allclose(model.matrix, torch.full((3, 4), 2.5))


def test_mismatched_model_raises():
    config = replace(RunConfig(), swa_enabled=True, swa_every=1, swa_start_lr_mult=2.0)
    averager = WeightAverager(config)
    averager.maybe_add(TwoTensors(), 1, 1.0)
    with pytest.raises(PgolfError, match="does not match"):
        averager.apply_to(nn.Linear(2, 2))


def test_bad_state_raises():
    averager = WeightAverager(RunConfig())
    with pytest.raises(PgolfError):
        averager.load_state_dict({"count": 3, "sums": {}})


# ---------------------------------------------------------------- EMA (spec frontier.md §4)

from pgolf.averaging import ExponentialAverager, build_weight_averager  # noqa: E402


def test_ema_from_the_initial_weights_every_step():
    config = replace(RunConfig(), ema_decay=0.9965)
    model, averager = TwoTensors(), build_weight_averager(config)
    assert isinstance(averager, ExponentialAverager)
    with torch.no_grad():
        for name, value in weights_at(0).items():
            getattr(model, name).copy_(value)
    averager.begin(model)
    expected = {name: p.detach().double().clone() for name, p in model.named_parameters()}
    snapshots = drive(averager, model, range(1, 31))
    for step in range(1, 31):  # ema = 0.9965 * ema + 0.0035 * w after every step
        for name in expected:
            expected[name] = 0.9965 * expected[name] + 0.0035 * snapshots[step][name].double()
    assert averager.count == 30
    averager.apply_to(model)
    assert model.vector.dtype == torch.bfloat16  # cast back to the parameter's dtype
    torch.testing.assert_close(model.matrix.double(), expected["matrix"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model.vector.double(), expected["vector"].bfloat16().double(), atol=1e-2, rtol=0)


def test_ema_state_round_trip_continues_identically():
    config = replace(RunConfig(), ema_decay=0.9)
    model, first = TwoTensors(), ExponentialAverager(config)
    first.begin(model)
    drive(first, model, range(1, 6))
    second = ExponentialAverager(config)
    second.load_state_dict(first.state_dict())
    drive(first, model, range(6, 9))
    drive(second, model, range(6, 9))
    for name in first.averages:
        assert torch.equal(first.averages[name], second.averages[name])
    with pytest.raises(PgolfError, match="decay"):
        ExponentialAverager(replace(config, ema_decay=0.5)).load_state_dict(first.state_dict())


def test_without_ema_the_builder_gives_swa_and_begin_is_harmless():
    averager = build_weight_averager(replace(RunConfig(), swa_enabled=True))
    assert isinstance(averager, WeightAverager)
    averager.begin(TwoTensors())
    assert averager.count == 0 and averager.state_dict()["sums"] == {}

"""Parameter groups, Muon against plain-math references and torch.optim.Muon, optimiser set-up, 2-process Muon."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from pgolf.config import RunConfig
from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.optim import POLAR_EXPRESS_COEFFICIENTS, Muon, build_optimizers, iteration_coefficients, \
    normalize_rows, orthogonalize, parameter_group_of, parameter_groups, set_learning_rate, set_muon_momentum, \
    shard_by_shape

COEFFICIENTS = (3.4445, -4.7750, 2.0315)


# ---------------------------------------------------------------- a stand-in with the GPT's parameter names


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.c_q, self.c_k, self.c_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_gain = nn.Parameter(torch.full((heads,), 1.5))


class MLP(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(3 * dim, dim, bias=False)


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn, self.mlp = Attention(dim, 2), MLP(dim)
        self.attn_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))  # 2-D yet a control


class Bigram(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.table = nn.Embedding(16, 4)
        self.proj = nn.Linear(4, dim, bias=False)
        self.scale = nn.Parameter(torch.tensor(0.05))


class Smear(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim))


class FakeGPT(nn.Module):
    def __init__(self, dim: int = 8, num_layers: int = 2):
        super().__init__()
        self.tok_emb = nn.Embedding(32, dim)
        self.bigram, self.smear = Bigram(dim), Smear(dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(num_layers))
        self.skip_weights = nn.Parameter(torch.ones(num_layers // 2, dim))  # 2-D control tensor


def test_parameter_groups_cover_every_parameter_exactly_once():
    model = FakeGPT()
    groups = parameter_groups(model)
    names = {group: {name for name, _ in members} for group, members in groups.items()}
    assert names["embed"] == {"tok_emb.weight", "bigram.table.weight"}
    assert names["matrix"] == {"bigram.proj.weight"} | {
        f"blocks.{i}.{leaf}.weight" for i in range(2)
        for leaf in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")}
    assert names["scalar"] == {"bigram.scale", "smear.gate", "skip_weights"} | {
        f"blocks.{i}.{leaf}" for i in range(2) for leaf in ("attn.q_gain", "attn_scale", "mlp_scale", "resid_mix")}
    all_names = [name for members in groups.values() for name, _ in members]
    assert sorted(all_names) == sorted(name for name, _ in model.named_parameters())
    assert len(all_names) == len(set(all_names))


def test_stray_matrix_outside_the_table_raises():
    model = FakeGPT()
    model.head = nn.Linear(8, 32, bias=False)
    with pytest.raises(PgolfError, match="head.weight"):
        parameter_groups(model)


def test_stray_three_dimensional_parameter_raises():
    model = FakeGPT()
    model.blocks[0].odd = nn.Parameter(torch.zeros(2, 2, 2))
    with pytest.raises(PgolfError, match="blocks.0.odd"):
        parameter_groups(model)


def test_unknown_vector_is_a_scalar():
    model = FakeGPT()
    model.blocks[1].norm_weight = nn.Parameter(torch.ones(8))
    assert "blocks.1.norm_weight" in {name for name, _ in parameter_groups(model)["scalar"]}


# ---------------------------------------------------------------- Muon against references


def float64_newton_schulz(matrix: torch.Tensor, steps: int) -> torch.Tensor:
    """The iteration in exact-ish arithmetic: normalise by (Frobenius + 1e-7), transpose tall matrices."""
    a, b, c = COEFFICIENTS
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.double().T if tall else matrix.double()
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def reference_muon(params, gradients_per_step, lr, momentum, weight_decay, steps, float64=False):
    """Plain-math Muon on copies of `params`; returns the final parameters.

    float64=False uses pgolf's bf16 `orthogonalize` (checked on its own below) so that the
    momentum, Nesterov, shape scaling and weight decay can be compared to rounding level.
    """
    params = [p.detach().clone().double() if float64 else p.detach().clone() for p in params]
    buffers = [torch.zeros_like(p) for p in params]
    for gradients in gradients_per_step:
        for p, g, buffer in zip(params, gradients, buffers):
            g = g.to(p.dtype)
            buffer.copy_(momentum * buffer + g)
            update = g + momentum * buffer
            rows, cols = p.shape
            scale = math.sqrt(max(1.0, rows / cols))
            if float64:
                orthogonal = float64_newton_schulz(update, steps) * scale
            else:
                orthogonal = orthogonalize(update, steps) * scale  # bf16 product, as the recipe rounds it
            p.copy_(p * (1 - lr * weight_decay) - lr * orthogonal.to(p.dtype))
    return params


def make_problem(seed: int = 0, num_steps: int = 3):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(16, 8), (8, 24), (12, 12)]  # tall, wide, square
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    gradients = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(num_steps)]
    return params, gradients


def run_optimizer(optimizer, params, gradients_per_step):
    for gradients in gradients_per_step:
        for p, g in zip(params, gradients):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach().clone() for p in params]


def test_muon_matches_plain_reference():
    params, gradients = make_problem()
    expected = reference_muon(params, gradients, lr=0.05, momentum=0.9, weight_decay=0.1, steps=5)
    ours = run_optimizer(Muon(params, lr=0.05, momentum=0.9, ns_steps=5, weight_decay=0.1), params, gradients)
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(32, 16), (16, 48), (24, 24)])
def test_orthogonalize_close_to_float64_iteration(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    ours = orthogonalize(matrix, 5)
    assert ours.dtype == torch.bfloat16 and ours.shape == shape
    exact = float64_newton_schulz(matrix, 5)
    assert (ours.double() - exact).norm() / exact.norm() < 0.04  # bf16 rounding, measured about 0.015
    if shape[0] != shape[1]:  # a random square matrix has near-zero singular values 5 steps cannot lift
        singular = torch.linalg.svdvals(ours.float())
        assert singular.min() > 0.5 and singular.max() < 1.5


@pytest.mark.parametrize("shape", [(32, 16), (16, 48)])
def test_batched_orthogonalize_matches_each_matrix_alone(shape):
    matrices = torch.randn((3, *shape), generator=torch.Generator().manual_seed(6))
    matrices[1] *= 100.0  # each matrix is normalised on its own, not by the batch's norm
    batched = orthogonalize(matrices, 5)
    assert batched.dtype == torch.bfloat16 and batched.shape == matrices.shape
    for got, matrix in zip(batched, matrices):
        alone = orthogonalize(matrix, 5).double()
        exact = float64_newton_schulz(matrix, 5)
        assert (got.double() - alone).norm() / alone.norm() < 0.02  # bf16 rounding of two kernel orders
        assert (got.double() - exact).norm() / exact.norm() < 0.04


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_shard_by_shape_gives_every_matrix_one_owner_and_balances_shapes(world_size):
    shapes = [(8, 4, 5), (4, 4, 5), (8, 4, 5), (4, 4, 5), (8, 4, 5), (4, 4, 3), (8, 4, 5)]
    owners = {}
    for rank in range(world_size):
        for batch in shard_by_shape(shapes, rank, world_size):
            assert len({shapes[index] for index in batch.indices}) == 1  # one shape per batch
            assert batch.ns_steps == shapes[batch.indices[0]][2]
            for index in batch.indices:
                assert index not in owners
                owners[index] = rank
    assert sorted(owners) == list(range(len(shapes)))
    per_rank = [sum(1 for owner in owners.values() if owner == rank) for rank in range(world_size)]
    assert max(per_rank) - min(per_rank) <= 1


def test_muon_batches_same_shape_matrices_close_to_one_at_a_time():
    generator = torch.Generator().manual_seed(7)
    shapes = [(16, 8), (16, 8), (8, 24), (16, 8), (8, 24)]
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    gradients = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(3)]
    start = [p.detach().clone() for p in params]
    expected = reference_muon(params, gradients, lr=0.05, momentum=0.9, weight_decay=0.1, steps=5)
    optimizer = Muon(params, lr=0.05, momentum=0.9, ns_steps=5, weight_decay=0.1, batch_by_shape=True)
    calls = []
    optimizer._orthogonalize = lambda matrix, steps, *coefficients: \
        calls.append(tuple(matrix.shape)) or orthogonalize(matrix, steps, *coefficients)
    ours = run_optimizer(optimizer, params, gradients)
    assert calls == [(3, 16, 8), (2, 8, 24)] * 3  # one batch per shape per step
    for got, want, initial in zip(ours, expected, start):
        assert (got - want).norm() / (want - initial).norm() < 0.02


def test_muon_close_to_float64_mathematics():
    params, gradients = make_problem(seed=1)
    start = [p.detach().clone() for p in params]
    exact = reference_muon(params, gradients, lr=0.05, momentum=0.9, weight_decay=0.1, steps=5, float64=True)
    ours = run_optimizer(Muon(params, lr=0.05, momentum=0.9, ns_steps=5, weight_decay=0.1), params, gradients)
    for got, want, initial in zip(ours, exact, start):
        moved = (want - initial.double()).norm()
        assert (got.double() - want).norm() / moved < 0.04


def test_weight_decay_is_decoupled():
    # a zero gradient orthogonalises to zero: only the decay p * (1 - lr * wd) remains
    parameter = nn.Parameter(torch.randn(6, 4))
    start = parameter.detach().clone()
    optimizer = Muon([parameter], lr=0.1, momentum=0.9, weight_decay=0.5)
    parameter.grad = torch.zeros(6, 4)
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), start * (1 - 0.1 * 0.5), atol=0, rtol=0)
    # the step does not depend on the gradient's scale (1024 is exact in bf16), decay included
    results = []
    for scale in (1.0, 1024.0):
        parameter = nn.Parameter(start.clone())
        optimizer = Muon([parameter], lr=0.1, momentum=0.9, weight_decay=0.5)
        parameter.grad = scale * torch.linspace(-1, 1, 24).reshape(6, 4)
        optimizer.step()
        results.append(parameter.detach().clone())
    torch.testing.assert_close(results[0], results[1], atol=1e-7, rtol=0)


def test_against_torch_optim_muon():
    """Momentum 0, wide/square matrices: torch.optim.Muon and ours take bit-identical steps.
    With momentum its EMA feeds the iteration (1-m) times our input, so bf16 rounding differs."""
    generator = torch.Generator().manual_seed(4)
    shapes = [(8, 24), (12, 12)]
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    gradients = [[torch.randn(shape, generator=generator) for shape in shapes]]
    start = [p.detach().clone() for p in params]
    ours = run_optimizer(Muon(params, lr=0.05, momentum=0.0, ns_steps=5, weight_decay=0.1), params, gradients)
    for p, s in zip(params, start):
        p.data.copy_(s)
    theirs = run_optimizer(torch.optim.Muon(params, lr=0.05, momentum=0.0, weight_decay=0.1, ns_steps=5,
                                            adjust_lr_fn="original"), params, gradients)
    for got, want in zip(ours, theirs):
        assert torch.equal(got, want)

    params, gradients = make_problem(seed=2)
    start = [p.detach().clone() for p in params]
    ours = run_optimizer(Muon(params, lr=0.05, momentum=0.9, ns_steps=5, weight_decay=0.1), params, gradients)
    for p, s in zip(params, start):
        p.data.copy_(s)
    theirs = run_optimizer(torch.optim.Muon(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1,
                                            ns_steps=5, adjust_lr_fn="original"), params, gradients)
    for got, want, initial in zip(ours, theirs, start):
        assert not torch.equal(got, want)
        assert (got - want).norm() / (want - initial).norm() < 0.04


# ---------------------------------------------------------------- the recipe's set-up


def test_build_optimizers_groups_and_rates():
    config = replace(RunConfig(), matrix_lr=0.025, embed_lr=0.035, scalar_lr=0.02, muon_momentum=0.99,
                     muon_weight_decay=0.04, adam_weight_decay=0.03, adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8)
    model = FakeGPT()
    muon, adam = build_optimizers(model, config, DistInfo())
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    groups = parameter_groups(model)
    assert {id(p) for p in muon.param_groups[0]["params"]} == {id(p) for _, p in groups["matrix"]}
    embed, scalar = adam.param_groups
    assert {id(p) for p in embed["params"]} == {id(p) for _, p in groups["embed"]}
    assert {id(p) for p in scalar["params"]} == {id(p) for _, p in groups["scalar"]}
    assert (muon.param_groups[0]["lr"], embed["lr"], scalar["lr"]) == (0.025, 0.035, 0.02)
    assert muon.param_groups[0]["weight_decay"] == 0.04 and muon.param_groups[0]["momentum"] == 0.99
    assert embed["betas"] == (0.9, 0.95) and embed["eps"] == 1e-8 and embed["weight_decay"] == 0.03
    assert not adam.defaults["fused"]

    set_learning_rate([muon, adam], 0.5)
    assert [g["lr"] for g in muon.param_groups + adam.param_groups] == [0.0125, 0.0175, 0.01]
    set_learning_rate([muon, adam], 1.0)
    assert [g["lr"] for g in muon.param_groups + adam.param_groups] == [0.025, 0.035, 0.02]
    set_muon_momentum([muon, adam], 0.93)
    assert muon.param_groups[0]["momentum"] == 0.93 and "momentum" not in embed


def test_optimizers_train_a_tiny_problem():
    model = FakeGPT()
    optimizers = build_optimizers(model, RunConfig(), DistInfo())
    inputs = torch.randint(0, 32, (4, 6), generator=torch.Generator().manual_seed(0))

    def loss_fn():
        x = model.tok_emb(inputs)
        for block in model.blocks:
            x = x + block.attn.proj(block.attn.c_q(x)) * block.attn_scale
            x = x + block.mlp.proj(torch.relu(block.mlp.fc(x))) * block.mlp_scale
        return (x @ model.tok_emb.weight.T).log_softmax(-1).gather(-1, inputs[..., None]).neg().mean()

    first = loss_fn().item()
    for _ in range(10):
        loss_fn().backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    assert loss_fn().item() < first


# ---------------------------------------------------------------- two processes


def muon_worker(rank: int, port: int, result_path: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        params, gradients = make_problem(seed=5)
        optimizer = Muon(params, lr=0.05, momentum=0.9, ns_steps=5, weight_decay=0.1,
                         dist=DistInfo(rank=rank, world_size=2))
        final = run_optimizer(optimizer, params, gradients)
        if rank == 1:  # rank 1 orthogonalised only matrix 1, yet holds all updated matrices
            torch.save([t.contiguous() for t in final], result_path)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_muon_equals_single_process(tmp_path, gloo_port):
    result_path = tmp_path / "rank1.pt"
    mp.spawn(muon_worker, args=(gloo_port, str(result_path)), nprocs=2, join=True)
    distributed = torch.load(result_path, weights_only=True)
    params, gradients = make_problem(seed=5)
    single = run_optimizer(Muon(params, lr=0.05, momentum=0.9, ns_steps=5, weight_decay=0.1), params, gradients)
    for got, want in zip(distributed, single):
        assert torch.equal(got, want)


# ---------------------------------------------------------------- with the real model


def test_groups_and_training_steps_on_pgolf_gpt():
    from pgolf.config import ModelConfig
    from pgolf.model import GPT

    model_config = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_mult=2,
                               bigram_buckets=16, bigram_dim=8)
    torch.manual_seed(0)
    model = GPT(model_config)
    groups = parameter_groups(model)
    assert len(groups["matrix"]) == 2 * 6 + 1 and len(groups["embed"]) == 2
    assert all(p.ndim == 2 for _, p in groups["matrix"])
    optimizers = build_optimizers(model, replace(RunConfig(model=model_config), matrix_lr=0.02), DistInfo())
    inputs = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    targets = torch.roll(inputs, -1, dims=1)
    with torch.no_grad():
        first = model(inputs, targets).item()
    for _ in range(5):
        model(inputs, targets).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert model(inputs, targets).item() < first


# ---------------------------------------------------------------- frontier options (spec frontier.md §4)

SPEC_POLAR_EXPRESS = (  # copied from the spec text, not from pgolf.optim
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def float64_polar_express(matrix: torch.Tensor) -> torch.Tensor:
    """X = U / (|U|_F + 1e-7), transposed if rows > cols; X <- aX + (bA + cA^2)X, A = X X^T, per tuple."""
    tall = matrix.shape[0] > matrix.shape[1]
    x = matrix.double().T if tall else matrix.double()
    x = x / (x.norm() + 1e-7)
    for a, b, c in SPEC_POLAR_EXPRESS:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_polar_express_coefficients_are_the_spec_tuples():
    assert POLAR_EXPRESS_COEFFICIENTS == SPEC_POLAR_EXPRESS
    assert iteration_coefficients("polar_express", 5) == SPEC_POLAR_EXPRESS
    assert iteration_coefficients("quintic", 3) == (COEFFICIENTS,) * 3
    with pytest.raises(PgolfError, match="polar_express"):
        iteration_coefficients("polar_express", 6)
    with pytest.raises(PgolfError, match="unknown"):
        Muon([nn.Parameter(torch.zeros(2, 2))], lr=0.1, momentum=0.9, coefficients="cubic")


@pytest.mark.parametrize("shape", [(64, 16), (16, 48), (24, 24)])
def test_polar_express_orthogonalize_close_to_float64_iteration(shape):
    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(11))
    ours = orthogonalize(matrix, 5, iteration_coefficients("polar_express", 5))
    exact = float64_polar_express(matrix)
    assert ours.dtype == torch.bfloat16 and ours.shape == shape
    assert (ours.double() - exact).norm() / exact.norm() < 0.04


def test_row_normalisation_divides_each_row_by_its_clamped_norm():
    update = torch.randn(5, 7, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    update[2] = 0.0
    update[3] = 1e-9  # norm below the clamp: divided by 1e-7, not made unit
    expected = update.clone()
    for row in range(5):
        expected[row] = update[row] / max(update[row].norm().item(), 1e-7)
    torch.testing.assert_close(normalize_rows(update), expected, rtol=1e-12, atol=0)
    batched = torch.stack([update, 3 * update])
    torch.testing.assert_close(normalize_rows(batched)[1], normalize_rows(3 * update))


def spec_muon_step(parameter, buffer, gradient, lr, momentum, weight_decay):
    """One frontier Muon step from the spec text, float64 (buffer updated in place); returns the new parameter."""
    buffer.copy_(momentum * buffer + gradient)
    update = gradient + momentum * buffer
    update = update / update.norm(dim=1, keepdim=True).clamp_min(1e-7)  # MuonEq-R
    rows, cols = parameter.shape
    factor = math.sqrt(max(1.0, rows / cols))
    return parameter * (1 - lr * weight_decay) - lr * factor * float64_polar_express(update)


@pytest.mark.parametrize("batch_by_shape", [False, True])
def test_frontier_muon_close_to_the_spec_step(batch_by_shape):
    generator = torch.Generator().manual_seed(13)
    shapes = [(64, 16), (64, 16), (16, 64), (32, 64)]  # MLP-up (4d, d) twice, MLP-down, k/v-like
    params = [nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]
    gradients = [[torch.randn(shape, generator=generator) for shape in shapes] for _ in range(3)]
    start = [p.detach().double().clone() for p in params]
    exact = [p.clone() for p in start]
    buffers = [torch.zeros_like(p) for p in start]
    for step_gradients in gradients:
        for index, gradient in enumerate(step_gradients):
            exact[index] = spec_muon_step(exact[index], buffers[index], gradient.double(), 0.026, 0.97, 0.095)
    optimizer = Muon(params, lr=0.026, momentum=0.97, ns_steps=5, weight_decay=0.095, row_normalize=True,
                     coefficients="polar_express", batch_by_shape=batch_by_shape)
    ours = run_optimizer(optimizer, params, gradients)
    for got, want, initial in zip(ours, exact, start):
        assert (got.double() - want).norm() / (want - initial).norm() < 0.04


def test_mlp_up_gets_the_shape_factor_two():
    """Spec "(factor 2 for MLP-up)": sqrt(max(1, rows/cols)) = sqrt(2048/512) = 2; 1 for MLP-down and square.

    A tall matrix is iterated transposed, so MLP-up (2048, 512) and MLP-down (512, 2048) with transposed
    gradients run the same iteration: their steps differ by exactly the factor.
    """
    gradient = torch.randn(512, 2048, generator=torch.Generator().manual_seed(14))
    steps = {}
    for shape, grad in (((512, 2048), gradient), ((2048, 512), gradient.T.contiguous())):
        parameter = nn.Parameter(torch.zeros(shape))
        parameter.grad = grad
        Muon([parameter], lr=0.5, momentum=0.0, row_normalize=False, coefficients="polar_express").step()
        steps[shape] = parameter.detach().clone()
    torch.testing.assert_close(steps[(2048, 512)], 2 * steps[(512, 2048)].T, rtol=0, atol=0)


def test_frontier_parameters_land_in_their_groups():
    from pgolf.config import frontier_tiny
    from pgolf.model import GPT

    model = GPT(frontier_tiny().model)
    groups = {name: group for group, members in parameter_groups(model).items() for name, _ in members}
    assert groups["tok_emb.weight"] == "embed"
    for name in ("blocks.0.attn.gate", "blocks.3.attn.gate", "skip_gates", "skip_weights", "lane_mix",
                 "lane_residual", "smear.gate", "smear.strength", "blocks.2.attn.q_gain"):
        assert groups[name] == "scalar", name
    matrices = {name for name, group in groups.items() if group == "matrix"}
    assert matrices == {f"blocks.{i}.{part}.weight" for i in range(4)
                        for part in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")}
    assert parameter_group_of("lane_mix", model.lane_mix) == "scalar"  # 3-D, yet a control tensor


def test_frontier_optimiser_settings():
    from pgolf.config import frontier_tiny

    config = frontier_tiny()
    muon, adam = build_optimizers(FakeGPT(), config, DistInfo())
    assert muon.row_normalize and muon.coefficients == "polar_express"
    assert muon.param_groups[0]["weight_decay"] == 0.095 and muon.param_groups[0]["lr"] == 0.026
    embed, scalar = adam.param_groups
    assert (embed["lr"], embed["weight_decay"]) == (0.03, 0.085)
    assert (scalar["lr"], scalar["weight_decay"]) == (0.02, 0.02)
    assert embed["betas"] == scalar["betas"] == (0.9, 0.99)
    # without embed_weight_decay both AdamW groups keep adam_weight_decay
    _, adam = build_optimizers(FakeGPT(), replace(RunConfig(), adam_weight_decay=0.03), DistInfo())
    assert [group["weight_decay"] for group in adam.param_groups] == [0.03, 0.03]

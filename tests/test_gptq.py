"""GPTQ against a straight float64 transcription, its reconstruction error, and Hessian collection."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.gptq import ColumnGroup, gptq_quantize, reconstruction_error


def correlated_inputs(tokens: int, columns: int, seed: int) -> torch.Tensor:
    """Inputs with correlated columns and very different column scales, like activations."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(columns, columns, generator=generator) / columns ** 0.5
    scales = torch.rand(columns, generator=generator) * 3 + 0.1
    return (torch.randn(tokens, columns, generator=generator) @ mixing) * scales


def reference_gptq(weight: np.ndarray, hessian: np.ndarray, scale: np.ndarray, low: int, high: int,
                   group: tuple[int, int, np.ndarray, int, int] | None = None) -> np.ndarray:
    """The algorithm of frontier.md §5 written out column by column in float64, no blocking."""
    weight, hessian = weight.astype(np.float64).copy(), hessian.astype(np.float64).copy()
    rows, columns = weight.shape
    column_scale = np.repeat(scale.astype(np.float64)[:, None], columns, axis=1)
    lows, highs = np.full(columns, float(low)), np.full(columns, float(high))
    if group is not None:
        start, size, group_scale, group_low, group_high = group
        column_scale[:, start:start + size] = group_scale[:, None]
        lows[start:start + size], highs[start:start + size] = group_low, group_high
    for j in range(columns):  # dead columns
        if hessian[j, j] == 0:
            hessian[j, j] = 1.0
            weight[:, j] = 0.0
    hessian += 0.01 * np.mean(np.diag(hessian)) * np.eye(columns)  # damping
    order = np.argsort(-np.diag(hessian), kind="stable")  # act-order
    weight, hessian = weight[:, order], hessian[np.ix_(order, order)]
    column_scale, lows, highs = column_scale[:, order], lows[order], highs[order]
    upper = np.linalg.cholesky(np.linalg.inv(hessian)).T  # upper Cholesky factor of H^-1
    values = np.zeros_like(weight)
    for j in range(columns):
        q = np.clip(np.round(weight[:, j] / column_scale[:, j]), lows[j], highs[j])
        values[:, j] = q
        error = (weight[:, j] - q * column_scale[:, j]) / upper[j, j]
        weight[:, j + 1:] -= np.outer(error, upper[j, j + 1:])
    restored = np.empty_like(values)
    restored[:, order] = values
    return restored.astype(np.int8)


def random_problem(rows: int = 24, columns: int = 300, seed: int = 0):
    inputs = correlated_inputs(800, columns, seed)
    inputs[:, 7] = 0.0  # a dead column
    hessian = inputs.T @ inputs / 4
    generator = torch.Generator().manual_seed(seed + 1)
    weight = torch.randn(rows, columns, generator=generator) * 0.05
    scale = (weight.abs().amax(dim=1) / 31).to(torch.float16).float()
    return weight, hessian, scale


def test_gptq_equals_a_straight_float64_transcription():
    weight, hessian, scale = random_problem()  # 300 columns: two full blocks of 128 and a partial one
    values = gptq_quantize(weight, hessian, scale, -32, 31, dtype=torch.float64)
    expected = reference_gptq(weight.numpy(), hessian.numpy(), scale.numpy(), -32, 31)
    np.testing.assert_array_equal(values.numpy(), expected)
    assert torch.all(values[:, 7] == 0)  # the dead column


def test_gptq_with_a_column_group_equals_the_transcription():
    weight, hessian, scale = random_problem(seed=3)
    group_scale = scale * 31 / 127
    group = ColumnGroup(start=64, size=64, scale=group_scale, low=-127, high=127)
    values = gptq_quantize(weight, hessian, scale, -31, 31, group=group, dtype=torch.float64)
    expected = reference_gptq(weight.numpy(), hessian.numpy(), scale.numpy(), -31, 31,
                              group=(64, 64, group_scale.numpy(), -127, 127))
    np.testing.assert_array_equal(values.numpy(), expected)
    assert int(values[:, 64:128].abs().max()) > 31  # the group really uses its wider range


def test_float32_gptq_agrees_with_float64_almost_everywhere():
    weight, hessian, scale = random_problem(seed=5)
    single = gptq_quantize(weight, hessian, scale, -32, 31)
    double = gptq_quantize(weight, hessian, scale, -32, 31, dtype=torch.float64)
    assert (single != double).float().mean() < 0.01  # only values right at a rounding boundary differ


def rtn(weight: torch.Tensor, scale: torch.Tensor, low: int, high: int) -> torch.Tensor:
    return torch.clamp(torch.round(weight / scale[:, None]), low, high)


def test_gptq_has_lower_output_error_than_round_to_nearest_on_random_data():
    for seed in range(3):
        weight, hessian, scale = random_problem(seed=seed)
        gptq_error = reconstruction_error(weight, gptq_quantize(weight, hessian, scale, -32, 31) * scale[:, None],
                                          hessian)
        rtn_error = reconstruction_error(weight, rtn(weight, scale, -32, 31) * scale[:, None], hessian)
        assert gptq_error < 0.8 * rtn_error, seed


def trained_small_model(dataset_dir: Path, steps: int = 40):
    """A 2-layer GPT trained briefly (AdamW) on the fixture's train shard, and its train tokens."""
    from pgolf.config import ModelConfig
    from pgolf.data.shards import list_shards, read_shard
    from pgolf.model import GPT

    config = ModelConfig(vocab_size=384, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2,
                         bigram_buckets=64, bigram_dim=16, rope_reference_len=32)
    torch.manual_seed(0)
    model = GPT(config)
    tokens = torch.from_numpy(np.concatenate([np.asarray(read_shard(path), dtype=np.int64)
                                              for path in list_shards(dataset_dir, "train")]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, tokens.numel() - 33, (8,), generator=generator)
        batch = torch.stack([tokens[start:start + 33] for start in starts])
        loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_gptq_beats_round_to_nearest_on_a_trained_models_hessians(tiny_dataset_dir):
    from pgolf.data.shards import list_shards
    from pgolf.hessians import calibration_batches, collect_hessians

    model = trained_small_model(tiny_dataset_dir)
    batches = calibration_batches(list_shards(tiny_dataset_dir, "train"), num_batches=4, batch_seqs=8, seq_len=32)
    calibration = collect_hessians(model, batches)
    state = model.state_dict()
    expected = {f"blocks.{layer}.{name}.weight" for layer in range(2)
                for name in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj")}
    assert set(calibration.hessians) == expected | {"tok_emb.weight"}
    for name in sorted(calibration.hessians):
        weight, hessian = state[name].float(), calibration.hessians[name]
        if float(weight.abs().max()) == 0:
            continue
        scale = (weight.abs().amax(dim=1).clamp_min(1e-8) / 31).to(torch.float16).float()
        gptq_error = reconstruction_error(weight, gptq_quantize(weight, hessian, scale, -32, 31) * scale[:, None],
                                          hessian)
        rtn_error = reconstruction_error(weight, rtn(weight, scale, -32, 31) * scale[:, None], hessian)
        assert gptq_error < rtn_error, name


def test_hessians_are_the_second_moments_of_the_hooked_inputs(tiny_dataset_dir):
    from pgolf.data.shards import list_shards
    from pgolf.hessians import calibration_batches, collect_hessians

    model = trained_small_model(tiny_dataset_dir, steps=2)
    batches = list(calibration_batches(list_shards(tiny_dataset_dir, "train"), num_batches=3, batch_seqs=4,
                                       seq_len=32, seed=1))
    seen: dict[str, list[torch.Tensor]] = {"fc": [], "q": []}
    hooks = [model.blocks[1].mlp.fc.register_forward_pre_hook(lambda module, args: seen["fc"].append(args[0])),
             model.blocks[0].attn.c_k.register_forward_pre_hook(lambda module, args: seen["q"].append(args[0]))]
    calibration = collect_hessians(model, batches)
    for hook in hooks:
        hook.remove()
    for key, name in (("fc", "blocks.1.mlp.fc.weight"), ("q", "blocks.0.attn.c_k.weight")):
        inputs = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen[key]]).double()
        np.testing.assert_allclose(calibration.hessians[name].numpy(), (inputs.T @ inputs / 3).numpy(),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(calibration.column_rms[name].numpy(),
                                   inputs.pow(2).mean(dim=0).sqrt().numpy(), rtol=1e-5)
    # k and v share q's input, hence its Hessian
    assert calibration.hessians["blocks.0.attn.c_k.weight"] is calibration.hessians["blocks.0.attn.c_q.weight"]
    # the head's input is RMS-normalised: every row has mean square 1, so trace(H) * batches / tokens = width
    embedding = calibration.hessians["tok_emb.weight"]
    assert float(torch.trace(embedding)) * 3 / calibration.num_tokens == pytest.approx(64, rel=1e-4)


def test_calibration_reads_only_train_shards(tiny_dataset_dir, tmp_path):
    from pgolf.data.shards import list_shards
    from pgolf.hessians import calibration_batches, collect_hessians

    dataset = Path(shutil.copytree(tiny_dataset_dir, tmp_path / "dataset"))
    for val in dataset.glob("*_val_*.bin"):  # make the val split unreadable, even for root
        val.unlink()
        os.mkdir(val)
    model = trained_small_model(tiny_dataset_dir, steps=1)
    train_files = list_shards(dataset, "train")
    calibration = collect_hessians(model, calibration_batches(train_files, num_batches=2, batch_seqs=2, seq_len=32))
    assert calibration.num_batches == 2 and calibration.num_tokens == 2 * 2 * 32
    with pytest.raises(Exception, match="validation"):
        next(calibration_batches(list(dataset.glob("*_val_*.bin")), 1, 1, 32))

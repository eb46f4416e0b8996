"""SDClip, integer widths per class, AWQ-lite and LQER: spec transcriptions and exact round trips."""

from __future__ import annotations

import copy
import functools
import json
import struct

import numpy as np
import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.artifact import MAGIC, ArtifactError, load_artifact, read_artifact, write_artifact
from pgolf.calibrated import (
    CALIBRATED_SCHEMES,
    CalibratedRule,
    most_salient_group,
    quantize_calibrated,
    quantize_lqer_factors,
    quantize_row_tensor,
)
from pgolf.config import ModelConfig
from pgolf.hessians import Calibration
from pgolf.quant import dequantize_state_dict, lqer_correction

CONFIG = ModelConfig(vocab_size=320, num_layers=1, model_dim=256, num_heads=4, num_kv_heads=2,
                     bigram_buckets=0, smear_gate=False)


def heavy_rows(rows: int, columns: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator) * 0.03
    return weight / torch.rand(rows, columns, generator=generator).clamp_min(0.05).sqrt()


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Shapes of CONFIG's GPT; every matrix above the 65,536-element passthrough limit but q/k/v/out."""
    return {
        "tok_emb.weight": heavy_rows(320, 256, seed),
        "blocks.0.attn.c_q.weight": heavy_rows(256, 256, seed + 1),
        "blocks.0.attn.proj.weight": heavy_rows(256, 256, seed + 2),
        "blocks.0.mlp.fc.weight": heavy_rows(768, 256, seed + 3),
        "blocks.0.mlp.proj.weight": heavy_rows(256, 768, seed + 4),
        "blocks.0.attn.gate": heavy_rows(4, 12, seed + 5),
        "blocks.0.attn_scale": torch.ones(256),
        "skip_weights": torch.ones(1, 256),
    }


def random_calibration(state: dict[str, torch.Tensor], seed: int = 0) -> Calibration:
    generator = torch.Generator().manual_seed(seed)
    hessians, rms = {}, {}
    for name, tensor in state.items():
        if tensor.ndim == 2 and tensor.numel() > 1000:
            inputs = torch.randn(512, tensor.shape[1], generator=generator) * (torch.rand(tensor.shape[1]) + 0.2)
            hessians[name] = inputs.T @ inputs / 4
            rms[name] = inputs.pow(2).mean(dim=0).sqrt()
    return Calibration(hessians=hessians, column_rms=rms, num_batches=4, num_tokens=2048)


def test_sdclip_round_to_nearest_matches_the_formula():
    weight = heavy_rows(40, 300, seed=1)
    weight[3] = 0.0
    rule = CalibratedRule("int7", kind="float", ndim=2, clip="std", std_multiple=14.0)
    entry = quantize_row_tensor(weight, rule, None, "tok_emb.weight", None, 0)
    assert entry.method == "int7"
    array = weight.numpy().astype(np.float32)
    scale = (np.float32(14.0) * array.std(axis=1, ddof=1) / np.float32(63)).astype(np.float16)  # unbiased std
    scale[scale == 0] = 1.0
    values = np.clip(np.round(array / scale.astype(np.float32)[:, None]), -63, 63)
    np.testing.assert_array_equal(entry.parts["scale"].numpy(), scale)
    np.testing.assert_array_equal(entry.parts["values"].numpy(), values.astype(np.int8))


def test_lqer_factors_match_the_formula_and_dequantise_to_a_hat_b_hat():
    error = heavy_rows(96, 200, seed=2) * 0.01  # 4 x 200 = 800 values of B: 12 full groups of 64 and one of 32
    parts = quantize_lqer_factors(error, rank=4, group=64)
    u, s, vh = np.linalg.svd(error.numpy().astype(np.float64), full_matrices=False)
    a, b = u[:, :4] * s[:4], vh[:4]
    a_scale = np.float16(np.abs(a).max() / 1.5)
    # SVD signs are arbitrary: compare the product, and the integer ranges and scale formulas
    a_hat = parts["lqer_a"].double().numpy() * float(parts["lqer_a_scale"][0])
    assert float(parts["lqer_a_scale"][0]) == pytest.approx(float(a_scale), rel=1e-3)
    assert parts["lqer_a"].min() >= -2 and parts["lqer_a"].max() <= 1
    assert parts["lqer_b"].min() >= -8 and parts["lqer_b"].max() <= 7
    flat = parts["lqer_b"].reshape(-1).double().numpy()
    group_scale = parts["lqer_b_scale"].double().numpy()
    assert group_scale.shape == (13,)
    b_abs = np.abs(vh[:4].reshape(-1))
    want = np.array([b_abs[i:i + 64].max() / 7.5 for i in range(0, 800, 64)], dtype=np.float16)
    np.testing.assert_allclose(group_scale, want.astype(np.float64), rtol=2e-3)
    b_hat = (flat * np.repeat(group_scale, 64)[:800]).reshape(4, 200)
    np.testing.assert_allclose(lqer_correction(parts, 64).double().numpy(), a_hat @ b_hat, rtol=1e-5, atol=1e-7)
    # and the correction really reduces the error it approximates
    assert np.linalg.norm(error.numpy() - a_hat @ b_hat) < np.linalg.norm(error.numpy())
    assert np.linalg.norm(a @ b - a_hat @ b_hat) < np.linalg.norm(a @ b)


def test_awq_picks_the_most_salient_group_by_rms_times_mean_abs_weight():
    generator = torch.Generator().manual_seed(3)
    weights = {"a": torch.randn(8, 256, generator=generator), "b": torch.randn(8, 192, generator=generator)}
    rms = {"a": torch.ones(256), "b": torch.ones(192)}
    rms["b"][64:128] = 5.0  # group 1 of b is five times as active
    name, start = most_salient_group(weights, rms, 64)
    saliency = {(key, g): float((rms[key][g * 64:(g + 1) * 64] * weights[key][:, g * 64:(g + 1) * 64].abs()
                                 .mean(dim=0)).sum()) for key in weights for g in range(weights[key].shape[1] // 64)}
    assert (name, start // 64) == max(saliency, key=saliency.get) == ("b", 1)


@pytest.mark.parametrize("scheme", sorted(CALIBRATED_SCHEMES))
def test_every_calibrated_scheme_round_trips_exactly_through_a_file(tmp_path, scheme):
    state = model_state()
    calibration = random_calibration(state)
    quantized = quantize_calibrated(state, scheme, calibration)
    path = tmp_path / "model.pgolf"
    write_artifact(path, CONFIG, quantized, "0" * 64, 320, compressor="zstd")
    contents = read_artifact(path)  # the container alone: this state is not a whole model's
    loaded = dequantize_state_dict(contents.quantized)
    expected = dequantize_state_dict(quantized)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
        if tensor.is_floating_point():
            assert float((tensor.float() - state[name].float()).abs().max()) < float(state[name].abs().max()) / 4
    methods = {row[0]: row[1] for row in contents.header["tensors"]}
    assert methods["blocks.0.attn_scale"] == "fp16"
    if scheme != "gptq":
        assert methods["blocks.0.attn.gate"] == "int8"
        assert methods["tok_emb.weight"].startswith("int7")
        assert methods["blocks.0.mlp.fc.weight"].startswith("int6")
    if "lqer" in scheme:
        assert sum("+lqer4" in method for method in methods.values()) == 3
    if "awq" in scheme:
        assert sum("+awq64" in method for method in methods.values()) == 1


def test_lqer_lowers_the_error_of_the_tensors_it_corrects():
    state = model_state(seed=4)
    calibration = random_calibration(state)
    plain = dequantize_state_dict(quantize_calibrated(state, "gptq-sdclip", calibration))
    quantized = quantize_calibrated(state, "gptq-sdclip-lqer", calibration)
    corrected = dequantize_state_dict(quantized)
    lqer_names = [name for name, entry in quantized.tensors.items() if "+lqer" in entry.method]
    assert len(lqer_names) == 3
    for name in lqer_names:
        assert (corrected[name] - state[name]).norm() < (plain[name] - state[name]).norm()


def test_gptq_schemes_refuse_to_run_without_calibration():
    with pytest.raises(Exception, match="calibration"):
        quantize_calibrated(model_state(), "gptq-sdclip")


def rewrite_table(path, edit) -> None:
    """Edit the tensor table in place, re-sealed with a matching checksum as an attacker would."""
    from forge import rewrite_header

    rewrite_header(path, lambda header: edit(header["tensors"]))


@functools.lru_cache(maxsize=1)
def frontier_awq_state():
    state = model_state()
    return quantize_calibrated(state, "gptq-sdclip-lqer-awq", random_calibration(state))


@pytest.mark.parametrize("method", ["int9", "int6+lqer0", "int6+awq999", "int6+lqer4g0", "int6;rm -rf", "int6+lqer2"])
def test_crafted_methods_are_refused_in_one_line(tmp_path, method):
    path = tmp_path / "model.pgolf"
    write_artifact(path, CONFIG, frontier_awq_state(), "0" * 64, 320, compressor="zlib")

    def edit(table):
        for row in table:
            if "+lqer4" in row[1]:
                row[1] = method
                return

    rewrite_table(path, edit)
    with pytest.raises(ArtifactError) as caught:
        read_artifact(path)
    assert "\n" not in str(caught.value)


def test_awq_start_outside_the_matrix_is_refused(tmp_path):
    quantized = copy.deepcopy(frontier_awq_state())
    name = next(name for name, entry in quantized.tensors.items() if "+awq" in entry.method)
    columns = quantized.tensors[name].parts["values"].shape[1]
    quantized.tensors[name].parts["awq_start"] = torch.tensor([columns - 10], dtype=torch.int32)  # 64 do not fit
    path = tmp_path / "model.pgolf"
    write_artifact(path, CONFIG, quantized, "0" * 64, 320, compressor="zlib")
    with pytest.raises(PgolfError, match="AWQ columns"):
        dequantize_state_dict(read_artifact(path).quantized)

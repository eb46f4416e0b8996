"""Quantisation: int6/int8 per-row maths, passthroughs, and the schemes' rule tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.quant import (
    SCHEMES,
    choose_method,
    dequantize_state_dict,
    int8_clip_bounds,
    quantize_int6_rows,
    quantize_int8_rows,
    quantize_state_dict,
)
from pgolf.commands.inspect import tensor_summary


def heavy_tailed(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """Student-t-ish weights with a few outliers, like trained matrices."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator) * 0.02
    weight = weight / torch.rand(rows, columns, generator=generator).clamp_min(0.05).sqrt()
    return weight


def test_int6_values_in_range_and_error_at_most_half_a_step():
    weight = heavy_tailed(64, 96)
    weight[5] = 0.0  # an all-zero row must survive
    values, scale = quantize_int6_rows(weight)
    assert values.dtype == torch.int8 and values.shape == (64, 96)
    assert scale.dtype == torch.float16 and scale.shape == (64,)
    assert int(values.min()) >= -32 and int(values.max()) <= 31
    restored = values.float() * scale.float()[:, None]
    step = scale.float()[:, None]
    assert torch.all((restored - weight).abs() <= step / 2 * (1 + 1e-5))
    # scale = max|row| / 31 (fp16-rounded), so each nonzero row uses the full range.
    nonzero = torch.arange(64) != 5
    row_max = weight.abs().amax(dim=1)
    np.testing.assert_allclose(scale.float()[nonzero].numpy(), (row_max[nonzero] / 31).numpy(), rtol=1e-3)
    assert torch.all(values.abs().amax(dim=1)[nonzero] == 31)
    assert torch.all(restored[5] == 0)


def test_int6_matches_a_plain_numpy_reference():
    weight = heavy_tailed(16, 40, seed=3)
    values, scale = quantize_int6_rows(weight)
    array = weight.numpy().astype(np.float32)
    reference_scale = (np.abs(array).max(axis=1) / np.float32(31)).astype(np.float16).astype(np.float32)
    reference = np.clip(np.round(array / reference_scale[:, None]), -32, 31)
    np.testing.assert_array_equal(values.numpy(), reference.astype(np.int8))


def test_int8_clip_is_the_percentile_and_outliers_are_clamped():
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 2000, generator=generator) * 0.05
    weight[0, 17] = 40.0  # a huge outlier, far above the 99.99984th percentile
    bound = int8_clip_bounds(weight)
    expected = np.quantile(np.abs(weight.numpy()), 0.9999984, axis=1)  # numpy's linear interpolation
    np.testing.assert_allclose(bound.numpy(), expected, rtol=1e-4)  # float32 vs float64 rank
    assert float(bound[0]) < 40.0

    values, scale = quantize_int8_rows(weight)
    assert int(values.abs().max()) <= 127
    restored = values.float() * scale.float()[:, None]
    step = scale.float()[:, None]
    inside = weight.abs() <= bound[:, None]
    assert torch.all(((restored - weight).abs() <= step / 2 * (1 + 1e-5))[inside])
    # The outlier comes back at the clip, not at 40.
    assert abs(float(restored[0, 17]) - float(bound[0])) <= float(step[0]) / 2 * (1 + 1e-5)
    np.testing.assert_allclose(scale.float().numpy(), (bound / 127).numpy(), rtol=1e-3)


def rows_with_known_maxima(columns: int = 2000) -> torch.Tensor:
    """Rows whose max|row| is below 1, above 1, exactly 0, and one small row with a huge outlier."""
    generator = torch.Generator().manual_seed(7)
    rows = torch.randn(6, columns, generator=generator)
    rows[0] *= 0.01  # max well below 1: on the floor
    rows[1] *= 0.2  # max below 1
    rows[2] *= 3.0  # max above 1: its own scale
    rows[3] = 0.0  # all zero
    rows[4] *= 0.01
    rows[4, 123] = 50.0  # one huge outlier in a small row
    rows[5] = rows[5].clamp(-0.999, 0.999)
    return rows


def reference_int6(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spec §5 written out: scale = max(max|row| / 31, 1/31) stored fp16; q = clamp(round(w / fp16 scale))."""
    values, scales = [], []
    for row in weight.astype(np.float32):
        scale = np.float16(max(np.float32(np.abs(row).max()) / np.float32(31), np.float32(1) / np.float32(31)))
        values.append(np.clip(np.round(row / np.float32(scale)), -32, 31))
        scales.append(scale)
    return np.array(values, dtype=np.int8), np.array(scales, dtype=np.float16)


def reference_int8(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spec §5/§8 written out: clip = 99.99984th percentile of |row| (torch.quantile, linear, fp32 as in
    the reference), scale = max(clip / 127, 1/127) in fp32 for rounding, stored fp16."""
    values, scales = [], []
    for row in weight.astype(np.float32):
        clip = np.float32(torch.quantile(torch.from_numpy(np.abs(row)), 0.9999984).item())
        scale = max(clip / np.float32(127), np.float32(1) / np.float32(127))
        values.append(np.clip(np.round(np.clip(row, -clip, clip) / scale), -127, 127))
        scales.append(np.float16(scale))
    return np.array(values, dtype=np.int8), np.array(scales, dtype=np.float16)


def test_int6_with_floor_matches_the_spec_transcription_value_for_value():
    weight = rows_with_known_maxima()
    values, scale = quantize_int6_rows(weight, floor=True)
    want_values, want_scale = reference_int6(weight.numpy())
    np.testing.assert_array_equal(scale.numpy(), want_scale)
    np.testing.assert_array_equal(values.numpy(), want_values)
    floor = np.float16(1 / 31)
    assert [bool(value == floor) for value in scale.numpy()] == [True, True, False, True, False, True]
    # On the floor grid a row of max 0.01 uses only a couple of integers; without the floor all 63.
    assert len(np.unique(values[0].numpy())) <= 3
    assert len(np.unique(quantize_int6_rows(weight)[0][0].numpy())) > 50


def test_int8_with_floor_matches_the_spec_transcription_value_for_value():
    weight = rows_with_known_maxima()
    values, scale = quantize_int8_rows(weight, floor=True)
    want_values, want_scale = reference_int8(weight.numpy())
    np.testing.assert_array_equal(scale.numpy(), want_scale)
    np.testing.assert_array_equal(values.numpy(), want_values)
    assert float(scale[2]) > 1 / 127 and float(scale[0]) == pytest.approx(1 / 127, rel=1e-3)
    # the outlier is clipped at the percentile (just under 50 here) and takes the top integer
    assert int(values[4, 123]) == 127 and float(int8_clip_bounds(weight)[4]) < 50.0


@pytest.mark.parametrize("scheme,floored", [("pr198", True), ("baseline", True), ("pr198-nofloor", False)])
def test_schemes_apply_their_floor(scheme, floored):
    weight = rows_with_known_maxima(columns=1024) * 0.5  # (6, 1024) = 6,144 elements: pad to a large tensor
    big = weight.repeat(20, 1)  # (120, 1024), above the fp16 passthrough limit
    state = {"blocks.0.mlp.fc.weight": big, "tok_emb.weight": big.clone()}
    quantized = quantize_state_dict(state, scheme)
    for name, entry in quantized.tensors.items():
        reference = reference_int6 if entry.method == "int6" else reference_int8
        values, scales = reference(big.numpy())
        if floored:
            np.testing.assert_array_equal(entry.parts["values"].numpy(), values, err_msg=name)
            np.testing.assert_array_equal(entry.parts["scale"].numpy(), scales, err_msg=name)
        else:
            assert not np.array_equal(entry.parts["scale"].numpy(), scales)
        summary = tensor_summary(name, entry)
        assert summary["rows"] == 120
        want_floor = int((scales == np.float16(1 / (31 if entry.method == "int6" else 127))).sum())
        assert summary["floor_rows"] == (want_floor if floored else 0)


def test_small_floats_pass_through_as_fp16_and_come_back_in_their_dtype():
    generator = torch.Generator().manual_seed(2)
    state = {
        "blocks.0.attn_scale": torch.randn(512, generator=generator),
        "smear.gate": torch.randn(512, generator=generator).to(torch.bfloat16),
        "bigram.scale": torch.tensor(0.05),
        "edge.exactly_limit": torch.randn(256, 256, generator=generator),  # 65,536 elements: still small
    }
    quantized = quantize_state_dict(state, "pr198")
    restored = dequantize_state_dict(quantized)
    for name, tensor in state.items():
        entry = quantized.tensors[name]
        assert entry.method == "fp16"
        assert entry.parts["data"].dtype == torch.float16
        assert restored[name].dtype == tensor.dtype and restored[name].shape == tensor.shape
        assert torch.equal(restored[name], tensor.to(torch.float16).to(tensor.dtype))


def test_one_element_over_the_limit_is_quantised():
    state = {"big": torch.randn(1, 65_537)}
    assert quantize_state_dict(state, "baseline").tensors["big"].method == "int8"


def test_integer_and_bool_tensors_pass_through_exactly():
    state = {
        "counts": torch.arange(-5, 100_000, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "codes": torch.randint(-128, 127, (300, 300), dtype=torch.int8),
    }
    for scheme in SCHEMES:
        quantized = quantize_state_dict(state, scheme)
        restored = dequantize_state_dict(quantized)
        for name, tensor in state.items():
            assert quantized.tensors[name].method == "exact"
            assert restored[name].dtype == tensor.dtype and torch.equal(restored[name], tensor)


def pr198_layout() -> dict[str, tuple[int, ...]]:
    """The PR-198 parameter shapes (spec §3), written out independently of model.py."""
    shapes = {"tok_emb.weight": (1024, 512), "bigram.table.weight": (2048, 128), "bigram.proj.weight": (512, 128),
              "bigram.scale": (), "smear.gate": (512,), "skip_weights": (5, 512)}
    for block in range(11):
        prefix = f"blocks.{block}"
        shapes.update({
            f"{prefix}.attn.c_q.weight": (512, 512), f"{prefix}.attn.c_k.weight": (256, 512),
            f"{prefix}.attn.c_v.weight": (256, 512), f"{prefix}.attn.proj.weight": (512, 512),
            f"{prefix}.attn.q_gain": (8,), f"{prefix}.mlp.fc.weight": (1536, 512),
            f"{prefix}.mlp.proj.weight": (512, 1536), f"{prefix}.attn_scale": (512,),
            f"{prefix}.mlp_scale": (512,), f"{prefix}.resid_mix": (2, 512),
        })
    return shapes


def test_pr198_rule_table_picks_the_recipe_method_for_every_tensor():
    expected_by_suffix = {
        "attn.c_q.weight": "int6", "attn.c_k.weight": "int6", "attn.c_v.weight": "int6",
        "attn.proj.weight": "int6", "mlp.fc.weight": "int6", "mlp.proj.weight": "int6",
        "attn.q_gain": "fp16", "attn_scale": "fp16", "mlp_scale": "fp16", "resid_mix": "fp16",
    }
    expected_top = {"tok_emb.weight": "int8", "bigram.table.weight": "int8", "bigram.proj.weight": "fp16",
                    "bigram.scale": "fp16", "smear.gate": "fp16", "skip_weights": "fp16"}
    for name, shape in pr198_layout().items():
        tensor = torch.empty(shape, device="meta")
        if name.startswith("blocks."):
            want = expected_by_suffix[name.split(".", 2)[2]]
        else:
            want = expected_top[name]
        assert choose_method(name, tensor, "pr198") == want, name
        baseline_want = "fp16" if tensor.numel() <= 65_536 else "int8"
        assert choose_method(name, tensor, "baseline") == baseline_want, name
    assert SCHEMES["pr198"].compressor == "zstd" and SCHEMES["pr198"].level == 22
    assert SCHEMES["baseline"].compressor == "zlib" and SCHEMES["baseline"].level == 9


def test_real_model_state_gets_the_same_methods():
    from pgolf.config import pr198
    from pgolf.model import GPT

    with torch.device("meta"):
        model = GPT(pr198().model)
    state = model.state_dict()
    layout = pr198_layout()
    assert set(state) == set(layout)
    assert sum(tensor.numel() for tensor in state.values()) == 26_829_913  # spec §3
    for name, tensor in state.items():
        assert choose_method(name, tensor, "pr198") == choose_method(name, torch.empty(layout[name], device="meta"),
                                                                     "pr198")


def test_quantised_state_round_trip_shapes_and_errors():
    state = {"blocks.0.mlp.fc.weight": heavy_tailed(384, 256), "tok_emb.weight": heavy_tailed(300, 256, seed=4)}
    quantized = quantize_state_dict(state, "pr198")
    assert quantized.tensors["blocks.0.mlp.fc.weight"].method == "int6"
    assert quantized.tensors["tok_emb.weight"].method == "int8"
    restored = dequantize_state_dict(quantized)
    for name, tensor in state.items():
        assert restored[name].dtype == torch.float32 and restored[name].shape == tensor.shape
        assert float((restored[name] - tensor).abs().max()) < float(tensor.abs().max()) / 20
    assert set(quantized.flat()) == {"blocks.0.mlp.fc.weight#values", "blocks.0.mlp.fc.weight#scale",
                                     "tok_emb.weight#values", "tok_emb.weight#scale"}
    with pytest.raises(PgolfError, match="unknown quantisation scheme"):
        quantize_state_dict(state, "int4")
    with pytest.raises(PgolfError, match="reserves"):
        quantize_state_dict({"bad#name": torch.zeros(3)}, "pr198")
    with pytest.raises(PgolfError, match="wrapped model"):
        quantize_state_dict({"_orig_mod.blocks.0.mlp.fc.weight": torch.zeros(3)}, "pr198")


def test_non_finite_weights_are_refused_by_name():
    weight = torch.randn(300, 300)
    weight[3, 4] = float("nan")
    with pytest.raises(PgolfError, match="blocks.0.mlp.fc.weight"):
        quantize_state_dict({"blocks.0.mlp.fc.weight": weight}, "pr198")

"""Size accounting: the budget report and the size prediction (pgolf.packaging.size). Code bytes are
the exported script's: tests/test_export.py."""

from __future__ import annotations

import pytest
import torch

from pgolf.artifact import save_artifact
from pgolf.challenge import BUDGET_BYTES
from pgolf.config import ModelConfig, pr198
from pgolf.layout import state_layout
from pgolf.packaging import size as accounting
from pgolf.packaging.export import exported_code_bytes
from pgolf.packaging.size import (
    COMPRESSION_RATIOS,
    measure_compression_ratios,
    predict_model_bytes,
    size_report,
)


def test_budget_report():
    assert BUDGET_BYTES == 16_000_000
    report = size_report(15_000_000, 1_000_000)
    assert report == {"bytes_model": 15_000_000, "bytes_code": 1_000_000, "bytes_total": 16_000_000,
                      "bytes_budget": 16_000_000, "bytes_headroom": 0, "fits": True}
    assert not size_report(15_000_001, 1_000_000)["fits"]


def gaussian_state(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator, dtype=dtype) * 0.02
            for name, (shape, dtype) in state_layout(config).items()}


@pytest.mark.parametrize("scheme", ["pr198", "pr198-nofloor", "baseline"])
def test_prediction_is_close_for_gaussian_weights(tmp_path, scheme):
    # Wide enough that attention/MLP matrices exceed 65,536 elements (int6 under pr198).
    config = ModelConfig(vocab_size=512, num_layers=2, model_dim=320, num_heads=4, num_kv_heads=2,
                         bigram_buckets=1024, bigram_dim=96)
    state = gaussian_state(config)
    info = save_artifact(tmp_path / "model.pgolf", config, state, scheme, "0" * 64, config.vocab_size)
    predicted = predict_model_bytes(config, scheme, profile="gaussian")
    assert abs(predicted - info.bytes_model) / info.bytes_model < 0.05
    # trained weights are larger than N(0, 0.02): more rows above the floor, more distinct integers; the
    # budget profile ("trained") must never predict less than the gaussian or the short-run profile
    assert predict_model_bytes(config, scheme) >= predicted
    assert predict_model_bytes(config, scheme) >= predict_model_bytes(config, scheme, profile="cpu-short")


def test_header_prediction_is_exact_up_to_digits(tmp_path):
    config = ModelConfig(vocab_size=128, num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1,
                         bigram_buckets=32, bigram_dim=16)
    info = save_artifact(tmp_path / "model.pgolf", config, gaussian_state(config), "pr198", "f" * 64, 128)
    predicted = accounting.predict_header_bytes(state_layout(config), "pr198", config)
    assert abs(predicted - info.bytes_header) <= 4


@pytest.mark.parametrize("compressor,level", [("zstd", 22), ("zlib", 9)])
def test_gaussian_constants_match_a_fresh_measurement(compressor, level):
    measured = measure_compression_ratios(compressor, level)
    constants = COMPRESSION_RATIOS[(compressor, "gaussian")]
    assert set(measured) == set(constants) - {"exact"}
    for kind, value in measured.items():
        assert abs(value - constants[kind]) < 0.005, kind


def test_pr198_layout_and_prediction_scale():
    layout = state_layout(pr198().model)
    assert sum(torch.Size(shape).numel() for shape, _ in layout.values()) == 26_829_913  # spec §3
    stored = accounting.stored_bytes_by_kind(layout, "pr198")
    assert stored["int6_floor"] == 11 * (2 * 512 * 512 + 2 * 256 * 512 + 2 * 1536 * 512)  # q, proj; k, v; fc, proj
    assert stored["int8_floor"] == 1024 * 512 + 2048 * 128
    assert stored["int6"] == stored["int8"] == 0  # pr198 floors every quantised row
    predicted = predict_model_bytes(pr198().model, "pr198", layout=layout)
    # Calibrated on the reference run (15,468,512 model bytes): the recipe must be predicted to fit.
    assert abs(predicted - 15_468_512) / 15_468_512 < 0.01
    assert predicted + exported_code_bytes(pr198()) < BUDGET_BYTES


def test_the_frontier_artifact_is_predicted_to_fit():
    """#1855's artifact (frontier.md §5): 15,865,260 model bytes; its per-group SDClip ratio is
    derived from that run, so the prediction must land within 1% and fit with the packed code."""
    from pgolf.config import frontier

    predicted = predict_model_bytes(frontier().model, "frontier")
    assert abs(predicted - 15_865_260) / 15_865_260 < 0.01
    assert predicted + exported_code_bytes(frontier()) < BUDGET_BYTES

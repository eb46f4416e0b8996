"""Size accounting: counted code files, the budget check, and the size prediction."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pgolf import accounting
from pgolf.accounting import (
    BUDGET_BYTES,
    CODE_MODULES,
    COMPRESSION_RATIOS,
    check_budget,
    code_bytes,
    code_files,
    measure_compression_ratios,
    model_state_layout,
    predict_model_bytes,
    size_report,
    uncounted_imports,
)
from pgolf.artifact import save_artifact
from pgolf.config import ModelConfig, pr198
from pgolf.errors import PgolfError


def copy_counted_tree(destination: Path) -> Path:
    for relative in CODE_MODULES:
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(accounting.PACKAGE_ROOT / relative, target)
    return destination


def test_code_files_are_sorted_stable_and_sum_to_code_bytes():
    files = code_files()
    relative = [path.relative_to(accounting.PACKAGE_ROOT).as_posix() for path in files]
    assert relative == sorted(relative) == sorted(CODE_MODULES)
    assert code_files() == files
    # In an LF checkout the counted size is the size on disk.
    assert all(b"\r\n" not in path.read_bytes() for path in files)
    assert code_bytes() == sum(path.stat().st_size for path in files)


def test_line_endings_do_not_change_the_count(tmp_path):
    tree = copy_counted_tree(tmp_path / "pgolf")
    lf_count = code_bytes(tree)
    config = tree / "config.py"
    config.write_bytes(config.read_bytes().replace(b"\n", b"\r\n"))  # what a Windows autocrlf checkout does
    assert config.stat().st_size > (accounting.PACKAGE_ROOT / "config.py").stat().st_size
    assert code_bytes(tree) == lf_count


def test_missing_counted_file_is_an_error(tmp_path):
    tree = copy_counted_tree(tmp_path / "pgolf")
    (tree / "metric.py").unlink()
    with pytest.raises(PgolfError, match="metric.py"):
        code_bytes(tree)


def test_counted_files_import_only_counted_files(tmp_path):
    assert uncounted_imports() == {}
    tree = copy_counted_tree(tmp_path / "pgolf")
    (tree / "plot.py").write_text("X = 1\n")
    with open(tree / "evaluate.py", "a") as handle:
        handle.write("\n\ndef _late():\n    from pgolf.plot import X\n    return X\n")
    assert uncounted_imports(tree) == {"evaluate.py": ["plot.py"]}


def test_budget_report_and_check():
    assert BUDGET_BYTES == 16_000_000
    report = size_report(15_000_000, 1_000_000)
    assert report == {"bytes_model": 15_000_000, "bytes_code": 1_000_000, "bytes_total": 16_000_000,
                      "bytes_budget": 16_000_000, "bytes_headroom": 0, "fits": True}
    assert check_budget(15_000_000, 1_000_000)["fits"]
    with pytest.raises(PgolfError, match=r"15,000,001.*1,000,000.*16,000,001"):
        check_budget(15_000_001, 1_000_000)


def gaussian_state(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator, dtype=dtype) * 0.02
            for name, (shape, dtype) in model_state_layout(config).items()}


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
    predicted = accounting.predict_header_bytes(model_state_layout(config), "pr198", config)
    assert abs(predicted - info.bytes_header) <= 4


@pytest.mark.parametrize("compressor,level", [("zstd", 22), ("zlib", 9)])
def test_gaussian_constants_match_a_fresh_measurement(compressor, level):
    measured = measure_compression_ratios(compressor, level)
    constants = COMPRESSION_RATIOS[(compressor, "gaussian")]
    assert set(measured) == set(constants) - {"exact"}
    for kind, value in measured.items():
        assert abs(value - constants[kind]) < 0.005, kind


def test_pr198_layout_and_prediction_scale():
    layout = model_state_layout(pr198().model)
    assert sum(torch.Size(shape).numel() for shape, _ in layout.values()) == 26_829_913  # spec §3
    stored = accounting.stored_bytes_by_kind(layout, "pr198")
    assert stored["int6_floor"] == 11 * (2 * 512 * 512 + 2 * 256 * 512 + 2 * 1536 * 512)  # q, proj; k, v; fc, proj
    assert stored["int8_floor"] == 1024 * 512 + 2048 * 128
    assert stored["int6"] == stored["int8"] == 0  # pr198 floors every quantised row
    predicted = predict_model_bytes(pr198().model, "pr198", layout=layout)
    # Calibrated on the reference run (15,468,512 model bytes): the recipe must be predicted to fit.
    assert abs(predicted - 15_468_512) / 15_468_512 < 0.01
    assert predicted + code_bytes() < BUDGET_BYTES

"""`pgolf verify` checks that need no dataset: statistics, run sets, artifacts, eval budget, val readers."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from pgolf.config import ModelConfig, run_config_to_dict, tiny
from pgolf.verify.artifact_checks import check_artifact
from pgolf.verify.eval_budget import (REFERENCE_SECONDS, check_eval_budget, forward_flops_per_position, num_windows,
                                      predict_eval_seconds)
from pgolf.verify.isolation_checks import check_val_isolation
from pgolf.verify.run_checks import bpb_to_nats_per_token, check_runs
from pgolf.verify.stats import welch_one_sided


# ---------------------------------------------------------------- statistics against table values


def _one_sample_with_t(t: float, df: int) -> tuple[list[float], float]:
    """df + 1 candidate values and an exact baseline whose one-sample t statistic is `t`."""
    values = [float(index) for index in range(df + 1)]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((value - mean) ** 2 for value in values) / df)
    return values, mean + t * std / math.sqrt(len(values))


@pytest.mark.parametrize("t, df, cdf", [
    (6.965, 2, 0.99), (2.764, 10, 0.99), (2.571, 5, 0.975), (1.812, 10, 0.95), (31.821, 1, 0.99),
    (2.457, 30, 0.99), (-1.812, 10, 0.05),
])
def test_one_sided_p_value_matches_printed_t_tables(t, df, cdf):
    candidate, baseline = _one_sample_with_t(t, df)
    result = welch_one_sided(candidate, [baseline])
    assert result.df == df and result.t == pytest.approx(t, rel=1e-9)
    assert result.p_value == pytest.approx(1 - cdf, abs=2e-4)  # tables give 3-4 significant digits


def test_one_sided_p_value_closed_forms():
    for t in (1.0, 0.3):  # df 1 is Cauchy: P(T <= t) = 1/2 + atan(t)/pi
        candidate, baseline = _one_sample_with_t(t, 1)
        assert welch_one_sided(candidate, [baseline]).p_value == pytest.approx(0.5 - math.atan(t) / math.pi,
                                                                                abs=1e-12)
    candidate, baseline = _one_sample_with_t(1.0, 2)  # df 2: P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2))
    assert welch_one_sided(candidate, [baseline]).p_value == pytest.approx(0.5 - 1 / (2 * math.sqrt(3)), abs=1e-12)
    # the margin shifts the hypothesis: beating baseline - margin by nothing is a coin flip
    candidate, baseline = _one_sample_with_t(0.0, 4)
    assert welch_one_sided(candidate, [baseline + 0.25], margin=0.25).p_value == pytest.approx(0.5, abs=1e-12)


def test_welch_against_hand_computation():
    candidate = [1.90, 1.91, 1.92]
    baseline = [2.00, 2.03]
    result = welch_one_sided(candidate, baseline, margin=0.005)
    var_c, var_b = 0.0001 / 3, 0.00045 / 2
    assert result.t == pytest.approx((2.015 - 1.91 - 0.005) / math.sqrt(var_c + var_b), rel=1e-9)
    assert result.df == pytest.approx((var_c + var_b) ** 2 / (var_c ** 2 / 2 + var_b ** 2 / 1), rel=1e-9)
    # a single baseline value is exact: one-sample t with n - 1 degrees of freedom
    single = welch_one_sided(candidate, [2.0], margin=0.005)
    assert single.df == 2 and single.t == pytest.approx((2.0 - 1.91 - 0.005) / (0.01 / math.sqrt(3)), rel=1e-9)


# ---------------------------------------------------------------- run sets


def _write_run(root, name, config, val_bpb, val_loss, bytes_total=15_000_000):
    run_dir = root / name
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(run_config_to_dict(config)))
    result = {"val_bpb": val_bpb, "val_loss": val_loss, "seed": config.seed, "bytes_total": bytes_total,
              "quant_scheme": config.quant_scheme, "eval_seq_len": config.eval_seq_len,
              "eval_stride": config.eval_stride, "val_tokens_scored": 1000, "val_bytes_scored": 2400}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def test_run_set_with_two_configs_is_caught(tmp_path):
    base = tiny()
    runs = [_write_run(tmp_path, "a", replace(base, seed=1), 1.10, 1.83),
            _write_run(tmp_path, "b", replace(base, seed=2), 1.11, 1.84),
            _write_run(tmp_path, "c", replace(base, seed=3, matrix_lr=0.04,
                                              model=replace(base.model, num_layers=5)), 1.09, 1.81)]
    checks, _ = check_runs(runs)
    same = checks[0]
    assert same.name == "runs.same_config" and not same.passed
    assert same.details == (f"a vs c: matrix_lr = {base.matrix_lr} vs 0.04",
                            f"a vs c: model.num_layers = {base.model.num_layers} vs 5")


def test_repeated_seed_and_scheme_mismatch_are_caught(tmp_path):
    base = tiny()
    runs = [_write_run(tmp_path, "a", replace(base, seed=7), 1.10, 1.83),
            _write_run(tmp_path, "b", replace(base, seed=7), 1.11, 1.84, bytes_total=16_000_001)]
    (runs[1] / "result.json").write_text(json.dumps({**json.loads((runs[1] / "result.json").read_text()),
                                                     "quant_scheme": "baseline"}))
    checks, _ = check_runs(runs)
    by_name = {check.name: check for check in checks}
    assert "seeds repeat: [7, 7]" in by_name["runs.same_config"].details
    scheme = by_name["runs.same_scheme"]
    assert not scheme.passed
    assert "a vs b: quant_scheme = pr198 vs baseline" in scheme.details
    assert "b: bytes_total 16,000,001 > 16,000,000" in scheme.details


def test_significance_rule_met_and_not_met(tmp_path):
    base = tiny()
    tokens_per_byte = 1000 / 2400  # what the result files report
    baseline_bpb = 1.2244
    baseline_nats = baseline_bpb * math.log(2) / tokens_per_byte
    assert bpb_to_nats_per_token(baseline_bpb, tokens_per_byte) == pytest.approx(baseline_nats)
    clear = [baseline_nats - 0.05 + delta for delta in (-0.001, 0.0, 0.001)]
    runs = [_write_run(tmp_path, f"s{i}", replace(base, seed=i), 1.0, loss) for i, loss in enumerate(clear)]
    significance = check_runs(runs, [baseline_bpb])[0][2]
    assert significance.passed and "rule (>= 0.005 nats at p < 0.01) MET" in significance.evidence
    assert "improvement 0.05000 nats" in significance.evidence
    close = [baseline_nats - 0.006 + delta for delta in (-0.002, 0.0, 0.002)]
    other = tmp_path / "close"
    other.mkdir()
    runs = [_write_run(other, f"s{i}", replace(base, seed=i), 1.0, loss) for i, loss in enumerate(close)]
    significance = check_runs(runs, [baseline_bpb])[0][2]
    assert not significance.passed and "NOT MET" in significance.evidence  # 0.001 above the margin, std 0.002


def test_unreadable_run_is_reported(tmp_path):
    checks, _ = check_runs([tmp_path / "missing"])
    assert not checks[0].passed and "result.json not found" in checks[0].evidence


# ---------------------------------------------------------------- artifact


@pytest.fixture
def artifact(tmp_path):
    from pgolf.artifact import save_artifact
    from pgolf.model import GPT

    config = ModelConfig(vocab_size=320, num_layers=1, model_dim=64, num_heads=2, num_kv_heads=1,
                         bigram_buckets=0, smear_gate=False)
    torch.manual_seed(0)
    state = {name: tensor.detach().clone() for name, tensor in GPT(config).state_dict().items()}
    path = tmp_path / "model.pgolf"
    save_artifact(path, config, state, "pr198", "ab" * 32, 320)
    return path


def test_artifact_passes_then_each_break_is_caught(artifact):
    checks, header = check_artifact(artifact, "ab" * 32, 320, code_bytes=1000)
    assert all(check.passed for check in checks) and header is not None
    size = artifact.stat().st_size
    over = check_artifact(artifact, "ab" * 32, 320, code_bytes=16_000_001 - size)[0][1]
    assert not over.passed and over.evidence == (f"model {size:,} + code {16_000_001 - size:,} = 16,000,001 bytes "
                                                 f"> 16,000,000 (over by 1)")
    wrong_tokenizer = check_artifact(artifact, "cd" * 32, 320, code_bytes=1000)[0][2]
    assert not wrong_tokenizer.passed and "tokenizer sha256 abababababababab" in wrong_tokenizer.evidence
    blob = bytearray(artifact.read_bytes())
    blob[-5] ^= 0xFF
    artifact.write_bytes(bytes(blob))
    corrupt = check_artifact(artifact, "ab" * 32, 320, code_bytes=1000)[0]
    assert [check.name for check in corrupt] == ["artifact.integrity"]
    assert not corrupt[0].passed and "checksum mismatch" in corrupt[0].evidence


# ---------------------------------------------------------------- eval budget


def test_eval_prediction_scales_with_work():
    reference = ModelConfig()
    assert predict_eval_seconds(reference, 62_021_633, 2048, 64) == pytest.approx(REFERENCE_SECONDS, rel=1e-3)
    # stride 1 does 64x the windows of stride 64
    assert num_windows(10_000, 2048, 1) == 1 + (10_000 - 2048)
    assert not check_eval_budget("stride 1", reference, 62_021_846, 2048, 1).passed
    assert check_eval_budget("pr198", reference, 62_021_846, 2048, 64).passed
    wider = replace(reference, model_dim=1024, num_heads=16, num_kv_heads=8)
    ratio = forward_flops_per_position(wider, 2048) / forward_flops_per_position(reference, 2048)
    assert predict_eval_seconds(wider, 62_021_846, 2048, 64) == pytest.approx(
        ratio * predict_eval_seconds(reference, 62_021_846, 2048, 64))
    assert 3.0 < ratio < 4.0  # weights grow 4x, the attention term 2x


# ---------------------------------------------------------------- nothing trains on val


def test_only_the_evaluation_path_reads_val(tmp_path):
    assert check_val_isolation().passed
    package = tmp_path / "pkg"
    (package / "data").mkdir(parents=True)
    (package / "evaluate.py").write_text("tokens = load_val_tokens(path)\n")
    (package / "train.py").write_text("import x\n\nfiles = list_shards(d, 'train') + list_shards(d, split='val')\n")
    check = check_val_isolation(package)
    assert not check.passed
    assert check.details == ("train.py lines 3 reach the val split",)


def test_report_lines():
    from pgolf.verify.report import Check, format_report

    text = format_report([Check("a.first", True, "fine"),
                          Check("b.second", False, "2 problems", tuple(f"item {i}" for i in range(10)))])
    lines = text.splitlines()
    assert lines[0] == "PASS a.first   fine"
    assert lines[1] == "FAIL b.second  2 problems"
    assert lines[2:4] == ["     - item 0", "     - item 1"] and lines[-2] == "     - ... and 2 more"
    assert lines[-1] == "verify: 1 passed, 1 failed: 1 check(s) FAILED"

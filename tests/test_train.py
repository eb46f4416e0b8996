"""The training run end to end on tiny shapes: result files, resume, DDP equivalence, guards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import train as train_module
from pgolf.cli import main
from pgolf.config import apply_overrides, tiny
from pgolf.data.shards import list_shards, read_shard
from pgolf.train import NonFiniteLossError, run_training

TEST_SETTINGS = [
    "vocab_size=384", "num_layers=2", "model_dim=64", "num_heads=4", "num_kv_heads=2", "bigram_buckets=64",
    "bigram_dim=16", "rope_reference_len=32", "train_seq_len=32", "global_batch_tokens=256",
    "micro_batch_tokens=256", "eval_seq_len=32", "eval_stride=8", "eval_batch_seqs=8", "val_max_tokens=512",
    "autocast_dtype=fp32", "compile=off", "warmup_steps=2", "log_every=1", "swa_every=2", "warmdown_steps=4",
    "muon_momentum_warmup_steps=4", "embedding_dtype=fp32",
]


def small_config(dataset_dir: Path, *extra: str):
    return apply_overrides(tiny(), TEST_SETTINGS + [f"data_dir={dataset_dir}", *extra])


def read_losses(run_dir: Path) -> dict[int, float]:
    losses = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train_loss" in record:
            losses[record["step"]] = record["train_loss"]
    return losses


def test_run_writes_every_file_and_the_full_report(tiny_dataset_dir, tmp_path):
    config = small_config(tiny_dataset_dir, "iterations=6", "val_every=3")
    result = run_training(config, tmp_path / "run", quiet=True)
    run_dir = tmp_path / "run"
    for name in ("config.json", "train.log", "metrics.jsonl", "result.json", "model.pgolf", "curves.png"):
        assert (run_dir / name).is_file(), name
    for key in ("val_bpb", "val_loss", "val_bpb_roundtrip_plain", "val_bpb_prequant", "bytes_model", "bytes_code",
                "bytes_total", "steps", "train_seconds", "train_tokens"):
        assert key in result
    assert result["steps"] == 6 and result["train_tokens"] == 6 * 256
    assert result["bytes_total"] == result["bytes_model"] + result["bytes_code"]
    assert result["bytes_model"] == (run_dir / "model.pgolf").stat().st_size
    assert json.loads((run_dir / "result.json").read_text()) == pytest.approx(result)
    log = (run_dir / "train.log").read_text()
    assert "final_roundtrip_exact" in log.splitlines()[-1]
    assert "step:6/6" in log
    assert sorted(read_losses(run_dir)) == list(range(1, 7))
    # every val target scored exactly once by the sliding evaluation
    val_tokens = sum(read_shard(path).size for path in list_shards(tiny_dataset_dir, "val"))
    assert result["val_tokens_scored"] == (val_tokens - 1) // 32 * 32  # the split cut to whole windows


def test_resume_after_a_crash_ends_with_identical_weights(tiny_dataset_dir, tmp_path):
    config = small_config(tiny_dataset_dir, "iterations=8", "checkpoint_every=3", "val_every=0")
    run_training(config, tmp_path / "straight", quiet=True)
    halted = run_training(config, tmp_path / "crashed", quiet=True, halt_at_step=5)
    assert halted == {"halted_at_step": 5}
    assert json.loads((tmp_path / "crashed" / "checkpoint" / "meta.json").read_text())["step"] == 3
    run_training(config, tmp_path / "crashed", resume=True, quiet=True)
    assert read_losses(tmp_path / "crashed") == read_losses(tmp_path / "straight")
    # identical weights give a byte-identical artifact (the compression is deterministic)
    assert (tmp_path / "crashed" / "model.pgolf").read_bytes() == (tmp_path / "straight" / "model.pgolf").read_bytes()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset_dir, tmp_path, monkeypatch):
    real_step = train_module.train_step
    calls = {"count": 0}

    def failing_step(trainer, seq_len=None):
        loss = real_step(trainer, seq_len)
        calls["count"] += 1
        return loss * float("nan") if trainer.state.step >= 4 else loss

    monkeypatch.setattr(train_module, "train_step", failing_step)
    config = small_config(tiny_dataset_dir, "iterations=10", "checkpoint_every=2", "val_every=0", "warmup_steps=0")
    with pytest.raises(NonFiniteLossError, match="step 5"):
        run_training(config, tmp_path / "run", quiet=True)
    meta = json.loads((tmp_path / "run" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 4


def single_and_pair(preset: str, settings: list[str], tmp_path: Path) -> tuple[dict, dict, dict, dict]:
    """`pgolf train` once in one process and once as 2 gloo processes under torchrun, the same settings;
    (losses, result) of each."""
    args = ["train", "--preset", preset, "--quiet"] + [item for s in settings for item in ("--set", s)]
    assert main(args + ["--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    completed = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "pgolf"] + args
                               + ["--out", str(tmp_path / "pair")], env=env, capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = [json.loads((tmp_path / name / "result.json").read_text()) for name in ("single", "pair")]
    return read_losses(tmp_path / "single"), read_losses(tmp_path / "pair"), *results


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_accumulation(tiny_dataset_dir, tmp_path):
    settings = TEST_SETTINGS + [f"data_dir={tiny_dataset_dir}", "micro_batch_tokens=128", "iterations=4",
                                "val_every=0", "warmup_steps=0"]
    single, pair, single_result, pair_result = single_and_pair("tiny", settings, tmp_path)
    assert sorted(single) == sorted(pair) == [1, 2, 3, 4]
    for step in single:
        assert pair[step] == pytest.approx(single[step], rel=1e-5, abs=1e-6)
    assert pair_result["world_size"] == 2 and single_result["world_size"] == 1
    assert pair_result["val_bpb"] == pytest.approx(single_result["val_bpb"], rel=1e-4)


def unigram_entropy_nats(dataset_dir: Path) -> float:
    tokens = np.concatenate([np.asarray(read_shard(path)) for path in list_shards(dataset_dir, "train")])
    counts = np.bincount(tokens).astype(np.float64)
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log(probabilities)).sum())


@pytest.mark.slow
def test_tiny_preset_learns_well_below_the_unigram_entropy(tiny_dataset_dir, tmp_path):
    config = apply_overrides(tiny(), [f"data_dir={tiny_dataset_dir}", "vocab_size=384", "iterations=100",
                                      "val_every=0", "log_every=10", "compile=off"])
    result = run_training(config, tmp_path / "run", quiet=True)
    entropy = unigram_entropy_nats(tiny_dataset_dir)
    assert result["val_loss_prequant"] < 0.8 * entropy, (result["val_loss_prequant"], entropy)
    assert math.isfinite(result["val_bpb"])


def test_dry_run_prints_the_exact_pr198_parameter_count(capsys):
    assert main(["train", "--preset", "pr198", "--dry-run"]) == 0
    output = capsys.readouterr().out
    assert "parameters:26829913" in output
    assert '"global_batch_tokens": 786432' in output


def test_missing_dataset_is_one_line_naming_the_fetch_command(tmp_path, capsys):
    assert main(["train", "--preset", "pr198", "--data", str(tmp_path / "nowhere")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "pgolf data fetch" in error and "nowhere" in error


def test_torch_threads_are_untouched_by_a_run(tiny_dataset_dir, tmp_path):
    before = torch.get_num_threads()
    run_training(small_config(tiny_dataset_dir, "iterations=1", "val_every=0", "swa_enabled=false"),
                 tmp_path / "run", quiet=True)
    assert torch.get_num_threads() == before


def test_the_cpu_memory_warning_reaches_the_run_log(tiny_dataset_dir, tmp_path):
    config = small_config(tiny_dataset_dir, "iterations=1", "val_every=0", "swa_enabled=false",
                          "global_batch_tokens=8224", "micro_batch_tokens=8224")  # 257 x 32
    run_training(config, tmp_path / "run", quiet=True)
    assert "warning: 8,224 tokens per micro-step on CPU" in (tmp_path / "run" / "train.log").read_text()


def test_a_cpu_micro_step_too_large_for_memory_is_warned_with_a_setting_that_fits():
    from pgolf.build import CPU_MICRO_TOKENS, cpu_memory_warning
    from pgolf.config import pr198

    warning = cpu_memory_warning(pr198(), torch.device("cpu"))  # 48 x 2048 tokens per micro-step
    assert warning.startswith("warning: 98,304 tokens per micro-step on CPU")
    assert f"micro_batch_tokens={CPU_MICRO_TOKENS}" in warning and 786_432 % CPU_MICRO_TOKENS == 0
    assert cpu_memory_warning(pr198(), torch.device("cuda")) is None
    assert cpu_memory_warning(tiny(), torch.device("cpu")) is None  # 32 x 256
    odd = apply_overrides(pr198(), ["global_batch_tokens=30720", "micro_batch_tokens=30720"])  # 15 x 2048
    assert "micro_batch_tokens=6144" in cpu_memory_warning(odd, torch.device("cpu"))  # 3 x 2048 divides it


def test_a_config_predicted_over_budget_is_warned_before_training():
    from pgolf.build import budget_warning
    from pgolf.config import pr198
    from pgolf.train import code_bytes, predicted_artifact_bytes

    def total(config):
        return predicted_artifact_bytes(config) + code_bytes(config, None)

    assert budget_warning(total(pr198())) is None  # the record's recipe fits (15.7 MB in the reference)
    warning = budget_warning(total(apply_overrides(pr198(), ["num_layers=14"])))
    assert warning.startswith("warning: predicted artifact") and "16,000,000-byte budget" in warning


def test_a_training_step_asks_no_tensor_for_a_python_value(tmp_path, monkeypatch):
    # No host-device synchronisation inside the step (on a GPU, a tensor's Python value waits for every
    # queued kernel). Nothing syncs on CPU, so the check is that no pgolf code in the step, optimisers
    # included, reads a tensor's value; torch's own CPU-side bookkeeping (AdamW's step counts) may.
    from pgolf import bench
    from pgolf.train import train_step

    package = str(Path(train_module.__file__).parent)
    calls = []

    def guarded(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(package):
                calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return wrapper

    run = apply_overrides(tiny(), TEST_SETTINGS + ["grad_clip_norm=0.3"])
    device = torch.device("cpu")
    shard = bench.write_synthetic_shard(tmp_path, run.model.vocab_size, 5_000)
    trainer = bench.build_bench_trainer(bench.bench_run_config(run, bench.VARIANTS["fp32"], 4, 32, 2, device),
                                        device, shard)
    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guarded(name))
    losses = [train_step(trainer) for _ in range(2)]  # the first step also creates the optimiser state
    monkeypatch.undo()
    assert calls == []
    assert all(loss.dim() == 0 and math.isfinite(loss.item()) for loss in losses)


def test_the_clock_counts_the_whole_loop_but_validation(tiny_dataset_dir, tmp_path, monkeypatch):
    """Spec pr198 §4: steps, averaging, the stop check and logging count; validation passes do not.
    A fake clock advances 1 s per step, 0.25 s per log line and 100 s per validation."""
    now = [0.0]
    monkeypatch.setattr(train_module.time, "perf_counter", lambda: now[0])
    real_step, real_validate = train_module.train_step, train_module.validate
    log_lines = []

    def step(trainer, seq_len=None):
        now[0] += 1.0
        return real_step(trainer, seq_len)

    def validate(trainer, data):
        now[0] += 100.0
        return real_validate(trainer, data)

    real_fields = train_module.RunLog.fields

    def fields(self, **values):
        if "train_loss" in values:  # a log line of the loop
            now[0] += 0.25
            log_lines.append(values["step"])
        return real_fields(self, **values)

    monkeypatch.setattr(train_module, "train_step", step)
    monkeypatch.setattr(train_module, "validate", validate)
    monkeypatch.setattr(train_module.RunLog, "fields", fields)
    config = small_config(tiny_dataset_dir, "iterations=6", "val_every=2", "log_every=3", "warmup_steps=0")
    result = run_training(config, tmp_path / "run", quiet=True)
    assert len(log_lines) == 2  # steps 3 and 6
    assert result["train_seconds"] == pytest.approx(6 * 1.0 + 2 * 0.25)


def test_reported_numbers_follow_the_reference(tiny_dataset_dir, tmp_path):
    """prequant: the live weights at the last step; averaged: after SWA; both before quantisation."""
    import hashlib

    result = run_training(small_config(tiny_dataset_dir, "iterations=8", "val_every=0", "swa_every=1",
                                       "warmdown_steps=8"),
                          tmp_path / "run", quiet=True)
    assert result["swa_checkpoints"] >= 2
    assert result["val_bpb_averaged"] != result["val_bpb_prequant"]
    assert result["artifact_sha256"] == hashlib.sha256((tmp_path / "run" / "model.pgolf").read_bytes()).hexdigest()
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"averaged_snapshots:{result['swa_checkpoints']}" in log
    assert "stage:prequant_plain" in log and "stage:averaged_plain" in log


@pytest.mark.slow
def test_frontier_tiny_two_gloo_processes_match_one_process_looping_switched_on_mid_run(tiny_dataset_dir, tmp_path):
    """Depth recurrence switches on at step 4 of 8; the local-clip path (each rank clips, then the ranks
    average) runs with a bound that does not bind, so one process accumulating two micro-batches and
    two processes of one each must agree."""
    from test_golden import FRONTIER_SETTINGS

    settings = FRONTIER_SETTINGS + [f"data_dir={tiny_dataset_dir}", "grad_clip_norm=1e9", "warmup_steps=0"]
    single, pair, single_result, pair_result = single_and_pair("frontier-tiny", settings, tmp_path)
    assert sorted(single) == sorted(pair) == list(range(1, 9))
    assert single[5] > single[4]  # the looped order starts at step 5: the loss jumps
    for step in single:
        assert pair[step] == pytest.approx(single[step], rel=1e-5, abs=1e-6)
    assert pair_result["val_bpb"] == pytest.approx(single_result["val_bpb"], rel=1e-4)


@pytest.mark.slow
def test_a_calibrated_scheme_runs_gptq_on_train_data_at_the_finish(tiny_dataset_dir, tmp_path):
    """frontier-tiny's artifact scheme ("frontier": GPTQ + SDClip + LQER, per-group layout) at a width
    where the MLP matrices are quantised: Hessians from train windows after training, int6 rows with
    LQER corrections in the file, and the run scores the file it wrote."""
    from test_golden import FRONTIER_SETTINGS

    from pgolf.artifact import read_artifact
    from pgolf.config import get_preset

    settings = [s for s in FRONTIER_SETTINGS if not s.startswith("model_dim=")] + [
        "model_dim=160", "iterations=3", "warmup_steps=0", f"data_dir={tiny_dataset_dir}",
        "calibration_batches=2", "calibration_batch_seqs=4"]
    config = apply_overrides(get_preset("frontier-tiny"), settings)
    assert config.quant_scheme == "frontier"
    result = run_training(config, tmp_path / "run", quiet=True)
    methods = {row[0]: row[1] for row in read_artifact(tmp_path / "run" / "model.pgolf").header["tensors"]}
    assert methods["blocks.0.mlp.fc.weight"].startswith("int6")
    assert sum("+lqer" in method for method in methods.values()) >= 1
    assert "calibration_tokens:" in (tmp_path / "run" / "train.log").read_text()
    assert math.isfinite(result["val_bpb"]) and result["val_bpb"] < 1.1 * result["val_bpb_averaged"]

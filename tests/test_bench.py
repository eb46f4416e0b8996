"""FLOP counting (exact, derived by hand), window arithmetic, variant agreement, and the bench CLI."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch

from pgolf.challenge import OFFICIAL_SP1024_VAL_TARGETS
from pgolf import bench, flops
from pgolf.cli import main
from pgolf.config import ModelConfig, RunConfig
from pgolf.errors import PgolfError
from pgolf.evaluate import sliding_windows
from pgolf.kernels import cpu_attention
from pgolf.model import GPT

# width 32, 4 heads of 8, 2 kv heads (kv width 16), MLP hidden 64, 2 layers, vocab 64, bigram 8 wide
SMALL = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_mult=2,
                    bigram_buckets=16, bigram_dim=8, rope_reference_len=16)


def test_matrix_parameters_counted_by_hand():
    # per block: q 32*32 + k 32*16 + v 32*16 + out 32*32 = 3072; MLP 32*64 + 64*32 = 4096 -> 7168
    # two blocks 14336; bigram projection 8*32 = 256; tied head 64*32 = 2048
    assert flops.block_matrix_parameters(SMALL) == 7168
    assert flops.matrix_parameters(SMALL) == 14336 + 256 + 2048
    without_bigram = replace(SMALL, bigram_buckets=0)
    assert flops.matrix_parameters(without_bigram) == 14336 + 2048


def test_matrix_parameters_match_the_built_model():
    for config in (SMALL, replace(SMALL, bigram_buckets=0, num_layers=3)):
        assert flops.matrix_parameters_of_model(GPT(config)) == flops.matrix_parameters(config)


def test_pr198_matrix_parameters():
    # 11 blocks x (512*512*2 + 512*256*2 + 512*1536*2) + 128*512 + 1024*512
    assert flops.matrix_parameters(ModelConfig()) == 11 * (524288 + 262144 + 1572864) + 65536 + 524288


def test_training_and_forward_flops_by_hand():
    matrix = 16640
    # training at T=16: 6 * 16640 + causal attention 6 * 2 layers * 16 * 32 = 99840 + 6144
    assert flops.training_flops_per_token(SMALL, 16) == 6 * matrix + 6144 == 105984
    # one forward position: 2 * 16640 + 2 * 2 * 16 * 32
    assert flops.forward_flops_per_position(SMALL, 16) == 33280 + 2048
    # attention grows linearly with the sequence length, the matrix part does not
    assert flops.training_flops_per_token(SMALL, 32) - flops.training_flops_per_token(SMALL, 16) == 6144


@pytest.mark.parametrize("num_targets", [1, 5, 16, 17, 63, 64, 65, 100, 1000])
@pytest.mark.parametrize("seq_len,stride", [(16, 4), (16, 16), (16, 5), (8, 1)])
def test_window_count_matches_evaluate(num_targets, seq_len, stride):
    windows = sliding_windows(num_targets, seq_len, stride)
    assert flops.sliding_window_count(num_targets, seq_len, stride) == len(windows)
    assert flops.sliding_positions(num_targets, seq_len, stride) == len(windows) * min(seq_len, num_targets)


def test_official_split_window_count():
    # 62,021,632 targets: the first window scores 2048, each later one 64: (62,021,632 - 2048) / 64 = 969,056 more
    assert flops.sliding_window_count(OFFICIAL_SP1024_VAL_TARGETS, 2048, 64) == 969_057
    assert flops.sliding_window_count(0, 2048, 64) == 0


def test_utilisation():
    assert flops.utilisation(1000.0, 2e6, 4e9) == pytest.approx(0.5)
    assert math.isnan(flops.utilisation(1.0, 1.0, 0.0))


def test_variant_choice():
    assert bench.fastest_variant({"fp32": 10.0, "bf16": 30.0, "bf16+compile": float("nan")}) == "bf16"
    with pytest.raises(PgolfError):
        bench.fastest_variant({"fp32": float("nan")})
    assert [v.name for v in bench.parse_variants("fp32, bf16+compile")] == ["fp32", "bf16+compile"]
    with pytest.raises(PgolfError, match="fp16"):
        bench.parse_variants("fp16")


def test_bench_run_config():
    config = bench.bench_run_config(RunConfig(), bench.VARIANTS["bf16+compile"], 3, 128, 4, torch.device("cpu"))
    config.validate()
    assert (config.micro_batch_tokens, config.global_batch_tokens, config.grad_accum_steps(1)) == (384, 1536, 4)
    assert (config.autocast_dtype, config.compile, config.warmup_steps) == ("bf16", "on", 0)
    with pytest.raises(PgolfError):
        bench.bench_run_config(RunConfig(), bench.VARIANTS["fp32"], 0, 128, 1, torch.device("cpu"))


def test_default_micro_batch_is_capped_on_cpu_only():
    from pgolf.build import CPU_MICRO_TOKENS
    from pgolf.config import pr198, tiny

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert bench.default_micro_batch(pr198(), 2048, cuda) == (48, None)  # the preset's, 98,304 tokens
    sequences, note = bench.default_micro_batch(pr198(), 2048, cpu)
    assert sequences * 2048 <= CPU_MICRO_TOKENS and sequences == 4
    assert "48 x 2048" in note and "--grad-accum 12" in note
    assert bench.default_micro_batch(tiny(), 256, cpu) == (32, None)  # 8,192 tokens already
    assert bench.default_micro_batch(pr198(), 16_384, cpu)[0] == 1  # never below one sequence


def test_out_of_memory_in_a_variant_says_what_to_change(tmp_path, monkeypatch):
    from pgolf import train

    def allocation_fails(trainer):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 603979776 bytes")

    monkeypatch.setattr(train, "train_step", allocation_fails)
    run = RunConfig(model=SMALL)
    shard = bench.write_synthetic_shard(tmp_path, SMALL.vocab_size, 2_000)
    variant = bench.VARIANTS["fp32"]
    runs = [(variant, bench.bench_run_config(run, variant, 3, 32, 1, torch.device("cpu")))]
    expected = r"fp32 ran out of memory at 3 x 32 tokens per micro-step .*--micro-batch"
    with pytest.raises(PgolfError, match=expected):
        bench.measure_training(runs, torch.device("cpu"), shard, warmup_steps=1, timed_steps=1)
    assert not bench.is_out_of_memory(RuntimeError("shapes do not match"))


def test_format_table_aligns_columns():
    lines = bench.format_table(["a", "long header"], [["wide cell", "1"], ["x", "22"]]).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[1].startswith("|---")


def _agreement(tmp_path, names: str, model: ModelConfig = SMALL, micro_batch: int = 4,
               seq_len: int = 32) -> dict[str, bench.TrainMeasurement]:
    run = RunConfig(model=model, seed=3, matrix_lr=0.02, scalar_lr=0.02, embed_lr=0.05)
    shard = bench.write_synthetic_shard(tmp_path, model.vocab_size, 20_000, seed=1)
    device = torch.device("cpu")
    runs = [(variant, bench.bench_run_config(run, variant, micro_batch, seq_len, 2, device))
            for variant in bench.parse_variants(names)]
    measurements = bench.measure_training(runs, device, shard, warmup_steps=4, timed_steps=1)
    return {m.variant: m for m in measurements}


def _assert_agrees_with_fp32(results: dict[str, bench.TrainMeasurement], tolerance: float) -> None:
    reference = results["fp32"]
    assert len(reference.losses) == 5 and len(reference.step_seconds) == 1
    # the losses move (step 1 is ln V for every variant: zero-init output projections), so the check bites
    assert abs(reference.losses[-1] - reference.losses[0]) > 10 * tolerance
    for name, measurement in results.items():
        assert measurement.error == "", f"{name} failed: {measurement.error}"
        assert bench.largest_loss_gap(measurement.losses, reference.losses) < tolerance, (name, measurement.losses,
                                                                                          reference.losses)


def test_bf16_autocast_trains_like_fp32(tmp_path):
    # bf16 has 8 bits of mantissa: a loss near 4 carries ~0.016 of rounding per operation at worst
    _assert_agrees_with_fp32(_agreement(tmp_path, "fp32,bf16"), tolerance=0.03)


def test_after_round_runs_once_per_timed_round(tmp_path):
    shard = bench.write_synthetic_shard(tmp_path, SMALL.vocab_size, 5_000, seed=1)
    run = RunConfig(model=SMALL, seed=3)
    device = torch.device("cpu")
    runs = [(variant, bench.bench_run_config(run, variant, 2, 16, 1, device)) for variant in bench.parse_variants("fp32,bf16")]
    calls = []
    measurements = bench.measure_training(runs, device, shard, warmup_steps=1, timed_steps=3,
                                          after_round=lambda: calls.append(len(calls)))
    assert calls == [0, 1, 2]
    assert [len(m.step_seconds) for m in measurements] == [3, 3]


def test_bf16_with_the_amx_attention_backward_trains_like_fp32(tmp_path):
    """Head dim 64 and T = 128, where bf16 training on an AMX CPU uses pgolf's attention kernels:
    they and SDPA (the +sdpa variant) both stay with fp32."""
    model = ModelConfig(vocab_size=64, num_layers=2, model_dim=128, num_heads=2, num_kv_heads=1, mlp_mult=2,
                        bigram_buckets=16, bigram_dim=16, rope_reference_len=128)
    results = _agreement(tmp_path, "fp32,bf16,bf16+sdpa", model=model, micro_batch=2, seq_len=128)
    _assert_agrees_with_fp32(results, tolerance=0.03)
    assert results["bf16"].losses != results["bf16+sdpa"].losses or cpu_attention.unavailable_reason()


@pytest.mark.slow
def test_compiled_variants_train_like_fp32(tmp_path):
    results = _agreement(tmp_path, "fp32,fp32+compile,bf16+compile")
    assert bench.largest_loss_gap(results["fp32+compile"].losses, results["fp32"].losses) < 1e-3
    _assert_agrees_with_fp32(results, tolerance=0.03)


def test_measure_eval_counts_positions():
    config = RunConfig(model=SMALL, eval_seq_len=16, eval_stride=4)
    model = GPT(SMALL)
    result = bench.measure_eval(model, config, torch.device("cpu"), num_batches=2, batch_seqs=3, autocast_dtype=None)
    assert result.windows == 6 and result.positions == 6 * 16
    assert result.scored_tokens == 16 + 5 * 4  # first window scores all 16, each later one its last 4
    full_positions = flops.sliding_window_count(OFFICIAL_SP1024_VAL_TARGETS, 16, 4) * 16
    assert result.full_val_seconds == pytest.approx(full_positions / result.positions_per_second)


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_cli_bench_train_and_eval(capsys, keep_threads):
    common = ["--preset", "tiny", "--set", "num_layers=1", "--set", "model_dim=32", "--set", "num_heads=2",
              "--set", "num_kv_heads=1", "--set", "bigram_dim=8", "--threads", "1", "--matmul-sizes", "64,128"]
    assert main(["bench", "train", *common, "--variants", "fp32,bf16", "--micro-batch", "2", "--seq-len", "32",
                 "--warmup", "1", "--steps", "2"]) == 0
    output = capsys.readouterr().out
    assert "| fp32 " in output and "| bf16 " in output and "1.00x" in output and "fastest:" in output
    assert "threads: intra-op 1" in output
    # the bf16 peak: once before, after each of the 2 timed rounds (every size again), once after
    sampled = re.search(r"median [0-9.]+ TFLOP/s of (\d+) samples \([0-9.-]+; winning sizes ([0-9,]+)\)", output)
    assert sampled and sampled.group(1) == "4"
    assert len(sampled.group(2).split(",")) == 4 and set(sampled.group(2).split(",")) <= {"64", "128"}
    assert main(["bench", "eval", *common, "--variant", "fp32", "--batch-seqs", "2", "--batches", "1"]) == 0
    output = capsys.readouterr().out
    # tiny: window 256 at stride 64, so 1 + (62,021,632 - 256) / 64 windows for the official split
    assert "positions/s" in output and "969,085 windows" in output
    assert re.search(r"matmul peak fp32: [0-9.]+ TFLOP/s \((64|128)x\1x\1, median of 5", output)
    assert main(["bench", "train", *common, "--variants", "fp16"]) == 1

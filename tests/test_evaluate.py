"""Window arithmetic, truncation, and evaluate() against brute force, plain eval and two processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.evaluate import evaluate, sliding_windows, truncate_val_tokens
from pgolf.metric import ByteTables

VOCAB = 13


# ---------------------------------------------------------------- window arithmetic


def expected_context_start(target: int, num_targets: int, seq_len: int, stride: int) -> int:
    """Where target i's context starts under the rule, derived directly (not by walking windows)."""
    length = min(seq_len, num_targets)
    window_index = 0 if target < length else (target - length) // stride + 1
    return min(window_index * stride, num_targets - length)


CASES = [(1, 4, 1), (5, 8, 3), (16, 4, 4), (17, 4, 4), (19, 4, 4), (100, 16, 5), (101, 16, 16), (64, 16, 1),
         (37, 10, 3), (2048 * 3 + 17, 2048, 64), (1000, 7, 7), (23, 32, 8)]


@pytest.mark.parametrize("num_targets, seq_len, stride", CASES)
def test_every_target_scored_exactly_once(num_targets, seq_len, stride):
    windows = sliding_windows(num_targets, seq_len, stride)
    counts = np.zeros(num_targets, dtype=int)
    length = min(seq_len, num_targets)
    for index, (start, score_from, score_to) in enumerate(windows):
        assert 0 <= start <= num_targets - length  # never runs past the end
        assert start <= score_from < score_to <= start + length
        if index == 0:
            assert (start, score_from, score_to) == (0, 0, length)
        elif index < len(windows) - 1:
            assert start == stride * index and score_to - score_from == stride and score_to == start + length
        else:
            assert score_to == num_targets and start == num_targets - length  # aligned to the end
        counts[score_from:score_to] += 1
        for target in range(score_from, score_to):
            assert start == expected_context_start(target, num_targets, seq_len, stride)
            if target >= length:
                assert target - start + 1 >= length - stride + 1  # at least seq_len - stride context
    assert (counts == 1).all()


def test_plain_windows_when_stride_equals_seq_len():
    assert sliding_windows(12, 4, 4) == [(0, 0, 4), (4, 4, 8), (8, 8, 12)]
    assert sliding_windows(10, 4, 4) == [(0, 0, 4), (4, 4, 8), (6, 8, 10)]  # last chunk aligned to the end


def test_reference_example_stride_64():
    windows = sliding_windows(4096, 2048, 64)
    assert windows[1] == (64, 2048, 2112)
    assert len(windows) == 1 + 2048 // 64 and windows[-1] == (2048, 4032, 4096)


@pytest.mark.parametrize("seq_len, stride", [(4, 0), (4, 5), (0, 1)])
def test_bad_window_settings_raise(seq_len, stride):
    with pytest.raises(PgolfError):
        sliding_windows(10, seq_len, stride)


def test_truncation_matches_the_official_count():
    official = range(62_021_846)  # stands in for the val split: only len() and slicing are used
    kept = truncate_val_tokens(official, 2048)
    assert len(kept) - 1 == 62_021_632 == 30_284 * 2048
    assert list(truncate_val_tokens(list(range(11)), 4)) == list(range(9))
    with pytest.raises(PgolfError):
        truncate_val_tokens(list(range(4)), 4)


# ---------------------------------------------------------------- evaluate against brute force


class TinyCausalLM(nn.Module):
    """Logits at t depend on token t and the mean of tokens 0..t: context length matters."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.current = nn.Embedding(VOCAB, 6)
        self.context = nn.Embedding(VOCAB, 6)
        self.head = nn.Linear(6, VOCAB)
        self.double()

    def forward(self, input_ids):
        embedded = self.context(input_ids)  # (B, T, D)
        positions = torch.arange(1, input_ids.shape[1] + 1, device=input_ids.device, dtype=embedded.dtype)
        context = embedded.cumsum(1) / positions[None, :, None]  # (B, T, D) mean over tokens 0..t
        return 3.0 * self.head(torch.tanh(self.current(input_ids) + 2.0 * context))  # (B, T, V)


def tiny_tables() -> ByteTables:
    generator = np.random.default_rng(0)
    base = generator.integers(1, 4, VOCAB).astype(np.int16)
    boundary = np.zeros(VOCAB, dtype=bool)
    boundary[[0, 1]] = True  # two control ids: 0 bytes
    base[boundary] = 0
    leading = generator.random(VOCAB) < 0.5
    leading[boundary] = False
    return ByteTables(base_bytes=base, has_leading_space=leading, is_boundary=boundary)


def random_tokens(length: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, VOCAB, length).astype(np.int32))


def brute_force(model, tokens, tables, seq_len, stride) -> tuple[float, float, int, int]:
    """Each target's NLL from its own context slice, one forward per target; plain Python byte counts."""
    num_targets = len(tokens) - 1
    sum_nll, sum_bytes = 0.0, 0
    with torch.no_grad():
        for target in range(num_targets):
            start = expected_context_start(target, num_targets, seq_len, stride)
            context = tokens[start:target + 1].long()[None]
            logits = model(context)[0, -1]
            sum_nll += -torch.log_softmax(logits, -1)[tokens[target + 1]].item()
            token, previous = int(tokens[target + 1]), int(tokens[target])
            sum_bytes += int(tables.base_bytes[token]) + int(
                tables.has_leading_space[token] and not tables.is_boundary[previous])
    return sum_nll / num_targets, sum_nll / math.log(2) / sum_bytes, num_targets, sum_bytes


@pytest.mark.parametrize("length, seq_len, stride, batch_seqs", [
    (61, 16, 5, 3), (64, 16, 16, 2), (50, 16, 16, 4), (12, 32, 8, 2), (40, 8, 1, 7),
])
def test_evaluate_equals_brute_force(length, seq_len, stride, batch_seqs):
    model, tables, tokens = TinyCausalLM(), tiny_tables(), random_tokens(length)
    result = evaluate(model, tokens, tables, seq_len, stride, batch_seqs, DistInfo())
    loss, bpb, num_targets, num_bytes = brute_force(model, tokens, tables, seq_len, stride)
    assert result.tokens == num_targets == length - 1
    assert result.bytes == num_bytes
    assert result.loss == pytest.approx(loss, rel=1e-9)
    assert result.bpb == pytest.approx(bpb, rel=1e-9)


@pytest.mark.parametrize("length, seq_len, stride, batch_seqs", [(61, 16, 5, 3), (50, 16, 16, 4), (40, 8, 1, 7)])
def test_evaluate_with_a_sidecar_equals_brute_force(length, seq_len, stride, batch_seqs):
    """With a byte sidecar, target i (token i + 1) counts the sidecar's value at position i + 1."""
    model, tokens = TinyCausalLM(), random_tokens(length)
    sidecar = torch.from_numpy(np.random.default_rng(2).integers(0, 6, length).astype(np.int32))
    result = evaluate(model, tokens, None, seq_len, stride, batch_seqs, DistInfo(), val_bytes=sidecar)
    loss, _, num_targets, _ = brute_force(model, tokens, tiny_tables(), seq_len, stride)
    num_bytes = int(sidecar[1:].sum())  # every target scored once; the first token is never a target
    assert result.tokens == num_targets and result.bytes == num_bytes
    assert result.bpb == pytest.approx(loss * num_targets / math.log(2) / num_bytes, rel=1e-9)


def test_sidecar_and_tables_are_never_mixed():
    tokens = random_tokens(20)
    with pytest.raises(PgolfError, match="not both"):
        evaluate(TinyCausalLM(), tokens, tiny_tables(), 8, 8, 2, DistInfo(), val_bytes=torch.ones(20))
    with pytest.raises(PgolfError, match="19 values for 20 val tokens"):
        evaluate(TinyCausalLM(), tokens, None, 8, 8, 2, DistInfo(), val_bytes=torch.ones(19))


def test_stride_equal_to_seq_len_is_plain_evaluation():
    model, tables = TinyCausalLM(seed=3), tiny_tables()
    tokens = truncate_val_tokens(random_tokens(70, seed=5), 16)  # 64 targets, 4 chunks
    result = evaluate(model, tokens, tables, seq_len=16, stride=16, batch_seqs=3, dist=DistInfo())
    with torch.no_grad():
        inputs = tokens[:-1].long().reshape(4, 16)
        targets = tokens[1:].long().reshape(4, 16)
        loss = F.cross_entropy(model(inputs).reshape(-1, VOCAB), targets.reshape(-1)).item()
    assert result.tokens == 64
    assert result.loss == pytest.approx(loss, rel=1e-12)


def test_sliding_scores_the_same_targets_with_more_context():
    # same targets and bytes; the extra context changes the NLL (the test model depends on all of it)
    model, tables, tokens = TinyCausalLM(), tiny_tables(), random_tokens(65)
    plain = evaluate(model, tokens, tables, 16, 16, 4, DistInfo())
    sliding = evaluate(model, tokens, tables, 16, 4, 4, DistInfo())
    assert plain.tokens == sliding.tokens == 64 and plain.bytes == sliding.bytes
    assert plain.loss != sliding.loss


def test_numpy_uint16_input_progress_and_mode_restored():
    model, tables = TinyCausalLM(), tiny_tables()
    tokens = random_tokens(45).numpy().astype(np.uint16)
    calls = []
    model.train()
    result = evaluate(model, tokens, tables, 8, 4, 2, DistInfo(), progress=lambda done, total: calls.append(
        (done, total)))
    total = len(sliding_windows(44, 8, 4))
    assert calls[-1] == (total, total) and [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert model.training
    assert result.tokens == 44


def test_token_outside_tables_raises():
    tokens = torch.tensor([1, 2, VOCAB + 3, 4], dtype=torch.int32)
    with pytest.raises(PgolfError, match="outside the byte tables"):
        evaluate(TinyCausalLM(), tokens, tiny_tables(), 4, 4, 1, DistInfo())


def test_bf16_autocast_is_close():
    model = TinyCausalLM().float()
    tables, tokens = tiny_tables(), random_tokens(33)
    exact = evaluate(model, tokens, tables, 8, 4, 4, DistInfo())
    low = evaluate(model, tokens, tables, 8, 4, 4, DistInfo(), autocast_dtype=torch.bfloat16)
    assert low.tokens == exact.tokens and low.bpb == pytest.approx(exact.bpb, rel=0.05)


# ---------------------------------------------------------------- two processes


def evaluate_worker(rank: int, port: int, result_path: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = evaluate(TinyCausalLM(), random_tokens(83), tiny_tables(), 16, 5, 3,
                          DistInfo(rank=rank, world_size=2))
        if rank == 1:
            torch.save(torch.tensor([result.loss, result.bpb, result.tokens, result.bytes], dtype=torch.float64),
                       result_path)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluate_equals_single_process(tmp_path, gloo_port):
    result_path = tmp_path / "rank1.pt"
    mp.spawn(evaluate_worker, args=(gloo_port, str(result_path)), nprocs=2, join=True)
    loss, bpb, tokens, num_bytes = torch.load(result_path, weights_only=True).tolist()
    single = evaluate(TinyCausalLM(), random_tokens(83), tiny_tables(), 16, 5, 3, DistInfo())
    assert (int(tokens), int(num_bytes)) == (single.tokens, single.bytes) == (82, single.bytes)
    assert loss == pytest.approx(single.loss, rel=1e-12)
    assert bpb == pytest.approx(single.bpb, rel=1e-12)


# ---------------------------------------------------------------- with the real model


def test_evaluate_with_pgolf_gpt_matches_brute_force():
    from pgolf.config import ModelConfig
    from pgolf.model import GPT

    config = ModelConfig(vocab_size=VOCAB, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1, mlp_mult=2,
                         bigram_buckets=16, bigram_dim=8, rope_reference_len=64)  # no NTK switch at these lengths
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():  # zero-initialised projections would hide the context: randomise everything
        for parameter in model.parameters():
            parameter.copy_(0.3 * torch.randn_like(parameter))
    tables, tokens = tiny_tables(), random_tokens(41, seed=7)
    result = evaluate(model, tokens, tables, seq_len=12, stride=5, batch_seqs=4, dist=DistInfo())
    loss, bpb, num_targets, num_bytes = brute_force(model, tokens, tables, 12, 5)
    assert (result.tokens, result.bytes) == (num_targets, num_bytes) == (40, num_bytes)
    assert result.bpb == pytest.approx(bpb, rel=1e-5)  # the GPT's logits are fp32

"""Score-first LoRA TTT (spec frontier.md §6): its arithmetic, the adapters, and the procedure against plain
scoring of the same windows."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pgolf.config import ModelConfig, frontier_model, frontier_tiny
from pgolf.distributed import DistInfo
from pgolf.evaluate import Scored, Updated, run_procedure
from pgolf.lora import BatchedLoRA, adapter_shapes, parameters_per_document
from pgolf.metric import ByteTables
from pgolf.model import GPT
from pgolf.ttt import TTTProcedure, TTTSettings
from pgolf.ttt_plan import (chunk_windows, cosine_lr, document_spans, length_batches, phase_sequences,
                            segment_boundaries)

VOCAB = 48
BOS = 1
# every frontier switch (looping, lanes, XSA, gates, document isolation) at a test size; rotary on 8 dims
# with an unscaled base, so a window's logits do not depend on the padded row length
SMALL = replace(frontier_tiny().model, vocab_size=VOCAB, model_dim=32, num_heads=4, num_kv_heads=2, rope_dims=4,
                embedding_dtype="fp32", attn_gate_window=4, smear_gate_window=4)
SETTINGS = TTTSettings(context_tokens=24, chunk_tokens=8, batch_docs=3, lora_rank=4, lora_alpha=7.2, lr=1e-2,
                       phase_boundaries=(), global_seq_len=16, global_batch_seqs=2)


def random_gpt(config: ModelConfig = SMALL, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():  # zero-initialised projections would hide the context: randomise everything
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn_like(parameter))
    return model


def stream(length: int = 300, num_docs: int = 7, seed: int = 0) -> torch.Tensor:
    """Random non-bos tokens with bos at the start and at num_docs - 1 other places (documents of many lengths)."""
    generator = np.random.default_rng(seed)
    tokens = generator.integers(2, VOCAB, length)
    tokens[0] = BOS
    tokens[generator.choice(np.arange(2, length - 1), num_docs - 1, replace=False)] = BOS
    return torch.from_numpy(tokens.astype(np.int32))


def unit_tables() -> ByteTables:
    return ByteTables(np.ones(VOCAB, np.int16), np.zeros(VOCAB, bool), np.zeros(VOCAB, bool))


def scored_array(events, num_targets: int) -> np.ndarray:
    nll = np.full(num_targets, np.nan)
    for event in events:
        if isinstance(event, Scored):
            nll[event.targets.numpy()] = event.nll.double().numpy()
    return nll


# ---------------------------------------------------------------- arithmetic


def test_documents_tile_the_targets_and_end_with_the_next_bos():
    tokens = np.array([5, 1, 7, 8, 1, 1, 9, 2])  # no bos at 0; two bos in a row; the last document runs to the end
    documents = document_spans(tokens, BOS)
    assert [(doc.first_target, doc.num_targets) for doc in documents] == [(0, 1), (1, 3), (4, 1), (5, 2)]
    # the document from bos at 1 predicts 7, 8 and the next bos
    assert tokens[1 + 1:1 + 3 + 1].tolist() == [7, 8, 1]
    spans = document_spans(stream().numpy(), BOS)
    assert sum(doc.num_targets for doc in spans) == 299 and len(spans) == 7


def test_batches_are_cut_from_the_shortest_and_the_remainder_is_the_longest():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    documents = [type(document_spans(np.array([1, 2]), BOS)[0])(first_target=10 * i, num_targets=n)
                 for i, n in enumerate(lengths)]
    batches = length_batches(documents, 3)
    assert [[lengths[i] for i in batch] for batch in batches] == [[1, 2, 3], [5, 7, 8], [9]]


def test_chunk_windows_end_at_the_chunk_and_hold_at_most_the_context():
    windows = chunk_windows(21, 8, 12)
    assert [(w.window_start, w.score_from, w.score_to) for w in windows] == [(0, 0, 8), (4, 8, 16), (9, 16, 21)]
    assert all(w.score_to - w.window_start <= 12 for w in windows)


def test_phase_sequences_skip_the_last_chunk_and_keep_document_starts():
    tokens = stream(200, 5, seed=3).numpy()
    documents = document_spans(tokens, BOS)
    plan = phase_sequences(tokens, documents, seq_len=8, batch_seqs=2)
    assert plan.inputs.shape == (math.ceil(199 / 16) - 1, 2, 8)
    flat_index = plan.target_index.reshape(-1)
    assert (flat_index == np.arange(flat_index.size)).all()  # all documents in stream order here
    assert (plan.inputs.reshape(-1) == tokens[flat_index]).all()
    assert (plan.targets.reshape(-1) == tokens[flat_index + 1]).all()
    for chunk, rows in enumerate(plan.row_starts):
        for row, starts in enumerate(rows):
            first = plan.target_index[chunk, row, 0]
            expected = {0} | {int(p) - first for p in range(first, first + 8)
                              if any(doc.first_target == p for doc in documents)}
            assert set(starts) == expected
    assert segment_boundaries([[0, 3], [0]], 8).tolist() == [0, 3, 8, 16]


def test_cosine_lr_goes_from_the_rate_to_zero():
    assert [round(cosine_lr(1.0, step, 5), 6) for step in range(5)] == [1.0, 0.853553, 0.5, 0.146447, 0.0]


# ---------------------------------------------------------------- adapters


def test_adapter_count_is_the_spec_number():
    # frontier.md §6: rank 80 on q, k, v, out, mlp of 17 virtual layers plus the head: 6,963,200 per document
    assert parameters_per_document(frontier_model(), True, ("q", "k", "v", "out", "mlp", "head"), 80) == 6_963_200
    assert len(adapter_shapes(frontier_model(), True, ("k",))) == 17


def test_head_adapter_is_added_to_the_logits_before_the_softcap():
    model = random_gpt()
    inputs = stream(40, 2, seed=1)[:32].long().reshape(2, 16)
    lora = BatchedLoRA(SMALL, True, ("head",), rank=3, alpha=6.0, num_docs=2,
                       generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    with torch.no_grad():
        lora.b["head"].normal_()
    hidden = {}

    def capture(x):  # the final normed hidden state (B, T, C), through the same hook point, adding nothing
        hidden["x"] = x
        return torch.zeros(*x.shape[:-1], VOCAB)

    with torch.no_grad():
        with lora.attached(model):
            adapted = model(inputs)
        assert model.logit_delta is None  # detached again
        model.logit_delta = capture
        plain = model(inputs)
        model.logit_delta = None
        x, a, b = hidden["x"], lora.a["head"], lora.b["head"]
        delta = torch.stack([x[d] @ a[d].T @ b[d].T for d in range(2)]) * (6.0 / 3)  # (alpha / rank) x A^T B^T
        expected = SMALL.logit_softcap * torch.tanh((F.linear(x, model.tok_emb.weight) + delta) / SMALL.logit_softcap)
    assert torch.equal(plain, model(inputs).detach())
    assert not torch.equal(adapted, plain)
    assert torch.allclose(adapted, expected, atol=1e-5)


def test_every_slot_adapter_is_used_and_documents_stay_independent():
    model = random_gpt()
    inputs = stream(60, 3, seed=2)[:48].long().reshape(3, 16)
    lora = BatchedLoRA(SMALL, True, ("q", "k", "v", "out", "mlp", "head"), rank=2, alpha=4.0, num_docs=3,
                       generator=torch.Generator().manual_seed(1), device=torch.device("cpu"))
    with torch.no_grad():
        for b in lora.b.values():
            b.normal_(std=0.1)
    with lora.attached(model):
        logits = model(inputs)
        logits[0].square().sum().backward()  # document 0's output only
    slots = len(SMALL.layer_order(True))
    assert len(lora.a) == 5 * slots + 1
    for name, a in lora.a.items():
        assert a.grad[0].abs().sum() > 0, name  # every adapter of every looped pass is on document 0's path
        assert a.grad[1:].abs().sum() == 0, name  # and no other document's adapter is
    with torch.no_grad(), lora.attached(model):
        lora.b["slot2_mlp"][1].add_(1.0)  # change document 1's adapter: document 0 must not move
        again = model(inputs)
    assert torch.equal(again[0], logits[0].detach()) and not torch.equal(again[1], logits[1].detach())


# ---------------------------------------------------------------- the procedure


def test_ttt_at_learning_rate_zero_is_exactly_plain_scoring_of_the_same_windows():
    model, tokens = random_gpt(), stream(200, 5)
    plain = run_procedure(TTTProcedure(replace(SETTINGS, adapt=False)), model, tokens, unit_tables(), DistInfo())
    frozen = run_procedure(TTTProcedure(replace(SETTINGS, lr=0.0)), model, tokens, unit_tables(), DistInfo())
    assert frozen.tokens == plain.tokens == tokens.numel() - 1  # every val target, once
    assert frozen.loss == plain.loss and frozen.bpb == plain.bpb  # bit for bit
    adapted = run_procedure(TTTProcedure(SETTINGS), model, tokens, unit_tables(), DistInfo())
    assert adapted.tokens == plain.tokens and adapted.loss != plain.loss


def test_document_chunk_scoring_equals_each_window_alone():
    """The batched, padded rows against one forward per chunk window of one document, fp64 sums."""
    model, tokens = random_gpt(), stream(160, 4, seed=5)
    events = list(TTTProcedure(replace(SETTINGS, adapt=False)).events(model, tokens, DistInfo()))
    measured = scored_array(events, tokens.numel() - 1)
    expected = np.full(tokens.numel() - 1, np.nan)
    with torch.no_grad():
        for doc in document_spans(tokens.numpy(), BOS):
            for window in chunk_windows(doc.num_targets, SETTINGS.chunk_tokens, SETTINGS.context_tokens):
                first = doc.first_target + window.window_start
                width = window.score_to - window.window_start
                logits = model(tokens[first:first + width].long()[None])[0]
                log_probs = torch.log_softmax(logits.double(), dim=-1)
                for local in range(window.score_from - window.window_start, width):
                    expected[first + local] = -log_probs[local, tokens[first + local + 1]].item()
    assert not np.isnan(expected).any()
    np.testing.assert_allclose(measured, expected, rtol=1e-5)


def test_ttt_scores_first_and_trains_only_on_scored_documents():
    model, tokens = random_gpt(), stream(250, 8, seed=4)
    settings = replace(SETTINGS, phase_boundaries=(3, 6))
    events = list(TTTProcedure(settings).events(model, tokens, DistInfo()))
    emitted = np.zeros(tokens.numel() - 1, dtype=int)
    kinds = []
    for event in events:
        if isinstance(event, Scored):
            emitted[event.targets.numpy()] += 1
        else:
            assert (emitted[event.targets.numpy()] == 1).all()  # only already-scored targets
            kinds.append(event.kind)
    assert (emitted == 1).all()
    assert "lora" in kinds and kinds.count("global") >= 2
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    list(TTTProcedure(settings).events(model, tokens, DistInfo()))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())  # restored


def test_global_phases_change_the_later_scores():
    model, tokens = random_gpt(), stream(250, 8, seed=4)
    without = run_procedure(TTTProcedure(SETTINGS), model, tokens, unit_tables(), DistInfo())
    phased = run_procedure(TTTProcedure(replace(SETTINGS, phase_boundaries=(3,), global_lr=0.05)), model, tokens,
                           unit_tables(), DistInfo())
    assert phased.tokens == without.tokens and phased.loss != without.loss


# ---------------------------------------------------------------- two processes


def ttt_worker(rank: int, port: int, result_path: str, settings: TTTSettings) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = run_procedure(TTTProcedure(settings), random_gpt(), stream(400, 9, seed=4), unit_tables(),
                               DistInfo(rank=rank, world_size=2))
        if rank == 1:
            torch.save(torch.tensor([result.loss, result.tokens, result.bytes], dtype=torch.float64), result_path)
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("settings", [replace(SETTINGS, lr=0.0, phase_boundaries=(3, 6), global_lr=0.0),
                                      replace(SETTINGS, phase_boundaries=(3, 6))], ids=["frozen", "adapting"])
def test_two_processes_claim_every_batch_once(tmp_path, gloo_port, settings):
    """Batches come from the shared counter, phases gather both ranks: the same targets once; with nothing
    learned, the same score as one process."""
    result_path = tmp_path / "rank1.pt"
    mp.spawn(ttt_worker, args=(gloo_port, str(result_path), settings), nprocs=2, join=True)
    loss, tokens, num_bytes = torch.load(result_path, weights_only=True).tolist()
    single = run_procedure(TTTProcedure(settings), random_gpt(), stream(400, 9, seed=4), unit_tables(), DistInfo())
    assert (int(tokens), int(num_bytes)) == (single.tokens, single.bytes) == (399, 399)
    if settings.lr == 0:
        assert loss == pytest.approx(single.loss, rel=1e-12)
    else:
        assert math.isfinite(loss)

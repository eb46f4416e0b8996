"""No host-device synchronisation in the hot loops: an evaluation batch, a training step, a forward
with document isolation on FA3 (the CPU stand-in). Counted by `host_syncs.HostSyncs`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

import fa3_stand_in
from host_syncs import HostSyncs
from pgolf import bench
from pgolf.config import apply_overrides, frontier_tiny, tiny
from pgolf.data.packing import batch_boundaries
from pgolf.distributed import DistInfo
from pgolf.evaluate import evaluate
from pgolf.model import GPT
from pgolf.train import train_step

BOS = 1
SMALL = ["vocab_size=64", "model_dim=64", "num_heads=4", "num_kv_heads=2", "train_seq_len=32",
         "global_batch_tokens=256", "micro_batch_tokens=128"]
# 4 layers, layers 1-2 looped three times: 8 attention calls per forward
FRONTIER = apply_overrides(frontier_tiny(), SMALL + ["rope_dims=8"]).model
DENSE = apply_overrides(tiny(), SMALL + ["num_layers=2", "bigram_buckets=32", "bigram_dim=16"]).model


def syncs_of(function, host_data: bool = False) -> list[str]:
    with HostSyncs(host_data) as counter:
        function()
    return counter.found


def test_an_evaluation_batch_waits_for_nothing():
    """Three batches ask the device for exactly what one batch does (the setup and the final sums), and
    make no tensor from host data per batch."""
    torch.manual_seed(0)
    model = GPT(DENSE)
    tables = bench.uniform_byte_tables(64)
    seq_len, stride, batch_seqs = 32, 8, 4

    def evaluation(num_batches: int):
        num_targets = seq_len + (num_batches * batch_seqs - 1) * stride
        tokens = np.random.default_rng(num_batches).integers(0, 64, num_targets + 1)
        return lambda: evaluate(model, tokens, tables, seq_len, stride, batch_seqs, DistInfo())

    evaluation(1)()  # the byte tables go to the device once per process
    one, three = syncs_of(evaluation(1), host_data=True), syncs_of(evaluation(3), host_data=True)
    assert one == three, f"one batch: {one}\nthree batches: {three}"


def frontier_batch(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (2, 32), generator=generator)
    ids.view(-1)[torch.randperm(64, generator=generator)[:5]] = BOS
    return ids


def test_fa3_document_boundaries_are_found_once_per_forward_not_per_layer(monkeypatch):
    fa3_stand_in.install(monkeypatch)
    model = GPT(FRONTIER)
    ids = frontier_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = syncs_of(lambda: model(ids, ids))
    assert len(found) == 1 and found[0].startswith("nonzero at attention.py"), found


def test_boundaries_from_the_loader_leave_the_forward_without_syncs(monkeypatch):
    fa3_stand_in.install(monkeypatch)
    model = GPT(FRONTIER)
    ids = frontier_batch()
    boundaries = batch_boundaries(ids, BOS, max_length=32)  # on the host, before the batch goes to the device
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert syncs_of(lambda: model(ids, ids, cu_seqlens=boundaries, max_seqlen=32)) == []


def test_a_training_step_waits_for_nothing(tmp_path):
    """The whole step (accumulation, clipping, Muon and AdamW) with the dense model."""
    run = apply_overrides(tiny(), SMALL + ["num_layers=2", "bigram_buckets=32", "bigram_dim=16",
                                           "grad_clip_norm=0.3"])
    device = torch.device("cpu")
    shard = bench.write_synthetic_shard(tmp_path, 64, 5_000)
    trainer = bench.build_bench_trainer(bench.bench_run_config(run, bench.VARIANTS["bf16"], 4, 32, 2, device),
                                        device, shard)
    train_step(trainer)  # creates the optimiser state
    assert syncs_of(lambda: train_step(trainer)) == []


def test_a_frontier_training_step_finds_boundaries_at_most_once_per_micro_step(tmp_path, monkeypatch):
    """FA3 with document isolation: the boundaries once per forward (none once the loop hands the loader's
    to the model, `data.packing.batch_boundaries`), never once per attention call."""
    fa3_stand_in.install(monkeypatch)
    run = replace(apply_overrides(frontier_tiny(), SMALL + ["rope_dims=8"]), model=FRONTIER)
    device = torch.device("cpu")
    shard = bench.write_synthetic_shard(tmp_path, 64, 5_000)
    trainer = bench.build_bench_trainer(bench.bench_run_config(run, bench.VARIANTS["bf16"], 4, 32, 2, device),
                                        device, shard)
    found = syncs_of(lambda: train_step(trainer))
    assert all(entry.startswith("nonzero at attention.py") for entry in found), found
    assert len(found) <= trainer.grad_accum_steps, found

"""A compiled training step is one graph: FA3 (a CPU stand-in with an untraceable kernel, as older
wheels have) inside the block loop, packed rows with their boundaries, boundaries found per forward.

Graphs are counted by a backend that records every forward and backward graph AOT autograd hands
it; breaks by `torch._dynamo.explain`. A graph break inside the loop would show as more graphs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

import fa3_stand_in
from pgolf.config import frontier_tiny, tiny
from pgolf.data.packing import row_boundaries
from pgolf.model import GPT

BOS = 1
# every frontier switch (documents, XSA, a looped layer, lanes, gates) in 3 layers, head_dim 16
FRONTIER = replace(frontier_tiny().model, vocab_size=64, num_layers=3, model_dim=64, num_heads=4, num_kv_heads=2,
                   rope_dims=8, xsa_layers=(0, 1, 2), loop_layers=(1,), num_loop_passes=2, parallel_lanes_from=2)
DENSE = replace(tiny().model, vocab_size=64, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2,
                bigram_buckets=32, bigram_dim=16)


class GraphCounter:
    """A torch.compile backend that runs graphs as they are and counts them."""

    def __init__(self):
        self.forward, self.backward = 0, 0

    def backend(self):
        def forward_compiler(graph, example_inputs):
            self.forward += 1
            return make_boxed_func(graph.forward)

        def backward_compiler(graph, example_inputs):
            self.backward += 1
            return make_boxed_func(graph.forward)

        return aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)


def batch_with_documents(seed: int, batch: int, length: int, num_bos: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 64, (batch, length), generator=generator)
    positions = torch.randperm(batch * length, generator=generator)[:num_bos]
    ids.view(-1)[positions] = BOS
    return ids


def train_twice(model, batches) -> None:
    """Forward + backward under bf16 autocast for each (inputs, extra keyword arguments)."""
    for inputs, extra in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(inputs, inputs.roll(-1, dims=1), **extra)
        loss.backward()


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def graphs_and_breaks(config, batches, monkeypatch) -> tuple[int, int, int]:
    fa3_stand_in.install(monkeypatch)
    torch.manual_seed(0)
    model = GPT(config)
    counter = GraphCounter()
    train_twice(torch.compile(model, backend=counter.backend(), dynamic=False), batches)
    inputs, extra = batches[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(inputs, inputs.roll(-1, dims=1), **extra)
    return counter.forward, counter.backward, explanation.graph_break_count


@pytest.mark.slow
def test_frontier_model_with_packed_rows_compiles_to_one_graph(fresh_dynamo, monkeypatch):
    """One packed row per step with its boundaries (cut at max_length 16, padded to 64 entries)."""
    batches = []
    for seed in (1, 2):
        row = batch_with_documents(seed, 1, 96, num_bos=5)
        boundaries = torch.from_numpy(row_boundaries(row[0].numpy(), BOS, max_length=16))
        batches.append((row, {"cu_seqlens": boundaries, "max_seqlen": 16}))
    assert graphs_and_breaks(FRONTIER, batches, monkeypatch) == (1, 1, 0)
    assert len(fa3_stand_in.backward_calls) > 0  # the wheel's backward ran, inside the one backward graph


@pytest.mark.slow
def test_frontier_model_finding_its_boundaries_compiles_to_one_graph(fresh_dynamo, monkeypatch):
    """Plain rows without boundaries: found once per forward, any number of documents, no recompilation."""
    batches = [(batch_with_documents(3, 2, 32, num_bos=2), {}), (batch_with_documents(4, 2, 32, num_bos=7), {})]
    assert graphs_and_breaks(FRONTIER, batches, monkeypatch) == (1, 1, 0)


def test_dense_model_compiles_to_one_graph(fresh_dynamo, monkeypatch):
    batches = [(batch_with_documents(seed, 2, 32, num_bos=0), {}) for seed in (5, 6)]
    assert graphs_and_breaks(DENSE, batches, monkeypatch) == (1, 1, 0)

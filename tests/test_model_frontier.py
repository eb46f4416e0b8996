"""The frontier switches of the GPT (spec frontier.md §3) against straight transcriptions of the spec's formulas.

Every piece is checked on its own (float64, tiny shapes), then the whole looped,
laned model against one independent float64 forward written from the spec text.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig, frontier, frontier_model, frontier_tiny
from pgolf.model import GPT, Block, InputSmearGate, Rotary, apply_rotary, document_ids_from_boundaries, \
    exclusive_self_attention, num_parameters, sparse_attention_gate
from pgolf.model_summary import parameter_breakdown

BOS = 1
# 4 layers, head_dim 16 with 8 rotated dims, layers 1-2 looped three times, lanes in layer 3
SMALL = replace(frontier_tiny().model, vocab_size=64, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8)


def randomized(config: ModelConfig, seed: int = 0, scale: float = 0.3) -> GPT:
    """A model whose zero-initialised parts (gates, smear, output projections) are made non-zero."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model.eval()


def rms(x: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + torch.finfo(x.dtype).eps)


# ---------------------------------------------------------------- one switch at a time


def test_xsa_removes_the_component_along_the_own_value_of_each_query_head():
    generator = torch.Generator().manual_seed(0)
    y = torch.randn(2, 5, 4, 8, generator=generator, dtype=torch.float64)  # 4 query heads
    v = torch.randn(2, 5, 2, 8, generator=generator, dtype=torch.float64)  # 2 kv heads: heads 0,1 -> 0; 2,3 -> 1
    expected = y.clone()
    for head in range(4):
        own = v[:, :, head // 2]
        unit = own / own.norm(dim=-1, keepdim=True)
        expected[:, :, head] = y[:, :, head] - (y[:, :, head] * unit).sum(-1, keepdim=True) * unit
    got = exclusive_self_attention(y, v)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for head in range(4):  # nothing left along the own value
        assert (got[:, :, head] * v[:, :, head // 2]).sum(-1).abs().max() < 1e-12


def test_sparse_attention_gate_formula_and_half_at_initialisation():
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(2, 3, 4, 8, generator=generator, dtype=torch.float64)
    attention_input = torch.randn(2, 3, 32, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 12, generator=generator, dtype=torch.float64)
    expected = y.clone()
    for head in range(4):
        gate = torch.sigmoid(0.5 * (attention_input[..., :12] * weight[head]).sum(-1))  # (B, T)
        expected[:, :, head] = y[:, :, head] * gate[..., None]
    torch.testing.assert_close(sparse_attention_gate(y, attention_input, weight, 0.5), expected, rtol=0, atol=1e-12)
    zero = torch.zeros(4, 12, dtype=torch.float64)
    torch.testing.assert_close(sparse_attention_gate(y, attention_input, zero, 0.5), 0.5 * y, rtol=0, atol=0)


def test_input_smear_gate_formula_bos_mask_and_identity_at_initialisation():
    generator = torch.Generator().manual_seed(2)
    gate = InputSmearGate(12).double()
    embeddings = torch.randn(2, 7, 32, generator=generator, dtype=torch.float64)
    ids = torch.randint(2, 50, (2, 7), generator=generator)
    ids[0, 3] = ids[1, 0] = ids[1, 5] = BOS
    torch.testing.assert_close(gate(embeddings, ids == BOS), embeddings, rtol=0, atol=0)  # w, lam = 0
    with torch.no_grad():
        gate.gate.copy_(torch.randn(12, generator=generator))
        gate.strength.fill_(0.7)
    expected = embeddings.clone()
    for t in range(1, 7):  # e'_t = e_t + lam * sigmoid(w . e_t[0:12]) * e_{t-1} * [id_t != bos]; e'_0 = e_0
        g = torch.sigmoid(embeddings[:, t, :12] @ gate.gate.detach())
        expected[:, t] = embeddings[:, t] + 0.7 * (g * (ids[:, t] != BOS))[:, None] * embeddings[:, t - 1]
    got = gate(embeddings, ids == BOS)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert torch.equal(got[0, 3], embeddings[0, 3]) and torch.equal(got[1, 5], embeddings[1, 5])


def test_partial_rotary_rotates_pairs_i_and_i_plus_half_with_an_unscaled_base():
    rotary = Rotary(head_dim=16, base=10000.0, reference_len=4, rotary_dims=8)
    length = 12  # above reference_len: a full rotary would scale its base here, a partial one never does
    cos, sin = rotary(length, torch.device("cpu"), torch.float64)
    x = torch.randn(1, length, 2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = x.clone()
    for position in range(length):
        for j in range(4):
            angle = position * 10000.0 ** (-2 * j / 8)
            x1, x2 = x[0, position, :, j], x[0, position, :, j + 4]
            expected[0, position, :, j] = x1 * math.cos(angle) + x2 * math.sin(angle)
            expected[0, position, :, j + 4] = -x1 * math.sin(angle) + x2 * math.cos(angle)
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected, rtol=0, atol=1e-12)


def test_leaky_relu_squared_mlp():
    block = Block(replace(SMALL, mlp_negative_slope=0.5)).double()
    with torch.no_grad():
        block.mlp.proj.weight.normal_()
    x = torch.randn(3, 64, dtype=torch.float64)
    hidden = x @ block.mlp.fc.weight.T
    hidden = torch.where(hidden > 0, hidden, 0.5 * hidden) ** 2
    torch.testing.assert_close(block.mlp(x), hidden @ block.mlp.proj.weight.T, rtol=0, atol=1e-12)
    relu_block = Block(replace(SMALL, mlp_negative_slope=0.0)).double()
    relu_block.load_state_dict(block.state_dict())
    assert not torch.allclose(relu_block.mlp(x), block.mlp(x))


@pytest.mark.parametrize("layer_index", [0, 3])
def test_layer_norm_scale_multiplies_both_branch_inputs_by_one_over_sqrt_l_plus_1(layer_index):
    block = Block(SMALL, layer_index)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(block.normed(x), F.rms_norm(x, (64,)) / math.sqrt(layer_index + 1))
    plain = Block(replace(SMALL, layer_norm_scale=False), layer_index)
    assert plain.norm_scale is None and torch.equal(plain.normed(x), F.rms_norm(x, (64,)))


def test_gated_skip_is_the_lerp_of_the_spec():
    model = randomized(SMALL)
    x, skip = torch.randn(2, 5, 64), torch.randn(2, 5, 64)
    s = torch.sigmoid(model.skip_gates[1])
    expected = s * x + (1 - s) * model.skip_weights[1] * skip
    torch.testing.assert_close(model._skip(x, skip, 1), expected)
    fresh = GPT(SMALL)  # w = 1, g = 0: the average of x and skip
    torch.testing.assert_close(fresh._skip(x, skip, 0), (x + skip) / 2)


def test_document_ids_from_packed_boundaries():
    cu_seqlens = torch.tensor([0, 3, 4, 9, 10, 10, 10, 10], dtype=torch.int32)  # padded with the total
    ids = document_ids_from_boundaries(cu_seqlens, 2, 5)
    assert ids.tolist() == [[1, 1, 1, 2, 3], [3, 3, 3, 3, 4]]


# ---------------------------------------------------------------- sizes, names, initialisation


def test_frontier_parameter_count_and_the_spec_breakdown():
    with torch.device("meta"):
        model = GPT(frontier_model())
    assert num_parameters(model) == 35_945_671
    # spec frontier.md §3, table rows derived by hand
    assert dict((kind, count) for kind, _, count in parameter_breakdown(model)) == {
        "tied embedding": 8192 * 512,
        "q and out proj": 22 * 512 * 512,
        "k and v proj": 22 * 256 * 512,
        "MLP up / down": 2 * 11 * 2048 * 512,
        "per block: q_gain, attn/mlp scale, resid_mix, sparse gate": 11 * (8 + 512 + 512 + 2 * 512 + 8 * 12),
        "skip weights + skip gates": 2 * 8 * 512,
        "lane mix + lane residual scales": 11 * 2 * 2 + 11 * 2,
        "smear gate + smear scalar": 12 + 1,
    }


def test_frontier_layer_orders_are_the_spec_lists():
    config = frontier_model()
    looped = config.layer_order(looping=True)
    assert looped == (0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert looped[:len(looped) // 2] == (0, 1, 2, 3, 4, 5, 3, 4)
    assert looped[len(looped) // 2:] == (5, 3, 4, 5, 6, 7, 8, 9, 10)
    plain = config.layer_order(looping=False)
    assert plain[:len(plain) // 2] == (0, 1, 2, 3, 4) and plain[len(plain) // 2:] == (5, 6, 7, 8, 9, 10)
    assert config.num_skip_weights == 8


def test_frontier_initialisation():
    torch.manual_seed(0)
    model = GPT(SMALL)
    assert torch.count_nonzero(model.smear.gate) == 0 and model.smear.strength.item() == 0.0
    assert torch.equal(model.skip_gates, torch.zeros(4, 64)) and torch.equal(model.skip_weights, torch.ones(4, 64))
    assert torch.equal(model.lane_residual, torch.full((4, 2), 1.1))
    assert torch.equal(model.lane_mix, torch.ones(4, 2, 2))
    for block in model.blocks:
        assert torch.equal(block.attn.gate, torch.zeros(4, 12))
        assert torch.equal(block.attn.q_gain, torch.full((4,), 5.0))
        assert block.attn.exclusive
    assert model.looping  # a freshly built (or loaded) model evaluates looped


# ---------------------------------------------------------------- the whole model against the spec text


def reference_attention(p: dict, layer: int, n: torch.Tensor, document: torch.Tensor) -> torch.Tensor:
    """Spec §3 "Attention", literally: n (B, T, C) -> out-projected (B, T, C)."""
    batch, length, _ = n.shape
    heads, kv_heads, dim = 4, 2, 16
    prefix = f"blocks.{layer}.attn."
    q = (n @ p[prefix + "c_q.weight"].T).view(batch, length, heads, dim)
    k = (n @ p[prefix + "c_k.weight"].T).view(batch, length, kv_heads, dim)
    v = (n @ p[prefix + "c_v.weight"].T).view(batch, length, kv_heads, dim)
    q, k = rms(q), rms(k)

    def rope(x):  # first 8 of 16 dims, pairs (i, i + 4), inv_freq_j = 10000^(-2j/8)
        out = x.clone()
        for position in range(length):
            for j in range(4):
                angle = position * 10000.0 ** (-2 * j / 8)
                x1, x2 = x[:, position, :, j], x[:, position, :, j + 4]
                out[:, position, :, j] = x1 * math.cos(angle) + x2 * math.sin(angle)
                out[:, position, :, j + 4] = -x1 * math.sin(angle) + x2 * math.cos(angle)
        return out

    q, k = rope(q) * p[prefix + "q_gain"][None, None, :, None], rope(k)
    y = torch.empty(batch, length, heads, dim, dtype=n.dtype)
    for head in range(heads):
        kv = head // (heads // kv_heads)
        scores = torch.einsum("btd,bsd->bts", q[:, :, head], k[:, :, kv]) / math.sqrt(dim)
        allowed = torch.ones(length, length, dtype=torch.bool).tril() & (document[:, :, None] == document[:, None, :])
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        y_head = weights @ v[:, :, kv]
        unit = v[:, :, kv] / v[:, :, kv].norm(dim=-1, keepdim=True)
        y_head = y_head - (y_head * unit).sum(-1, keepdim=True) * unit  # XSA
        gate = torch.sigmoid(0.5 * n[..., :12] @ p[prefix + "gate"][head])  # SparseAttnGate
        y[:, :, head] = y_head * gate[..., None]
    return y.reshape(batch, length, heads * dim) @ p[prefix + "proj.weight"].T


def reference_mlp(p: dict, layer: int, m: torch.Tensor) -> torch.Tensor:
    hidden = m @ p[f"blocks.{layer}.mlp.fc.weight"].T
    return F.leaky_relu(hidden, 0.5).square() @ p[f"blocks.{layer}.mlp.proj.weight"].T


def reference_logits(p: dict, ids: torch.Tensor, order: list[int]) -> torch.Tensor:
    """Spec §3 from embedding to soft-capped logits, for SMALL (lanes from physical layer 3)."""
    embeddings = p["tok_emb.weight"][ids]  # raw
    smeared = embeddings.clone()
    for t in range(1, ids.shape[1]):
        gate = torch.sigmoid(embeddings[:, t, :12] @ p["smear.gate"]) * (ids[:, t] != BOS)
        smeared[:, t] = embeddings[:, t] + p["smear.strength"] * gate[:, None] * embeddings[:, t - 1]
    x = x0 = rms(smeared)
    document = (ids == BOS).cumsum(dim=1)
    num_encoder = len(order) // 2
    stack, lane0, lane1 = [], None, None
    for slot, layer in enumerate(order):
        scale = 1 / math.sqrt(layer + 1)
        mix = p[f"blocks.{layer}.resid_mix"]
        attn_scale, mlp_scale = p[f"blocks.{layer}.attn_scale"], p[f"blocks.{layer}.mlp_scale"]
        decoder_slot = slot - num_encoder
        if decoder_slot >= 0 and layer >= 3 and lane0 is None:
            lane0 = lane1 = x
        if decoder_slot >= 0 and stack:
            skip, s = stack.pop(), torch.sigmoid(p["skip_gates"][decoder_slot])
            skipped = s * (lane0 if lane0 is not None else x) + (1 - s) * p["skip_weights"][decoder_slot] * skip
            if lane0 is not None:
                lane0 = skipped
            else:
                x = skipped
        if lane0 is not None:
            a = attn_scale * reference_attention(p, layer, rms(mix[0] * lane0 + mix[1] * x0) * scale, document)
            m = mlp_scale * reference_mlp(p, layer, rms(lane1) * scale)
            r, q = p["lane_residual"][layer], p["lane_mix"][layer]
            lane0, lane1 = (r[0] * lane0 + q[0, 0] * a + q[1, 0] * m, r[1] * lane1 + q[0, 1] * a + q[1, 1] * m)
        else:
            u = mix[0] * x + mix[1] * x0
            u = u + attn_scale * reference_attention(p, layer, rms(u) * scale, document)
            x = u + mlp_scale * reference_mlp(p, layer, rms(u) * scale)
        if decoder_slot < 0:
            stack.append(x)
    if lane0 is not None:
        x = (lane0 + lane1) / 2
    logits = rms(x) @ p["tok_emb.weight"].T
    return 30 * torch.tanh(logits / 30)


@pytest.mark.parametrize("looping, order", [(True, [0, 1, 2, 1, 2, 1, 2, 3]), (False, [0, 1, 2, 3])])
def test_frontier_forward_matches_the_spec_transcription(looping, order):
    model = randomized(SMALL).double()
    model.looping = looping
    ids = torch.randint(2, 64, (2, 11), generator=torch.Generator().manual_seed(4))
    ids[0, 0] = ids[0, 6] = ids[1, 3] = BOS
    parameters = {name: parameter.detach() for name, parameter in model.named_parameters()}
    with torch.no_grad():
        expected = reference_logits(parameters, ids, order)
        got = model(ids)
    torch.testing.assert_close(got.double(), expected, rtol=0, atol=1e-6)


def test_looped_passes_share_weights_and_change_the_output():
    model = randomized(SMALL)
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(5))
    looped = model(ids)
    model.looping = False
    assert num_parameters(model) == num_parameters(GPT(SMALL))
    assert not torch.allclose(model(ids), looped)


def test_packed_boundaries_isolate_documents_like_bos_isolation():
    """Boundaries at the bos positions give the bos-derived isolation; a cut inside a document changes it."""
    model = randomized(SMALL)
    ids = torch.randint(2, 64, (1, 12), generator=torch.Generator().manual_seed(6))
    ids[0, 0] = ids[0, 5] = BOS
    by_bos = model(ids)
    boundaries = torch.tensor([0, 5, 12, 12], dtype=torch.int32)
    torch.testing.assert_close(model(ids, cu_seqlens=boundaries, max_seqlen=7), by_bos)
    cut = torch.tensor([0, 5, 8, 12], dtype=torch.int32)  # the second document cut into 3 + 4 tokens
    got = model(ids, cu_seqlens=cut, max_seqlen=4)
    torch.testing.assert_close(got[0, :8], by_bos[0, :8])
    assert not torch.allclose(got[0, 8:], by_bos[0, 8:])


def test_training_reaches_every_parameter_through_both_layer_orders():
    model = randomized(SMALL).train()  # non-zero output projections: A and M reach the lane mix
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(7))
    ids[:, 8] = BOS
    for looping in (False, True):
        model.looping = looping
        model.zero_grad()
        model(ids, ids.roll(-1, 1)).backward()
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    # lane scalars exist for every layer, but only the laned layer (3) uses them
    assert torch.count_nonzero(model.lane_mix.grad[:3]) == 0 and torch.count_nonzero(model.lane_mix.grad[3]) > 0


def test_the_frontier_preset_validates():
    frontier().validate()
    frontier_tiny().validate()


@pytest.mark.slow
def test_looped_laned_forward_compiles_to_one_graph_without_breaks():
    torch._dynamo.reset()
    model = randomized(SMALL)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(8))
    ids[0, 7] = BOS
    explanation = torch._dynamo.explain(model)(ids, ids)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="eager", fullgraph=False, dynamic=False)
    torch.testing.assert_close(compiled(ids, ids), model(ids, ids))


def test_new_parameters_get_the_small_tensor_rule_of_the_pr198_scheme():
    from pgolf.commands.inspect import category_of
    from pgolf.quant import choose_method

    model = GPT(frontier_tiny().model)
    methods = {name: choose_method(name, parameter.detach(), "pr198") for name, parameter in model.named_parameters()}
    for name in ("blocks.0.attn.gate", "skip_gates", "lane_mix", "lane_residual", "smear.gate", "smear.strength"):
        assert methods[name] == "fp16" and category_of(name) == "control", name
    assert methods["blocks.0.mlp.fc.weight"] == "int6" and methods["tok_emb.weight"] == "int8"


@pytest.mark.parametrize("switch", [
    {"mlp_negative_slope": 0.5}, {"xsa_layers": (1, 2)}, {"rope_dims": 8}, {"layer_norm_scale": True},
    {"skip_gates": True}, {"loop_layers": (1, 2), "num_loop_passes": 2}, {"parallel_lanes_from": 3},
    {"attn_gate_window": 12}, {"smear_gate_window": 12},
])
def test_each_switch_keeps_the_pr198_tensors_and_changes_the_logits(switch):
    """Off (the default), the pr198 model is built; on, the same shared weights give other logits."""
    base = ModelConfig(vocab_size=64, num_layers=4, model_dim=64, num_heads=4, num_kv_heads=2, mlp_mult=2,
                       bigram_buckets=0)
    plain, switched = randomized(base), randomized(replace(base, **switch), seed=1)
    target = switched.state_dict()
    # every pr198 tensor still exists; loop_layers add skip slots, the input smear gate has a 12-wide w
    assert set(plain.state_dict()) <= set(target)
    shared = {name: value for name, value in plain.state_dict().items() if value.shape == target[name].shape}
    switched.load_state_dict(shared, strict=False)
    ids = torch.randint(2, 64, (2, 12), generator=torch.Generator().manual_seed(9))
    assert not torch.allclose(plain(ids), switched(ids), atol=1e-4)

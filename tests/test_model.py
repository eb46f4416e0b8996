"""The PR-198 GPT: size, initialisation, hashing, rotary scaling, isolation, training signal."""

import math

import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.errors import PgolfError
from pgolf.model import GPT, bigram_hash, num_parameters, rotary_base

SMALL = ModelConfig(vocab_size=64, num_layers=4, model_dim=64, num_heads=4, num_kv_heads=2,
                    mlp_mult=2, bigram_buckets=32, bigram_dim=64, rope_reference_len=1024)
BOS = SMALL.bos_id


def small_config(**changes) -> ModelConfig:
    fields = {name: getattr(SMALL, name) for name in SMALL.__dataclass_fields__}
    fields.update(changes)
    return ModelConfig(**fields)


def randomized_model(config: ModelConfig, seed: int = 0) -> GPT:
    """A model whose zero-initialised parts are made non-zero, so every path affects the output."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


def expected_parameter_names(config: ModelConfig) -> set[str]:
    names = {"tok_emb.weight", "skip_weights"}
    if config.bigram_buckets:
        names |= {"bigram.table.weight", "bigram.proj.weight", "bigram.scale"}
    if config.smear_gate:
        names.add("smear.gate")
    for i in range(config.num_layers):
        names |= {f"blocks.{i}.attn.{part}.weight" for part in ("c_q", "c_k", "c_v", "proj")}
        names |= {f"blocks.{i}.mlp.{part}.weight" for part in ("fc", "proj")}
        names |= {f"blocks.{i}.attn.q_gain", f"blocks.{i}.attn_scale", f"blocks.{i}.mlp_scale",
                  f"blocks.{i}.resid_mix"}
    return names


# ---------------------------------------------------------------- size and names


def test_pr198_parameter_count_and_names():
    with torch.device("meta"):  # shapes only; no memory or init time
        model = GPT(ModelConfig())
    # Spec section 3, derived by hand: per block q 512*512 + k,v 2*512*256 + out 512*512
    # + MLP 2*512*1536 = 2,359,296 matrix and 8 + 512 + 512 + 1024 = 2,056 control;
    # embedding 1024*512; bigram 2048*128 + 128*512 + 1; skips 5*512; smear 512.
    assert num_parameters(model) == 26_829_913
    assert 11 * (2_359_296 + 2_056) + 524_288 + 327_681 + 2_560 + 512 == 26_829_913
    assert {name for name, _ in model.named_parameters()} == expected_parameter_names(ModelConfig())


def test_state_dict_holds_exactly_the_parameters():
    # The artifact stores state_dict: no rotary tables or other buffers, even after a forward.
    model = GPT(SMALL)
    model(torch.zeros(1, 8, dtype=torch.long))
    assert len(model.rotary._cache) == 1
    assert set(model.state_dict()) == expected_parameter_names(SMALL)


def test_baseline_shape_has_no_bigram_or_smear():
    config = ModelConfig(num_layers=9, mlp_mult=2, bigram_buckets=0, smear_gate=False)
    with torch.device("meta"):
        model = GPT(config)
    # 9 * (4*... attention 786,432 + MLP 2*512*1024 + 2,056 control) + 524,288 + 4*512 skips.
    assert num_parameters(model) == 9 * (786_432 + 1_048_576 + 2_056) + 524_288 + 4 * 512
    assert {name for name, _ in model.named_parameters()} == expected_parameter_names(config)


def test_invalid_config_is_a_user_error():
    with pytest.raises(PgolfError, match="num_heads"):
        GPT(small_config(model_dim=60, num_heads=8))


# ---------------------------------------------------------------- initialisation


def test_initialisation_rules():
    config = small_config(num_kv_heads=4)  # square 64x64 c_k/c_v
    torch.manual_seed(0)
    model = GPT(config)
    identity = torch.eye(64)
    assert abs(model.tok_emb.weight.std().item() - 0.005) < 0.0005
    for block in model.blocks:
        for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v):
            weight = linear.weight
            torch.testing.assert_close(weight @ weight.T, identity, atol=1e-5, rtol=0)
        fc = block.mlp.fc.weight  # (128, 64): orthonormal columns
        torch.testing.assert_close(fc.T @ fc, identity, atol=1e-5, rtol=0)
        assert torch.count_nonzero(block.attn.proj.weight) == 0
        assert torch.count_nonzero(block.mlp.proj.weight) == 0
        assert torch.equal(block.attn.q_gain, torch.full((4,), 1.5))
        assert torch.equal(block.resid_mix, torch.stack([torch.ones(64), torch.zeros(64)]))
        assert torch.equal(block.attn_scale, torch.ones(64)) and torch.equal(block.mlp_scale, torch.ones(64))
    assert torch.count_nonzero(model.bigram.table.weight) == 0
    # Orthogonal, then scaled by 1/sqrt(2 * num_layers) = 1/sqrt(8).
    proj = model.bigram.proj.weight
    torch.testing.assert_close(proj @ proj.T, identity / 8, atol=1e-5, rtol=0)
    assert model.bigram.scale.item() == pytest.approx(0.05)
    assert torch.equal(model.smear.gate, torch.zeros(64))
    assert torch.equal(model.skip_weights, torch.ones(2, 64))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_linears_narrower_than_64_keep_default_init():
    torch.manual_seed(0)
    model = GPT(small_config())  # c_k is (2 heads * 16, 64) = (32, 64)
    weight = model.blocks[0].attn.c_k.weight
    assert weight.shape == (32, 64)
    assert weight.abs().max() <= 1 / math.sqrt(64)  # Kaiming-uniform bound of nn.Linear
    assert not torch.allclose(weight @ weight.T, torch.eye(32), atol=0.1)


def test_branches_output_zero_at_initialisation():
    torch.manual_seed(0)
    model = GPT(SMALL)
    ids = torch.randint(0, SMALL.vocab_size, (2, 16))
    assert torch.count_nonzero(model.bigram(ids, None)) == 0
    x = torch.randn(2, 16, 64)
    cos, sin = model.rotary(16, x.device, torch.float32)
    for block in model.blocks:
        assert torch.count_nonzero(block.attn(x, cos, sin, None)) == 0
        assert torch.count_nonzero(block.mlp(x)) == 0


# ---------------------------------------------------------------- bigram hash and rotary


def test_bigram_hash_hand_worked_example():
    # (prev=5, cur=7), 2048 buckets: 36313*7 = 254191 = 0x3E0EF, 27191*5 = 135955 = 0x21313,
    # XOR = 0x1F3FC = 127996, 127996 mod 2047 = 127996 - 62*2047 = 1082.
    # (prev=2, cur=3), 8 buckets: 108939 = 0x1A98B, 54382 = 0x0D46E, XOR = 0x17DE5 = 97765,
    # 97765 mod 7 = 97765 - 13966*7 = 3.
    assert bigram_hash(torch.tensor([[5, 7]]), 2048).tolist() == [[2047, 1082]]
    assert bigram_hash(torch.tensor([[2, 3]]), 8).tolist() == [[7, 3]]
    # A sequence start gets the reserved last bucket as at t = 0.
    starts = torch.tensor([[False, True]])
    assert bigram_hash(torch.tensor([[5, 7]]), 2048, starts).tolist() == [[2047, 2047]]


def test_ntk_rotary_base():
    assert rotary_base(10000.0, 1024, 1024, 64) == 10000.0
    assert rotary_base(10000.0, 512, 1024, 64) == 10000.0
    scaled = rotary_base(10000.0, 2048, 1024, 64)
    assert scaled == pytest.approx(10000.0 * 2.0 ** (64 / 62))
    assert 20_400 < scaled < 20_500
    # The tables the model uses follow it: angle of position 1 at frequency index i is base^(-2i/d).
    model = GPT(small_config(rope_reference_len=8))  # head_dim 16
    cos_short, _ = model.rotary(8, torch.device("cpu"), torch.float32)
    cos_long, _ = model.rotary(16, torch.device("cpu"), torch.float32)
    long_base = 10000.0 * 2.0 ** (16 / 14)
    assert cos_short[0, 1, 0, 3].item() == pytest.approx(math.cos(10000.0 ** (-6 / 16)), abs=1e-6)
    assert cos_long[0, 1, 0, 3].item() == pytest.approx(math.cos(long_base ** (-6 / 16)), abs=1e-6)


def test_compiled_model_reads_cached_rotary_tables_instead_of_recomputing_them():
    """Traced in-graph, inductor would recompute cos/sin for every (B, T, H, D) element."""
    graphs: list[torch.fx.GraphModule] = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    model = randomized_model(SMALL)
    compiled = torch.compile(model, backend=recording_backend, dynamic=False)
    ids = torch.randint(0, 64, (2, 12))
    expected = model(ids)
    torch.testing.assert_close(compiled(ids), expected)
    torch.testing.assert_close(compiled(ids), expected)  # a second call must not recompile
    assert len(graphs) == 1
    targets = {str(node.target) for node in graphs[0].graph.nodes if node.op in ("call_function", "call_method")}
    assert not {name for name in targets if "cos" in name or "sin" in name}, targets


def test_training_after_evaluation_under_inference_mode():
    """The rotary cache filled by an inference_mode forward must still serve a training backward."""
    model = randomized_model(SMALL).train()
    ids = torch.randint(0, 64, (2, 12))
    with torch.inference_mode():
        model(ids)
    model(ids, ids).backward()
    assert model.blocks[0].attn.c_q.weight.grad is not None


# ---------------------------------------------------------------- forward outputs


def test_forward_returns_softcapped_logits_and_matching_loss():
    model = randomized_model(SMALL)
    ids = torch.randint(0, 64, (2, 12))
    targets = torch.randint(0, 64, (2, 12))
    logits = model(ids)
    assert logits.shape == (2, 12, 64) and logits.dtype == torch.float32
    assert logits.abs().max() < 30.0
    loss = model(ids, targets)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 64), targets.reshape(-1)))


def test_bf16_autocast_runs_matmuls_in_bf16_and_keeps_fp32_parameters():
    model = randomized_model(SMALL)
    ids = torch.randint(0, 64, (2, 12))
    targets = torch.randint(0, 64, (2, 12))
    seen = []
    model.blocks[0].attn.c_q.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, targets)
    assert seen == [torch.bfloat16]
    assert loss.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert loss.item() == pytest.approx(model(ids, targets).item(), rel=0.05)


def test_unet_skips_are_last_in_first_out():
    model = randomized_model(SMALL)  # 4 layers: blocks 0, 1 encoder; 2, 3 decoder
    outputs, inputs = {}, {}
    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda module, args, i=index: inputs.__setitem__(i, args[0]))
        block.register_forward_hook(lambda module, args, out, i=index: outputs.__setitem__(i, out))
    model(torch.randint(0, 64, (1, 10)))
    weights = model.skip_weights
    torch.testing.assert_close(inputs[2], outputs[1] + weights[0] * outputs[1])
    torch.testing.assert_close(inputs[3], outputs[2] + weights[1] * outputs[0])


def test_odd_layer_count_skips_only_as_many_as_encoders():
    model = randomized_model(small_config(num_layers=3))  # 1 encoder, 2 decoders
    assert model.skip_weights.shape == (1, 64)
    logits = model(torch.randint(0, 64, (1, 10)))
    assert torch.isfinite(logits).all()


# ---------------------------------------------------------------- document isolation


def packed(first_document: list[int], second_document: list[int]) -> torch.Tensor:
    return torch.tensor([[BOS, *first_document, BOS, *second_document]])


@pytest.mark.parametrize("bigram_buckets, smear_gate", [(32, True), (0, False)])
def test_document_isolation_makes_second_document_independent(bigram_buckets, smear_gate):
    config = small_config(document_isolation=True, bigram_buckets=bigram_buckets, smear_gate=smear_gate)
    model = randomized_model(config)
    second = [5, 9, 17, 33, 2, 40, 11]
    alone = model(torch.tensor([[BOS, *second]]))[0]  # (8, V)
    generator = torch.Generator().manual_seed(1)
    for first_length in (1, 6, 13, 30):
        first = torch.randint(2, 64, (first_length,), generator=generator).tolist()
        logits = model(packed(first, second))[0, first_length + 1:]
        torch.testing.assert_close(logits, alone, atol=1e-4, rtol=1e-4)


def test_without_isolation_the_first_document_leaks():
    model = randomized_model(small_config(document_isolation=False))
    second = [5, 9, 17, 33, 2, 40, 11]
    logits_a = model(packed([3, 4, 5, 6], second))[0, 5:]
    logits_b = model(packed([60, 61, 62, 63], second))[0, 5:]
    assert (logits_a - logits_b).abs().max() > 1e-3


def test_isolation_is_a_no_op_on_a_single_document():
    isolated = randomized_model(small_config(document_isolation=True))
    plain = randomized_model(small_config(document_isolation=False))  # same seed, same weights
    ids = torch.tensor([[BOS, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
    torch.testing.assert_close(isolated(ids), plain(ids), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- training signal


def test_backward_reaches_every_parameter_and_one_batch_overfits():
    torch.manual_seed(0)
    model = GPT(SMALL)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (2, 33), generator=generator)
    ids, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    got_gradient = set()
    losses = []
    for step in range(30):
        optimizer.zero_grad(set_to_none=True)
        loss = model(ids, targets)
        loss.backward()
        losses.append(loss.item())
        for name, parameter in model.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            if step < 3 and torch.count_nonzero(parameter.grad):
                got_gradient.add(name)
        optimizer.step()
    # Zero-init parts have zero gradient at step 0 only; by step 2 everything learns.
    assert got_gradient == {name for name, _ in model.named_parameters()}
    assert losses[0] == pytest.approx(math.log(64), abs=0.1)
    assert losses[-1] < 0.5 * losses[0]

"""pgolf's AMX attention kernels against a float64 reference, and their place in the model.

The kernel is an optional extra (`pip install -e ".[cpu-kernels]"`) and builds on first use (~15 s,
then cached), so the tests that need it are marked slow (CI installs the extra for its slow step). On
a CPU without AMX, or without the extra, they are skipped with the reason `prepare()` gives; the
dispatch tests and the opt-in rules run everywhere.
"""

import pytest
import torch
import torch.nn.functional as F

from pgolf.attention import causal_attention
from pgolf.config import ModelConfig
from pgolf.kernels import build, cpu_attention
from pgolf.model import GPT


@pytest.fixture(scope="module")
def kernel():
    reason = cpu_attention.prepare()
    if reason is not None:
        pytest.skip(f"AMX attention kernel unavailable: {reason}")
    return cpu_attention


def bf16_inputs(batch, length, heads, kv_heads, head_dim, seed):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, length, count, head_dim, generator=generator).bfloat16()
               for count in (heads, kv_heads, kv_heads))
    grad_out = torch.randn(batch, length, heads, head_dim, generator=generator).bfloat16()
    return q, k, v, grad_out


def float64_gradients(q, k, v, grad_out):
    """Gradients of causal GQA attention, computed in float64 from the same bf16 values."""
    leaves = [t.double().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    out = F.scaled_dot_product_attention(*leaves, is_causal=True, enable_gqa=True)
    out.backward(grad_out.double().transpose(1, 2))
    return out.transpose(1, 2), [leaf.grad.transpose(1, 2) for leaf in leaves]


def relative_error(mine: torch.Tensor, reference: torch.Tensor) -> float:
    return ((mine.double() - reference).abs().max() / reference.abs().max()).item()


@pytest.mark.parametrize("batch,length,heads,kv_heads,head_dim", [
    (2, 256, 4, 2, 64),   # the tiny preset's attention: GQA, two query heads per kv head
    (1, 384, 3, 3, 64),   # three tiles, no grouping
    (1, 128, 2, 1, 128),  # one tile, two 64-wide column chunks
])
@pytest.mark.slow
def test_gradients_match_float64_reference(kernel, batch, length, heads, kv_heads, head_dim):
    q, k, v, grad_out = bf16_inputs(batch, length, heads, kv_heads, head_dim, seed=length + heads)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    assert kernel.usable(*leaves)
    out = kernel.causal_attention(*leaves)
    out.backward(grad_out)
    reference_out, reference_grads = float64_gradients(q, k, v, grad_out)
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert relative_error(out, reference_out) < 0.01
    for leaf, reference in zip(leaves, reference_grads):
        assert leaf.grad.dtype == torch.bfloat16 and leaf.grad.shape == reference.shape
        assert relative_error(leaf.grad, reference) < 0.01  # bf16 rounding of inputs and outputs only


@pytest.mark.slow
@pytest.mark.parametrize("batch,length,heads,kv_heads,head_dim", [(2, 256, 4, 2, 64), (1, 384, 2, 1, 128)])
def test_forward_log_sum_exp_matches_float64(kernel, batch, length, heads, kv_heads, head_dim):
    """The backward rebuilds the probabilities from the forward's log-sum-exp, so it must be exact to fp32-ish."""
    q, k, v, _ = bf16_inputs(batch, length, heads, kv_heads, head_dim, seed=11)
    out, lse = torch.ops.pgolf_cpu.causal_attention_forward(q, k, v, head_dim ** -0.5)
    keys = k.double().repeat_interleave(heads // kv_heads, dim=2)
    scores = torch.einsum("bthd,bshd->bhts", q.double(), keys) * head_dim ** -0.5
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    assert lse.shape == (batch, heads, length) and lse.dtype == torch.float32
    assert (lse.double() - scores.logsumexp(-1)).abs().max().item() < 1e-3
    values = v.double().repeat_interleave(heads // kv_heads, dim=2)
    reference = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), values)
    assert relative_error(out, reference) < 0.01


@pytest.mark.slow
def test_operators_refuse_inputs_outside_their_layout(kernel):
    q, k, v, grad_out = bf16_inputs(1, 256, 4, 2, 64, seed=5)
    with pytest.raises(RuntimeError, match="multiple of 128"):
        torch.ops.pgolf_cpu.causal_attention_forward(q[:, :192].contiguous(), k[:, :192].contiguous(),
                                                     v[:, :192].contiguous(), 0.125)
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        torch.ops.pgolf_cpu.causal_attention_forward(q.float(), k.float(), v.float(), 0.125)
    with pytest.raises(RuntimeError, match="multiple of kv heads"):
        torch.ops.pgolf_cpu.causal_attention_forward(q[:, :, :3].contiguous(), k, v, 0.125)
    out, lse = torch.ops.pgolf_cpu.causal_attention_forward(q, k, v, 0.125)
    with pytest.raises(RuntimeError, match="shaped like q"):
        torch.ops.pgolf_cpu.causal_attention_backward(q, k, v, out[:, :128].contiguous(), grad_out, lse, 0.125)


@pytest.mark.slow
def test_gradients_at_least_as_close_as_sdpa_bf16(kernel):
    """The kernel accumulates in fp32; SDPA's CPU backward in bf16 is the bar to clear."""
    q, k, v, grad_out = bf16_inputs(1, 512, 4, 2, 64, seed=7)
    _, reference_grads = float64_gradients(q, k, v, grad_out)
    mine = [t.clone().requires_grad_() for t in (q, k, v)]
    kernel.causal_attention(*mine).backward(grad_out)
    sdpa = [t.clone().transpose(1, 2).requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*sdpa, is_causal=True, enable_gqa=True).backward(grad_out.transpose(1, 2))
    for ours, theirs, reference in zip(mine, sdpa, reference_grads):
        assert relative_error(ours.grad, reference) <= relative_error(theirs.grad.transpose(1, 2), reference) * 1.25


@pytest.mark.slow
def test_usable_only_where_the_kernel_applies(kernel):
    q, k, v, _ = bf16_inputs(1, 256, 4, 2, 64, seed=0)
    assert not kernel.usable(q, k, v)  # no gradient wanted: SDPA's forward alone is the same
    q.requires_grad_()
    assert kernel.usable(q, k, v)
    with torch.no_grad():
        assert not kernel.usable(q, k, v)
    with kernel.switched_off():
        assert not kernel.usable(q, k, v)
    assert kernel.usable(q, k, v)
    assert not kernel.usable(q.float(), k.float(), v.float())
    short = [t[:, :192] for t in (q, k, v)]  # 192 is not a multiple of the 128 tile
    assert not kernel.usable(*short)
    narrow = [t[..., :32] for t in (q, k, v)]
    assert not kernel.usable(*narrow)


@pytest.mark.slow
def test_attention_dispatches_to_the_kernel_only_without_documents(kernel):
    q, k, v, grad_out = bf16_inputs(1, 256, 4, 2, 64, seed=3)
    q.requires_grad_()
    with torch.profiler.profile() as dense:
        causal_attention(q, k, v).backward(grad_out)
    ids = torch.zeros(1, 256, dtype=torch.long)
    ids[:, 100:] = 1
    with torch.profiler.profile() as documents:
        causal_attention(q, k, v, document_ids=ids).backward(grad_out)
    names = lambda profile: {event.key for event in profile.key_averages()}  # noqa: E731
    assert "pgolf_cpu::causal_attention_backward" in names(dense)
    assert "pgolf_cpu::causal_attention_backward" not in names(documents)


@pytest.mark.slow
def test_compiled_model_trains_in_one_graph_with_the_kernel(kernel):
    """bf16 + compile, the CPU default: one graph, the kernel in it, loss and gradients near fp32 eager."""
    config = ModelConfig(vocab_size=64, num_layers=2, model_dim=128, num_heads=2, num_kv_heads=1,
                         mlp_mult=2, bigram_buckets=32, bigram_dim=32, rope_reference_len=128)
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ids = torch.randint(0, 64, (2, 128))
    targets = torch.randint(0, 64, (2, 128))
    fp32_loss = model(ids, targets)
    fp32_loss.backward()
    fp32_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    graphs = []

    def recording_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=recording_backend, dynamic=False)
    with torch.profiler.profile() as profile:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = compiled(ids, targets)
        loss.backward()
    assert len(graphs) == 1
    assert "pgolf_cpu::causal_attention_backward" in {event.key for event in profile.key_averages()}
    assert abs(loss.item() - fp32_loss.item()) < 0.02
    for parameter, reference in zip(model.parameters(), fp32_grads):
        assert relative_error(parameter.grad, reference.double()) < 0.1


def test_switch_and_platform_checks(monkeypatch):
    monkeypatch.setenv(build.DISABLE_VARIABLE, "0")
    assert "PGOLF_CPU_KERNELS" in build.amx_unavailable_reason()
    monkeypatch.delenv(build.DISABLE_VARIABLE)
    monkeypatch.setattr(build, "cpu_flags", lambda: {"avx512f"})
    assert "amx_bf16" in build.amx_unavailable_reason()
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    assert "x86-64" in build.amx_unavailable_reason()


def test_a_failed_build_is_reported_not_raised(tmp_path, monkeypatch):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(build, "SOURCE_DIR", tmp_path)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    reason = build.load_operator_library("pgolf_test_broken", "broken.cpp")
    assert reason is not None and "broken.cpp" in reason


def test_unprepared_kernel_is_never_used(monkeypatch):
    monkeypatch.setattr(cpu_attention, "_ready", False)
    q, k, v, _ = bf16_inputs(1, 256, 4, 2, 64, seed=0)
    assert not cpu_attention.usable(q.requires_grad_(), k, v)
    assert cpu_attention.unavailable_reason() is not None


def test_the_kernels_are_opt_in_and_outside_the_training_path(monkeypatch):
    """Off unless the extra is installed and the kernel is asked for or already built; and no module of
    the model, the training run or scoring imports pgolf.kernels."""
    import ast
    import importlib.util
    from pathlib import Path

    import pgolf
    from pgolf import kernels

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ninja" else real_find_spec(name, *a))
    assert "cpu-kernels" in kernels.enable_cpu_attention(build=True)
    monkeypatch.undo()
    if importlib.util.find_spec("ninja") is not None and not cpu_attention.attempted():
        monkeypatch.setattr(build, "is_built", lambda name: False)
        assert "not built" in kernels.enable_cpu_attention(build=False)
        assert not cpu_attention.attempted()  # nothing was compiled or loaded
    root = Path(pgolf.__file__).parent
    allowed = {"kernels", "commands", "bench.py", "demo.py"}
    importers = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root)
        if relative.parts[0] in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name.startswith("pgolf.kernels") for name in names):
                importers.append(str(relative))
    assert importers == []

"""The GPT of PR-198 and the frontier switches: architecture only (no files, logging, distribution or env vars).

    ids (B, T) -> tok_emb + BigramHash -> RMSNorm -> SmearGate = x0
    -> num_layers blocks (U-Net skips between the first and second half)
    -> RMSNorm -> tied output projection -> soft-cap -> logits (B, T, V)

Block: x <- m0*x + m1*x0; x <- x + a*Attn(norm(x)); x <- x + b*MLP(norm(x)).
Attention: GQA with per-head RMSNorm on q and k, rotary embeddings (NTK-aware
base above the reference length) and a learned per-head gain on q.

Initialisation (spec section 3): tied embedding normal(0, 0.005); every linear
with both dimensions >= 64 orthogonal with gain 1; the attention and MLP output
projections zero; the bigram projection (the other linear named `proj`)
scaled by 1/sqrt(2*num_layers). A linear with a dimension below 64 (only in
small test/tiny configs, e.g. a 32-wide bigram) keeps PyTorch's default
Kaiming-uniform init; the bigram projection is still scaled so its relative
size does not depend on which init it got.

Precision (spec section 3): linear weights are fp32 parameters cast to the
activation dtype at use (`CastedLinear`), so under bf16 autocast every matmul
runs in bf16; the control tensors (scales, gates, mixes, skip weights, q gains)
are fp32; the embedding tables (token embedding, bigram table) are stored in
`embedding_dtype`: bf16 in the reference, which casts the whole model to bf16
and restores only the linear weights and the tensors of fewer than 2
dimensions. The residual stream starts in the embedding's dtype (control
tensors are cast to it); logits and the loss are fp32.

With `document_isolation`, each position holding `bos_id` starts a new
document: attention is block-diagonal causal, and SmearGate and BigramHash do
not look across the boundary. Positions stay global; rotary attention depends
only on position differences, so a document's logits do not depend on where it
sits in the window. `forward(..., cu_seqlens=...)` takes precomputed document
boundaries instead (document-packed training rows, or any batch's boundaries found
on the host by the loader, `pgolf.data.packing`). Without them, an attention backend
that takes boundaries (FA3) gets them computed once per forward, not in every layer.

The frontier switches (spec frontier.md §3; `ModelConfig` fields, all off by
default): leaky-relu^2 MLP, XSA, partial rotary, norm scale 1/sqrt(l+1), gated
skips, depth recurrence (`GPT.looping` picks the looped layer order; on after
construction, so evaluation runs looped; the training loop switches it off until
its start fraction), two parallel residual lanes in the last decoder layers,
SparseAttnGate and the input-dependent SmearGate (formulas at each function).
With looping the virtual order is `ModelConfig.layer_order`; its first half is
the U-Net encoder, and a looped block reuses its weights and its physical layer
index.

Parallel lanes (decoder layers from `parallel_lanes_from`): lane0 = lane1 = x at
the first such layer, the skip goes to lane0 only, then with A = a*Attn(norm(m0*lane0
+ m1*x0)) and M = b*MLP(norm(lane1)) (both from the lanes before the update):
lane0 <- r0*lane0 + p00*A + p10*M, lane1 <- r1*lane1 + p01*A + p11*M; the output
is (lane0 + lane1) / 2. r (`lane_residual[l]`, init 1.1) and p (`lane_mix[l]`,
p[source][lane], init 1) exist for every physical layer so the parameter count
matches the reference's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pgolf.attention import causal_attention, document_boundaries, takes_boundaries
from pgolf.config import ModelConfig

# Multipliers of the bigram hash (spec section 3).
BIGRAM_CUR_MULTIPLIER = 36313
BIGRAM_PREV_MULTIPLIER = 27191
ORTHOGONAL_MIN_DIM = 64
EMBEDDING_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
LANE_RESIDUAL_INIT = 1.1  # r of the parallel lanes (spec frontier.md §3)


class FinalNorm(nn.Module):
    """The weightless RMSNorm before the tied head, as a module: its output is the head's input, which
    GPTQ calibration reads (pgolf.hessians) whatever layer order or lanes came before. No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension, no learned weight."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_base(base: float, seq_len: int, reference_len: int, head_dim: int) -> float:
    """NTK-aware rotary base: unchanged up to `reference_len`, else base * (T/L0)^(d/(d-2))."""
    if seq_len <= reference_len:
        return base
    return base * (seq_len / reference_len) ** (head_dim / (head_dim - 2))


def bigram_hash(input_ids: torch.Tensor, num_buckets: int,
                sequence_starts: torch.Tensor | None = None) -> torch.Tensor:
    """Bucket index (B, T) int64 of each (previous, current) token pair.

    hash = (36313*cur XOR 27191*prev) mod (num_buckets - 1); the last bucket,
    num_buckets - 1, is reserved for positions with no previous token:
    t = 0 and, when given, every position where `sequence_starts` (B, T) is True.
    """
    ids = input_ids.long()
    index = torch.full_like(ids, num_buckets - 1)
    pair_hash = torch.bitwise_xor(BIGRAM_CUR_MULTIPLIER * ids[:, 1:], BIGRAM_PREV_MULTIPLIER * ids[:, :-1])
    index[:, 1:] = pair_hash % (num_buckets - 1)
    if sequence_starts is not None:
        index = torch.where(sequence_starts, torch.full_like(index, num_buckets - 1), index)
    return index


class CastedLinear(nn.Linear):
    """Bias-free linear whose fp32 weight is cast to the input's dtype at use."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class BigramHash(nn.Module):
    """Hashed (previous, current) token-pair embedding, projected to the model width."""

    def __init__(self, num_buckets: int, bigram_dim: int, model_dim: int, scale_init: float):
        super().__init__()
        self.num_buckets = num_buckets
        self.table = nn.Embedding(num_buckets, bigram_dim)
        self.proj = CastedLinear(bigram_dim, model_dim)
        self.scale = nn.Parameter(torch.tensor(scale_init, dtype=torch.float32))

    def forward(self, input_ids: torch.Tensor, sequence_starts: torch.Tensor | None) -> torch.Tensor:
        features = self.table(bigram_hash(input_ids, self.num_buckets, sequence_starts))  # (B, T, bigram_dim)
        return self.scale * self.proj(features)  # (B, T, model_dim)


class SmearGate(nn.Module):
    """x_t <- (1-s)*x_t + s*x_{t-1} with s = sigmoid(gate) per channel; x_{-1} = 0."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(dim, dtype=torch.float32))

    def forward(self, x: torch.Tensor, sequence_starts: torch.Tensor | None) -> torch.Tensor:
        previous = F.pad(x[:, :-1], (0, 0, 1, 0))  # (B, T, C), zero at t = 0
        if sequence_starts is not None:
            previous = previous.masked_fill(sequence_starts[:, :, None], 0.0)
        s = torch.sigmoid(self.gate).to(x.dtype)
        return (1 - s) * x + s * previous


# ---------------------------------------------------------------- frontier pieces (spec frontier.md §3)


def exclusive_self_attention(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y - (y . v_hat) v_hat per query head, v_hat = v / |v| of the head's kv head at the same position.

    y (B, T, H, D), v (B, T, Hkv, D) -> (B, T, H, D). Query heads are grouped as the attention
    groups them (head h reads kv head h // (H / Hkv)), so v is broadcast, never repeated.
    """
    batch, length, num_heads, head_dim = y.shape
    num_kv_heads = v.shape[2]
    grouped = y.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)  # (B, T, Hkv, G, D)
    unit = F.normalize(v, dim=-1).unsqueeze(3)  # (B, T, Hkv, 1, D)
    projection = (grouped * unit).sum(dim=-1, keepdim=True)  # (B, T, Hkv, G, 1)
    return (grouped - projection * unit).reshape(batch, length, num_heads, head_dim)


def sparse_attention_gate(y: torch.Tensor, attention_input: torch.Tensor, weight: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """y_h * sigmoid(scale * W_h . n[0:window]); y (B, T, H, D), n (B, T, C), W (H, window)."""
    window = weight.shape[1]
    gate_input = attention_input[..., :window]  # (B, T, window)
    gate = torch.sigmoid(scale * F.linear(gate_input, weight.to(gate_input.dtype)))  # (B, T, H)
    return y * gate.unsqueeze(-1).to(y.dtype)


class InputSmearGate(nn.Module):
    """Adds a gated copy of the previous token's raw embedding; identity at initialisation (w, lam = 0).

    The gate reads the current token's first `window` raw channels; a position holding
    the bos id never receives anything (no leak across documents in a packed row).
    """

    def __init__(self, window: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(window, dtype=torch.float32))  # w
        self.strength = nn.Parameter(torch.zeros((), dtype=torch.float32))  # lam

    def forward(self, embeddings: torch.Tensor, is_bos: torch.Tensor) -> torch.Tensor:
        """embeddings (B, T, C) raw, is_bos (B, T) bool -> (B, T, C)."""
        window = self.gate.shape[0]
        gate = torch.sigmoid(embeddings[..., :window] @ self.gate.to(embeddings.dtype))  # (B, T)
        gate = gate * (~is_bos).to(gate.dtype)
        previous = F.pad(embeddings[:, :-1], (0, 0, 1, 0))  # (B, T, C); zero at t = 0, which gets nothing
        return embeddings + self.strength.to(embeddings.dtype) * gate.unsqueeze(-1) * previous


def document_ids_from_boundaries(cu_seqlens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """(B, T) document index of each position of the flattened batch, from cumulative boundaries.

    cu_seqlens (N,) int: segment starts over the B*T flattened positions, then the total;
    padding entries repeat the total (empty segments). Ids are non-decreasing, as the
    masked attention path wants; the boundaries must include every row start.
    """
    positions = torch.arange(batch * length, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True).reshape(batch, length)


@torch.compiler.disable
def bos_boundaries(input_ids: torch.Tensor, bos_id: int) -> torch.Tensor:
    """Document boundaries (N+1,) int32 of a (B, T) batch, a document starting at every bos and row start.

    Kept out of compiled graphs: `nonzero` makes the length depend on the data (a host sync, once per
    forward). The length is marked dynamic, so a compiled model takes any number of documents without
    recompiling; called before any other work in `GPT.forward`, the model stays one graph.
    """
    boundaries = document_boundaries((input_ids == bos_id).cumsum(dim=1))
    torch._dynamo.mark_dynamic(boundaries, 0)
    return boundaries


# ---------------------------------------------------------------- rotary, attention, blocks


class Rotary(nn.Module):
    """cos/sin tables for rotary embeddings, cached per (T, device, dtype) outside the state_dict.

    `rotary_dims` 0 rotates every head dim with the NTK-aware base; > 0 (partial rotary) builds
    tables over that many dims, inv_freq_j = base^(-2j/rotary_dims), with the base never scaled.
    """

    def __init__(self, head_dim: int, base: float, reference_len: int, rotary_dims: int = 0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.reference_len = reference_len
        self.rotary_dims = rotary_dims
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # Kept out of compiled graphs: traced in-graph, inductor folds the fp64 cos/sin into every
    # element-wise kernel that reads them and recomputes them per (B, T, H, D) element (on CPU
    # that was about a sixth of a `tiny` training step, docs/log.md). Called first in
    # GPT.forward, the graph break leaves nothing before it, so the model still compiles to one graph.
    @torch.compiler.disable
    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        key = (seq_len, device, dtype)
        if key not in self._cache:
            # ordinary tensors even when the first call comes from evaluation under inference_mode,
            # which training could not save for backward later
            with torch.inference_mode(False):
                self._cache[key] = self._tables(seq_len, device, dtype)
        return self._cache[key]

    def _tables(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rotary_dims:
            base, dims = self.base, self.rotary_dims
        else:
            base, dims = rotary_base(self.base, seq_len, self.reference_len, self.head_dim), self.head_dim
        exponents = torch.arange(0, dims, 2, dtype=torch.float64, device=device) / dims
        inverse_frequency = base ** -exponents  # (D/2,)
        positions = torch.arange(seq_len, dtype=torch.float64, device=device)
        angles = torch.outer(positions, inverse_frequency)  # (T, D/2)
        # (1, T, 1, D/2): broadcasts over batch and heads in the (B, T, H, D) layout.
        return angles.cos()[None, :, None].to(dtype), angles.sin()[None, :, None].to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + R/2]) of x (B, T, H, D) by the position's angle.

    R = 2 * cos.size(-1): all D dims, or (partial rotary) the first R, the rest passing through.
    """
    rotated = 2 * cos.size(-1)
    if rotated < x.size(-1):
        return torch.cat((apply_rotary(x[..., :rotated], cos, sin), x[..., rotated:]), dim=-1)
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        kv_dim = config.num_kv_heads * config.head_dim
        self.c_q = CastedLinear(config.model_dim, config.model_dim)
        self.c_k = CastedLinear(config.model_dim, kv_dim)
        self.c_v = CastedLinear(config.model_dim, kv_dim)
        self.proj = CastedLinear(config.model_dim, config.model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((config.num_heads,), config.qk_gain_init, dtype=torch.float32))
        self.exclusive = layer_index in config.xsa_layers
        self.gate_scale = config.attn_gate_scale
        if config.attn_gate_window:  # SparseAttnGate: W (H, window), zero, so every gate starts at 0.5
            self.gate = nn.Parameter(torch.zeros(config.num_heads, config.attn_gate_window, dtype=torch.float32))
        else:
            self.gate = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, document_ids: torch.Tensor | None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.c_q(x).view(batch, length, self.num_heads, self.head_dim)
        k = self.c_k(x).view(batch, length, self.num_kv_heads, self.head_dim)
        v = self.c_v(x).view(batch, length, self.num_kv_heads, self.head_dim)
        q = apply_rotary(rms_norm(q), cos, sin) * self.q_gain[None, None, :, None]
        k = apply_rotary(rms_norm(k), cos, sin)
        # Norm and gain may promote to fp32 under autocast; the kernels want one dtype.
        q, k = q.to(v.dtype), k.to(v.dtype)
        y = causal_attention(q, k, v, document_ids, cu_seqlens, max_seqlen)  # (B, T, H, D)
        if self.exclusive:
            y = exclusive_self_attention(y, v)
        if self.gate is not None:
            y = sparse_attention_gate(y, x, self.gate, self.gate_scale)
        return self.proj(y.reshape(batch, length, self.num_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = CastedLinear(config.model_dim, config.mlp_hidden)
        self.proj = CastedLinear(config.mlp_hidden, config.model_dim, zero_init=True)
        self.negative_slope = config.mlp_negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.negative_slope:
            return self.proj(F.leaky_relu(self.fc(x), self.negative_slope).square())
        return self.proj(torch.relu(self.fc(x)).square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        dim = config.model_dim
        self.attn = CausalSelfAttention(config, layer_index)
        self.mlp = MLP(config)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        # Row 0 scales the running stream, row 1 mixes the block input x0 back in.
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(dim), torch.zeros(dim)]).float())
        # the physical index decides the scale, so a looped pass of this block keeps it
        self.norm_scale = 1.0 / math.sqrt(layer_index + 1) if config.layer_norm_scale else None

    def normed(self, x: torch.Tensor) -> torch.Tensor:
        """RMSNorm of a branch input, times 1/sqrt(l+1) with layer_norm_scale."""
        return rms_norm(x) if self.norm_scale is None else rms_norm(x) * self.norm_scale

    def forward(self, x: torch.Tensor, x0: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                document_ids: torch.Tensor | None, **attention_extra) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        x = x + self.attn_scale.to(x.dtype) * self.attn(self.normed(x), cos, sin, document_ids, **attention_extra)
        return x + self.mlp_scale.to(x.dtype) * self.mlp(self.normed(x))

    def lanes_forward(self, lanes: tuple[torch.Tensor, torch.Tensor], x0: torch.Tensor, residual: torch.Tensor,
                      mix: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, document_ids: torch.Tensor | None,
                      **attention_extra) -> tuple[torch.Tensor, torch.Tensor]:
        """One parallel-lane layer (module docstring); residual r (2,), mix p (2 sources, 2 lanes)."""
        lane0, lane1 = lanes
        stream_mix = self.resid_mix.to(lane0.dtype)
        attention_input = self.normed(stream_mix[0] * lane0 + stream_mix[1] * x0)
        attended = self.attn_scale.to(lane0.dtype) * self.attn(attention_input, cos, sin, document_ids,
                                                                **attention_extra)
        mlp_out = self.mlp_scale.to(lane1.dtype) * self.mlp(self.normed(lane1))
        residual, mix = residual.to(lane0.dtype), mix.to(lane0.dtype)
        return (residual[0] * lane0 + mix[0, 0] * attended + mix[1, 0] * mlp_out,
                residual[1] * lane1 + mix[0, 1] * attended + mix[1, 1] * mlp_out)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.model_dim
        self.tok_emb = nn.Embedding(config.vocab_size, dim)
        self.bigram = (BigramHash(config.bigram_buckets, config.bigram_dim, dim, config.bigram_scale_init)
                       if config.bigram_buckets > 0 else None)
        self.smear: SmearGate | InputSmearGate | None = None
        if config.smear_gate:
            self.smear = InputSmearGate(config.smear_gate_window) if config.smear_gate_window else SmearGate(dim)
        self.skip_weights = nn.Parameter(torch.ones(config.num_skip_weights, dim, dtype=torch.float32))
        # g of the gated skips: sigmoid(0) = 0.5 at the start
        self.skip_gates = (nn.Parameter(torch.zeros(config.num_skip_weights, dim, dtype=torch.float32))
                           if config.skip_gates else None)
        self.blocks = nn.ModuleList(Block(config, index) for index in range(config.num_layers))
        if config.parallel_lanes_from:
            self.lane_mix = nn.Parameter(torch.ones(config.num_layers, 2, 2, dtype=torch.float32))
            self.lane_residual = nn.Parameter(torch.full((config.num_layers, 2), LANE_RESIDUAL_INIT,
                                                         dtype=torch.float32))
        self.rotary = Rotary(config.head_dim, config.rope_base, config.rope_reference_len, config.rope_dims)
        self.final_norm = FinalNorm()
        # Which layer order runs (ModelConfig.layer_order); a plain Python bool, so a compiled
        # model keeps one graph per value. On by default: evaluation and TTT run looped.
        self.looping = bool(config.loop_layers)
        # eval-time adapters on the logits (pgolf.lora: hidden (B, T, C) -> (B, T, V), added before the
        # soft-cap); None everywhere else. A plain attribute, not a module: nothing enters the state_dict.
        self.logit_delta = None
        self._init_weights()
        # initialised in fp32, then cast, as the reference casts its initialised model
        embedding_dtype = EMBEDDING_DTYPES[config.embedding_dtype]
        self.tok_emb.to(embedding_dtype)
        if self.bigram is not None:
            self.bigram.table.to(embedding_dtype)

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.config.tied_embed_init_std)
        for module in self.modules():
            if not isinstance(module, CastedLinear):
                continue
            if module.zero_init:
                nn.init.zeros_(module.weight)
            elif min(module.weight.shape) >= ORTHOGONAL_MIN_DIM:
                nn.init.orthogonal_(module.weight, gain=1.0)
            # else: nn.Linear's default Kaiming-uniform init, already applied.
        if self.bigram is not None:
            nn.init.zeros_(self.bigram.table.weight)
            self.bigram.proj.weight.mul_(1.0 / math.sqrt(2 * self.config.num_layers))

    def forward(self, input_ids: torch.Tensor, target_ids: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
        """Mean cross-entropy (fp32 scalar) if `target_ids` (B, T) is given, else fp32 logits (B, T, V).

        `cu_seqlens` (N,) int32: document boundaries over the flattened B*T positions (segment
        starts, then B*T, padding repeats B*T); attention then stays inside each segment, and
        `max_seqlen` (longest segment; default T) is handed to FlashAttention's varlen kernel.
        """
        config = self.config
        cos, sin = self.rotary(input_ids.shape[1], input_ids.device, torch.float32)  # first: see Rotary
        if config.document_isolation and cu_seqlens is None and takes_boundaries(input_ids.device):
            # once per forward, out of the graph, before any other work (as the rotary tables)
            cu_seqlens, max_seqlen = bos_boundaries(input_ids, config.bos_id), input_ids.shape[1]
        sequence_starts = document_ids = None
        if config.document_isolation:
            sequence_starts = input_ids == config.bos_id  # (B, T)
            document_ids = sequence_starts.cumsum(dim=1)  # (B, T), non-decreasing
        attention_extra = {}
        if cu_seqlens is not None:
            document_ids = document_ids_from_boundaries(cu_seqlens, *input_ids.shape)
            attention_extra = {"cu_seqlens": cu_seqlens, "max_seqlen": max_seqlen}
        x = self.tok_emb(input_ids)  # (B, T, C) fp32
        if self.bigram is not None:
            x = x + self.bigram(input_ids, sequence_starts)
        if isinstance(self.smear, InputSmearGate):  # on the raw embeddings, before the norm
            x = self.smear(x, input_ids == config.bos_id)
        x = rms_norm(x)
        if isinstance(self.smear, SmearGate):
            x = self.smear(x, sequence_starts)
        x = self._run_layers(x, cos, sin, document_ids, attention_extra)
        x = self.final_norm(x)
        logits = F.linear(x, self.tok_emb.weight.to(x.dtype)).float()  # (B, T, V)
        if self.logit_delta is not None:
            logits = logits + self.logit_delta(x).float()
        logits = config.logit_softcap * torch.tanh(logits / config.logit_softcap)
        if target_ids is None:
            return logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1))

    def _run_layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                    document_ids: torch.Tensor | None, attention_extra: dict) -> torch.Tensor:
        """The blocks in `layer_order`, U-Net skips from encoder to decoder, lanes at the end. (B, T, C)."""
        config = self.config
        order = config.layer_order(self.looping)
        num_encoder = len(order) // 2
        x0 = x
        saved: list[torch.Tensor] = []
        lanes: tuple[torch.Tensor, torch.Tensor] | None = None
        for slot, layer in enumerate(order):
            block = self.blocks[layer]
            decoder_index = slot - num_encoder
            if lanes is None and config.parallel_lanes_from and decoder_index >= 0 \
                    and layer >= config.parallel_lanes_from:
                lanes = (x, x)
            if decoder_index >= 0 and saved:
                # Last in, first out: decoder slot j gets encoder slot (num_encoder - 1 - j).
                if lanes is None:
                    x = self._skip(x, saved.pop(), decoder_index)
                else:
                    lanes = (self._skip(lanes[0], saved.pop(), decoder_index), lanes[1])
            if lanes is None:
                x = block(x, x0, cos, sin, document_ids, **attention_extra)
            else:
                lanes = block.lanes_forward(lanes, x0, self.lane_residual[layer], self.lane_mix[layer],
                                            cos, sin, document_ids, **attention_extra)
            if decoder_index < 0:
                saved.append(x)
        return x if lanes is None else (lanes[0] + lanes[1]) / 2

    def _skip(self, x: torch.Tensor, skip: torch.Tensor, index: int) -> torch.Tensor:
        """x + w*skip, or with gates lerp(w*skip, x, sigmoid(g)) = s*x + (1-s)*w*skip."""
        weighted = self.skip_weights[index].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + weighted
        return torch.lerp(weighted, x, torch.sigmoid(self.skip_gates[index]).to(x.dtype))


def num_parameters(model: nn.Module) -> int:
    """Total number of parameter elements (tied weights counted once)."""
    return sum(parameter.numel() for parameter in model.parameters())

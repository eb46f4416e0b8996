"""Configuration: the model config, the run config, presets and overrides.

Two frozen dataclasses. `ModelConfig` is everything needed to rebuild the
network (it travels inside the artifact); `RunConfig` is everything else
(data, batch, optimiser, schedule, averaging, quantisation, evaluation).
Presets are plain functions returning a `RunConfig`; overrides
(`--set key=value`) are applied in one place, `apply_overrides`.

Every technique beyond pr198 (spec frontier.md §3-§4) is one field, off by
default, so `pr198`, `baseline` and `tiny` are unchanged; `frontier` and
`frontier-tiny` switch them on. Tuple fields are written `--set xsa_layers=0,1,2`
(an empty value gives the empty tuple).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from pgolf.errors import PgolfError


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 1024
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: int = 3  # hidden width = mlp_mult * model_dim
    rope_base: float = 10000.0
    rope_reference_len: int = 1024  # NTK-aware base scaling above this length
    logit_softcap: float = 30.0
    qk_gain_init: float = 1.5
    tied_embed_init_std: float = 0.005
    bigram_buckets: int = 2048  # 0 disables BigramHash
    bigram_dim: int = 128
    bigram_scale_init: float = 0.05
    smear_gate: bool = True
    document_isolation: bool = False  # attention/smear/bigram restart at every bos
    bos_id: int = 1
    embedding_dtype: str = "fp32"  # token embedding and bigram table; the reference's presets store them bf16
    # ---- frontier switches (spec frontier.md §3), all off by default
    mlp_negative_slope: float = 0.0  # 0: relu(x)^2; > 0: leaky_relu(x, slope)^2
    xsa_layers: tuple[int, ...] = ()  # physical layers whose attention output loses its own-value component
    rope_dims: int = 0  # 0: rotate every head dim (NTK base); > 0: only the first rope_dims, base unscaled
    layer_norm_scale: bool = False  # block l multiplies its normed inputs by 1/sqrt(l+1)
    skip_gates: bool = False  # U-Net skip x <- lerp(w*skip, x, sigmoid(g)) instead of x + w*skip
    loop_layers: tuple[int, ...] = ()  # contiguous physical layers that run num_loop_passes times when looping
    num_loop_passes: int = 1
    parallel_lanes_from: int = 0  # 0: off; decoder layers from this physical index on run two residual lanes
    attn_gate_window: int = 0  # 0: off; SparseAttnGate reads the first this many channels of the attention input
    attn_gate_scale: float = 1.0
    smear_gate_window: int = 0  # 0: pr198 per-channel SmearGate; > 0: input-dependent gate on raw embeddings

    def __post_init__(self):
        # lists (from JSON) become tuples, so configs compare equal and stay hashable
        for name in ("xsa_layers", "loop_layers"):
            object.__setattr__(self, name, tuple(int(value) for value in getattr(self, name)))

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_mult * self.model_dim

    @property
    def num_encoder_layers(self) -> int:
        return self.num_layers // 2

    @property
    def num_decoder_layers(self) -> int:
        return self.num_layers - self.num_encoder_layers

    def layer_order(self, looping: bool) -> tuple[int, ...]:
        """Physical block index of each virtual layer; looping repeats `loop_layers` `num_loop_passes` times.

        E.g. 11 layers, loop_layers (3, 4, 5), 3 passes: (0, 1, 2, 3, 4, 5, 3, 4, 5, 3, 4, 5, 6, ..., 10).
        The first len // 2 virtual layers are the encoder, the rest the decoder.
        """
        if not looping or not self.loop_layers:
            return tuple(range(self.num_layers))
        first, last = self.loop_layers[0], self.loop_layers[-1]
        return (tuple(range(first)) + self.loop_layers * self.num_loop_passes
                + tuple(range(last + 1, self.num_layers)))

    @property
    def num_skip_weights(self) -> int:
        """U-Net skip slots: enough for the longest (looped) order; the plain order uses the first ones."""
        length = len(self.layer_order(looping=True))
        return min(length // 2, length - length // 2)

    def validate(self) -> None:
        check_field_types(self)
        for name in ("num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "rope_reference_len",
                     "bigram_dim"):
            if getattr(self, name) < 1:
                raise PgolfError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.bigram_buckets < 0 or self.bigram_buckets == 1:
            # the hash is taken mod (buckets - 1), the last bucket being the "no previous token" one
            raise PgolfError(f"bigram_buckets must be 0 (off) or >= 2, got {self.bigram_buckets}")
        for name in ("rope_base", "logit_softcap"):
            if not getattr(self, name) > 0:
                raise PgolfError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.tied_embed_init_std < 0:
            raise PgolfError(f"tied_embed_init_std must be >= 0, got {self.tied_embed_init_std}")
        if self.model_dim % self.num_heads:
            raise PgolfError(f"model_dim {self.model_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise PgolfError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise PgolfError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.num_layers < 1 or self.vocab_size < 2:
            raise PgolfError("num_layers must be >= 1 and vocab_size >= 2")
        if self.vocab_size > 65536:
            raise PgolfError(f"vocab_size {self.vocab_size} does not fit uint16 shards")
        if self.embedding_dtype not in ("bf16", "fp32"):
            raise PgolfError(f"embedding_dtype must be bf16 or fp32, got {self.embedding_dtype!r}")
        if not 0 <= self.bos_id < self.vocab_size:
            raise PgolfError(f"bos_id {self.bos_id} is not a token id of a {self.vocab_size}-piece vocabulary")
        self._validate_frontier_switches()

    def _validate_frontier_switches(self) -> None:
        if any(not 0 <= layer < self.num_layers for layer in self.xsa_layers):
            raise PgolfError(f"xsa_layers {self.xsa_layers} must be physical layers 0..{self.num_layers - 1}")
        if self.rope_dims < 0 or self.rope_dims % 2 or self.rope_dims > self.head_dim:
            raise PgolfError(f"rope_dims must be even and in 0..head_dim {self.head_dim}, got {self.rope_dims}")
        loop = self.loop_layers
        if loop and (loop != tuple(range(loop[0], loop[0] + len(loop))) or loop[0] < 0
                     or loop[-1] >= self.num_layers):
            raise PgolfError(f"loop_layers must be consecutive physical layers, got {loop}")
        if self.num_loop_passes < 1 or (self.num_loop_passes > 1 and not loop):
            raise PgolfError(f"num_loop_passes must be >= 1 and needs loop_layers (got {self.num_loop_passes})")
        if self.parallel_lanes_from:
            # lanes start in the decoder of both layer orders and after the loop, and stay on to the end
            lowest = max(self.num_encoder_layers, loop[-1] + 1 if loop else 0)
            if not lowest <= self.parallel_lanes_from < self.num_layers:
                raise PgolfError(f"parallel_lanes_from must be in {lowest}..{self.num_layers - 1} (after the "
                                 f"encoder and the looped layers), got {self.parallel_lanes_from}")
        for name in ("attn_gate_window", "smear_gate_window"):
            if not 0 <= getattr(self, name) <= self.model_dim:
                raise PgolfError(f"{name} must be in 0..model_dim {self.model_dim}, got {getattr(self, name)}")
        if self.smear_gate_window and not self.smear_gate:
            raise PgolfError("smear_gate_window needs smear_gate=true")
        if self.mlp_negative_slope < 0:
            raise PgolfError(f"mlp_negative_slope must be >= 0, got {self.mlp_negative_slope}")


def check_field_types(config) -> None:
    """Every field holds the type of its default (an int field a true int, not a bool), floats finite.

    Configs also come from JSON (config.json, an artifact's header), where anything may stand in a field.
    """
    for item in dataclasses.fields(config):
        value, default = getattr(config, item.name), item.default
        if default is dataclasses.MISSING:
            continue  # nested configs (RunConfig.model) validate themselves
        if isinstance(default, bool):
            valid = isinstance(value, bool)
        elif isinstance(default, int):
            valid = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            valid = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            valid = isinstance(value, type(default))
        if not valid:
            raise PgolfError(f"{item.name} must be a finite {type(default).__name__}, got {value!r}"[:200])


RUNTIME_CHOICES = {"autocast_dtype": ("auto", "bf16", "fp32"), "compile": ("auto", "on", "off"),
                   "device": ("auto", "cpu", "cuda"), "code_packing": ("plain", "lzma", "minify-brotli"),
                   "lr_schedule": ("step_warmdown", "fraction_warmdown"),
                   "muon_coefficients": ("quintic", "polar_express"),
                   "eval_procedure": ("sliding", "plain", "ttt")}


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    preset: str = "pr198"
    seed: int = 1337
    data_dir: str = ""  # dataset folder holding manifest.json / *.bin; "" = default location
    tokenizer_path: str = ""  # "" = taken from the dataset's manifest
    allow_foreign_tokenizer: bool = False  # score with a tokenizer_path other than the dataset's own
    # batch
    train_seq_len: int = 2048
    global_batch_tokens: int = 786_432
    micro_batch_tokens: int = 98_304  # per process per micro-step; accumulation = global / (world * micro)
    # length of the run
    iterations: int = 20_000
    max_wallclock_seconds: float = 600.0  # 0 = no cap, warmdown measured in steps
    warmup_steps: int = 20  # compile warm-up steps, undone before timing starts
    warmdown_steps: int = 3000
    # optimiser
    matrix_lr: float = 0.025
    scalar_lr: float = 0.025
    embed_lr: float = 0.035
    muon_momentum: float = 0.99
    muon_momentum_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_ns_steps: int = 5
    muon_weight_decay: float = 0.04
    adam_weight_decay: float = 0.04
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.3  # 0 = off
    # ---- frontier training pieces (spec frontier.md §4), all off by default
    muon_row_normalize: bool = False  # MuonEq-R: each update row / its L2 norm before orthogonalising
    muon_coefficients: str = "quintic"  # quintic (3.4445, -4.7750, 2.0315) x ns_steps | polar_express
    embed_weight_decay: float = -1.0  # AdamW WD of the embedding group; < 0: adam_weight_decay
    grad_clip_local: bool = False  # clip each rank's own gradient, before the cross-rank average
    lr_schedule: str = "step_warmdown"  # step_warmdown (pr198) | fraction_warmdown (schedule.py)
    warmdown_fraction: float = 0.85  # fraction_warmdown: decay over the last this fraction of training
    lr_floor: float = 0.10  # fraction_warmdown: the multiplier never drops below this
    train_reserve_seconds: float = 0.0  # cut from the wall-clock cap for post-training work (GPTQ)
    ema_decay: float = 0.0  # > 0: EMA of the weights after every step from step 0, instead of SWA
    looping_start_fraction: float = 0.0  # training fraction at which loop_layers start looping
    packed_rows: bool = False  # one document-packed row per rank per micro-step (data/packing.py)
    progressive_seq_lens: tuple[int, ...] = ()  # training context lengths in order (#2014); () = off
    progressive_fractions: tuple[float, ...] = ()  # training fractions at which the next length starts
    progressive_ramp_steps: int = 32  # LR scaled by (k+1)/ramp for ramp steps after each switch
    # stochastic weight averaging
    swa_enabled: bool = True
    swa_every: int = 200
    swa_start_lr_mult: float = 0.5
    # artifact
    quant_scheme: str = "pr198"  # name in pgolf.quant.SCHEMES
    calibration_batches: int = 16  # GPTQ Hessians: batches of random train windows after training (per rank)
    calibration_batch_seqs: int = 48  # windows of train_seq_len per calibration batch
    # the exported train_gpt.py (counted code): "minify-brotli" (python-minifier + brotli-11 + base85, the
    # frontier records' form, frontier.md §5), "lzma" (docstrings and comments stripped, lzma + base85), "plain"
    code_packing: str = "minify-brotli"
    # evaluation
    eval_seq_len: int = 2048
    eval_stride: int = 64  # == eval_seq_len means plain (non-overlapping) scoring
    eval_batch_seqs: int = 32
    val_every: int = 1000  # 0 = only at the end
    val_max_tokens: int = 0  # periodic validation on a prefix; 0 = the whole split
    # the score's procedure (pgolf.procedures): sliding (eval_seq_len windows every eval_stride), plain
    # (non-overlapping windows), ttt (score-first LoRA TTT, spec frontier.md §6; the numbers below)
    eval_procedure: str = "sliding"
    ttt_context_tokens: int = 2048  # a chunk is scored from up to this many document tokens ending at its end
    ttt_chunk_tokens: int = 48
    ttt_batch_docs: int = 64
    ttt_lora_rank: int = 80
    ttt_lora_alpha: float = 144.0  # LoRA output scaled by alpha / rank
    ttt_lora_targets: str = "q,k,v,out,mlp,head"
    ttt_lr: float = 1e-4  # AdamW on the adapters, one step per chunk
    ttt_beta1: float = 0.0
    ttt_beta2: float = 0.99
    ttt_eps: float = 1e-10
    ttt_weight_decay: float = 0.5
    ttt_phase_boundaries: tuple[int, ...] = (833, 1666, 2500)  # scored-document counts of the global phases
    ttt_global_lr: float = 1e-3  # SGD over all base weights, cosine over a phase's chunks
    ttt_global_momentum: float = 0.9
    ttt_global_clip: float = 1.0
    ttt_global_seq_len: int = 2048
    ttt_global_batch_seqs: int = 16  # rows per global chunk (16 x 2048 = 32,768 tokens)
    eval_tilt: bool = False  # token n-gram tilt (#2135, spec frontier.md §9) on the scored distribution
    tilt_order: int = 16
    tilt_threshold: float = 0.8
    tilt_beta: float = 2.625
    # logging and runtime
    log_every: int = 100
    checkpoint_every: int = 0
    device: str = "auto"  # auto | cpu | cuda
    autocast_dtype: str = "auto"  # auto | bf16 | fp32
    compile: str = "auto"  # auto | on | off

    def __post_init__(self):
        object.__setattr__(self, "progressive_seq_lens", tuple(int(v) for v in self.progressive_seq_lens))
        object.__setattr__(self, "progressive_fractions", tuple(float(v) for v in self.progressive_fractions))
        object.__setattr__(self, "ttt_phase_boundaries", tuple(int(v) for v in self.ttt_phase_boundaries))

    def validate(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise PgolfError("the run config's model must be a model config object")
        self.model.validate()
        check_field_types(self)
        for name in ("train_seq_len", "global_batch_tokens", "micro_batch_tokens", "eval_seq_len",
                     "eval_batch_seqs", "log_every", "swa_every", "muon_ns_steps", "ttt_context_tokens",
                     "ttt_chunk_tokens", "ttt_batch_docs", "ttt_lora_rank", "ttt_global_seq_len",
                     "ttt_global_batch_seqs"):
            if getattr(self, name) < 1:
                raise PgolfError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iterations", "warmup_steps", "warmdown_steps", "val_every", "val_max_tokens",
                     "checkpoint_every", "muon_momentum_warmup_steps", "max_wallclock_seconds", "grad_clip_norm",
                     "matrix_lr", "scalar_lr", "embed_lr", "muon_weight_decay", "adam_weight_decay", "adam_eps",
                     "swa_start_lr_mult"):
            if getattr(self, name) < 0:
                raise PgolfError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2", "muon_momentum", "muon_momentum_start"):
            if not 0 <= getattr(self, name) < 1:
                raise PgolfError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.global_batch_tokens % self.micro_batch_tokens:
            raise PgolfError(
                f"global_batch_tokens {self.global_batch_tokens} is not a multiple of "
                f"micro_batch_tokens {self.micro_batch_tokens}"
            )
        if self.micro_batch_tokens % self.train_seq_len:
            raise PgolfError(
                f"micro_batch_tokens {self.micro_batch_tokens} is not a multiple of train_seq_len {self.train_seq_len}"
            )
        if not 0 < self.eval_stride <= self.eval_seq_len:
            raise PgolfError(f"eval_stride must be in 1..eval_seq_len, got {self.eval_stride}")
        for name, allowed in RUNTIME_CHOICES.items():
            if getattr(self, name) not in allowed:
                raise PgolfError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.progressive_seq_lens and len(self.progressive_fractions) != len(self.progressive_seq_lens) - 1:
            raise PgolfError("progressive_fractions needs one fraction per switch, i.e. len(progressive_seq_lens) - 1")
        if list(self.progressive_fractions) != sorted(self.progressive_fractions):
            raise PgolfError(f"progressive_fractions must be ascending, got {self.progressive_fractions}")
        if self.ema_decay and not 0 < self.ema_decay < 1:
            raise PgolfError(f"ema_decay must be in (0, 1) or 0 (off), got {self.ema_decay}")
        if not 0 < self.warmdown_fraction <= 1 or not 0 <= self.lr_floor <= 1:
            raise PgolfError("warmdown_fraction must be in (0, 1] and lr_floor in [0, 1]")
        if not self.packed_rows and any(self.micro_batch_tokens % length for length in self.progressive_seq_lens):
            raise PgolfError(f"micro_batch_tokens {self.micro_batch_tokens} must be a multiple of every progressive "
                             f"context length {self.progressive_seq_lens} (or use packed_rows)")
        if self.max_wallclock_seconds > 0 and not 0 <= self.train_reserve_seconds < self.max_wallclock_seconds:
            raise PgolfError(f"train_reserve_seconds must be in [0, max_wallclock_seconds), got "
                             f"{self.train_reserve_seconds}")

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimiser step for this many processes (global batch stays fixed)."""
        per_step = self.global_batch_tokens // self.micro_batch_tokens
        if per_step % world_size:
            raise PgolfError(
                f"global batch of {per_step} micro-batches cannot be split evenly over {world_size} processes"
            )
        return per_step // world_size


# ---------------------------------------------------------------- presets


def pr198() -> RunConfig:
    """The PR-198 record recipe (val_bpb 1.1318), number for number."""
    return RunConfig(model=ModelConfig(embedding_dtype="bf16"))


def baseline() -> RunConfig:
    """The challenge's naive baseline (val_bpb 1.2244), the yardstick."""
    model = ModelConfig(num_layers=9, mlp_mult=2, bigram_buckets=0, smear_gate=False, embedding_dtype="bf16")
    return RunConfig(
        model=model,
        preset="baseline",
        train_seq_len=1024,
        global_batch_tokens=524_288,
        micro_batch_tokens=65_536,
        matrix_lr=0.04,
        scalar_lr=0.04,
        embed_lr=0.05,
        muon_momentum=0.95,
        muon_momentum_start=0.85,
        muon_momentum_warmup_steps=500,
        muon_weight_decay=0.0,
        adam_weight_decay=0.0,
        grad_clip_norm=0.0,
        warmdown_steps=1200,
        swa_enabled=False,
        quant_scheme="baseline",
        eval_seq_len=1024,
        eval_stride=1024,
    )


def tiny() -> RunConfig:
    """Every PR-198 technique at a size that trains in minutes on 2 CPU cores."""
    # Width 256 with 4 heads of 64 (GQA 2:1, as in pr198): the MLP matrices (196,608 elements) are above the
    # 65,536-element passthrough limit, so the artifact really exercises int6 as well as int8.
    # Embedding tables in bf16 as in pr198: on the demo corpus fp32 tables trained no better (300 steps,
    # 2 seeds: sliding bpb 1.8626 / 1.8746 bf16 against 1.8643 / 1.8765 fp32; docs/results.md).
    model = ModelConfig(num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=3,
                        bigram_buckets=1024, bigram_dim=32, rope_reference_len=128, embedding_dtype="bf16")
    return RunConfig(
        model=model,
        preset="tiny",
        train_seq_len=256,
        global_batch_tokens=8192,
        micro_batch_tokens=8192,
        iterations=300,
        max_wallclock_seconds=0.0,
        warmup_steps=2,  # compiles before the clock starts
        warmdown_steps=100,
        muon_momentum_warmup_steps=100,
        swa_every=20,
        eval_seq_len=256,
        eval_stride=64,
        eval_batch_seqs=16,
        val_every=100,
        val_max_tokens=65_536,
        log_every=10,
        calibration_batches=4,
        calibration_batch_seqs=16,
    )


def frontier_model() -> ModelConfig:
    """The #1855 network (spec frontier.md §3): 35,945,671 parameters at vocab 8192."""
    return ModelConfig(
        vocab_size=8192, num_layers=11, model_dim=512, num_heads=8, num_kv_heads=4, mlp_mult=4,
        mlp_negative_slope=0.5, qk_gain_init=5.0, bigram_buckets=0, smear_gate=True, smear_gate_window=12,
        document_isolation=True, xsa_layers=tuple(range(11)), rope_dims=16, layer_norm_scale=True,
        skip_gates=True, loop_layers=(3, 4, 5), num_loop_passes=3, parallel_lanes_from=8,
        attn_gate_window=12, attn_gate_scale=0.5, embedding_dtype="bf16",
    )


def frontier() -> RunConfig:
    """The #1855 run (val_bpb 1.06108), spec frontier.md §3-§4 with the logged run values of §8.

    Data: the CaseOps SP8192 export (`pgolf data fetch --variant sp8192-caseops`), scored on its byte
    sidecar; the score's procedure is phased score-first LoRA TTT (`eval_procedure`, frontier.md §6).
    """
    return RunConfig(
        model=frontier_model(),
        preset="frontier",
        train_seq_len=2048,  # longest document piece in a packed row; max_seqlen
        global_batch_tokens=786_432,  # 8 ranks x one packed row of 98,304
        micro_batch_tokens=98_304,
        packed_rows=True,
        max_wallclock_seconds=600.0,
        train_reserve_seconds=0.5,  # GPTQ reserve: frac = train seconds / 599.5
        lr_schedule="fraction_warmdown",
        warmdown_fraction=0.85,
        lr_floor=0.10,
        matrix_lr=0.026,
        scalar_lr=0.02,
        embed_lr=0.03,
        muon_momentum=0.97,
        muon_momentum_start=0.92,
        muon_momentum_warmup_steps=1500,
        muon_ns_steps=5,
        muon_coefficients="polar_express",
        muon_row_normalize=True,
        muon_weight_decay=0.095,
        adam_weight_decay=0.02,  # control tensors
        embed_weight_decay=0.085,
        adam_beta2=0.99,
        grad_clip_norm=0.3,
        grad_clip_local=True,
        swa_enabled=False,
        ema_decay=0.9965,
        looping_start_fraction=0.35,
        eval_seq_len=2048,
        eval_stride=2048,  # diagnostics: non-overlapping, document-isolated windows
        eval_batch_seqs=32,
        val_every=0,  # mid-run validation: never
        quant_scheme="frontier",  # GPTQ + SDClip, int7 embedding, LQER, per-group layout (frontier.md §5)
        calibration_batches=16,
        calibration_batch_seqs=48,
        # the score: phased score-first LoRA TTT (frontier.md §6)
        eval_procedure="ttt",
        ttt_context_tokens=2048,
        ttt_chunk_tokens=48,
        ttt_batch_docs=64,
        ttt_lora_rank=80,
        ttt_lora_alpha=144.0,
        ttt_lora_targets="q,k,v,out,mlp,head",
        ttt_lr=1e-4,
        ttt_beta1=0.0,
        ttt_beta2=0.99,
        ttt_eps=1e-10,
        ttt_weight_decay=0.5,
        ttt_phase_boundaries=(833, 1666, 2500),
        ttt_global_lr=1e-3,
        ttt_global_momentum=0.9,
        ttt_global_clip=1.0,
        ttt_global_seq_len=2048,
        ttt_global_batch_seqs=16,
    )


def frontier_tiny() -> RunConfig:
    """Every frontier switch at `tiny`'s size (4 x 256, vocab 1024): trains in minutes on 2 CPU cores.

    Layers 1-2 loop three times (virtual order 0,1,2,1,2,1,2,3), lanes in layer 3. Step-measured
    (no wall-clock cap): the training fraction is step / iterations. EMA decay 0.94 keeps the
    reference's averaging horizon relative to the run (1 - 0.9965 = 0.0035 over ~4,900 steps is
    ~0.057 over 300). Plain (not packed) rows of 256: a packed 8,192-token row would need the
    dense masked attention path on CPU; document isolation still comes from the bos positions.
    """
    model = replace(frontier_model(), vocab_size=1024, num_layers=4, model_dim=256, num_heads=4,
                    num_kv_heads=2, xsa_layers=(0, 1, 2, 3), loop_layers=(1, 2), parallel_lanes_from=3)
    return replace(
        frontier(),
        model=model,
        preset="frontier-tiny",
        train_seq_len=256,
        global_batch_tokens=8192,
        micro_batch_tokens=8192,
        packed_rows=False,
        iterations=300,
        max_wallclock_seconds=0.0,
        train_reserve_seconds=0.0,
        warmup_steps=2,
        muon_momentum_warmup_steps=100,
        ema_decay=0.94,
        eval_seq_len=256,
        eval_stride=256,
        eval_batch_seqs=16,
        val_every=100,
        val_max_tokens=65_536,
        log_every=10,
        # TTT at this size: windows of eval_seq_len, 8-document batches, rank 8 (alpha / rank 1.8 as in
        # frontier), phases after 8 / 16 / 24 documents (the demo and test splits hold ~40)
        ttt_context_tokens=256,
        ttt_chunk_tokens=32,
        ttt_batch_docs=8,
        ttt_lora_rank=8,
        ttt_lora_alpha=14.4,
        ttt_phase_boundaries=(8, 16, 24),
        ttt_global_seq_len=256,
        ttt_global_batch_seqs=4,
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"pr198": pr198, "baseline": baseline, "tiny": tiny,
                                               "frontier": frontier, "frontier-tiny": frontier_tiny}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise PgolfError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# ---------------------------------------------------------------- overrides and (de)serialisation


def _parse_tuple(text: str, element_type: type, key: str) -> tuple:
    """Comma-separated values, e.g. "3,4,5"; an empty text is the empty tuple."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    try:
        return tuple(element_type(part) for part in parts)
    except ValueError:
        raise PgolfError(f"--set {key}: expected comma-separated {element_type.__name__} values, "
                         f"got {text!r}") from None


def _parse_value(text: str, current: Any, key: str, annotation: str = "") -> Any:
    if isinstance(current, tuple):
        return _parse_tuple(text, float if "float" in annotation else int, key)
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise PgolfError(f"--set {key}: expected a boolean, got {text!r}")
    try:
        if isinstance(current, int):
            return int(float(text)) if "e" in text.lower() else int(text)
        if isinstance(current, float):
            value = float(text)
            if not math.isfinite(value):
                raise PgolfError(f"--set {key}: expected a finite number, got {text!r}")
            return value
    except (ValueError, OverflowError):
        raise PgolfError(f"--set {key}: expected a {type(current).__name__}, got {text!r}") from None
    return text


def apply_overrides(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `key=value` strings; model fields are addressed as `model.field` or by bare name."""
    model_fields = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}
    run_fields = {f.name: str(f.type) for f in dataclasses.fields(RunConfig) if f.name != "model"}
    for assignment in assignments:
        if "=" not in assignment:
            raise PgolfError(f"--set expects key=value, got {assignment!r}")
        key, text = assignment.split("=", 1)
        key = key.strip()
        bare = key.removeprefix("model.")
        if key.startswith("model.") or (bare in model_fields and bare not in run_fields):
            if bare not in model_fields:
                raise PgolfError(f"unknown model setting {key!r}")
            value = _parse_value(text, getattr(config.model, bare), key, model_fields[bare])
            config = replace(config, model=replace(config.model, **{bare: value}))
        elif key in run_fields:
            config = replace(config, **{key: _parse_value(text, getattr(config, key), key, run_fields[key])})
        else:
            raise PgolfError(f"unknown setting {key!r}; `pgolf train --dry-run` lists them all")
    return config


def _as_json_values(data: dict[str, Any]) -> dict[str, Any]:
    """The dict as JSON gives it back (tuples become lists), so a config compares equal to its file."""
    return json.loads(json.dumps(data))


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    return _as_json_values(dataclasses.asdict(config))


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    if not isinstance(data, dict):
        raise PgolfError(f"a model config must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise PgolfError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
    return ModelConfig(**data)


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return _as_json_values(dataclasses.asdict(config))


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    if not isinstance(data, dict):
        raise PgolfError(f"a run config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    model = model_config_from_dict(data.pop("model", {}))
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(data) - known
    if unknown:
        raise PgolfError(f"run config has unknown fields: {', '.join(sorted(unknown))}")
    return RunConfig(model=model, **data)


def run_config_to_json(config: RunConfig) -> str:
    return json.dumps(run_config_to_dict(config), indent=2, sort_keys=True)

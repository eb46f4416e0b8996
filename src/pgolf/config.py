"""Configuration: the model config, the run config, presets and overrides.

Two frozen dataclasses. `ModelConfig` is everything needed to rebuild the
network (it travels inside the artifact); `RunConfig` is everything else
(data, batch, optimiser, schedule, averaging, quantisation, evaluation).
Presets are plain functions returning a `RunConfig`; overrides
(`--set key=value`) are applied in one place, `apply_overrides`.
"""

from __future__ import annotations

import dataclasses
import json
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

    def validate(self) -> None:
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


RUNTIME_CHOICES = {"autocast_dtype": ("auto", "bf16", "fp32"), "compile": ("auto", "on", "off"),
                   "device": ("auto", "cpu", "cuda"), "code_packing": ("plain", "lzma")}


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
    # stochastic weight averaging
    swa_enabled: bool = True
    swa_every: int = 200
    swa_start_lr_mult: float = 0.5
    # artifact
    quant_scheme: str = "pr198"  # name in pgolf.quant.SCHEMES
    code_packing: str = "lzma"  # the exported train_gpt.py (the counted code): "lzma" self-extracting, or "plain"
    # evaluation
    eval_seq_len: int = 2048
    eval_stride: int = 64  # == eval_seq_len means plain (non-overlapping) scoring
    eval_batch_seqs: int = 32
    val_every: int = 1000  # 0 = only at the end
    val_max_tokens: int = 0  # periodic validation on a prefix; 0 = the whole split
    # logging and runtime
    log_every: int = 100
    checkpoint_every: int = 0
    device: str = "auto"  # auto | cpu | cuda
    autocast_dtype: str = "auto"  # auto | bf16 | fp32
    compile: str = "auto"  # auto | on | off

    def validate(self) -> None:
        self.model.validate()
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
    model = ModelConfig(num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=3,
                        bigram_buckets=1024, bigram_dim=32, rope_reference_len=128)
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
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {"pr198": pr198, "baseline": baseline, "tiny": tiny}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise PgolfError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# ---------------------------------------------------------------- overrides and (de)serialisation


def _parse_value(text: str, current: Any, key: str) -> Any:
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
            return float(text)
    except ValueError:
        raise PgolfError(f"--set {key}: expected a {type(current).__name__}, got {text!r}") from None
    return text


def apply_overrides(config: RunConfig, assignments: list[str]) -> RunConfig:
    """Apply `key=value` strings; model fields are addressed as `model.field` or by bare name."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"model"}
    for assignment in assignments:
        if "=" not in assignment:
            raise PgolfError(f"--set expects key=value, got {assignment!r}")
        key, text = assignment.split("=", 1)
        key = key.strip()
        bare = key.removeprefix("model.")
        if key.startswith("model.") or (bare in model_fields and bare not in run_fields):
            if bare not in model_fields:
                raise PgolfError(f"unknown model setting {key!r}")
            value = _parse_value(text, getattr(config.model, bare), key)
            config = replace(config, model=replace(config.model, **{bare: value}))
        elif key in run_fields:
            config = replace(config, **{key: _parse_value(text, getattr(config, key), key)})
        else:
            raise PgolfError(f"unknown setting {key!r}; `pgolf train --dry-run` lists them all")
    return config


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(data) - known
    if unknown:
        raise PgolfError(f"model config has unknown fields: {', '.join(sorted(unknown))}")
    return ModelConfig(**data)


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    data = dict(data)
    model = model_config_from_dict(data.pop("model", {}))
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = set(data) - known
    if unknown:
        raise PgolfError(f"run config has unknown fields: {', '.join(sorted(unknown))}")
    return RunConfig(model=model, **data)


def run_config_to_json(config: RunConfig) -> str:
    return json.dumps(run_config_to_dict(config), indent=2, sort_keys=True)

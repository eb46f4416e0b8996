"""Building a training run from a resolved config: data, model, optimisers, precision, progress.

`prepare` finds the dataset and tokenizer and loads what evaluation needs;
`build_trainer` constructs the model (compiled and DDP-wrapped as the device
allows), the optimisers, the token stream and the weight averager.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf.accounting import BUDGET_BYTES, predict_model_bytes
from pgolf.attention import attention_backend_name
from pgolf.averaging import WeightAverager
from pgolf.config import RunConfig
from pgolf.data.shards import find_tokenizer, list_shards, load_val_bytes, load_val_tokens, resolve_dataset_dir
from pgolf.data.stream import TokenStream
from pgolf.data.tokenizer import sha256_file
from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.evaluate import evaluate, truncate_val_tokens
from pgolf.machine import describe_machine
from pgolf.metric import ByteTables, byte_tables_from_sentencepiece
from pgolf.model import GPT, num_parameters
from pgolf.optim import build_optimizers
from pgolf.progress import progress_bar
from pgolf.quant import SCHEMES

DEFAULT_DATA_DIR = "data/datasets/fineweb10B_sp1024"


@dataclass
class RunData:
    dataset_dir: Path
    tokenizer_path: Path
    tokenizer_sha256: str
    tables: ByteTables | None  # None when the dataset has a byte sidecar: bytes are never counted from tables then
    val_tokens: torch.Tensor  # (N,) int64: the val split cut to a multiple of eval_seq_len plus one token
    train_files: list[Path]
    val_bytes: torch.Tensor | None = None  # (N,) int32: the byte sidecar, cut like val_tokens


@dataclass
class TrainState:
    step: int = 0
    train_seconds: float = 0.0  # training time only: warm-up, validation and checkpoints excluded
    train_tokens: int = 0


@dataclass
class Trainer:
    config: RunConfig
    dist: DistInfo
    base_model: GPT
    model: torch.nn.Module  # compiled and/or DDP-wrapped view of base_model
    optimizers: list
    stream: TokenStream
    averager: WeightAverager
    autocast: Callable[[], contextlib.AbstractContextManager]
    grad_accum_steps: int
    quiet: bool = False
    state: TrainState = field(default_factory=TrainState)


def prepare(config: RunConfig) -> RunData:
    """Locate the dataset and tokenizer; load the val split and byte tables. Errors say what is missing."""
    data_dir = config.data_dir or DEFAULT_DATA_DIR
    if not Path(data_dir).exists():
        hint = ("run `pgolf data fetch --variant sp1024 --train-shards 80` (official FineWeb export) "
                "or `pgolf data build --input FILE --out DIR --vocab-size 1024` and pass --data DIR")
        raise PgolfError(f"dataset folder {data_dir} does not exist; {hint}")
    dataset_dir = resolve_dataset_dir(data_dir)
    tokenizer_path = Path(config.tokenizer_path) if config.tokenizer_path else find_tokenizer(dataset_dir)
    tables = byte_tables_from_sentencepiece(tokenizer_path)
    if len(tables.base_bytes) != config.model.vocab_size:
        raise PgolfError(f"tokenizer {tokenizer_path} has {len(tables.base_bytes)} pieces but the model's "
                         f"vocab_size is {config.model.vocab_size}; pass --set vocab_size=...")
    train_files = list_shards(dataset_dir, "train")
    if not train_files:
        raise PgolfError(f"no train shards (fineweb_train_*.bin) in {dataset_dir}")
    val_tokens = load_val_tokens(dataset_dir)
    val_bytes = load_val_bytes(dataset_dir, val_tokens.numpy())
    val_tokens = truncate_val_tokens(val_tokens, config.eval_seq_len)
    return RunData(dataset_dir=dataset_dir, tokenizer_path=tokenizer_path,
                   tokenizer_sha256=sha256_file(tokenizer_path), tables=None if val_bytes is not None else tables,
                   val_tokens=val_tokens, train_files=train_files,
                   val_bytes=None if val_bytes is None else torch.from_numpy(val_bytes[:val_tokens.numel()]))


def autocast_dtype(config: RunConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA and on CPU (AMX makes bf16 matmuls ~4x faster); fp32 when asked."""
    if config.autocast_dtype == "fp32":
        return None
    return torch.bfloat16


def autocast_context(dtype: torch.dtype | None, device: torch.device) -> Callable:
    if dtype is None:
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=dtype)


def should_compile(setting: str, device: torch.device) -> bool:
    """`setting` is "auto", "on" or "off". Auto compiles on GPU, and on CPU where a C++ compiler exists
    for inductor's kernels: `pgolf bench train` measured bf16 + compile fastest on CPU too."""
    if setting == "auto":
        return device.type == "cuda" or any(shutil.which(name) for name in ("g++", "clang++", "c++"))
    return setting == "on"


def build_trainer(config: RunConfig, dist: DistInfo, run: RunData, quiet: bool = False) -> Trainer:
    torch.manual_seed(config.seed)
    base_model = GPT(config.model).to(dist.device)
    model: torch.nn.Module = base_model
    if should_compile(config.compile, dist.device):
        model = torch.compile(base_model, dynamic=False)
    if dist.is_distributed:
        model = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                                        broadcast_buffers=False)
    dtype = autocast_dtype(config, dist.device)
    if dist.device.type == "cpu" and dtype == torch.bfloat16:
        prepare_cpu_attention(announce=dist.is_main and not quiet)
    return Trainer(
        config=config, dist=dist, base_model=base_model, model=model,
        optimizers=build_optimizers(base_model, config, dist),
        stream=TokenStream(run.train_files),
        averager=WeightAverager(config),
        autocast=autocast_context(dtype, dist.device),
        grad_accum_steps=config.grad_accum_steps(dist.world_size),
        quiet=quiet,
    )


def describe(trainer: Trainer, run: RunData) -> dict[str, Any]:
    config = trainer.config
    return {
        "parameters": num_parameters(trainer.base_model),
        "machine": describe_machine(trainer.dist.device),
        "attention_backend": attention_backend_name(trainer.dist.device),
        **cpu_kernel_note(trainer),
        "grad_accum_steps": trainer.grad_accum_steps,
        "autocast": "fp32" if autocast_dtype(config, trainer.dist.device) is None else "bf16",
        "compiled": should_compile(config.compile, trainer.dist.device),
        "dataset": str(run.dataset_dir),
        "train_shards": len(run.train_files),
        "val_tokens": int(run.val_tokens.numel()),
        "val_byte_counts": "sidecar" if run.val_bytes is not None else "lut",
        "tokenizer_sha256": run.tokenizer_sha256[:16],
        "predicted_model_bytes": predict_model_bytes(config.model, SCHEMES[config.quant_scheme]),
    }


NOT_BUNDLED = "pgolf.kernels is not part of this bundle"


def _cpu_attention_module():
    """pgolf.kernels.cpu_attention, or None where it is not shipped (the exported single-file bundle)."""
    try:
        from pgolf.kernels import cpu_attention
    except ImportError:
        return None
    return cpu_attention


def prepare_cpu_attention(announce: bool) -> str | None:
    """Load pgolf's AMX attention kernels for bf16 CPU training; None when in use, else why not."""
    module = _cpu_attention_module()
    if module is None:
        return NOT_BUNDLED
    if module.attempted():
        return module.unavailable_reason()
    if announce:
        print("CPU attention: loading pgolf's AMX kernels (compiled on first use, ~20 s)", flush=True)
    reason = module.prepare()  # on failure training keeps SDPA
    if reason and announce:
        print(f"CPU attention: PyTorch's SDPA ({reason})", flush=True)
    return reason


def cpu_kernel_note(trainer: Trainer) -> dict[str, str]:
    """Why a bf16 CPU run trains without pgolf's AMX attention kernels (nothing when it has them)."""
    if trainer.dist.device.type != "cpu" or autocast_dtype(trainer.config, trainer.dist.device) is None:
        return {}
    module = _cpu_attention_module()
    reason = NOT_BUNDLED if module is None else module.unavailable_reason()
    return {"amx_attention_unavailable": reason} if reason else {}


def budget_warning(config: RunConfig, bytes_code: int) -> str | None:
    """A warning line when the artifact predicted from the config alone will not fit the budget."""
    predicted = predict_model_bytes(config.model, SCHEMES[config.quant_scheme]) + bytes_code
    if predicted <= BUDGET_BYTES:
        return None
    return (f"warning: predicted artifact {predicted:,} bytes (model + code) exceeds the {BUDGET_BYTES:,}-byte "
            "budget; this run will not be submittable as configured")


# A micro-step that fits a CPU's memory: pr198 held ~3 GiB resident at 4 x 2048 tokens per micro-step
# and 9.4 GiB at 16 x 2048 in bf16+compile (docs/performance.md); its GPU micro-step, 48 x 2048, does
# not fit a 24 GiB machine. `pgolf bench train` caps its CPU default here too.
CPU_MICRO_TOKENS = 8192


def cpu_memory_warning(config: RunConfig, device: torch.device) -> str | None:
    """A warning line when a CPU run's micro-step is larger than CPU_MICRO_TOKENS, with a smaller setting
    that keeps the global batch (through more accumulation steps)."""
    if device.type != "cpu" or config.micro_batch_tokens <= CPU_MICRO_TOKENS:
        return None
    fitting = [tokens for tokens in range(config.train_seq_len, CPU_MICRO_TOKENS + 1, config.train_seq_len)
               if config.global_batch_tokens % tokens == 0]
    hint = f"; --set micro_batch_tokens={max(fitting)} keeps the batch through accumulation" if fitting else ""
    return (f"warning: {config.micro_batch_tokens:,} tokens per micro-step on CPU can need tens of GiB "
            f"(pr198 held 9.4 GiB at 32,768){hint}")


def evaluation_model(trainer: Trainer) -> torch.nn.Module:
    """The compiled model when there is one (evaluation shapes are fixed), never the DDP wrapper."""
    model = trainer.model
    return model.module if isinstance(model, DistributedDataParallel) else model


def validate(trainer: Trainer, run: RunData, max_tokens: int = 0, model: torch.nn.Module | None = None,
             stride: int | None = None, desc: str = "val") -> dict[str, float]:
    """Evaluate on the val split (or its first `max_tokens` tokens); returns val_loss, val_bpb and counts."""
    config = trainer.config
    tokens = run.val_tokens if max_tokens <= 0 else run.val_tokens[: max_tokens + 1]
    val_bytes = None if run.val_bytes is None else run.val_bytes[: tokens.numel()]
    stride = config.eval_seq_len if stride is None else stride
    dtype = autocast_dtype(config, trainer.dist.device)
    with progress_bar(total=None, desc=desc, unit="window",
                      enabled=None if trainer.dist.is_main and not trainer.quiet else False) as bar:
        result = evaluate(model if model is not None else evaluation_model(trainer), tokens, run.tables,
                          seq_len=config.eval_seq_len, stride=stride, batch_seqs=config.eval_batch_seqs,
                          dist=trainer.dist, autocast_dtype=dtype, progress=bar.advance_to, val_bytes=val_bytes)
    return {"val_loss": result.loss, "val_bpb": result.bpb, "val_tokens_scored": result.tokens,
            "val_bytes_scored": result.bytes, "eval_seconds": result.seconds}


def training_progress(config: RunConfig, state: TrainState, dist: DistInfo, quiet: bool):
    """A bar over steps, or over training seconds when the wall clock ends the run (ETA that means it)."""
    if not dist.is_main or quiet:
        return None
    if config.max_wallclock_seconds > 0:
        bar = progress_bar(total=round(config.max_wallclock_seconds), desc="train", unit="s")
        bar.update(state.train_seconds)
    else:
        bar = progress_bar(total=config.iterations, desc="train", unit="step")
        bar.update(state.step)
    return bar

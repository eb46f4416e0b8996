"""Building the parts of a training run from a resolved config: data, model, precision, checks.

Every function here builds or checks one thing and returns it; `pgolf.train`
puts them together in order (config -> data -> model -> optimisers) and owns
the run. Nothing here imports the training loop or the run's finish.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf.attention import attention_backend_name
from pgolf.challenge import BUDGET_BYTES
from pgolf.config import RunConfig
from pgolf.data.shards import find_tokenizer, list_shards, resolve_dataset_dir
from pgolf.data.tokenizer import sha256_file
from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.machine import describe_machine
from pgolf.model import GPT, num_parameters
from pgolf.calibrated import get_any_scheme
from pgolf.compressors import missing_package
from pgolf.runtime import autocast_dtype, compiled, should_compile
from pgolf.scoring import ValData, dataset_tokenizer, load_val_data

DEFAULT_DATA_DIR = "data/datasets/fineweb10B_sp1024"


@dataclass
class RunData:
    val: ValData
    train_files: list[Path]
    tokenizer_is_the_datasets: bool  # False: the config named another tokenizer, and allowed it


def load_run_data(config: RunConfig) -> RunData:
    """Locate the dataset and its tokenizer; load the val split and byte tables. Errors say what is missing."""
    data_dir = config.data_dir or DEFAULT_DATA_DIR
    if not Path(data_dir).exists():
        hint = ("run `pgolf data fetch --variant sp1024 --train-shards 80` (official FineWeb export) "
                "or `pgolf data build --input FILE --out DIR --vocab-size 1024` and pass --data DIR")
        raise PgolfError(f"dataset folder {data_dir} does not exist; {hint}")
    dataset_dir = resolve_dataset_dir(data_dir)
    own_tokenizer = _own_tokenizer(dataset_dir) if config.tokenizer_path else find_tokenizer(dataset_dir)
    tokenizer_path = dataset_tokenizer(dataset_dir, config.tokenizer_path)
    same = own_tokenizer is None or sha256_file(own_tokenizer) == sha256_file(tokenizer_path)
    if not same and not config.allow_foreign_tokenizer:
        raise PgolfError(f"tokenizer {tokenizer_path} is not the dataset's ({own_tokenizer}): its byte counts "
                         "would score the wrong text; pass --set allow_foreign_tokenizer=true if you mean it")
    train_files = list_shards(dataset_dir, "train")
    if not train_files:
        raise PgolfError(f"no train shards (fineweb_train_*.bin) in {dataset_dir}")
    val = load_val_data(dataset_dir, config.eval_seq_len, tokenizer_path, vocab_size=config.model.vocab_size)
    return RunData(val=val, train_files=train_files, tokenizer_is_the_datasets=same)


def _own_tokenizer(dataset_dir: Path) -> Path | None:
    try:
        return find_tokenizer(dataset_dir)
    except PgolfError:  # a dataset without a tokenizer of its own: nothing to compare with
        return None


def build_model(config: RunConfig, dist: DistInfo) -> tuple[GPT, torch.nn.Module]:
    """(the network, the view that trains it: compiled as the device allows, DDP-wrapped with several ranks).
    Initialised from `config.seed`."""
    torch.manual_seed(config.seed)
    base_model = GPT(config.model).to(dist.device)
    model = compiled(base_model, config.compile, dist.device)
    if dist.is_distributed:
        model = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                                        broadcast_buffers=False)
    return base_model, model


def evaluation_model(model: torch.nn.Module) -> torch.nn.Module:
    """The compiled model when there is one (evaluation shapes are fixed), never the DDP wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


# ---------------------------------------------------------------- before the first step


def describe(config: RunConfig, dist: DistInfo, base_model: GPT, data: RunData, grad_accum_steps: int,
             predicted_model_bytes: int) -> dict[str, Any]:
    """The run log's second header line: what this run is made of."""
    return {
        "parameters": num_parameters(base_model),
        "machine": describe_machine(dist.device),
        "attention_backend": attention_backend_name(dist.device),
        "grad_accum_steps": grad_accum_steps,
        "autocast": "fp32" if autocast_dtype(config.autocast_dtype) is None else "bf16",
        "compiled": should_compile(config.compile, dist.device),
        "dataset": str(data.val.dataset_dir),
        "train_shards": len(data.train_files),
        "val_tokens": int(data.val.tokens.numel()),
        "val_byte_counts": "sidecar" if data.val.val_bytes is not None else "lut",
        "tokenizer_sha256": data.val.tokenizer_sha256[:16],
        "predicted_model_bytes": predicted_model_bytes,
    }


def budget_warning(predicted_total_bytes: int) -> str | None:
    """A warning line when the artifact predicted from the config alone will not fit the budget."""
    if predicted_total_bytes <= BUDGET_BYTES:
        return None
    return (f"warning: predicted artifact {predicted_total_bytes:,} bytes (model + code) exceeds the "
            f"{BUDGET_BYTES:,}-byte budget; this run will not be submittable as configured")


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


SDPA_MAX_ROW = 16_384  # the longest packed row SDPA's (T, T) boolean mask serves (256 MiB)


def preflight_problems(config: RunConfig, run_dir: Path | None, bytes_needed: int,
                       device: torch.device = torch.device("cpu")) -> list[str]:
    """What would make the end of the run fail, checked before the compile warm-up on every rank: the
    compressor of the quantisation scheme, write access to the run folder, and free disk for the
    artifact (and checkpoints). Empty when all is well."""
    problems = []
    if importlib.util.find_spec("tqdm") is None:
        problems.append("the package 'tqdm' is not installed (progress bars; pip install tqdm)")
    if config.packed_rows and attention_backend_name(device) != "fa3" and config.micro_batch_tokens > SDPA_MAX_ROW:
        gib = config.micro_batch_tokens ** 2 / 2**30
        problems.append(f"a packed row of {config.micro_batch_tokens:,} tokens needs FlashAttention 3's varlen "
                        f"kernel; SDPA's dense mask alone would take {gib:.1f} GiB (set packed_rows=false or a "
                        f"micro_batch_tokens of at most {SDPA_MAX_ROW:,})")
    compressor = get_any_scheme(config.quant_scheme).compressor
    package = missing_package(compressor)
    if package:
        problems.append(f"scheme {config.quant_scheme!r} compresses with {compressor}, but the package "
                        f"{package!r} is not installed (pip install {package})")
    if run_dir is not None:
        probe = Path(run_dir) / ".pgolf-write-test"
        try:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            problems.append(f"cannot write to the run folder {run_dir}: {error.strerror or error}")
        else:
            free = shutil.disk_usage(run_dir).free
            if free < bytes_needed:
                problems.append(f"{run_dir} has {free:,} bytes free; the artifact and checkpoints need about "
                                f"{bytes_needed:,}")
    return problems

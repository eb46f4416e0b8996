"""Scoring a model on the val split: what `pgolf eval` and the end of a training run share.

`load_val_data` opens a dataset's val split with the byte tables of its
tokenizer, or with its byte sidecar when it has one (then bytes are never
counted from the tables: `tables` is None); `model_from_artifact` rebuilds the shipped network from a `.pgolf`
file; `score` runs an eval procedure (sliding window by default, `pgolf.procedures`)
over the split (or a prefix) and returns the numbers a run reports. Nothing here imports training code: scoring an
artifact needs only the artifact, the tokenizer and the val shards.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf.artifact import LoadedArtifact
from pgolf.data.shards import find_tokenizer, load_val_bytes, load_val_tokens, resolve_dataset_dir
from pgolf.data.tokenizer import sha256_file
from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.evaluate import Procedure, SlidingProcedure, run_procedure, truncate_val_tokens
from pgolf.metric import ByteTables, byte_tables_from_sentencepiece
from pgolf.model import GPT
from pgolf.progress import progress_bar
from pgolf.runtime import compiled


@dataclass
class ValData:
    """A dataset's val split, ready to score."""

    dataset_dir: Path
    tokenizer_path: Path
    tokenizer_sha256: str
    tables: ByteTables | None  # None when the dataset has a byte sidecar
    tokens: torch.Tensor  # (N,) the split cut to a multiple of the eval length plus one token
    val_bytes: torch.Tensor | None = None  # (N,) int32: the byte sidecar, cut like `tokens`


def load_val_data(data_dir, seq_len: int, tokenizer_path=None, vocab_size: int | None = None) -> ValData:
    """The val split of `data_dir` cut for windows of `seq_len`, and the byte tables of its tokenizer
    (the dataset's own unless `tokenizer_path` is given). `vocab_size`, when given, must match."""
    dataset_dir = resolve_dataset_dir(data_dir)
    tokenizer_path = dataset_tokenizer(dataset_dir, tokenizer_path)
    tables = byte_tables_from_sentencepiece(tokenizer_path)
    if vocab_size is not None and tables.vocab_size != vocab_size:
        raise PgolfError(f"tokenizer {tokenizer_path} has {tables.vocab_size} pieces but the model's "
                         f"vocab_size is {vocab_size}; pass --set vocab_size=...")
    tokens = load_val_tokens(dataset_dir)
    val_bytes = load_val_bytes(dataset_dir, tokens.numpy())  # checked: one per token, 0 at bos, the manifest's sum
    tokens = truncate_val_tokens(tokens, seq_len)
    return ValData(dataset_dir=dataset_dir, tokenizer_path=tokenizer_path,
                   tokenizer_sha256=sha256_file(tokenizer_path), tables=tables if val_bytes is None else None,
                   tokens=tokens, val_bytes=None if val_bytes is None else torch.from_numpy(val_bytes[:tokens.numel()]))


def dataset_tokenizer(data_dir, tokenizer_path=None) -> Path:
    """The tokenizer that scores a dataset: `tokenizer_path` when given, else the dataset's own."""
    return Path(tokenizer_path) if tokenizer_path else find_tokenizer(resolve_dataset_dir(data_dir))


def check_artifact_tokenizer(loaded: LoadedArtifact, tokenizer_path: Path) -> None:
    """Refuse to score an artifact with a tokenizer other than the one it was trained with."""
    recorded = loaded.meta.get("tokenizer_sha256")
    actual = sha256_file(tokenizer_path)
    if recorded and recorded != actual:
        raise PgolfError(f"tokenizer {tokenizer_path} (sha256 {actual[:16]}...) is not the one this artifact "
                         f"was trained with (sha256 {recorded[:16]}...); scores would be meaningless")


def model_from_artifact(loaded: LoadedArtifact, device: torch.device, compile_setting: str) -> torch.nn.Module:
    """A fresh network holding the artifact's dequantised weights, compiled as training's was, so that
    `pgolf eval` reproduces the score `pgolf train` reported."""
    model = GPT(loaded.model_config).to(device)
    model.load_state_dict(loaded.state_dict, strict=True)
    return compiled(model, compile_setting, device)


def score(model: torch.nn.Module, val: ValData, seq_len: int, stride: int, batch_seqs: int, dist: DistInfo,
          autocast_dtype: torch.dtype | None, max_tokens: int = 0, desc: str = "val",
          show_progress: bool = True, procedure: Procedure | None = None) -> dict[str, float]:
    """Evaluate on the val split (or its first `max_tokens` targets); val_loss, val_bpb and counts.

    `procedure` (`pgolf.procedures.procedure_from_config`) chooses how; None is the sliding window
    of `seq_len` every `stride` tokens (plain when they are equal), which the other arguments set.
    """
    tokens = val.tokens if max_tokens <= 0 else val.tokens[: max_tokens + 1]
    val_bytes = None if val.val_bytes is None else val.val_bytes[: tokens.numel()]
    if procedure is None:
        procedure = SlidingProcedure(seq_len, stride, batch_seqs, autocast_dtype)
    with progress_bar(total=None, desc=desc, unit="window" if isinstance(procedure, SlidingProcedure) else "batch",
                      enabled=None if dist.is_main and show_progress else False) as bar:
        result = run_procedure(procedure, model, tokens, val.tables, dist, progress=bar.advance_to,
                               val_bytes=val_bytes)
    return {"val_loss": result.loss, "val_bpb": result.bpb, "val_tokens_scored": result.tokens,
            "val_bytes_scored": result.bytes, "eval_seconds": result.seconds}

"""`pgolf eval ARTIFACT --data DIR`: score an artifact with only the artifact, the tokenizer and the val shards."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pgolf.errors import PgolfError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="score an artifact on the validation split",
                                   description="Rebuild the model from a .pgolf artifact and evaluate it "
                                               "(sliding window by default).")
    parser.add_argument("artifact", help="a .pgolf file")
    parser.add_argument("--data", required=True, help="dataset folder holding the val shards")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: the dataset's)")
    parser.add_argument("--seq-len", type=int, default=2048, help="evaluation window (default 2048)")
    parser.add_argument("--stride", type=int, default=64,
                        help="sliding-window stride (default 64; equal to --seq-len for plain evaluation)")
    parser.add_argument("--batch-seqs", type=int, default=32, help="windows per forward pass")
    parser.add_argument("--max-tokens", type=int, default=0, help="score only the first N val tokens (0 = all)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile the model (auto: as `pgolf train` does; needed to reproduce its "
                             "bf16 score to the last digit)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from pgolf.artifact import load_artifact
    from pgolf.data.shards import find_tokenizer, load_val_bytes, load_val_tokens, resolve_dataset_dir
    from pgolf.data.tokenizer import sha256_file
    from pgolf.distributed import cleanup_distributed, init_distributed
    from pgolf.evaluate import evaluate, truncate_val_tokens
    from pgolf.metric import byte_tables_from_sentencepiece
    from pgolf.finalize import model_from_artifact
    from pgolf.progress import progress_bar

    if args.stride < 1 or args.stride > args.seq_len:
        raise PgolfError(f"--stride must be between 1 and --seq-len ({args.seq_len}), got {args.stride}")
    loaded = load_artifact(Path(args.artifact))
    dataset_dir = resolve_dataset_dir(args.data)
    tokenizer_path = Path(args.tokenizer) if args.tokenizer else find_tokenizer(dataset_dir)
    recorded = loaded.meta.get("tokenizer_sha256")
    actual = sha256_file(tokenizer_path)
    if recorded and recorded != actual:
        raise PgolfError(f"tokenizer {tokenizer_path} (sha256 {actual[:16]}...) is not the one this artifact was "
                         f"trained with (sha256 {recorded[:16]}...); scores would be meaningless")
    val_tokens = load_val_tokens(dataset_dir)
    val_bytes = load_val_bytes(dataset_dir, val_tokens.numpy())  # with a sidecar, bytes never come from tables
    tables = byte_tables_from_sentencepiece(tokenizer_path) if val_bytes is None else None
    val_tokens = truncate_val_tokens(val_tokens, args.seq_len)
    if args.max_tokens > 0:
        val_tokens = val_tokens[: args.max_tokens + 1]
    if val_bytes is not None:
        val_bytes = torch.from_numpy(val_bytes[: val_tokens.numel()])

    dist = init_distributed(args.device)
    try:
        model = model_from_artifact(loaded, dist.device, args.compile)
        started = time.perf_counter()
        with progress_bar(total=None, desc="eval", unit="window",
                          enabled=None if dist.is_main and not (args.quiet or args.json) else False) as bar:
            result = evaluate(model, val_tokens, tables, seq_len=args.seq_len, stride=args.stride,
                              batch_seqs=args.batch_seqs, dist=dist,
                              autocast_dtype=None if args.fp32 else torch.bfloat16, progress=bar.advance_to,
                              val_bytes=val_bytes)
        wall = time.perf_counter() - started
    finally:
        cleanup_distributed()
    from pgolf.verify.eval_budget import predict_eval_seconds
    from pgolf.verify.split_checks import OFFICIAL_SP1024_VAL_TOKENS

    report_fields = {
        "artifact": str(args.artifact), "val_loss": result.loss, "val_bpb": result.bpb,
        "tokens_scored": result.tokens, "bytes_scored": result.bytes, "seq_len": args.seq_len,
        "stride": args.stride, "seconds": wall, "device": str(dist.device), "world_size": dist.world_size,
        # the official split, scored the same way, predicted from the reference's measured eval pace
        "predicted_seconds_8xh100_full_val": predict_eval_seconds(loaded.model_config, OFFICIAL_SP1024_VAL_TOKENS,
                                                                  args.seq_len, args.stride),
    }
    if dist.is_main:
        if args.json:
            print(json.dumps(report_fields, indent=2))
        else:
            for key, value in report_fields.items():
                print(f"{key}:{value:.8f}" if isinstance(value, float) else f"{key}:{value}")
    return 0

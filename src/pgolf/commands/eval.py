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
    # scoring only: this command never imports the optimiser, schedule, averaging or training modules
    from pgolf.artifact import load_artifact
    from pgolf.challenge import OFFICIAL_SP1024_VAL_TOKENS
    from pgolf.distributed import cleanup_distributed, init_distributed
    from pgolf.runtime import autocast_dtype
    from pgolf.scoring import check_artifact_tokenizer, dataset_tokenizer, load_val_data, model_from_artifact, score
    from pgolf.verify.eval_budget import predict_eval_seconds

    if args.stride < 1 or args.stride > args.seq_len:
        raise PgolfError(f"--stride must be between 1 and --seq-len ({args.seq_len}), got {args.stride}")
    loaded = load_artifact(Path(args.artifact))
    tokenizer_path = dataset_tokenizer(args.data, args.tokenizer)
    check_artifact_tokenizer(loaded, tokenizer_path)
    val = load_val_data(args.data, args.seq_len, tokenizer_path=tokenizer_path)
    dist = init_distributed(args.device)
    try:
        model = model_from_artifact(loaded, dist.device, args.compile)
        started = time.perf_counter()
        result = score(model, val, args.seq_len, args.stride, args.batch_seqs, dist,
                       autocast_dtype("fp32" if args.fp32 else "bf16"), max_tokens=args.max_tokens, desc="eval",
                       show_progress=not (args.quiet or args.json))
        wall = time.perf_counter() - started
    finally:
        cleanup_distributed()
    report_fields = {
        "artifact": str(args.artifact), "val_loss": result["val_loss"], "val_bpb": result["val_bpb"],
        "tokens_scored": result["val_tokens_scored"], "bytes_scored": result["val_bytes_scored"],
        "seq_len": args.seq_len, "stride": args.stride, "seconds": wall, "device": str(dist.device),
        "world_size": dist.world_size,
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

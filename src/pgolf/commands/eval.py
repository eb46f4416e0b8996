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
    parser.add_argument("--procedure", choices=("sliding", "plain", "ttt"), default=None,
                        help="how to score (default sliding, or the --config's eval_procedure): sliding windows, "
                             "plain non-overlapping windows of --seq-len, or score-first LoRA TTT (ttt_* settings)")
    parser.add_argument("--tilt", action="store_true", help="add the token n-gram tilt (tilt_* settings)")
    parser.add_argument("--config", metavar="CONFIG_JSON",
                        help="a run's config.json: its eval_procedure and ttt_*/tilt_* settings (default: pgolf's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="change a ttt_*/tilt_* setting, e.g. --set ttt_lr=0 (repeatable)")
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
    procedure_config = eval_settings(args)
    loaded = load_artifact(Path(args.artifact))
    tokenizer_path = dataset_tokenizer(args.data, args.tokenizer)
    check_artifact_tokenizer(loaded, tokenizer_path)
    val = load_val_data(args.data, args.seq_len, tokenizer_path=tokenizer_path)
    dist = init_distributed(args.device)
    try:
        model = model_from_artifact(loaded, dist.device, args.compile)
        started = time.perf_counter()
        precision = autocast_dtype("fp32" if args.fp32 else "bf16")
        procedure = None
        if procedure_config is not None:
            from pgolf.procedures import procedure_from_config

            procedure = procedure_from_config(procedure_config, precision=precision)
        result = score(model, val, args.seq_len, args.stride, args.batch_seqs, dist, precision,
                       max_tokens=args.max_tokens, desc="eval", show_progress=not (args.quiet or args.json),
                       procedure=procedure)
        wall = time.perf_counter() - started
    finally:
        cleanup_distributed()
    report_name = "sliding" if procedure is None else procedure.name
    report_fields = {
        "artifact": str(args.artifact), "val_loss": result["val_loss"], "val_bpb": result["val_bpb"],
        "tokens_scored": result["val_tokens_scored"], "bytes_scored": result["val_bytes_scored"],
        "procedure": report_name, "tilt": bool(args.tilt),
        "seq_len": args.seq_len, "stride": args.stride, "seconds": wall, "device": str(dist.device),
        "world_size": dist.world_size,
        **{f"ttt_{key}": value for key, value in getattr(procedure, "timings", {}).items()},
        # the official split, scored the same way, predicted from the reference's measured eval pace (windowed
        # procedures only: TTT's time is measured, `pgolf verify --eval-compliance`)
        "predicted_seconds_8xh100_full_val": None if report_name == "ttt" else predict_eval_seconds(
            loaded.model_config, OFFICIAL_SP1024_VAL_TOKENS, args.seq_len,
            args.seq_len if report_name == "plain" else args.stride),
    }
    if dist.is_main:
        if args.json:
            print(json.dumps(report_fields, indent=2))
        else:
            for key, value in report_fields.items():
                print(f"{key}:{value:.8f}" if isinstance(value, float) else f"{key}:{value}")
    return 0


def eval_settings(args: argparse.Namespace):
    """The RunConfig whose eval fields choose the procedure, or None for the plain/sliding default of
    --seq-len/--stride (the command's behaviour without --procedure, --tilt, --config or --set)."""
    if args.procedure is None and not (args.tilt or args.config or args.overrides):
        return None
    from pgolf.procedures import eval_config

    # without a run config the command's default stays sliding; with one, its eval_procedure
    return eval_config(args.config, args.overrides, procedure=args.procedure or (None if args.config else "sliding"),
                       tilt=args.tilt, eval_seq_len=args.seq_len, eval_stride=args.stride,
                       eval_batch_seqs=args.batch_seqs)

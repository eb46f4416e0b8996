"""`pgolf data fetch | build | check`: get, make and validate challenge datasets."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="fetch, build or check a dataset")
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    fetch = commands.add_parser("fetch", help="download the official export from the Hugging Face Hub")
    fetch.add_argument("--variant", default="sp1024",
                       help="tokenizer variant: sp1024 (default), byte260, sp512, sp2048, sp4096 from the official "
                            "export, or sp8192-caseops (the frontier's CaseOps export, with its byte sidecar)")
    fetch.add_argument("--train-shards", type=int, required=True, help="how many train shards to fetch (val is always whole)")
    fetch.add_argument("--dest", default="data", help="destination folder (default ./data)")
    fetch.add_argument("--revision", default=None, help="repo revision (branch, tag or commit)")
    fetch.add_argument("--endpoint", default=None, help="Hub endpoint (default: $HF_ENDPOINT or huggingface.co)")
    fetch.set_defaults(func=_fetch)

    build = commands.add_parser("build", help="tokenise .txt/.jsonl text into challenge shards")
    build.add_argument("--input", nargs="+", required=True, metavar="FILE", help=".txt (blank-line separated) or .jsonl")
    build.add_argument("--out", required=True, help="output dataset folder")
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", help="an existing SentencePiece .model")
    source.add_argument("--vocab-size", type=int, help="train a BPE tokenizer of this size with the official settings")
    build.add_argument("--val-docs", type=int, default=50_000, help="first N documents form the val split (default 50000)")
    build.add_argument("--tokens-per-shard", type=int, default=100_000_000)
    build.add_argument("--one-doc-per-file", action="store_true", help="each .txt file is one document")
    build.add_argument("--workers", type=int, default=1, help="encoding processes")
    build.add_argument("--max-sample-bytes", type=int, default=200_000_000, help="text used to train the tokenizer")
    build.add_argument("--overwrite", action="store_true",
                       help="delete the shards and manifest of another build in --out first (never mixed)")
    build.add_argument("--caseops", action="store_true",
                       help="CaseOps-encode every document (frontier recipe), train or check a tokenizer with the "
                            "markers at ids 4-7, and write the val byte sidecar")
    build.add_argument("--sidecar", action="store_true",
                       help="write the val byte sidecar for a plain dataset too (bpb then counts it)")
    build.set_defaults(func=_build)

    check = commands.add_parser("check", help="validate a dataset folder")
    check.add_argument("path", help="dataset folder, or the fetch destination")
    check.add_argument("--deep", action="store_true", help="also read every token (range and document counts)")
    check.set_defaults(func=_check)


def _fetch(args: argparse.Namespace) -> int:
    from pgolf.data.fetch import fetch_dataset

    endpoint = args.endpoint or os.environ.get("HF_ENDPOINT") or None
    fetch_dataset(args.dest, args.variant, args.train_shards, revision=args.revision,
                  endpoint=endpoint.rstrip("/") if endpoint else None)
    return 0


def _build(args: argparse.Namespace) -> int:
    from pgolf.data.build import build_dataset

    build_dataset(args.input, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size, val_docs=args.val_docs,
                  tokens_per_shard=args.tokens_per_shard, one_doc_per_file=args.one_doc_per_file,
                  workers=args.workers, max_sample_bytes=args.max_sample_bytes, overwrite=args.overwrite,
                  is_caseops=args.caseops, sidecar=True if args.sidecar else None)
    return 0


def _check(args: argparse.Namespace) -> int:
    from pgolf.data.check import check_dataset

    summary = check_dataset(args.path, scan_tokens=args.deep)
    print("\n".join(summary.lines()))
    return 0

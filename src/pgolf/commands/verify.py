"""`pgolf verify DATA_DIR [--artifact ART] [--runs RUN_DIR ...]`: one PASS/FAIL report with the evidence."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check byte accounting, the val split, disjointness, an artifact and a run set",
        description="Verify what a score rests on: the tokenizer's byte tables against decoding every val "
                    "document, the val split's shards and counts, that no val document occurs in train, the "
                    "artifact's size and checksum, and that a multi-seed run set is one config (with the "
                    "0.005-nat, p < 0.01 rule when --baseline-bpb is given). Exit status 1 when a check fails.")
    parser.add_argument("data_dir", metavar="DATA_DIR", help="dataset folder (or the `pgolf data fetch` destination)")
    parser.add_argument("--artifact", metavar="ART", help="a .pgolf artifact to check")
    parser.add_argument("--runs", nargs="+", default=[], metavar="RUN_DIR",
                        help="run folders (result.json + config.json) forming one multi-seed set")
    parser.add_argument("--baseline-bpb", nargs="+", type=float, default=[], metavar="BPB",
                        help="score(s) to beat, in bits per byte (converted to nats per token with the "
                             "tokenizer's tokens per byte)")
    parser.add_argument("--tokenizer", help="SentencePiece model (default: the dataset's)")
    parser.add_argument("--eval-seq-len", type=int, default=2048, help="window for the artifact's eval-time "
                                                                      "prediction (runs use their own config)")
    parser.add_argument("--eval-stride", type=int, default=64, help="stride for the artifact's eval-time prediction")
    parser.add_argument("--min-doc-tokens", type=int, default=None,
                        help="val documents shorter than this may also occur in train without failing (default 32)")
    parser.add_argument("--full-scan-tokens", type=int, default=None,
                        help="train sets up to this many tokens are scanned in full, larger ones sampled "
                             "(default 2e9)")
    parser.add_argument("--sample-tokens", type=int, default=None,
                        help="train tokens examined when sampling (default 4e8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train and sidecar samples")
    parser.add_argument("--corpus", nargs="+", default=None, metavar="FILE",
                        help="the .jsonl/.txt the dataset was built from (val = its first documents): the byte "
                             "sidecar is checked against the original text (default: the sources a built "
                             "dataset's manifest names)")
    parser.add_argument("--sidecar-docs", type=int, default=None,
                        help="val documents whose sidecar bytes are checked (default 2000)")
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.verify import format_report, run_verify
    from pgolf.verify.report import check_to_dict

    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    checks = run_verify(args.data_dir, artifact=args.artifact, runs=args.runs, baseline_bpb=args.baseline_bpb,
                        tokenizer=args.tokenizer, eval_seq_len=args.eval_seq_len, eval_stride=args.eval_stride,
                        min_doc_tokens=args.min_doc_tokens, full_scan_tokens=args.full_scan_tokens,
                        sample_tokens=args.sample_tokens, seed=args.seed, corpus=args.corpus,
                        sidecar_docs=args.sidecar_docs, log=log)
    failed = sum(not check.passed for check in checks)
    if args.json:
        print(json.dumps({"passed": failed == 0, "checks": [check_to_dict(check) for check in checks]}, indent=2))
    else:
        print(format_report(checks))
    return 1 if failed else 0

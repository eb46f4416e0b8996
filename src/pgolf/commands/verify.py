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
    parser.add_argument("data_dir", metavar="DATA_DIR", nargs="?",
                        help="dataset folder (or the `pgolf data fetch` destination)")
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
    compliance = parser.add_argument_group(
        "eval compliance", "--eval-compliance ARTIFACT --data DIR: run the eval procedure on a prefix of val "
                           "and check causality, normalisation, score-before-update, single pass and time")
    compliance.add_argument("--eval-compliance", metavar="ARTIFACT", help="a .pgolf artifact whose procedure to check")
    compliance.add_argument("--data", metavar="DIR", help="dataset folder (instead of DATA_DIR)")
    compliance.add_argument("--procedure", choices=("sliding", "plain", "ttt"),
                            help="the procedure (default: the --config's eval_procedure, else sliding)")
    compliance.add_argument("--tilt", action="store_true", help="with the token n-gram tilt")
    compliance.add_argument("--config", metavar="CONFIG_JSON", help="a run's config.json: its eval settings")
    compliance.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                            help="change an eval setting (eval_seq_len, ttt_*, tilt_*), repeatable")
    compliance.add_argument("--prefix-tokens", type=int, default=4096, help="val targets checked (default 4096)")
    compliance.add_argument("--samples", type=int, default=4, help="sampled perturbations (default 4)")
    compliance.add_argument("--tolerance", type=float, default=0.0,
                            help="relative tolerance of the causality comparison (default 0: bit for bit)")
    compliance.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    compliance.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.verify import format_report, run_verify
    from pgolf.verify.report import check_to_dict

    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    if args.eval_compliance:
        checks = eval_compliance_checks(args, log)
    elif not args.data_dir:
        from pgolf.errors import PgolfError

        raise PgolfError("pgolf verify needs DATA_DIR (or --eval-compliance ARTIFACT --data DIR)")
    else:
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


def eval_compliance_checks(args: argparse.Namespace, log):
    import torch

    from pgolf.config import RunConfig
    from pgolf.errors import PgolfError
    from pgolf.procedures import eval_config
    from pgolf.verify.eval_compliance import run_eval_compliance

    data_dir = args.data or args.data_dir
    if not data_dir:
        raise PgolfError("--eval-compliance needs --data DIR")
    config = eval_config(args.config, args.overrides, procedure=args.procedure, tilt=args.tilt,
                         base=RunConfig(eval_seq_len=args.eval_seq_len, eval_stride=args.eval_stride))
    return run_eval_compliance(args.eval_compliance, data_dir, config, prefix_targets=args.prefix_tokens,
                               samples=args.samples, tolerance=args.tolerance, seed=args.seed, device=args.device,
                               precision=torch.bfloat16 if args.bf16 else None, log=log)

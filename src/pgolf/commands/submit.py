"""`pgolf submit RUN_DIR... --name --author --github-id`: write a records folder for the challenge."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("submit", help="package finished runs (one per seed) as a records folder",
                                   description="Check that the runs share one recipe and fit the budget, then "
                                               "write README.md, submission.json, logs, the artifact and the "
                                               "standalone train_gpt.py into --out.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="finished run folders (different seeds)")
    parser.add_argument("--name", required=True, help="the submission's name")
    parser.add_argument("--author", required=True)
    parser.add_argument("--github-id", required=True)
    parser.add_argument("--blurb", default="", help="one paragraph on what the run does")
    parser.add_argument("--out", help="records folder (default: records/<name>)")
    parser.add_argument("--data", metavar="DIR",
                        help="dataset for the eval-compliance check of a TTT or tilted procedure (default: the "
                             "run's data_dir)")
    parser.add_argument("--no-export", action="store_true",
                        help="do not generate train_gpt.py; take the code bytes the runs recorded")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pgolf.packaging.submit import write_submission

    out_dir = Path(args.out or Path("records") / args.name.replace(" ", "_"))
    with tempfile.TemporaryDirectory(prefix="pgolf-export-") as staging:
        code_file = None
        if not args.no_export:
            from pgolf.packaging.export import export_script

            # the run's own config (its code_packing too), so the file is the one its bytes_code counted;
            # exported into a staging folder: a refused submission leaves nothing behind
            code_file = export_script(Path(args.run_dirs[0]), Path(staging))
        from pgolf.verify.eval_compliance import check_run_procedure

        submission = write_submission([Path(d) for d in args.run_dirs], out_dir, args.name, args.author,
                                      args.github_id, args.blurb, code_file=code_file,
                                      eval_check=lambda run: check_run_procedure(run.path, run.config, args.data))
    print(json.dumps(submission, indent=2))
    print(f"records folder: {out_dir}")
    return 0

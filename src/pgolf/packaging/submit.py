"""Submission packaging: turn one or more finished run folders (seeds) into a records folder.

The folder holds what the challenge expects: a generated README.md, a
submission.json, every seed's training log, the artifact of the best seed,
and (when the export module is available) the standalone `train_gpt.py`
whose byte size is the counted code size.
"""

from __future__ import annotations

import datetime
import json
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable

from pgolf.challenge import ARTIFACT_NAME, BUDGET_BYTES
from pgolf.errors import PgolfError
from pgolf.verify.result_checks import result_problems
from pgolf.verify.run_checks import RunRecord, check_same_config, check_same_scheme, load_run


def check_numbers(runs: list[RunRecord]) -> None:
    """Each result.json is backed by its artifact (sha256, size) and log; see `pgolf.verify.result_checks`."""
    for run in runs:
        problems = result_problems(run.path, run.result)
        if problems:
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise PgolfError(f"run {run.name} cannot be submitted: {problems[0]}{more}")


def check_one_recipe(runs: list[RunRecord]) -> None:
    """The runs of a submission are one config with different seeds and one artifact scheme."""
    for check in (check_same_config(runs), check_same_scheme(runs)):
        if not check.passed:
            raise PgolfError(f"these runs cannot be submitted together: {check.evidence}")


def seed_statistics(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "count": len(values)}


def summarise(runs: list[RunRecord], bytes_code: int) -> dict[str, Any]:
    bpbs = [run.result["val_bpb"] for run in runs]
    best = min(runs, key=lambda run: run.result["val_bpb"])
    bytes_model = best.result["bytes_model"]
    return {
        "val_bpb": statistics.fmean(bpbs),
        "val_loss": statistics.fmean(run.result["val_loss"] for run in runs),
        "pre_quant_val_bpb": statistics.fmean(run.result["val_bpb_prequant"] for run in runs),
        "bytes_model": bytes_model,
        "bytes_code": bytes_code,
        "bytes_total": bytes_model + bytes_code,
        "val_bpb_seeds": {str(run.config.get("seed")): run.result["val_bpb"] for run in runs},
        "val_bpb_stats": seed_statistics(bpbs),
        "best_run": best,
    }


def readme_text(name: str, blurb: str, summary: dict[str, Any], runs: list[RunRecord]) -> str:
    best = summary["best_run"]
    config = best.config
    model = config["model"]
    lines = [
        f"# {name}",
        "",
        blurb,
        "",
        "## Result",
        "",
        f"- val_bpb (sliding window, stride {config['eval_stride']}, after the quantisation round trip): "
        f"**{summary['val_bpb']:.5f}**" + (f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""),
        f"- pre-quantisation val_bpb: {summary['pre_quant_val_bpb']:.5f}",
        f"- artifact: {summary['bytes_total']:,} bytes = {summary['bytes_model']:,} model + "
        f"{summary['bytes_code']:,} code (budget {BUDGET_BYTES:,})",
        "",
        "| seed | val_bpb | val_loss | steps | train seconds | bytes_total |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        result = run.result
        lines.append(f"| {run.config.get('seed')} | {result['val_bpb']:.5f} | {result['val_loss']:.5f} | "
                     f"{result['steps']} | {result['train_seconds']:.1f} | {result['bytes_total']:,} |")
    if len(runs) > 1:
        stats = summary["val_bpb_stats"]
        lines.append(f"\nAcross seeds: mean {stats['mean']:.5f}, standard deviation {stats['std']:.5f}.")
    lines += [
        "",
        "## Recipe",
        "",
        f"Preset `{config['preset']}`: {model['num_layers']} layers, width {model['model_dim']}, "
        f"{model['num_heads']} heads / {model['num_kv_heads']} KV heads, MLP {model['mlp_mult']}x, vocabulary "
        f"{model['vocab_size']}; {config['global_batch_tokens']:,} tokens per step at sequence length "
        f"{config['train_seq_len']}; quantisation scheme `{config['quant_scheme']}`.",
        "The full resolved configuration is in `config.json`; produced with pgolf (`pgolf train`, `pgolf submit`).",
        "",
    ]
    return "\n".join(lines)


def check_eval_procedure(run: RunRecord, eval_check: Callable[[RunRecord], list] | None) -> None:
    """Refuse a run whose eval procedure fails `pgolf verify --eval-compliance` (`eval_check` runs it)."""
    if eval_check is None:
        return
    failed = [check for check in eval_check(run) if not check.passed]
    if failed:
        raise PgolfError(f"run {run.name} cannot be submitted: its eval procedure fails {failed[0].name}: "
                         f"{failed[0].evidence}")


def write_submission(run_dirs: list[Path], out_dir: Path, name: str, author: str, github_id: str,
                     blurb: str = "", code_file: Path | None = None,
                     eval_check: Callable[[RunRecord], list] | None = None) -> dict[str, Any]:
    """Check, then write the records folder. `code_file` (an exported train_gpt.py) sets the code bytes;
    `eval_check(run)` returns the eval-compliance checks of the shipped run's procedure."""
    runs = [load_run(run_dir) for run_dir in run_dirs]
    check_numbers(runs)
    check_one_recipe(runs)
    bytes_code = code_file.stat().st_size if code_file is not None else runs[0].result["bytes_code"]
    summary = summarise(runs, bytes_code)
    if summary["bytes_total"] > BUDGET_BYTES:
        raise PgolfError(f"artifact is over budget: {summary['bytes_total']:,} bytes "
                         f"({summary['bytes_model']:,} model + {bytes_code:,} code) > {BUDGET_BYTES:,}")
    check_eval_procedure(summary["best_run"], eval_check)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    best = summary.pop("best_run")
    shutil.copyfile(best.path / best.result.get("artifact", ARTIFACT_NAME), out_dir / ARTIFACT_NAME)
    (out_dir / "config.json").write_text(json.dumps(best.config, indent=2, sort_keys=True) + "\n")
    for run in runs:
        log = run.path / "train.log"
        if log.is_file():
            shutil.copyfile(log, out_dir / f"train_seed{run.config.get('seed')}.log")
    if code_file is not None and code_file.resolve() != (out_dir / code_file.name).resolve():
        shutil.copyfile(code_file, out_dir / code_file.name)
        requirements = code_file.with_name("requirements.txt")
        if requirements.is_file():
            shutil.copyfile(requirements, out_dir / requirements.name)
    submission = {
        "author": author, "github_id": github_id, "name": name, "blurb": blurb,
        "date": datetime.date.today().isoformat(),
        "val_loss": summary["val_loss"], "val_bpb": summary["val_bpb"],
        "pre_quant_val_bpb": summary["pre_quant_val_bpb"],
        "bytes_total": summary["bytes_total"], "bytes_model": summary["bytes_model"],
        "bytes_code": summary["bytes_code"],
        "val_bpb_seeds": summary["val_bpb_seeds"], "val_bpb_std": summary["val_bpb_stats"]["std"],
    }
    (out_dir / "submission.json").write_text(json.dumps(submission, indent=2) + "\n")
    (out_dir / "README.md").write_text(readme_text(name, blurb, {**summary, "best_run": best}, runs))
    return submission

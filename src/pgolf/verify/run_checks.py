"""A multi-seed run set: same config except the seed, same artifact scheme, and the significance rule.

Each run directory holds `result.json` (val_bpb, val_loss, seed, bytes_total,
quant_scheme, val_tokens_scored, val_bytes_scored, ...) and `config.json` (the
full RunConfig, `pgolf.config.run_config_to_dict`). Claims have been thrown out
because their "seeds" came from different configs, so every pair of configs
is compared key by key; only the seed and settings that cannot change the
numbers (paths, logging cadence) may differ. That the data was the same is
checked through the scored token and byte counts instead of the paths.

The challenge's rule for a new record: beat the baseline by at least 0.005
nats per token, shown at p < 0.01. The baseline is given in bits per byte and
converted with the tokenizer's tokens per byte:
nats/token = bpb x ln 2 / (tokens per byte). The test is Welch's one-sided
t-test of H1: mean(candidate) < baseline - 0.005 (one baseline value is exact:
a one-sample t-test).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgolf.errors import PgolfError
from pgolf.verify.report import Check
from pgolf.verify.stats import mean_and_std, welch_one_sided

REQUIRED_IMPROVEMENT_NATS = 0.005
REQUIRED_P_VALUE = 0.01
# settings allowed to differ between the runs of one set
IGNORED_CONFIG_KEYS = frozenset({"seed", "data_dir", "tokenizer_path", "log_every", "checkpoint_every"})
REQUIRED_RESULT_KEYS = ("val_bpb", "val_loss", "seed", "bytes_total", "quant_scheme")


@dataclass(frozen=True)
class RunRecord:
    path: Path
    result: dict[str, Any]
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PgolfError(f"{path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PgolfError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PgolfError(f"{path}: expected a JSON object")
    return data


def load_run(run_dir) -> RunRecord:
    run_dir = Path(run_dir)
    result = _read_json(run_dir / "result.json")
    missing = [key for key in REQUIRED_RESULT_KEYS if key not in result]
    if missing:
        raise PgolfError(f"{run_dir / 'result.json'} lacks {', '.join(missing)}")
    return RunRecord(run_dir, result, _read_json(run_dir / "config.json"))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"num_layers": 11}} -> {"model.num_layers": 11}."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(first: dict[str, Any], second: dict[str, Any],
                       ignored: frozenset[str] = IGNORED_CONFIG_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, first value, second value) for every setting that differs, ignored keys left out."""
    a, b = flatten(first), flatten(second)
    missing = object()
    return [(key, a.get(key, missing), b.get(key, missing)) for key in sorted(set(a) | set(b))
            if key not in ignored and a.get(key, missing) != b.get(key, missing)]


def _show(value: Any) -> str:
    return "(absent)" if not isinstance(value, (int, float, str, bool, type(None), list)) else json.dumps(value)


def check_same_config(runs: list[RunRecord]) -> Check:
    reference = runs[0]
    details = []
    for run in runs[1:]:
        for key, first, second in config_differences(reference.config, run.config):
            details.append(f"{reference.name} vs {run.name}: {key} = {_show(first)} vs {_show(second)}")
    seeds = [run.config.get("seed", run.result.get("seed")) for run in runs]
    for run in runs:
        if run.result.get("seed") != run.config.get("seed"):
            details.append(f"{run.name}: result.json says seed {run.result.get('seed')}, config.json "
                           f"{run.config.get('seed')}")
    if len(set(map(str, seeds))) != len(seeds):
        details.append(f"seeds repeat: {seeds}")
    if details:
        return Check("runs.same_config", False,
                     f"{len(runs)} runs are not one config with different seeds: {details[0]}", tuple(details))
    return Check("runs.same_config", True,
                 f"{len(runs)} runs share every setting except the seed (seeds {', '.join(map(str, seeds))}; "
                 f"ignored: {', '.join(sorted(IGNORED_CONFIG_KEYS - {'seed'}))})")


def check_same_scheme(runs: list[RunRecord]) -> Check:
    """Same artifact scheme and evaluation, the same scored data, and each artifact within the budget."""
    from pgolf.challenge import BUDGET_BYTES

    details = []
    keys = ("quant_scheme", "eval_seq_len", "eval_stride", "val_tokens_scored", "val_bytes_scored")
    reference = runs[0]
    for run in runs[1:]:
        for key in keys:
            if run.result.get(key) != reference.result.get(key):
                details.append(f"{reference.name} vs {run.name}: {key} = {reference.result.get(key)} vs "
                               f"{run.result.get(key)}")
    for run in runs:
        if run.result.get("quant_scheme") != run.config.get("quant_scheme"):
            details.append(f"{run.name}: result.json reports scheme {run.result.get('quant_scheme')!r} but "
                           f"config.json says {run.config.get('quant_scheme')!r}")
        if int(run.result["bytes_total"]) > BUDGET_BYTES:
            details.append(f"{run.name}: bytes_total {int(run.result['bytes_total']):,} > {BUDGET_BYTES:,}")
    if details:
        return Check("runs.same_scheme", False, f"{details[0]}", tuple(details))
    sizes = [int(run.result["bytes_total"]) for run in runs]
    return Check("runs.same_scheme", True,
                 f"all runs: scheme {reference.result['quant_scheme']!r}, eval {reference.result.get('eval_seq_len')}"
                 f"/{reference.result.get('eval_stride')}, {reference.result.get('val_tokens_scored')} tokens "
                 f"scored; bytes_total {min(sizes):,}..{max(sizes):,} <= {BUDGET_BYTES:,}")


def run_tokens_per_byte(runs: list[RunRecord]) -> float | None:
    """Scored tokens per scored byte, as the runs report it (None when they do not)."""
    result = runs[0].result
    if result.get("val_tokens_scored") and result.get("val_bytes_scored"):
        return float(result["val_tokens_scored"]) / float(result["val_bytes_scored"])
    return None


def bpb_to_nats_per_token(bpb: float, tokens_per_byte: float) -> float:
    return bpb * math.log(2.0) / tokens_per_byte


def check_significance(runs: list[RunRecord], baseline_bpb: list[float] | None,
                       tokens_per_byte: float | None) -> Check:
    bpb_mean, bpb_std = mean_and_std([float(run.result["val_bpb"]) for run in runs])
    losses = [float(run.result["val_loss"]) for run in runs]
    loss_mean, loss_std = mean_and_std(losses)
    summary = (f"{len(runs)} runs: val_bpb {bpb_mean:.5f} +- {bpb_std:.5f}, val_loss {loss_mean:.5f} +- "
               f"{loss_std:.5f} nats/token (mean +- sample std)")
    if not baseline_bpb:
        return Check("runs.significance", True, summary + "; no --baseline-bpb given, rule not tested")
    if tokens_per_byte is None or not tokens_per_byte > 0:
        return Check("runs.significance", False, summary + "; tokens per byte unknown, cannot convert the baseline")
    if len(runs) < 2:
        return Check("runs.significance", False, summary + "; the p < 0.01 rule needs at least 2 runs")
    baseline_nats = [bpb_to_nats_per_token(value, tokens_per_byte) for value in baseline_bpb]
    test = welch_one_sided(losses, baseline_nats, margin=REQUIRED_IMPROVEMENT_NATS)
    met = test.difference >= REQUIRED_IMPROVEMENT_NATS and test.p_value < REQUIRED_P_VALUE
    baseline_mean = sum(baseline_nats) / len(baseline_nats)
    evidence = (f"{summary}; baseline {sum(baseline_bpb) / len(baseline_bpb):.5f} bpb = {baseline_mean:.5f} "
                f"nats/token at {tokens_per_byte:.5f} tokens/byte; improvement {test.difference:.5f} nats; "
                f"Welch one-sided t = {test.t:.3f}, df = {test.df:.1f}, p = {test.p_value:.2e}: rule "
                f"(>= {REQUIRED_IMPROVEMENT_NATS} nats at p < {REQUIRED_P_VALUE}) "
                f"{'MET' if met else 'NOT MET'}")
    return Check("runs.significance", met, evidence)


def check_runs(run_dirs: list, baseline_bpb: list[float] | None = None,
               tokens_per_byte: float | None = None) -> tuple[list[Check], list[RunRecord]]:
    runs, problems = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except PgolfError as error:
            problems.append(str(error))
    if problems:
        return [Check("runs.load", False, f"{len(problems)} run(s) unreadable: {problems[0]}", tuple(problems))], runs
    per_run = run_tokens_per_byte(runs)
    checks = [check_same_config(runs), check_same_scheme(runs),
              check_significance(runs, baseline_bpb, per_run if per_run is not None else tokens_per_byte)]
    return checks, runs

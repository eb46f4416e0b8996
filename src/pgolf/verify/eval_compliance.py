"""Is an eval procedure legal? Checked by running it on a prefix of val (spec beyond.md §9).

A procedure (`pgolf.evaluate.Procedure`) yields `Scored` events (targets and their
NLL, with the full distribution when recording) and `Updated` events (the targets
whose losses an update used), in the order it does them. The emission order of a
target t is the key (event index, t). Five rules, each a `Check` that names the
first violating target:

- eval.causality: with every token whose target comes at or after t in the
  emission order replaced by a different token (bos positions, the document
  boundaries, are kept), every target before t keeps its NLL and t keeps its whole
  distribution. For plain and sliding scoring that is "tokens after position t";
  for TTT it also covers documents it has not reached yet. Sampled targets; bit for
  bit by default (fp32 on CPU), else within `tolerance`.
- eval.normalisation: at every scored target the emitted distribution has a
  log-sum-exp of 0 over the whole vocabulary (tilt included), and the NLL is
  -log p(target) of it.
- eval.score_before_update: no update uses a target whose NLL was not emitted before it.
- eval.single_pass: every target of the prefix is emitted exactly once, and within
  each document in stream order.
- eval.time: the measured time of one run, scaled linearly to the whole val split,
  against the 600 s limit (a compile warm-up run is timed and shown separately).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from pgolf.challenge import EVAL_SECONDS_LIMIT
from pgolf.distributed import DistInfo
from pgolf.evaluate import Procedure, Scored, Updated
from pgolf.ttt_plan import document_spans
from pgolf.verify.report import Check

NORMALISATION_TOLERANCE = 1e-4  # nats: fp32 log-softmax over a vocabulary of thousands is within ~1e-6


@dataclass
class Trace:
    """What one run of a procedure emitted, per target of the prefix (N targets)."""

    nll: np.ndarray  # (N,) float64, NaN where never emitted (the first emission when several)
    counts: np.ndarray  # (N,) times emitted
    event_of: np.ndarray  # (N,) index of the event that first emitted it, -1 if never
    emission_order: np.ndarray  # every emitted target, in emission order (repeats included)
    rows: dict[int, np.ndarray] = field(default_factory=dict)  # kept distributions, by target
    first_unnormalised: tuple[int, str] | None = None  # (target, why)
    first_update_violation: tuple[int, int, str] | None = None  # (event, target, kind)
    num_updates: int = 0
    seconds: float = 0.0


def trace_procedure(procedure: Procedure, model, tokens: torch.Tensor, record: bool,
                    keep_rows: set[int] = frozenset(), tolerance: float = NORMALISATION_TOLERANCE) -> Trace:
    num_targets = tokens.numel() - 1
    nll = np.full(num_targets, np.nan)
    counts = np.zeros(num_targets, dtype=np.int64)
    event_of = np.full(num_targets, -1, dtype=np.int64)
    order: list[np.ndarray] = []
    trace = Trace(nll, counts, event_of, np.zeros(0, dtype=np.int64))
    token_ids = tokens.detach().cpu().numpy().astype(np.int64)
    started = time.perf_counter()
    for index, event in enumerate(procedure.events(model, tokens, DistInfo(device=tokens.device), record=record)):
        targets = event.targets.detach().cpu().numpy().astype(np.int64)
        if isinstance(event, Updated):
            trace.num_updates += 1
            unscored = targets[(targets < 0) | (targets >= num_targets)]
            if unscored.size == 0:
                unscored = targets[counts[targets] == 0]
            if unscored.size and trace.first_update_violation is None:
                trace.first_update_violation = (index, int(unscored.min()), event.kind)
            continue
        if not isinstance(event, Scored):
            continue
        values = event.nll.detach().double().cpu().numpy()
        fresh = event_of[targets] < 0
        event_of[targets[fresh]] = index
        nll[targets[fresh]] = values[fresh]
        np.add.at(counts, targets, 1)
        order.append(targets)
        if record:
            _check_rows(trace, event, targets, token_ids[targets + 1], values, keep_rows, tolerance)
    trace.seconds = time.perf_counter() - started
    trace.emission_order = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
    return trace


def _check_rows(trace: Trace, event: Scored, targets: np.ndarray, target_tokens: np.ndarray, values: np.ndarray,
                keep_rows: set[int], tolerance: float) -> None:
    if event.log_probs is None:
        if trace.first_unnormalised is None:
            trace.first_unnormalised = (int(targets.min()), "the procedure emitted no distribution")
        return
    rows = event.log_probs.detach().double()
    log_sum = torch.logsumexp(rows, dim=-1).cpu().numpy()
    read = -rows.gather(1, torch.from_numpy(target_tokens).to(rows.device)[:, None]).squeeze(1).cpu().numpy()
    bad = np.flatnonzero((np.abs(log_sum) > tolerance) | ~np.isfinite(log_sum))
    inconsistent = np.flatnonzero(np.abs(read - values) > tolerance)
    if trace.first_unnormalised is None and (bad.size or inconsistent.size):
        if bad.size and (not inconsistent.size or targets[bad[0]] <= targets[inconsistent[0]]):
            trace.first_unnormalised = (int(targets[bad[0]]), f"log-sum-exp of its distribution is "
                                                              f"{log_sum[bad[0]]:.6g}, not 0")
        else:
            position = inconsistent[0]
            trace.first_unnormalised = (int(targets[position]), f"emitted NLL {values[position]:.6g} is not "
                                                                f"-log p(target) = {read[position]:.6g}")
    for position in np.flatnonzero(np.isin(targets, list(keep_rows))):
        trace.rows.setdefault(int(targets[position]), rows[position].cpu().numpy())


# ---------------------------------------------------------------- the rules


def check_normalisation(trace: Trace) -> Check:
    scored = int((trace.counts > 0).sum())
    if trace.first_unnormalised is None:
        return Check("eval.normalisation", True, f"{scored:,} scored targets: each a full distribution over the "
                                                 f"vocabulary (|log-sum-exp| <= {NORMALISATION_TOLERANCE:g}) "
                                                 "and its NLL read from it")
    target, why = trace.first_unnormalised
    return Check("eval.normalisation", False, f"first violation at target {target:,}: {why}")


def check_score_before_update(trace: Trace) -> Check:
    if trace.first_update_violation is None:
        return Check("eval.score_before_update", True, f"{trace.num_updates:,} updates, each using only targets "
                                                        "whose NLL had been emitted")
    event, target, kind = trace.first_update_violation
    return Check("eval.score_before_update", False, f"first violation at target {target:,}: update {kind!r} "
                                                     f"(event {event}) used it before its NLL was emitted")


def check_single_pass(trace: Trace, tokens: torch.Tensor, bos_id: int) -> Check:
    counts = trace.counts
    wrong = np.flatnonzero(counts != 1)
    if wrong.size:
        target = int(wrong[0])
        return Check("eval.single_pass", False, f"first violation at target {target:,}: emitted {counts[target]} "
                                                 f"times ({int((counts == 0).sum()):,} never, "
                                                 f"{int((counts > 1).sum()):,} more than once)")
    starts = np.asarray([doc.first_target for doc in document_spans(tokens.cpu().numpy(), bos_id)])
    order = trace.emission_order
    document = np.searchsorted(starts, order, side="right") - 1
    grouped = np.argsort(document, kind="stable")  # emission order kept inside each document
    doc_sorted, target_sorted = document[grouped], order[grouped]
    backwards = np.flatnonzero((doc_sorted[1:] == doc_sorted[:-1]) & (target_sorted[1:] <= target_sorted[:-1]))
    if backwards.size:
        target = int(target_sorted[backwards[0] + 1])
        return Check("eval.single_pass", False, f"first violation at target {target:,}: emitted after a later "
                                                 "target of its document")
    return Check("eval.single_pass", True, f"{counts.size:,} targets, each emitted once, in stream order within "
                                            f"each of {starts.size:,} documents")


def perturb_after(tokens: torch.Tensor, trace: Trace, target: int, vocab_size: int, bos_id: int,
                  generator: np.random.Generator) -> tuple[torch.Tensor, int]:
    """Tokens with every non-bos token whose target comes at or after `target` in the emission order
    replaced by a different non-bos id; and how many were replaced."""
    values = tokens.cpu().numpy().astype(np.int64).copy()
    event_of = trace.event_of
    own = event_of[target]
    # token j is target j - 1's; never-emitted targets count as later
    later = (event_of < 0) | (event_of > own) | ((event_of == own) & (np.arange(event_of.size) >= target))
    positions = np.flatnonzero(later) + 1
    positions = positions[values[positions] != bos_id]
    replacement = generator.integers(0, vocab_size - 2, positions.size)
    # a uniform id among the vocab_size - 2 that are neither the old token nor bos
    low, high = np.minimum(values[positions], bos_id), np.maximum(values[positions], bos_id)
    replacement = replacement + (replacement >= low) + (replacement + 1 >= high)
    if low.size and np.any(low == high):
        raise ValueError("a non-bos token equals bos")
    values[positions] = replacement
    return torch.from_numpy(values.astype(np.int32 if tokens.dtype == torch.int32 else np.int64)).to(
        tokens.device), int(positions.size)


def check_causality(procedure: Procedure, model, tokens: torch.Tensor, base: Trace, samples: list[int],
                    vocab_size: int, bos_id: int, tolerance: float, seed: int) -> Check:
    generator = np.random.default_rng(seed)
    key = lambda trace, target: (trace.event_of[target], target)  # noqa: E731 - the emission order
    tested = []
    for target in samples:
        perturbed, replaced = perturb_after(tokens, base, target, vocab_size, bos_id, generator)
        again = trace_procedure(procedure, model, perturbed, record=True, keep_rows={target})
        earlier = np.flatnonzero((base.event_of >= 0) & ((base.event_of < base.event_of[target])
                                                         | ((base.event_of == base.event_of[target])
                                                            & (np.arange(base.event_of.size) < target))))
        changed = earlier[~_close(base.nll[earlier], again.nll[earlier], tolerance)]
        if changed.size:
            first = min(changed.tolist(), key=lambda t: key(base, t))
            return Check("eval.causality", False, f"first violation at target {first:,}: its NLL changed "
                                                   f"({base.nll[first]:.9g} -> {again.nll[first]:.9g}) when the "
                                                   f"{replaced:,} tokens after target {target:,} were replaced")
        if target in base.rows and target in again.rows and not _close(base.rows[target], again.rows[target],
                                                                         tolerance).all():
            return Check("eval.causality", False, f"first violation at target {target:,}: its distribution "
                                                   f"changed when the {replaced:,} tokens after it (its own "
                                                   "target token included) were replaced")
        tested.append(f"{target:,} ({replaced:,} replaced)")
    exactness = "bit for bit" if tolerance == 0 else f"within {tolerance:g}"
    return Check("eval.causality", True, f"replacing the tokens after targets {', '.join(tested)} left every "
                                          f"earlier NLL and the target's distribution unchanged ({exactness})")


def _close(first: np.ndarray, second: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance == 0:
        return (first == second) | (np.isnan(first) & np.isnan(second))
    return np.isclose(first, second, rtol=tolerance, atol=tolerance, equal_nan=True)


def check_time(seconds: float, warmup_seconds: float, prefix_targets: int, full_targets: int, device: str,
               budget: float = EVAL_SECONDS_LIMIT) -> Check:
    scaled = seconds * full_targets / max(prefix_targets, 1)
    return Check("eval.time", scaled <= budget,
                 f"{seconds:.2f} s for {prefix_targets:,} targets on {device} -> {scaled:,.1f} s for the whole "
                 f"split ({full_targets:,} targets, scaled linearly; limit {budget:.0f} s); compile warm-up "
                 f"{warmup_seconds:.2f} s, not counted")


def check_eval_compliance(procedure: Procedure, model, tokens: torch.Tensor, vocab_size: int, bos_id: int,
                          full_targets: int | None = None, samples: int = 4, tolerance: float = 0.0,
                          seed: int = 0, check_seconds: bool = True, device: str = "cpu") -> list[Check]:
    """The five rules for `procedure` on `tokens` (a prefix of val, on the model's device)."""
    num_targets = tokens.numel() - 1
    checks = []
    warmup_seconds = 0.0
    if check_seconds:
        warm = tokens[: min(tokens.numel(), 257)]
        warmup_seconds = trace_procedure(procedure, model, warm, record=False).seconds
        timed = trace_procedure(procedure, model, tokens, record=False)
    generator = np.random.default_rng(seed)
    emitted = np.arange(num_targets)
    chosen = sorted(set(generator.choice(emitted, size=min(samples, num_targets), replace=False).tolist()))
    base = trace_procedure(procedure, model, tokens, record=True, keep_rows=set(chosen))
    emitted_targets = np.flatnonzero(base.event_of >= 0)
    chosen = [target for target in chosen if base.event_of[target] >= 0] or emitted_targets[:1].tolist()
    checks.append(check_causality(procedure, model, tokens, base, chosen, vocab_size, bos_id, tolerance, seed + 1))
    checks.append(check_normalisation(base))
    checks.append(check_score_before_update(base))
    checks.append(check_single_pass(base, tokens, bos_id))
    if check_seconds:
        checks.append(check_time(timed.seconds, warmup_seconds, num_targets, full_targets or num_targets, device))
    return checks


# ---------------------------------------------------------------- from files


def run_eval_compliance(artifact_path, data_dir, config, prefix_targets: int = 4096, samples: int = 4,
                        tolerance: float = 0.0, seed: int = 0, device: str = "cpu", precision=None,
                        check_seconds: bool = True, log=lambda line: None) -> list[Check]:
    """Load an artifact and a dataset's val split and check `config.eval_procedure` (with the config's
    eval settings) on the first `prefix_targets` targets. `precision`: an autocast dtype or None (fp32)."""
    from pathlib import Path

    from pgolf.artifact import load_artifact
    from pgolf.distributed import resolve_device
    from pgolf.machine import describe_machine
    from pgolf.procedures import procedure_from_config
    from pgolf.scoring import check_artifact_tokenizer, dataset_tokenizer, load_val_data, model_from_artifact

    loaded = load_artifact(Path(artifact_path))
    tokenizer_path = dataset_tokenizer(data_dir)
    check_artifact_tokenizer(loaded, tokenizer_path)
    val = load_val_data(data_dir, 1, tokenizer_path=tokenizer_path)  # uncut: the whole split
    target_device = resolve_device(device)
    model = model_from_artifact(loaded, target_device, "off")
    procedure = procedure_from_config(config, precision=precision)
    tokens = val.tokens[: prefix_targets + 1].to(target_device)
    log(f"eval compliance: procedure {procedure.name} on the first {tokens.numel() - 1:,} of "
        f"{val.tokens.numel() - 1:,} val targets, {samples} sampled perturbations")
    return check_eval_compliance(procedure, model, tokens, loaded.model_config.vocab_size,
                                 loaded.model_config.bos_id, full_targets=val.tokens.numel() - 1, samples=samples,
                                 tolerance=tolerance, seed=seed, check_seconds=check_seconds,
                                 device=describe_machine(target_device))


def check_run_procedure(run_dir, config_dict: dict, data_dir=None, prefix_targets: int = 2048,
                        samples: int = 2) -> list[Check]:
    """The legality rules (not the time: a submission's eval time is measured on its own hardware) for a
    finished run's procedure and artifact. Plain and sliding scoring without the tilt are the reference
    procedures, proven by the test suite: nothing to run for them."""
    from pathlib import Path

    from pgolf.challenge import ARTIFACT_NAME
    from pgolf.config import run_config_from_dict
    from pgolf.errors import PgolfError

    config = run_config_from_dict(config_dict)
    if config.eval_procedure in ("plain", "sliding") and not config.eval_tilt:
        return []
    data_dir = data_dir or config.data_dir
    if not data_dir or not Path(data_dir).exists():
        raise PgolfError(f"checking the run's eval procedure ({config.eval_procedure}) needs its dataset; "
                         f"pass --data DIR (the run's data_dir {data_dir!r} is not here)")
    return run_eval_compliance(Path(run_dir) / ARTIFACT_NAME, data_dir, config, prefix_targets=prefix_targets,
                               samples=samples, check_seconds=False)

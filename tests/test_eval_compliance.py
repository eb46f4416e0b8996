"""`pgolf verify --eval-compliance`: each planted violation is caught and named; the real procedures pass."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pgolf.cli import main
from pgolf.distributed import DistInfo
from pgolf.errors import PgolfError
from pgolf.evaluate import Scored, SlidingProcedure, Updated, sliding_events
from pgolf.packaging.submit import write_submission
from pgolf.tilt import TiltSettings
from pgolf.ttt import TTTProcedure
from pgolf.verify.eval_compliance import check_eval_compliance, check_time
from pgolf.verify.report import Check
from test_ttt import BOS, SETTINGS, VOCAB, random_gpt, stream

RULES = ("eval.causality", "eval.normalisation", "eval.score_before_update", "eval.single_pass")


def verdicts(procedure, tokens=None, model=None) -> dict[str, Check]:
    checks = check_eval_compliance(procedure, model or random_gpt(), stream(200, 5) if tokens is None else tokens,
                                   VOCAB, BOS, samples=3, check_seconds=False)
    return {check.name: check for check in checks}


# ---------------------------------------------------------------- planted violations


class PeekingModel(nn.Module):
    """Raises the logit of the token after each position: target t's distribution reads token t + 1."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        logits = self.model(input_ids)
        ahead = F.one_hot(input_ids[:, 1:], logits.shape[-1]).to(logits.dtype)  # (B, T-1, V)
        return torch.cat([logits[:, :-1] + 3.0 * ahead, logits[:, -1:]], dim=1)


class PeekAhead(SlidingProcedure):
    def events(self, model, tokens, dist, record=False, progress=None):
        return sliding_events(PeekingModel(model), tokens, self.seq_len, self.stride, self.batch_seqs, dist,
                              record=record)


class UpdateBeforeScore(SlidingProcedure):
    """One SGD step on each window's loss, then scoring the same window."""

    def events(self, model, tokens, dist, record=False, progress=None):
        model = copy.deepcopy(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for start in range(0, tokens.numel() - 1, self.seq_len):
            end = min(start + self.seq_len, tokens.numel() - 1)
            inputs, targets = tokens[start:end].long()[None], tokens[start + 1:end + 1].long()
            optimizer.zero_grad()
            F.cross_entropy(model(inputs)[0], targets).backward()
            optimizer.step()
            index = torch.arange(start, end)
            yield Updated(targets=index, kind="window")
            with torch.no_grad():
                logits = model(inputs)[0]
            yield Scored(targets=index, nll=F.cross_entropy(logits, targets, reduction="none"),
                         log_probs=torch.log_softmax(logits, -1) if record else None)


class Rescore(SlidingProcedure):
    """Scores every window, then scores the last one again."""

    def events(self, model, tokens, dist, record=False, progress=None):
        last = None
        for event in super().events(model, tokens, dist, record=record):
            last = event
            yield event
        yield last


class Unnormalised(SlidingProcedure):
    """Scores with log-probabilities off by a constant, as if the softmax's normaliser were left out."""

    def events(self, model, tokens, dist, record=False, progress=None):
        for event in super().events(model, tokens, dist, record=True):
            scores = event.log_probs + 1.5  # (S, V), no longer summing to 1
            target_tokens = tokens[event.targets + 1].long()[:, None]
            yield Scored(targets=event.targets, nll=-scores.gather(1, target_tokens)[:, 0],
                         log_probs=scores if record else None)


@pytest.mark.parametrize("procedure, rule", [
    (PeekAhead(32, 32, 4), "eval.causality"),
    (UpdateBeforeScore(32, 32, 4), "eval.score_before_update"),
    (Rescore(32, 16, 4), "eval.single_pass"),
    (Unnormalised(32, 32, 4), "eval.normalisation"),
], ids=["peeks_one_ahead", "updates_before_scoring", "rescores", "drops_normalisation"])
def test_each_planted_violation_is_caught_and_named(procedure, rule):
    checks = verdicts(procedure)
    assert not checks[rule].passed
    assert "first violation at target" in checks[rule].evidence
    if rule != "eval.score_before_update":  # updating before scoring also makes the scores non-causal
        assert [name for name, check in checks.items() if not check.passed] == [rule]


def test_the_first_violating_target_is_the_one_named():
    checks = verdicts(Rescore(32, 32, 1))  # one window per event: the last scores targets 192..198
    assert "first violation at target 192:" in checks["eval.single_pass"].evidence
    checks = verdicts(UpdateBeforeScore(32, 32, 4))
    assert "first violation at target 0:" in checks["eval.score_before_update"].evidence


# ---------------------------------------------------------------- the real procedures pass


@pytest.mark.parametrize("procedure", [
    SlidingProcedure(32, 32, 4),
    SlidingProcedure(32, 8, 4),
    SlidingProcedure(32, 8, 4, tilt_settings=TiltSettings(order=3, threshold=0.6)),
    TTTProcedure(replace(SETTINGS, phase_boundaries=(2, 4))),
    TTTProcedure(replace(SETTINGS, phase_boundaries=(2,)), tilt_settings=TiltSettings(order=3, threshold=0.6)),
], ids=["plain", "sliding", "sliding_tilt", "ttt", "ttt_tilt"])
def test_real_procedures_pass_bit_for_bit(procedure):
    # repeated text, so the tilt really fires
    tokens = torch.cat([stream(100, 3, seed=7), stream(100, 3, seed=7)[1:]])
    checks = verdicts(procedure, tokens)
    assert all(checks[rule].passed for rule in RULES), [check.evidence for check in checks.values()]
    assert "bit for bit" in checks["eval.causality"].evidence


def test_time_is_scaled_to_the_whole_split():
    over = check_time(2.0, 0.5, 1_000, 1_000_000, "cpu")
    assert not over.passed and "2,000.0 s" in over.evidence and "warm-up 0.50 s" in over.evidence
    assert check_time(2.0, 0.5, 1_000, 100_000, "cpu").passed


# ---------------------------------------------------------------- command line and submit


@pytest.fixture(scope="module")
def ttt_run(tiny_dataset_dir, tmp_path_factory):
    from pgolf.train import run_training
    from test_train import small_config

    run_dir = tmp_path_factory.mktemp("ttt_run") / "run"
    settings = ["iterations=2", "val_every=0", "eval_procedure=ttt", "ttt_context_tokens=32",
                "ttt_chunk_tokens=16", "ttt_batch_docs=4", "ttt_lora_rank=2", "ttt_phase_boundaries=4",
                "ttt_global_seq_len=16", "ttt_global_batch_seqs=2"]
    run_training(small_config(tiny_dataset_dir, *settings), run_dir, quiet=True)
    return run_dir


@pytest.mark.slow
def test_verify_eval_compliance_command(ttt_run, tiny_dataset_dir, capsys):
    code = main(["verify", "--eval-compliance", str(ttt_run / "model.pgolf"), "--data", str(tiny_dataset_dir),
                 "--config", str(ttt_run / "config.json"), "--prefix-tokens", "300", "--samples", "1", "--json"])
    report = json.loads(capsys.readouterr().out)
    names = {check["name"]: check["status"] for check in report["checks"]}
    assert all(names[rule] == "PASS" for rule in RULES), report
    assert "eval.time" in names and code == (0 if names["eval.time"] == "PASS" else 1)


@pytest.mark.slow
def test_submit_checks_a_ttt_run_and_refuses_a_failing_procedure(ttt_run, tiny_dataset_dir, tmp_path, capsys):
    arguments = ["submit", str(ttt_run), "--name", "n", "--author", "a", "--github-id", "g", "--no-export"]
    assert main([*arguments, "--data", str(tiny_dataset_dir), "--out", str(tmp_path / "records")]) == 0
    failing = [Check("eval.causality", False, "first violation at target 12: its NLL changed")]
    with pytest.raises(PgolfError, match="fails eval.causality: first violation at target 12"):
        write_submission([ttt_run], tmp_path / "refused", "n", "a", "g", eval_check=lambda run: failing)
    assert not (tmp_path / "refused").exists()

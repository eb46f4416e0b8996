"""The token n-gram tilt (#2135, spec frontier.md §9): hints against a dictionary walk, the tilt against its formula."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from pgolf.errors import PgolfError
from pgolf.tilt import OnlineHints, TiltSettings, TokenTilt, ngram_hints


def walked_hints(tokens: list[int], order: int, threshold: float, bos: int | None) -> np.ndarray:
    """The table walked target by target: context = the previous order - 1 tokens of the document."""
    table: dict[tuple, Counter] = defaultdict(Counter)
    hints, document_start = [], 0
    for target in range(len(tokens) - 1):
        if bos is not None and tokens[target] == bos:
            document_start = target
        context = tuple(tokens[k] if k >= max(document_start, 0) else None
                        for k in range(target - order + 2, target + 1))
        seen = table[context]
        total = sum(seen.values())
        hint = -1
        if total:
            token, count = seen.most_common(1)[0]
            hint = token if count >= threshold * total else -1
        hints.append(hint)
        seen[tokens[target + 1]] += 1
    return np.array(hints)


@pytest.mark.parametrize("seed", range(12))
def test_hints_equal_the_dictionary_walk(seed):
    generator = np.random.default_rng(seed)
    vocab, length, order = int(generator.integers(2, 6)), int(generator.integers(2, 300)), int(generator.integers(2, 6))
    tokens = generator.integers(0, vocab, length)
    threshold = float(generator.choice([0.6, 0.8, 1.0]))
    bos = None if seed % 2 else 0
    expected = walked_hints(tokens.tolist(), order, threshold, bos)
    assert (ngram_hints(tokens, order, threshold, bos) == expected).all()
    # the online table, fed in stream order in uneven pieces, gives the same hints
    online = OnlineHints(tokens, order, threshold, bos)
    cuts = np.sort(generator.choice(np.arange(1, length), size=min(3, length - 1), replace=False))
    pieces = [online.hints_for(piece) for piece in np.split(np.arange(length - 1), cuts)]
    assert (np.concatenate(pieces) == expected).all()


def test_repeated_text_gets_hints_and_they_read_only_the_past():
    tokens = np.array([1] + [5, 6, 7, 8] * 6)
    hints = ngram_hints(tokens, order=3, threshold=0.8, bos_id=1)
    assert (hints[8:] == tokens[9:]).all()  # from the third repetition on, the hint is the next token
    changed = tokens.copy()
    changed[15:] = 9  # the future changes; hints up to target 14 (reading tokens <= 14) cannot
    assert (ngram_hints(changed, 3, 0.8, 1)[:15] == hints[:15]).all()


def test_tilt_is_the_renormalised_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 11, generator=generator)
    targets = torch.tensor([3, 4, 0, 10, 2, 2])
    hints = torch.tensor([3, 5, -1, 10, 7, 2])
    beta = 2.625
    tilt = TokenTilt(lambda index: hints[index], beta)
    nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    tilted, rows = tilt.apply(logits, targets, torch.arange(6), nll, record=True)
    for position in range(6):
        probabilities = torch.softmax(logits[position].double(), -1)
        hint = int(hints[position])
        if hint < 0:
            expected = -math.log(probabilities[targets[position]])
        else:
            boosted = probabilities * torch.where(torch.arange(11) == hint, math.exp(beta), 1.0)
            expected = -math.log(boosted[targets[position]] / boosted.sum())  # p' = p e^{beta[v=h]} / Z
        assert tilted[position].item() == pytest.approx(expected, rel=1e-5)
        assert torch.logsumexp(rows[position].double(), -1).item() == pytest.approx(0.0, abs=1e-5)
        assert -rows[position, targets[position]].item() == pytest.approx(expected, rel=1e-5)


def test_settings_are_checked():
    TiltSettings().validate()
    for bad in (TiltSettings(threshold=0.5), TiltSettings(order=1), TiltSettings(beta=-1.0)):
        with pytest.raises(PgolfError):
            bad.validate()


def test_the_tilt_lowers_the_loss_on_repeated_text_in_both_orders():
    from dataclasses import replace

    from pgolf.distributed import DistInfo
    from pgolf.evaluate import SlidingProcedure, run_procedure
    from pgolf.ttt import TTTProcedure
    from test_ttt import SETTINGS, random_gpt, stream, unit_tables

    model, once = random_gpt(), stream(80, 2, seed=7)
    tokens = torch.cat([once, once[1:], once[1:]])
    tilt = TiltSettings(order=4, threshold=0.8)
    for procedure in (SlidingProcedure(32, 8, 4), TTTProcedure(replace(SETTINGS, phase_boundaries=()))):
        plain = run_procedure(procedure, model, tokens, unit_tables(), DistInfo())
        tilted = run_procedure(replace(procedure, tilt_settings=tilt), model, tokens, unit_tables(), DistInfo())
        assert tilted.tokens == plain.tokens and tilted.loss < plain.loss - 0.1

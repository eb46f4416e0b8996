"""Welch's t-tests for run sets: the one-sided record rule and the two-sided ablation comparison.

The tests themselves are scipy's (`scipy.stats.ttest_ind(equal_var=False)`,
`ttest_1samp`); this module only shapes them to pgolf's questions. Lower
losses are better throughout.

- `welch_one_sided`: does the candidate beat the baseline by more than a
  margin (the challenge's record rule)?
- `welch_difference`: how far is a cell's mean from the control's, with a
  two-sided p-value and a confidence interval on the difference from the
  Welch-Satterthwaite degrees of freedom.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from pgolf.errors import PgolfError


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    if not values:
        raise PgolfError("no values to average")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class WelchResult:
    t: float
    df: float
    p_value: float  # one-sided
    difference: float  # baseline mean - candidate mean (> 0: candidate is lower, i.e. better)


def welch_one_sided(candidate: list[float], baseline: list[float], margin: float = 0.0) -> WelchResult:
    """Test H1: mean(candidate) < mean(baseline) - margin (lower is better), Welch's unequal variances.

    A single baseline value is treated as exact (variance 0): the test becomes a one-sample t-test
    with n - 1 degrees of freedom. `t` is positive when the candidate is ahead of baseline - margin.
    """
    from scipy import stats

    if len(candidate) < 2:
        raise PgolfError(f"a t-test needs at least 2 candidate runs, got {len(candidate)}")
    mean_c, std_c = mean_and_std(candidate)
    mean_b, std_b = mean_and_std(baseline)
    difference = mean_b - mean_c
    if std_c == 0.0 and std_b == 0.0:  # scipy answers nan; the ordering of the means is then certain
        t = math.inf if difference > margin else -math.inf
        return WelchResult(t, float(len(candidate) - 1), 0.0 if difference > margin else 1.0, difference)
    shifted = [value + margin for value in candidate]  # H1 becomes mean(shifted) < mean(baseline)
    if len(baseline) == 1:
        test = stats.ttest_1samp(shifted, baseline[0], alternative="less")
    else:
        test = stats.ttest_ind(shifted, baseline, equal_var=False, alternative="less")
    return WelchResult(-float(test.statistic), float(test.df), float(test.pvalue), difference)


@dataclass(frozen=True)
class Difference:
    """mean(cell) - mean(control), its confidence interval and Welch's two-sided test."""
    mean: float
    low: float
    high: float
    p_value: float  # two-sided; nan when neither sample has any spread
    df: float
    confidence: float


def welch_difference(cell: list[float], control: list[float], confidence: float = 0.95) -> Difference:
    """mean(cell) - mean(control) with a `confidence` interval and Welch's two-sided p-value.

    Both samples need at least 2 values. The interval is the difference +- t_{(1+confidence)/2, df}
    times the standard error sqrt(s_cell^2/n_cell + s_control^2/n_control), df from Welch-Satterthwaite;
    with no spread at all it collapses to the difference and the p-value is nan.
    """
    from scipy import stats

    if len(cell) < 2 or len(control) < 2:
        raise PgolfError(f"a two-sample t-test needs at least 2 values on each side, got {len(cell)} and "
                         f"{len(control)}")
    mean = statistics.fmean(cell) - statistics.fmean(control)
    if statistics.stdev(cell) == 0.0 and statistics.stdev(control) == 0.0:
        return Difference(mean, mean, mean, math.nan, float(len(cell) + len(control) - 2), confidence)
    test = stats.ttest_ind(cell, control, equal_var=False)
    interval = test.confidence_interval(confidence_level=confidence)
    return Difference(mean, float(interval.low), float(interval.high), float(test.pvalue), float(test.df),
                      confidence)

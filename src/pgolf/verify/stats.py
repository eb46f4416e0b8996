"""Student's t distribution and Welch's t-test, in plain Python (scipy is not a dependency).

The t CDF goes through the regularised incomplete beta function:
for t >= 0, P(T <= t) = 1 - I_x(df/2, 1/2) / 2 with x = df / (df + t^2).
I_x(a, b) is evaluated with its continued fraction (modified Lentz method),
using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges
slowly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pgolf.errors import PgolfError

_TINY = 1e-300
_EPSILON = 1e-15
_MAX_TERMS = 1000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (without its prefactor); converges for x < (a+1)/(a+b+2)."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    result = d
    for m in range(1, _MAX_TERMS + 1):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) > _TINY else _TINY
            result *= c * d
        if abs(c * d - 1.0) < _EPSILON:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if a <= 0 or b <= 0 or not 0.0 <= x <= 1.0:
        raise PgolfError(f"incomplete beta needs a, b > 0 and x in [0, 1], got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_prefactor = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_prefactor) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_prefactor) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` (> 0, not necessarily integer) degrees of freedom."""
    if df <= 0:
        raise PgolfError(f"t distribution needs df > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1.0 - tail if t >= 0 else tail


def mean_and_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for one value)."""
    n = len(values)
    if n == 0:
        raise PgolfError("no values to average")
    mean = math.fsum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class WelchResult:
    t: float
    df: float
    p_value: float  # one-sided
    difference: float  # baseline mean - candidate mean (> 0: candidate is lower, i.e. better)


def welch_one_sided(candidate: list[float], baseline: list[float], margin: float = 0.0) -> WelchResult:
    """Test H1: mean(candidate) < mean(baseline) - margin (lower is better), Welch's unequal variances.

    A single baseline value is treated as exact (variance 0): the test becomes a one-sample t-test
    with n - 1 degrees of freedom.
    """
    if len(candidate) < 2:
        raise PgolfError(f"a t-test needs at least 2 candidate runs, got {len(candidate)}")
    mean_c, std_c = mean_and_std(candidate)
    mean_b, std_b = mean_and_std(baseline)
    var_c = std_c ** 2 / len(candidate)
    var_b = std_b ** 2 / len(baseline) if len(baseline) > 1 else 0.0
    difference = mean_b - mean_c
    standard_error = math.sqrt(var_c + var_b)
    if standard_error == 0.0:
        t = math.inf if difference > margin else -math.inf
        return WelchResult(t, float(len(candidate) - 1), 0.0 if difference > margin else 1.0, difference)
    t = (difference - margin) / standard_error
    terms = var_c ** 2 / (len(candidate) - 1) + (var_b ** 2 / (len(baseline) - 1) if len(baseline) > 1 else 0.0)
    df = (var_c + var_b) ** 2 / terms if terms > 0 else float(len(candidate) - 1)
    return WelchResult(t, df, 1.0 - student_t_cdf(t, df), difference)

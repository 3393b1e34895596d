"""Statistics every layer reports with: mean with a 95% confidence interval, and the paired test that compares
two methods on identical episodes. A leaf module: numpy and math only."""

from __future__ import annotations

import math

import numpy as np


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% CI: 1.96 * std / sqrt(M) (population std, as in the
    few-shot literature)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(1.96 * arr.std() / math.sqrt(arr.size))


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    # Converges in O(sqrt(max(a, b))) terms, so even a million degrees of freedom stay within the bound.
    for m in range(1, 20_000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return fraction


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the CDF at ``x`` of a Beta(a, b) distribution."""
    if not (a > 0 and b > 0):
        raise ValueError(f"the incomplete beta function needs a > 0 and b > 0, not a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side; use the symmetry on the other
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom (exact, through the incomplete beta)."""
    if not df > 0:
        raise ValueError(f"a t-distribution needs df > 0, not {df}")
    if math.isinf(t):
        return 0.0
    return min(1.0, regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))


def paired_test(candidate, baseline) -> tuple[float, float]:
    """Mean per-episode difference (candidate - baseline) and the two-sided p-value of a paired t-test.

    Both arrays hold one score per episode (or task), the same episodes in the same order. Differences that are
    all equal give p = 1 when they are zero and p = 0 otherwise (no spread: the difference is certain).
    """
    a = np.asarray(candidate, np.float64)
    b = np.asarray(baseline, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a paired test needs one score per episode for both, on the same episodes; got "
                         f"shapes {a.shape} and {b.shape}")
    if a.size < 2:
        raise ValueError(f"a paired test needs at least 2 episodes, not {a.size}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a paired test needs finite scores; some are NaN or infinite")
    diff = a - b
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1))
    if sd == 0.0 or sd <= 1e-12 * max(abs(mean), 1e-300):  # constant differences (up to rounding)
        return mean, 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(diff.size))
    return mean, t_two_sided_p(t, diff.size - 1)

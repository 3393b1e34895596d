"""The statistics leaf: mean with a 95% CI, the exact t-distribution tail and the paired t-test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.core.stats import mean_ci95, paired_test, regularized_incomplete_beta, t_two_sided_p


def _p_df1(t: float) -> float:  # Cauchy: closed form
    return 1.0 - 2.0 / math.pi * math.atan(abs(t))


def _p_df2(t: float) -> float:
    return 1.0 - abs(t) / math.sqrt(2.0 + t * t)


def _p_df4(t: float) -> float:
    u = 1.0 + t * t / 4.0
    return 1.0 - 0.75 * abs(t) / math.sqrt(u) * (1.0 - t * t / (12.0 * u))


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 7.0, 60.0])
def test_t_tail_matches_the_closed_forms_of_small_degrees_of_freedom(t):
    assert t_two_sided_p(t, 1) == pytest.approx(_p_df1(t), rel=1e-10, abs=1e-14)
    assert t_two_sided_p(-t, 2) == pytest.approx(_p_df2(t), rel=1e-10, abs=1e-14)
    assert t_two_sided_p(t, 4) == pytest.approx(_p_df4(t), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("t, df, p", [(12.706, 1, 0.05), (2.228, 10, 0.05), (4.032, 5, 0.01), (1.96, 1e7, 0.05),
                                      (2.576, 1e7, 0.01)])
def test_t_tail_at_printed_critical_values(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)


def test_t_tail_limits_and_errors():
    assert t_two_sided_p(0.0, 7) == 1.0 and t_two_sided_p(math.inf, 7) == 0.0
    assert regularized_incomplete_beta(2.0, 3.0, 0.0) == 0.0 and regularized_incomplete_beta(2.0, 3.0, 1.0) == 1.0
    # I_x(1, 1) is the uniform CDF; I_x(a, 1) = x^a.
    assert regularized_incomplete_beta(1.0, 1.0, 0.37) == pytest.approx(0.37, rel=1e-12)
    assert regularized_incomplete_beta(3.0, 1.0, 0.5) == pytest.approx(0.125, rel=1e-12)
    with pytest.raises(ValueError, match="df > 0"):
        t_two_sided_p(1.0, 0)


def test_paired_test_against_a_hand_computed_t_statistic():
    candidate = [3.0, 5.0, 4.0, 6.0, 5.0]
    baseline = [2.0, 3.0, 3.0, 4.0, 4.0]
    # Differences 1, 2, 1, 2, 1: mean 1.4, sample sd sqrt(0.3), t = 1.4 / (sqrt(0.3) / sqrt(5)) on 4 df.
    t = 1.4 / (math.sqrt(0.3) / math.sqrt(5))
    diff, p = paired_test(candidate, baseline)
    assert diff == pytest.approx(1.4)
    assert p == pytest.approx(_p_df4(t), rel=1e-9)
    assert 0.001 < p < 0.01  # t = 5.72 lies between the printed 4-df critical values 4.604 and 8.610
    reversed_diff, reversed_p = paired_test(baseline, candidate)
    assert reversed_diff == pytest.approx(-1.4) and reversed_p == pytest.approx(p)


def test_paired_test_agrees_with_scipy_when_it_is_installed():
    stats = pytest.importorskip("scipy.stats")  # scikit-learn pulls it in; the workbench does not need it
    rng = np.random.default_rng(3)
    for n in (2, 3, 30, 600):
        base = rng.uniform(0.3, 0.7, n)
        other = base + rng.normal(0.01, 0.05, n)
        _, p = paired_test(other, base)
        assert p == pytest.approx(float(stats.ttest_rel(other, base).pvalue), rel=1e-8)


def test_paired_test_identical_and_constant_differences():
    scores = np.linspace(0.2, 0.9, 40)
    assert paired_test(scores, scores) == (0.0, 1.0)
    diff, p = paired_test(scores + 0.25, scores)  # every episode exactly 0.25 better: no doubt left
    assert diff == pytest.approx(0.25) and p == 0.0


@pytest.mark.parametrize("candidate, baseline, message", [
    ([0.5, 0.6, 0.7], [0.5, 0.6], "same episodes"),
    ([0.5], [0.4], "at least 2"),
    ([[0.5, 0.6]], [[0.4, 0.5]], "one score per episode"),
    ([0.5, float("nan")], [0.4, 0.5], "finite"),
])
def test_paired_test_refuses_mismatched_or_bad_inputs(candidate, baseline, message):
    with pytest.raises(ValueError, match=message):
        paired_test(candidate, baseline)


def test_mean_ci95():
    mean, ci = mean_ci95([0.0, 1.0, 0.0, 1.0])
    assert mean == 0.5 and ci == pytest.approx(1.96 * 0.5 / 2)
    assert all(math.isnan(v) for v in mean_ci95([]))

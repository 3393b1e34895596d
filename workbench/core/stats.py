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

"""Try a trained regression model on your own points: the points are a support set, the model adapts to them with
0, 1, ... N inner steps, and each step's prediction is returned on a grid with its support-set MSE. Headless (no
Qt): the regression "Try a task" view calls it, so the view holds no learning logic.

Adapting a 1-40-40-1 MLP on up to :data:`MAX_POINTS` points takes milliseconds per step, so each step count is
adapted afresh from the meta-learned start through the algorithm's public ``adapt``/``predict``.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from workbench.core.errors import WorkbenchError

REGRESSION_KIND = "regression"
X_RANGE = (-5.0, 5.0)  # the sine tasks' input range
Y_LIMIT = 100.0  # far beyond any sine task's amplitude; larger values only make adaptation diverge
MAX_POINTS = 50
MAX_STEPS = 50
DEFAULT_STEPS = 10
GRID_POINTS = 200


class PointsError(WorkbenchError):
    """User points that cannot make a support set (a missing, non-finite or out-of-range value)."""


@dataclass
class PointsFit:
    """Predictions on a grid after each count of inner steps, for one support set."""

    support_x: np.ndarray  # [K]
    support_y: np.ndarray  # [K]
    x_grid: np.ndarray  # [G]
    steps: list[int]  # the inner-step counts, e.g. 0..10
    predictions: np.ndarray  # [len(steps), G]
    support_mse: np.ndarray  # [len(steps)], MSE on the support points after each count
    algorithm: str = ""

    def prediction_at(self, steps: int) -> np.ndarray:
        return self.predictions[self.steps.index(steps)]


def check_points(xs: Sequence[Any], ys: Sequence[Any], x_range: tuple[float, float] = X_RANGE,
                 max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Validated float32 arrays of the points; PointsError naming the first bad point otherwise."""
    xs, ys = list(xs), list(ys)
    if len(xs) != len(ys):
        raise PointsError(f"{len(xs)} x values but {len(ys)} y values; give one y per x")
    if not xs:
        raise PointsError("no points: add at least one (x, y) point to adapt to")
    if len(xs) > max_points:
        raise PointsError(f"{len(xs)} points; at most {max_points} are allowed")
    low, high = x_range
    for number, (x, y) in enumerate(zip(xs, ys), start=1):
        for name, value in (("x", x), ("y", y)):
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise PointsError(f"point {number}: {name} = {value!r} is not a number") from None
            if not math.isfinite(value):
                raise PointsError(f"point {number}: {name} = {value} is not a finite number")
        if not low <= float(x) <= high:
            raise PointsError(f"point {number}: x = {float(x):g} is outside [{low:g}, {high:g}], the range the "
                              f"model was trained on")
        if abs(float(y)) > Y_LIMIT:
            raise PointsError(f"point {number}: y = {float(y):g} is outside [-{Y_LIMIT:g}, {Y_LIMIT:g}]")
    return np.asarray(xs, dtype=np.float32), np.asarray(ys, dtype=np.float32)


def parse_points(text: str) -> tuple[list[float], list[float]]:
    """Points from text: "x, y" pairs separated by newlines or semicolons (e.g. "-2, 1.5; 0, 0; 3.1, -2")."""
    xs, ys = [], []
    for number, chunk in enumerate([c for c in re.split(r"[;\n]", text) if c.strip()], start=1):
        parts = [p for p in re.split(r"[,\s]+", chunk.strip().strip("()")) if p]
        if len(parts) != 2:
            raise PointsError(f"point {number} ('{chunk.strip()}'): write it as 'x, y'")
        try:
            x, y = float(parts[0]), float(parts[1])
        except ValueError:
            raise PointsError(f"point {number} ('{chunk.strip()}'): x and y must be numbers") from None
        xs.append(x)
        ys.append(y)
    return xs, ys


def format_points(xs: Sequence[float], ys: Sequence[float]) -> str:
    """The inverse of :func:`parse_points`: one "x, y" pair per line."""
    return "\n".join(f"{x:.3g}, {y:.3g}" for x, y in zip(xs, ys))


def check_model(model) -> None:
    """PointsError unless ``model`` (a LoadedModel from ``load_model``) is a regression model."""
    kind = getattr(getattr(model.algorithm, "kind", None), "name", "")
    if kind != REGRESSION_KIND:
        raise PointsError(f"{model.algorithm.title} was trained for {kind or 'another kind'}, not regression; "
                          f"pick a regression run to try points")


def adapts_by_steps(algorithm) -> bool:
    """Whether the algorithm's ``adapt`` takes a step count (gradient-based ones do)."""
    return "steps" in inspect.signature(algorithm.adapt).parameters


def fit_points(model, xs: Sequence[Any], ys: Sequence[Any], steps: int = DEFAULT_STEPS,
               grid_points: int = GRID_POINTS, x_range: tuple[float, float] = X_RANGE) -> PointsFit:
    """Adapt ``model`` to the points with 0..``steps`` inner steps; each count's prediction on a grid over
    ``x_range`` and its support MSE. An algorithm whose ``adapt`` takes no step count gives one curve."""
    check_model(model)
    support_x, support_y = check_points(xs, ys, x_range)
    if not 0 <= int(steps) <= MAX_STEPS:
        raise PointsError(f"steps = {steps}: choose between 0 and {MAX_STEPS} inner steps")
    algorithm = model.algorithm
    device = getattr(algorithm, "device", "cpu")
    sx = torch.from_numpy(support_x).reshape(-1, 1).to(device)
    sy = torch.from_numpy(support_y).reshape(-1, 1).to(device)
    grid = np.linspace(x_range[0], x_range[1], grid_points, dtype=np.float32)
    query = torch.from_numpy(np.concatenate([grid, support_x])).reshape(-1, 1).to(device)
    counts = list(range(int(steps) + 1)) if adapts_by_steps(algorithm) else [None]
    predictions, mses = [], []
    for count in counts:
        adapted = algorithm.adapt(sx, sy, ways=1) if count is None else algorithm.adapt(sx, sy, ways=1, steps=count)
        with torch.no_grad():
            out = algorithm.predict(adapted, query).detach().reshape(-1).float().cpu().numpy()
        predictions.append(out[:grid_points])
        with np.errstate(over="ignore", invalid="ignore"):  # a diverging adaptation gives inf/nan: reported as such
            mses.append(float(np.mean((out[grid_points:].astype(np.float64) - support_y) ** 2)))
    labels = counts if counts != [None] else [_default_steps(algorithm)]
    return PointsFit(support_x, support_y, grid, labels, np.stack(predictions), np.asarray(mses, dtype=np.float32),
                     algorithm.title)


def _default_steps(algorithm) -> int:
    name = getattr(algorithm, "adaptation_steps_hparam", None)
    value = getattr(algorithm.hparams, name, 0) if name else 0
    return int(value) if isinstance(value, int) else 0

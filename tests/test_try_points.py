"""Regression "try a task" core: point validation and parsing, and adapting a real (tiny) trained regression model
to user points step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.core.try_points import (MAX_POINTS, PointsError, check_points, fit_points, format_points,
                                       parse_points)


def train_tiny_regression(home, algorithm: str = "maml", steps: int = 12):
    """A few meta-steps of the paper's sine setup on a small budget; returns the Run."""
    import torch

    from workbench.core.config import ExperimentConfig
    from workbench.core.runs import RunStore
    from workbench.core.training.trainer import Trainer

    config = ExperimentConfig.from_dict({
        "name": f"tiny-{algorithm}-sine", "kind": "regression",
        "dataset": {"name": "sine", "shots": 5, "queries": 10},
        "algorithm": {"name": algorithm, "recipe": "paper"},
        "training": {"steps": steps, "val_interval": steps // 2, "val_episodes": 4, "checkpoint_interval": steps,
                     "meta_batch": 4, "lr": 1e-3, "lr_schedule": "constant", "device": "cpu", "threads": 1,
                     "seed": 0}})
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, RunStore(home))
        trainer.run_all()
        return trainer.run
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory):
    from workbench.core.runs import load_model

    return load_model(train_tiny_regression(tmp_path_factory.mktemp("regression-home")))


# --- points ------------------------------------------------------------------------------------------------

def test_check_points_accepts_and_converts():
    xs, ys = check_points([-5, 0.5, "5"], [1, -2.5, 0])
    assert xs.dtype == np.float32 and xs.tolist() == [-5.0, 0.5, 5.0] and ys.tolist() == [1.0, -2.5, 0.0]


@pytest.mark.parametrize("xs, ys, message", [
    ([], [], "at least one"),
    ([1.0, 2.0], [1.0], "2 x values but 1 y values"),
    ([1.0, 6.0], [0.0, 0.0], "point 2: x = 6 is outside [-5, 5]"),
    ([1.0, math.nan], [0.0, 0.0], "point 2: x = nan is not a finite number"),
    ([0.0], [math.inf], "point 1: y = inf is not a finite number"),
    ([0.0], ["abc"], "point 1: y = 'abc' is not a number"),
    ([0.0], [1e6], "point 1: y = 1e+06 is outside"),
    ([0.0] * (MAX_POINTS + 1), [0.0] * (MAX_POINTS + 1), f"at most {MAX_POINTS}"),
])
def test_check_points_names_the_bad_point(xs, ys, message):
    with pytest.raises(PointsError) as error:
        check_points(xs, ys)
    assert message in str(error.value)


def test_parse_and_format_points_round_trip():
    xs, ys = parse_points("-2, 1.5; (0 0)\n 3.25,-2 ;")
    assert xs == [-2.0, 0.0, 3.25] and ys == [1.5, 0.0, -2.0]
    assert parse_points(format_points(xs, ys)) == (xs, ys)
    with pytest.raises(PointsError, match=r"point 2 \('1, 2, 3'\): write it as 'x, y'"):
        parse_points("0, 0; 1, 2, 3")
    with pytest.raises(PointsError, match="point 1 .* must be numbers"):
        parse_points("a, 1")


# --- adaptation --------------------------------------------------------------------------------------------

def test_fit_points_step_by_step(regression_model):
    xs = [-4.0, -1.5, 0.5, 2.0, 4.0]
    ys = [3.0 * math.sin(x - 1.0) for x in xs]
    fit = fit_points(regression_model, xs, ys, steps=10)
    assert fit.steps == list(range(11))
    assert fit.predictions.shape == (11, fit.x_grid.size) and fit.x_grid[0] == -5.0 and fit.x_grid[-1] == 5.0
    assert np.isfinite(fit.predictions).all() and np.isfinite(fit.support_mse).all()
    assert fit.support_mse[10] < fit.support_mse[0]  # gradient steps on the support set lower its loss
    assert not np.allclose(fit.prediction_at(10), fit.prediction_at(0))
    assert fit.algorithm == regression_model.algorithm.title


def test_step_zero_is_the_meta_learned_start(regression_model):
    first = fit_points(regression_model, [-3.0, 1.0], [2.0, -1.0], steps=2)
    second = fit_points(regression_model, [0.0, 4.0, 2.0], [-3.0, 1.0, 0.5], steps=2)
    np.testing.assert_allclose(first.prediction_at(0), second.prediction_at(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(first.prediction_at(2), second.prediction_at(2))


def test_support_mse_matches_the_predictions(regression_model):
    grid = np.linspace(-5.0, 5.0, 101, dtype=np.float32)
    picks = [10, 40, 77]
    ys = [1.0, -2.0, 0.5]
    fit = fit_points(regression_model, grid[picks].tolist(), ys, steps=3, grid_points=101)
    for k in fit.steps:
        expected = np.mean((fit.predictions[k][picks] - np.asarray(ys)) ** 2)
        assert fit.support_mse[k] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_fit_points_rejects_bad_input(regression_model):
    with pytest.raises(PointsError, match="point 1: x = -7"):
        fit_points(regression_model, [-7.0], [0.0])
    with pytest.raises(PointsError, match="steps = 99"):
        fit_points(regression_model, [0.0], [0.0], steps=99)


def test_classification_model_is_refused():
    from workbench.core.runs import load_model
    from workbench.core.tryatask import resolve_model_source

    model = load_model(resolve_model_source("protonet-glyphs"))
    with pytest.raises(PointsError, match="not regression; pick a regression run"):
        fit_points(model, [0.0], [0.0])

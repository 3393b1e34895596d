"""Learning to optimize (Andrychowicz et al. 2016): the LSTM optimizer's unrolled meta-gradient against finite
differences, the seeded optimizee problems, the tuned hand-made baselines, the evaluation result and a tiny run
through the Trainer with its race record and a checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset
from workbench.core.algorithms import get_algorithm
from workbench.core.algorithms.lstm_optimizer import CoordinateLSTM, unrolled_loss
from workbench.core.data.optimizees import FixedProblems, OptimizeeSettings, ProblemSampler, ProblemSource
from workbench.core.errors import ConfigError
from workbench.core.kinds import get_kind
from workbench.core.kinds.learning_to_optimize import (HAND_OPTIMIZERS, LEARNED, L2OResult, LR_GRID, hand_steps,
                                                       race, trajectory, tuned_rates)

KIND = "learning-to-optimize"


def tiny_quadratic(dimension: int = 3, seed: int = 0, dtype=torch.float64):
    problem = ProblemSource(OptimizeeSettings("quadratic", dimension, horizon=6)).make("train", seed)
    problem.W, problem.y, problem.theta0 = (t.to(dtype) for t in (problem.W, problem.y, problem.theta0))
    return problem


def flat_params(net) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def set_params(net, flat: torch.Tensor) -> None:
    start = 0
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(flat[start:start + p.numel()].view_as(p))
            start += p.numel()


def meta_gradient(net, problem, steps: int, second_order: bool) -> torch.Tensor:
    net.zero_grad()
    total, *_ = unrolled_loss(net, problem, problem.theta0, None, 0, steps, second_order)
    total.backward()
    return torch.cat([p.grad.reshape(-1) for p in net.parameters()])


def test_unrolled_meta_gradient_matches_finite_differences_on_a_tiny_quadratic(one_torch_thread):
    """With second derivatives, d/dφ Σ_t f(θ_t(φ)) along the unroll is the exact derivative of the unrolled loss."""
    torch.manual_seed(0)
    net = CoordinateLSTM(hidden=4, output_scale=0.1).double()
    problem = tiny_quadratic()
    analytic = meta_gradient(net, problem, 4, second_order=True)
    base = flat_params(net)

    def loss_at(flat):
        set_params(net, flat)
        with torch.enable_grad():
            return float(unrolled_loss(net, problem, problem.theta0, None, 0, 4, True)[0].detach())

    generator = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(4):
        direction = torch.randn(base.shape, generator=generator, dtype=torch.float64)
        numeric = (loss_at(base + eps * direction) - loss_at(base - eps * direction)) / (2 * eps)
        assert numeric == pytest.approx(float(analytic @ direction), rel=1e-5, abs=1e-8)
    set_params(net, base)


def test_first_order_meta_gradient_treats_the_gradients_as_inputs(one_torch_thread):
    """The paper's meta-gradient (second derivatives dropped) is the derivative of the unrolled loss with the
    optimizee gradients held at their values: checked against finite differences of that function, and it differs
    from the exact one."""
    torch.manual_seed(0)
    net = CoordinateLSTM(hidden=4).double()
    problem = tiny_quadratic(seed=1)
    steps = 4
    first = meta_gradient(net, problem, steps, second_order=False)
    exact = meta_gradient(net, problem, steps, second_order=True)
    # The gradients met along the unperturbed run, then the unroll with them frozen.
    grads, theta, state = [], problem.theta0.clone().requires_grad_(True), None
    for t in range(steps):
        grad, = torch.autograd.grad(problem.loss(theta, t), theta)
        grads.append(grad)
        with torch.no_grad():
            update, state = net(grad, state)
        theta = (theta + update).detach().requires_grad_(True)
    base = flat_params(net)

    def frozen_loss(flat) -> float:
        set_params(net, flat)
        theta, state, total = problem.theta0.clone(), None, 0.0
        with torch.no_grad():
            for t in range(steps):
                update, state = net(grads[t], state)
                theta = theta + update
                total += float(problem.loss(theta, t + 1))
        return total

    direction = torch.randn(base.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    eps = 1e-6
    numeric = (frozen_loss(base + eps * direction) - frozen_loss(base - eps * direction)) / (2 * eps)
    set_params(net, base)
    assert numeric == pytest.approx(float(first @ direction), rel=1e-5, abs=1e-8)
    assert not torch.allclose(first, exact)


def test_problems_are_seeded_and_splits_differ():
    source = ProblemSource(OptimizeeSettings("quadratic", 5))
    a, b = FixedProblems(source, "test", 3, seed=4), FixedProblems(source, "test", 3, seed=4)
    assert all(torch.equal(p.W, q.W) and torch.equal(p.theta0, q.theta0) for p, q in zip(a, b))
    val = FixedProblems(source, "val", 3, seed=4)
    assert not torch.equal(a[0].W, val[0].W) and not torch.equal(a[0].W, a[1].W)
    sampler = ProblemSampler(source, seed=0)
    assert not torch.equal(sampler.sample().W, sampler.sample().W)
    theta = a[0].theta0
    assert float(a[0].loss(theta, 0)) == pytest.approx(float(((a[0].W @ theta - a[0].y) ** 2).sum()))


@pytest.mark.parametrize("network", ["mlp", "convnet"])
def test_image_problems_use_the_split_classes_and_the_same_batches_for_everyone(network):
    dataset = synthetic_dataset(image_size=12, per_class=6)
    source = ProblemSource(OptimizeeSettings(network, ways=4, batch_size=8), dataset)
    problem = FixedProblems(source, "test", 1, seed=0)[0]
    assert problem.images.shape[1:] == (1, 12, 12) and int(problem.labels.max()) == 3
    assert len(problem.labels) == 4 * 6  # every image of the four test classes
    assert torch.equal(problem.batch_index(3), problem.batch_index(3))
    assert not torch.equal(problem.batch_index(3), problem.batch_index(4))
    loss = problem.loss(problem.theta0, 0)
    assert 0.5 < float(loss) < 10  # an untrained network's cross-entropy over four classes
    with pytest.raises(ConfigError, match="classes per problem"):
        FixedProblems(ProblemSource(OptimizeeSettings(network, ways=50), dataset), "test", 1, 0)
    with pytest.raises(ConfigError, match="image dataset"):
        ProblemSource(OptimizeeSettings(network), None)


def test_hand_made_optimizers_run_tuned_rates_and_diverged_runs_stay_infinite(one_torch_thread):
    problem = tiny_quadratic(dtype=torch.float32)
    curve = trajectory(hand_steps("sgd", 1e-3, problem, 20), 20)
    assert curve.shape == (21,) and curve[-1] < curve[0]
    exploded = trajectory(hand_steps("sgd", 1e3, problem, 50), 50)
    assert np.isinf(exploded[-1])
    problems = FixedProblems(ProblemSource(OptimizeeSettings("quadratic", 3, horizon=15)), "train", 2, 0)
    rates = tuned_rates(problems, 15)
    assert set(rates) == set(HAND_OPTIMIZERS) and set(rates.values()) <= set(LR_GRID)
    # The tuned rate is the grid's best for SGD on those problems.
    finals = [np.mean([trajectory(hand_steps("sgd", lr, p, 15), 15)[-1] for p in problems]) for lr in LR_GRID]
    assert rates["sgd"] == LR_GRID[int(np.nanargmin(np.where(np.isfinite(finals), finals, np.inf)))]


def test_race_runs_every_optimizer_side_by_side(one_torch_thread):
    cls = get_algorithm("lstm-optimizer")
    kind = get_kind(KIND)
    algorithm = cls(cls.build_hparams({"hidden": 4}), kind.model_spec(None, None))
    problem = tiny_quadratic(dtype=torch.float32)
    rows = list(race(algorithm, problem, 5, {"adam": 0.1, "sgd": 0.01}))
    assert [t for t, _ in rows] == list(range(6))
    assert list(rows[0][1]) == [LEARNED, "adam", "sgd"]
    assert len({losses[LEARNED] for _, losses in rows}) > 1  # the learned optimizer moves θ
    start = float(problem.loss(problem.theta0, 0))
    assert all(losses[name] == pytest.approx(start) for name, losses in [(n, rows[0][1]) for n in rows[0][1]])


def test_result_reports_the_horizon_and_beyond_and_round_trips():
    curves = {LEARNED: np.array([[4.0, 2.0, 1.0, 0.5], [6.0, 3.0, 1.0, 0.7]]),
              "adam": np.array([[4.0, 3.0, 2.0, 0.2], [6.0, 4.0, 2.0, 0.3]]),
              "sgd": np.array([[4.0, 3.5, np.inf, np.inf], [6.0, 5.0, 3.0, 2.0]])}
    result = L2OResult(curves=curves, horizon=2, seed=3, optimizee="quadratic", rates={"adam": 0.1, "sgd": 0.01})
    assert result.value == pytest.approx(1.0) and result.steps == 3 and result.episodes == 2
    assert result.setting_text().startswith("2 test problems (quadratic), seed 3")
    data = result.to_dict()
    assert data["final_loss"] == pytest.approx(1.0) and "mse" not in data
    assert data["best_hand_made_at_2"] == "adam" and data["learned_beats_best_at_2"] is True
    assert data["learned_beats_best_at_3"] is False and data["loss_at_2"]["sgd"] is None  # diverged: no number
    assert data["extras"]["loss_by_optimizer"]["Adam (lr 0.1), 2 steps"] == pytest.approx(2.0)
    assert data["extras"]["loss_by_step"]["0"] == pytest.approx(5.0)
    back = L2OResult.from_dict(data, result.arrays())
    assert back.value == pytest.approx(result.value) and back.rates == result.rates
    assert np.array_equal(back.curves["adam"], curves["adam"].astype(np.float32))
    again = back.to_dict()["loss_at_3"]
    assert again["sgd"] is None and again["adam"] == pytest.approx(data["loss_at_3"]["adam"], rel=1e-6)


def test_kind_refuses_episode_settings():
    kind = get_kind(KIND)
    with pytest.raises(ConfigError, match="ways"):
        kind.fixed_tasks(None, None, "test", 2, 0, ways=5)


def test_training_run_records_the_race_evaluates_and_reloads(one_torch_thread):
    from workbench.core.config import ExperimentConfig
    from workbench.core.evaluation import evaluate_run
    from workbench.core.runs import load_model
    from workbench.core.snapshots import INSPECTION_FILE, read_inspections
    from workbench.core.training import Trainer

    config = ExperimentConfig.from_dict({
        "kind": KIND, "task": {"optimizee": "quadratic", "dimension": 4, "horizon": 8, "eval_steps": 12,
                               "tuning_problems": 1},
        "algorithm": {"name": "lstm-optimizer", "hparams": {"hidden": 6, "unroll": 4}},
        "training": {"steps": 4, "val_interval": 2, "val_episodes": 2, "checkpoint_interval": 2, "device": "cpu",
                     "threads": 1, "lr": 1e-2},
        "evaluation": {"episodes": 3, "seed": 5}})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(m["loss"]) and m["final_loss"] >= 0 for m in steps)
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [2, 4]
    race_record = history.records[-1]["race"]
    assert set(race_record) == {"step", "learned", "Adam", "SGD", "RMSprop", "Nesterov"}
    assert race_record["step"].tolist() == list(range(9))
    result = evaluate_run(trainer.run, trainer.store, device="cpu", checkpoint="last")
    assert result.steps == 12 and result.horizon == 8 and result.episodes == 3
    assert set(result.curves) == {LEARNED, *HAND_OPTIMIZERS}
    # The reloaded optimizer takes the same steps as the one in memory.
    loaded = load_model(trainer.run, kind="last")
    problem = FixedProblems(ProblemSource(OptimizeeSettings("quadratic", 4, horizon=8)), "test", 1, 9)[0]
    mine = trajectory(trainer.algorithm.optimizer_steps(problem, 6), 6)
    assert np.allclose(trajectory(loaded.algorithm.optimizer_steps(problem, 6), 6), mine)
    assert trainer.run.evaluations()[-1]["kind"] == KIND


def test_the_unroll_sums_the_losses_or_their_logs(one_torch_thread):
    torch.manual_seed(0)
    net = CoordinateLSTM(hidden=4).double()
    problem = tiny_quadratic(seed=2)
    theta, state, losses = problem.theta0.clone(), None, []
    for t in range(5):
        leaf = theta.clone().requires_grad_(True)
        grad, = torch.autograd.grad(problem.loss(leaf, t), leaf)
        with torch.no_grad():
            update, state = net(grad, state)
            theta = theta + update
            losses.append(float(problem.loss(theta, t + 1)))
    total, _, _, plain = unrolled_loss(net, problem, problem.theta0, None, 0, 5)
    logs, *_ = unrolled_loss(net, problem, problem.theta0, None, 0, 5, log_loss=True)
    assert float(total.detach()) == pytest.approx(sum(losses)) and plain == pytest.approx(sum(losses))
    assert float(logs.detach()) == pytest.approx(sum(math.log(v) for v in losses))
    floored, *_ = unrolled_loss(net, problem, problem.theta0, None, 0, 5, log_loss=True, log_floor=0.01)
    assert float(floored.detach()) == pytest.approx(sum(math.log(v + 0.01) for v in losses))

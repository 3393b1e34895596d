"""Reptile (Nichol et al. 2018): its outer update against the closed form of k SGD steps on a linear model (batched
and serial, with the annealed step), the inner Adam, the schedule, and training through the Trainer for
classification and sine regression with a checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.functional import named_params
from workbench.core.algorithms.reptile import InnerLoop, mini_batches
from workbench.core.config import ExperimentConfig
from workbench.core.data.episodes import Episode, FixedEpisodes
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGRESSION = ModelSpec(in_channels=1, image_size=0, ways=1, num_train_classes=0, kind="regression")
DIM, INNER_LR, INNER_STEPS, OUTER = 3, 0.1, 3, 0.5


class LinearNet(nn.Module):
    """features (none) + a linear head, laid out like the kinds' networks."""

    def __init__(self):
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(DIM, 1)

    def forward(self, x):
        return self.head(self.features(x))


def linear_reptile(outer_update: str, planned_steps: int):
    cls = get_algorithm("reptile")
    hparams = cls.build_hparams({"inner_optimizer": "sgd", "inner_lr": INNER_LR, "train_inner_steps": INNER_STEPS,
                                 "train_inner_batch": 0, "outer_step": OUTER, "outer_update": outer_update})
    algorithm = cls(hparams, REGRESSION)
    torch.manual_seed(0)
    algorithm.model = LinearNet().double()
    algorithm.configure_optimizers(1e-3, planned_steps, "cosine")  # training.lr and its schedule play no part
    return algorithm


def linear_task(seed: int) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(6, DIM, generator=gen, dtype=torch.float64)
    y = torch.randn(6, 1, generator=gen, dtype=torch.float64)
    return Episode(x[:4], y[:4], x[4:], y[4:], [0], ["task"])


def weights_of(algorithm) -> torch.Tensor:
    """[W, b] as one column."""
    head = algorithm.model.head
    return torch.cat([head.weight.detach().reshape(-1), head.bias.detach()]).unsqueeze(1)


def sgd_closed_form(w0: torch.Tensor, task: Episode) -> torch.Tensor:
    """k full-batch SGD steps on the mean squared error of a linear model, written as w_k = A^k w0 + sum_j A^j c with
    A = I - (2 lr / n) X'X and c = (2 lr / n) X'y (X with a column of ones), on support and query together."""
    x = torch.cat([task.support_x, task.query_x])
    y = torch.cat([task.support_y, task.query_y])
    xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    scale = 2 * INNER_LR / len(x)
    a = torch.eye(DIM + 1, dtype=x.dtype) - scale * xa.T @ xa
    c = scale * xa.T @ y
    powers = [torch.linalg.matrix_power(a, j) for j in range(INNER_STEPS + 1)]
    return powers[INNER_STEPS] @ w0 + sum(powers[j] for j in range(INNER_STEPS)) @ c


def test_batched_update_moves_toward_the_mean_of_the_closed_form_task_weights_with_the_annealed_step():
    algorithm = linear_reptile("batched", planned_steps=2)
    tasks = [linear_task(1), linear_task(2), linear_task(3)]
    theta = weights_of(algorithm)
    out = algorithm.meta_train_step(tasks)
    assert set(out) == {"loss", "mse"} and math.isfinite(out["loss"])
    moves = [sgd_closed_form(theta, task) - theta for task in tasks]
    expected = theta + OUTER * sum(moves) / len(moves)
    assert torch.allclose(weights_of(algorithm), expected, rtol=1e-12, atol=1e-12)
    # The second of two planned steps moves by half the step (linear annealing, from 1 to 0).
    theta = weights_of(algorithm)
    algorithm.meta_train_step(tasks[:2])
    moves = [sgd_closed_form(theta, task) - theta for task in tasks[:2]]
    assert torch.allclose(weights_of(algorithm), theta + OUTER / 2 * sum(moves) / 2, rtol=1e-12, atol=1e-12)
    assert algorithm.outer_step_now == 0.0  # the schedule ends at 0


def test_serial_update_moves_after_each_task_and_the_next_task_starts_from_there():
    algorithm = linear_reptile("serial", planned_steps=10)
    first, second = linear_task(4), linear_task(5)
    theta = weights_of(algorithm)
    algorithm.meta_train_step([first, second])
    after_first = theta + OUTER * (sgd_closed_form(theta, first) - theta)
    expected = after_first + OUTER * (sgd_closed_form(after_first, second) - after_first)
    assert torch.allclose(weights_of(algorithm), expected, rtol=1e-12, atol=1e-12)
    # Batched on the same tasks is a different update: the test above would catch serial running as batched.
    batched = linear_reptile("batched", planned_steps=10)
    batched.meta_train_step([first, second])
    assert not torch.allclose(weights_of(batched), expected, atol=1e-6)


def test_annealing_is_linear_to_zero_follows_a_time_budget_and_a_constant_option():
    algorithm = linear_reptile("batched", planned_steps=4)
    steps = []
    for _ in range(4):
        steps.append(algorithm.outer_step_now)
        algorithm.meta_train_step([linear_task(6)])
    assert steps == pytest.approx([OUTER, 0.75 * OUTER, 0.5 * OUTER, 0.25 * OUTER])
    assert algorithm.outer_step_now == 0.0
    timed = linear_reptile("batched", planned_steps=0)  # until a time budget: the trainer sets the time fraction
    timed.schedule_clock.time_fraction = 0.6
    timed.meta_train_step([linear_task(6)])
    assert timed.outer_step_now == pytest.approx(0.4 * OUTER)
    cls = get_algorithm("reptile")
    constant = cls(cls.build_hparams({"outer_anneal": "constant", "hidden": 8}), REGRESSION)
    constant.configure_optimizers(1e-3, 2, "constant")
    constant.schedule_clock.time_fraction = 0.9
    constant.optimizers[0].step()  # no gradients: moves nothing
    constant.step_schedulers()
    assert constant.outer_step_now == 1.0


def test_adam_inner_loop_takes_signed_steps_of_lr_first_and_leaves_the_start_untouched():
    model = LinearNet().double()
    start = named_params(model)
    before = {name: value.detach().clone() for name, value in start.items()}
    task = linear_task(7)
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    loop = InnerLoop(model, start, "adam", 0.01, torch.nn.functional.mse_loss)
    grads = torch.autograd.grad(torch.nn.functional.mse_loss(model(x), y), list(start.values()))
    loss_before, _ = loop.step(x, y)
    # Adam with beta1 = 0 (the paper's code): its first step is lr * g / (|g| + eps), the sign of g times lr.
    for (name, value), grad in zip(loop.weights.items(), grads):
        assert torch.allclose(value.detach(), before[name] - 0.01 * torch.sign(grad), atol=1e-8), name
    # Its second step has no momentum: lr * g2 / sqrt(v2 / (1 - 0.999^2)), v2 = 0.999 * 0.001 * g1^2 + 0.001 * g2^2.
    first = {name: value.detach().clone() for name, value in loop.weights.items()}
    moved = {name: value.detach().clone().requires_grad_(True) for name, value in first.items()}
    model_loss = torch.nn.functional.mse_loss(torch.func.functional_call(model, moved, (x,)), y)
    seconds = torch.autograd.grad(model_loss, list(moved.values()))
    loop.step(x, y)
    for (name, value), g1, g2 in zip(loop.weights.items(), grads, seconds):
        v2 = (0.999 * 0.001 * g1 ** 2 + 0.001 * g2 ** 2) / (1 - 0.999 ** 2)
        assert torch.allclose(value.detach(), first[name] - 0.01 * g2 / (v2.sqrt() + 1e-8), atol=1e-10), name
    for _ in range(30):
        loss, _ = loop.step(x, y)
    assert loss < loss_before
    assert all(torch.equal(before[name], value.detach()) for name, value in start.items())


def test_mini_batches_visit_each_example_once_per_pass():
    batches = mini_batches(20, 5, 8, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [5] * 8
    for first in (0, 4):
        assert sorted(torch.cat(batches[first:first + 4]).tolist()) == list(range(20))
    assert mini_batches(5, 5, 3) == [None] * 3 and mini_batches(5, 0, 2) == [None] * 2


def test_a_task_with_other_ways_moves_every_learned_head_row_alike():
    cls = get_algorithm("reptile")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 5, 10))
    algorithm.configure_optimizers(1e-3, 10, "constant")
    gen = torch.Generator().manual_seed(0)
    task = Episode(torch.randn(3, 1, 16, 16, generator=gen), torch.arange(3), torch.randn(6, 1, 16, 16, generator=gen),
                   torch.arange(3).repeat(2), [0, 1, 2], ["a", "b", "c"])
    rows = algorithm.model.head.weight.detach().clone()
    algorithm.meta_train_step([task])  # 3 ways on a 5-row head: the start is the rows' mean, so is the move
    moved = algorithm.model.head.weight.detach() - rows
    assert moved.abs().max() > 0
    assert torch.allclose(moved, moved[:1].expand_as(moved), atol=1e-7)


# --- through the trainer ---------------------------------------------------------------------------------------
SMALL = {"hidden": 8, "train_inner_steps": 3, "train_inner_batch": 6, "test_inner_steps": 5, "inner_lr": 0.003}


@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_through_the_trainer_and_a_checkpoint_predicts_identically():
    config = tiny_dataset_config(algorithm={"name": "reptile", "hparams": SMALL},
                                 training={"steps": 8, "meta_batch": 2, "val_interval": 4, "checkpoint_interval": 4})
    trainer = Trainer(config)
    final = trainer.run_all()
    assert final.event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 8 and all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in steps)
    # The recorded lr is the annealed outer step, not training.lr.
    assert [m["lr"] for m in steps] == pytest.approx([1 - k / 8 for k in range(1, 9)])
    episode = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    live = trainer.algorithm
    before = {k: v.clone() for k, v in live.model.state_dict().items()}
    adapted = live.adapt(episode.support_x, episode.support_y, 3)
    probs = live.predict(adapted, episode.query_x)
    assert all(torch.equal(before[k], v) for k, v in live.model.state_dict().items())  # adapting copies
    assert torch.equal(probs, live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x))
    loaded = load_model(trainer.run, kind="last").algorithm
    assert torch.equal(loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x), probs)
    trace = live.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 3)
    assert [t["step"] for t in trace] == list(range(6)) and trace[-1]["support_loss"] < trace[0]["support_loss"]
    loss = float(torch.nn.functional.nll_loss(probs.log(), episode.query_y))
    assert trace[-1]["query_loss"] == pytest.approx(loss, abs=1e-5)  # the trace ends where adapt ends
    assert live.embed(episode.query_x, adapted).shape[0] == len(episode.query_x)


def test_sine_recipe_trains_through_the_trainer_and_evaluates_by_steps():
    config = ExperimentConfig.from_dict({
        "kind": "regression", "algorithm": {"name": "reptile", "recipe": "paper"},
        "training": {"steps": 30, "val_interval": 15, "val_episodes": 4, "checkpoint_interval": 15, "device": "cpu"},
        "evaluation": {"episodes": 6, "seed": 3}})
    hparams = get_algorithm("reptile").build_hparams(config.algorithm.hparams)
    assert (hparams.inner_optimizer, hparams.inner_lr, hparams.outer_step, hparams.hidden) == ("sgd", 0.02, 0.1, 64)
    assert (config.training.meta_batch, config.train_queries, config.dataset.shots) == (1, 40, 10)
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert all("mse" in m and math.isfinite(m["mse"]) for m in steps)
    kind = get_kind("regression")
    tasks = kind.fixed_tasks(trainer.dataset, config, "test", 6, 3)
    result = kind.evaluate(trainer.algorithm, tasks)
    assert result.steps == 32 and list(result.mse_by_steps) == ["0", "1", "10", "32"]
    assert result.mse_by_steps["32"] < result.mse_by_steps["0"]  # adapting to the support points helps
    loaded = load_model(trainer.run, kind="last").algorithm
    assert kind.evaluate(loaded, tasks).mse_by_steps == result.mse_by_steps

"""ANIL (Raghu et al. 2020): its meta-gradient against finite differences of an independent reference in float64
(head-only inner steps written by hand), the body untouched by adaptation, and training through the Trainer with the
adaptation trace and a checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.anil import anil_outer_loss
from workbench.core.algorithms.functional import named_params
from workbench.core.config import ExperimentConfig
from workbench.core.data.episodes import FixedEpisodes
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN, HIDDEN, WAYS, INNER_LR = 3, 4, 3, 0.5


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh())
        self.head = nn.Linear(HIDDEN, WAYS)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_net() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet().double()


def tiny_task():
    gen = torch.Generator().manual_seed(0)
    support_x = torch.randn(2 * WAYS, IN, generator=gen, dtype=torch.float64)
    query_x = torch.randn(4 * WAYS, IN, generator=gen, dtype=torch.float64)
    return support_x, torch.arange(WAYS).repeat(2), query_x, torch.arange(WAYS).repeat(4)


# --- the reference: ANIL's outer loss by hand (no autograd, no functional_call) -----------------------------------
def cross_entropy_by_hand(logits, y):
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs[torch.arange(len(y)), y].mean()


def outer_loss_by_hand(w: dict, task, steps: int) -> float:
    """The body computes features once; only the head takes SGD steps, with the softmax-regression gradient."""
    support_x, support_y, query_x, query_y = task
    body = lambda x: torch.tanh(x @ w["features.0.weight"].T + w["features.0.bias"])  # noqa: E731
    features = body(support_x)
    weight, bias = w["head.weight"], w["head.bias"]
    for _ in range(steps):
        dlogits = ((features @ weight.T + bias).softmax(1) - F.one_hot(support_y, WAYS).double()) / len(support_y)
        weight, bias = weight - INNER_LR * dlogits.T @ features, bias - INNER_LR * dlogits.sum(0)
    return float(cross_entropy_by_hand(body(query_x) @ weight.T + bias, query_y))


def finite_differences(w: dict, task, steps: int, eps: float = 1e-6) -> dict:
    grads = {}
    for name, value in w.items():
        grad = torch.zeros_like(value)
        for i in range(value.numel()):
            shifted = []
            for sign in (1, -1):
                moved = {k: v.clone() for k, v in w.items()}
                moved[name].view(-1)[i] += sign * eps
                shifted.append(outer_loss_by_hand(moved, task, steps))
            grad.view(-1)[i] = (shifted[0] - shifted[1]) / (2 * eps)
        grads[name] = grad
    return grads


def anil_gradient(model, task, steps: int, first_order: bool) -> tuple[float, dict]:
    params = named_params(model)
    loss, _ = anil_outer_loss(model, params, *task, steps=steps, lr=INNER_LR, first_order=first_order)
    return float(loss.detach()), dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_of_body_and_head_matches_finite_differences(steps):
    model, task = tiny_net(), tiny_task()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss, grads = anil_gradient(model, task, steps, first_order=False)
    # The same loss as the reference, whose inner loop never steps the body: ANIL's does not either.
    assert abs(loss - outer_loss_by_hand(w, task, steps)) < 1e-12
    reference = finite_differences(w, task, steps)
    for name in w:  # body (features.0.*) and head weights alike
        assert torch.allclose(grads[name], reference[name], rtol=1e-6, atol=1e-8), (
            f"{name}: max error {float((grads[name] - reference[name]).abs().max()):.3g}")


def test_first_order_drops_the_body_gradient_through_the_support_set():
    model, task = tiny_net(), tiny_task()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    _, first = anil_gradient(model, task, 3, first_order=True)
    reference = finite_differences(w, task, 3)
    gap = sum(float((first[n] - reference[n]).norm()) for n in w)
    assert gap > 1e-3 * sum(float(reference[n].norm()) for n in w)  # not a rounding error
    # First order is the query-loss gradient with the adapted head held fixed.
    _, support_y, query_x, query_y = task
    features = model.features(task[0]).detach()
    head = {"weight": w["head.weight"].clone(), "bias": w["head.bias"].clone()}
    for _ in range(3):
        dlogits = ((features @ head["weight"].T + head["bias"]).softmax(1) - F.one_hot(support_y, WAYS).double()) / 6
        head = {"weight": head["weight"] - INNER_LR * dlogits.T @ features,
                "bias": head["bias"] - INNER_LR * dlogits.sum(0)}
    adapted = TinyNet().double()
    adapted.load_state_dict({**w, "head.weight": head["weight"], "head.bias": head["bias"]})
    expected = torch.autograd.grad(F.cross_entropy(adapted(query_x), query_y), list(adapted.parameters()))
    for name, grad in zip(dict(adapted.named_parameters()), expected):
        assert torch.allclose(first[name], grad, rtol=1e-10, atol=1e-12), name


# --- the algorithm ------------------------------------------------------------------------------------------------
SMALL = {"hidden": 8, "train_inner_steps": 2, "test_inner_steps": 4}


def test_adapt_steps_the_head_only_and_leaves_the_body_and_the_model_as_learned():
    cls = get_algorithm("anil")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams(SMALL), ModelSpec(1, 16, 3, 10))
    gen = torch.Generator().manual_seed(1)
    support_x, query_x = torch.randn(6, 1, 16, 16, generator=gen), torch.randn(9, 1, 16, 16, generator=gen)
    before = {k: v.clone() for k, v in algorithm.model.state_dict().items()}
    adapted = algorithm.adapt(support_x, torch.arange(3).repeat(2), 3)["params"]
    assert all(torch.equal(before[k], v) for k, v in algorithm.model.state_dict().items())
    body = [name for name in adapted if name.startswith("features.")]
    assert body and all(torch.equal(adapted[name], before[name]) for name in body)
    assert not torch.equal(adapted["head.weight"], before["head.weight"])
    assert algorithm.predict({"params": adapted, "ways": 3}, query_x).shape == (9, 3)


@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_through_the_trainer_with_a_trace_and_a_checkpoint_that_predicts_identically():
    config = tiny_dataset_config(algorithm={"name": "anil", "hparams": SMALL},
                                 training={"steps": 8, "meta_batch": 2, "val_interval": 4, "checkpoint_interval": 4})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 8 and all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in steps)
    live = trainer.algorithm
    episode = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    assert torch.equal(loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x), probs)
    trace = live.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 3)
    assert [t["step"] for t in trace] == list(range(5)) and trace[-1]["support_loss"] < trace[0]["support_loss"]
    assert all(math.isfinite(t["query_accuracy"]) for t in trace)
    loss = float(F.nll_loss(probs.log(), episode.query_y))
    assert trace[-1]["query_loss"] == pytest.approx(loss, abs=1e-5)  # the trace ends where adapt ends
    assert live.embed(episode.query_x).shape[0] == len(episode.query_x)
    # Adapting only the head leaves the features as learned.
    assert torch.allclose(live.embed(episode.query_x, live.adapt(episode.support_x, episode.support_y, 3)),
                          live.embed(episode.query_x))


def test_sine_recipe_meta_learns_the_body_of_the_regressor():
    config = ExperimentConfig.from_dict({
        "kind": "regression", "algorithm": {"name": "anil", "recipe": "paper"},
        "training": {"steps": 60, "meta_batch": 10, "lr": 1e-2, "val_interval": 30, "val_episodes": 4,
                     "checkpoint_interval": 30, "device": "cpu"}})
    trainer = Trainer(config)
    kind = get_kind("regression")
    tasks = kind.fixed_tasks(trainer.dataset, config, "val", 20, 5)
    before = kind.evaluate(trainer.algorithm, tasks).mse_by_steps["10"]
    body = {k: v.clone() for k, v in trainer.algorithm.model.features.state_dict().items()}
    assert trainer.run_all().event == "finished"
    assert any(not torch.equal(body[k], v) for k, v in trainer.algorithm.model.features.state_dict().items())
    after = kind.evaluate(trainer.algorithm, tasks)
    assert after.steps == 10 and after.mse_by_steps["10"] < before

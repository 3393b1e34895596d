"""Meta-SGD: the meta-gradient of the learned rates α against finite differences of a hand-written inner loop
(float64), its closed form for one step, torch.vmap against the loop, learning on images and sine tasks, the
trainer's α inspections and a checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.functional import named_params
from workbench.core.algorithms.meta_sgd import LearnedRates, meta_sgd_outer_loss, vmapped_meta_sgd_losses
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes
from workbench.core.data.sine import SineSampler, SineTasks
from workbench.core.errors import ConfigError
from workbench.core.inspection import layer_histograms
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN, HIDDEN, WAYS = 3, 4, 3


def tiny_task(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(2 * WAYS, IN, generator=gen, dtype=torch.float64)
    query_x = torch.randn(4 * WAYS, IN, generator=gen, dtype=torch.float64)
    return support_x, torch.arange(WAYS).repeat(2), query_x, torch.arange(WAYS).repeat(4)


def tiny_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, WAYS)).double()


# --- an independent reference: forward and gradient of the tanh MLP by hand ---------------------------------------
def forward_by_hand(w: dict, x):
    hidden = torch.tanh(x @ w["0.weight"].T + w["0.bias"])
    return hidden, hidden @ w["2.weight"].T + w["2.bias"]


def gradient_by_hand(w: dict, x, y) -> dict:
    hidden, logits = forward_by_hand(w, x)
    dlogits = (logits.softmax(dim=1) - F.one_hot(y, WAYS).double()) / len(y)
    dpre = (dlogits @ w["2.weight"]) * (1 - hidden ** 2)
    return {"2.weight": dlogits.T @ hidden, "2.bias": dlogits.sum(0), "0.weight": dpre.T @ x, "0.bias": dpre.sum(0)}


def outer_loss_by_hand(w: dict, alpha: dict, task, steps: int) -> float:
    support_x, support_y, query_x, query_y = task
    for _ in range(steps):
        grads = gradient_by_hand(w, support_x, support_y)
        w = {name: value - alpha[name] * grads[name] for name, value in w.items()}
    logits = forward_by_hand(w, query_x)[1]
    return float(F.cross_entropy(logits, query_y))


def alpha_gradient_by_finite_differences(w: dict, alpha: dict, task, steps: int, eps: float = 1e-6) -> dict:
    grads = {}
    for name, value in alpha.items():
        grad = torch.zeros_like(value)
        for i in range(value.numel()):
            shifted = []
            for sign in (1, -1):
                moved = {k: v.clone() for k, v in alpha.items()}
                moved[name].view(-1)[i] += sign * eps
                shifted.append(outer_loss_by_hand(w, moved, task, steps))
            grad.view(-1)[i] = (shifted[0] - shifted[1]) / (2 * eps)
        grads[name] = grad
    return grads


def autograd_gradients(model, rates_module, task, steps: int, first_order: bool = False):
    params, rates = named_params(model), rates_module.as_params()
    loss, _ = meta_sgd_outer_loss(model, params, rates, *task, steps=steps, first_order=first_order,
                                  loss_fn=F.cross_entropy)
    grads = torch.autograd.grad(loss, list(params.values()) + list(rates.values()))
    return loss, dict(zip(params, grads[:len(params)])), dict(zip(rates, grads[len(params):]))


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradient_of_alpha_matches_finite_differences(steps):
    model, task = tiny_mlp(), tiny_task()
    torch.manual_seed(2)
    rates = LearnedRates(model, 0.05, 0.5)
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    alpha = {k: v.detach().clone() for k, v in rates.as_params().items()}
    loss, _, alpha_grads = autograd_gradients(model, rates, task, steps)
    assert abs(float(loss.detach()) - outer_loss_by_hand(w, alpha, task, steps)) < 1e-12
    reference = alpha_gradient_by_finite_differences(w, alpha, task, steps)
    for name in alpha:
        assert torch.allclose(alpha_grads[name], reference[name], rtol=1e-6, atol=1e-9), (
            f"{name}: max error {float((alpha_grads[name] - reference[name]).abs().max()):.3g}")
    assert sum(float(g.abs().sum()) for g in alpha_grads.values()) > 1e-3  # a real signal, not zeros


def test_one_step_alpha_gradient_has_its_closed_form_in_first_and_second_order():
    # θ' = θ − α ∘ g with g independent of α, so dL_q/dα = −g ∘ ∇L_q(θ') exactly, whatever the order.
    model, task = tiny_mlp(), tiny_task(3)
    rates = LearnedRates(model, 0.005, 0.1)
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    alpha = {k: v.detach() for k, v in rates.as_params().items()}
    support_grad = gradient_by_hand(w, task[0], task[1])
    adapted = {n: w[n] - alpha[n] * support_grad[n] for n in w}
    query_grad = gradient_by_hand(adapted, task[2], task[3])
    for first_order in (False, True):
        _, theta_grads, alpha_grads = autograd_gradients(model, rates, task, 1, first_order)
        for name in w:
            assert torch.allclose(alpha_grads[name], -support_grad[name] * query_grad[name], rtol=1e-10,
                                  atol=1e-13), name
    # First order: θ's gradient is the query gradient at θ' (second order adds the Hessian term).
    assert all(torch.allclose(theta_grads[n], query_grad[n], rtol=1e-10, atol=1e-13) for n in w)


def regression_algorithm(**hparams):
    torch.manual_seed(0)
    cls = get_algorithm("meta-sgd")
    recipe = next(r for r in cls.recipes if r.kind == "regression")
    spec = ModelSpec(in_channels=1, image_size=0, ways=1, num_train_classes=0, kind="regression")
    algorithm = cls(cls.build_hparams({**recipe.hparams, **hparams}), spec)
    algorithm.configure_optimizers(3e-3, 100, "constant")
    return algorithm


@pytest.mark.parametrize("first_order", [False, True])
def test_tasks_batched_with_vmap_give_the_loops_gradients(first_order):
    algorithm = regression_algorithm(train_inner_steps=2)
    algorithm.model.double()
    algorithm.alpha.double()
    sampler = SineSampler(SineTasks(), shots=5, queries=7, seed=3)
    tasks = [sampler.sample() for _ in range(3)]
    fields = [torch.stack([getattr(t, name).double() for t in tasks])
              for name in ("support_x", "support_y", "query_x", "query_y")]
    params, rates = named_params(algorithm.model), algorithm.alpha.as_params()
    every = list(params.values()) + list(rates.values())
    losses, _ = vmapped_meta_sgd_losses(algorithm.model, params, rates, *fields, 2, first_order, F.mse_loss)
    batched = torch.autograd.grad(losses.sum(), every)
    looped = sum(meta_sgd_outer_loss(algorithm.model, params, rates, *(f[i] for f in fields), 2, first_order,
                                     F.mse_loss)[0] for i in range(3))
    for a, b in zip(batched, torch.autograd.grad(looped, every)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_alpha_has_the_weights_shapes_starts_in_the_papers_range_and_is_checked():
    algorithm = regression_algorithm()
    rates = algorithm.alpha.as_params()
    assert set(rates) == set(dict(algorithm.model.named_parameters()))
    assert all(rates[n].shape == p.shape for n, p in algorithm.model.named_parameters())
    values = torch.cat([r.detach().flatten() for r in rates.values()])
    assert 0.005 <= float(values.min()) and float(values.max()) <= 0.1 and float(values.std()) > 0.01
    assert "alpha" in algorithm.state_dict()
    with pytest.raises(ConfigError, match="alpha_init_low"):
        regression_algorithm(alpha_init_low=0.5, alpha_init_high=0.1)


def test_sine_tasks_fit_better_after_meta_training():
    algorithm = regression_algorithm()
    kind = get_kind("regression")
    probe = SineSampler(SineTasks(), shots=10, queries=50, seed=9)
    tasks = [probe.sample() for _ in range(10)]

    def mse() -> float:
        return float(np.mean([float(F.mse_loss(algorithm.predict(algorithm.adapt(t.support_x, t.support_y, 1),
                                                                  t.query_x), t.query_y)) for t in tasks]))

    before = mse()
    sampler = SineSampler(SineTasks(), shots=10, queries=10, seed=0, block=8)
    for _ in range(150):
        out = algorithm.meta_train_step([sampler.sample() for _ in range(8)])
    assert set(out) == {"loss", kind.metric.key}
    assert mse() < 0.7 * before


# --- images: learning, other ways, the trainer and checkpoints ------------------------------------------------------
def test_learns_images_and_adapts_at_other_ways():
    dataset = synthetic_dataset()
    cls = get_algorithm("meta-sgd")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 3, dataset.split("train").num_classes))
    algorithm.configure_optimizers(3e-3, 30, "constant")
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, 3, 1, 4, seed=0)
    alpha_before = {n: v.detach().clone() for n, v in algorithm.alpha.as_params().items()}
    history = [algorithm.meta_train_step([sampler.sample(), sampler.sample()]) for _ in range(30)]
    assert np.mean([h["loss"] for h in history[-6:]]) < 0.8 * np.mean([h["loss"] for h in history[:6]])
    assert any(not torch.equal(alpha_before[n], v) for n, v in algorithm.alpha.as_params().items())
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 5, 1, 2, count=1, seed=1)[0]
    probs = algorithm.predict(algorithm.adapt(episode.support_x, episode.support_y, 5), episode.query_x)
    assert probs.shape == (10, 5) and torch.allclose(probs.sum(1), torch.ones(10, dtype=probs.dtype))
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 5, 3)
    assert [t["step"] for t in trace] == [0, 1, 2, 3] and trace[-1]["support_loss"] < trace[0]["support_loss"]


@pytest.mark.usefixtures("use_synthetic_data")
def test_trainer_records_alpha_per_layer_and_a_checkpoint_reproduces_predictions():
    config = tiny_dataset_config(algorithm={"name": "meta-sgd", "hparams": {"hidden": 8}},
                                 training={"steps": 4, "val_interval": 2, "checkpoint_interval": 2, "lr": 1e-2})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [2, 4] and [s.name for s in history.specs] == ["alpha"]
    assert history.specs[0].plot == "layer_histograms" and history.algorithm == "meta-sgd"
    layers = [layer_histograms(record["alpha"]) for record in history.records]
    assert {"block1.conv.weight", "block4.bn.bias", "head.weight", "head.bias"} <= set(layers[0])
    assert layers[0]["head.weight"]["size"] == 3 * 8
    assert layers[0]["block1.conv.weight"]["mean"] != layers[1]["block1.conv.weight"]["mean"]  # α is learned

    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=4)[0]
    live = trainer.algorithm
    loaded = load_model(trainer.run, kind="last").algorithm
    expected = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    again = loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.allclose(again, expected, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(live.alpha.state_dict().values(), loaded.alpha.state_dict().values()))

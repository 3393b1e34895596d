"""MAML++: the gradient of the learned per-layer, per-step rates (LSLR) against finite differences (float64), the
multi-step loss weights, derivative-order annealing, per-step batch norm, the trainer's inspections and a
checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.maml_plus_plus import forward_at, msl_weights
from workbench.core.data.episodes import Episode, EpisodeSampler, FixedEpisodes
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAYS, SIZE = 3, 16


def make(double: bool = False, total_steps: int = 40, **hparams):
    torch.manual_seed(0)
    cls = get_algorithm("maml-plus-plus")
    values = {"hidden": 8, "train_inner_steps": 2, "test_inner_steps": 2, **hparams}
    algorithm = cls(cls.build_hparams(values), ModelSpec(1, SIZE, WAYS, 10))
    if double:
        algorithm.model.double()
        algorithm.inner.double()
    algorithm.configure_optimizers(3e-3, total_steps, "constant")
    return algorithm


def random_episode(seed: int = 0, dtype=torch.float64) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(2 * WAYS, 1, SIZE, SIZE, generator=gen, dtype=dtype)
    query_x = torch.randn(3 * WAYS, 1, SIZE, SIZE, generator=gen, dtype=dtype)
    return Episode(support_x, torch.arange(WAYS).repeat(2), query_x, torch.arange(WAYS).repeat(3), list(range(WAYS)),
                   [f"class{c}" for c in range(WAYS)])


def rate_gradients(algorithm, episode, weights, first_order=False) -> dict:
    algorithm.model.train()
    objective, _, _ = algorithm.task_loss(episode, weights, first_order)
    rates = algorithm.inner.as_params()
    return dict(zip(rates, torch.autograd.grad(objective, list(rates.values()))))


# --- the defining update -----------------------------------------------------------------------------------------
def test_gradient_of_the_learned_rates_matches_finite_differences():
    algorithm = make(double=True)
    episode = random_episode()
    weights = msl_weights(2, 0.05, 0.1)  # halfway through MSL's annealing: both steps' query losses count
    assert 0 < weights[0] < weights[1]
    analytic = rate_gradients(algorithm, episode, weights)
    eps = 1e-6
    for name, rate in algorithm.inner.as_params().items():
        for step in range(2):
            shifted = []
            for sign in (1, -1):
                with torch.no_grad():
                    rate[step] += sign * eps
                # The forward value does not depend on the derivative order; first order builds less graph.
                shifted.append(float(algorithm.task_loss(episode, weights, True)[0].detach()))
                with torch.no_grad():
                    rate[step] -= sign * eps
            numeric = (shifted[0] - shifted[1]) / (2 * eps)
            assert abs(float(analytic[name][step]) - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, step)
    assert sum(float(g.abs().sum()) for g in analytic.values()) > 1e-3


def test_multi_step_loss_weights_sum_to_one_and_anneal_toward_the_last_step():
    start = msl_weights(5, 0.0, 0.1)
    assert start == pytest.approx([0.2] * 5)
    previous = start
    for fraction in np.linspace(0.0, 0.2, 41):
        weights = msl_weights(5, float(fraction), 0.1)
        assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0
        assert weights[-1] >= previous[-1] - 1e-12 and all(w <= p + 1e-12 for w, p in zip(weights[:-1], previous))
        previous = weights
    assert msl_weights(5, 0.099, 0.1)[:4] == pytest.approx([0.03 / 5] * 4)  # the authors' floor for earlier steps
    assert msl_weights(5, 0.1, 0.1) == [0, 0, 0, 0, 1.0] and msl_weights(1, 0.0, 0.1) == [1.0]
    assert msl_weights(3, 0.0, 0.0) == [0, 0, 1.0]  # msl_fraction 0: the last step only, as MAML


def test_derivative_order_annealing_is_first_order_before_the_switch_and_second_order_after():
    # MSL off, so that only the derivative order changes with the meta-steps.
    algorithm = make(double=True, total_steps=4, first_order_fraction=0.5, msl_fraction=0.0)
    episode = random_episode(1)
    weights = algorithm.step_weights()
    names = [n for n, p in algorithm.model.named_parameters() if p.requires_grad]

    def meta_gradient() -> list[torch.Tensor]:
        algorithm.model.zero_grad(set_to_none=True)
        algorithm.meta_gradient([episode])
        return [algorithm.model.get_parameter(n).grad.clone() for n in names]

    def explicit(first_order: bool) -> list[torch.Tensor]:
        objective = algorithm.task_loss(episode, weights, first_order)[0]
        return list(torch.autograd.grad(objective, [algorithm.model.get_parameter(n) for n in names]))

    first, second = explicit(True), explicit(False)
    assert any(not torch.allclose(a, b, rtol=1e-6) for a, b in zip(first, second))
    switched = []
    for step in range(4):
        algorithm.inner.meta_steps.fill_(step)
        switched.append(algorithm.first_order)
        expected = first if step < 2 else second
        assert all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(meta_gradient(), expected)), step
    assert switched == [True, True, False, False]
    algorithm.inner.meta_steps.fill_(0)
    algorithm.schedule_clock.time_fraction = 0.6  # under a time budget the clock follows time
    assert not algorithm.first_order


def test_first_order_gradient_is_the_query_gradient_at_the_adapted_weights():
    algorithm = make(double=True, train_inner_steps=1)
    episode = random_episode(2)
    algorithm.model.train()
    names = ["features.convs.0.weight", "head.weight", "head.bias"]
    objective = algorithm.task_loss(episode, [1.0], True)[0]
    grads = torch.autograd.grad(objective, [algorithm.model.get_parameter(n) for n in names])
    # By hand: one step with the learned rates, then the query loss's gradient at those (detached) weights.
    params = {n: p.detach().requires_grad_(True) for n, p in algorithm.model.named_parameters()}
    support = F.cross_entropy(forward_at(algorithm.model, params, episode.support_x, 0), episode.support_y)
    support_grads = dict(zip(params, torch.autograd.grad(support, list(params.values()), allow_unused=True)))
    rates = algorithm.inner.at(0)
    adapted = {n: (p - rates[n] * support_grads[n] if n in rates else p).detach().requires_grad_(True)
               for n, p in params.items()}
    query = F.cross_entropy(forward_at(algorithm.model, adapted, episode.query_x, 1), episode.query_y)
    expected = torch.autograd.grad(query, [adapted[n] for n in names])
    assert all(torch.allclose(a, b, rtol=1e-10, atol=1e-13) for a, b in zip(grads, expected))


# --- per-step batch norm -------------------------------------------------------------------------------------------
def test_batch_norm_has_its_own_parameters_and_statistics_at_every_step():
    algorithm = make(train_inner_steps=3, test_inner_steps=3)
    norms = algorithm.model.features.norms
    assert all(n.weight.shape == n.bias.shape == n.running_mean.shape == (4, 8) for n in norms)
    assert not any(".norms." in name for name in algorithm.inner.as_params())  # gamma/beta are not adapted
    dataset = synthetic_dataset()
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, WAYS, 1, 3, seed=0)
    for _ in range(5):
        algorithm.meta_train_step([sampler.sample()])
    for norm in norms:
        rows = [norm.weight[k].detach() for k in range(4)] + [norm.running_mean[k] for k in range(4)]
        assert all(not torch.equal(rows[i], rows[j]) for i in range(4) for j in range(i + 1, 4))
        assert all(not torch.equal(rows[4 + i], rows[4 + j]) for i in range(4) for j in range(i + 1, 4))
    # Step k normalizes with row k; steps beyond the trained ones reuse the last row.
    norm, x = norms[1], torch.randn(6, 8, 5, 5)
    norm.eval()
    for step, row in ((0, 0), (2, 2), (7, 3)):
        expected = F.batch_norm(x, None, None, norm.weight[row], norm.bias[row], True, 0.1, 1e-5)
        assert torch.allclose(norm(x, step), expected)
    norm.use_running_statistics = True
    expected = F.batch_norm(x, norm.running_mean[2], norm.running_var[2], norm.weight[2], norm.bias[2], False)
    assert torch.allclose(norm(x, 2), expected) and torch.allclose(norm(x[:1], 2), expected[:1], atol=1e-6)


def test_learns_adapts_at_other_ways_and_predicts_a_lone_query():
    algorithm = make(total_steps=30)
    dataset = synthetic_dataset()
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, WAYS, 1, 4, seed=0)
    history = [algorithm.meta_train_step([sampler.sample(), sampler.sample()]) for _ in range(30)]
    assert all(math.isfinite(h["loss"]) for h in history)
    assert np.mean([h["loss"] for h in history[-6:]]) < 0.8 * np.mean([h["loss"] for h in history[:6]])
    assert [h["second_order"] for h in history[::10]] == [0.0, 0.0, 1.0]  # first order for the first half
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 5, 1, 2, count=1, seed=1)[0]
    adapted = algorithm.adapt(episode.support_x, episode.support_y, 5)
    probs = algorithm.predict(adapted, episode.query_x)
    assert probs.shape == (10, 5) and torch.allclose(probs.sum(1), torch.ones(10))
    assert algorithm.predict(adapted, episode.query_x[:1]).shape == (1, 5)
    assert algorithm.embed(episode.query_x, adapted).shape == (10, algorithm.model.features.out_dim)
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 5, 2)
    assert trace[-1]["query_loss"] == pytest.approx(
        float(F.nll_loss(probs.log(), episode.query_y)), abs=1e-4)  # the trace ends where adapt ends


@pytest.mark.usefixtures("use_synthetic_data")
def test_trainer_records_the_learned_rates_and_a_checkpoint_reproduces_predictions():
    config = tiny_dataset_config(
        algorithm={"name": "maml-plus-plus", "hparams": {"hidden": 8, "train_inner_steps": 2, "test_inner_steps": 2}},
        training={"steps": 4, "val_interval": 2, "checkpoint_interval": 2, "lr": 1e-2})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert [m["extras"]["second_order"] for m in steps] == [0.0, 0.0, 1.0, 1.0]
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [2, 4] and [s.name for s in history.specs] == ["inner_lrs", "msl_weights"]
    assert history.specs[0].plot == "curves" and history.specs[0].x_key == "step"
    rates = history.records[-1]["inner_lrs"]
    assert set(rates) == {"step", "conv1", "conv2", "conv3", "conv4", "head.weight", "head.bias"}
    assert rates["step"].tolist() == [0, 1] and not np.allclose(rates["conv1"], 0.1)  # learned from 0.1
    assert history.records[-1]["msl_weights"]["weight"].sum() == pytest.approx(1.0)

    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=4)[0]
    live = trainer.algorithm
    loaded = load_model(trainer.run, kind="last").algorithm
    expected = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.allclose(loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x),
                          expected, atol=1e-6)
    assert int(loaded.inner.meta_steps) == 4
    assert torch.equal(loaded.model.features.norms[0].running_mean, live.model.features.norms[0].running_mean)

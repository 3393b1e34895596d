"""Meta-Learner LSTM: the meta-gradient against finite differences of a hand-written replay (float64), the cell update
against its formula, the gradient preprocessing, the gates at initialization, learning on images, other ways, the
trainer's gate inspections and a checkpoint round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.functional import named_params
from workbench.core.algorithms.meta_lstm import (MetaLearnerLSTM, flatten, learner_gradient, meta_lstm_outer_loss,
                                                 preprocess, unflatten)
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN, HIDDEN, WAYS, LSTM_HIDDEN, STEPS = 3, 4, 3, 3, 3


def tiny_task(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(2 * WAYS, IN, generator=gen, dtype=torch.float64)
    query_x = torch.randn(4 * WAYS, IN, generator=gen, dtype=torch.float64)
    return support_x, torch.arange(WAYS).repeat(2), query_x, torch.arange(WAYS).repeat(4)


def tiny_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, WAYS)).double()


def tiny_meta_learner(input_bias: float = -1.0) -> MetaLearnerLSTM:
    """Weights far from their tiny initial range and a large input gate, so every term of the update matters."""
    torch.manual_seed(2)
    meta = MetaLearnerLSTM(LSTM_HIDDEN, input_bias=input_bias, forget_bias=2.0).double()
    with torch.no_grad():
        for name, weight in meta.named_parameters():
            if name not in ("b_I", "b_F"):
                weight.uniform_(-0.5, 0.5)
    return meta


# --- an independent reference, by hand: the tanh MLP, its gradient, the preprocessing and both LSTM layers ----------
def logits_by_hand(w: dict, x):
    return torch.tanh(x @ w["0.weight"].T + w["0.bias"]) @ w["2.weight"].T + w["2.bias"]


def loss_and_gradient_by_hand(w: dict, x, y) -> tuple[float, dict]:
    hidden = torch.tanh(x @ w["0.weight"].T + w["0.bias"])
    logits = hidden @ w["2.weight"].T + w["2.bias"]
    dlogits = (logits.softmax(dim=1) - F.one_hot(y, WAYS).double()) / len(y)
    dpre = (dlogits @ w["2.weight"]) * (1 - hidden ** 2)
    grads = {"0.weight": dpre.T @ x, "0.bias": dpre.sum(0), "2.weight": dlogits.T @ hidden, "2.bias": dlogits.sum(0)}
    return float(F.cross_entropy(logits, y)), grads


def preprocess_by_hand(value: float) -> list[float]:
    if abs(value) >= math.exp(-10):
        return [math.log(abs(value)) / 10, math.copysign(1.0, value)]
    return [-1.0, value * math.exp(10)]


def features_by_hand(loss: float, grad: torch.Tensor) -> torch.Tensor:
    """The first LSTM's input per coordinate: preprocessed loss, then preprocessed gradient."""
    return torch.tensor([preprocess_by_hand(loss) + preprocess_by_hand(float(g)) for g in grad], dtype=torch.float64)


def lstm_by_hand(m: dict, x, h, cell):
    gates = x @ m["lstm.weight_ih"].T + m["lstm.bias_ih"] + h @ m["lstm.weight_hh"].T + m["lstm.bias_hh"]
    i, f, g, o = gates.chunk(4, dim=1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def gates_by_hand(m: dict, h, c_prev, i_prev, f_prev):
    """i_t = σ(W_I · [h, c_{t−1}, i_{t−1}] + b_I), f_t = σ(W_F · [h, c_{t−1}, f_{t−1}] + b_F)."""
    i = torch.sigmoid(torch.cat([h, c_prev[:, None], i_prev[:, None]], 1) @ m["W_I"] + m["b_I"])
    f = torch.sigmoid(torch.cat([h, c_prev[:, None], f_prev[:, None]], 1) @ m["W_F"] + m["b_F"])
    return i, f


def replay(m: dict, theta0: torch.Tensor, like: dict, inputs: list, task) -> float:
    """The query loss after the learned updates, with each step's (features, gradient) held fixed as inputs."""
    count = len(theta0)
    h = cell = torch.zeros(count, LSTM_HIDDEN, dtype=torch.float64)
    i = f = torch.zeros(count, dtype=torch.float64)
    c = theta0
    for features, grad in inputs:
        h, cell = lstm_by_hand(m, features, h, cell)
        i, f = gates_by_hand(m, h, c, i, f)
        c = f * c - i * grad
    return float(F.cross_entropy(logits_by_hand(unflatten(c, like), task[2]), task[3]))


def inputs_along_the_way(m: dict, theta0, like: dict, task) -> list:
    """Each step's inputs, the learner's loss and gradient taken by hand at the weights the updates reach."""
    count, inputs = len(theta0), []
    h = cell = torch.zeros(count, LSTM_HIDDEN, dtype=torch.float64)
    i = f = torch.zeros(count, dtype=torch.float64)
    c = theta0
    for _ in range(STEPS):
        loss, grads = loss_and_gradient_by_hand(unflatten(c, like), task[0], task[1])
        grad = flatten(grads)
        inputs.append((features_by_hand(loss, grad), grad))
        h, cell = lstm_by_hand(m, inputs[-1][0], h, cell)
        i, f = gates_by_hand(m, h, c, i, f)
        c = f * c - i * grad
    return inputs


def test_meta_gradient_matches_finite_differences_with_the_learners_gradient_as_an_input():
    model, meta, task = tiny_mlp(), tiny_meta_learner(), tiny_task()
    params = named_params(model)
    loss, _ = meta_lstm_outer_loss(model, meta, params, *task, steps=STEPS, loss_fn=F.cross_entropy)
    meta_params = dict(meta.named_parameters())
    grads = torch.autograd.grad(loss, list(meta_params.values()) + list(params.values()))
    autograd_meta = flatten(dict(zip(meta_params, grads[:len(meta_params)])))
    autograd_theta0 = flatten(dict(zip(params, grads[len(meta_params):])))

    m = {name: value.detach().clone() for name, value in meta_params.items()}
    like = {name: value.detach() for name, value in params.items()}
    theta0 = flatten(like).clone()
    inputs = inputs_along_the_way(m, theta0, like, task)
    assert abs(replay(m, theta0, like, inputs, task) - float(loss.detach())) < 1e-12

    eps, flat_m = 1e-6, flatten(m)

    def at(flat):  # the replay at other meta-learner weights
        return replay(unflatten(flat, m), theta0, like, inputs, task)

    reference_meta = torch.tensor([(at(flat_m + eps * e) - at(flat_m - eps * e)) / (2 * eps)
                                   for e in torch.eye(len(flat_m), dtype=torch.float64)], dtype=torch.float64)
    reference_theta0 = torch.tensor([(replay(m, theta0 + eps * e, like, inputs, task)
                                      - replay(m, theta0 - eps * e, like, inputs, task)) / (2 * eps)
                                     for e in torch.eye(len(theta0), dtype=torch.float64)], dtype=torch.float64)
    for got, reference in ((autograd_meta, reference_meta), (autograd_theta0, reference_theta0)):
        assert torch.allclose(got, reference, rtol=1e-6, atol=1e-9), float((got - reference).abs().max())
    assert float(autograd_meta.abs().sum()) > 1e-2  # a real signal
    named = dict(zip(meta_params, grads[:len(meta_params)]))
    assert all(float(named[n].abs().sum()) > 0 for n in ("W_I", "W_F", "b_I", "b_F", "lstm.weight_hh"))


def test_the_learners_gradient_is_an_input_so_no_second_derivative_reaches_the_start():
    # With the gates blind to c (W_I, W_F zero at index H) and ∇ an input, c_1 = f ∘ c_0 − i ∘ ∇ gives
    # dL/dc_0 = f ∘ dL/dc_1 exactly; a second-order meta-gradient would add −i ∘ (Hessian · dL/dc_1).
    model, meta, task = tiny_mlp(), tiny_meta_learner(), tiny_task(3)
    with torch.no_grad():
        meta.W_I[LSTM_HIDDEN] = 0
        meta.W_F[LSTM_HIDDEN] = 0
    params = named_params(model)
    loss, _ = meta_lstm_outer_loss(model, meta, params, *task, steps=1, loss_fn=F.cross_entropy)
    start_grad = flatten(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
    c0 = flatten({name: value.detach() for name, value in params.items()})
    with torch.no_grad():
        c1, state = meta(*learner_gradient(model, params, c0, task[0], task[1], F.cross_entropy), c0)
    c1.requires_grad_(True)
    query_loss = F.cross_entropy(torch.func.functional_call(model, unflatten(c1, params), (task[2],)), task[3])
    (dl_dc1,) = torch.autograd.grad(query_loss, c1)
    assert torch.allclose(start_grad, state.forget_gate * dl_dc1, rtol=1e-10, atol=1e-14)
    assert float(state.input_gate.min()) > 0.1  # a large step: a Hessian term would show


def test_the_cell_update_is_forget_times_weights_minus_input_times_gradient():
    meta = tiny_meta_learner()
    gen = torch.Generator().manual_seed(5)
    count = 7
    m = {name: value.detach() for name, value in meta.named_parameters()}
    h = cell = torch.zeros(count, LSTM_HIDDEN, dtype=torch.float64)
    i = f = torch.zeros(count, dtype=torch.float64)
    c = torch.randn(count, generator=gen, dtype=torch.float64)
    state = None
    for step in range(3):
        grad = torch.randn(count, generator=gen, dtype=torch.float64) * 10.0 ** (-2 * step - 3)
        loss = torch.tensor(1.5 / (step + 1), dtype=torch.float64)
        with torch.no_grad():
            c_module, state = meta(loss, grad, c, state)
        # The gates computed independently, from the explicit concatenation [h, c_{t-1}, gate_{t-1}].
        h, cell = lstm_by_hand(m, features_by_hand(float(loss), grad), h, cell)
        i, f = gates_by_hand(m, h, c, i, f)
        assert torch.allclose(state.input_gate, i, rtol=1e-12) and torch.allclose(state.forget_gate, f, rtol=1e-12)
        assert torch.allclose(c_module, f * c - i * grad, rtol=1e-12, atol=1e-15), step
        c = c_module


def test_preprocessing_splits_scale_and_sign_as_andrychowicz_et_al():
    values = torch.tensor([0.0, 1e-5, -1e-5, 0.5, -3.0, 1e3], dtype=torch.float64)
    expected = torch.tensor([preprocess_by_hand(float(v)) for v in values], dtype=torch.float64)
    assert torch.allclose(preprocess(values), expected, rtol=1e-12)
    assert preprocess(values).shape == (6, 2) and torch.equal(preprocess(values)[0], values.new_tensor([-1.0, 0.0]))


def image_algorithm(ways: int = 3, **hparams):
    dataset = synthetic_dataset()
    cls = get_algorithm("meta-lstm")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams({"hidden": 8, "train_inner_steps": 4, "test_inner_steps": 4, **hparams}),
                    ModelSpec(1, 16, ways, dataset.split("train").num_classes))
    algorithm.configure_optimizers(3e-3, 30, "constant")
    return algorithm, dataset


def test_gates_lie_in_zero_one_and_start_as_a_small_learning_rate_with_little_forgetting():
    algorithm, dataset = image_algorithm()
    episode = FixedEpisodes(dataset.split("train"), dataset.spec, 3, 1, 2, count=1, seed=0)[0]
    gates = []
    with torch.no_grad():
        algorithm._adapted_flat(episode.support_x, episode.support_y, 3, 4, F.cross_entropy, gates)
    assert len(gates) == 4 and all(len(i) == sum(p.numel() for p in algorithm.model.parameters()) for i, _ in gates)
    for i, f in gates:
        assert bool(((i > 0) & (i < 1) & (f > 0) & (f < 1)).all())
    i1, f1 = gates[0]
    assert 0.005 < float(i1.min()) and float(i1.max()) < 0.03  # σ([−5, −4]) ≈ [0.007, 0.018]
    assert 0.97 < float(f1.min()) and float(f1.max()) < 0.995  # σ([4, 5]) ≈ [0.982, 0.993]


def test_learns_images_and_adapts_at_other_ways_through_the_mean_head_row():
    algorithm, dataset = image_algorithm()
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, 3, 1, 4, seed=0)
    before = {n: v.detach().clone() for n, v in algorithm.meta_learner.named_parameters()}
    history = [algorithm.meta_train_step([sampler.sample(), sampler.sample()]) for _ in range(30)]
    assert np.mean([h["loss"] for h in history[-6:]]) < 0.8 * np.mean([h["loss"] for h in history[:6]])
    assert not torch.equal(before["b_I"], algorithm.meta_learner.b_I.detach())
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 5, 1, 2, count=1, seed=1)[0]
    adapted = algorithm.adapt(episode.support_x, episode.support_y, 5)
    probs = algorithm.predict(adapted, episode.query_x)
    assert probs.shape == (10, 5) and torch.allclose(probs.sum(1), torch.ones(10))
    assert adapted["params"]["head.weight"].shape == (5, 8 * 1 * 1)
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 5)
    assert [t["step"] for t in trace] == [0, 1, 2, 3, 4]
    ends = F.cross_entropy(torch.log(probs), episode.query_y)
    assert trace[-1]["query_loss"] == pytest.approx(float(ends), rel=1e-5)  # the trace ends where adapt ends
    assert trace[-1]["support_loss"] < trace[0]["support_loss"]
    assert algorithm.embed(episode.query_x, adapted).shape == (10, 8)


@pytest.mark.usefixtures("use_synthetic_data")
def test_trainer_records_the_gates_per_inner_step_and_a_checkpoint_reproduces_predictions():
    config = tiny_dataset_config(algorithm={"name": "meta-lstm", "hparams": {"hidden": 8, "train_inner_steps": 3,
                                                                             "test_inner_steps": 3}},
                                 training={"steps": 4, "val_interval": 2, "checkpoint_interval": 2, "lr": 1e-2})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [2, 4] and [s.name for s in history.specs] == ["gates", "input_gate_by_layer",
                                                                 "forget_gate_by_layer"]
    assert history.specs[0].plot == "curves" and history.specs[0].x_key == "step"
    gates = [record["gates"] for record in history.records]
    assert gates[0]["step"].tolist() == [1, 2, 3]
    assert all(((g["input"] > 0) & (g["input"] < 1) & (g["1 - forget"] > 0) & (g["1 - forget"] < 1)).all()
               for g in gates)
    assert not np.array_equal(gates[0]["input"], gates[1]["input"])  # the meta-learner learns between snapshots
    sizes = np.array([p.numel() for p in trainer.algorithm.model.parameters()])
    for name, series in (("input_gate_by_layer", "input"), ("forget_gate_by_layer", "1 - forget")):
        by_layer = history.records[1][name]
        assert by_layer["values"].shape == (14, 3) and by_layer["rows"].tolist()[0] == "block1.conv.weight"
        overall = (sizes @ by_layer["values"]) / sizes.sum()  # the layers' means weighted by their sizes
        overall = 1 - overall if series == "1 - forget" else overall
        assert np.allclose(overall, gates[1][series], rtol=1e-4)

    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=4)[0]
    live = trainer.algorithm
    loaded = load_model(trainer.run, kind="last").algorithm
    expected = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    again = loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.allclose(again, expected, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(live.meta_learner.state_dict().values(),
                                                 loaded.meta_learner.state_dict().values()))

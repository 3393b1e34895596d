"""Meta Networks (Munkhdalai & Yu 2017): the fast weights are the generators m and d applied to support-loss gradients
computed here independently (per example, by hand), they change with the support and only with it, the meta-gradient
through them matches finite differences in float64, and training through the Trainer records the fast/slow weight
view and leaves a checkpoint that predicts identically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import train_with_inspections
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.meta_networks import support_pairs
from workbench.core.data.episodes import Episode, FixedEpisodes
from workbench.core.runs import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAYS, SHOTS, QUERIES, SIZE = 3, 2, 2, 16
TINY = {"hidden": 4, "augmented_units": 6, "generator_units": 5, "attention_scale": 3.0}


def make(seed: int = 0, **hparams):
    torch.manual_seed(seed)
    cls = get_algorithm("meta-networks")
    return cls(cls.build_hparams({**TINY, **hparams}), ModelSpec(1, SIZE, WAYS, 10))


def episode(seed: int = 1, dtype=torch.float32) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    return Episode(support_x=torch.randn(WAYS * SHOTS, 1, SIZE, SIZE, generator=gen, dtype=dtype),
                   support_y=torch.arange(WAYS).repeat_interleave(SHOTS),
                   query_x=torch.randn(WAYS * QUERIES, 1, SIZE, SIZE, generator=gen, dtype=dtype),
                   query_y=torch.arange(WAYS).repeat_interleave(QUERIES), class_ids=list(range(WAYS)),
                   class_names=[f"k{c}" for c in range(WAYS)], support_index=torch.arange(WAYS * SHOTS),
                   query_index=torch.arange(WAYS * QUERIES))


# --- the reference: the paper's meta information and generators, written out here --------------------------------
def preprocess_by_hand(g: torch.Tensor, p: float) -> torch.Tensor:
    """Andrychowicz et al. (2016): (log|g| / p, sign g) when |g| >= e^-p, else (-1, e^p g)."""
    big = g.abs() >= math.exp(-p)
    first = torch.where(big, torch.log(g.abs().clamp_min(1e-30)) / p, -torch.ones_like(g))
    second = torch.where(big, torch.sign(g), math.exp(p) * g)
    return torch.stack([first, second], dim=-1)


def generator_by_hand(net, g: torch.Tensor, p: float) -> torch.Tensor:
    """The coordinate-wise MLP f, made odd in the gradient: f(pre(g)) - f(pre(-g))."""
    (w1, b1), (w2, b2), (w3, b3) = [(layer.weight.detach(), layer.bias.detach()) for layer in net[::2]]

    def f(x):
        return (torch.relu(torch.relu(x @ w1.T + b1) @ w2.T + b2) @ w3.T + b3).squeeze(-1)

    return f(preprocess_by_hand(g, p)) - f(preprocess_by_hand(-g, p))


def example_gradients_by_hand(algorithm, features, labels):
    """∇_W loss_task(b(W, x_i), y_i) of the slow base learner, one example at a time."""
    base = algorithm.base
    grads = {"hidden": [], "output": []}
    for h, y in zip(features, labels):
        hidden = torch.relu(h @ base.hidden.weight.T + base.hidden.bias)
        loss = F.cross_entropy((hidden @ base.output.weight.T + base.output.bias)[None], y[None])
        g_hidden, g_output = torch.autograd.grad(loss, [base.hidden.weight, base.output.weight])
        grads["hidden"].append(g_hidden)
        grads["output"].append(g_output)
    return {name: torch.stack(values) for name, values in grads.items()}


def pair_gradients_by_hand(algorithm, features, labels, pairs):
    """∇_Q of the contrastive loss of each pair of u's slow representations (margin 1, unit-length vectors)."""
    layer = algorithm.representation.representation
    grads = []
    for a, b in pairs:
        ra, rb = (F.normalize(torch.relu(layer.weight @ features[i] + layer.bias), dim=0) for i in (a, b))
        distance = (ra - rb).norm()
        loss = distance ** 2 if labels[a] == labels[b] else torch.relu(1 - distance) ** 2
        grads.append(torch.autograd.grad(loss, layer.weight)[0])
    return torch.stack(grads)


def test_fast_weights_are_the_generators_applied_to_independently_computed_support_gradients():
    algorithm, e = make(), episode()
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    p = algorithm.hparams.gradient_p
    with torch.no_grad():
        base_features = algorithm.base.trunk(e.support_x)
        representation_features = algorithm.representation.trunk(e.support_x)
    # Memory: W*_i = d(G, ∇_W L_i), one slot per support example.
    grads = example_gradients_by_hand(algorithm, base_features, e.support_y)
    for name in ("hidden", "output"):
        assert adapted["memory"][name].shape == (WAYS * SHOTS, *grads[name].shape[1:])
        expected = generator_by_hand(algorithm.meta.d.net, grads[name], p)
        assert torch.allclose(adapted["memory"][name], expected, atol=1e-5), name
    # u's task-level fast weights: Q* = mean over the T pairs of m(Z, ∇_Q L_t); by default one pair per example.
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0)]
    pair_grads = pair_gradients_by_hand(algorithm, representation_features, e.support_y, pairs)
    assert (pair_grads.flatten(1).norm(dim=1) > 0).all()
    expected_q = generator_by_hand(algorithm.meta.m.net, pair_grads, p).mean(0)
    assert torch.allclose(adapted["task_fast"]["representation"], expected_q, atol=1e-5)
    # The keys r'_i = u(Q, Q*, x'_i): both branches through ReLU, summed (layer augmentation).
    layer = algorithm.representation.representation
    keys = (torch.relu(representation_features @ layer.weight.T + layer.bias)
            + torch.relu(representation_features @ expected_q.T))
    assert torch.allclose(adapted["keys"], keys.detach(), atol=1e-5)


def test_a_query_reads_its_fast_weights_from_memory_by_cosine_attention_and_the_layers_sum_both_branches():
    algorithm, e = make(), episode()
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    probs = algorithm.predict(adapted, e.query_x)
    with torch.no_grad():
        h = algorithm.base.trunk(e.query_x)
        layer = algorithm.representation.representation
        f = algorithm.representation.trunk(e.query_x)
        r = torch.relu(f @ layer.weight.T + layer.bias) + torch.relu(f @ adapted["task_fast"]["representation"].T)
        attention = (3.0 * F.normalize(r, dim=1) @ F.normalize(adapted["keys"], dim=1).T).softmax(dim=1)
        base = algorithm.base
        for q in range(len(h)):
            w1 = torch.einsum("n,nij->ij", attention[q], adapted["memory"]["hidden"])
            w2 = torch.einsum("n,nij->ij", attention[q], adapted["memory"]["output"])
            hidden = torch.relu(base.hidden.weight @ h[q] + base.hidden.bias) + torch.relu(w1 @ h[q])
            logits = base.output.weight @ hidden + base.output.bias + w2 @ hidden
            assert torch.allclose(probs[q], logits.softmax(0), atol=1e-5)
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-6)


def test_fast_weights_change_with_the_support_and_only_with_it():
    algorithm, e, other = make(), episode(1), episode(2)
    first = algorithm.adapt(e.support_x, e.support_y, WAYS)
    again = algorithm.adapt(e.support_x, e.support_y, WAYS)
    different = algorithm.adapt(other.support_x, other.support_y, WAYS)
    relabelled = algorithm.adapt(e.support_x, e.support_y.flip(0), WAYS)
    for name in ("hidden", "output"):
        assert torch.equal(first["memory"][name], again["memory"][name])
        assert not torch.allclose(first["memory"][name], different["memory"][name], atol=1e-4)
    assert not torch.allclose(first["memory"]["output"], relabelled["memory"]["output"], atol=1e-4)
    assert torch.equal(first["task_fast"]["representation"], again["task_fast"]["representation"])
    assert not torch.allclose(first["task_fast"]["representation"], different["task_fast"]["representation"],
                              atol=1e-6)
    # The slow weights stay as they are: adapting trains nothing.
    assert torch.equal(algorithm.predict(first, e.query_x), algorithm.predict(again, e.query_x))


def test_the_meta_gradient_through_the_fast_weights_matches_finite_differences_in_float64():
    algorithm, e = make(), episode(dtype=torch.float64)
    for module in algorithm.modules().values():
        module.double().train()

    def loss() -> torch.Tensor:
        return F.cross_entropy(algorithm.episode_logits(e, create_graph=True), e.query_y)

    named = {"d (G)": algorithm.meta.d.net[0].weight, "m (Z)": algorithm.meta.m.net[2].weight,
             "b hidden (W)": algorithm.base.hidden.weight, "b output (W)": algorithm.base.output.weight,
             "u layer (Q)": algorithm.representation.representation.weight,
             "b trunk": algorithm.base.trunk.encoder[1][0].weight,
             "u trunk": algorithm.representation.trunk.encoder[1][0].weight}
    analytic = dict(zip(named, torch.autograd.grad(loss(), list(named.values()))))
    eps = 1e-6
    for name, weight in named.items():
        assert float(analytic[name].abs().max()) > 1e-8, f"{name} gets no meta-gradient"
        for index in range(0, weight.numel(), max(1, weight.numel() // 4)):
            original = weight.view(-1)[index].item()
            with torch.no_grad():
                weight.view(-1)[index] = original + eps
            up = float(loss().detach())
            with torch.no_grad():
                weight.view(-1)[index] = original - eps
            down = float(loss().detach())
            with torch.no_grad():
                weight.view(-1)[index] = original
            numeric = (up - down) / (2 * eps)
            assert analytic[name].view(-1)[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


def test_support_pairs_go_by_offset_without_repeating_a_pair():
    first, second = support_pairs(4, 0)
    assert list(zip(first.tolist(), second.tolist())) == [(0, 1), (1, 2), (2, 3), (3, 0)]
    first, second = support_pairs(4, 100)
    pairs = {frozenset(p) for p in zip(first.tolist(), second.tolist())}
    assert len(first) == 6 and len(pairs) == 6
    assert len(support_pairs(1, 0)[0]) == 0


def test_other_ways_and_a_single_support_image_work():
    algorithm, e = make(), episode()
    five = torch.randn(5, 1, SIZE, SIZE)
    probs = algorithm.predict(algorithm.adapt(five, torch.arange(5), 5), e.query_x)
    assert probs.shape == (len(e.query_x), 5) and torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-6)
    single = algorithm.adapt(five[:1], torch.zeros(1, dtype=torch.long), 1)
    assert torch.equal(single["task_fast"]["representation"], torch.zeros_like(single["task_fast"]["representation"]))


def test_embed_is_us_unit_length_representation_with_the_tasks_fast_weights():
    algorithm, e = make(), episode()
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    plain, conditioned = algorithm.embed(e.query_x), algorithm.embed(e.query_x, adapted)
    assert torch.allclose(conditioned.norm(dim=1), torch.ones(len(conditioned)), atol=1e-5)
    assert torch.allclose(algorithm.embed(e.support_x, adapted), F.normalize(adapted["keys"], dim=1), atol=1e-5)
    assert not torch.allclose(plain, conditioned, atol=1e-4)


# --- training, the fast-weight view and a checkpoint ---------------------------------------------------------------
@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_with_the_fast_weight_records_and_a_checkpoint_that_predicts_identically():
    trainer, history = train_with_inspections({"name": "meta-networks", "hparams": TINY})
    assert [s.name for s in history.specs] == ["norms_over_training", "norms_by_layer", "weights_by_layer",
                                               "memory_attention"]
    layers = ["u: Q", "b: W1", "b: W2"]
    curves = history.records[-1]["norms_over_training"]
    assert curves["step"].tolist() == [0, 3, 6]  # before the first update, then at each validation
    assert set(curves) == {"step"} | {f"{layer} {which}" for layer in layers for which in ("slow", "fast")}
    assert all(np.all(curves[key] > 0) for key in curves if key != "step")
    norms = history.records[-1]["norms_by_layer"]
    assert norms["values"].shape == (3, 2) and norms["rows"].tolist() == layers
    assert norms["columns"].tolist() == ["slow", "fast"]
    assert np.allclose(norms["values"], [[curves[f"{layer} {w}"][-1] for w in ("slow", "fast")] for layer in layers])
    weights = history.records[-1]["weights_by_layer"]
    assert {key.rpartition("|")[0] for key in weights} == {f"{layer} {w}" for layer in layers for w in ("slow", "fast")}
    ways, shots, queries = 3, 1, 2  # the tiny config's episodes
    attention = history.records[-1]["memory_attention"]
    assert attention["values"].shape == (ways * queries, ways * shots)
    assert np.allclose(attention["values"].sum(axis=1), 1.0, atol=1e-5)
    assert attention["row_images"].shape == (ways * queries, 16, 16)
    assert attention["column_images"].shape == (ways * shots, 16, 16)
    live = trainer.algorithm
    e = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(e.support_x, e.support_y, 3), e.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    assert set(loaded.modules()) == {"base", "representation", "meta_learner"}
    assert int(loaded.meta.meta_steps) == 6
    assert torch.equal(loaded.predict(loaded.adapt(e.support_x, e.support_y, 3), e.query_x), probs)


def test_a_shared_trunk_gives_u_the_base_learners_features_and_no_weights_twice():
    algorithm, e = make(shared_trunk=True), episode()
    assert algorithm.representation.trunk is None
    names = [name for module in algorithm.modules().values() for name, _ in module.named_parameters()]
    assert not any(name.startswith("trunk.") for name, _ in algorithm.representation.named_parameters())
    algorithm.configure_optimizers(1e-3, 10)
    params = [p for group in algorithm.optimizers[0].param_groups for p in group["params"]]
    assert len({id(p) for p in params}) == len(params) == len(names)
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    layer = algorithm.representation.representation
    with torch.no_grad():
        features = algorithm.base.trunk(e.query_x)
        r = torch.relu(features @ layer.weight.T + layer.bias) + torch.relu(
            features @ adapted["task_fast"]["representation"].T)
    assert torch.allclose(algorithm.embed(e.query_x, adapted), F.normalize(r, dim=1), atol=1e-5)
    assert algorithm.meta_train_step([episode(3)])["loss"] > 0

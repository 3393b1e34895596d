"""CNAPs and Simple CNAPs (Requeima et al. 2019; Bateni et al. 2020): Simple CNAPs' shrunk covariances are positive
definite (1-shot classes and one-example tasks included) and its distance matches an independent float64
computation; FiLM with γ = 1, β = 0 is the plain extractor and the generators start near it; the FiLM depends on the
support; CNAPs' head is generated from class means; both train through the Trainer with their FiLM records and load
from a checkpoint to the same predictions, at any image size and channel count."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import train_with_inspections
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.cnaps import BLOCKS, class_means
from workbench.core.algorithms.simple_cnaps import covariance, shrunk_covariances, squared_mahalanobis
from workbench.core.data.episodes import Episode, FixedEpisodes
from workbench.core.runs import load_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAYS, SIZE, HIDDEN = 4, 16, 8


def make(name: str, channels: int = 1, size: int = SIZE, seed: int = 0, **hparams):
    torch.manual_seed(seed)
    cls = get_algorithm(name)
    values = {"hidden": HIDDEN, "task_encoder_width": 8, **hparams}
    return cls(cls.build_hparams(values), ModelSpec(channels, size, WAYS, 10)).eval()


def episode(seed: int = 1, shots: int = 2, queries: int = 3, channels: int = 1, size: int = SIZE) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    return Episode(support_x=torch.randn(WAYS * shots, channels, size, size, generator=gen),
                   support_y=torch.arange(WAYS).repeat_interleave(shots),
                   query_x=torch.randn(WAYS * queries, channels, size, size, generator=gen),
                   query_y=torch.arange(WAYS).repeat_interleave(queries), class_ids=list(range(seed, seed + WAYS)),
                   class_names=[f"k{c}" for c in range(WAYS)])


# --- Simple CNAPs' covariance and distance -----------------------------------------------------------------------
def reference_covariances(features: np.ndarray, labels: np.ndarray, ways: int, ridge: float) -> list[np.ndarray]:
    """The paper's equation 4 in float64 numpy, with numpy's unbiased covariance (zero for one example)."""
    def cov(x):
        return np.cov(x, rowvar=False) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))

    task = cov(features)
    out = []
    for k in range(ways):
        members = features[labels == k]
        lam = len(members) / (len(members) + 1)
        out.append(lam * cov(members) + (1 - lam) * task + ridge * np.eye(features.shape[1]))
    return out


@pytest.mark.parametrize("shots", [1, 3])
def test_shrunk_covariances_are_positive_definite_even_for_one_shot_classes(shots):
    gen = torch.Generator().manual_seed(0)
    # Few examples in many dimensions: every sample covariance here is singular.
    features = torch.randn(WAYS * shots, 32, generator=gen) * 3
    labels = torch.arange(WAYS).repeat_interleave(shots)
    covariances = shrunk_covariances(features, labels, WAYS, ridge=1.0)
    assert covariances.shape == (WAYS, 32, 32)
    torch.linalg.cholesky(covariances)  # raises unless positive definite
    eigenvalues = torch.linalg.eigvalsh(covariances.double())
    assert (eigenvalues > 0.5).all()  # the ridge bounds them below by ~1
    assert torch.allclose(covariances, covariances.transpose(1, 2))
    if shots == 1:  # no class covariance: half the task covariance plus the identity
        expected = 0.5 * covariance(features) + torch.eye(32)
        assert torch.allclose(covariances, expected.expand(WAYS, 32, 32), atol=1e-5)
    # A one-example task has no covariance at all: Q = I, the Euclidean distance.
    single = shrunk_covariances(features[:1], labels[:1], 1, ridge=1.0)
    assert torch.equal(single[0], torch.eye(32))


def test_shrunk_covariances_and_the_distance_match_an_independent_float64_computation():
    gen = torch.Generator().manual_seed(1)
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3])  # unequal shots, one 1-shot class
    features = torch.randn(len(labels), 6, generator=gen)
    queries = torch.randn(5, 6, generator=gen)
    f64, y, q64 = features.double().numpy(), labels.numpy(), queries.double().numpy()
    expected_cov = reference_covariances(f64, y, WAYS, ridge=1.0)
    got_cov = shrunk_covariances(features, labels, WAYS, ridge=1.0)
    assert np.allclose(got_cov.numpy(), np.stack(expected_cov), atol=1e-5)
    means = class_means(features, labels, WAYS)
    expected = np.array([[(x - f64[y == k].mean(0)) @ np.linalg.inv(expected_cov[k]) @ (x - f64[y == k].mean(0))
                          for k in range(WAYS)] for x in q64])
    got = squared_mahalanobis(queries, means, got_cov)
    assert got.shape == (5, WAYS)
    assert np.allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)
    # The classifier's logits are minus these distances.
    algorithm = make("simple-cnaps")
    logits = algorithm.classifier_logits(algorithm.classifier_state(features, labels, WAYS), queries)
    assert np.allclose(logits.numpy(), -expected, rtol=1e-4, atol=1e-5)


# --- FiLM -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnaps", "simple-cnaps"])
def test_film_identity_is_the_plain_extractor_and_the_generators_start_near_it(name):
    algorithm, e = make(name), episode()
    extractor = algorithm.extractor
    identity = [(torch.ones(HIDDEN), torch.zeros(HIDDEN)) for _ in range(BLOCKS)]
    with torch.no_grad():
        plain = extractor(e.query_x)
        assert torch.equal(extractor(e.query_x, identity), plain)
        film = algorithm.task_film(e.support_x)
        assert len(film) == BLOCKS
        for gamma, beta in film:
            assert gamma.shape == beta.shape == (HIDDEN,)
            assert (gamma - 1).abs().max() < 0.05 and beta.abs().max() < 0.05
            assert not torch.equal(gamma, torch.ones(HIDDEN))  # near the identity, not stuck at it
        # A FiLM layer is an affine map per channel: scaling the first block's gamma changes the features.
        scaled = [(g * (2.0 if i == 0 else 1.0), b) for i, (g, b) in enumerate(film)]
        assert not torch.allclose(extractor(e.query_x, scaled), extractor(e.query_x, film))
        assert torch.allclose(algorithm.embed(e.query_x), plain)


def test_film_parameters_depend_on_the_support_and_the_penalty_keeps_them_near_identity():
    algorithm = make("simple-cnaps")
    with torch.no_grad():
        for block in algorithm.film.blocks:  # larger scales, so two tasks' FiLM differ visibly
            block.gamma_scale.fill_(0.5)
            block.beta_scale.fill_(0.5)
        first = algorithm.task_film(episode(seed=1).support_x)
        second = algorithm.task_film(episode(seed=2).support_x * 3 + 1)
        penalty = algorithm.film.regularization()
    assert any(not torch.allclose(a[0], b[0]) for a, b in zip(first, second))
    assert any(not torch.allclose(a[1], b[1]) for a, b in zip(first, second))
    assert float(penalty) == pytest.approx(BLOCKS * 2 * HIDDEN * 0.25)


def test_cnaps_generates_each_class_head_from_its_mean_feature():
    algorithm, e = make("cnaps"), episode()
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    with torch.no_grad():
        support = algorithm.extractor(e.support_x, adapted["film"])
        means = class_means(support, e.support_y, WAYS)
        weight = algorithm.classifier["weight"](means)
        bias = algorithm.classifier["bias"](means).squeeze(-1)
        queries = algorithm.extractor(e.query_x, adapted["film"])
    assert torch.allclose(adapted["weight"], weight) and adapted["bias"].shape == (WAYS,)
    expected = (queries @ weight.T + bias).softmax(dim=1)
    assert torch.allclose(algorithm.predict(adapted, e.query_x), expected, atol=1e-6)
    # Reordering the support within classes changes nothing: each head depends on its class mean only.
    order = torch.tensor([1, 0, 3, 2, 5, 4, 7, 6])
    again = algorithm.adapt(e.support_x[order], e.support_y[order], WAYS)
    assert torch.allclose(again["weight"], adapted["weight"], atol=1e-5)


@pytest.mark.parametrize("name", ["cnaps", "simple-cnaps"])
@pytest.mark.parametrize("channels, size", [(3, 20), (1, 8)])
def test_any_image_size_and_channel_count(name, channels, size):
    algorithm = make(name, channels=channels, size=size)
    algorithm.configure_optimizers(1e-3, 10)
    e = episode(channels=channels, size=size)
    stats = algorithm.meta_train_step([e])
    assert math.isfinite(stats["loss"])
    adapted = algorithm.adapt(e.support_x, e.support_y, WAYS)
    probs = algorithm.predict(adapted, e.query_x)
    assert probs.shape == (len(e.query_x), WAYS)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(e.query_x)), atol=1e-5)
    assert algorithm.embed(e.query_x, adapted).shape == (len(e.query_x), HIDDEN)


# --- training, the FiLM records and a checkpoint ------------------------------------------------------------------------
@pytest.mark.usefixtures("use_synthetic_data")
@pytest.mark.parametrize("name", ["cnaps", "simple-cnaps"])
def test_trains_with_film_records_and_a_checkpoint_that_predicts_identically(name):
    trainer, history = train_with_inspections({"name": name, "hparams": {"hidden": HIDDEN, "task_encoder_width": 8}})
    assert [s.name for s in history.specs] == ["film_gamma", "film_beta", "film_tasks", "film_difference"]
    record = history.records[-1]
    for block in range(1, BLOCKS + 1):
        assert record["film_gamma"][f"block {block}|counts"].sum() == HIDDEN
        assert record["film_beta"][f"block {block}|counts"].sum() == HIDDEN
    tasks = record["film_tasks"]
    assert tasks["values"].shape == (BLOCKS * 2 * 2, HIDDEN)  # blocks x (γ−1, β) x tasks A and B
    assert tasks["row_images"].shape == (BLOCKS * 4, 16, 16) and len(tasks["columns"]) == HIDDEN
    assert list(tasks["rows"][:4]) == ["b1 γ−1 A", "b1 γ−1 B", "b1 β A", "b1 β B"]
    assert not np.array_equal(tasks["values"][0], tasks["values"][1])  # two tasks, two FiLMs
    assert not np.array_equal(history.records[0]["film_tasks"]["values"], tasks["values"])  # it learned between
    difference = record["film_difference"]["values"]
    assert difference.shape == (BLOCKS * 2, HIDDEN)
    # γ_A − γ_B of block 1 and β_A − β_B of block 4, from the comparison's rows
    assert np.allclose(difference[0], tasks["values"][0] - tasks["values"][1], atol=1e-6)
    assert np.allclose(difference[7], tasks["values"][14] - tasks["values"][15], atol=1e-6)

    live = trainer.algorithm
    e = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(e.support_x, e.support_y, 3), e.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    expected_modules = {"extractor", "task_encoder", "film"} | ({"classifier"} if name == "cnaps" else set())
    assert set(loaded.modules()) == expected_modules
    assert torch.equal(loaded.predict(loaded.adapt(e.support_x, e.support_y, 3), e.query_x), probs)


def test_the_projector_shows_the_film_adapted_space():
    from workbench.core.probes import embedding_snapshot

    algorithm = make("simple-cnaps")
    for block in algorithm.film.blocks:
        torch.nn.init.constant_(block.gamma_scale, 0.5)
    snapshot = embedding_snapshot(algorithm, episode())
    assert "adapted_support" in snapshot and "adapted_query" in snapshot
    assert not np.allclose(snapshot["adapted_query"], snapshot["query"], atol=1e-3)


def test_the_second_probe_task_comes_from_another_domain_when_one_appears():
    """Two tasks' FiLM parameters compare best across datasets (a mixture's '<dataset>/...' class names) or
    alphabets; without another domain the next task with other classes is taken after a while."""
    from workbench.core.algorithms.cnaps import PROBE_PATIENCE

    def episode(names: list[str], first_id: int) -> Episode:
        x = torch.zeros(len(names), 1, SIZE, SIZE)
        y = torch.arange(len(names))
        return Episode(x, y, x, y, list(range(first_id, first_id + len(names))), names)

    algorithm = make("simple-cnaps")
    glyphs = [episode([f"glyphs/a{i}", f"glyphs/b{i}"], 2 * i) for i in range(5)]
    algorithm._keep_probes(glyphs + [episode(["omniglot/x", "omniglot/y"], 100)])
    assert [p.class_names[0] for p in algorithm._probes] == ["glyphs/a0", "omniglot/x"]
    one_domain = make("simple-cnaps")
    one_domain._keep_probes([episode([f"glyphs/a{i}", f"glyphs/b{i}"], 2 * i) for i in range(PROBE_PATIENCE + 3)])
    assert [p.class_names[0] for p in one_domain._probes] == ["glyphs/a0", f"glyphs/a{PROBE_PATIENCE}"]

"""MAML, first-order MAML and the two pre-training baselines on a tiny synthetic dataset.

Each class is a random blocky 28x28 pattern plus noise: learnable in a few dozen steps, with held-out
classes (other patterns) for testing adaptation. Each algorithm is trained once per module and reused.
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from workbench.core.algorithms import (Family, LabeledBatch, ModelSpec, algorithm_names, algorithms_by_family,
                                      get_algorithm)
from workbench.core.data.base import ClassSplit, PreprocessSpec
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes
from workbench.core.errors import ConfigError

MINE = {"maml": Family.OPTIMIZATION, "fomaml": Family.OPTIMIZATION, "nearest-neighbour": Family.BASELINE,
        "finetune": Family.BASELINE}
WAYS, SHOTS, QUERIES = 5, 1, 5
SPEC = PreprocessSpec(28, 1, (0.5,), (0.5,))
# Small networks keep the file fast; every algorithm gets the same width.
SMALL = {"maml": {"hidden": 16, "train_inner_steps": 1, "test_inner_steps": 5},
         # One step learns slowly. From its default zero head, 4+ test steps at lr 0.4 overshoot on this toy
         # model (query loss 1.61 -> 0.92 -> 2.51 while accuracy rises), so tests adapt at 0.1.
         "fomaml": {"hidden": 16, "train_inner_steps": 2, "test_inner_steps": 5, "test_inner_lr": 0.1},
         "nearest-neighbour": {"hidden": 16, "batch_size": 32},
         "finetune": {"hidden": 16, "batch_size": 32, "finetune_steps": 50}}
TRAIN_STEPS = 40


def synthetic_split(classes: int, per_class: int, seed: int) -> ClassSplit:
    gen = torch.Generator().manual_seed(seed)
    patterns = (torch.rand(classes, 1, 4, 4, generator=gen) > 0.5).float()
    patterns = patterns.repeat_interleave(7, dim=2).repeat_interleave(7, dim=3)  # 4x4 blocks -> 28x28
    labels = torch.arange(classes).repeat_interleave(per_class)
    images = patterns[labels] * 200 + 25 + torch.randn(len(labels), 1, 28, 28, generator=gen) * 40
    return ClassSplit(images.clamp(0, 255).to(torch.uint8), labels, [f"class{c}" for c in range(classes)])


TRAIN = synthetic_split(10, 12, seed=0)
TEST = synthetic_split(8, 12, seed=1)


def make(name: str, hparams: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    cls = get_algorithm(name)
    algorithm = cls(cls.build_hparams({**SMALL[name], **(hparams or {})}), ModelSpec(1, 28, WAYS, TRAIN.num_classes))
    algorithm.configure_optimizers(3e-3, TRAIN_STEPS, "constant")
    return algorithm


def training_batches(algorithm, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    if algorithm.training_input == "batches":
        for _ in range(steps):
            rows = torch.randint(0, len(TRAIN), (algorithm.hparams.batch_size,), generator=gen)
            yield LabeledBatch(SPEC.normalize(TRAIN.images[rows]), TRAIN.labels[rows])
    else:
        sampler = EpisodeSampler(TRAIN, SPEC, WAYS, SHOTS, QUERIES, seed=seed)
        for _ in range(steps):
            yield [sampler.sample(), sampler.sample()]


@pytest.fixture(scope="module", params=list(MINE))
def trained(request):
    algorithm = make(request.param)
    history = [algorithm.meta_train_step(batch) for batch in training_batches(algorithm, TRAIN_STEPS)]
    return algorithm, history


def test_registry_lists_each_algorithm_with_its_family():
    names = algorithm_names()
    grouped = algorithms_by_family()
    for name, family in MINE.items():
        assert name in names
        cls = get_algorithm(name)
        assert cls.family is family and cls in grouped[family]
        assert cls.info()["hparams"], f"{name} declares no hyperparameters"
    assert get_algorithm("maml").gradient_based and get_algorithm("fomaml").gradient_based
    assert get_algorithm("nearest-neighbour").training_input == "batches"
    assert get_algorithm("finetune").training_input == "batches"
    assert "batch_size" in get_algorithm("finetune").build_hparams({}).__dict__


@pytest.mark.parametrize("name, field, bad", [
    ("maml", "train_inner_lr", -0.1), ("maml", "test_inner_steps", 0), ("maml", "head", "random"),
    ("fomaml", "train_inner_steps", 100), ("nearest-neighbour", "metric", "manhattan"),
    ("nearest-neighbour", "batch_size", 1), ("finetune", "finetune_steps", 0), ("finetune", "finetune_lr", "fast"),
])
def test_hparam_validation_names_the_field(name, field, bad):
    with pytest.raises(ConfigError) as caught:
        get_algorithm(name).build_hparams({field: bad})
    assert caught.value.field == f"algorithm.hparams.{field}"
    assert f"algorithm.hparams.{field}" in str(caught.value)


def test_fomaml_has_no_first_order_switch_and_is_always_first_order():
    with pytest.raises(ConfigError) as caught:
        get_algorithm("fomaml").build_hparams({"first_order": False})
    assert caught.value.field == "algorithm.hparams.first_order"
    assert make("fomaml").first_order and not make("maml").first_order
    assert make("maml", {"first_order": True}).first_order


def test_training_returns_finite_floats_and_learns(trained):
    algorithm, history = trained
    for out in history:
        assert isinstance(out["loss"], float) and isinstance(out["accuracy"], float)
        assert math.isfinite(out["loss"]) and 0.0 <= out["accuracy"] <= 1.0
    first = sum(h["loss"] for h in history[:8]) / 8
    last = sum(h["loss"] for h in history[-8:]) / 8
    assert last < 0.8 * first, f"{algorithm.name}: loss {first:.3f} -> {last:.3f}"
    chance = 1 / (WAYS if algorithm.training_input == "episodes" else TRAIN.num_classes)
    last_accuracy = sum(h["accuracy"] for h in history[-8:]) / 8
    assert last_accuracy > chance + 0.25, f"{algorithm.name}: training accuracy {last_accuracy:.2f}"


def test_adapts_to_new_classes_with_probabilities(trained):
    algorithm, _ = trained
    correct = total = 0
    for episode in FixedEpisodes(TEST, SPEC, WAYS, SHOTS, QUERIES, count=6, seed=7):
        # Evaluation code may run under no_grad; gradient-based adaptation must still work.
        with torch.no_grad():
            probs = algorithm.predict(algorithm.adapt(episode.support_x, episode.support_y, WAYS), episode.query_x)
        assert probs.shape == (len(episode.query_x), WAYS)
        assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5)
        assert (probs >= 0).all()
        correct += int((probs.argmax(dim=1) == episode.query_y).sum())
        total += len(episode.query_y)
    assert correct / total > 1 / WAYS + 0.25, f"{algorithm.name}: held-out accuracy {correct / total:.2f}"


@pytest.mark.parametrize("ways", [3, 7])
def test_adapts_at_other_ways_than_training(trained, ways):
    algorithm, _ = trained
    episode = FixedEpisodes(TEST, SPEC, ways, SHOTS, 3, count=1, seed=3)[0]
    adapted = algorithm.adapt(episode.support_x, episode.support_y, ways)
    probs = algorithm.predict(adapted, episode.query_x)
    assert probs.shape == (len(episode.query_x), ways)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5)
    assert float((probs.argmax(dim=1) == episode.query_y).float().mean()) > 1 / ways
    features = algorithm.embed(episode.query_x, adapted)
    assert features.shape[0] == len(episode.query_x) and torch.isfinite(features).all()


def test_state_dict_round_trip_reproduces_predictions(trained):
    algorithm, _ = trained
    episode = FixedEpisodes(TEST, SPEC, WAYS, SHOTS, QUERIES, count=1, seed=11)[0]
    before = algorithm.predict(algorithm.adapt(episode.support_x, episode.support_y, WAYS), episode.query_x)
    buffer = io.BytesIO()
    torch.save(algorithm.state_dict(), buffer)
    buffer.seek(0)
    restored = make(algorithm.name, seed=123)  # other random weights until loaded
    fresh = restored.predict(restored.adapt(episode.support_x, episode.support_y, WAYS), episode.query_x)
    assert not torch.allclose(fresh, before, atol=1e-4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    after = restored.predict(restored.adapt(episode.support_x, episode.support_y, WAYS), episode.query_x)
    assert torch.allclose(after, before, atol=1e-5)


def test_adaptation_trace_lowers_query_loss_on_a_trained_model(trained):
    algorithm, _ = trained
    episode = FixedEpisodes(TEST, SPEC, WAYS, SHOTS, QUERIES, count=1, seed=5)[0]
    steps = 4
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y,
                                       WAYS, steps)
    if not algorithm.gradient_based:
        assert trace == [], f"{algorithm.name} has no inner loop, so no trace"
        return
    assert [entry["step"] for entry in trace] == list(range(steps + 1))
    for entry in trace:
        assert set(entry) >= {"support_loss", "query_loss", "query_accuracy"}
        assert all(math.isfinite(entry[key]) for key in ("support_loss", "query_loss", "query_accuracy"))
    assert trace[-1]["query_loss"] < trace[0]["query_loss"]
    assert trace[-1]["support_loss"] < trace[0]["support_loss"]


def test_maml_trace_ends_where_adapt_ends():
    algorithm = make("maml")
    episode = FixedEpisodes(TEST, SPEC, WAYS, SHOTS, QUERIES, count=1, seed=5)[0]
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, WAYS, 3)
    probs = algorithm.predict(algorithm.adapt(episode.support_x, episode.support_y, WAYS, steps=3), episode.query_x)
    loss = float(torch.nn.functional.nll_loss(probs.log(), episode.query_y))
    assert abs(loss - trace[-1]["query_loss"]) < 1e-4


def test_maml_zero_head_trains_and_adapts_at_any_ways():
    algorithm = make("maml", {"head": "zero"})
    history = [algorithm.meta_train_step(batch) for batch in training_batches(algorithm, 15)]
    assert all(math.isfinite(h["loss"]) for h in history)
    # A zero head predicts uniformly before adapting, whatever the ways.
    episode = FixedEpisodes(TEST, SPEC, 7, SHOTS, 2, count=1, seed=2)[0]
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 7, 2)
    assert abs(trace[0]["query_loss"] - math.log(7)) < 1e-5
    assert algorithm.predict(algorithm.adapt(episode.support_x, episode.support_y, 7), episode.query_x).shape == (14, 7)


def test_maml_predicts_a_lone_query():
    # Transductive batch norm cannot normalize one image by itself; the support set lends its statistics.
    algorithm = make("maml")
    episode = FixedEpisodes(TEST, SPEC, WAYS, SHOTS, QUERIES, count=1, seed=4)[0]
    adapted = algorithm.adapt(episode.support_x, episode.support_y, WAYS)
    lone = algorithm.predict(adapted, episode.query_x[:1])
    assert lone.shape == (1, WAYS) and torch.isfinite(lone).all()
    assert abs(float(lone.sum()) - 1) < 1e-5


def test_pretraining_rejects_labels_outside_the_head():
    algorithm = make("finetune")
    batch = LabeledBatch(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, TRAIN.num_classes]))
    with pytest.raises(ValueError, match="num_train_classes"):
        algorithm.meta_train_step(batch)


def test_pretraining_also_accepts_episodes_with_their_class_ids():
    algorithm = make("nearest-neighbour")
    sampler = EpisodeSampler(TRAIN, SPEC, WAYS, SHOTS, QUERIES, seed=0)
    out = algorithm.meta_train_step([sampler.sample()])
    assert math.isfinite(out["loss"])


def test_nearest_neighbour_copies_the_label_of_the_closest_support_image():
    algorithm = make("nearest-neighbour")
    episode = FixedEpisodes(TEST, SPEC, WAYS, 2, 3, count=1, seed=9)[0]
    adapted = algorithm.adapt(episode.support_x, episode.support_y, WAYS)
    probs = algorithm.predict(adapted, episode.query_x)
    queries = torch.nn.functional.normalize(algorithm.embed(episode.query_x), dim=1)
    support = torch.nn.functional.normalize(algorithm.embed(episode.support_x), dim=1)
    nearest = episode.support_y[(queries @ support.T).argmax(dim=1)]
    assert torch.equal(probs.argmax(dim=1), nearest)


def test_finetune_all_layers_changes_the_encoder_only_for_the_task():
    algorithm = make("finetune", {"finetune_layers": "all", "finetune_steps": 5, "encoder_lr": 1e-2})
    before = {k: v.clone() for k, v in algorithm.encoder.state_dict().items()}
    episode = FixedEpisodes(TEST, SPEC, WAYS, SHOTS, QUERIES, count=1, seed=6)[0]
    adapted = algorithm.adapt(episode.support_x, episode.support_y, WAYS)
    assert algorithm.predict(adapted, episode.query_x).shape == (len(episode.query_x), WAYS)
    assert all(torch.equal(before[k], v) for k, v in algorithm.encoder.state_dict().items())
    assert not torch.allclose(algorithm.embed(episode.query_x, adapted), algorithm.embed(episode.query_x))


def test_optimizer_state_of_another_network_layout_is_skipped_with_a_warning():
    # E.g. resuming a run saved when Conv-4's convolutions still had biases: the weights convert exactly,
    # the optimizer's per-parameter moments cannot.
    algorithm = make("maml")
    for batch in training_batches(algorithm, 2):
        algorithm.meta_train_step(batch)
    saved = algorithm.optimizer_state()
    group = saved["optimizers"][0]["param_groups"][0]
    group["params"] = group["params"] + [max(group["params"]) + 1]  # one parameter more than today
    with pytest.warns(UserWarning, match="optimizer state not restored"):
        algorithm.load_optimizer_state(saved)
    algorithm.meta_train_step(next(training_batches(algorithm, 1)))  # still trains

"""Siamese networks (Koch et al. 2015): the verifier is symmetric in its pair and computes the paper's weighted L1
formula, the pair sampler keeps its same/different balance, the affine distortions keep shape and range, one-shot
prediction follows the most similar support, and a tiny training through the Trainer with the pair-similarity
inspection, a checkpoint round trip and the verification accuracy every evaluation carries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.siamese import PairSampler, background, balanced_loss, distort, held_out_pairs
from workbench.core.data.episodes import FixedEpisodes
from workbench.core.errors import DatasetError
from workbench.core.kinds import get_kind
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": 8, "pairs_per_step": 16}


def siamese(**hparams):
    cls = get_algorithm("siamese")
    torch.manual_seed(0)
    return cls(cls.build_hparams({**TINY, **hparams}), ModelSpec(1, 16, 3, 12))


def images(count: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(count, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


# --- the verifier ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("twin_features", [0, 12])
def test_the_verifier_is_symmetric_in_its_pair_and_is_the_papers_weighted_l1_formula(twin_features):
    algorithm = siamese(twin_features=twin_features)
    net = algorithm.net
    a, b = images(6, 1), images(6, 2)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(a, b), net(b, a))  # |h1 - h2| = |h2 - h1|, one twin for both sides
        net.train()  # batch statistics of the pair batch: the same images in another order
        assert torch.allclose(net(a, b), net(b, a), atol=1e-5)
    # p = sigmoid(sum_j alpha_j |h1_j - h2_j| + b), by hand from the twin's features and the distance layer
    h1, h2 = algorithm.embed(a).numpy(), algorithm.embed(b).numpy()
    alpha = net.distance.weight.detach().numpy()[0]
    bias = float(net.distance.bias.detach())
    expected = 1 / (1 + np.exp(-(np.abs(h1 - h2) @ alpha + bias)))
    net.eval()
    with torch.no_grad():
        assert torch.sigmoid(net(a, b)).numpy() == pytest.approx(expected, abs=1e-6)
    assert h1.shape == (6, twin_features or net.encoder.out_dim)
    if twin_features:  # the paper's sigmoid layer: features in (0, 1)
        assert (h1 > 0).all() and (h1 < 1).all()


def test_one_shot_prediction_follows_the_most_similar_support():
    algorithm = siamese()
    support_x, support_y = images(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    query_x = images(5, 4)
    probs = algorithm.predict(algorithm.adapt(support_x, support_y, 3), query_x)
    net = algorithm.net.eval()
    with torch.no_grad():
        p_same = torch.sigmoid(net.pairwise_logits(algorithm.embed(query_x), algorithm.embed(support_x))).numpy()
    best = np.stack([p_same[:, support_y.numpy() == c].max(1) for c in range(3)], 1)  # per class: its best support
    odds = best / (1 - best)  # exactly one class matches, verifications independent: P(c) ~ p_c / (1 - p_c)
    assert probs.numpy() == pytest.approx(odds / odds.sum(1, keepdims=True), abs=1e-5)
    assert (probs.argmax(1).numpy() == support_y.numpy()[p_same.argmax(1)]).all()


# --- pairs ------------------------------------------------------------------------------------------------------
def test_the_pair_sampler_draws_half_same_and_half_different_pairs():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4])  # classes 2 and 4 have one image: no same pair
    sampler = PairSampler(labels, lambda rows: rows, torch.Generator().manual_seed(0))
    for pairs in (2, 7, 100):
        first, second, same = sampler.sample(pairs)
        assert same.tolist() == [1.0] * (pairs // 2) + [0.0] * (pairs - pairs // 2)
        assert torch.equal(labels[first] == labels[second], same.bool())  # targets agree with the labels
        assert (first != second).all()  # a same pair is two different images
    first, second, same = sampler.sample(4000)
    same_classes = labels[first[same == 1]]
    assert set(same_classes.tolist()) == {0, 1, 3}  # only classes with two images, all of them
    assert set(labels[first[same == 0]].tolist()) | set(labels[second[same == 0]].tolist()) == {0, 1, 2, 3, 4}
    # classes uniformly: class 3 is not four times as likely as class 1 for having four times the images
    counts = torch.bincount(same_classes, minlength=5)[[0, 1, 3]].float()
    assert (counts / counts.sum() - 1 / 3).abs().max() < 0.05
    with pytest.raises(DatasetError, match="two images"):
        PairSampler(torch.tensor([0, 1, 2]), lambda rows: rows, torch.Generator())


def test_all_in_batch_sampling_takes_two_images_of_distinct_classes_and_weighs_both_halves_equally():
    labels = torch.tensor([7, 7, 7, 1, 1, 2, 30, 30, 30, 30, 4])
    sampler = PairSampler(labels, lambda rows: rows, torch.Generator().manual_seed(0))
    rows, classes = sampler.class_pairs(3)
    assert torch.equal(labels[rows], classes) and set(classes.tolist()) == {1, 7, 30}  # the classes with two images
    assert torch.equal(classes[:3], classes[3:]) and (rows[:3] != rows[3:]).all()
    rows, classes = sampler.class_pairs(5)  # more than there are: drawn again, still two images of the class
    assert torch.equal(labels[rows], classes) and (rows[:5] != rows[5:]).all()
    # 1 same pair against 5 different ones: each half is half of the loss
    logits, same = torch.tensor([2.0, -1.0, 0.5, -3.0, 1.5, -0.2]), torch.tensor([1.0, 0, 0, 0, 0, 0])
    loss, accuracy = balanced_loss(logits, same)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(loss) == pytest.approx(0.5 * float(bce(logits[:1], same[:1])) + 0.5 * float(bce(logits[1:], same[1:])))
    assert accuracy == pytest.approx(0.5 * 1.0 + 0.5 * 3 / 5)


def test_held_out_pairs_take_one_support_of_the_own_class_and_one_of_another():
    support_y, query_y = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 1, 2, 2, 1])
    generator = torch.Generator().manual_seed(0)
    chosen = set()
    for _ in range(30):
        same, other = held_out_pairs(query_y, support_y, generator)
        assert torch.equal(support_y[same], query_y) and (support_y[other] != query_y).all()
        chosen |= set(same.tolist())
    assert chosen == set(range(6))  # random among the class's supports, not always the first


# --- distortions --------------------------------------------------------------------------------------------------
def test_distortions_keep_shape_and_range_and_fill_with_the_background():
    mean, std = (0.92,), (0.22,)
    fill = background("dark", mean, std)
    low, high = (0 - mean[0]) / std[0], fill[0]  # the normalized range of dark strokes on white
    x = low + (high - low) * torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(1)
    out = distort(x, generator, 1.0, 2.0, fill)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= low - 1e-5 and out.max() <= high + 1e-5
    assert all(not torch.allclose(out[i], x[i]) for i in range(len(x)))
    twins = distort(x[:1].repeat(8, 1, 1, 1), generator, 1.0, 2.0, fill)
    assert len({tuple(image.flatten()[:50].tolist()) for image in twins}) == 8  # one transform per image
    blank = torch.full((4, 1, 16, 16), fill[0])
    assert torch.allclose(distort(blank, generator, 1.0, 2.0, fill), blank)  # no dark borders appear
    assert torch.allclose(distort(x, generator, 0.0, 2.0, fill), x, atol=1e-5)  # no component drawn: identity
    colour = background("natural", (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    assert distort(torch.rand(3, 3, 16, 16), generator, 0.5, 2.0, colour).shape == (3, 3, 16, 16)


# --- through the trainer ------------------------------------------------------------------------------------------
@pytest.mark.usefixtures("use_synthetic_data")
@pytest.mark.parametrize("sampling", ["independent", "all_in_batch"])
def test_trains_through_the_trainer_with_the_inspection_and_a_checkpoint_that_predicts_identically(sampling):
    hparams = {**TINY, "pair_sampling": sampling, "step_classes": 6}
    config = tiny_dataset_config(algorithm={"name": "siamese", "hparams": hparams},
                                 training={"steps": 6, "val_interval": 3, "checkpoint_interval": 3})
    trainer = Trainer(config)
    records = []
    assert trainer.run_all(records.append).event == "finished"
    steps = [r for r in records if r.event == "step"]
    assert len(steps) == 6 and all(math.isfinite(r.loss) and 0 <= r.score <= 1 for r in steps)
    live = trainer.algorithm
    assert live._pairs is not None  # pairs from all training classes, not from the episodes

    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [3, 6] and [s.name for s in history.specs] == ["pair_similarity"]
    record = history.records[-1]["pair_similarity"]
    rows, columns = len(record["rows"]), len(record["columns"])
    assert (rows, columns) == (6, 3)  # 3-way 1-shot 2-query probe: every query, every support
    assert list(record["rows"]) == [f"q{i + 1}: class {i % 3 + 1}" for i in range(6)]  # classes in turn
    assert list(record["columns"]) == ["class 1", "class 2", "class 3"]
    assert record["values"].shape == (rows, columns) and ((record["values"] >= 0) & (record["values"] <= 1)).all()
    assert record["row_images"].shape == (rows, 16, 16) and record["column_images"].shape == (columns, 16, 16)
    for thumbs in (record["row_images"], record["column_images"]):
        assert thumbs.min() >= 0 and thumbs.max() <= 1 and (thumbs.reshape(len(thumbs), -1).max(1) == 1).all()
    assert not np.array_equal(history.records[0]["pair_similarity"]["values"], record["values"])  # it learns

    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=3)[0]
    probs = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    loaded = load_model(trainer.run, kind="last").algorithm
    assert torch.equal(loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x), probs)
    assert live.embed(episode.query_x).shape == (len(episode.query_x), live.net.encoder.out_dim)


@pytest.mark.parametrize("sampling", ["independent", "all_in_batch"])
def test_verification_training_transfers_to_new_classes(sampling):
    """Eighty steps of pairs from 60 training classes: held-out verification and one-shot classification of new
    classes well above chance (on 12 classes the verifier only memorises them)."""
    dataset = synthetic_dataset(train_classes=60)
    algorithm = siamese(pairs_per_step=32, step_classes=16, pair_sampling=sampling, affine_distortions=False)
    split = dataset.split("train")
    algorithm._pairs = PairSampler(split.labels, lambda rows: dataset.spec.normalize(split.images[rows]),
                                   algorithm.generator)
    algorithm.configure_optimizers(1e-2, 80, "constant")
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 3, count=20, seed=4)
    kind = get_kind("classification")
    before = kind.evaluate(algorithm, tasks)
    assert before.extras["verification_accuracy"]["accuracy"] < 0.6
    for _ in range(80):
        algorithm.meta_train_step([])
    after = kind.evaluate(algorithm, tasks)
    assert after.extras["verification_accuracy"]["accuracy"] > 0.75
    assert after.accuracy > max(0.8, before.accuracy + 0.15)


def test_every_evaluation_reports_verification_accuracy_on_held_out_pairs():
    algorithm = siamese()
    dataset = synthetic_dataset()
    tasks = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 2, 3, count=5, seed=5)
    result = get_kind("classification").evaluate(algorithm, tasks)
    reported = result.extras["verification_accuracy"]
    assert reported["episodes"] == 5 and 0 <= reported["ci95"]

    net = algorithm.net.eval()
    correct = []  # by hand: each query against the supports held_out_pairs picks with the episode's seed
    for index in range(len(tasks)):
        episode = tasks[index]
        with torch.no_grad():
            p = torch.sigmoid(net.pairwise_logits(algorithm.embed(episode.query_x), algorithm.embed(episode.support_x)))
        same, other = held_out_pairs(episode.query_y, episode.support_y, torch.Generator().manual_seed(index))
        rows = torch.arange(len(episode.query_y))
        correct.append(float(torch.cat([p[rows, same] > 0.5, p[rows, other] <= 0.5]).float().mean()))
    assert reported["accuracy"] == pytest.approx(np.mean(correct), abs=1e-6)
    # as many same as different pairs in every episode: the accuracy is the mean of the two
    assert reported["accuracy"] == pytest.approx((reported["same_pairs"] + reported["different_pairs"]) / 2)

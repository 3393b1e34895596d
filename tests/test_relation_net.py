"""Relation Networks (Sung et al. 2018): scores in [0, 1] whatever the input, the training loss and its gradient equal
an MSE against one-hot labels computed by hand on explicitly concatenated pair maps (class map = sum of its support
maps), the factored first relation convolution equals the paper's concatenation, predictions are the scores
normalised, the architecture adapts to the image size, and training through the Trainer records the similarity view
and writes a checkpoint that predicts identically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.relation_net import RELATION_SCORES, block_layout, probe_rows
from workbench.core.data.episodes import Episode, FixedEpisodes
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"hidden": 8, "relation_units": 4}


def make(image_size: int = 16, hparams: dict | None = None, seed: int = 0):
    cls = get_algorithm("relation-net")
    torch.manual_seed(seed)
    return cls(cls.build_hparams({**SMALL, **(hparams or {})}), ModelSpec(1, image_size, 3, 10))


def episode(ways: int = 3, shots: int = 2, queries: int = 2, size: int = 16, seed: int = 0) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    return Episode(torch.randn(ways * shots, 1, size, size, generator=gen), torch.arange(ways).repeat_interleave(shots),
                   torch.randn(ways * queries, 1, size, size, generator=gen),
                   torch.arange(ways).repeat_interleave(queries), list(range(ways)), [f"c{c}" for c in range(ways)])


def scores_by_hand(algorithm, e: Episode) -> torch.Tensor:
    """[Q, N] scores the paper's way: one batch through the embedding, each class map the explicit sum of its support
    maps, every (class, query) pair concatenated along the channels and scored by the relation module."""
    maps = algorithm.embedding(torch.cat([e.support_x, e.query_x]))
    support, queries = maps[: len(e.support_x)], maps[len(e.support_x):]
    classes = [sum(support[i] for i in range(len(support)) if int(e.support_y[i]) == c) for c in range(e.ways)]
    pairs = torch.stack([torch.cat([classes[c], queries[q]]) for q in range(len(queries)) for c in range(e.ways)])
    return torch.sigmoid(algorithm.relation(pairs)).view(len(queries), e.ways)


def test_the_training_loss_and_its_gradient_are_the_mse_of_the_scores_against_one_hot_labels():
    algorithm = make(hparams={"grad_clip": 0.0})
    algorithm.configure_optimizers(0.0, 10, "constant")  # lr 0: the step leaves the weights where the reference saw them
    e = episode()
    algorithm.train()
    scores = scores_by_hand(algorithm, e)
    one_hot = torch.zeros(len(e.query_y), e.ways)
    one_hot[torch.arange(len(e.query_y)), e.query_y] = 1.0
    expected = ((scores - one_hot) ** 2).sum() / scores.numel()
    params = [p for m in algorithm.modules().values() for p in m.parameters()]
    reference = torch.autograd.grad(expected, params)
    result = algorithm.meta_train_step([e])
    assert result["loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    assert result["accuracy"] == pytest.approx(float((scores.argmax(1) == e.query_y).float().mean()))
    for p, g in zip(params, reference):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def test_the_factored_first_relation_convolution_equals_the_concatenation():
    algorithm = make(seed=3)
    algorithm.relation.double().train()
    gen = torch.Generator().manual_seed(2)
    class_maps = torch.randn(4, 8, 2, 2, generator=gen, dtype=torch.float64)
    query_maps = torch.randn(5, 8, 2, 2, generator=gen, dtype=torch.float64)
    pairs = torch.stack([torch.cat([class_maps[c], query_maps[q]]) for q in range(5) for c in range(4)])
    # Train mode: batch norm's statistics over the same pairs, so any mismatch in a pair shows.
    assert torch.allclose(algorithm.relation.pair_logits(class_maps, query_maps),
                          algorithm.relation(pairs).view(5, 4), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [0.0, 1.0, 1e3, 1e6])
@pytest.mark.parametrize("train", [True, False])
def test_scores_lie_in_the_unit_interval_for_any_input(scale, train):
    algorithm = make(seed=int(scale) % 7)
    e = episode(seed=5)
    algorithm.train(train)
    with torch.no_grad():
        for x in (e.query_x * scale, torch.full_like(e.query_x, -scale), e.query_x.sign() * scale):
            scores = torch.sigmoid(algorithm._logits(e.support_x * scale, e.support_y, x, e.ways))
            assert scores.shape == (len(x), e.ways)
            assert torch.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()


@pytest.mark.parametrize("bias", [-1e4, 0.0, 1e4])
def test_predictions_are_the_scores_normalised_even_when_they_saturate(bias):
    algorithm = make()
    e = episode(shots=1, queries=3)
    with torch.no_grad():
        algorithm.relation.out.bias.fill_(bias)  # +-1e4: every score rounds to exactly 0 or 1
    adapted = algorithm.adapt(e.support_x, e.support_y, e.ways)
    scores = algorithm.relation_scores(adapted, e.query_x)
    probs = algorithm.predict(adapted, e.query_x)
    assert ((scores >= 0) & (scores <= 1)).all() and torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)))
    if bias == 0.0:
        assert torch.allclose(probs, scores / scores.sum(1, keepdim=True), atol=1e-6)
        assert torch.equal(probs.argmax(1), scores.argmax(1))


def test_a_class_is_the_sum_of_its_support_feature_maps_and_embed_is_the_flattened_map():
    algorithm = make()
    e = episode(shots=3)
    adapted = algorithm.adapt(e.support_x, e.support_y, e.ways)
    algorithm.eval()
    with torch.no_grad():
        maps = algorithm.embedding(e.support_x)
    for c in range(e.ways):
        assert torch.allclose(adapted["class_maps"][c], maps[e.support_y == c].sum(0), atol=1e-5)
    assert torch.allclose(algorithm.embed(e.support_x), maps.flatten(1))


@pytest.mark.parametrize("size, side", [(28, 5), (16, 2), (84, 19), (8, 1)])
def test_the_embedding_keeps_a_spatial_map_whatever_the_image_size(size, side):
    layout, final = block_layout(size, 4, 2, unpadded=True)
    assert final == side and [pool for _, pool in layout] == [True, True, False, False]
    if size == 28:  # the paper's Omniglot layout: unpadded pooled blocks, padded unpooled ones
        assert [padding for padding, _ in layout] == [0, 0, 1, 1]
    algorithm = make(image_size=size)
    e = episode(shots=1, queries=1, size=size)
    assert algorithm.embed(e.query_x).shape == (3, 8 * side * side)
    assert algorithm.predict(algorithm.adapt(e.support_x, e.support_y, 3), e.query_x).shape == (3, 3)


def test_the_inspection_scores_probe_queries_against_at_most_twenty_classes():
    algorithm = make()
    assert algorithm.inspect() == {}  # no episode met yet
    algorithm.configure_optimizers(1e-3, 10)
    e = episode(ways=25, shots=1, queries=2, seed=1)
    algorithm.meta_train_step([e])
    record = algorithm.inspect()[RELATION_SCORES.name]
    assert record["values"].shape == (10, 20)
    rows = probe_rows(e.query_y, 20)
    assert [int(e.query_y[i]) for i in rows] == list(range(10))  # one query of each of the first 10 classes
    assert record["rows"].tolist() == [f"class {c + 1}" for c in range(10)]
    assert record["columns"].tolist() == [f"class {c + 1}" for c in range(20)]
    assert record["row_images"].shape == (10, 16, 16) and record["column_images"].shape == (20, 16, 16)
    for images in (record["row_images"], record["column_images"]):
        assert images.min() == 0.0 and images.max() == 1.0
        assert np.allclose(images.reshape(len(images), -1).max(1), 1.0)  # each thumbnail scaled on its own
    adapted = algorithm.adapt(e.support_x[:20], e.support_y[:20], 20)
    assert np.allclose(record["values"], algorithm.relation_scores(adapted, e.query_x[rows]).numpy(), atol=1e-6)
    assert ((record["values"] >= 0) & (record["values"] <= 1)).all()


def test_probe_rows_take_queries_from_each_class_in_turn():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert probe_rows(labels, 3, count=5).tolist() == [0, 1, 3, 4, 6]
    assert probe_rows(labels, 2, count=10).tolist() == [0, 1, 2, 3, 4, 5]


@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_through_the_trainer_records_the_scores_and_a_checkpoint_predicts_identically():
    config = tiny_dataset_config(algorithm={"name": "relation-net", "hparams": SMALL},
                                 training={"steps": 30, "meta_batch": 2, "val_interval": 15, "checkpoint_interval": 15,
                                           "lr": 1e-2, "train_queries": 4})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 30 and all(math.isfinite(m["loss"]) for m in steps)
    assert np.mean([m["loss"] for m in steps[-5:]]) < np.mean([m["loss"] for m in steps[:5]])  # it learns
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [15, 30] and [s.name for s in history.specs] == [RELATION_SCORES.name]
    first, last = (record[RELATION_SCORES.name] for record in history.records)
    assert first["values"].shape == (10, 3) and first["column_images"].shape == (3, 16, 16)
    assert not np.array_equal(first["values"], last["values"])  # the scores change as it trains

    dataset = synthetic_dataset()
    e = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=4)[0]
    live = trainer.algorithm
    loaded = load_model(trainer.run, kind="last").algorithm
    expected = live.predict(live.adapt(e.support_x, e.support_y, 3), e.query_x)
    assert torch.equal(loaded.predict(loaded.adapt(e.support_x, e.support_y, 3), e.query_x), expected)
    assert torch.allclose(expected.sum(1), torch.ones(len(expected)))

"""Few-shot GNN (Garcia & Bruna 2018): the graph network is permutation-equivariant (permuting the nodes permutes
its outputs and adjacencies alike, so a query's prediction ignores the order of the support set), a layer matches a
computation by hand, and training through the Trainer records the learned adjacency and checkpoints that predict
identically."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.gnn import FewShotGNN, query_graphs
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes
from workbench.core.errors import ConfigError
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"hidden": 8, "gnn_layer_features": 6, "edge_hidden": 8}


def small_gnn(layers: int = 2, features: int = 7, classes: int = 3) -> FewShotGNN:
    torch.manual_seed(0)
    return FewShotGNN(features, classes, layers, growth=5, edge_hidden=6).double()


def small_algorithm(ways: int = 3, **hparams):
    cls = get_algorithm("gnn")
    torch.manual_seed(0)
    return cls(cls.build_hparams({**SMALL, **hparams}), ModelSpec(1, 16, ways, 12))


@pytest.mark.parametrize("training", [False, True])
def test_permuting_the_nodes_permutes_outputs_and_adjacencies(training):
    """Batch norm in training mode normalizes over all nodes and pairs, a set, so equivariance holds there too."""
    gnn = small_gnn().train(training)
    nodes = torch.randn(4, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out, adjacencies = gnn(nodes)
    out_permuted, adjacencies_permuted = gnn(nodes[:, perm])
    assert torch.allclose(out_permuted, out[:, perm], atol=1e-10)
    for a, a_permuted in zip(adjacencies, adjacencies_permuted):
        assert torch.allclose(a_permuted, a[:, perm][:, :, perm], atol=1e-12)
    assert not torch.allclose(out_permuted, out, atol=1e-3)  # the permutation does move the outputs


def test_adjacency_is_a_softmax_over_the_other_nodes():
    _, adjacencies = small_gnn()(torch.randn(2, 5, 7, dtype=torch.float64))
    assert len(adjacencies) == 3  # two graph layers and the final one
    for a in adjacencies:
        assert torch.all(a.diagonal(dim1=1, dim2=2) == 0)  # no self-edges
        assert torch.allclose(a.sum(-1), torch.ones(2, 5, dtype=torch.float64))
        assert torch.all(a[~torch.eye(5, dtype=torch.bool).expand(2, 5, 5)] > 0)


def test_final_layer_matches_the_formula_by_hand():
    """Without graph layers the network is one learned adjacency and Linear([x, A x]); written here without the
    module's forward: scores from the MLP on |x_i − x_j|, a softmax over j ≠ i by hand, the linear map by hand."""
    gnn = small_gnn(layers=0).eval()
    x = torch.randn(2, 4, 7, dtype=torch.float64)
    out, _ = gnn(x)
    with torch.no_grad():
        scores = np.array([[float(gnn.last_edges.mlp((x[0, i] - x[0, j]).abs()[None])) for j in range(4)]
                           for i in range(4)])
    for i in range(4):
        others = [j for j in range(4) if j != i]
        weights = np.exp(scores[i, others] - scores[i, others].max())
        weights /= weights.sum()
        mixed = sum(w * x[0, j].numpy() for w, j in zip(weights, others))
        expected = gnn.last.linear.weight.detach().numpy() @ np.concatenate([x[0, i].numpy(), mixed]) \
            + gnn.last.linear.bias.detach().numpy()
        assert np.allclose(out[0, i].detach().numpy(), expected, atol=1e-10)


def test_dense_layers_append_features_to_every_node():
    gnn = small_gnn(layers=2, features=7)
    assert [conv.linear.in_features for conv in gnn.convs] == [14, 24]  # 2 x (7), 2 x (7 + 5)
    assert gnn.last.linear.in_features == 2 * (7 + 2 * 5) and gnn.last.linear.out_features == 3


def test_query_nodes_carry_a_uniform_label_and_the_support_one_hot_labels():
    support, queries = torch.randn(4, 2), torch.randn(3, 2)
    labels = F.one_hot(torch.tensor([0, 1, 2, 0]), 5).float()
    graphs = query_graphs(support, labels, queries, ways=3)
    assert graphs.shape == (3, 5, 7)
    assert torch.equal(graphs[:, 0, :2], queries)
    assert torch.allclose(graphs[:, 0, 2:], torch.tensor([[1 / 3] * 3 + [0, 0]] * 3))
    assert all(torch.equal(graphs[q, 1:], torch.cat([support, labels], 1)) for q in range(3))


def test_query_predictions_ignore_the_support_order_and_the_other_queries():
    algorithm = small_algorithm()
    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 2, 3, count=1, seed=2)[0]
    probs = algorithm.predict(algorithm.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    perm = torch.tensor([4, 1, 5, 0, 3, 2])
    shuffled = algorithm.adapt(episode.support_x[perm], episode.support_y[perm], 3)
    assert torch.allclose(algorithm.predict(shuffled, episode.query_x), probs, atol=1e-5)
    alone = algorithm.predict(shuffled, episode.query_x[4:5])  # one query: its own graph, the same prediction
    assert torch.allclose(alone, probs[4:5], atol=1e-5)
    assert probs.shape == (9, 3) and torch.allclose(probs.sum(1), torch.ones(9))


def test_fewer_ways_use_the_first_label_slots_and_more_ways_are_refused():
    algorithm = small_algorithm(ways=5)
    x = torch.randn(6, 1, 16, 16)
    probs = algorithm.predict(algorithm.adapt(x[:3], torch.arange(3), 3), x[3:])
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(1), torch.ones(3))
    with pytest.raises(ConfigError, match="label_slots"):
        algorithm.adapt(torch.randn(6, 1, 16, 16), torch.arange(6), 6)
    assert small_algorithm(ways=5, label_slots=6).adapt(x, torch.arange(6), 6)["labels"].shape == (6, 6)


def test_episodic_training_lowers_the_query_loss():
    algorithm = small_algorithm()
    algorithm.configure_optimizers(1e-2, 60, "constant")
    dataset = synthetic_dataset()
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, 3, 1, 2, seed=0)
    history = [algorithm.meta_train_step([sampler.sample(), sampler.sample()]) for _ in range(60)]
    assert np.mean([h["loss"] for h in history[-10:]]) < 0.6 * np.mean([h["loss"] for h in history[:10]])
    assert np.mean([h["accuracy"] for h in history[-10:]]) > 0.8


@pytest.mark.usefixtures("use_synthetic_data")
def test_trainer_records_the_learned_adjacency_and_a_checkpoint_predicts_identically():
    config = tiny_dataset_config(algorithm={"name": "gnn", "hparams": SMALL},
                                 training={"steps": 4, "meta_batch": 2, "val_interval": 2, "checkpoint_interval": 2})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in steps)

    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    names = ["learned_adjacency", "last_layer_adjacency"]
    assert history.steps == [2, 4] and [s.name for s in history.specs] == names + ["own_class_weight"]
    assert [spec.plot for spec in history.specs] == ["heatmap", "heatmap", "curves"]
    first, last = (history.records[-1][name] for name in names)
    # The probe is the first training episode: 3-way 1-shot with 2 queries per class (6 rows, 3 support columns).
    for record in (first, last):
        assert record["values"].shape == (6, 3) and np.allclose(record["values"].sum(1), 1, atol=1e-5)
        assert record["rows"].shape == (6,) and record["columns"].shape == (3,)
        assert record["columns"].tolist() == ["class 1", "class 2", "class 3"]
        assert record["rows"].tolist() == ["class 1", "class 1", "class 2", "class 2", "class 3", "class 3"]
        assert record["row_images"].shape == (6, 16, 16) and record["column_images"].shape == (3, 16, 16)
        for images in (record["row_images"], record["column_images"]):
            assert images.min() >= 0 and images.max() <= 1 and np.allclose(images.max((1, 2)), 1)
    assert not np.allclose(first["values"], last["values"])  # two layers, two adjacencies
    assert not np.array_equal(history.records[0][names[0]]["values"], first["values"])  # learned in between
    # The record is the live network's adjacency on the probe: recompute the first layer's from the probe task.
    live = trainer.algorithm
    support_x, support_y, query_x, query_y, _ = live._probe
    with torch.no_grad():
        live.eval()
        _, adjacencies = live._logits(live.encoder(support_x), live._one_hot(support_y, 3), live.encoder(query_x), 3)
    assert np.allclose(first["values"], adjacencies[0][:, 0, 1:].numpy(), atol=1e-5)
    own = history.records[-1]["own_class_weight"]
    assert own["layer"].tolist() == [1, 2, 3] and np.allclose(own["chance (1 / ways)"], 1 / 3)
    # 1-shot: a query's weight on its own class is its edge to the one support of that class.
    by_hand = [float(a[:, 0, 1:][torch.arange(6), query_y].mean()) for a in adjacencies]
    assert np.allclose(own["own class"], by_hand, atol=1e-5)

    dataset = synthetic_dataset()
    episode = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=1, seed=4)[0]
    loaded = load_model(trainer.run, kind="last").algorithm
    expected = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    again = loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.allclose(again, expected, atol=1e-6)
    embeddings = live.embed(episode.query_x)
    assert embeddings.shape == (6, 8) and torch.allclose(loaded.embed(episode.query_x), embeddings, atol=1e-6)

"""Probe tasks: PCA with stable signs, compact snapshot history in the run folder, snapshots recorded by the
trainer at validation time, the adaptation comparison, and t-SNE/UMAP in a child process that reports progress
and stops on cancel."""

from __future__ import annotations

import multiprocessing
import threading
import time

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core import probes
from workbench.core.algorithms import ModelSpec, algorithm_names, get_algorithm
from workbench.core.runs import load_model
from workbench.core.data import Cancelled
from workbench.core.runs import RunStore
from workbench.core.training import Trainer


def test_pca_finds_the_main_direction_and_keeps_signs_stable():
    rng = np.random.default_rng(0)
    direction = rng.normal(size=10)
    direction /= np.linalg.norm(direction)
    points = np.outer(rng.normal(size=200) * 5, direction) + rng.normal(scale=0.1, size=(200, 10))
    coords, components = probes.pca_2d(points)
    assert coords.shape == (200, 2)
    assert abs(components[0] @ direction) > 0.99
    # The variance along the first axis dominates.
    assert coords[:, 0].var() > 50 * coords[:, 1].var()
    # A flipped previous frame flips this one to agree with it.
    flipped, flipped_components = probes.pca_2d(points, -components)
    assert np.allclose(flipped, -coords) and np.allclose(flipped_components, -components)
    again, _ = probes.pca_2d(points + 1e-3, components)
    assert np.allclose(again[:, 0], coords[:, 0], atol=0.05)


def test_history_appends_thins_and_round_trips(tmp_path, monkeypatch):
    history = probes.ProbeHistory(tmp_path)
    meta = {"support_y": np.arange(3, dtype=np.int16)}
    for step in range(0, 50, 5):
        history.append(step, {"support": np.full((3, 4), step, np.float16)}, meta, ways=3, class_names=["a"])
    history.save()
    loaded = probes.ProbeHistory.load(tmp_path / probes.PROBE_FILE)
    assert loaded.steps == list(range(0, 50, 5)) and len(loaded) == 10
    assert loaded.snapshots[3]["support"].dtype == np.float16 and float(loaded.snapshots[3]["support"][0, 0]) == 15
    assert loaded.info["class_names"] == ["a"] and list(loaded.meta["support_y"]) == [0, 1, 2]
    # A resumed run repeating step 30 replaces the later history.
    loaded.append(30, {"support": np.zeros((3, 4), np.float16)})
    assert loaded.steps == [0, 5, 10, 15, 20, 25, 30]
    monkeypatch.setattr(probes, "MAX_SNAPSHOTS", 4)
    loaded.append(100, {"support": np.zeros((3, 4), np.float16)})
    assert len(loaded) <= 4 and loaded.steps[0] == 0 and loaded.steps[-1] == 100


def test_a_reader_holding_earlier_snapshots_reads_only_the_new_ones(tmp_path):
    history = probes.ProbeHistory(tmp_path)
    meta = {"support_y": np.arange(3, dtype=np.int16)}
    for step in (10, 20, 30, 40):
        history.append(step, {"support": np.full((3, 4), step, np.float16)}, meta, ways=3)
    history.save()
    path = tmp_path / probes.PROBE_FILE
    again = probes.ProbeHistory.load(path, known_steps=[10, 20])
    assert again.reused == 2 and again.steps == [10, 20, 30, 40]
    assert again.snapshots[0] == {} and again.snapshots[1] == {}  # left unread
    assert float(again.snapshots[2]["support"][0, 0]) == 30 and list(again.meta["support_y"]) == [0, 1, 2]
    # Steps that no longer begin the history (thinned, or another run): everything is read.
    thinned = probes.ProbeHistory.load(path, known_steps=[10, 15])
    assert thinned.reused == 0 and float(thinned.snapshots[0]["support"][0, 0]) == 10


@pytest.mark.usefixtures("use_synthetic_data")
def test_trainer_records_probe_snapshots_at_each_validation():
    store = RunStore()
    trainer = Trainer(tiny_dataset_config(training={"steps": 6, "val_interval": 3}), store)
    trainer.run_all()
    history = probes.ProbeHistory.load(trainer.run.path / probes.PROBE_FILE)
    assert history.steps == [3, 6]
    ways, shots, queries = 3, 1, 2
    snapshot = history.snapshots[-1]
    assert snapshot["support"].shape[0] == ways * shots and snapshot["query"].shape[0] == ways * queries
    assert snapshot["prototypes"].shape == (ways, snapshot["support"].shape[1])
    assert snapshot["support"].dtype == np.float16
    assert history.info["split"] == "val" and len(history.meta["query_row"]) == ways * queries
    # The snapshot matches what the saved model gives for the same probe task.
    loaded = load_model(trainer.run, "cpu", kind="last")
    episode = probes.config_probe_episodes(synthetic_dataset(), trainer.config)[0]
    again = probes.embedding_snapshot(loaded.algorithm, episode)
    assert np.allclose(again["support"].astype(np.float32), snapshot["support"].astype(np.float32), atol=1e-2)


@pytest.mark.usefixtures("use_synthetic_data")
def test_adaptation_comparison_for_maml():
    store = RunStore()
    config = tiny_dataset_config(algorithm={"name": "maml", "hparams": {"hidden": 8, "train_inner_steps": 1,
                                                                         "test_inner_steps": 2}})
    trainer = Trainer(config, store)
    trainer.run_all()
    episodes = probes.config_probe_episodes(synthetic_dataset(), config, 2)
    seen = []
    state = torch.get_rng_state()
    result = probes.adaptation_comparison(trainer.algorithm, episodes, 4, lambda d, t, m: seen.append((d, t)))
    assert torch.equal(state, torch.get_rng_state())  # the random start does not disturb the global RNG
    assert seen[-1] == (4, 4)
    assert list(result["meta"]["step"]) == [0, 1, 2, 3, 4] and result["episodes"] == 2
    assert result["random"]["support_loss"][-1] < result["random"]["support_loss"][0]
    with pytest.raises(ValueError):
        protonet = Trainer(tiny_dataset_config(), store).algorithm
        probes.adaptation_comparison(protonet, episodes, 3)


def test_tsne_in_a_child_process_reports_progress_and_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(0, 1, (40, 16)), rng.normal(12, 1, (40, 16))])
    messages = []
    coords = probes.projection_2d(points, "t-SNE", progress=lambda done, total, message: messages.append(message))
    assert coords.shape == (80, 2) and np.isfinite(coords).all()
    a, b = coords[:40], coords[40:]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    assert gap > 3 * max(a.std(0).max(), b.std(0).max())
    assert any("iteration 1000/1000" in m for m in messages) and messages[-1] == "t-SNE done"
    assert not multiprocessing.active_children()


def test_cancelling_a_tsne_terminates_its_process_at_once():
    points = np.random.default_rng(0).normal(size=(4000, 32))  # long enough to be mid-fit when cancelled
    cancel, messages, outcome = threading.Event(), [], {}
    computing = threading.Event()

    def progress(done, total, message):
        messages.append(message)
        if "neighbours" in message or "iteration" in message:
            computing.set()

    def run():
        try:
            outcome["coords"] = probes.projection_2d(points, "t-SNE", progress=progress, cancel=cancel)
        except Cancelled:
            outcome["cancelled"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert computing.wait(120), messages
        children = multiprocessing.active_children()
        assert [child.name for child in children] == ["workbench-t-SNE"]
        cancelled_at = time.monotonic()
        cancel.set()
        thread.join(5)
        assert not thread.is_alive() and "cancelled" in outcome
        assert outcome["cancelled"] - cancelled_at < 1.0
        assert not any(child.is_alive() for child in children)
    finally:
        cancel.set()
        thread.join()


def test_umap_and_unknown_projections_fail_with_a_clear_message():
    with pytest.raises(ValueError, match="unknown projection"):
        probes.projection_2d(np.zeros((5, 2)), "isomap")
    if probes.umap_available():
        pytest.skip("umap-learn is installed")
    with pytest.raises(RuntimeError, match="umap-learn"):
        probes.projection_2d(np.random.default_rng(0).normal(size=(20, 4)), "UMAP")
    assert not multiprocessing.active_children()


def test_pca_signs_are_deterministic_without_a_previous_frame():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(50, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    coords, components = probes.pca_2d(points)
    for component in components:  # the largest-magnitude loading is positive, whatever the SVD returned
        assert component[np.argmax(np.abs(component))] > 0
    mirrored, _ = probes.pca_2d(points[::-1])
    assert np.allclose(mirrored[::-1], coords)


@pytest.mark.parametrize("name", [n for n in algorithm_names()
                                  if get_algorithm(n).has("embeddings") and get_algorithm(n).supports("classification")])
def test_every_algorithm_with_embeddings_feeds_the_projector(name):
    """The projector's snapshot of a probe episode, in the space each method compares in, for every algorithm that
    declares embeddings (untrained: the shapes and the stages are what the view needs)."""
    from workbench.core.data.base import PreprocessSpec
    from workbench.core.data.episodes import EpisodeSampler
    from workbench.core.probes import embedding_snapshot
    from test_algorithms import TRAIN  # a small synthetic split

    torch.manual_seed(0)
    cls = get_algorithm(name)
    algorithm = cls(cls.build_hparams({}), ModelSpec(1, 28, 5, TRAIN.num_classes))
    episode = EpisodeSampler(TRAIN, PreprocessSpec(28, 1, (0.5,), (0.5,)), 5, 1, 3, seed=0).sample()
    snapshot = embedding_snapshot(algorithm, episode)
    assert snapshot["support"].shape[0] == 5 and snapshot["query"].shape[0] == 15
    assert snapshot["prototypes"].shape == (5, snapshot["support"].shape[1])
    assert np.isfinite(snapshot["support"].astype(np.float32)).all()
    assert snapshot["query_pred"].shape == (15,) and set(snapshot["query_pred"].tolist()) <= set(range(5))
    adapted = cls.gradient_based or getattr(algorithm, "support_dependent_embeddings", False)
    assert ("adapted_support" in snapshot) == adapted

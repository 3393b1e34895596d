"""Evaluation: CI math, per-class accuracy and confusion, fixed episodes shared across algorithms,
evaluating runs at other way/shot settings, and saving results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset, tiny_dataset_config
from workbench.core.data import Cancelled, FixedEpisodes
from workbench.core.errors import EpisodeError
from workbench.core.evaluation import evaluate_run
from workbench.core.kinds.classification import EvalResult
from workbench.core.kinds.classification import evaluate_episodes as evaluate
from workbench.core.stats import mean_ci95
from workbench.core.runs import RunStore
from workbench.core.training import Trainer


class AlwaysFirst:
    """Predicts episode label 0 for every query: accuracy is exactly 1/ways."""

    name = "always-first"

    def eval(self):
        return self

    def adapt(self, support_x, support_y, ways):
        return ways

    def predict(self, ways, query_x):
        probs = torch.zeros(len(query_x), ways)
        probs[:, 0] = 1.0
        return probs

    def evaluation_extras(self, episodes):
        return {}


class PixelNearestMean(AlwaysFirst):
    """A training-free classifier: nearest class mean in pixel space."""

    name = "pixel-mean"

    def adapt(self, support_x, support_y, ways):
        return torch.stack([support_x[support_y == c].flatten(1).mean(0) for c in range(ways)])

    def predict(self, means, query_x):
        return (-torch.cdist(query_x.flatten(1), means)).softmax(-1)


def test_mean_ci95_matches_a_hand_computation():
    values = [0.5, 0.7, 0.9, 1.0]
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 4)
    got_mean, got_ci = mean_ci95(values)
    assert got_mean == pytest.approx(0.775)
    assert got_ci == pytest.approx(1.96 * std / math.sqrt(4))
    assert mean_ci95([0.6] * 10) == (pytest.approx(0.6), pytest.approx(0.0, abs=1e-12))
    assert mean_ci95([0.0, 1.0]) == (0.5, pytest.approx(1.96 * 0.5 / math.sqrt(2)))


def test_constant_predictor_gives_exact_accuracy_per_class_and_confusion():
    dataset = synthetic_dataset()
    ways, shots, queries, count = 4, 1, 3, 12
    episodes = FixedEpisodes(dataset.split("test"), dataset.spec, ways, shots, queries, count, seed=3)
    result = evaluate(AlwaysFirst(), episodes, "cpu")
    assert result.accuracy == pytest.approx(1 / ways)
    assert result.ci95 == pytest.approx(0.0, abs=1e-7)
    assert (result.episodes, result.ways, result.shots, result.queries, result.seed) == (count, ways, shots, queries, 3)
    assert result.per_episode_accuracy.shape == (count,)
    assert result.confusion.sum() == count * ways * queries
    # Hand count: a class is right exactly in the episodes where it sits at position 0.
    names = dataset.split("test").class_names
    appearances, first = {}, {}
    for i in range(count):
        ids = episodes[i].class_ids
        for c in ids:
            appearances[c] = appearances.get(c, 0) + queries
        first[ids[0]] = first.get(ids[0], 0) + queries
    expected = {names[c]: first.get(c, 0) / n for c, n in appearances.items()}
    assert result.per_class_accuracy == pytest.approx(expected)
    # Confusion rows are true classes; every prediction is the episode's first class.
    for row, name in enumerate(result.confusion_classes):
        c = names.index(name)
        assert result.confusion[row].sum() == appearances[c]
        assert result.confusion[row, row] == first.get(c, 0)
    wrong = result.misclassified()
    assert len(wrong["true"]) == count * queries * (ways - 1)
    assert set(result.query_records) >= {"episode", "query", "true", "pred", "row", "confidence"}


def test_fixed_episodes_are_identical_across_algorithms():
    dataset = synthetic_dataset()
    a = evaluate(AlwaysFirst(), FixedEpisodes(dataset.split("test"), dataset.spec, 3, 2, 2, 10, seed=11), "cpu")
    b = evaluate(PixelNearestMean(), FixedEpisodes(dataset.split("test"), dataset.spec, 3, 2, 2, 10, seed=11), "cpu")
    for key in ("episode", "query", "true", "row"):
        assert np.array_equal(a.query_records[key], b.query_records[key])
    assert b.accuracy > a.accuracy  # the real classifier beats the constant one on the same tasks
    other = evaluate(AlwaysFirst(), FixedEpisodes(dataset.split("test"), dataset.spec, 3, 2, 2, 10, seed=12), "cpu")
    assert not np.array_equal(a.query_records["row"], other.query_records["row"])


def test_evaluate_reports_progress_and_can_be_cancelled():
    dataset = synthetic_dataset()
    episodes = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, 20, seed=0)
    seen = []

    def progress(done, total, message):
        seen.append((done, total))
        if done >= 5:
            raise Cancelled("user pressed cancel")

    with pytest.raises(Cancelled):
        evaluate(AlwaysFirst(), episodes, "cpu", progress)
    assert seen[0] == (0, 20) and seen[-1][0] >= 5


def test_evaluation_extras_hook_is_merged():
    dataset = synthetic_dataset()

    class WithExtras(AlwaysFirst):
        def evaluation_extras(self, episodes):
            return {"weights": [0.5, 1.0], "episodes_seen": len(episodes)}

    result = evaluate(WithExtras(), FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, 4, seed=0), "cpu")
    assert result.extras == {"weights": [0.5, 1.0], "episodes_seen": 4}
    assert json.loads(json.dumps(result.to_dict()))["extras"]["weights"] == [0.5, 1.0]


def test_to_dict_round_trip_and_large_confusion_is_left_to_the_arrays(monkeypatch):
    dataset = synthetic_dataset()
    result = evaluate(PixelNearestMean(), FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, 6, seed=1), "cpu")
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["confusion"] == result.confusion.tolist()
    back = EvalResult.from_dict(data, result.arrays())
    assert back.accuracy == pytest.approx(result.accuracy) and back.per_class_accuracy == pytest.approx(
        result.per_class_accuracy)
    assert np.array_equal(back.confusion, result.confusion)
    assert np.array_equal(back.query_records["pred"], result.query_records["pred"])
    import workbench.core.kinds.classification as evaluation

    monkeypatch.setattr(evaluation, "CONFUSION_JSON_LIMIT", 2)
    assert result.to_dict()["confusion"] is None


@pytest.mark.usefixtures("use_synthetic_data")
def test_evaluate_run_at_another_way_and_shot_saves_the_result():
    store = RunStore()
    trainer = Trainer(tiny_dataset_config(), store)  # trained 3-way 1-shot
    list(trainer.steps())
    result = evaluate_run(trainer.run.id, store, ways=5, shots=2, queries=3, episodes=8, device="cpu")
    assert (result.ways, result.shots, result.queries, result.episodes, result.seed) == (5, 2, 3, 8, 7)
    assert 0.0 <= result.accuracy <= 1.0 and result.ci95 >= 0
    assert result.run == trainer.run.id and result.checkpoint == "best"
    saved = trainer.run.evaluations()
    assert [e["ways"] for e in saved] == [5]
    assert saved[0]["file"].endswith("5w2s-8ep-seed7-q3.json")
    record = trainer.run.record()
    assert (record.test_accuracy, record.test_ways, record.test_shots) == (pytest.approx(result.accuracy), 5, 2)
    loaded = trainer.run.load_evaluation(saved[0]["file"])
    assert np.array_equal(loaded.per_episode_accuracy, result.per_episode_accuracy)
    with pytest.raises(EpisodeError, match="n-way"):
        evaluate_run(trainer.run, store, ways=50, episodes=2, device="cpu")


@pytest.mark.usefixtures("use_synthetic_data")
def test_two_runs_are_tested_on_the_same_episodes():
    store = RunStore()
    results = []
    for hidden in (8, 16):
        trainer = Trainer(tiny_dataset_config(algorithm={"hparams": {"hidden": hidden}},
                                              training={"steps": 2, "val_interval": 0}), store)
        list(trainer.steps())
        results.append(evaluate_run(trainer.run, store, episodes=6, device="cpu", save=False))
    for key in ("true", "row"):
        assert np.array_equal(results[0].query_records[key], results[1].query_records[key])
    assert results[0].run != results[1].run


@pytest.mark.usefixtures("use_synthetic_data")
def test_a_run_stopped_before_validation_is_evaluated_from_its_last_checkpoint():
    store = RunStore()
    trainer = Trainer(tiny_dataset_config(training={"steps": 50, "val_interval": 0}), store)
    loop = trainer.steps()
    next(loop)
    loop.close()
    assert not trainer.run.has_checkpoint("best")
    result = evaluate_run(trainer.run, store, episodes=3, device="cpu")
    assert result.checkpoint == "last"


def tiny_omniglot_zip(omniglot_root, path, alphabets: int = 5, characters: int = 3):
    """A small-set style zip with a few real Omniglot characters (fast to decode)."""
    import zipfile

    with zipfile.ZipFile(omniglot_root / "images_background_small1.zip") as source, \
            zipfile.ZipFile(path, "w") as target:
        keep = sorted({n.split("/")[1] for n in source.namelist() if n.count("/") >= 2})[:alphabets]
        for member in source.namelist():
            parts = member.split("/")
            if (len(parts) == 4 and parts[3].endswith(".png") and parts[1] in keep
                    and int(parts[2].removeprefix("character")) <= characters):
                target.writestr(member, source.read(member))
    return path


def test_a_glyph_run_is_evaluated_on_omniglot(omniglot_root, tmp_path, monkeypatch):
    from workbench.core.kinds import classification

    store = RunStore()
    trainer = Trainer(tiny_dataset_config(), store)  # real glyphs, 16 px, 3-way 1-shot
    list(trainer.steps())
    own = evaluate_run(trainer.run, store, device="cpu")
    record = trainer.run.record()
    specs = []

    class Spy(classification.FixedEpisodes):
        def __init__(self, split, spec, *args, **kwargs):
            specs.append(spec)
            super().__init__(split, spec, *args, **kwargs)

    monkeypatch.setattr(classification, "FixedEpisodes", Spy)
    archive = tiny_omniglot_zip(omniglot_root, tmp_path / "tiny.zip")
    other = evaluate_run(trainer.run, store, device="cpu", dataset="omniglot", data_root=str(archive), episodes=4)
    assert (other.ways, other.shots, other.episodes, other.seed) == (3, 1, 4, 7)  # the run's setting
    assert other.dataset == "omniglot" and 0 <= other.accuracy <= 1
    assert other.extras["evaluated_on"] == {"dataset": "omniglot", "root": str(archive), "trained_on": "glyphs"}
    assert specs == [trainer.dataset.spec]  # the glyph model's preprocessing, at its 16 px
    assert all("/character" in name for name in other.confusion_classes)  # Omniglot's alphabet/character names
    files = sorted((e["file"].rsplit("/", 1)[-1] for e in trainer.run.evaluations()), key=lambda f: "-on-" in f)
    assert files[0] == "3w1s-5ep-seed7-q2.json" and files[1].startswith("3w1s-4ep-seed7-q2-on-omniglot-")
    saved = [e for e in trainer.run.evaluations() if e["dataset"] == "omniglot"]
    assert saved[0]["extras"]["evaluated_on"]["trained_on"] == "glyphs"
    assert trainer.run.record().test_accuracy == record.test_accuracy == pytest.approx(own.accuracy)
    assert trainer.run.load_evaluation(saved[0]["file"]).dataset == "omniglot"


def test_evaluating_on_another_dataset_checks_it_fits(tmp_path):
    from fixtures_data import make_class_folders
    from workbench.core.errors import ConfigError

    store = RunStore()
    trainer = Trainer(tiny_dataset_config(training={"steps": 1, "val_interval": 0}), store)
    list(trainer.steps())
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        evaluate_run(trainer.run, store, device="cpu", dataset="nope")
    with pytest.raises(ConfigError, match="does not serve the run's kind 'classification'"):
        evaluate_run(trainer.run, store, device="cpu", dataset="sine")
    make_class_folders(tmp_path, {f"c{i:02d}": 3 for i in range(12)})  # colour: 3 channels
    with pytest.raises(ConfigError) as info:
        evaluate_run(trainer.run, store, device="cpu", dataset="folder", data_root=str(tmp_path), episodes=2)
    assert "trained on 1-channel images (glyphs)" in str(info.value) and "3-channel" in str(info.value)
    assert trainer.run.evaluations() == []

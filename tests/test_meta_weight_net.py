"""Meta-Weight-Net: label-noise helpers, the bi-level update, learning to down-weight noisy samples, the trainer
and CLI integration (history file, --label-noise, eval extras)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset
from workbench import cli
from workbench.core.algorithms import get_algorithm
from workbench.core.algorithms.base import ModelSpec
from workbench.core.errors import ConfigError, DatasetError
from workbench.core.noise import corrupt_labels, long_tail_counts, make_noisy_problem
from workbench.core.runs import RunStore


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _seeded(seed: int):
    """The part of a run's config that attach_training_data reads."""
    return SimpleNamespace(training=SimpleNamespace(seed=seed))


def make_algorithm(dataset, seed: int = 0, lr: float = 3e-3, steps: int = 100, **hparams):
    cls = get_algorithm("meta-weight-net")
    values = {"hidden": 8, "num_classes": 6, "meta_per_class": 2, "test_per_class": 2, "batch_size": 32,
              "history_interval": 10, "weight_net_hidden": 32}
    values.update(hparams)
    split = dataset.split("train")
    torch.manual_seed(seed)
    algorithm = cls(cls.build_hparams(values), ModelSpec(dataset.spec.channels, dataset.spec.image_size, 5,
                                                         split.num_classes, kind="noisy-labels"))
    algorithm.attach_training_data(dataset, _seeded(seed))
    algorithm.configure_optimizers(lr, steps, "constant")
    return algorithm


# --- noise helpers ------------------------------------------------------------------------------------
def test_uniform_noise_changes_about_the_rate_of_labels_to_other_classes():
    labels = torch.arange(5000) % 10
    noisy, mask = corrupt_labels(labels, 10, 0.4, "uniform", seed=3)
    assert 0.37 < mask.float().mean() < 0.43
    assert torch.equal(mask, noisy != labels)  # every corrupted label is wrong
    assert len(noisy[mask].unique()) == 10
    again, _ = corrupt_labels(labels, 10, 0.4, "uniform", seed=3)
    other, _ = corrupt_labels(labels, 10, 0.4, "uniform", seed=4)
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)


def test_flip_noise_sends_each_class_to_one_other_class():
    labels = torch.arange(3000) % 6
    noisy, mask = corrupt_labels(labels, 6, 0.3, "flip", seed=0)
    assert 0.25 < mask.float().mean() < 0.35
    for c in range(6):
        targets = noisy[mask & (labels == c)].unique()
        assert len(targets) == 1 and int(targets) != c


def test_long_tail_counts_and_noisy_problem_split():
    assert long_tail_counts([10, 10, 10], 1.0) == [10, 10, 10]
    counts = long_tail_counts([20] * 5, 10.0)
    assert counts[0] == 20 and counts[-1] == 2 and counts == sorted(counts, reverse=True)
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    problem = make_noisy_problem(dataset.split("train"), 5, 2, 3, 0.5, "uniform", 1.0, seed=1)
    assert problem.num_classes == 5 and len(problem.meta_labels) == 10 and len(problem.test_labels) == 15
    assert len(problem.train_labels) == 5 * 7
    assert torch.equal(problem.train_labels != problem.train_true_labels, problem.train_noisy)
    assert 0.2 < problem.noise_fraction < 0.8
    # Meta and test sets are clean: their labels match their images' classes (images are distinct per split).
    assert set(problem.meta_labels.tolist()) == set(range(5))
    with pytest.raises(DatasetError, match="num_classes"):
        make_noisy_problem(dataset.split("train"), 20, 2, 3, 0.5, "uniform", 1.0, seed=1)
    with pytest.raises(DatasetError, match="meta_per_class"):
        make_noisy_problem(dataset.split("train"), 5, 6, 6, 0.5, "uniform", 1.0, seed=1)


def test_a_generated_dataset_draws_new_instances_up_to_images_per_class():
    from workbench.core.data import glyphs
    from workbench.core.data.base import rotate_classes

    params = glyphs.GlyphParams(num_alphabets=5, characters_per_alphabet=4, samples_per_class=6,
                                split_alphabets=(3, 1, 1))
    dataset = glyphs.make_glyphs(params, 16, use_cache=False)
    split = dataset.split("train")
    problem = make_noisy_problem(split, 4, 2, 5, 0.4, "uniform", 1.0, seed=3, images_per_class=30, val_per_class=3)
    # 6 images per class in the split; 2 + 3 + 5 held out and 30 for training need 34 new drawings per class.
    assert problem.drawn_per_class == 34
    assert len(problem.train_labels) == 4 * 30 and len(problem.val_labels) == 4 * 3
    assert len(problem.meta_labels) == 4 * 2 and len(problem.test_labels) == 4 * 5
    assert problem.train_true_labels.bincount().tolist() == [30] * 4
    drawn = split.more_images(0, 3)
    assert drawn.shape == (3, 1, 16, 16) and drawn.dtype == torch.uint8
    assert torch.equal(drawn, split.more_images(0, 3))  # deterministic
    assert not any(torch.equal(image, own) for image in drawn for own in split.images[split.labels == 0])
    assert drawn.float().std() > 10  # a drawing, not a blank page
    again = make_noisy_problem(split, 4, 2, 5, 0.4, "uniform", 1.0, seed=3, images_per_class=30, val_per_class=3)
    assert torch.equal(problem.train_images, again.train_images) and torch.equal(problem.train_labels,
                                                                                 again.train_labels)
    # Rotation classes draw the same new instances, turned.
    rotated = rotate_classes(split)
    first = split.num_classes
    assert torch.equal(rotated.more_images(first + 0, 2), torch.rot90(split.more_images(0, 2), 1, dims=(2, 3)))


def test_a_dataset_of_files_caps_images_per_class_at_what_it_has():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    problem = make_noisy_problem(dataset.split("train"), 5, 2, 3, 0.4, "uniform", 1.0, seed=1, images_per_class=500,
                                 val_per_class=2)
    assert problem.drawn_per_class == 0
    assert len(problem.train_labels) == 5 * (12 - 2 - 2 - 3) and len(problem.val_labels) == 10
    capped = make_noisy_problem(dataset.split("train"), 5, 2, 3, 0.4, "uniform", 1.0, seed=1, images_per_class=3)
    assert len(capped.train_labels) == 5 * 3 and capped.val_images is None


def test_history_report_gives_the_end_and_the_best_validation():
    from workbench.core.algorithms.meta_weight_net import history_report

    history = {"steps": np.array([1, 50, 100, 150]), "clean_mean": np.array([0.5, 0.4, 0.3, 0.3]),
               "noisy_mean": np.array([0.5, 0.1, 0.03, 0.06]), "test_accuracy": np.array([0.1, 0.8, 0.85, 0.7]),
               "val_accuracy": np.array([0.1, 0.82, 0.9, 0.75])}
    report = history_report(history, 10)
    weights = report["weights"]
    assert weights["step"] == 150 and weights["noisy_mean"] == pytest.approx(0.06)
    assert weights["noisy_to_clean"] == pytest.approx(0.2)
    assert weights["at_best_validation"]["step"] == 100
    assert weights["at_best_validation"]["noisy_to_clean"] == pytest.approx(0.1)
    assert report["classification"] == pytest.approx({"test_accuracy": 0.7, "classes": 10, "best_validation_step": 100,
                                                      "val_accuracy_at_best": 0.9,
                                                      "test_accuracy_at_best_validation": 0.85})
    history["val_accuracy"] = np.full(4, np.nan)  # a run without a validation set: the end only
    report = history_report(history, 10)
    assert "at_best_validation" not in report["weights"] and "best_validation_step" not in report["classification"]
    assert history_report({"steps": np.zeros(0)}, 10) == {}


def test_validation_picks_checkpoints_on_the_clean_held_out_images():
    from workbench.core.kinds import get_kind

    dataset = synthetic_dataset(train_classes=8, per_class=14, image_size=16)
    algorithm = make_algorithm(dataset, val_per_class=3)
    for _ in range(3):
        algorithm.meta_train_step(None)
    correct = algorithm.validation_correct()
    assert correct.shape == (6 * 3,) and set(np.unique(correct)) <= {0.0, 1.0}
    kind = get_kind("noisy-labels")
    result = kind.evaluate(algorithm, None, split="val")
    assert result.split == "val" and result.value == pytest.approx(correct.mean()) and result.queries == 18
    assert algorithm.classifier.training  # validation leaves the classifier's mode as it was
    # Without a validation set the kind falls back to few-shot episodes.
    assert make_algorithm(dataset).validation_correct() is None


# --- hyperparameters ------------------------------------------------------------------------------------
def test_hparam_validation_names_the_field():
    cls = get_algorithm("meta-weight-net")
    with pytest.raises(ConfigError, match="algorithm.hparams.label_noise"):
        cls.build_hparams({"label_noise": 0.95})
    with pytest.raises(ConfigError, match="algorithm.hparams.noise_kind"):
        cls.build_hparams({"noise_kind": "pairs"})
    # The two settings are kinds now; configs of the first format name them as hparam "setting".
    assert cls.info()["kinds"] == ["noisy-labels", "classification"]
    assert cls.legacy_kind({}) == "noisy-labels" and cls.legacy_kind({"setting": "episodic"}) == "classification"
    assert "setting" not in cls.upgrade_hparams({"setting": "episodic", "hidden": 8})
    assert cls.build_hparams({"label_noise": "0.2", "weighting": "false"}).weighting is False
    assert cls.info()["family"] == "optimization"


# --- the bi-level update ------------------------------------------------------------------------------
def test_meta_gradient_reaches_the_weight_net():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    algorithm = make_algorithm(dataset)
    before = [p.detach().clone() for p in algorithm.weight_net.parameters()]
    classifier_before = [p.detach().clone() for p in algorithm.classifier.parameters()]
    out = algorithm.meta_train_step(None)
    assert out["meta_grad_norm"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, algorithm.weight_net.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(classifier_before, algorithm.classifier.parameters()))
    curve = algorithm.weight_function(torch.linspace(0, 5, 11))
    assert curve.shape == (11,) and bool(((curve > 0) & (curve < 1)).all())
    # The baseline leaves the weighting untouched (all weights 1).
    baseline = make_algorithm(dataset, weighting=False)
    before = [p.detach().clone() for p in baseline.weight_net.parameters()]
    out = baseline.meta_train_step(None)
    assert out["weight_mean"] == 1.0 and "meta_grad_norm" not in out
    assert all(torch.equal(a, b) for a, b in zip(before, baseline.weight_net.parameters()))


def test_learns_lower_weights_for_noisy_samples():
    dataset = synthetic_dataset(train_classes=8, per_class=20, image_size=16, noise=30.0)
    # Before this tiny classifier memorizes the corrupted labels (about 100 steps), noisy samples keep high losses.
    algorithm = make_algorithm(dataset, label_noise=0.4, steps=60, weight_net_lr=3e-3)
    for _ in range(60):
        algorithm.meta_train_step(None)
    extras = algorithm.evaluation_extras([])
    weights = extras["weights"]
    assert weights["noisy_mean"] < 0.8 * weights["clean_mean"], weights
    # The history holds one snapshot per interval (plus the first step) and replays consistently.
    history = algorithm.history
    assert history["steps"].tolist() == [1, 10, 20, 30, 40, 50, 60]
    assert history["curves"].shape == (7, len(history["curves"][0]))
    assert history["hist_clean"][-1].sum() + history["hist_noisy"][-1].sum() == len(algorithm.probe_rows)
    assert 0.0 <= extras["classification"]["test_accuracy"] <= 1.0


def test_few_shot_interface_and_checkpoint_round_trip():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    algorithm = make_algorithm(dataset)
    for _ in range(3):
        algorithm.meta_train_step(None)
    x = dataset.spec.normalize(dataset.split("test").images[:6])
    adapted = algorithm.adapt(x[:3], torch.arange(3), 3)
    probs = algorithm.predict(adapted, x[3:])
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))
    state = algorithm.state_dict()
    restored = make_algorithm(dataset, seed=5)
    restored.load_state_dict(state)
    assert np.array_equal(restored.history["steps"], algorithm.history["steps"])
    assert restored.steps_done == 3
    losses = torch.linspace(0, 8, 9)
    assert torch.allclose(restored.weight_function(losses), algorithm.weight_function(losses))


def test_needs_training_data():
    cls = get_algorithm("meta-weight-net")
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 5, 10))
    algorithm.configure_optimizers(1e-3, 10)
    with pytest.raises(Exception, match="attach_training_data"):
        algorithm.meta_train_step(None)


# --- trainer and CLI ------------------------------------------------------------------------------------
@pytest.fixture
def noisy_data(monkeypatch):
    from workbench.core import data

    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    monkeypatch.setattr(data, "load_dataset", lambda config, progress=data.no_progress, use_cache=True: dataset)
    return dataset


def test_cli_label_noise_flag_trains_and_eval_reports_weights(capsys, noisy_data):
    flags = ["--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2", "--steps", "6",
             "--val-interval", "3", "--val-episodes", "3", "--checkpoint-interval", "3", "--eval-episodes", "3",
             "--device", "cpu", "--threads", "1"]
    # On glyphs the recommended recipe holds out 10 validation and 25 test images per class: too many here.
    code = cli.main(["train", "--algorithm", "meta-weight-net", "--label-noise", "0.3", *flags, "--hparam",
                     "hidden=8", "--hparam", "num_classes=5", "--hparam", "history_interval=2", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code != 0 and "test_per_class" in err and "has 12 images" in err
    code = cli.main(["train", "--algorithm", "meta-weight-net", "--label-noise", "0.3", *flags, "--hparam",
                     "hidden=8", "--hparam", "num_classes=5", "--hparam", "history_interval=2", "--hparam",
                     "test_per_class=3", "--hparam", "val_per_class=2", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    run = RunStore().get(result["run"])
    assert run.config.algorithm.hparams["label_noise"] == pytest.approx(0.3)
    assert run.config.algorithm.recipe == "noisy-glyphs"
    # Validation scored the 5 x 2 clean validation images, not few-shot episodes.
    validations = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()
                   if '"validation"' in line]
    assert validations and all(round(v["val_accuracy"] * 10, 6) == round(v["val_accuracy"] * 10) for v in validations)
    history = np.load(run.path / "weight_history.npz")
    assert history["steps"].tolist() == [1, 2, 4, 6] and float(history["label_noise"]) == pytest.approx(0.3)
    code = cli.main(["eval", result["run"], "--episodes", "2", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    weights = report["weights"]
    assert 0 < weights["clean_mean"] < 1 and 0 < weights["noisy_mean"] < 1
    assert weights["noisy_to_clean"] == pytest.approx(weights["noisy_mean"] / weights["clean_mean"])
    best = weights["at_best_validation"]
    assert best["step"] in (1, 2, 4, 6) and best["val_accuracy"] == report["classification"]["val_accuracy_at_best"]
    code = cli.main(["train", "--algorithm", "protonet", "--label-noise", "0.3", *flags, "--quiet"])
    out, err = capsys.readouterr()
    assert code != 0 and "label_noise" in err


# --- the episodic setting ---------------------------------------------------------------------------------
def make_episodic(dataset, seed: int = 0, lr: float = 1e-3, **hparams):
    cls = get_algorithm("meta-weight-net")
    values = {"hidden": 8, "weight_net_hidden": 16, "train_inner_steps": 2,
              "test_inner_steps": 3, "history_interval": 5, "label_noise": 0.4}
    values.update(hparams)
    split = dataset.split("train")
    torch.manual_seed(seed)
    algorithm = cls(cls.build_hparams(values), ModelSpec(dataset.spec.channels, dataset.spec.image_size, 3,
                                                         split.num_classes, kind="classification"))
    algorithm.attach_training_data(dataset, _seeded(seed))
    algorithm.configure_optimizers(lr, 100, "constant")
    return algorithm


def episodes_of(dataset, count: int, shots: int = 5, queries: int = 3, seed: int = 0, split: str = "train"):
    from workbench.core.data import EpisodeSampler

    sampler = EpisodeSampler(dataset.split(split), dataset.spec, 3, shots, queries, seed=seed)
    return [sampler.sample() for _ in range(count)]


def test_episodic_step_meta_learns_both_the_start_and_the_weight_net():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    algorithm = make_episodic(dataset)
    assert algorithm.gradient_based and set(algorithm.modules()) == {"model", "weight_net"}
    weight_net_before = [p.detach().clone() for p in algorithm.weight_net.parameters()]
    model_before = [p.detach().clone() for p in algorithm.episodic.model.parameters()]
    out = algorithm.meta_train_step(episodes_of(dataset, 2))
    assert out["meta_grad_norm"] > 0 and 0 < out["weight_mean"] < 1
    assert "weight_noisy" in out and "weight_clean" in out
    assert any(not torch.equal(a, b) for a, b in zip(weight_net_before, algorithm.weight_net.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(model_before, algorithm.episodic.model.parameters()))
    assert algorithm.history["steps"].tolist() == [1]
    assert algorithm.history["thumbnails"].shape[1:] == (1, 16, 16)


def test_episodic_meta_gradient_of_the_weight_net_flows_through_the_inner_loop():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    algorithm = make_episodic(dataset)
    episode = episodes_of(dataset, 1)[0]
    learner = algorithm.episodic
    fast = learner.adapt_fast(episode.support_x, episode.support_y, 3, 2, 0.4, create_graph=True)
    query_loss = torch.nn.functional.cross_entropy(
        torch.func.functional_call(learner.model, fast, (episode.query_x,)), episode.query_y)
    grads = torch.autograd.grad(query_loss, list(algorithm.weight_net.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    assert float(sum(g.abs().sum() for g in grads)) > 0


def test_episodic_baseline_is_plain_maml_on_noisy_supports():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    baseline = make_episodic(dataset, weighting=False)
    before = [p.detach().clone() for p in baseline.weight_net.parameters()]
    out = baseline.meta_train_step(episodes_of(dataset, 2))
    assert out["weight_mean"] == 1.0 and "meta_grad_norm" not in out
    assert all(torch.equal(a, b) for a, b in zip(before, baseline.weight_net.parameters()))
    # Its inner loop is MAML's: the same start adapts to the same fast weights as MAML's unweighted one.
    from workbench.core.algorithms.functional import sgd_inner_loop

    episode = episodes_of(dataset, 1, seed=3)[0]
    adapted = baseline.adapt(episode.support_x, episode.support_y, 3, steps=2)
    maml = baseline.episodic.maml
    expected = sgd_inner_loop(maml.model, maml.task_params(3, detach=True), episode.support_x, episode.support_y,
                              2, baseline.hparams.test_inner_lr, create_graph=False)
    assert all(torch.allclose(adapted["params"][k], expected[k], atol=1e-6) for k in expected)
    assert np.all(baseline.history["curves"] == 1)  # the view shows the weights used: all 1


def test_episodic_weights_share_each_labelled_class_and_start_from_equal_losses():
    from workbench.core.algorithms.meta_weight_net_episodic import normalized_per_class

    weights = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.2])
    labels = torch.tensor([0, 0, 1, 1, 2])
    factors = normalized_per_class(weights, labels, normalize=True)
    # Each labelled class keeps a third of the step; within a class the weights shift it between samples.
    assert torch.allclose(factors, torch.tensor([0.3, 1 / 30, 1 / 6, 1 / 6, 1 / 3]))
    assert torch.allclose(normalized_per_class(weights, labels, normalize=False), weights / 5)
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    algorithm = make_episodic(dataset)
    assert algorithm.hparams.head == "zero" and algorithm.hparams.normalize_weights
    episode = episodes_of(dataset, 1)[0]
    record = []
    algorithm.episodic.adapt(episode.support_x, episode.support_y, 3, steps=2, record=record)
    # The zero head: every loss of the first inner step is log(ways), those after it differ.
    assert torch.allclose(record[0][0], torch.full_like(record[0][0], float(np.log(3))), atol=1e-5)
    assert float(record[1][0].std()) > 1e-3
    # Without weighting the inner loss is the plain mean, also on supports whose labels are unbalanced.
    baseline = make_episodic(dataset, weighting=False)
    logits, targets = torch.randn(5, 3), torch.tensor([0, 0, 0, 1, 2])
    assert torch.allclose(baseline.episodic.support_loss()(logits, targets),
                          torch.nn.functional.cross_entropy(logits, targets))


def test_episodic_adapt_predict_embed_trace_and_checkpoint():
    dataset = synthetic_dataset(train_classes=8, per_class=12, image_size=16)
    algorithm = make_episodic(dataset)
    for _ in range(2):
        algorithm.meta_train_step(episodes_of(dataset, 1))
    episode = episodes_of(dataset, 1, split="test")[0]
    with torch.no_grad():  # as evaluation calls it
        adapted = algorithm.adapt(episode.support_x, episode.support_y, 3)
        probs = algorithm.predict(adapted, episode.query_x)
    assert probs.shape == (9, 3) and torch.allclose(probs.sum(-1), torch.ones(9))
    assert algorithm.embed(episode.query_x, adapted).shape[0] == 9
    trace = algorithm.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 3,
                                       steps=3)
    assert [t["step"] for t in trace] == [0, 1, 2, 3] and trace[-1]["support_loss"] < trace[0]["support_loss"]
    restored = make_episodic(dataset, seed=5)
    restored.load_state_dict(algorithm.state_dict())
    assert restored.steps_done == 2
    again = restored.predict(restored.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.allclose(again, probs, atol=1e-5)


def test_episodic_weighting_learns_lower_weights_for_corrupted_supports():
    dataset = synthetic_dataset(train_classes=8, per_class=20, image_size=16, noise=30.0)
    # These easy blobs fit the majority label within one inner step at lr 0.4, so corrupted supports keep high
    # losses from the second step on.
    algorithm = make_episodic(dataset, lr=3e-3, weight_net_lr=1e-2, train_inner_steps=3, train_inner_lr=0.4,
                              test_inner_lr=0.4, history_interval=80)
    for step in range(80):
        algorithm.meta_train_step(episodes_of(dataset, 1, seed=step))
    history = algorithm.history
    assert history["noisy_mean"][-1] < 0.85 * history["clean_mean"][-1], (history["clean_mean"],
                                                                           history["noisy_mean"])
    # Evaluation episodes with corrupted supports give the same picture on unseen classes.
    from workbench.core.data import FixedEpisodes

    fixed = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 5, 3, 6, seed=1)
    extras = algorithm.evaluation_extras(fixed)
    weights = extras["weights"]
    assert weights["setting"] == "episodic" and weights["noisy_mean"] < weights["clean_mean"], weights
    assert 0 <= extras["noisy_supports"]["accuracy"] <= 1 and extras["noisy_supports"]["episodes"] == 6
    assert algorithm.evaluation_extras(fixed) == extras  # corruption of evaluation supports is seeded


def test_cli_setting_flag_trains_episodic_and_eval_reports_weights(capsys, noisy_data):
    flags = ["--image-size", "16", "--ways", "3", "--shots", "5", "--queries", "2", "--steps", "4",
             "--val-interval", "2", "--val-episodes", "2", "--checkpoint-interval", "2", "--eval-episodes", "3",
             "--device", "cpu", "--threads", "1"]
    code = cli.main(["train", "--algorithm", "meta-weight-net", "--setting", "episodic", "--label-noise", "0.4",
                     *flags, "--hparam", "hidden=8", "--hparam", "train_inner_steps=2", "--hparam",
                     "test_inner_steps=2", "--hparam", "history_interval=2", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run = RunStore().get(json.loads(out)["run"])
    assert run.config.kind == "classification"  # --setting episodic is the few-shot kind
    history = np.load(run.path / "weight_history.npz")
    assert history["steps"].tolist() == [1, 2, 4] and str(history["setting"]) == "episodic"
    code = cli.main(["eval", run.id, "--episodes", "3", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    weights = result["weights"]
    assert 0 < weights["clean_mean"] < 1 and 0 < weights["noisy_mean"] < 1
    assert 0 <= result["noisy_supports"]["accuracy"] <= 1
    code = cli.main(["train", "--algorithm", "meta-weight-net", "--kind", "meta-dataset", *flags, "--quiet"])
    assert code != 0 and "unknown experiment kind 'meta-dataset'" in capsys.readouterr().err

"""Focal loss on the noisy-labels kind: the fixed weight curve and the loss's value and gradient against closed
forms, γ = 0 as plain cross-entropy (Meta-Weight-Net's unweighted baseline step for step), the Sample weights
history, the trainer and CLI, and a checkpoint round trip."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_dataset
from workbench import cli
from workbench.core.algorithms import get_algorithm
from workbench.core.algorithms.base import ModelSpec
from workbench.core.algorithms.focal_loss import balanced_alpha, focal_loss
from workbench.core.runs import RunStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": 8, "num_classes": 6, "meta_per_class": 2, "test_per_class": 2, "batch_size": 32,
        "history_interval": 10}


def make_algorithm(dataset, name: str = "focal-loss", seed: int = 0, **hparams):
    cls = get_algorithm(name)
    torch.manual_seed(seed)
    algorithm = cls(cls.build_hparams({**TINY, **hparams}),
                    ModelSpec(dataset.spec.channels, dataset.spec.image_size, 5, dataset.split("train").num_classes,
                              kind="noisy-labels"))
    algorithm.attach_training_data(dataset, SimpleNamespace(training=SimpleNamespace(seed=seed)))
    algorithm.configure_optimizers(1e-3, 100, "constant")
    return algorithm


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(train_classes=8, per_class=12, image_size=16)


# --- the defining loss ----------------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
def test_weight_curve_is_one_minus_p_to_the_gamma(dataset, gamma):
    algorithm = make_algorithm(dataset, gamma=gamma)
    losses = torch.linspace(0.0, 8.0, 33)
    p = torch.exp(-losses.double())
    assert torch.allclose(algorithm.weight_function(losses).double(), (1 - p) ** gamma, atol=1e-6)
    # The loss is that weight times the cross-entropy of the same sample.
    logits = torch.randn(20, 5, dtype=torch.float64)
    targets = torch.randint(5, (20,))
    ce = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(focal_loss(logits, targets, gamma), algorithm.weight_function(ce).double() * ce, atol=1e-6)


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_value_and_gradient_match_the_closed_form(gamma):
    torch.manual_seed(1)
    logits = (3 * torch.randn(12, 4, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(4, (12,))
    alpha = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)
    loss = focal_loss(logits, targets, gamma, alpha)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    # FL = -α (1-p)^γ log p with p the label's softmax probability; dFL/dz_j = α [γ (1-p)^(γ-1) p log p - (1-p)^γ]
    # (δ_jy - p_j).
    probs = torch.softmax(logits.detach(), -1)
    p = probs.gather(1, targets[:, None]).squeeze(1)
    a = alpha[targets]
    assert torch.allclose(loss.detach(), -a * (1 - p) ** gamma * torch.log(p), rtol=1e-10)
    outer = a * (gamma * (1 - p) ** (gamma - 1) * p * torch.log(p) - (1 - p) ** gamma)
    expected = outer[:, None] * (F.one_hot(targets, 4).double() - probs)
    assert torch.allclose(grad, expected, rtol=1e-8, atol=1e-12)


def test_confident_samples_keep_a_finite_gradient():
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)  # the first rounds p to 1
    for gamma in (0.5, 2.0):
        (grad,) = torch.autograd.grad(focal_loss(logits, torch.tensor([0, 1]), gamma).sum(), logits)
        assert torch.isfinite(grad).all()


def test_inverse_frequency_alpha_balances_classes():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    # Every class present: sklearn's "balanced" N / (C n_c).
    assert torch.allclose(balanced_alpha(labels, 3), torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    alpha = balanced_alpha(labels, 4)  # class 3 has no sample
    assert torch.allclose(alpha[:3] / alpha[0], torch.tensor([1.0, 2.0, 6.0]))
    assert float(alpha[labels].sum()) == pytest.approx(len(labels))  # the loss keeps its scale


# --- γ = 0: the plain cross-entropy baseline --------------------------------------------------------------
def test_gamma_zero_trains_like_meta_weight_net_without_weighting(dataset):
    logits, targets = torch.randn(7, 5), torch.randint(5, (7,))
    assert torch.allclose(focal_loss(logits, targets, 0.0), F.cross_entropy(logits, targets, reduction="none"))
    focal = make_algorithm(dataset, gamma=0.0, label_noise=0.4)
    mwn_cls = get_algorithm("meta-weight-net")
    torch.manual_seed(0)
    mwn = mwn_cls(mwn_cls.build_hparams({**TINY, "label_noise": 0.4, "weighting": False}),
                  ModelSpec(1, 16, 5, 8, kind="noisy-labels"))
    mwn.attach_training_data(dataset, SimpleNamespace(training=SimpleNamespace(seed=0)))
    mwn.configure_optimizers(1e-3, 100, "constant")
    mwn.classifier.load_state_dict(focal.classifier.state_dict())
    for _ in range(3):
        ours, theirs = focal.meta_train_step(None), mwn.meta_train_step(None)
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    for a, b in zip(focal.classifier.parameters(), mwn.classifier.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    assert np.all(focal.history["curves"] == 1) and "plain cross-entropy" in focal.caption()


# --- history, trainer, checkpoints ---------------------------------------------------------------------
def test_history_holds_the_fixed_curve_and_weights_of_clean_and_noisy_samples(dataset):
    algorithm = make_algorithm(dataset, label_noise=0.4)
    for _ in range(10):
        out = algorithm.meta_train_step(None)
    assert 0 < out["weight_clean"] < 1 and 0 < out["weight_noisy"] < 1
    history = algorithm.history
    assert history["steps"].tolist() == [1, 10]
    grid = torch.linspace(0, 10, 101)
    assert np.allclose(history["curves"][-1], ((1 - torch.exp(-grid)) ** 2).numpy(), atol=2e-3)
    thumb = (1 - np.exp(-history["thumb_losses"][-1].astype(np.float64))) ** 2
    assert np.allclose(history["thumb_weights"][-1], thumb, atol=2e-3)
    extras = algorithm.evaluation_extras([])
    assert extras["weights"]["method"] == "focal-loss" and 0 < extras["weights"]["noisy_mean"] < 1
    assert history["hist_clean"][-1].sum() + history["hist_noisy"][-1].sum() == len(algorithm.probe_rows)


@pytest.fixture
def noisy_data(monkeypatch, dataset):
    from workbench.core import data

    monkeypatch.setattr(data, "load_dataset", lambda config, progress=data.no_progress, use_cache=True: dataset)
    return dataset


def test_cli_trains_writes_the_weight_history_and_eval_reports_weights(capsys, noisy_data):
    flags = ["--kind", "noisy-labels", "--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2",
             "--steps", "6", "--val-interval", "3", "--val-episodes", "3", "--checkpoint-interval", "3",
             "--eval-episodes", "3", "--device", "cpu", "--threads", "1"]
    code = cli.main(["train", "--algorithm", "focal-loss", "--label-noise", "0.3", *flags, "--hparam", "hidden=8",
                     "--hparam", "num_classes=5", "--hparam", "history_interval=2", "--hparam", "gamma=1",
                     "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run = RunStore().get(json.loads(out)["run"])
    with np.load(run.path / "weight_history.npz") as history:
        assert history["steps"].tolist() == [1, 2, 4, 6] and float(history["label_noise"]) == pytest.approx(0.3)
        assert "γ = 1" in str(history["caption"]) and str(history["algorithm"]) == "focal-loss"
        assert str(history["weight_label"]).startswith("fixed weight")
        assert np.allclose(history["curves"][-1], 1 - np.exp(-history["loss_grid"]), atol=2e-3)
    code = cli.main(["eval", run.id, "--episodes", "2", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert 0 < result["weights"]["clean_mean"] < 1 and 0 <= result["classification"]["test_accuracy"] <= 1


def test_checkpoint_round_trip_continues_the_same_training(dataset):
    algorithm = make_algorithm(dataset, alpha="inverse-frequency")
    for _ in range(3):
        algorithm.meta_train_step(None)
    # Copies, as a checkpoint file holds (the optimizer would otherwise share its momentum buffers).
    state, optimizer_state = copy.deepcopy(algorithm.state_dict()), copy.deepcopy(algorithm.optimizer_state())
    restored = make_algorithm(dataset, seed=0, alpha="inverse-frequency")
    restored.load_state_dict(state)
    restored.load_optimizer_state(optimizer_state)
    assert restored.steps_done == 3 and np.array_equal(restored.history["steps"], algorithm.history["steps"])
    x = dataset.spec.normalize(dataset.split("test").images[:6])
    probs = algorithm.predict(algorithm.adapt(x[:3], torch.arange(3), 3), x[3:])
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))
    assert torch.allclose(restored.predict(restored.adapt(x[:3], torch.arange(3), 3), x[3:]), probs)
    # The batch stream and the optimizer resume where they were: the next step is the same.
    algorithm.train()
    restored.train()
    assert restored.meta_train_step(None)["loss"] == pytest.approx(algorithm.meta_train_step(None)["loss"], rel=1e-6)
    for a, b in zip(algorithm.classifier.parameters(), restored.classifier.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_needs_training_data():
    cls = get_algorithm("focal-loss")
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 5, 10, kind="noisy-labels"))
    algorithm.configure_optimizers(1e-3, 10)
    with pytest.raises(Exception, match="focal-loss trains on its own noisy problem"):
        algorithm.meta_train_step(None)

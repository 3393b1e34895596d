"""Learning to reweight (L2RW): the per-example meta-gradient against finite differences of the clean loss after
a one-step update, clipping and normalization, the real step on the weighted loss, down-weighting noisy samples,
the Sample weights history (per-sample records), the trainer and CLI, and a checkpoint round trip."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from conftest import synthetic_dataset
from workbench import cli
from workbench.core.algorithms import get_algorithm
from workbench.core.algorithms.base import ModelSpec
from workbench.core.algorithms.l2rw import SAMPLES_PER_SNAPSHOT, binned_mean, example_weights, meta_gradient
from workbench.core.runs import RunStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = {"hidden": 8, "num_classes": 6, "meta_per_class": 2, "test_per_class": 2, "batch_size": 32,
        "history_interval": 10}


def make_algorithm(dataset, seed: int = 0, **hparams):
    cls = get_algorithm("l2rw")
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


# --- the defining update --------------------------------------------------------------------------------
def clean_loss_after_one_step(model, x, y, meta_x, meta_y, eps, lr):
    """The clean loss after one SGD step on Σ ε_i ℓ_i, as plain numbers (no graph through the step)."""
    params = dict(model.named_parameters())
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    losses = F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y, reduction="none")
    grads = torch.autograd.grad((eps * losses).sum(), list(params.values()))
    stepped = {name: (p - lr * g).detach() for (name, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        return float(F.cross_entropy(functional_call(model, {**stepped, **buffers}, (meta_x,)), meta_y))


def test_meta_gradient_equals_finite_differences_of_the_clean_loss():
    torch.manual_seed(0)
    # Batch norm in training mode: each example's loss depends on the whole batch, as in the Conv-4.
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(3, (8,))
    meta_x, meta_y = torch.randn(10, 4, dtype=torch.float64), torch.randint(3, (10,))
    buffers_before = {name: b.clone() for name, b in model.named_buffers()}
    lr, h = 0.5, 1e-5
    grad = meta_gradient(model, x, y, meta_x, meta_y, lr)
    finite = torch.zeros(8, dtype=torch.float64)
    for i in range(8):
        eps = torch.zeros(8, dtype=torch.float64)
        eps[i] = h
        finite[i] = (clean_loss_after_one_step(model, x, y, meta_x, meta_y, eps, lr)
                     - clean_loss_after_one_step(model, x, y, meta_x, meta_y, -eps, lr)) / (2 * h)
    assert torch.allclose(grad, finite, rtol=1e-6, atol=1e-9)
    assert (finite > 0).any() and (finite < 0).any()  # both signs occur, so the clipping below is exercised
    weights = example_weights(grad)
    expected = (-finite).clamp_min(0)
    assert torch.allclose(weights, expected / expected.sum(), atol=1e-8)
    assert torch.all(weights[finite > 0] == 0) and float(weights.sum()) == pytest.approx(1.0)
    # The look-ahead leaves the model's running statistics alone.
    assert all(torch.equal(b, buffers_before[name]) for name, b in model.named_buffers())
    # The look-ahead step size cancels in the normalization (the derivative is linear in it at ε = 0).
    assert torch.allclose(example_weights(meta_gradient(model, x, y, meta_x, meta_y, 0.01)), weights, atol=1e-10)


def test_weights_are_clipped_at_zero_and_normalized_per_batch():
    weights = example_weights(torch.tensor([0.3, -0.1, -0.3, 0.0]))
    assert torch.allclose(weights, torch.tensor([0.0, 0.25, 0.75, 0.0]))
    # No example helps the clean loss: every weight is 0 (the paper's δ), so the step moves nothing.
    assert torch.equal(example_weights(torch.tensor([0.2, 0.0, 1.0])), torch.zeros(3))


def test_the_step_descends_the_loss_weighted_by_the_meta_gradient(dataset):
    algorithm = make_algorithm(dataset, label_noise=0.4)
    manual = make_algorithm(dataset, label_noise=0.4)
    manual.classifier.load_state_dict(algorithm.classifier.state_dict())
    out = algorithm.meta_train_step(None)
    # The same step by hand: the same draws, weights from the meta-gradient, SGD on the weighted loss.
    x, y, noisy = manual.draw_batch()
    meta_x, meta_y = manual.draw_meta_batch(manual.hparams.meta_batch_size)
    manual.classifier.train()
    weights = example_weights(meta_gradient(manual.classifier, x, y, meta_x, meta_y, 0.05))
    optimizer = manual.optimizers[0]
    optimizer.zero_grad()
    (weights * F.cross_entropy(manual.classifier(x), y, reduction="none")).sum().backward()
    optimizer.step()
    assert out["zero_weights"] == pytest.approx(float((weights == 0).float().mean()))
    assert 0 < out["zero_weights"] < 1
    assert out["weighted_loss"] < out["loss"] or out["zero_weights"] > 0
    for (name, a), b in zip(algorithm.classifier.state_dict().items(), manual.classifier.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name  # buffers too: moved by the real step only


def test_noisy_samples_get_lower_weights(dataset):
    blobs = synthetic_dataset(train_classes=8, per_class=20, image_size=16, noise=30.0)
    algorithm = make_algorithm(blobs, label_noise=0.4, history_interval=20)
    for _ in range(40):
        out = algorithm.meta_train_step(None)
    weights = algorithm.evaluation_extras([])["weights"]
    assert weights["noisy_mean"] < 0.7 * weights["clean_mean"], weights
    assert out["weight_mean"] == pytest.approx(1 / 32)  # they sum to 1 over the batch


# --- history, trainer, checkpoints ---------------------------------------------------------------------
def test_binned_mean_gives_the_mean_weight_per_loss_bin_on_the_grid():
    losses = np.array([0.1, 0.2, 0.3, 5.1, 12.0])
    weights = np.array([1.0, 3.0, 8.0, 4.0, 6.0])
    curve = binned_mean(losses, weights)  # bins 0.25 wide over [0, 10]; 12 falls into the last one
    grid = np.linspace(0, 10, 101)
    assert curve[grid == 0.0][0] == pytest.approx(2.0) and curve[np.isclose(grid, 0.3)][0] == pytest.approx(8.0)
    assert curve[np.isclose(grid, 5.1)][0] == pytest.approx(4.0) and curve[-1] == pytest.approx(6.0)
    assert np.isnan(curve[np.isclose(grid, 2.0)][0])  # no sample with that loss: a gap, not a guess


def test_history_records_per_sample_weights_against_loss(dataset):
    algorithm = make_algorithm(dataset, label_noise=0.4, history_interval=5)
    assert algorithm.weight_function(torch.tensor([1.0])) is None  # nothing seen yet
    for _ in range(5):
        algorithm.meta_train_step(None)
    history = algorithm.history
    assert history["steps"].tolist() == [1, 5]
    assert history["sample_losses"].shape == (2, SAMPLES_PER_SNAPSHOT) == history["sample_noisy"].shape
    # The first snapshot saw one batch of 32; the rest of its row is padding.
    assert np.isfinite(history["sample_weights"][0]).sum() == 32 and not history["sample_noisy"][0, 32:].any()
    # Steps 2-5 saw 4 batches (128 samples, all kept): the snapshot's means are theirs.
    weights, noisy = history["sample_weights"][1].astype(np.float64), history["sample_noisy"][1]
    kept = np.isfinite(weights)
    assert kept.sum() == 128 and weights[kept].sum() == pytest.approx(4.0, abs=0.01)
    assert float(history["noisy_mean"][1]) == pytest.approx(weights[kept & noisy].mean(), abs=1e-3)
    assert float(history["clean_mean"][1]) == pytest.approx(weights[kept & ~noisy].mean(), abs=1e-3)
    assert np.nanmax(history["curves"][1]) > 0 and np.isnan(history["curves"][1]).any()
    thumbs = history["thumb_weights"][1].astype(np.float64)
    assert (thumbs >= 0).all() and thumbs.sum() == pytest.approx(48 / 32, abs=0.01)
    losses = torch.from_numpy(np.linspace(0, 10, 101).astype(np.float32))
    assert np.allclose(algorithm.weight_function(losses).numpy(), history["curves"][1].astype(np.float32),
                       equal_nan=True)


@pytest.fixture
def noisy_data(monkeypatch, dataset):
    from workbench.core import data

    monkeypatch.setattr(data, "load_dataset", lambda config, progress=data.no_progress, use_cache=True: dataset)
    return dataset


def test_cli_trains_writes_the_weight_history_and_eval_reports_weights(capsys, noisy_data):
    flags = ["--kind", "noisy-labels", "--image-size", "16", "--ways", "3", "--shots", "1", "--queries", "2",
             "--steps", "4", "--val-interval", "2", "--val-episodes", "3", "--checkpoint-interval", "2",
             "--eval-episodes", "3", "--device", "cpu", "--threads", "1"]
    code = cli.main(["train", "--algorithm", "l2rw", "--label-noise", "0.3", *flags, "--hparam", "hidden=8",
                     "--hparam", "num_classes=5", "--hparam", "history_interval=2", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    run = RunStore().get(json.loads(out)["run"])
    with np.load(run.path / "weight_history.npz") as history:
        assert history["steps"].tolist() == [1, 2, 4] and str(history["algorithm"]) == "l2rw"
        assert history["sample_weights"].shape == (3, SAMPLES_PER_SNAPSHOT)
        assert "learning to reweight" in str(history["caption"])
        assert str(history["weight_label"]) == "weight in its batch"
    code = cli.main(["eval", run.id, "--episodes", "2", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out)
    assert result["weights"]["method"] == "l2rw" and 0 <= result["classification"]["test_accuracy"] <= 1


def test_checkpoint_round_trip_continues_the_same_training(dataset):
    algorithm = make_algorithm(dataset, history_interval=2)
    for _ in range(3):
        algorithm.meta_train_step(None)
    # Copies, as a checkpoint file holds (the optimizer would otherwise share its momentum buffers).
    state, optimizer_state = copy.deepcopy(algorithm.state_dict()), copy.deepcopy(algorithm.optimizer_state())
    restored = make_algorithm(dataset, history_interval=2)
    restored.load_state_dict(state)
    restored.load_optimizer_state(optimizer_state)
    assert restored.steps_done == 3
    assert np.array_equal(restored.history["sample_weights"], algorithm.history["sample_weights"], equal_nan=True)
    x = dataset.spec.normalize(dataset.split("test").images[:6])
    probs = algorithm.predict(algorithm.adapt(x[:3], torch.arange(3), 3), x[3:])
    assert torch.allclose(restored.predict(restored.adapt(x[:3], torch.arange(3), 3), x[3:]), probs)
    algorithm.train()
    restored.train()
    assert restored.meta_train_step(None)["loss"] == pytest.approx(algorithm.meta_train_step(None)["loss"], rel=1e-6)
    for a, b in zip(algorithm.classifier.parameters(), restored.classifier.parameters()):
        assert torch.allclose(a, b, atol=1e-6)

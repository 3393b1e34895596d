"""Dataset distillation (Wang et al. 2018): the problem carved out of a dataset, the meta-gradient through the
unrolled inner steps (against central finite differences in float64), learning, the evaluation against random real
images and the full data, the trainer end to end with its inspection records, checkpoints and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench import cli
from workbench.core.algorithms import get_algorithm
from workbench.core.config import ExperimentConfig
from workbench.core.data.episodes import LabeledBatch
from workbench.core.errors import DatasetError
from workbench.core.evaluation import evaluate_run
from workbench.core.kinds import get_kind
from workbench.core.kinds.distillation import (DISTILLED, FULL_DATA, RANDOM_REAL, REAL_LEARNED_LRS,
                                               DistillationResult, make_problem)
from workbench.core.runs import RunStore, load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

from conftest import synthetic_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Three classes of the synthetic data (8 images each at 16 px): 2 test, 2 validation, 4 training images per class.
TASK = {"classes": 3, "images_per_class": 1, "test_per_class": 2, "val_per_class": 2, "distill_steps": 3,
        "baseline_steps": 5}
DATASET = synthetic_dataset()


def distillation_config(task=None, hparams=None, **training) -> ExperimentConfig:
    """A tiny run on the synthetic data (16 px), validating at steps 3 and 6."""
    return ExperimentConfig.from_dict({
        "kind": "distillation", "task": {**TASK, **(task or {})}, "dataset": {"name": "glyphs", "image_size": 16},
        "algorithm": {"name": "dataset-distillation", "hparams": {"hidden": 8, "batch_size": 16, **(hparams or {})}},
        "training": {"steps": 6, "val_interval": 3, "val_episodes": 2, "checkpoint_interval": 3, "device": "cpu",
                     "threads": 1, "seed": 0, "lr": 0.05, **training},
        "evaluation": {"episodes": 2, "seed": 7}})


def make(task=None, seed=0, **hparams):
    kind = get_kind("distillation", {**TASK, **(task or {})})
    config = distillation_config(task, hparams)
    torch.manual_seed(seed)
    cls = get_algorithm("dataset-distillation")
    algorithm = cls(cls.build_hparams(config.algorithm.hparams), kind.model_spec(DATASET, config))
    algorithm.attach_training_data(DATASET, config)
    algorithm.configure_optimizers(0.05, 100, "constant")
    return kind, config, algorithm


def real_batch(kind, config) -> LabeledBatch:
    return kind.batch_sampler(DATASET, config, 64).sample()


# --- the problem -------------------------------------------------------------------------------------------------
def test_the_problem_is_fixed_by_its_seed_and_its_parts_are_disjoint():
    kind = get_kind("distillation", TASK)
    problem, again = make_problem(DATASET, kind.options), make_problem(DATASET, kind.options)
    assert problem.class_names == again.class_names and len(problem.class_names) == 3
    sizes = {name: len(labels) for name, (_, labels) in problem.parts.items()}
    assert sizes == {"train": 12, "val": 6, "test": 6}
    for name, (images, labels) in problem.parts.items():
        assert torch.equal(images, again.parts[name][0])
        assert torch.bincount(labels, minlength=3).tolist() == [sizes[name] // 3] * 3
    flat = {name: {bytes(image.numpy()) for image in images} for name, (images, _) in problem.parts.items()}
    assert not (flat["train"] & flat["test"]) and not (flat["train"] & flat["val"]) and not (flat["val"] & flat["test"])
    other = make_problem(DATASET, get_kind("distillation", {**TASK, "class_seed": 5}).options)
    assert other.class_names != problem.class_names


def test_a_problem_too_large_for_the_data_names_the_task_setting():
    with pytest.raises(DatasetError, match="task.classes"):
        make_problem(DATASET, get_kind("distillation", {**TASK, "classes": 40}).options)
    with pytest.raises(DatasetError, match="task.test_per_class"):
        make_problem(DATASET, get_kind("distillation", {**TASK, "test_per_class": 7}).options)


# --- the meta-gradient -------------------------------------------------------------------------------------------
def _float64(algorithm):
    algorithm.distilled.double()
    algorithm.init_net.double()
    return algorithm


def test_meta_gradient_through_the_inner_steps_matches_finite_differences():
    """d(real loss after 3 learned steps on the distilled images)/d(images, rates), float64: autograd through the
    unrolled steps against central differences, and the gradient meta_train_step applies is that one."""
    kind, config, algorithm = make(seed=3)
    algorithm = _float64(algorithm)
    batch = real_batch(kind, config)
    x, y = batch.x.double(), batch.y
    distilled = algorithm.distilled

    def loss() -> torch.Tensor:
        return algorithm.outer_loss(x, y, algorithm.fresh_network())[0]

    image_grad, rate_grad = torch.autograd.grad(loss(), [distilled.images, distilled.raw_lrs])
    generator = torch.Generator().manual_seed(0)
    picks = [(distilled.raw_lrs, (i,), rate_grad) for i in range(distilled.raw_lrs.numel())]
    flat = torch.randperm(distilled.images.numel(), generator=generator)[:6]
    picks += [(distilled.images, np.unravel_index(int(i), distilled.images.shape), image_grad) for i in flat]
    eps = 1e-6
    for tensor, index, grad in picks:
        with torch.no_grad():
            original = tensor[index].item()
            tensor[index] = original + eps
            up = loss().item()
            tensor[index] = original - eps
            down = loss().item()
            tensor[index] = original
        numeric = (up - down) / (2 * eps)
        assert grad[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-9), (tensor.shape, index)
    assert rate_grad.abs().max() > 0 and image_grad.abs().max() > 0
    algorithm.configure_optimizers(1e-3, 10, "constant")
    algorithm.meta_train_step(LabeledBatch(x, y))  # leaves the gradient it applied in .grad
    assert torch.allclose(distilled.images.grad, image_grad) and torch.allclose(distilled.raw_lrs.grad, rate_grad)


def test_adapt_trains_a_fresh_network_exactly_as_the_unrolled_steps_do():
    kind, _, algorithm = make(seed=1)
    images, labels = algorithm.distilled_set()
    network = algorithm.fresh_network()
    unrolled = algorithm.unrolled({k: v.detach().requires_grad_(True) for k, v in network.named_parameters()},
                                  create_graph=False)
    adapted = algorithm.adapt(images, labels, 3)
    assert all(torch.allclose(adapted[name], unrolled[name], atol=1e-6) for name in adapted)
    with torch.no_grad():
        probs = algorithm.predict(adapted, images)
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))


def test_random_initialisation_draws_a_new_network_each_time_and_fixed_does_not():
    _, _, fixed = make({"init": "fixed"})
    _, _, random = make({"init": "random"})
    first, second = fixed.fresh_network(), fixed.fresh_network()
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    first, second = random.fresh_network(), random.fresh_network()
    assert not torch.equal(next(first.parameters()), next(second.parameters()))
    assert fixed.init_mode == "fixed" and random.init_mode == "random"


def test_distilled_images_learn_to_teach_the_classes():
    kind, config, algorithm = make({"init": "fixed", "distill_steps": 3}, init_lr=0.3)
    algorithm.configure_optimizers(0.1, 100, "constant")
    tasks = kind.fixed_tasks(DATASET, config, "val", 3, 0)
    before = kind.evaluate(algorithm, tasks).accuracy
    sampler = kind.batch_sampler(DATASET, config, 64)
    history = [algorithm.meta_train_step(sampler.sample()) for _ in range(40)]
    assert np.mean([h["loss"] for h in history[-5:]]) < 0.5 * np.mean([h["loss"] for h in history[:5]])
    after = kind.evaluate(algorithm, tasks).accuracy
    assert after >= 0.8 and after > before + 0.3, (before, after)


# --- evaluation ----------------------------------------------------------------------------------------------------
def test_test_evaluation_compares_with_baselines_and_validation_measures_the_distilled_set_alone():
    kind, config, algorithm = make({"init": "random"})
    test = kind.evaluate(algorithm, kind.fixed_tasks(DATASET, config, "test", 3, 11))
    again = kind.evaluate(algorithm, kind.fixed_tasks(DATASET, config, "test", 3, 11))
    assert set(test.scores) == {DISTILLED, RANDOM_REAL, FULL_DATA, REAL_LEARNED_LRS}
    for name in test.scores:
        np.testing.assert_array_equal(test.per_network[name], again.per_network[name])
        assert len(test.per_network[name]) == 3 and 0 <= test.scores[name] <= 1
    assert test.value == test.scores[DISTILLED] and test.shots == 1 and test.queries == 2 and test.classes == 3
    assert test.init == "random" and test.inner_steps == 3
    val = kind.evaluate(algorithm, kind.fixed_tasks(DATASET, config, "val", 2, 11), split="val")
    assert set(val.scores) == {DISTILLED} and val.split == "val"
    data = json.loads(json.dumps(test.to_dict()))
    assert data["extras"]["accuracy_by_training_set"][FULL_DATA] == pytest.approx(test.scores[FULL_DATA])
    back = DistillationResult.from_dict(data, test.arrays())
    assert back.scores == pytest.approx(test.scores) and back.per_network.keys() == test.per_network.keys()
    assert back.to_dict() == test.to_dict() and back.file_stem() == test.file_stem() == "3c1ipc-3nets-seed11"
    assert kind.test_task_count("glyphs") == 10  # networks, not the dataset's 1,000 episodes


# --- the trainer, checkpoints and the CLI -------------------------------------------------------------------------
def test_trainer_records_the_image_grid_and_rates_and_the_checkpoint_keeps_the_set(use_synthetic_data):
    config = distillation_config({"images_per_class": 2})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [3, 6]
    assert [s.name for s in history.specs] == ["distilled_images", "real_examples", "learning_rates"]
    grid = history.records[-1]["distilled_images"]
    assert grid["images"].shape == (6, 16, 16) and 0 <= grid["images"].min() and grid["images"].max() <= 1
    assert list(grid["labels"][:3]) == make_problem(DATASET, trainer.kind.options).class_names
    assert not np.array_equal(history.records[0]["distilled_images"]["images"], grid["images"])
    real = history.records[-1]["real_examples"]
    assert real["images"].shape == (3, 16, 16) and list(real["labels"]) == list(grid["labels"][:3])
    assert history.records[-1]["learning_rates"]["step"].tolist() == [1, 2, 3]
    loaded = load_model(trainer.run)  # sized from the checkpoint, not from the kind's defaults
    images, labels = loaded.algorithm.distilled_set()
    assert images.shape == (6, 1, 16, 16) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    best = trainer.run.load_checkpoint("best")["state"]["distilled"]["images"]
    assert torch.equal(images, best)
    result = evaluate_run(trainer.run, episodes=2, device="cpu")
    assert result.shots == 2 and set(result.scores) == {DISTILLED, RANDOM_REAL, FULL_DATA, REAL_LEARNED_LRS}
    saved = RunStore().get(trainer.run.id).evaluations()
    assert saved and saved[-1]["accuracy"] == pytest.approx(result.accuracy)


def test_cli_trains_and_evaluates_the_kind_in_json(capsys, use_synthetic_data):
    flags = ["--kind", "distillation", "--algorithm", "dataset-distillation", "--steps", "2", "--val-interval", "2",
             "--val-episodes", "2", "--eval-episodes", "2", "--device", "cpu", "--threads", "1",
             "--hparam", "hidden=8", "--hparam", "batch_size=16"]
    flags += [item for key, value in TASK.items() for item in ("--task", f"{key}={value}")]
    assert cli.main(["train", *flags, "--json", "--quiet"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["kind"] == "distillation" and trained["metric"] == "accuracy"
    assert trained["recipe"] == "glyphs-fixed" and 0 <= trained["test"]["accuracy"] <= 1
    assert cli.main(["eval", trained["run"], "--episodes", "2", "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "distillation" and result["episodes"] == 2 and result["shots"] == 1
    assert set(result["scores"]) == {DISTILLED, RANDOM_REAL, FULL_DATA, REAL_LEARNED_LRS}
    assert all(0 <= value <= 1 for value in result["scores"].values())

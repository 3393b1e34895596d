"""Learning to augment (DADA, Li et al. 2020): the differentiable operations, the relaxed policy, the meta-gradient
of the validation loss (its sign on a constructed case and finite differences), the kind's paired evaluation
against no augmentation and RandAugment, its result's round trip, and a tiny search through the Trainer with its
inspection records and a checkpoint that restores the policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_dataset
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.dada import AugmentPolicy, meta_gradient, parse_operations
from workbench.core.config import ExperimentConfig
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.kinds import get_kind
from workbench.core.kinds.augmentation import AugmentationResult, PolicyTrials, RandAugmenter
from workbench.core.models.augment_ops import OPERATIONS, Draws, apply
from workbench.core.runs import load_model
from workbench.core.snapshots import INSPECTION_FILE, read_inspections
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(count: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


# --- operations ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPERATIONS[1:])
def test_each_operation_is_the_identity_at_magnitude_zero_and_differentiable_in_its_magnitude(name):
    x = images()
    draws = Draws.sample(x, torch.Generator().manual_seed(1))
    assert torch.allclose(apply(name, x, torch.tensor(0.0), draws), x, atol=1e-5)
    magnitude = torch.tensor(0.5, requires_grad=True)
    out = apply(name, x, magnitude, draws)
    assert out.shape == x.shape and not torch.allclose(out, x, atol=1e-3)
    (gradient,) = torch.autograd.grad(((out - x) ** 2).sum(), magnitude)
    assert gradient > 0  # stronger changes the image more


def test_draws_come_from_the_generator():
    x = images()
    a, b = (Draws.sample(x, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(apply("elastic", x, torch.tensor(0.7), a), apply("elastic", x, torch.tensor(0.7), b))


# --- the policy ----------------------------------------------------------------------------------------------------
def test_the_policy_starts_uniform_and_applies_the_sampled_operation_exactly():
    policy = AugmentPolicy(parse_operations("rotate,cutout"))
    assert policy.operations == ("identity", "rotate", "cutout")
    assert torch.allclose(policy.probabilities(), torch.full((3,), 1 / 3))
    assert torch.allclose(policy.magnitudes(), torch.full((3,), 0.5))
    x = images(6)
    draws = Draws.sample(x, torch.Generator().manual_seed(2))
    gumbel = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]] * 2)  # choices: identity, rotate, cutout, ...
    out = policy(x, 0.5, draws=draws, gumbel=gumbel)
    for i, name in enumerate(["identity", "rotate", "cutout"] * 2):
        row = Draws(draws.sign[i:i + 1], draws.direction[i:i + 1], draws.centre[i:i + 1], draws.field[i:i + 1])
        assert torch.allclose(out[i:i + 1], apply(name, x[i:i + 1], torch.tensor(0.5), row), atol=1e-6)


def test_unknown_operations_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="operations.*blur"):
        parse_operations("rotate,blur")


# --- the meta-gradient ---------------------------------------------------------------------------------------------
def constructed_case(val_target: float):
    """A scalar model f(x) = w * mean(x), w = 0, targets 1: one SGD step moves w by 2 xi mean(x'), so brighter
    training images (x') take w further. With validation targets of 1 the step falls short (w' < 1), so more
    brightness lowers the validation loss; with targets of 0.05 it overshoots, so more brightness raises it."""
    torch.manual_seed(0)
    x = (torch.rand(8, 1, 4, 4, dtype=torch.float64) * 0.4 + 0.5)
    policy = AugmentPolicy(("identity", "brightness")).double()
    draws = Draws.sample(x, torch.Generator().manual_seed(0))
    draws.sign = torch.ones_like(draws.sign)  # brighter, never darker
    gumbel = torch.zeros(8, 2, dtype=torch.float64)
    gumbel[:, 1] = 3.0  # every image draws brightness (forward); the softmax still feels both logits
    params = {"w": torch.zeros((), dtype=torch.float64, requires_grad=True)}

    def train_loss(p):
        augmented = policy(x, 0.5, draws=draws, gumbel=gumbel)
        return ((p["w"] * augmented.mean((1, 2, 3)) - 1.0) ** 2).mean()

    def val_loss(p):
        return ((p["w"] * x.mean((1, 2, 3)) - val_target) ** 2).mean()

    return policy, params, train_loss, val_loss


@pytest.mark.parametrize("val_target, sign", [(1.0, -1), (0.05, 1)])
def test_the_policy_gradient_is_non_zero_with_the_sign_the_constructed_case_dictates(val_target, sign):
    policy, params, train_loss, val_loss = constructed_case(val_target)
    out = meta_gradient(params, train_loss, val_loss, 0.1, list(policy.parameters()))
    logit_grad, magnitude_grad = out["policy_grads"]
    # Raising brightness's probability or magnitude lowers the validation loss (sign -1) or raises it (+1); the
    # identity logit moves the other way; identity's magnitude means nothing.
    assert np.sign(float(logit_grad[1])) == sign and np.sign(float(logit_grad[0])) == -sign
    assert np.sign(float(magnitude_grad[1])) == sign and abs(float(logit_grad[1])) > 1e-6
    assert float(magnitude_grad[0]) == 0.0


def test_the_magnitude_gradient_matches_finite_differences():
    policy, params, train_loss, val_loss = constructed_case(1.0)
    out = meta_gradient(params, train_loss, val_loss, 0.1, [policy.magnitude_logits])
    analytic = float(out["policy_grads"][0][1])

    def unrolled(shift: float) -> float:
        with torch.no_grad():
            policy.magnitude_logits[1] += shift
        w = torch.zeros((), dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(train_loss({"w": w}), w)
        value = float(val_loss({"w": w - 0.1 * grad}).detach())
        with torch.no_grad():
            policy.magnitude_logits[1] -= shift
        return value

    eps = 1e-6
    assert analytic == pytest.approx((unrolled(eps) - unrolled(-eps)) / (2 * eps), rel=1e-5)


# --- the kind's evaluation -----------------------------------------------------------------------------------------
class FixedAugment:
    """A stand-in algorithm whose 'learned policy' is a given function."""

    name = "stand-in"

    def __init__(self, augment):
        self.augment = augment

    def eval(self):
        return self


def small_config(setting: str = "small-data", **task):
    return ExperimentConfig.from_dict({
        "kind": "augmentation", "dataset": {"name": "glyphs", "image_size": 16, "ways": 3, "shots": 2,
                                            "queries": 3},
        "algorithm": {"name": "dada", "hparams": {"hidden": 8}},
        "training": {"train_ways": 3, "train_shots": 1, "train_queries": 2},
        "task": {"protocol": setting, "eval_steps": 3, "eval_width": 4, "judge_episodes": 3, **task}})


@pytest.mark.parametrize("setting", ["small-data", "few-shot"])
def test_an_identity_policy_scores_exactly_as_no_augmentation_seed_by_seed(setting):
    config = small_config(setting)
    kind = get_kind("augmentation", config.task)
    dataset = synthetic_dataset()
    tasks = kind.fixed_tasks(dataset, config, "test", 3, seed=5)
    assert isinstance(tasks, PolicyTrials) and len(tasks) == 3
    result = kind.evaluate(FixedAugment(lambda x, generator: x), tasks)
    assert result.arms == ["learned", "none", "randaugment"] and result.per_seed.shape == (3, 3)
    assert np.array_equal(result.per_seed[:, 0], result.per_seed[:, 1])  # same start, same data: paired
    assert result.accuracy == pytest.approx(float(result.per_seed[:, 0].mean()))
    assert set(result.extras["accuracy_by_augmentation"]) == {"learned policy", "no augmentation", "RandAugment"}
    assert result.extras["learned_vs_none"]["diff"] == 0.0
    validation = kind.evaluate(FixedAugment(lambda x, generator: x), tasks, split="val")
    assert validation.arms == ["learned"]  # the baselines do not change while the policy trains


def test_the_kind_refuses_an_algorithm_without_a_policy():
    config = small_config()
    kind = get_kind("augmentation", config.task)
    tasks = kind.fixed_tasks(synthetic_dataset(), config, "test", 1, seed=0)
    with pytest.raises(WorkbenchError, match="no augmentation policy"):
        kind.evaluate(type("Plain", (), {"name": "plain", "eval": lambda self: self})(), tasks)


def test_randaugment_is_seeded_and_keeps_shape():
    spec = synthetic_dataset().spec
    augmenter = RandAugmenter(spec, 2, 9)
    x = spec.normalize(synthetic_dataset().split("train").images[:4])
    a, b = (augmenter(x, torch.Generator().manual_seed(4)) for _ in range(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_the_result_round_trips_through_json_and_arrays():
    per_seed = np.array([[0.8, 0.6, 0.7], [0.9, 0.7, 0.75]], np.float32)
    result = AugmentationResult(0.85, 0.098, 2, 5, 5, 15, 3, arms=["learned", "none", "randaugment"],
                                per_seed=per_seed, policy={"rotate": {"probability": 0.2, "magnitude": 0.4}})
    result.extras = result.comparisons()
    back = AugmentationResult.from_dict(result.to_dict(), result.arrays())
    assert back.to_dict() == result.to_dict() and np.array_equal(back.per_seed, per_seed)
    assert result.extras["accuracy_by_augmentation"]["no augmentation"] == pytest.approx(0.65)
    assert result.file_stem() == "small-data-5w5s-2seeds-seed3"


# --- through the Trainer ----------------------------------------------------------------------------------------
def test_a_tiny_search_trains_records_the_policy_and_restores_it_from_its_checkpoint(use_synthetic_data):
    config = small_config().replace(training={"steps": 4, "val_interval": 2, "val_episodes": 1, "lr": 1e-2,
                                              "checkpoint_interval": 2, "device": "cpu", "threads": 1},
                                    algorithm={"hparams": {"hidden": 8, "history_interval": 1,
                                                           "policy_lr": 0.05}})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 4 and all(math.isfinite(m["loss"]) and math.isfinite(m["extras"]["val_loss"])
                                   for m in steps)
    algorithm = trainer.algorithm
    assert not torch.allclose(algorithm.policy.probabilities(), torch.full((9,), 1 / 9))  # the policy learned
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [2, 4]
    curves = history.records[-1]["operation_probabilities"]
    assert list(curves["step"]) == [0, 1, 2, 3, 4] and set(OPERATIONS) <= set(curves)
    assert all(curves[name][0] == pytest.approx(1 / 9) for name in OPERATIONS)  # the uniform start
    assert np.allclose(sum(curves[name] for name in OPERATIONS), 1.0, atol=1e-5)
    strip = history.records[-1]["augmented_samples"]
    assert strip["images"].shape[0] == len(strip["labels"]) and "#1 original" in list(strip["labels"])
    assert 0.0 <= strip["images"].min() and strip["images"].max() <= 1.0
    loaded = load_model(trainer.run, kind="last")
    assert loaded.algorithm.policy_summary() == algorithm.policy_summary()
    x = use_synthetic_data.spec.normalize(use_synthetic_data.split("test").images[:3])
    assert torch.equal(loaded.algorithm.augment(x, torch.Generator().manual_seed(1)),
                       algorithm.augment(x, torch.Generator().manual_seed(1)))
    assert loaded.algorithm.history["steps"].tolist() == [0, 1, 2, 3, 4]


def test_try_a_task_trains_a_classifier_on_the_support_with_the_policy():
    cls = get_algorithm("dada")
    algorithm = cls(cls.build_hparams({"hidden": 8}), ModelSpec(1, 16, 3, 12, kind="augmentation"))
    algorithm.kind = get_kind("augmentation", {"eval_steps": 10, "eval_width": 8})  # a quicker classifier
    split = synthetic_dataset().split("test")
    spec = synthetic_dataset().spec
    rows = torch.cat([torch.nonzero(split.labels == c)[:3, 0] for c in range(2)])
    x, y = spec.normalize(split.images[rows]), split.labels[rows]
    torch.manual_seed(0)
    adapted = algorithm.adapt(x, y, 2)
    probs = algorithm.predict(adapted, x)
    assert probs.shape == (6, 2) and torch.allclose(probs.sum(-1), torch.ones(6), atol=1e-5)

"""Adversarial attacks and accuracy against ε (workbench.core.adversarial): FGSM and PGD in pixel units through the
data's normalization, accuracy at ε = 0 equal to the clean evaluation on the same episodes, clear refusals for
algorithms without differentiable outputs, and `workbench eval --adversarial`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import synthetic_dataset, tiny_dataset_config
from workbench import cli
from workbench.core.adversarial import (AttackUnsupported, PixelRange, accuracy_against_epsilon, epsilon_key, fgsm,
                                        pgd)
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.data.base import PreprocessSpec
from workbench.core.data.episodes import FixedEpisodes
from workbench.core.kinds import get_kind
from workbench.core.runs import RunStore
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = PreprocessSpec(16, 3, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.2))  # a budget differs per channel in input units
PIXELS = PixelRange.of(SPEC)


def images_and_model():
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (12, 3, 16, 16), generator=gen, dtype=torch.uint8)
    raw[:, :, :4] = 0  # black and white rows: the attack must not push them out of the valid range
    raw[:, :, 4:8] = 255
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 14 * 14, 3))
    return SPEC.normalize(raw), torch.arange(3).repeat(4), model


def pixels_of(x: torch.Tensor) -> torch.Tensor:
    """Normalized images back to pixels in [0, 1] (unrounded, unclamped)."""
    mean, std = torch.tensor(SPEC.mean).view(1, 3, 1, 1), torch.tensor(SPEC.std).view(1, 3, 1, 1)
    return x * std + mean


def test_fgsm_raises_the_loss_by_steps_of_exactly_eps_pixels_within_the_valid_range():
    x, y, model = images_and_model()
    eps = 4 / 255
    attacked = fgsm(model, x, y, eps, pixels=PIXELS)
    assert F.cross_entropy(model(attacked), y) > F.cross_entropy(model(x), y)
    moved = (pixels_of(attacked) - pixels_of(x)).abs()
    assert float(moved.max()) <= eps + 1e-6
    inside = (pixels_of(x) > eps) & (pixels_of(x) < 1 - eps)  # room to move either way: every pixel moves by ε
    assert torch.allclose(moved[inside], torch.full_like(moved[inside], eps), atol=1e-6)
    assert float(pixels_of(attacked).min()) >= -1e-6 and float(pixels_of(attacked).max()) <= 1 + 1e-6
    assert torch.equal(fgsm(model, x, y, 0.0, pixels=PIXELS), x)  # no budget, no change


def test_pgd_stays_in_the_eps_ball_and_with_one_full_step_from_the_clean_image_is_fgsm():
    x, y, model = images_and_model()
    eps = 8 / 255
    attacked = pgd(model, x, y, eps, steps=5, pixels=PIXELS, generator=torch.Generator().manual_seed(1))
    assert float((pixels_of(attacked) - pixels_of(x)).abs().max()) <= eps + 1e-6
    assert float(pixels_of(attacked).min()) >= -1e-6 and float(pixels_of(attacked).max()) <= 1 + 1e-6
    assert F.cross_entropy(model(attacked), y) > F.cross_entropy(model(x), y)
    single = pgd(model, x, y, eps, steps=1, step_size=eps, pixels=PIXELS, random_start=False)
    assert torch.allclose(single, fgsm(model, x, y, eps, pixels=PIXELS), atol=1e-6)


def maml_and_episodes():
    dataset = synthetic_dataset()
    cls = get_algorithm("maml")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams({"hidden": 8, "test_inner_steps": 3}), ModelSpec(1, 16, 3, 12))
    algorithm.configure_optimizers(3e-3, 10, "constant")
    train = FixedEpisodes(dataset.split("train"), dataset.spec, 3, 1, 2, count=10, seed=1)
    for index in range(0, 10, 2):
        algorithm.meta_train_step([train[index], train[index + 1]])
    return algorithm, FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 3, count=6, seed=7)


def test_accuracy_at_zero_is_the_clean_evaluation_on_the_same_episodes_and_falls_with_eps():
    algorithm, episodes = maml_and_episodes()
    clean = get_kind("classification").evaluate(algorithm, episodes)
    curve = accuracy_against_epsilon(algorithm, episodes, [0.0, 0.02, 0.3])
    assert curve.per_episode.shape == (3, 6)
    assert curve.accuracy[0] == pytest.approx(clean.accuracy, abs=1e-7) and curve.ci95[0] == pytest.approx(clean.ci95)
    assert curve.per_episode[0].tolist() == pytest.approx(clean.per_episode_accuracy.tolist())
    assert curve.accuracy[2] < curve.accuracy[0]
    extras = curve.extras()
    assert list(extras["accuracy_by_epsilon"]) == ["0", "0.02", "0.3"] == list(extras["ci95_by_epsilon"])
    assert "FGSM" in extras["epsilon_note"] and epsilon_key(2 / 255) == "0.00784314"
    # PGD (seeded random starts) is reproducible and at least as strong here as FGSM at the same budget.
    first = accuracy_against_epsilon(algorithm, episodes, [0.3], attack="pgd", steps=4, seed=3)
    again = accuracy_against_epsilon(algorithm, episodes, [0.3], attack="pgd", steps=4, seed=3)
    assert again.accuracy == first.accuracy
    assert first.accuracy[0] <= curve.accuracy[2] and "PGD, 4 steps" in first.note()


class ShiftedPredictions:
    """A MAML whose predict uses something its adapted weights do not hold (like per-step batch norm)."""

    def __init__(self, algorithm):
        self._algorithm = algorithm

    def __getattr__(self, name):
        return getattr(self._algorithm, name)

    def predict(self, adapted, query_x):
        return self._algorithm.predict(adapted, query_x).roll(1, dims=-1)


def test_algorithms_without_usable_gradients_are_refused_with_the_reason():
    dataset = synthetic_dataset()
    episodes = FixedEpisodes(dataset.split("test"), dataset.spec, 3, 1, 2, count=2, seed=0)
    protonet = get_algorithm("protonet")
    algorithm = protonet(protonet.build_hparams({"hidden": 8}), ModelSpec(1, 16, 3, 12))
    with pytest.raises(AttackUnsupported, match="protonet: an attack needs the gradient"):
        accuracy_against_epsilon(algorithm, episodes, [0.0, 0.1])
    maml, _ = maml_and_episodes()
    with pytest.raises(AttackUnsupported, match="do not reproduce its predictions"):
        accuracy_against_epsilon(ShiftedPredictions(maml), episodes, [0.1])
    regression = SimpleNamespace(name="maml", kind=get_kind("regression"))
    with pytest.raises(AttackUnsupported, match="for classification"):
        accuracy_against_epsilon(regression, episodes, [0.1])


@pytest.fixture
def maml_run(use_synthetic_data):
    config = tiny_dataset_config(algorithm={"name": "maml", "hparams": {"hidden": 8, "test_inner_steps": 3}},
                                 training={"steps": 4, "val_interval": 2, "checkpoint_interval": 2})
    trainer = Trainer(config)
    trainer.run_all()
    return trainer.run.id


def test_cli_eval_adversarial_prints_and_saves_accuracy_by_epsilon(capsys, maml_run):
    code = cli.main(["eval", maml_run, "--episodes", "4", "--adversarial", "0.1,0", "--device", "cpu", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    data = json.loads(out)
    assert list(data["accuracy_by_epsilon"]) == ["0", "0.1"] == list(data["ci95_by_epsilon"])
    assert data["accuracy_by_epsilon"]["0"] == pytest.approx(data["accuracy"])  # the same episodes
    assert "FGSM" in data["epsilon_note"] and data["episodes"] == 4
    saved = RunStore().get(maml_run).evaluations()
    assert len(saved) == 1 and saved[0]["extras"]["accuracy_by_epsilon"] == data["accuracy_by_epsilon"]

    code = cli.main(["eval", maml_run, "--episodes", "4", "--adversarial", "0.1", "--attack", "pgd",
                     "--attack-steps", "2", "--device", "cpu", "--no-save"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "accuracy by epsilon:" in out and "PGD, 2 steps" in out and "    0.1 " in out
    assert len(RunStore().get(maml_run).evaluations()) == 1  # --no-save kept the first result alone

    for bad, hint in (("0.1,x", "not a list of numbers"), ("2", "must lie in [0, 1]")):
        assert cli.main(["eval", maml_run, "--adversarial", bad]) == 2
        err = capsys.readouterr().err
        assert f"--adversarial: '{bad}'" in err and hint in err

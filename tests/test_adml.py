"""ADML (Yin et al. 2018): its two-branch update (inner on adversarial support -> clean queries, inner on clean support
-> adversarial queries) against a hand-written float64 reference with finite differences, and training through the
Trainer with its clean and adversarial evaluation and a checkpoint round trip."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_dataset_config
from workbench.core.adversarial import PixelRange, fgsm
from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.algorithms.adml import adml_outer_loss
from workbench.core.algorithms.functional import named_params
from workbench.core.data.episodes import FixedEpisodes
from workbench.core.runs import load_model
from workbench.core.training import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IN, HIDDEN, WAYS, INNER_LR, EPS = 3, 4, 3, 0.5, 0.1
# Inputs normalized as by a PreprocessSpec with mean 0.5 and std 0.25: ε pixels are 4 ε in input units, and the
# valid inputs (pixels 0..1) are [-2, 2].
PIXELS = PixelRange.of(SimpleNamespace(mean=(0.5,), std=(0.25,)))
SCALE, LOW, HIGH = 4.0, -2.0, 2.0


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh())
        self.head = nn.Linear(HIDDEN, WAYS)

    def forward(self, x):
        return self.head(self.features(x))


def tiny_net() -> TinyNet:
    torch.manual_seed(1)
    return TinyNet().double()


def tiny_task():
    gen = torch.Generator().manual_seed(0)
    support_x = (1.5 * torch.randn(2 * WAYS, IN, generator=gen, dtype=torch.float64)).clamp(LOW, HIGH)
    query_x = (1.5 * torch.randn(4 * WAYS, IN, generator=gen, dtype=torch.float64)).clamp(LOW, HIGH)
    return support_x, torch.arange(WAYS).repeat(2), query_x, torch.arange(WAYS).repeat(4)


# --- the reference: forward, backward, FGSM and both branches by hand (no autograd) ------------------------------
def forward(w: dict, x):
    hidden = torch.tanh(x @ w["features.0.weight"].T + w["features.0.bias"])
    return hidden, hidden @ w["head.weight"].T + w["head.bias"]


def cross_entropy(logits, y):
    return -(logits - torch.logsumexp(logits, 1, keepdim=True))[torch.arange(len(y)), y].mean()


def gradients(w: dict, x, y) -> tuple[dict, torch.Tensor]:
    """The mean cross-entropy's gradient with respect to the weights and to the inputs."""
    hidden, logits = forward(w, x)
    dlogits = (logits.softmax(1) - F.one_hot(y, WAYS).double()) / len(y)
    dhidden = (dlogits @ w["head.weight"]) * (1 - hidden ** 2)
    grads = {"head.weight": dlogits.T @ hidden, "head.bias": dlogits.sum(0),
             "features.0.weight": dhidden.T @ x, "features.0.bias": dhidden.sum(0)}
    return grads, dhidden @ w["features.0.weight"]


def fgsm_by_hand(w: dict, x, y):
    return (x + EPS * SCALE * gradients(w, x, y)[1].sign()).clamp(LOW, HIGH)


def adapt_by_hand(w: dict, x, y, steps: int) -> dict:
    for _ in range(steps):
        grads = gradients(w, x, y)[0]
        w = {name: value - INNER_LR * grads[name] for name, value in w.items()}
    return w


def adml_loss_by_hand(w: dict, task, adversarial: tuple, steps: int, crossed: bool = True) -> float:
    """The mean of (adapt on adversarial support -> clean queries) and (adapt on clean support -> adversarial
    queries); with ``crossed`` False each branch is scored on its own kind of queries (not ADML)."""
    support_x, support_y, query_x, query_y = task
    adversarial_support, adversarial_query = adversarial
    from_adversarial = adapt_by_hand(w, adversarial_support, support_y, steps)
    from_clean = adapt_by_hand(w, support_x, support_y, steps)
    first, second = (query_x, adversarial_query) if crossed else (adversarial_query, query_x)
    return float((cross_entropy(forward(from_adversarial, first)[1], query_y)
                  + cross_entropy(forward(from_clean, second)[1], query_y)) / 2)


def finite_differences(w: dict, task, adversarial: tuple, steps: int, eps: float = 1e-6) -> dict:
    """The adversarial samples stay fixed: ADML treats them as data."""
    grads = {}
    for name, value in w.items():
        grad = torch.zeros_like(value)
        for i in range(value.numel()):
            shifted = []
            for sign in (1, -1):
                moved = {k: v.clone() for k, v in w.items()}
                moved[name].view(-1)[i] += sign * eps
                shifted.append(adml_loss_by_hand(moved, task, adversarial, steps))
            grad.view(-1)[i] = (shifted[0] - shifted[1]) / (2 * eps)
        grads[name] = grad
    return grads


def adml_gradient(model, task, steps: int, first_order: bool):
    """ADML's loss, meta-gradient and the adversarial samples it made (support first)."""
    made = []

    def make_adversarial(outputs_fn, x, y):
        made.append(fgsm(outputs_fn, x, y, EPS, pixels=PIXELS))
        return made[-1]

    params = named_params(model)
    loss, _ = adml_outer_loss(model, params, *task, steps, INNER_LR, first_order, make_adversarial, F.cross_entropy)
    return float(loss.detach()), dict(zip(params, torch.autograd.grad(loss, list(params.values())))), made


@pytest.mark.parametrize("steps", [1, 2])
def test_two_branch_meta_gradient_matches_a_hand_written_reference(steps):
    model, task = tiny_net(), tiny_task()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss, grads, made = adml_gradient(model, task, steps, first_order=False)
    # The attack is FGSM against the start, on both sets, within ε pixels and the valid range.
    support_x, support_y, query_x, query_y = task
    expected = (fgsm_by_hand(w, support_x, support_y), fgsm_by_hand(w, query_x, query_y))
    for got, want, clean in zip(made, expected, (support_x, query_x)):
        assert torch.allclose(got, want, atol=1e-12)
        assert float((got - clean).abs().max()) <= EPS * SCALE + 1e-12
        assert LOW <= float(got.min()) <= float(got.max()) <= HIGH
    assert loss == pytest.approx(adml_loss_by_hand(w, task, expected, steps), abs=1e-12)
    assert abs(loss - adml_loss_by_hand(w, task, expected, steps, crossed=False)) > 1e-4  # the crossing matters
    reference = finite_differences(w, task, expected, steps)
    for name in w:
        assert torch.allclose(grads[name], reference[name], rtol=1e-6, atol=1e-8), (
            f"{name}: max error {float((grads[name] - reference[name]).abs().max()):.3g}")


def test_first_order_is_the_mean_query_gradient_at_the_two_adapted_weights():
    model, task = tiny_net(), tiny_task()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    _, grads, made = adml_gradient(model, task, 2, first_order=True)
    support_x, support_y, query_x, query_y = task
    from_adversarial = adapt_by_hand(w, made[0], support_y, 2)
    from_clean = adapt_by_hand(w, support_x, support_y, 2)
    first, second = gradients(from_adversarial, query_x, query_y)[0], gradients(from_clean, made[1], query_y)[0]
    for name in w:
        assert torch.allclose(grads[name], (first[name] + second[name]) / 2, rtol=1e-10, atol=1e-12), name


# --- the algorithm ------------------------------------------------------------------------------------------------
SMALL = {"hidden": 8, "train_inner_steps": 1, "train_inner_lr": 0.4, "test_inner_steps": 3, "test_inner_lr": 0.4,
         "epsilon": 0.05}


def test_pgd_adversarial_training_steps_are_finite_and_move_the_start():
    cls = get_algorithm("adml")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams({**SMALL, "attack": "pgd", "attack_steps": 3}), ModelSpec(1, 16, 3, 10))
    algorithm.configure_optimizers(1e-2, 2, "constant")
    before = {k: v.clone() for k, v in algorithm.model.state_dict().items()}
    gen = torch.Generator().manual_seed(2)
    episode = SimpleNamespace(support_x=torch.randn(3, 1, 16, 16, generator=gen), support_y=torch.arange(3),
                              query_x=torch.randn(6, 1, 16, 16, generator=gen), query_y=torch.arange(3).repeat(2),
                              ways=3)
    episode.to = lambda device: episode
    stats = algorithm.meta_train_step([episode])
    assert math.isfinite(stats["loss"]) and 0 <= stats["accuracy"] <= 1
    assert any(not torch.equal(before[k], v) for k, v in algorithm.model.state_dict().items())


@pytest.mark.usefixtures("use_synthetic_data")
def test_trains_through_the_trainer_and_reports_clean_and_adversarial_accuracy():
    config = tiny_dataset_config(algorithm={"name": "adml", "hparams": SMALL},
                                 training={"steps": 6, "meta_batch": 2, "val_interval": 3, "checkpoint_interval": 3})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    live = trainer.algorithm
    assert live.pixels == PixelRange.of(trainer.dataset.spec)  # ε converted through the data's normalization
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 6 and all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in steps)
    validation = trainer.last_validation
    by_epsilon = validation.extras["accuracy_by_epsilon"]
    assert list(by_epsilon) == ["0", "0.05"] and set(validation.extras["ci95_by_epsilon"]) == set(by_epsilon)
    assert by_epsilon["0"] == pytest.approx(validation.accuracy, abs=1e-6)  # ε = 0 is the clean evaluation
    assert "FGSM" in validation.extras["epsilon_note"]

    # The checkpoint predicts and attacks identically.
    episodes = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 3, 1, 2, count=3, seed=3)
    loaded = load_model(trainer.run, kind="last").algorithm
    episode = episodes[0]
    probs = live.predict(live.adapt(episode.support_x, episode.support_y, 3), episode.query_x)
    assert torch.equal(loaded.predict(loaded.adapt(episode.support_x, episode.support_y, 3), episode.query_x), probs)
    assert loaded.evaluation_extras(episodes) == live.evaluation_extras(episodes)
    trace = live.adaptation_trace(episode.support_x, episode.support_y, episode.query_x, episode.query_y, 3)
    assert [t["step"] for t in trace] == list(range(4))
    assert live.embed(episode.query_x).shape[0] == len(episode.query_x)


def test_no_budget_means_no_adversarial_extras():
    cls = get_algorithm("adml")
    algorithm = cls(cls.build_hparams({**SMALL, "epsilon": 0.0}), ModelSpec(1, 16, 3, 10))
    assert algorithm.evaluation_extras(None) == {}

"""Adversarial examples for few-shot classifiers: FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018) on the
inputs, and a classifier's accuracy against the attack's budget ε on fixed episodes.

Units. ε is in pixel units of a 0-1 scale: an attacked image differs from the clean one by at most ε in every pixel
and channel, and stays a valid image (pixels in [0, 1]). The model sees images normalized by the dataset's
PreprocessSpec, x = (p - mean) / std per channel, so a budget of ε pixels is ε / std in model units and the valid
range is [(0 - mean) / std, (1 - mean) / std]; :class:`PixelRange` does the conversion. Without a spec (inputs that
are not images) ε is in input units and nothing is clamped.

White box. :func:`accuracy_against_epsilon` adapts on each episode's clean support set, then attacks the queries
against the adapted classifier, which needs differentiable query outputs. An algorithm provides them with
``query_logits(adapted, x)``; for the MAML family (an adapted state holding the fast weights "params" of the
algorithm's ``model``) they come from those weights. Either way they are checked against the algorithm's own
``predict`` on the clean queries, so an attack never follows the gradient of another model than the one scored.
The attacked queries are scored by ``predict``, so ε = 0 gives exactly the clean evaluation's accuracy.

Attacks treat the model as fixed: they return detached inputs (adversarial training uses them as data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.errors import WorkbenchError
from workbench.core.stats import mean_ci95

ATTACKS = ("fgsm", "pgd")
ATTACK_TITLES = {"fgsm": "FGSM", "pgd": "PGD"}
PGD_STEPS = 10
OutputsFn = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class AttackUnsupported(WorkbenchError):
    """The algorithm (or kind) cannot be attacked: no differentiable query outputs, or no accuracy to measure."""


@dataclass(frozen=True)
class PixelRange:
    """Per channel: model units per pixel unit (1 / std) and the model values of pixels 0 and 1."""

    scale: tuple[float, ...] = (1.0,)
    low: tuple[float, ...] = (-math.inf,)
    high: tuple[float, ...] = (math.inf,)

    @classmethod
    def of(cls, spec: Any) -> "PixelRange":
        """The range of images normalized by ``spec`` (anything with per-channel ``mean`` and ``std``); the
        identity (input units, no clamping) when ``spec`` is None."""
        if spec is None:
            return cls()
        mean, std = tuple(float(m) for m in spec.mean), tuple(float(s) for s in spec.std)
        return cls(tuple(1.0 / s for s in std), tuple((0.0 - m) / s for m, s in zip(mean, std)),
                   tuple((1.0 - m) / s for m, s in zip(mean, std)))

    def _view(self, values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
        shape = (1, len(values)) + (1,) * max(x.dim() - 2, 0) if x.dim() > 1 else (len(values),)
        return torch.tensor(values, dtype=x.dtype, device=x.device).view(shape)

    def budget(self, eps: float, x: torch.Tensor) -> torch.Tensor:
        """ε pixels in model units, shaped to broadcast over ``x`` ([N, C, ...])."""
        return eps * self._view(self.scale, x)

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` limited to valid images."""
        return torch.minimum(torch.maximum(x, self._view(self.low, x)), self._view(self.high, x))


def _input_gradient(outputs_fn: OutputsFn, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> torch.Tensor:
    with torch.enable_grad():  # attacks run inside evaluations, which may hold no_grad
        x = x.detach().requires_grad_(True)
        return torch.autograd.grad(loss_fn(outputs_fn(x), y), x)[0]


def fgsm(outputs_fn: OutputsFn, x: torch.Tensor, y: torch.Tensor, eps: float, loss_fn: LossFn = F.cross_entropy,
         pixels: PixelRange | None = None) -> torch.Tensor:
    """The fast gradient sign method: one step of ε (pixel units) along the sign of the loss's input gradient."""
    pixels = pixels or PixelRange()
    if eps <= 0:
        return x.detach().clone()
    step = pixels.budget(eps, x) * _input_gradient(outputs_fn, x, y, loss_fn).sign()
    return pixels.clamp(x.detach() + step)


def pgd(outputs_fn: OutputsFn, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = PGD_STEPS,
        step_size: float | None = None, loss_fn: LossFn = F.cross_entropy, pixels: PixelRange | None = None,
        random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient descent on the loss (ascent): ``steps`` sign steps of ``step_size`` pixels (2.5 ε / steps by
    default, as Madry et al.), each projected back into the ε-ball around ``x`` and the valid range; a uniform random
    start in the ball unless ``random_start`` is False (``generator`` makes it reproducible)."""
    pixels = pixels or PixelRange()
    if eps <= 0:
        return x.detach().clone()
    clean = x.detach()
    bound = pixels.budget(eps, clean)
    step = pixels.budget(2.5 * eps / steps if step_size is None else step_size, clean)
    adversarial = clean
    if random_start:
        noise = torch.rand(clean.shape, generator=generator, dtype=clean.dtype).to(clean.device)
        adversarial = pixels.clamp(clean + (2 * noise - 1) * bound)
    for _ in range(steps):
        moved = adversarial + step * _input_gradient(outputs_fn, adversarial, y, loss_fn).sign()
        adversarial = pixels.clamp(torch.minimum(torch.maximum(moved, clean - bound), clean + bound))
    return adversarial


def attacked(name: str, outputs_fn: OutputsFn, x: torch.Tensor, y: torch.Tensor, eps: float, *,
             loss_fn: LossFn = F.cross_entropy, pixels: PixelRange | None = None, steps: int = PGD_STEPS,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` attacked by ``fgsm`` or ``pgd``, by name (``steps`` and ``generator`` are PGD's)."""
    if name == "fgsm":
        return fgsm(outputs_fn, x, y, eps, loss_fn, pixels)
    if name == "pgd":
        return pgd(outputs_fn, x, y, eps, steps, loss_fn=loss_fn, pixels=pixels, generator=generator)
    raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")


# --- a classifier's accuracy against ε ------------------------------------------------------------------------------
def epsilon_key(eps: float) -> str:
    """The JSON key of a budget: '0', '0.05', '0.00784314'."""
    return f"{float(eps):g}"


@dataclass
class EpsilonCurve:
    """Accuracy ± 95% CI at each ε on the same episodes (``per_episode`` [len(epsilons), episodes])."""

    epsilons: list[float]
    accuracy: list[float]
    ci95: list[float]
    attack: str
    steps: int = 1
    per_episode: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    def note(self) -> str:
        how = "FGSM" if self.attack == "fgsm" else f"PGD, {self.steps} steps"
        return (f"White-box {how} on the queries of each test episode, after adapting on its clean support set; ε "
                "in pixel units of a 0-1 scale: every pixel moves by at most ε.")

    def extras(self) -> dict[str, Any]:
        """What an evaluation result carries (a generic curve: ``<metric>_by_<x>``, ``ci95_by_<x>``, ``<x>_note``)."""
        keys = [epsilon_key(eps) for eps in self.epsilons]
        return {"accuracy_by_epsilon": dict(zip(keys, map(float, self.accuracy))),
                "ci95_by_epsilon": dict(zip(keys, map(float, self.ci95))), "epsilon_note": self.note()}


def _spec_of(tasks: Any) -> Any:
    """The PreprocessSpec of fixed episodes (None for tasks without images)."""
    return getattr(getattr(tasks, "sampler", None), "spec", None) or getattr(tasks, "spec", None)


def _with_weights(model: nn.Module, params: dict, support_x: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    # As MAML's predict: with transductive batch norm a few queries ride along with the support set.
    if support_x is not None and len(x) < len(support_x):
        return functional_call(model, params, (torch.cat([support_x, x]),))[len(support_x):]
    return functional_call(model, params, (x,))


def differentiable_outputs(algorithm: Any, adapted: Any) -> OutputsFn:
    """Differentiable query outputs of an adapted classifier (see the module docstring), or AttackUnsupported."""
    hook = getattr(algorithm, "query_logits", None)
    if callable(hook):
        return lambda x: hook(adapted, x)
    model = getattr(algorithm, "model", None)
    if isinstance(adapted, dict) and isinstance(adapted.get("params"), dict) and isinstance(model, nn.Module):
        return lambda x: _with_weights(model, adapted["params"], adapted.get("support_x"), x)
    raise AttackUnsupported(
        f"{algorithm.name}: an attack needs the gradient of its query outputs, and it exposes none (no query_logits() "
        "and no adapted weights); accuracy against ε is available for the gradient-based algorithms")


def _check_outputs(algorithm: Any, adapted: Any, outputs_fn: OutputsFn, query_x: torch.Tensor) -> None:
    with torch.no_grad():
        mine = algorithm.kind.predictions(outputs_fn(query_x)).float()
        theirs = algorithm.predict(adapted, query_x).float()
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, atol=1e-4):
        raise AttackUnsupported(
            f"{algorithm.name}: its adapted weights alone do not reproduce its predictions (it predicts with more "
            "than them), so an attack could not follow its gradient; it needs a query_logits() method")


def _attacked_accuracies(algorithm, episode, epsilons, name, steps, pixels, generator) -> list[float]:
    adapted = algorithm.adapt(episode.support_x, episode.support_y, episode.ways)
    outputs_fn = differentiable_outputs(algorithm, adapted)
    _check_outputs(algorithm, adapted, outputs_fn, episode.query_x)
    scores = []
    for eps in epsilons:
        x = episode.query_x if eps == 0 else attacked(name, outputs_fn, episode.query_x, episode.query_y, eps,
                                                      loss_fn=algorithm.kind.loss, pixels=pixels, steps=steps,
                                                      generator=generator)
        predicted = algorithm.predict(adapted, x).argmax(dim=-1)
        scores.append(float((predicted == episode.query_y).float().mean()))
    return scores


def accuracy_against_epsilon(algorithm: Any, tasks: Any, epsilons: Sequence[float], attack: str = "fgsm",
                             steps: int = PGD_STEPS, progress: ProgressCallback = no_progress,
                             seed: int = 0) -> EpsilonCurve:
    """Mean query accuracy ± 95% CI over the fixed episodes ``tasks`` at each ε (pixel units), every ε on the same
    episodes and the same adaptation. ``steps`` are PGD's; its random starts are seeded by ``seed``."""
    if attack not in ATTACKS:
        raise AttackUnsupported(f"unknown attack '{attack}'; choose one of {', '.join(ATTACKS)}")
    if getattr(algorithm.kind.metric, "key", "") != "accuracy":
        raise AttackUnsupported(f"accuracy against ε is for classification; {algorithm.name} runs a "
                                f"'{algorithm.kind.name}' experiment")
    epsilons = [float(eps) for eps in epsilons]
    pixels, total = PixelRange.of(_spec_of(tasks)), len(tasks)
    generator = torch.Generator().manual_seed(seed)
    algorithm.eval()
    per_episode = np.zeros((len(epsilons), total), np.float32)
    progress(0, total, f"attacking the queries of {total} episodes ({ATTACK_TITLES[attack]})")
    for index in range(total):
        episode = tasks[index].to(algorithm.device)
        per_episode[:, index] = _attacked_accuracies(algorithm, episode, epsilons, attack, steps, pixels, generator)
        progress(index + 1, total, f"attacking: episode {index + 1}/{total}")
    stats = [mean_ci95(row) for row in per_episode]
    return EpsilonCurve(epsilons, [m for m, _ in stats], [c for _, c in stats], attack,
                        steps if attack == "pgd" else 1, per_episode)

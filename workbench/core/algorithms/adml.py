"""ADML, the ADversarial Meta-Learner (Yin, Tang, Xu & Wang, 2018, "Adversarial Meta-Learning"): MAML trained on
clean and adversarial samples, each kind on one side of the inner loop.

For every task it makes adversarial copies of the support and query sets with an attack (FGSM by default, or PGD)
against the current start θ, then runs two MAML branches:

    θ'_adv   = inner steps from θ on the adversarial support set  ->  loss of θ'_adv   on the clean queries
    θ'_clean = inner steps from θ on the clean support set        ->  loss of θ'_clean on the adversarial queries

and updates θ on the mean of the two query losses (the paper sums them; Adam does not see the factor), second order
through the inner steps unless ``first_order``. The adversarial samples are data: no gradient flows through the
attack. At test time it adapts on the clean support set like MAML; its evaluation adds the accuracy on queries
attacked at its ε (see workbench.core.adversarial, where ε is in pixel units of a 0-1 scale).

Everything else is MAML's (:class:`~workbench.core.algorithms.maml.MAML`, which this class extends): the network, the
head's start for other ways, transductive batch norm, adaptation, prediction and embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import nn

from workbench.core.adversarial import ATTACKS, PixelRange, accuracy_against_epsilon, attacked
from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.functional import LossFn, Params, detached, forward_with
from workbench.core.algorithms.maml import MAML, MAMLHParams, maml_outer_loss
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe

# Makes adversarial copies of a set: (outputs_fn, x, y) -> x_adv.
MakeAdversarial = Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ADMLHParams(MAMLHParams):
    """MAML's settings at its mini-ImageNet values (Finn et al. 2017; ADML, Yin et al. 2018, builds on MAML), plus
    the attack."""

    hidden: int = hparam(32, "Filters per Conv-4 block (32 in MAML's mini-ImageNet network, on which ADML, Yin et "
                         "al. 2018, builds).", low=8, high=256)
    train_inner_steps: int = hparam(5, "Inner gradient steps on each support set (clean and adversarial) during "
                                    "meta-training (5 in MAML's mini-ImageNet setup, on which Yin et al. 2018 build).",
                                    low=1, high=20)
    train_inner_lr: float = hparam(0.01, "Inner learning rate during meta-training (0.01 for mini-ImageNet, as in "
                                   "MAML).", low=1e-4, high=10.0, log_scale=True)
    test_inner_steps: int = hparam(10, "Inner gradient steps on the clean support set when adapting to a test task "
                                   "(10 for mini-ImageNet, as in MAML).", low=1, high=200)
    test_inner_lr: float = hparam(0.01, "Inner learning rate when adapting to a test task.", low=1e-4, high=10.0,
                                  log_scale=True)
    epsilon: float = hparam(
        2 / 255, "Attack budget ε in pixel units of a 0-1 scale: every pixel of an adversarial sample differs from the "
        "clean one by at most ε (2/255 = two grey levels of an 8-bit image). Used in training and for the "
        "adversarial accuracy of its evaluations; 0 trains plain MAML twice over.", low=0.0, high=0.5)
    attack: str = hparam("fgsm", "How the adversarial samples are made: fgsm, one gradient-sign step of ε (the "
                         "fast gradient sign method, as in Yin et al. 2018), or pgd, projected gradient descent "
                         "(several smaller steps within ε: stronger, slower).", choices=ATTACKS)
    attack_steps: int = hparam(10, "Steps of the pgd attack (each of 2.5 ε / steps, from a random start in the "
                               "ε-ball, as in Madry et al. 2018); fgsm ignores it.", low=1, high=100)


def adml_outer_loss(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                    query_x: torch.Tensor, query_y: torch.Tensor, steps: int, lr: float, first_order: bool,
                    make_adversarial: MakeAdversarial, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """ADML's query loss for one task: the mean of (inner on adversarial support -> clean queries) and (inner on
    clean support -> adversarial queries), differentiable with respect to ``params``; and the query outputs of both
    branches (clean-query branch first).

    ``make_adversarial(outputs_fn, x, y)`` attacks a set against the start's outputs; its samples are data (no
    gradient through the attack)."""
    start = detached(params)
    outputs_at_start = partial(forward_with, model, start)
    adversarial_support = make_adversarial(outputs_at_start, support_x, support_y)
    adversarial_query = make_adversarial(outputs_at_start, query_x, query_y)
    on_clean, clean_outputs = maml_outer_loss(model, params, adversarial_support, support_y, query_x, query_y,
                                              steps, lr, first_order, loss_fn)
    on_adversarial, adversarial_outputs = maml_outer_loss(model, params, support_x, support_y, adversarial_query,
                                                          query_y, steps, lr, first_order, loss_fn)
    return (on_clean + on_adversarial) / 2, torch.cat([clean_outputs, adversarial_outputs])


GLYPHS_DEFAULT = Recipe(
    "default", "MAML's glyph defaults with ADML's two branches: 64 filters, one inner step at 0.4 in training, 10 at "
    "test time, ε = 2/255 with FGSM, one episode per meta-step, 2,000 steps, cosine schedule. Each meta-step costs "
    "about 2.5 of MAML's (two branches and two attacks).", kind="classification", recommended=True,
    hparams={"hidden": 64, "train_inner_steps": 1, "train_inner_lr": 0.4, "test_inner_steps": 10,
             "test_inner_lr": 0.4})
MINI_IMAGENET_PAPER = Recipe(
    "paper", "MAML's mini-ImageNet protocol (Finn et al. 2017), on which Yin et al. (2018) build ADML: 5-way 1-shot, "
    "15 queries per class, 32 filters, meta-batches of 4 tasks, 5 inner steps at 0.01 in training and 10 at test "
    "time, Adam 1e-3 at a constant rate, 60,000 meta-steps, FGSM at ε = 2/255. Days on a CPU.",
    datasets=("mini-imagenet",), dataset={"ways": 5, "shots": 1, "queries": 15},
    training={"meta_batch": 4, "lr": 1e-3, "lr_schedule": "constant", "steps": 60_000, "val_interval": 1000,
              "val_episodes": 100},
    hparams={"hidden": 32, "train_inner_steps": 5, "train_inner_lr": 0.01, "test_inner_steps": 10,
             "test_inner_lr": 0.01})


@register
class ADML(MAML):
    name = "adml"
    title = "ADML"
    family = Family.OPTIMIZATION
    summary = "MAML trained on clean and adversarial samples, crossed between the inner and outer loops."
    description = ("ADML, the ADversarial Meta-Learner (Yin, Tang, Xu & Wang, 2018), meta-learns a start that adapts "
                   "well and resists adversarial samples (images changed imperceptibly to fool the network). For each "
                   "task it attacks the support and query images (FGSM or PGD, budget ε), then adapts once on the "
                   "adversarial support set and scores the clean queries, and once on the clean support set and "
                   "scores the adversarial queries; the start learns from both. At test time it adapts on the clean "
                   "support set like MAML; its evaluations also report the accuracy on queries attacked at ε. On "
                   "mini-ImageNet and CIFAR-100 the paper finds it loses little accuracy under attack, where other "
                   "meta-learners lose much, and stays effective on clean images. A meta-step costs about 2.5 of "
                   "MAML's.")
    HParams = ADMLHParams
    kinds = ("classification",)
    recipes = (GLYPHS_DEFAULT, MINI_IMAGENET_PAPER)
    capabilities = frozenset({"embeddings", "adaptation", "evaluation_extras", "training_data"})
    adaptation_steps_hparam = "test_inner_steps"
    gradient_based = True

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.pixels = PixelRange()  # input units until the training data's preprocessing is known

    def attach_training_data(self, dataset, config) -> None:
        """ε is in pixels: the training images' normalization (mean, std) converts it and bounds the samples."""
        self.pixels = PixelRange.of(getattr(dataset, "spec", None))

    def _make_adversarial(self, outputs_fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return attacked(hp.attack, outputs_fn, x, y, hp.epsilon, loss_fn=self.kind.loss, pixels=self.pixels,
                        steps=hp.attack_steps)

    # --- learning ----------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        """One outer update on the mean ADML loss of the tasks; returns it and the accuracy over both branches'
        queries (clean and adversarial)."""
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        hp, kind = self.hparams, self.kind
        losses, outputs, targets = [], [], []
        for episode in episodes:
            episode = episode.to(self.device)
            loss, out = adml_outer_loss(self.model, self.task_params(episode.ways), episode.support_x,
                                        episode.support_y, episode.query_x, episode.query_y, hp.train_inner_steps,
                                        hp.train_inner_lr, self.first_order, self._make_adversarial, kind.loss)
            (loss / len(episodes)).backward()
            losses.append(float(loss.detach()))
            outputs.append(out.detach())
            targets.append(episode.query_y.repeat(2))
        optimizer.step()
        self.step_schedulers()
        return {"loss": sum(losses) / len(losses), kind.metric.key: kind.score(torch.cat(outputs), torch.cat(targets))}

    # --- testing -----------------------------------------------------------------------------------------
    def query_logits(self, adapted, query_x: torch.Tensor) -> torch.Tensor:
        """Differentiable outputs of the adapted network (what ``predict`` turns into probabilities): the input
        gradient attacks follow."""
        return self._logits(adapted["params"], query_x.to(self.device), adapted.get("support_x"))

    def evaluation_extras(self, tasks) -> dict:
        """Accuracy on clean queries and on queries attacked at ε (after adapting on the clean support set), as a
        curve over ε = 0 and ε."""
        hp = self.hparams
        if hp.epsilon <= 0:
            return {}
        return accuracy_against_epsilon(self, tasks, (0.0, hp.epsilon), hp.attack, hp.attack_steps).extras()

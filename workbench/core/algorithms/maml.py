"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017): learn an initialization from which a few
gradient steps on a support set give a good classifier.

The inner loop is functional (``torch.func.functional_call`` over a dict of fast weights), so the
outer gradient flows through the inner updates; second order unless ``first_order`` is set.

The network is a Conv-4 with a linear head and transductive batch norm (``track_running_stats=False``,
as in the paper): every forward pass normalizes with the statistics of its own batch.

Different ways at test time: with the default learned head (one row per training way), a task with
another number of ways starts every class from the mean of the learned rows. A row common to all classes
cancels in the softmax (and in the gradient reaching the features), so this predicts and adapts exactly like
a zero head: the "zero trick" (Kao et al., 2022), equivalent to unicorn-MAML's single shared row (Ye & Chao,
2022). ``head = "zero"`` uses that zero start in training too, so training and testing match at any ways.

Batching the tasks of a meta-batch with ``torch.vmap`` was measured against the Python loop used here
(bench/vmap_inner_loop.py): on CPU it was never faster (1.0-2.3x slower) and its second-order gradient through
batch norm was wrong, so tasks run in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy
from workbench.core.algorithms.functional import (LossFn, Params, detached, forward_with, named_params,
                                                  sgd_inner_loop, sgd_step, sub_params)
from workbench.core.hparams import hparam
from workbench.core.models.conv4 import Conv4Classifier


@dataclass
class InnerLoopHParams:
    """Settings shared by MAML and first-order MAML."""

    hidden: int = hparam(64, "Filters per Conv-4 block.", low=8, high=256)
    train_inner_steps: int = hparam(
        1, "Inner gradient steps on the support set during meta-training; the paper uses 1 for 5-way Omniglot, 5 "
        "for 20-way. More steps make each meta-step slower and, for 5-way Omniglot on a CPU budget, learned "
        "slower too.", low=1, high=20)
    train_inner_lr: float = hparam(0.4, "Inner learning rate during meta-training (0.4 in the paper for Omniglot; "
                                   "about 0.01 for mini-ImageNet).", low=1e-4, high=10.0, log_scale=True)
    test_inner_steps: int = hparam(
        10, "Inner gradient steps when adapting to a test task; more than in training usually helps a little "
              "(the paper uses 3 for Omniglot, 10 for mini-ImageNet).", low=1, high=200)
    test_inner_lr: float = hparam(0.4, "Inner learning rate when adapting to a test task.", low=1e-4, high=10.0,
                                  log_scale=True)
    head: str = hparam(
        "learned", "Start of the classifier head in each task. learned: one meta-learned row per training way "
        "(the original MAML); tasks with other ways start every class from the rows' mean. zero: every task starts "
        "from a zero head (the zero trick, equivalent to unicorn-MAML's shared row), so any number of ways and any "
        "label order start alike.", choices=("learned", "zero"))


@dataclass
class MAMLHParams(InnerLoopHParams):
    first_order: bool = hparam(False, "Drop second derivatives in the meta-gradient (first-order MAML): about "
                               "twice as fast and lighter on memory, usually a little less accurate.")


def maml_outer_loss(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                    query_x: torch.Tensor, query_y: torch.Tensor, steps: int, lr: float,
                    first_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt ``params`` with ``steps`` SGD steps on the support set, then return the query loss and logits.

    The loss is differentiable with respect to ``params``: through the inner updates (second order) or, when
    ``first_order``, through the identity only (the FOMAML approximation).
    """
    fast = sgd_inner_loop(model, params, support_x, support_y, steps, lr, create_graph=not first_order)
    logits = forward_with(model, fast, query_x)
    return F.cross_entropy(logits, query_y), logits


@register
class MAML(Algorithm):
    name = "maml"
    title = "MAML"
    family = Family.OPTIMIZATION
    summary = "Learn an initialization that adapts to a new task in a few gradient steps."
    description = ("Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017) meta-learns the starting weights of "
                   "a Conv-4 classifier. For each training task it takes a few gradient steps on the support set "
                   "(the inner loop), measures the loss of the adapted network on the queries and updates the "
                   "starting weights to lower that loss, differentiating through the inner steps (second order). "
                   "At test time it fine-tunes from the learned start on the support set. Batch norm uses the "
                   "statistics of each batch (transductive), as in the paper. Slower than metric methods: every "
                   "inner step adds a backward pass.")
    HParams = MAMLHParams
    capabilities = frozenset({"embeddings", "adaptation"})
    adaptation_steps_hparam = "test_inner_steps"
    gradient_based = True

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.model = Conv4Classifier(model_spec.ways, model_spec.in_channels, hparams.hidden, model_spec.image_size,
                                     track_running_stats=False).to(self.device)
        if hparams.head == "zero":
            # The module's head is never used; keeping it leaves the checkpoint layout the same for both heads.
            self.model.head.requires_grad_(False)

    @property
    def first_order(self) -> bool:
        return bool(self.hparams.first_order)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    # --- weights for one task ------------------------------------------------------------------------
    def task_params(self, ways: int, detach: bool = False) -> Params:
        """Starting weights for a ``ways``-way task; differentiable back to the model unless ``detach``."""
        params = named_params(self.model, detach=detach)
        weight, bias = self.model.head.weight, self.model.head.bias
        if self.hparams.head == "zero":
            params["head.weight"] = weight.new_zeros(ways, weight.shape[1]).requires_grad_(True)
            params["head.bias"] = bias.new_zeros(ways).requires_grad_(True)
        elif weight.shape[0] != ways:
            # Every class starts from the same row; a common row cancels in the softmax, so this acts as a zero head.
            weight, bias = params["head.weight"], params["head.bias"]
            params["head.weight"] = weight.mean(0, keepdim=True).repeat(ways, 1)
            params["head.bias"] = bias.mean(0, keepdim=True).repeat(ways)
        return params

    # --- learning ----------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        total_loss, total_acc = 0.0, 0.0
        # Backward per task keeps only one task's inner-loop graph in memory.
        for episode in episodes:
            episode = episode.to(self.device)
            loss, logits = maml_outer_loss(self.model, self.task_params(episode.ways), episode.support_x,
                                           episode.support_y, episode.query_x, episode.query_y,
                                           self.hparams.train_inner_steps, self.hparams.train_inner_lr,
                                           self.first_order)
            (loss / len(episodes)).backward()
            total_loss += float(loss.detach()) / len(episodes)
            total_acc += accuracy(logits.detach(), episode.query_y) / len(episodes)
        optimizer.step()
        self.step_schedulers()
        return {"loss": total_loss, "accuracy": total_acc}

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn = F.cross_entropy):
        """Fine-tune from the learned start on the support set; returns the fast weights (detached).
        ``loss_fn`` is the support loss (Meta-Weight-Net's episodic setting passes a weighted one)."""
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        # Adaptation needs gradients even when the caller evaluates under no_grad.
        with torch.enable_grad():
            fast = sgd_inner_loop(self.model, self.task_params(ways, detach=True), support_x, support_y, steps,
                                  self.hparams.test_inner_lr, create_graph=False, loss_fn=loss_fn)
        return {"params": detached(fast), "ways": ways, "support_x": support_x}

    def _logits(self, params: Params, x: torch.Tensor, support_x: torch.Tensor | None) -> torch.Tensor:
        # Transductive batch norm needs a batch: a few queries (a lone image in "try a task") would be normalized
        # by their own statistics, so they ride along with the support set instead.
        if support_x is not None and len(x) < len(support_x):
            return forward_with(self.model, params, torch.cat([support_x, x]))[len(support_x):]
        return forward_with(self.model, params, x)

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.model.eval()
        logits = self._logits(adapted["params"], query_x.to(self.device), adapted.get("support_x"))
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """Penultimate (Conv-4) features, with the adapted weights when ``adapted`` is given."""
        self.model.eval()
        params = adapted["params"] if adapted is not None else named_params(self.model)
        return forward_with(self.model.features, sub_params(params, "features"), x.to(self.device))

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn = F.cross_entropy):
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        query_x, query_y = query_x.to(self.device), query_y.to(self.device)
        params = self.task_params(ways, detach=True)
        trace = []
        with torch.enable_grad():
            for step in range(steps + 1):
                with torch.no_grad():
                    query_logits = self._logits(params, query_x, support_x)
                    query_loss = float(F.cross_entropy(query_logits, query_y))
                if step < steps:
                    new_params, support_loss, _ = sgd_step(self.model, params, support_x, support_y,
                                                           self.hparams.test_inner_lr, create_graph=False,
                                                           loss_fn=loss_fn)
                else:
                    with torch.no_grad():
                        support_loss = loss_fn(forward_with(self.model, params, support_x), support_y)
                trace.append({"step": step, "support_loss": float(support_loss.detach()), "query_loss": query_loss,
                              "query_accuracy": accuracy(query_logits, query_y)})
                if step < steps:
                    params = {name: value.detach().requires_grad_(True) for name, value in new_params.items()}
        return trace

"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, 2020, "Rapid Learning or Feature Reuse? Towards
Understanding the Effectiveness of MAML"): MAML with inner steps on the head only.

The inner loop adapts the final linear layer (``head.weight``, ``head.bias``) on the support set; the body
(``model.features``) is learned in the outer loop only, through the query loss of the adapted head (second order by
default, as in the paper; ``first_order`` drops the inner gradients' derivatives). Since the body does not change
within a task, its features are computed once per set and the inner steps run on the head alone: an inner step
costs a linear layer, not a pass through the Conv-4.

Everything else is MAML's (:class:`~workbench.core.algorithms.maml.MAML`, which this class extends): the network
the kind builds, the head's start for other ways ("learned" rows or the "zero" trick), transductive batch norm
(support and query sets are normalized each by their own statistics), prediction and embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.functional import LossFn, Params, detached, forward_with, sgd_inner_loop, sgd_step, \
    sub_params
from workbench.core.algorithms.maml import MAML, SINE_PAPER, MAMLHParams
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe

BODY, HEAD = "features", "head"


@dataclass
class ANILHParams(MAMLHParams):
    """MAML's settings with the paper's defaults for its Omniglot experiments, which reuse MAML's 20-way settings
    (5 inner steps at 0.1 in training, 10 at test time)."""

    train_inner_steps: int = hparam(
        5, "Inner gradient steps on the head during meta-training (5 in Raghu et al. 2020, MAML's 20-way Omniglot "
        "and mini-ImageNet setting). Cheap: a step updates only the linear head.", low=1, high=50)
    train_inner_lr: float = hparam(0.1, "Inner learning rate of the head during meta-training (0.1 for Omniglot in "
                                   "Raghu et al. 2020; 0.01 for mini-ImageNet).", low=1e-4, high=10.0, log_scale=True)
    test_inner_steps: int = hparam(10, "Inner steps on the head when adapting to a test task (10 in Raghu et al. "
                                   "2020).", low=1, high=200)
    test_inner_lr: float = hparam(0.1, "Inner learning rate of the head when adapting to a test task (0.1 for "
                                  "Omniglot in Raghu et al. 2020).", low=1e-4, high=10.0, log_scale=True)
    first_order: bool = hparam(False, "Drop second derivatives in the meta-gradient: the body then learns from the "
                               "query features only. ANIL's second order is cheap (the inner loop is one linear "
                               "layer), so the paper's second order is the default.")


def anil_outer_loss(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                    query_x: torch.Tensor, query_y: torch.Tensor, steps: int, lr: float, first_order: bool,
                    loss_fn: LossFn = F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt the head of ``params`` with ``steps`` SGD steps on the support features, then return the query loss and
    outputs. The body's weights are used as given (never stepped); the loss is differentiable with respect to all
    of ``params``: through the inner steps (second order) or, when ``first_order``, through the query features and
    the head's start only."""
    body = sub_params(params, BODY)
    support_features = forward_with(model.features, body, support_x)
    if first_order:  # the inner gradients are constants, so the support features need no graph
        support_features = support_features.detach()
    head = sgd_inner_loop(model.head, sub_params(params, HEAD), support_features, support_y, steps, lr,
                          create_graph=not first_order, loss_fn=loss_fn)
    outputs = forward_with(model.head, head, forward_with(model.features, body, query_x))
    return loss_fn(outputs, query_y), outputs


def with_head(params: Params, head: Params) -> Params:
    return {**params, **{f"{HEAD}.{name}": value for name, value in head.items()}}


# Raghu et al. (2020) ran ANIL with MAML's hyperparameters (Finn et al. 2017, 20-way Omniglot: meta-batches of 16,
# 5 inner steps at 0.1, 10 at test time, Adam 1e-3, 60,000 meta-steps).
OMNIGLOT_PAPER = Recipe(
    "paper", "The paper's Omniglot 20-way 1-shot setup (Raghu et al. 2020, with MAML's 20-way hyperparameters): "
    "meta-batches of 16 tasks, 5 inner steps on the head at 0.1, 10 at test time, Adam 1e-3, rotation classes, "
    "60,000 meta-steps. The paper reports ANIL 96.2 ± 0.5% vs MAML 93.7 ± 0.7% (20-way 1-shot) and 98.0 ± 0.3% vs "
    "96.4 ± 0.1% (20-way 5-shot) on Omniglot, 46.7 ± 0.4% vs 46.9 ± 0.2% (5-way 1-shot) and 61.5 ± 0.5% vs 63.1 ± "
    "0.4% (5-way 5-shot) on mini-ImageNet (Table 2): about equal. Days on a CPU.",
    datasets=("omniglot",), dataset={"ways": 20, "shots": 1, "rotations": True},
    training={"meta_batch": 16, "steps": 60_000, "lr": 1e-3, "lr_schedule": "constant", "val_interval": 1000,
              "val_episodes": 200},
    hparams={"train_inner_steps": 5, "train_inner_lr": 0.1, "test_inner_steps": 10, "test_inner_lr": 0.1})
CLASSIFICATION_DEFAULT = Recipe(
    "default", "The declared defaults (the paper's: 5 head steps at 0.1 in training, 10 at test time, second order), "
    "one episode per meta-step, 2,000 steps, cosine schedule.", kind="classification", recommended=True)
SINE = replace(
    SINE_PAPER, help="MAML's sine-regression setup (Finn et al. 2017, section 5.1) applied to ANIL, whose paper has no "
    "regression experiment: an MLP 1-40-40-1 whose last layer alone adapts, K = 10 support and 100 query points, "
    "one inner step at lr 0.01 in training, 10 at test time, Adam 1e-3 over meta-batches of 25 tasks.")


@register
class ANIL(MAML):
    name = "anil"
    title = "ANIL"
    family = Family.OPTIMIZATION
    summary = "MAML whose inner loop adapts only the last layer; the body is learned in the outer loop."
    description = ("ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, 2020), asks whether MAML works by "
                   "rapid learning or by feature reuse, and finds feature reuse: removing the inner loop from every "
                   "layer but the head loses almost nothing. For each task it adapts only the final linear layer by "
                   "a few gradient steps on the support set's features; the body is meta-learned through the query "
                   "loss of the adapted head (second order, cheap here). The paper reports it about equal to MAML "
                   "on Omniglot and mini-ImageNet, and much faster per step.")
    HParams = ANILHParams
    kinds = ("classification", "regression")
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT_PAPER, SINE)
    capabilities = frozenset({"embeddings", "adaptation"})
    adaptation_steps_hparam = "test_inner_steps"
    gradient_based = True

    # --- learning ----------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        """One outer update: the mean query loss of the head-adapted tasks; returns it and the kind's metric."""
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        hp, kind = self.hparams, self.kind
        losses, outputs, targets = [], [], []
        for episode in episodes:
            episode = episode.to(self.device)
            loss, out = anil_outer_loss(self.model, self.task_params(episode.ways), episode.support_x,
                                        episode.support_y, episode.query_x, episode.query_y, hp.train_inner_steps,
                                        hp.train_inner_lr, self.first_order, kind.loss)
            (loss / len(episodes)).backward()
            losses.append(float(loss.detach()))
            outputs.append(out.detach())
            targets.append(episode.query_y)
        optimizer.step()
        self.step_schedulers()
        return {"loss": sum(losses) / len(losses), kind.metric.key: kind.score(torch.cat(outputs), torch.cat(targets))}

    def _support_features(self, params: Params, support_x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return forward_with(self.model.features, sub_params(params, BODY), support_x)

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn | None = None):
        """Fine-tune the head from the learned start on the support set's features; the body stays as learned.
        Returns all the weights (detached)."""
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        params = self.task_params(ways, detach=True)
        features = self._support_features(params, support_x)
        with torch.enable_grad():  # adaptation needs gradients even when the caller evaluates under no_grad
            head = sgd_inner_loop(self.model.head, sub_params(params, HEAD), features, support_y, steps,
                                  self.hparams.test_inner_lr, create_graph=False, loss_fn=loss_fn or self.kind.loss)
        return {"params": detached(with_head(params, head)), "ways": ways, "support_x": support_x}

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn | None = None):
        """Per inner step on the head (0 = the learned start): support loss, query loss and metric."""
        self.model.eval()
        kind = self.kind
        loss_fn = loss_fn or kind.loss
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        query_x, query_y = query_x.to(self.device), query_y.to(self.device)
        params = self.task_params(ways, detach=True)
        features = self._support_features(params, support_x)
        head = sub_params(params, HEAD)
        trace = []
        for step in range(steps + 1):
            with torch.no_grad():
                query_outputs = self._logits(with_head(params, head), query_x, support_x)
                support_loss = loss_fn(forward_with(self.model.head, head, features), support_y)
            trace.append({"step": step, "support_loss": float(support_loss),
                          "query_loss": float(kind.loss(query_outputs, query_y)),
                          f"query_{kind.metric.key}": kind.score(query_outputs, query_y)})
            if step < steps:
                with torch.enable_grad():
                    head, _, _ = sgd_step(self.model.head, head, features, support_y, self.hparams.test_inner_lr,
                                          create_graph=False, loss_fn=loss_fn)
                head = {name: value.detach().requires_grad_(True) for name, value in head.items()}
        return trace

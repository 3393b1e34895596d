"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017): learn an initialization from which a few
gradient steps on a support set give a good model for the task.

The kind (``self.kind``) supplies the network, the loss and the metric, so this one implementation serves
few-shot classification (a Conv-4 with a class head, cross-entropy, accuracy) and few-shot regression (an MLP with
one output, MSE) alike.

The inner loop is functional (``torch.func.functional_call`` over a dict of fast weights), so the
outer gradient flows through the inner updates; second order unless ``first_order`` is set.

For images the network is a Conv-4 with a linear head and transductive batch norm (``track_running_stats=False``,
as in the paper): every forward pass normalizes with the statistics of its own batch.

Different ways at test time: with the default learned head (one row per training way), a task with
another number of ways starts every class from the mean of the learned rows. A row common to all classes
cancels in the softmax (and in the gradient reaching the features), so this predicts and adapts exactly like
a zero head: the "zero trick" (Kao et al., 2022), equivalent to unicorn-MAML's single shared row (Ye & Chao,
2022). ``head = "zero"`` uses that zero start in training too, so training and testing match at any ways.

Batching the tasks of a meta-batch with ``torch.vmap`` was measured against a Python loop over tasks
(bench/vmap_inner_loop.py): for Conv-4 on CPU it was never faster (1.0-2.3x slower) and its second-order gradient
through batch norm was wrong, so image tasks run in a loop, one backward each. Small tasks of a network without
batch norm (the sine toy's MLP) go through ``torch.vmap`` together: the same gradient, 4.6x the meta-steps per
second (:func:`vmapped_outer_losses`, :func:`task_groups`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.algorithms.functional import (LossFn, Params, detached, forward_with, named_params,
                                                  sgd_inner_loop, sgd_step, sub_params)
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe


@dataclass
class InnerLoopHParams:
    """Settings shared by MAML and first-order MAML."""

    hidden: int = hparam(64, "Filters per Conv-4 block (images), or units per hidden layer of the MLP "
                         "(regression: 40 in the paper).", low=8, high=256)
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
                    first_order: bool, loss_fn: LossFn = F.cross_entropy) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt ``params`` with ``steps`` SGD steps on the support set, then return the query loss and outputs.

    The loss is differentiable with respect to ``params``: through the inner updates (second order) or, when
    ``first_order``, through the identity only (the FOMAML approximation).
    """
    fast = sgd_inner_loop(model, params, support_x, support_y, steps, lr, create_graph=not first_order,
                          loss_fn=loss_fn)
    outputs = forward_with(model, fast, query_x)
    return loss_fn(outputs, query_y), outputs


def vmapped_outer_losses(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                         query_x: torch.Tensor, query_y: torch.Tensor, steps: int, lr: float, first_order: bool,
                         loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`maml_outer_loss` for equally shaped tasks stacked on a first dimension, batched with ``torch.vmap``
    (the inner gradients through ``torch.func.grad``): query losses [tasks] and outputs [tasks, queries, ...].

    The same gradient as the loop (tests/test_regression.py checks it in float64) and, for the sine toy's MLP, 4.6x
    the meta-steps per second. Not for batch norm: its vmapped second-order gradient is wrong, and on Conv-4 the
    loop was faster anyway (bench/vmap_inner_loop.py).
    """
    trainable = [name for name, value in params.items() if value.requires_grad]

    def one_task(start: Params, sx, sy, qx, qy):
        fast = start
        for _ in range(steps):
            def support_loss(chosen: Params, weights: Params = fast) -> torch.Tensor:
                return loss_fn(forward_with(model, {**weights, **chosen}, sx), sy)

            grads = torch.func.grad(support_loss)({name: fast[name] for name in trainable})
            # First order: the inner gradient is a constant, as with create_graph=False in the loop.
            fast = {**fast, **{name: fast[name] - lr * (grads[name].detach() if first_order else grads[name])
                               for name in trainable}}
        outputs = forward_with(model, fast, qx)
        return loss_fn(outputs, qy), outputs

    return torch.vmap(one_task, in_dims=(None, 0, 0, 0, 0))(params, support_x, support_y, query_x, query_y)


# A meta-batch is backpropagated in groups of equally shaped tasks of at most this many input values. An image task
# is larger, so it goes alone and only one task's inner-loop graph is in memory at a time; the small tasks of the
# sine toy go together (and through torch.vmap), as one backward per task cost a fifth of a meta-step there.
BACKWARD_GROUP_VALUES = 4096
TASK_FIELDS = ("support_x", "support_y", "query_x", "query_y")


def task_values(episode) -> int:
    return episode.support_x.numel() + episode.query_x.numel()


def task_groups(episodes: list) -> list[list]:
    """Consecutive tasks of equal shapes and ways, at most BACKWARD_GROUP_VALUES input values per group."""
    groups: list[list] = []
    values = 0
    for episode in episodes:
        size = task_values(episode)
        first = groups[-1][0] if groups else None
        if first is not None and values + size <= BACKWARD_GROUP_VALUES and first.ways == episode.ways and all(
                getattr(first, name).shape == getattr(episode, name).shape for name in TASK_FIELDS):
            groups[-1].append(episode)
            values += size
        else:
            groups.append([episode])
            values = size
    return groups


# The sine-regression setup of Finn et al. (2017, section 5.1): MLP 1-40-40-1, inner lr 0.01, one inner step
# in training, Adam 1e-3 over meta-batches of 25 tasks (first-order MAML uses the same, as in the paper).
SINE_PAPER = Recipe(
    "paper", "The paper's sine-regression setup (Finn et al. 2017, section 5.1): an MLP 1-40-40-1, K = 10 "
    "support and 100 query points, one inner step at lr 0.01 in training, 10 at test time, Adam 1e-3 over "
    "meta-batches of 25 tasks at a constant rate, for the paper's 70,000 steps (or a time budget). One CPU "
    "thread: a network this small only loses time to more.", kind="regression", datasets=("sine",),
    recommended=True, dataset={"shots": 10, "queries": 100},
    training={"meta_batch": 25, "lr": 1e-3, "lr_schedule": "constant", "steps": 70_000, "threads": 1,
              "val_interval": 5000, "val_episodes": 100, "checkpoint_interval": 5000},
    hparams={"hidden": 40, "head": "learned", "train_inner_lr": 0.01, "test_inner_lr": 0.01,
             "train_inner_steps": 1, "test_inner_steps": 10})
# Every algorithm has a recipe for the built-in images; this one keeps the declared defaults.
CLASSIFICATION_DEFAULT = Recipe("default", "The declared defaults: one episode per meta-step, 2,000 steps, cosine "
                                "schedule. On the built-in glyphs MAML reaches 76% (5-way 1-shot) after 300 steps.",
                                kind="classification", recommended=True)
# Tuned here for a 20-minute CPU budget on Omniglot (bench/omniglot_time_to_accuracy.py).
OMNIGLOT_20MIN = Recipe(
    "omniglot-20min", "Tuned here for 20 CPU minutes on Omniglot: meta-batches of 4 tasks, one inner step at 0.4, "
    "rotation classes (x4), constant outer rate, up to 4,000 steps or the time budget. 95.3% (5-way 1-shot, Lake "
    "split) after 1,200 s on the reference machine.", datasets=("omniglot",), recommended=True,
    dataset={"rotations": True},
    training={"meta_batch": 4, "steps": 4000, "lr_schedule": "constant", "val_interval": 500, "val_episodes": 200})
OMNIGLOT_PAPER = Recipe(
    "paper", "The paper's Omniglot setup (Finn et al. 2017): 5-way 1-shot, meta-batches of 32 tasks, one inner "
    "step at 0.4 in training and 3 at test time, Adam 1e-3, rotation classes, 60,000 meta-steps. The paper "
    "reports 98.7% (Vinyals split); days on a CPU.", datasets=("omniglot",), dataset={"rotations": True},
    training={"meta_batch": 32, "steps": 60_000, "lr_schedule": "constant", "val_interval": 1000,
              "val_episodes": 200},
    hparams={"train_inner_steps": 1, "train_inner_lr": 0.4, "test_inner_steps": 3, "test_inner_lr": 0.4})


@register
class MAML(Algorithm):
    name = "maml"
    title = "MAML"
    family = Family.OPTIMIZATION
    summary = "Learn an initialization that adapts to a new task in a few gradient steps."
    description = ("Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017) meta-learns the starting weights of "
                   "a network: a Conv-4 classifier for images, an MLP for regression. For each training task it "
                   "takes a few gradient steps on the support set (the inner loop), measures the loss of the "
                   "adapted network on the queries and updates the starting weights to lower that loss, "
                   "differentiating through the inner steps (second order). At test time it fine-tunes from the "
                   "learned start on the support set. Batch norm uses the statistics of each batch (transductive), "
                   "as in the paper. Slower than metric methods: every inner step adds a backward pass.")
    HParams = MAMLHParams
    kinds = ("classification", "regression")
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT_20MIN, OMNIGLOT_PAPER, SINE_PAPER)
    capabilities = frozenset({"embeddings", "adaptation"})
    adaptation_steps_hparam = "test_inner_steps"
    gradient_based = True

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.model = self.kind.build_network(model_spec, hparams.hidden, running_stats=False).to(self.device)
        # Tasks of a group go through torch.vmap unless batch norm is in the network (see vmapped_outer_losses).
        self._vmap_tasks = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
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
        outputs = self.kind.output_size(ways)
        if self.hparams.head == "zero":
            params["head.weight"] = weight.new_zeros(outputs, weight.shape[1]).requires_grad_(True)
            params["head.bias"] = bias.new_zeros(outputs).requires_grad_(True)
        elif weight.shape[0] != outputs:
            # Every class starts from the same row; a common row cancels in the softmax, so this acts as a zero head.
            weight, bias = params["head.weight"], params["head.bias"]
            params["head.weight"] = weight.mean(0, keepdim=True).repeat(outputs, 1)
            params["head.bias"] = bias.mean(0, keepdim=True).repeat(outputs)
        return params

    # --- learning ----------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        """One outer update; returns the query loss and the kind's metric ("accuracy", "mse") over the tasks."""
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        episodes = [episode.to(self.device) for episode in episodes]
        losses, outputs = [], []
        for group in task_groups(episodes):
            group_losses, group_outputs = self._group_losses(group)
            (group_losses.sum() / len(episodes)).backward()
            losses.append(group_losses.detach())
            outputs.append(group_outputs.detach())
        optimizer.step()
        self.step_schedulers()
        # One score over all the queries: the tasks of a batch have as many queries each, so it is the mean over
        # tasks, at the cost of one call (and one synchronizing read on a GPU) instead of one per task.
        score = self.kind.score(torch.cat(outputs), torch.cat([episode.query_y for episode in episodes]))
        return {"loss": float(torch.cat(losses).mean()), self.kind.metric.key: score}

    def _group_losses(self, group: list) -> tuple[torch.Tensor, torch.Tensor]:
        """Query losses [tasks] and outputs [all queries, ...] of a group of equally shaped tasks, under one set of
        starting weights: vmapped over the tasks where the network allows it, else task by task."""
        hp, kind = self.hparams, self.kind
        params = self.task_params(group[0].ways)
        if len(group) > 1 and self._vmap_tasks:
            fields = [torch.stack([getattr(e, name) for e in group]) for name in TASK_FIELDS]
            try:
                losses, outputs = vmapped_outer_losses(self.model, params, *fields, hp.train_inner_steps,
                                                       hp.train_inner_lr, self.first_order, kind.loss)
                return losses, outputs.flatten(0, 1)
            except (RuntimeError, NotImplementedError) as error:  # e.g. a plugin kind's loss torch.vmap cannot batch
                warnings.warn(f"{self.name}: tasks run one by one, torch.vmap failed ({error})", stacklevel=2)
                self._vmap_tasks = False
        results = [maml_outer_loss(self.model, params, e.support_x, e.support_y, e.query_x, e.query_y,
                                   hp.train_inner_steps, hp.train_inner_lr, self.first_order, kind.loss)
                   for e in group]
        return torch.stack([loss for loss, _ in results]), torch.cat([out for _, out in results])

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn | None = None):
        """Fine-tune from the learned start on the support set; returns the fast weights (detached).
        ``loss_fn`` is the support loss: the kind's by default (Meta-Weight-Net's episodic setting passes a
        weighted one)."""
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        # Adaptation needs gradients even when the caller evaluates under no_grad.
        with torch.enable_grad():
            fast = sgd_inner_loop(self.model, self.task_params(ways, detach=True), support_x, support_y, steps,
                                  self.hparams.test_inner_lr, create_graph=False, loss_fn=loss_fn or self.kind.loss)
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
        return self.kind.predictions(self._logits(adapted["params"], query_x.to(self.device),
                                                  adapted.get("support_x")))

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """Penultimate (Conv-4) features, with the adapted weights when ``adapted`` is given."""
        self.model.eval()
        params = adapted["params"] if adapted is not None else named_params(self.model)
        return forward_with(self.model.features, sub_params(params, "features"), x.to(self.device))

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn | None = None):
        self.model.eval()
        kind = self.kind
        loss_fn = loss_fn or kind.loss
        metric = f"query_{kind.metric.key}"
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        query_x, query_y = query_x.to(self.device), query_y.to(self.device)
        params = self.task_params(ways, detach=True)
        trace = []
        with torch.enable_grad():
            for step in range(steps + 1):
                with torch.no_grad():
                    query_logits = self._logits(params, query_x, support_x)
                    query_loss = float(kind.loss(query_logits, query_y))
                if step < steps:
                    new_params, support_loss, _ = sgd_step(self.model, params, support_x, support_y,
                                                           self.hparams.test_inner_lr, create_graph=False,
                                                           loss_fn=loss_fn)
                else:
                    with torch.no_grad():
                        support_loss = loss_fn(forward_with(self.model, params, support_x), support_y)
                trace.append({"step": step, "support_loss": float(support_loss.detach()), "query_loss": query_loss,
                              metric: kind.score(query_logits, query_y)})
                if step < steps:
                    params = {name: value.detach().requires_grad_(True) for name, value in new_params.items()}
        return trace

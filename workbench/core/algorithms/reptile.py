"""Reptile (Nichol, Achiam & Schulman, 2018, "On First-Order Meta-Learning Algorithms"): train on a task with a few
steps of SGD or Adam, then move the initialization toward the trained weights.

For each task of a meta-batch, the fast weights phi start from the learned weights theta and take k steps over
mini-batches of the task's data. The batched version (the paper's Algorithm 2, used in its experiments) then moves
theta <- theta + eps * mean_i(phi_i - theta); the serial version (Algorithm 1) moves theta <- theta + eps * (phi -
theta) after each task, so the next task starts from the moved weights. eps anneals linearly to 0 over training, as
in the paper's runs, following the schedule clock (the planned steps or the time budget, whichever is further).

The outer update is plain SGD on the pseudo-gradient theta - phi with learning rate eps (exactly the update above),
so the trainer's optimizer machinery (checkpointed state, the lr shown in the curves) carries it; Reptile has no
outer Adam, so ``training.lr`` and ``training.lr_schedule`` are not used (``outer_step`` and ``outer_anneal`` are).

Classification tasks train on the support and query sets together: Reptile has no query loss, and the paper's
training tasks are simply ``train_shots`` labelled examples per class (10 for Omniglot 1-shot), so every labelled
example of the episode is training data. Test-time adaptation uses the support set only. The network, the head and
its start for other ways ("learned" rows or the "zero" trick) and transductive batch norm are MAML's
(:class:`~workbench.core.algorithms.maml.MAML`, which this class extends).

The inner Adam uses beta1 = 0, as the paper's code does (supervised_reptile/models.py), with fresh moments for each
task; the paper's code kept Adam's moments across tasks. Test-time mini-batches are drawn with a fixed seed, so
adapting twice to a support set gives the same weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.functional import LossFn, Params, detached, forward_with
from workbench.core.algorithms.maml import MAML
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe

ADAM_BETAS = (0.0, 0.999)  # the paper's code: tf.train.AdamOptimizer(beta1=0)
ADAPT_SEED = 0  # test-time mini-batch order, so adaptation is repeatable


@dataclass
class ReptileHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block (images: 64 in the paper), or units per hidden layer of the "
                         "MLP (regression: 64 in the paper's sine demo).", low=8, high=256)
    inner_optimizer: str = hparam(
        "adam", "Optimizer of the inner loop (training and test-time adaptation). adam: Adam with beta1 = 0 and fresh "
        "moments per task, as in the paper's few-shot classification (Nichol et al. 2018); sgd: plain gradient "
        "steps, as in its sine-regression demo.", choices=("adam", "sgd"))
    inner_lr: float = hparam(0.001, "Inner learning rate (Adam step size 0.001 for Omniglot 5-way in Nichol et al. "
                             "2018; SGD 0.02 in its sine demo).", low=1e-5, high=10.0, log_scale=True)
    train_inner_steps: int = hparam(5, "Inner steps per training task (5 for Omniglot 5-way in Nichol et al. "
                                    "2018).", low=1, high=100)
    train_inner_batch: int = hparam(10, "Examples per inner step during training, drawn without replacement from "
                                    "the task's support and query examples (10 in Nichol et al. 2018); 0: all of "
                                    "them.", low=0, high=1000)
    test_inner_steps: int = hparam(50, "Inner steps when adapting to a test task's support set (50 for Omniglot in "
                                   "Nichol et al. 2018).", low=1, high=500)
    test_inner_batch: int = hparam(5, "Support examples per test-time inner step (5 in Nichol et al. 2018: the whole "
                                   "support set of a 5-way 1-shot task); 0: the whole support set.", low=0, high=1000)
    outer_step: float = hparam(
        1.0, "Outer step size eps: the initialization moves eps of the way toward the task-trained weights (1.0 for "
        "Omniglot in Nichol et al. 2018, 0.1 in its sine demo). Reptile has no outer Adam: training.lr and "
        "training.lr_schedule are not used.", low=1e-4, high=1.0, log_scale=True)
    outer_anneal: str = hparam(
        "linear", "Schedule of the outer step over training (the planned steps or the time budget): linear down to 0 "
        "as in Nichol et al. 2018, or constant.", choices=("linear", "constant"))
    outer_update: str = hparam(
        "batched", "batched: average the moves of the meta-batch's tasks into one update (the paper's Algorithm 2, "
        "used in its experiments); serial: move after each task, the next task starting from the moved weights "
        "(Algorithm 1).", choices=("batched", "serial"))
    head: str = hparam(
        "learned", "Start of the classifier head in each task. learned: one meta-learned row per training way, as in "
        "the paper; tasks with other ways start every class from the rows' mean. zero: every task starts from a "
        "zero head (the zero trick), so any number of ways starts alike.", choices=("learned", "zero"))


def mini_batches(count: int, batch: int, steps: int, generator: torch.Generator | None = None) -> list:
    """Row indexes of ``steps`` mini-batches of ``batch`` examples out of ``count``: consecutive slices of reshuffled
    orders, so each example comes once per pass (the paper's sampling). None: the whole set at every step."""
    if batch <= 0 or batch >= count:
        return [None] * steps
    passes = math.ceil(steps * batch / count)
    order = torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


class InnerLoop:
    """Fast weights trained by SGD or Adam (torch.optim on cloned leaves), one step at a time. The starting weights
    are never modified; only those that require grad are trained."""

    def __init__(self, model: nn.Module, start: Params, optimizer: str, lr: float, loss_fn: LossFn):
        self.model, self.loss_fn = model, loss_fn
        self.weights = {name: value.detach().clone().requires_grad_(value.requires_grad)
                        for name, value in start.items()}
        trained = [value for value in self.weights.values() if value.requires_grad]
        self.optimizer = (torch.optim.Adam(trained, lr=lr, betas=ADAM_BETAS) if optimizer == "adam"
                          else torch.optim.SGD(trained, lr=lr))

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """One step on (x, y); returns the loss before it and the outputs (detached)."""
        with torch.enable_grad():
            outputs = forward_with(self.model, self.weights, x)
            loss = self.loss_fn(outputs, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach()), outputs.detach()

    def run(self, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int,
            generator: torch.Generator | None = None) -> tuple[float, torch.Tensor, torch.Tensor]:
        """``steps`` steps over mini-batches; the last step's loss, outputs and targets."""
        loss, outputs, targets = float("nan"), y[:0], y[:0]
        for rows in mini_batches(len(x), batch, steps, generator):
            bx, targets = (x, y) if rows is None else (x[rows.to(x.device)], y[rows.to(y.device)])
            loss, outputs = self.step(bx, targets)
        return loss, outputs, targets


def task_data(episode) -> tuple[torch.Tensor, torch.Tensor]:
    """A training task's examples: support and query together (see the module docstring)."""
    return torch.cat([episode.support_x, episode.query_x]), torch.cat([episode.support_y, episode.query_y])


def add_pseudo_gradient(start: Params, trained: Params, weight: float) -> None:
    """Accumulate ``weight * (start - trained)`` into the gradients of the model weights ``start`` came from.
    Where the start is the model's weight itself this is exactly that difference; a derived start (the mean row of
    a learned head for other ways) passes it back through its derivation by the chain rule."""
    pairs = [(value, weight * (value.detach() - trained[name].detach())) for name, value in start.items()
             if value.requires_grad]
    torch.autograd.backward([value for value, _ in pairs], [move for _, move in pairs])


# Nichol et al. (2018), openai/supervised-reptile README (archived), "transductive 1-shot 5-way Omniglot": Adam
# 0.001 (beta1 = 0), inner batch 10, 5 inner iterations, 10 training shots, outer step 1 -> 0, meta-batch 5, 100,000
# iterations, 50 test iterations on batches of 5; random 1,200 training characters with rotations.
OMNIGLOT_PAPER = Recipe(
    "paper", "The paper's transductive Omniglot 5-way 1-shot setup (Nichol et al. 2018; commands in the "
    "openai/supervised-reptile README): training tasks of 10 examples per class (5 support + 5 query here, trained on "
    "together), 5 Adam steps (lr 0.001, beta1 0) on batches of 10, outer step 1.0 annealed linearly to 0, "
    "meta-batches of 5, 100,000 meta-steps, 50 test steps on the support set; 1,200 training characters with "
    "rotations. The paper reports 97.68 ± 0.04% (Table 1, with transduction); days on a CPU.",
    datasets=("omniglot",), dataset={"ways": 5, "shots": 1, "rotations": True, "split": "vinyals"},
    training={"meta_batch": 5, "train_shots": 5, "train_queries": 5, "steps": 100_000, "val_interval": 2000,
              "val_episodes": 200, "checkpoint_interval": 2000},
    hparams={"inner_optimizer": "adam", "inner_lr": 0.001, "train_inner_steps": 5, "train_inner_batch": 10,
             "test_inner_steps": 50, "test_inner_batch": 5, "outer_step": 1.0, "outer_anneal": "linear",
             "outer_update": "batched"})
CLASSIFICATION_DEFAULT = Recipe(
    "default", "The declared defaults (the paper's Omniglot settings: 5 Adam steps on batches of 10, outer step 1.0 "
    "annealed to 0, 50 test steps) with meta-batches of 5 tasks, 2,000 steps.", kind="classification",
    recommended=True, training={"meta_batch": 5})
# The sine demo that accompanies the paper (gist joschu/f503500cda64f2ce87c8288906b09e2d, linked from the OpenAI
# Reptile post): MLP 1-64-64-1, 50 points per task, one pass of SGD at 0.02 in batches of 10 (5 steps), outer step
# 0.1 annealed linearly to 0, one task per meta-step, 30,000 meta-steps, 32 SGD steps on 10 points to adapt.
SINE_DEMO = Recipe(
    "paper", "The sine-regression demo of Nichol et al. (2018) (the code linked from the OpenAI Reptile post): an MLP "
    "1-64-64-1 (ReLU, as the paper), tasks of 50 points (10 support + 40 query here) trained by one pass of SGD at "
    "0.02 in batches of 10, outer step 0.1 annealed linearly to 0, one task per meta-step, 30,000 meta-steps; "
    "32 SGD steps on the 10 support points to adapt. One CPU thread.", kind="regression", datasets=("sine",),
    recommended=True, dataset={"shots": 10, "queries": 100},
    training={"meta_batch": 1, "train_queries": 40, "steps": 30_000, "threads": 1, "val_interval": 2000,
              "val_episodes": 100, "checkpoint_interval": 5000},
    hparams={"hidden": 64, "head": "learned", "inner_optimizer": "sgd", "inner_lr": 0.02, "train_inner_steps": 5,
             "train_inner_batch": 10, "test_inner_steps": 32, "test_inner_batch": 0, "outer_step": 0.1,
             "outer_anneal": "linear", "outer_update": "serial"})


@register
class Reptile(MAML):
    name = "reptile"
    title = "Reptile"
    family = Family.OPTIMIZATION
    summary = "Train on each task for a few steps, then move the initialization toward the trained weights."
    description = ("Reptile (Nichol, Achiam & Schulman, 2018) meta-learns the starting weights of a network without "
                   "differentiating through the inner loop: for each training task it copies the weights, trains "
                   "them for a few steps of Adam or SGD on the task's examples (support and query together), then "
                   "moves the starting weights a fraction eps of the way toward the trained ones (averaged over a "
                   "meta-batch, or task after task). eps anneals linearly to 0. At test time it fine-tunes from the "
                   "learned start on the support set, like MAML. First-order and cheap per step; it has no outer "
                   "Adam, so training.lr is not used: outer_step is its outer step size.")
    HParams = ReptileHParams
    kinds = ("classification", "regression")
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT_PAPER, SINE_DEMO)
    capabilities = frozenset({"embeddings", "adaptation"})
    adaptation_steps_hparam = "test_inner_steps"
    unused_training_fields = ("lr", "lr_schedule")  # its outer step is outer_step, annealed by outer_anneal
    gradient_based = True

    @property
    def first_order(self) -> bool:
        return True

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        """Plain SGD at the outer step eps on the pseudo-gradient theta - phi; ``lr`` and ``schedule``
        (training.lr, training.lr_schedule) are not used. eps follows the schedule clock."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.hparams.outer_step)
        clock = self.schedule_clock
        clock.total_steps = total_steps
        anneal = self.hparams.outer_anneal == "linear"
        self.optimizers = [optimizer]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 1.0 - clock.fraction(step) if anneal else 1.0)]

    @property
    def outer_step_now(self) -> float:
        """The current eps."""
        return float(self.optimizers[0].param_groups[0]["lr"])

    # --- learning ----------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        """One outer update over the tasks; returns the last inner step's loss and metric, averaged over tasks."""
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        serial = self.hparams.outer_update == "serial"
        losses, scores = [], []
        for episode in episodes:
            episode = episode.to(self.device)
            start = self.task_params(episode.ways)
            x, y = task_data(episode)
            loop = InnerLoop(self.model, start, self.hparams.inner_optimizer, self.hparams.inner_lr, self.kind.loss)
            loss, outputs, targets = loop.run(x, y, self.hparams.train_inner_steps, self.hparams.train_inner_batch)
            add_pseudo_gradient(start, loop.weights, 1.0 if serial else 1.0 / len(episodes))
            if serial:  # the next task starts from the moved weights
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(loss)
            scores.append(self.kind.score(outputs, targets))
        if not serial:
            optimizer.step()
        self.step_schedulers()
        return {"loss": sum(losses) / len(losses), self.kind.metric.key: sum(scores) / len(scores)}

    def _test_loop(self, ways: int, loss_fn: LossFn | None) -> InnerLoop:
        return InnerLoop(self.model, self.task_params(ways, detach=True), self.hparams.inner_optimizer,
                         self.hparams.inner_lr, loss_fn or self.kind.loss)

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn | None = None):
        """Fine-tune from the learned start on the support set (the inner optimizer, test-time batches); returns the
        fast weights (detached)."""
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        loop = self._test_loop(ways, loss_fn)
        loop.run(support_x, support_y, steps, self.hparams.test_inner_batch,
                 torch.Generator().manual_seed(ADAPT_SEED))
        return {"params": detached(loop.weights), "ways": ways, "support_x": support_x}

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn | None = None):
        """Per test-time step (0 = the learned start): the whole support set's loss, the query loss and metric.
        The steps are those of :meth:`adapt`, so the trace ends where it does."""
        self.model.eval()
        kind = self.kind
        loss_fn = loss_fn or kind.loss
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        query_x, query_y = query_x.to(self.device), query_y.to(self.device)
        loop = self._test_loop(ways, loss_fn)
        batches = mini_batches(len(support_x), self.hparams.test_inner_batch, steps,
                               torch.Generator().manual_seed(ADAPT_SEED))
        trace = []
        for step in range(steps + 1):
            with torch.no_grad():
                query_outputs = self._logits(loop.weights, query_x, support_x)
                support_loss = loss_fn(forward_with(self.model, loop.weights, support_x), support_y)
            trace.append({"step": step, "support_loss": float(support_loss), "query_loss":
                          float(kind.loss(query_outputs, query_y)),
                          f"query_{kind.metric.key}": kind.score(query_outputs, query_y)})
            if step < steps:
                rows = batches[step]
                if rows is None:
                    loop.step(support_x, support_y)
                else:
                    rows = rows.to(self.device)
                    loop.step(support_x[rows], support_y[rows])
        return trace

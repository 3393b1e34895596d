"""MAML++ (Antoniou, Edwards & Storkey, 2019, "How to train your MAML", ICLR; arXiv:1810.09502): MAML with the
paper's fixes for stable, faster training.

- LSLR: a learned inner learning rate per adapted weight tensor ("layer") and per inner step, all starting at 0.1
  (the authors' Omniglot configs, AntreasAntoniou/HowToTrainYourMAMLPytorch).
- MSL, the multi-step loss: the query loss after every inner step counts, with per-step importance weights that
  start equal and are annealed toward the last step over the first part of training, after which only the last
  step counts (the authors' ``get_per_step_loss_importance_vector``, here over a fraction of training).
- DA, derivative-order annealing: first-order meta-gradients for the first part of training, second order after.
- BNWB + BNRS: batch norm with its own gamma/beta and its own running statistics for every inner step.
- CA: cosine annealing of the outer learning rate, the trainer's ``lr_schedule = "cosine"``.

Schedules follow the trainer's schedule clock (the fraction of the planned steps or of the time budget), counted by
``meta_steps`` in the checkpoint, so a resumed run continues them.

Per-step batch norm: the network's weights after k inner steps meet the batch-norm parameters and statistics of step
k (support and queries alike), so there is one set more than training steps; tasks adapted for longer than training
reuse the last set (and the last learned rate). The authors' code normalizes with batch statistics even at test time
(transductive, as MAML) and only records the running statistics; ``bn_statistics = "running"`` normalizes test
tasks with the per-step running statistics instead, as the paper describes. Batch-norm gamma/beta are meta-learned
only, not adapted in the inner loop (the authors' ``enable_inner_loop_optimizable_bn_params = false``).

Paper numbers (Antoniou et al. 2019, as listed by Papers with Code): Omniglot 5-way 1-shot 99.47%, 20-way 1-shot
97.65%, 20-way 5-shot 99.33%; mini-ImageNet 5-way 1-shot 52.40%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.algorithms.functional import LossFn, Params, detached, sub_params
from workbench.core.algorithms.maml import MAML
from workbench.core.algorithms.meta_sgd import rate_key, scaled_sgd_step, trace_inner_loop
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.models.conv4 import conv4_feature_dim, to_channels_last
from workbench.core.precision import backbone_autocast
from workbench.core.recipes import Recipe


# --- the network: Conv-4 with per-step batch norm -----------------------------------------------------------------
class PerStepBatchNorm(nn.Module):
    """Batch norm with gamma/beta and running statistics for each inner step ([steps, channels] each); step k uses
    row k (the last row beyond). Training normalizes with the batch and updates that step's running statistics;
    evaluation uses the batch too (transductive) unless ``use_running_statistics``."""

    def __init__(self, channels: int, steps: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(steps, channels))
        self.bias = nn.Parameter(torch.zeros(steps, channels))
        self.register_buffer("running_mean", torch.zeros(steps, channels))
        self.register_buffer("running_var", torch.ones(steps, channels))
        self.momentum, self.eps = momentum, eps
        self.use_running_statistics = False

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        step = min(step, self.weight.shape[0] - 1)
        if self.training or self.use_running_statistics:
            mean, var = self.running_mean[step], self.running_var[step]
        else:  # batch statistics, leaving the running ones untouched
            mean = var = None
        batch_statistics = self.training or not self.use_running_statistics
        return F.batch_norm(x, mean, var, self.weight[step], self.bias[step], batch_statistics, self.momentum,
                            self.eps)


class PerStepConv4(nn.Module):
    """Conv-4 (3x3 conv without bias, per-step batch norm, ReLU, 2x2 max-pool; x4) whose normalization depends on
    the inner step."""

    def __init__(self, in_channels: int, hidden: int, image_size: int, steps: int):
        super().__init__()
        widths = [in_channels, hidden, hidden, hidden, hidden]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(PerStepBatchNorm(hidden, steps) for _ in range(4))
        self.out_dim = conv4_feature_dim(image_size, hidden)

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        with backbone_autocast(x):
            features = to_channels_last(x)
            for conv, norm in zip(self.convs, self.norms):
                # Pooling before the ReLU gives the same values (max-pool commutes with a monotonic function).
                features = F.relu(F.max_pool2d(norm(conv(features), step), 2))
        return features.flatten(1).to(x.dtype)


class PerStepConv4Classifier(nn.Module):
    """The MAML++ network: :class:`PerStepConv4` features and a linear head; ``forward(x, step)``."""

    def __init__(self, ways: int, in_channels: int, hidden: int, image_size: int, steps: int):
        super().__init__()
        self.features = PerStepConv4(in_channels, hidden, image_size, steps)
        self.head = nn.Linear(self.features.out_dim, ways)

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.head(self.features(x, step))


def forward_at(model: nn.Module, params: Params, x: torch.Tensor, step: int) -> torch.Tensor:
    """The network with weights ``params`` and the batch norm of inner step ``step``."""
    return functional_call(model, params, (x,), {"step": step})


# --- the learned rates, the schedules ------------------------------------------------------------------------------
class InnerLoopState(nn.Module):
    """LSLR's rates, one per adapted weight tensor and inner step, and the count of meta-steps the MSL and DA
    schedules follow (both checkpointed)."""

    def __init__(self, names: list[str], steps: int, init: float, learnable: bool):
        super().__init__()
        self.lrs = nn.ParameterDict({rate_key(name): nn.Parameter(torch.full((steps,), float(init)),
                                                                  requires_grad=learnable) for name in names})
        self.register_buffer("meta_steps", torch.zeros((), dtype=torch.long))

    def as_params(self) -> Params:
        return {key.replace("__", "."): value for key, value in self.lrs.items()}

    def at(self, step: int) -> Params:
        """Each weight's rate for inner step ``step`` (the last step's beyond the trained steps)."""
        return {name: value[min(step, len(value) - 1)] for name, value in self.as_params().items()}


def msl_weights(steps: int, fraction: float, anneal_fraction: float) -> list[float]:
    """MSL's per-step importance of the query loss after inner steps 1..steps at ``fraction`` of training (the
    authors' ``get_per_step_loss_importance_vector``, over the first ``anneal_fraction`` of training instead of
    epochs): all 1/steps at the start; the earlier ones fall linearly to at least 0.03/steps while the last takes
    the rest; from ``anneal_fraction`` on only the last step counts. Always sums to 1."""
    if steps == 1 or fraction >= anneal_fraction:
        return [0.0] * (steps - 1) + [1.0]
    decay = fraction / anneal_fraction / steps
    floor = 0.03 / steps
    earlier = [max(1.0 / steps - decay, floor)] * (steps - 1)
    return earlier + [1.0 - sum(earlier)]


@dataclass
class MAMLPlusPlusHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block (64 in the paper).", low=8, high=256)
    train_inner_steps: int = hparam(
        5, "Inner steps on the support set during meta-training, each with its own learned rates and batch norm "
        "(5 in the paper, Antoniou et al. 2019).", low=1, high=20)
    test_inner_steps: int = hparam(
        5, "Inner steps when adapting to a test task (5 in the paper). Steps beyond the training steps reuse the "
        "last step's learned rates and batch norm.", low=1, high=200)
    inner_lr_init: float = hparam(0.1, "Start of every learned per-layer, per-step inner learning rate (LSLR; 0.1 in "
                                  "the authors' Omniglot configs).", low=1e-4, high=10.0, log_scale=True)
    learn_inner_lrs: bool = hparam(True, "Meta-learn the per-layer, per-step inner learning rates (LSLR, Antoniou "
                                   "et al. 2019); off keeps them at inner_lr_init, as in MAML.")
    msl_fraction: float = hparam(
        0.1, "Fraction of training over which the multi-step loss (MSL) anneals its per-step weights toward the "
        "last step; afterwards only the last step's query loss counts. 0.1: 10 of 100 epochs in the authors' "
        "Omniglot 5-way config. 0 uses the last step only from the start (MAML's loss).", low=0.0, high=1.0)
    first_order_fraction: float = hparam(
        0.5, "Derivative-order annealing (DA): first-order meta-gradients for this fraction of training, second "
        "order after; about half in the authors' Omniglot template config (epoch 80 of 150). 0: second order "
        "throughout, as their per-experiment configs. 1: first order throughout.", low=0.0, high=1.0)
    bn_statistics: str = hparam(
        "batch", "Statistics that normalize a test task: batch (its own, transductive, as the authors' code does "
        "and as MAML) or running (the per-step running statistics gathered in training, BNRS as the paper "
        "describes it).", choices=("batch", "running"))
    head: str = hparam(
        "learned", "Start of the classifier head in each task. learned: one meta-learned row per training way; tasks "
        "with other ways start every class from the rows' mean. zero: every task starts from a zero head (the zero "
        "trick).", choices=("learned", "zero"))


INNER_LRS = InspectionSpec(
    "inner_lrs", "Learned inner learning rates", "curves",
    "MAML++'s learned inner learning rate of each layer at each inner step (LSLR, Antoniou et al. 2019), one curve "
    "per layer: which layers adapt, and how fast, early and late in the inner loop. All start at inner_lr_init.",
    x_label="inner step", y_label="learning rate", x_key="step")
MSL_WEIGHTS = InspectionSpec(
    "msl_weights", "Multi-step loss weights", "curves",
    "The weight of the query loss after each inner step in the meta-objective (MSL, Antoniou et al. 2019): equal at "
    "first, annealed toward the last step over the first msl_fraction of training.",
    x_label="inner step", y_label="weight", x_key="step")

CLASSIFICATION_DEFAULT = Recipe(
    "default", "The declared defaults (the paper's five inner steps, LSLR from 0.1, the multi-step loss over the "
    "first 10% of training, first order for the first half): one episode per meta-step, 2,000 steps, cosine "
    "schedule.", kind="classification", recommended=True)
OMNIGLOT_PAPER = Recipe(
    "paper", "The authors' Omniglot 20-way 1-shot config (HowToTrainYourMAMLPytorch): meta-batches of 16 tasks, five "
    "inner steps in training and testing, LSLR from 0.1, the multi-step loss annealed over the first 20 of 250 "
    "epochs, second order throughout, Adam 1e-3 with cosine annealing, 250 epochs of 500 meta-steps, rotation "
    "classes. The paper reports 97.65% (20-way 1-shot) and 99.47% (5-way 1-shot); days on a CPU.",
    datasets=("omniglot",), dataset={"ways": 20, "shots": 1, "rotations": True},
    training={"meta_batch": 16, "steps": 125_000, "lr_schedule": "cosine", "val_interval": 2500,
              "val_episodes": 200},
    hparams={"train_inner_steps": 5, "test_inner_steps": 5, "inner_lr_init": 0.1, "msl_fraction": 0.08,
             "first_order_fraction": 0.0})


@register
class MAMLPlusPlus(MAML):
    name = "maml-plus-plus"
    title = "MAML++"
    family = Family.OPTIMIZATION
    summary = "MAML made stable: learned per-layer, per-step rates, a multi-step loss and per-step batch norm."
    description = ("MAML++ (Antoniou, Edwards & Storkey, 2019) keeps MAML's idea, a meta-learned start adapted by a "
                   "few gradient steps, and fixes what makes MAML unstable and slow: every layer learns its own inner "
                   "learning rate for every step (LSLR); the query loss after every inner step counts, weighted "
                   "toward the last step as training goes on (MSL); meta-gradients are first order early and second "
                   "order later (DA); batch norm has its own parameters and statistics for every step; the outer "
                   "rate follows a cosine schedule. The Mechanism view shows the learned rates per layer and step.")
    HParams = MAMLPlusPlusHParams
    kinds = ("classification",)
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT_PAPER)
    capabilities = frozenset({"embeddings", "adaptation", "inspection"})
    inspections = (INNER_LRS, MSL_WEIGHTS)
    adaptation_steps_hparam = "test_inner_steps"

    def __init__(self, hparams, model_spec, device="cpu"):
        # MAML's constructor builds the kind's Conv-4; MAML++ needs its per-step network instead.
        Algorithm.__init__(self, hparams, model_spec, device)
        steps = hparams.train_inner_steps
        self.model = PerStepConv4Classifier(self.kind.output_size(model_spec.ways), model_spec.in_channels,
                                            hparams.hidden, model_spec.image_size, steps + 1).to(self.device)
        for norm in self.model.features.norms:
            norm.use_running_statistics = hparams.bn_statistics == "running"
        if hparams.head == "zero":
            self.model.head.requires_grad_(False)
        adapted = [name for name, _ in self.model.named_parameters() if ".norms." not in name]
        self.inner = InnerLoopState(adapted, steps, hparams.inner_lr_init, hparams.learn_inner_lrs).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "inner": self.inner}

    # --- schedules -------------------------------------------------------------------------------------------
    def training_fraction(self) -> float:
        return self.schedule_clock.fraction(int(self.inner.meta_steps))

    @property
    def first_order(self) -> bool:
        """Derivative-order annealing: first order while training is short of ``first_order_fraction``."""
        return self.training_fraction() < self.hparams.first_order_fraction

    def step_weights(self) -> list[float]:
        return msl_weights(self.hparams.train_inner_steps, self.training_fraction(), self.hparams.msl_fraction)

    # --- learning --------------------------------------------------------------------------------------------
    def task_loss(self, episode, weights: list[float], first_order: bool):
        """The MSL objective of one task (weighted query losses after each inner step), the last step's query loss
        and outputs."""
        loss_fn, model = self.kind.loss, self.model
        fast = self.task_params(episode.ways)
        objective = 0.0
        for step, weight in enumerate(weights):
            fast, _, _ = scaled_sgd_step(lambda p, x, k=step: forward_at(model, p, x, k), fast, self.inner.at(step),
                                         episode.support_x, episode.support_y, not first_order, loss_fn)
            if weight > 0:
                outputs = forward_at(model, fast, episode.query_x, step + 1)
                last_loss = loss_fn(outputs, episode.query_y)
                objective = objective + weight * last_loss
        return objective, last_loss, outputs

    def meta_gradient(self, episodes) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Backpropagates the meta-batch's mean objective into the gradients; returns the last-step query losses,
        the query outputs and what the schedules chose."""
        weights, first_order = self.step_weights(), self.first_order
        losses, outputs = [], []
        for episode in episodes:
            objective, last_loss, out = self.task_loss(episode, weights, first_order)
            (objective / len(episodes)).backward()
            losses.append(last_loss.detach())
            outputs.append(out.detach())
        chosen = {"second_order": float(not first_order), "msl_last_weight": weights[-1]}
        return torch.stack(losses), torch.cat(outputs), chosen

    def meta_train_step(self, episodes) -> dict[str, float]:
        self.model.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        episodes = [episode.to(self.device) for episode in episodes]
        losses, outputs, chosen = self.meta_gradient(episodes)
        optimizer.step()
        self.step_schedulers()
        self.inner.meta_steps += 1
        score = self.kind.score(outputs, torch.cat([episode.query_y for episode in episodes]))
        return {"loss": float(losses.mean()), self.kind.metric.key: score, **chosen}

    # --- adaptation ------------------------------------------------------------------------------------------
    def _inner_steps(self, fast: Params, support_x, support_y, steps: int, loss_fn: LossFn) -> Params:
        rates = self.inner.as_params()
        for step in range(steps):
            lrs = {name: value[min(step, len(value) - 1)].detach() for name, value in rates.items()}
            fast, _, _ = scaled_sgd_step(lambda p, x, k=step: forward_at(self.model, p, x, k), fast, lrs,
                                         support_x, support_y, False, loss_fn)
        return fast

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn | None = None):
        """``steps`` (default test_inner_steps) learned-rate steps from the meta-learned start; detached fast
        weights and the step their batch norm belongs to."""
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        with torch.enable_grad():
            fast = self._inner_steps(self.task_params(ways, detach=True), support_x, support_y, steps,
                                     loss_fn or self.kind.loss)
        return {"params": detached(fast), "ways": ways, "support_x": support_x, "step": steps}

    def _step_logits(self, params: Params, x: torch.Tensor, support_x: torch.Tensor | None, step: int):
        # Transductive batch norm needs a batch: a few queries ride along with the support set (as in MAML).
        if support_x is not None and len(x) < len(support_x):
            return forward_at(self.model, params, torch.cat([support_x, x]), step)[len(support_x):]
        return forward_at(self.model, params, x, step)

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.model.eval()
        return self.kind.predictions(self._step_logits(adapted["params"], query_x.to(self.device),
                                                       adapted.get("support_x"), adapted.get("step", 0)))

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """Conv-4 features, with the adapted weights and their step's batch norm when ``adapted`` is given."""
        self.model.eval()
        params = adapted["params"] if adapted is not None else dict(self.model.named_parameters())
        step = adapted.get("step", 0) if adapted is not None else 0
        return functional_call(self.model.features, sub_params(params, "features"), (x.to(self.device),),
                               {"step": step})

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn | None = None):
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        loss_fn = loss_fn or self.kind.loss
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)

        def step(weights: Params, index: int):
            lrs = {name: value.detach() for name, value in self.inner.at(index).items()}
            new, support_loss, _ = scaled_sgd_step(lambda p, x: forward_at(self.model, p, x, index), weights, lrs,
                                                   support_x, support_y, False, loss_fn)
            return new, support_loss

        def outputs(weights: Params, index: int, x: torch.Tensor) -> torch.Tensor:
            return self._step_logits(weights, x, support_x, index)

        return trace_inner_loop(step, outputs, self.kind, self.task_params(ways, detach=True),
                                (support_x, support_y), (query_x.to(self.device), query_y.to(self.device)), steps,
                                loss_fn)

    def inspect(self) -> dict[str, dict]:
        steps = np.arange(self.hparams.train_inner_steps, dtype=np.float32)
        rates = {lr_label(name): value.detach().cpu().numpy() for name, value in self.inner.as_params().items()}
        return {"inner_lrs": {"step": steps, **rates},
                "msl_weights": {"step": steps, "weight": np.asarray(self.step_weights(), np.float32)}}


def lr_label(name: str) -> str:
    """"features.convs.0.weight" -> "conv1"; the head keeps its names."""
    if name.startswith("features.convs."):
        return f"conv{int(name.split('.')[2]) + 1}"
    return name


__all__ = ["MAMLPlusPlus", "PerStepBatchNorm", "PerStepConv4Classifier", "InnerLoopState", "msl_weights",
           "forward_at"]

"""Meta-SGD (Li, Zhou, Chen & Li, 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835): MAML whose inner step has a learned learning rate per weight.

Besides the starting weights θ, Meta-SGD meta-learns a vector α of the same shape as θ; a task adapts with
θ' = θ − α ∘ ∇L_support(θ) (one step in the paper), and the outer Adam updates θ and α together to lower the query
loss of θ'. α sets both the size and the sign of each weight's step, so it learns the update's direction as well
as its rate. α starts uniform in [0.005, 0.1] (the paper's initialization; reimplementations such as
63days/Meta-SGD draw from the same range).

The paper's numbers (Li et al. 2017, table of Omniglot results; as quoted, rounded to 99.5% and 95.9%, in the
table of the jik0730/Meta-SGD-pytorch README): Omniglot 5-way 1-shot 99.53 ± 0.26%, 20-way 1-shot 95.93 ± 0.38%.

Everything else is MAML's (:mod:`workbench.core.algorithms.maml`): the kind's network (Conv-4 with transductive
batch norm for images, the 1-40-40-1 MLP for sine regression), the head options, transductive prediction. Each α
is a tensor of a :class:`LearnedRates` module, so it is checkpointed beside the model; the Mechanism view shows
its histogram per layer over training (the ``alpha`` inspection).

The helpers :func:`scaled_sgd_step` and :func:`trace_inner_loop` are shared with MAML++ (maml_plus_plus.py).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.functional import LossFn, Params, detached, forward_with
from workbench.core.algorithms.maml import MAML, SINE_PAPER, TASK_FIELDS
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.recipes import Recipe

Forward = Callable[[Params, torch.Tensor], torch.Tensor]


# --- shared helpers (also used by MAML++) -------------------------------------------------------------------------
def scaled_sgd_step(forward: Forward, params: Params, rates: Params, x: torch.Tensor, y: torch.Tensor,
                    create_graph: bool, loss_fn: LossFn) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """One step ``w − rate ∘ ∇L(w)`` for each weight that requires grad and has a rate (others stay as they are).
    Returns the new weights, the loss before the step and its outputs. ``rates[name]`` is a tensor of the
    weight's shape (Meta-SGD's α) or a scalar (MAML++'s per-step rate). Without ``create_graph`` the gradient is a
    constant: first order, while the rates still receive their gradient through the product."""
    outputs = forward(params, x)
    loss = loss_fn(outputs, y)
    names = [name for name, value in params.items() if value.requires_grad and name in rates]
    grads = torch.autograd.grad(loss, [params[name] for name in names], create_graph=create_graph)
    updated = dict(params)
    for name, grad in zip(names, grads):
        updated[name] = params[name] - rates[name] * grad
    return updated, loss, outputs


def trace_inner_loop(step: Callable[[Params, int], tuple[Params, torch.Tensor]],
                     outputs: Callable[[Params, int, torch.Tensor], torch.Tensor], kind, params: Params,
                     support: tuple[torch.Tensor, torch.Tensor], query: tuple[torch.Tensor, torch.Tensor],
                     steps: int, loss_fn: LossFn) -> list[dict[str, float]]:
    """The Adaptation view's trace: support loss, query loss and the kind's query metric after 0..steps inner steps.
    ``step(params, k)`` takes inner step k (returning the new weights and the support loss before it);
    ``outputs(params, k, x)`` evaluates the weights reached after k steps."""
    (support_x, support_y), (query_x, query_y) = support, query
    metric = f"query_{kind.metric.key}"
    trace = []
    with torch.enable_grad():
        for index in range(steps + 1):
            with torch.no_grad():
                query_out = outputs(params, index, query_x)
                query_loss = float(kind.loss(query_out, query_y))
            if index < steps:
                new_params, support_loss = step(params, index)
            else:
                with torch.no_grad():
                    support_loss = loss_fn(outputs(params, index, support_x), support_y)
            trace.append({"step": index, "support_loss": float(support_loss.detach()), "query_loss": query_loss,
                          metric: kind.score(query_out, query_y)})
            if index < steps:
                params = {name: value.detach().requires_grad_(True) for name, value in new_params.items()}
    return trace


def rate_key(name: str) -> str:
    """A parameter name as a ParameterDict key (which may not contain '.')."""
    return name.replace(".", "__")


def layer_label(name: str) -> str:
    """A readable layer name for views: Conv-4's "features.encoder.0.1.weight" -> "block1.bn.weight", the MLP's
    "features.2.weight" -> "hidden2.weight"; other names lose their "features." prefix."""
    conv = re.fullmatch(r"features\.encoder\.(\d+)\.(\d+)\.(\w+)", name)
    if conv:
        block, part, what = conv.groups()
        return f"block{int(block) + 1}.{'conv' if part == '0' else 'bn'}.{what}"
    mlp = re.fullmatch(r"features\.(\d+)\.(\w+)", name)
    if mlp:
        return f"hidden{int(mlp.group(1)) // 2 + 1}.{mlp.group(2)}"
    return name.removeprefix("features.")


# --- Meta-SGD's update --------------------------------------------------------------------------------------------
class LearnedRates(nn.Module):
    """Meta-SGD's α: one tensor per parameter of a network, of the parameter's shape, drawn uniform in
    [low, high]. Keys are the parameter names with '.' as '__'."""

    def __init__(self, network: nn.Module, low: float, high: float):
        super().__init__()
        self.rates = nn.ParameterDict({rate_key(name): nn.Parameter(torch.empty_like(p).uniform_(low, high))
                                       for name, p in network.named_parameters()})

    def as_params(self) -> Params:
        return {key.replace("__", "."): value for key, value in self.rates.items()}


def meta_sgd_outer_loss(model: nn.Module, params: Params, rates: Params, support_x, support_y, query_x, query_y,
                        steps: int, first_order: bool, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt with ``steps`` steps θ ← θ − α ∘ ∇L_support(θ), then the query loss and outputs; differentiable with
    respect to ``params`` and ``rates`` (second order unless ``first_order``)."""
    fast = params
    for _ in range(steps):
        fast, _, _ = scaled_sgd_step(partial(forward_with, model), fast, rates, support_x, support_y,
                                     not first_order, loss_fn)
    outputs = forward_with(model, fast, query_x)
    return loss_fn(outputs, query_y), outputs


def vmapped_meta_sgd_losses(model: nn.Module, params: Params, rates: Params, support_x, support_y, query_x, query_y,
                            steps: int, first_order: bool, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`meta_sgd_outer_loss` for equally shaped tasks stacked on a first dimension, through ``torch.vmap``
    (as MAML's ``vmapped_outer_losses``, for networks without batch norm): losses [tasks], outputs [tasks, ...]."""
    trainable = [name for name, value in params.items() if value.requires_grad and name in rates]

    def one_task(start: Params, sx, sy, qx, qy):
        fast = start
        for _ in range(steps):
            def support_loss(chosen: Params, weights: Params = fast) -> torch.Tensor:
                return loss_fn(forward_with(model, {**weights, **chosen}, sx), sy)

            grads = torch.func.grad(support_loss)({name: fast[name] for name in trainable})
            fast = {**fast, **{name: fast[name] - rates[name] * (grads[name].detach() if first_order else grads[name])
                               for name in trainable}}
        outputs = forward_with(model, fast, qx)
        return loss_fn(outputs, qy), outputs

    return torch.vmap(one_task, in_dims=(None, 0, 0, 0, 0))(params, support_x, support_y, query_x, query_y)


@dataclass
class MetaSGDHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block (images), or units per hidden layer of the MLP "
                         "(regression: 40, as in MAML's sine setup).", low=8, high=256)
    train_inner_steps: int = hparam(
        1, "Inner steps θ ← θ − α ∘ ∇L on the support set during meta-training, all with the same learned α. "
        "Meta-SGD adapts in one step (Li et al. 2017); every further step adds a backward pass.", low=1, high=20)
    test_inner_steps: int = hparam(
        1, "Inner steps when adapting to a test task. One, as in training, is what α was learned for "
        "(Li et al. 2017).", low=1, high=200)
    alpha_init_low: float = hparam(0.005, "Lower end of the uniform range α starts from (Li et al. 2017: "
                                   "[0.005, 0.1]).", low=0.0, high=10.0)
    alpha_init_high: float = hparam(0.1, "Upper end of the uniform range α starts from (Li et al. 2017: "
                                    "[0.005, 0.1]).", low=1e-4, high=10.0)
    head: str = hparam(
        "learned", "Start of the classifier head in each task. learned: one meta-learned row per training way (as "
        "in MAML and Meta-SGD); tasks with other ways start every class from the rows' mean, with the rows' mean "
        "α. zero: every task starts from a zero head (the zero trick).", choices=("learned", "zero"))
    first_order: bool = hparam(False, "Drop second derivatives in the meta-gradient (α still learns through the "
                               "step). Meta-SGD is second order in the paper.")


ALPHA = InspectionSpec(
    "alpha", "Learned learning rates α", "layer_histograms",
    "Meta-SGD's per-weight inner learning rates α (Li et al. 2017), one histogram per layer: how large a step each "
    "layer takes when adapting, and in which direction (negative α steps up the gradient). They start uniform in "
    "[0.005, 0.1].", x_label="α", y_label="weights")

CLASSIFICATION_DEFAULT = Recipe(
    "default", "The declared defaults: one episode per meta-step, one learned inner step in training and testing, "
    "2,000 steps, cosine schedule.", kind="classification", recommended=True)
OMNIGLOT_PAPER = Recipe(
    "paper", "Meta-SGD's single learned step (Li et al. 2017) in MAML's Omniglot protocol (Finn et al. 2017: "
    "5-way 1-shot, meta-batches of 32 tasks, Adam 1e-3, rotation classes, 60,000 meta-steps), one inner step in "
    "training and testing. The paper reports 99.53 ± 0.26% (5-way 1-shot) and 95.93 ± 0.38% (20-way 1-shot); days "
    "on a CPU.",
    datasets=("omniglot",), dataset={"rotations": True},
    training={"meta_batch": 32, "steps": 60_000, "lr_schedule": "constant", "val_interval": 1000,
              "val_episodes": 200},
    hparams={"train_inner_steps": 1, "test_inner_steps": 1})
SINE = replace(
    SINE_PAPER, help="MAML's sine-regression setup (Finn et al. 2017, section 5.1), which Meta-SGD's regression "
    "experiment shares (Li et al. 2017): an MLP 1-40-40-1, K = 10 support and 100 query points, one learned step "
    "in training and testing, Adam 1e-3 over meta-batches of 25 tasks, 70,000 steps (or a time budget).",
    hparams={"hidden": 40, "head": "learned", "train_inner_steps": 1, "test_inner_steps": 1})


@register
class MetaSGD(MAML):
    name = "meta-sgd"
    title = "Meta-SGD"
    family = Family.OPTIMIZATION
    summary = "MAML with a learned learning rate for every weight: the start and the step are meta-learned."
    description = ("Meta-SGD (Li, Zhou, Chen & Li, 2017) meta-learns, besides the starting weights, a learning rate "
                   "for every weight (a vector α of the weights' shape). A task adapts in one step, θ − α ∘ ∇L on "
                   "its support set; the outer loop updates the start and α together so that this single step "
                   "lands on weights that do well on the queries. α learns each weight's step size and direction, "
                   "so no inner learning rate needs tuning. The network is MAML's: a Conv-4 with transductive batch "
                   "norm for images, an MLP for regression. The Mechanism view shows α per layer over training.")
    HParams = MetaSGDHParams
    kinds = ("classification", "regression")
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT_PAPER, SINE)
    capabilities = frozenset({"embeddings", "adaptation", "inspection"})
    inspections = (ALPHA,)
    adaptation_steps_hparam = "test_inner_steps"

    def __init__(self, hparams, model_spec, device="cpu"):
        if hparams.alpha_init_low > hparams.alpha_init_high:
            raise ConfigError("algorithm.hparams.alpha_init_low", f"{hparams.alpha_init_low:g} is above "
                              f"alpha_init_high ({hparams.alpha_init_high:g}); α starts uniform between the two")
        super().__init__(hparams, model_spec, device)
        self.alpha = LearnedRates(self.model, hparams.alpha_init_low, hparams.alpha_init_high).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "alpha": self.alpha}

    def task_rates(self, params: Params) -> Params:
        """α for a task's weights; a head of other ways than training gives every class row the rows' mean α (as
        its weights start from the rows' mean)."""
        rates = self.alpha.as_params()
        return {name: rates[name] if rates[name].shape == value.shape
                else rates[name].mean(0, keepdim=True).expand_as(value) for name, value in params.items()}

    def _group_losses(self, group: list) -> tuple[torch.Tensor, torch.Tensor]:
        hp, loss_fn = self.hparams, self.kind.loss
        params = self.task_params(group[0].ways)
        rates = self.task_rates(params)
        if len(group) > 1 and self._vmap_tasks:
            fields = [torch.stack([getattr(e, name) for e in group]) for name in TASK_FIELDS]
            try:
                losses, outputs = vmapped_meta_sgd_losses(self.model, params, rates, *fields, hp.train_inner_steps,
                                                          self.first_order, loss_fn)
                return losses, outputs.flatten(0, 1)
            except (RuntimeError, NotImplementedError) as error:
                warnings.warn(f"{self.name}: tasks run one by one, torch.vmap failed ({error})", stacklevel=2)
                self._vmap_tasks = False
        results = [meta_sgd_outer_loss(self.model, params, rates, e.support_x, e.support_y, e.query_x, e.query_y,
                                       hp.train_inner_steps, self.first_order, loss_fn) for e in group]
        return torch.stack([loss for loss, _ in results]), torch.cat([out for _, out in results])

    # --- adaptation ------------------------------------------------------------------------------------------
    def _start(self, ways: int) -> tuple[Params, Params]:
        params = self.task_params(ways, detach=True)
        return params, detached(self.task_rates(params))

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn | None = None):
        """``steps`` (default test_inner_steps) learned steps from the meta-learned start; detached fast weights."""
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        with torch.enable_grad():
            fast, rates = self._start(ways)
            for _ in range(steps):
                fast, _, _ = scaled_sgd_step(partial(forward_with, self.model), fast, rates, support_x, support_y,
                                             False, loss_fn or self.kind.loss)
        return {"params": detached(fast), "ways": ways, "support_x": support_x}

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn | None = None):
        self.model.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        loss_fn = loss_fn or self.kind.loss
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        params, rates = self._start(ways)

        def step(weights: Params, _index: int):
            new, support_loss, _ = scaled_sgd_step(partial(forward_with, self.model), weights, rates, support_x,
                                                   support_y, False, loss_fn)
            return new, support_loss

        def outputs(weights: Params, _index: int, x: torch.Tensor) -> torch.Tensor:
            return self._logits(weights, x, support_x)

        return trace_inner_loop(step, outputs, self.kind, params, (support_x, support_y),
                                (query_x.to(self.device), query_y.to(self.device)), steps, loss_fn)

    def inspect(self) -> dict[str, dict]:
        return {"alpha": {layer_label(name): value.detach().cpu().numpy()
                          for name, value in self.alpha.as_params().items()}}


__all__ = ["MetaSGD", "LearnedRates", "meta_sgd_outer_loss", "vmapped_meta_sgd_losses", "scaled_sgd_step",
           "trace_inner_loop", "layer_label", "rate_key"]

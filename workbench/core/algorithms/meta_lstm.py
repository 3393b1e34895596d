"""Meta-Learner LSTM (Ravi & Larochelle, 2017, "Optimization as a Model for Few-Shot Learning", ICLR): an LSTM that
learns the learner's optimizer and its starting weights.

The learner's weights θ, flattened, are the cell state of a coordinate-wise LSTM. One inner step is the cell update

    c_t = f_t ∘ c_{t−1} − i_t ∘ ∇_t,        ∇_t = ∇_θ L(support; θ = c_{t−1}),

so the input gate i_t acts as a learned learning rate and the forget gate f_t as a learned weight decay (f = 1,
i = α is plain gradient descent). Both gates are per coordinate:

    i_t = σ(W_I · [h_t, c_{t−1}, i_{t−1}] + b_I),    f_t = σ(W_F · [h_t, c_{t−1}, f_{t−1}] + b_F),

where h_t is the hidden state of a first, ordinary LSTM (hidden size 20) over the preprocessed loss and gradient
(Andrychowicz et al. 2016, appendix A, p = 10: each value x becomes (log|x| / p, sign x) when |x| ≥ e^−p, else
(−1, e^p x)). Every coordinate has its own LSTM states, the LSTM's parameters are shared by all coordinates, so one
step runs the same small LSTM over all N learner weights as a batch of N. The initial cell state c_0 is the learner's
starting weights, meta-learned with the LSTM (kept as the learner network's own parameters, so a checkpoint holds
the "model" and the "meta_learner").

As in the paper, the learner's loss and gradient are inputs to the meta-learner: they are detached, so the
meta-gradient ignores second derivatives of the learner's loss; it flows through the cell update and the gates
(with c_{t−1} in their input). Each inner step uses the whole support set as one batch (the authors' configs: batch 5
for 5-way 1-shot, 25 for 5-shot); the same number of steps adapts at test time. The gates take the previous gate
values i_{t−1}, f_{t−1} (the paper's equations; the authors' Torch code feeds the pre-sigmoid values), zero at the
first step. Initialization as in the authors' code: every LSTM weight uniform in [−0.01, 0.01], b_F uniform in
[4, 5] (forget gate ≈ 0.99), b_I uniform in [−5, −4] (input gate ≈ 0.01, a small learning rate).

Settings from the authors' code (twitter-research/meta-learning-lstm, config/lstm/train-imagenet-1shot.lua and
train-imagenet-5shot.lua): Adam at 1e-3, global gradient-norm clipping at 0.25, one episode per update; 1-shot: 12
updates on batches of 5 for 75,000 episodes; 5-shot: 8 updates on batches of 25 for 50,000 episodes. The learner is
a Conv-4 with 32 filters. The paper's numbers (mini-ImageNet, 5-way, 95% intervals; Ravi & Larochelle 2017, table 1,
as quoted by Finn et al. 2017 and Snell et al. 2017): 1-shot 43.44 ± 0.77%, 5-shot 60.60 ± 0.71%.

Here, as in MAML, batch norm uses the statistics of each batch (transductive) and another number of ways starts every
class's head row from the mean of the learned rows (or from zero, ``head = "zero"``): the LSTM is coordinate-wise, so
it updates any number of weights. The Mechanism view shows the gates per inner step on a fixed probe task (the first
training task this instance met): the mean input gate and 1 − forget gate over all weights, and both gates per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.functional import LossFn, Params, forward_with
from workbench.core.algorithms.maml import MAML
from workbench.core.algorithms.meta_sgd import layer_label, trace_inner_loop
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.recipes import Recipe

PREPROCESS_P = 10.0  # Andrychowicz et al. (2016), appendix A
INIT_SCALE = 0.01  # every LSTM weight starts uniform in [-0.01, 0.01] (the authors' code)


# --- flat weights ---------------------------------------------------------------------------------------------
def flatten(params: Params) -> torch.Tensor:
    """The weights as one vector (the cell state), in the dict's order."""
    return torch.cat([value.reshape(-1) for value in params.values()])


def unflatten(flat: torch.Tensor, like: Params) -> Params:
    """A flat vector back as weights shaped like ``like`` (views of ``flat``, so gradients reach it)."""
    out, start = {}, 0
    for name, value in like.items():
        out[name] = flat[start:start + value.numel()].view(value.shape)
        start += value.numel()
    return out


def preprocess(x: torch.Tensor, p: float = PREPROCESS_P) -> torch.Tensor:
    """Andrychowicz et al. (2016, appendix A): x -> (log|x| / p, sign x) when |x| ≥ e^−p, else (−1, e^p x);
    [..., 2]. Keeps the scale (the log) apart from the direction, so gradients of any magnitude are usable inputs."""
    big = x.abs() >= math.exp(-p)
    scale = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    direction = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([scale, direction], dim=-1)


# --- the meta-learner -------------------------------------------------------------------------------------------
class CellState(NamedTuple):
    """Per-coordinate states: the first LSTM's hidden and cell [N, H], and the last gates i, f [N]."""

    h: torch.Tensor
    cell: torch.Tensor
    input_gate: torch.Tensor
    forget_gate: torch.Tensor


class MetaLearnerLSTM(nn.Module):
    """The paper's two-layer coordinate-wise meta-learner: an LSTM over the preprocessed (loss, gradient) of each
    coordinate, then the "MetaLSTMCell" whose cell state is the learner's flattened weights (W_I, W_F act on
    [h_t, c_{t−1}, gate_{t−1}]; b_I, b_F are scalars shared by all coordinates)."""

    def __init__(self, hidden: int = 20, input_bias: float = -4.5, forget_bias: float = 4.5):
        super().__init__()
        self.hidden = hidden
        self.lstm = nn.LSTMCell(4, hidden)  # preprocessed loss (2) and gradient (2)
        self.W_I = nn.Parameter(torch.empty(hidden + 2))
        self.W_F = nn.Parameter(torch.empty(hidden + 2))
        self.b_I = nn.Parameter(torch.empty(1))
        self.b_F = nn.Parameter(torch.empty(1))
        with torch.no_grad():
            for weight in self.parameters():
                weight.uniform_(-INIT_SCALE, INIT_SCALE)
            self.b_I.uniform_(input_bias - 0.5, input_bias + 0.5)
            self.b_F.uniform_(forget_bias - 0.5, forget_bias + 0.5)

    def gate(self, weight: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, c_prev: torch.Tensor,
             gate_prev: torch.Tensor) -> torch.Tensor:
        """σ(W · [h, c_{t−1}, gate_{t−1}] + b) per coordinate, without building the [N, H + 2] concatenation."""
        hidden = self.hidden
        return torch.sigmoid(h @ weight[:hidden] + c_prev * weight[hidden] + gate_prev * weight[hidden + 1] + bias)

    def forward(self, loss: torch.Tensor, grad: torch.Tensor, c_prev: torch.Tensor,
                state: CellState | None = None) -> tuple[torch.Tensor, CellState]:
        """One learned update of the weights ``c_prev`` [N] from the learner's loss (a scalar) and gradient [N]
        (both taken as inputs: detach them first). Returns c_t and the new state (whose gates are i_t, f_t)."""
        count = grad.numel()
        inputs = torch.cat([preprocess(loss.reshape(1)).expand(count, 2), preprocess(grad)], dim=1)
        h, cell = self.lstm(inputs, None if state is None else (state.h, state.cell))
        zeros = grad.new_zeros(count)
        i_prev, f_prev = (zeros, zeros) if state is None else (state.input_gate, state.forget_gate)
        input_gate = self.gate(self.W_I, self.b_I, h, c_prev, i_prev)
        forget_gate = self.gate(self.W_F, self.b_F, h, c_prev, f_prev)
        c = forget_gate * c_prev - input_gate * grad
        return c, CellState(h, cell, input_gate, forget_gate)


def learner_gradient(model: nn.Module, like: Params, c: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                     loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's loss and flat gradient at the weights ``c``, both detached: the meta-learner's inputs (the
    paper ignores their second derivatives). Works under ``torch.no_grad`` too."""
    with torch.enable_grad():
        leaf = c.detach().requires_grad_(True)
        loss = loss_fn(forward_with(model, unflatten(leaf, like), x), y)
        (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad


def meta_lstm_inner_loop(model: nn.Module, meta_learner: MetaLearnerLSTM, params: Params, support_x, support_y,
                         steps: int, loss_fn: LossFn,
                         gates: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
    """``steps`` learned updates from ``params`` (c_0) on the whole support set; the final weights, flat and
    differentiable with respect to the meta-learner and ``params``. Each step's gates (i_t, f_t) go to ``gates``."""
    c, state = flatten(params), None
    for _ in range(steps):
        loss, grad = learner_gradient(model, params, c, support_x, support_y, loss_fn)
        c, state = meta_learner(loss, grad, c, state)
        if gates is not None:
            gates.append((state.input_gate.detach(), state.forget_gate.detach()))
    return c


def meta_lstm_outer_loss(model: nn.Module, meta_learner: MetaLearnerLSTM, params: Params, support_x, support_y,
                         query_x, query_y, steps: int, loss_fn: LossFn) -> tuple[torch.Tensor, torch.Tensor]:
    """The query loss (and outputs) of the learner after ``steps`` learned updates on the support set."""
    c = meta_lstm_inner_loop(model, meta_learner, params, support_x, support_y, steps, loss_fn)
    outputs = forward_with(model, unflatten(c, params), query_x)
    return loss_fn(outputs, query_y), outputs


# --- declarations ---------------------------------------------------------------------------------------------
@dataclass
class MetaLSTMHParams:
    hidden: int = hparam(32, "Filters per Conv-4 block of the learner; Ravi & Larochelle (2017) use 32.", low=4,
                         high=256)
    lstm_hidden: int = hparam(20, "Hidden size of the meta-learner's first LSTM layer, over each coordinate's "
                              "preprocessed loss and gradient (20 in Ravi & Larochelle 2017).", low=1, high=256)
    train_inner_steps: int = hparam(
        12, "Learned updates of the learner on the whole support set per training task. Ravi & Larochelle's code: "
        "12 for 1-shot, 8 for 5-shot. Every step adds a learner backward pass and an LSTM step over all weights.",
        low=1, high=50)
    test_inner_steps: int = hparam(
        12, "Learned updates when adapting to a test task; the LSTM was trained for train_inner_steps, and Ravi & "
        "Larochelle use as many at test time.", low=1, high=200)
    input_bias_init: float = hparam(
        -4.5, "Centre of the uniform range (width 1) the input-gate bias b_I starts from: the input gate starts near "
        "σ(−4.5) ≈ 0.011, a small learning rate (Ravi & Larochelle's code: [−5, −4]).", low=-20.0, high=20.0)
    forget_bias_init: float = hparam(
        4.5, "Centre of the uniform range (width 1) the forget-gate bias b_F starts from: the forget gate starts near "
        "σ(4.5) ≈ 0.989, keeping the weights (Ravi & Larochelle's code: [4, 5]).", low=-20.0, high=20.0)
    grad_clip: float = hparam(0.25, "Clip the meta-gradient's global norm to this (0.25 in Ravi & Larochelle 2017); "
                              "0 turns clipping off.", low=0.0, high=1e6)
    head: str = hparam(
        "learned", "Start of the classifier head in each task. learned: one meta-learned row per training way (part "
        "of c_0, as in the paper); tasks with other ways start every class from the rows' mean. zero: every task "
        "starts from a zero head (the zero trick), so any number of ways starts alike.", choices=("learned", "zero"))


GATES = InspectionSpec(
    "gates", "Gates per inner step", "curves",
    "The meta-learner's mean input gate i_t (its learning rate) and mean 1 − f_t (the weight decay its forget gate "
    "f_t applies; the forget gate itself stays near 1, so its complement is drawn on the input gate's scale) over "
    "all learner weights at each inner step, on a fixed probe task: the first training task this run met (Ravi & "
    "Larochelle 2017, figure 2). Both start near 0.01.",
    x_label="inner step", y_label="mean over the weights", x_key="step")
INPUT_BY_LAYER = InspectionSpec(
    "input_gate_by_layer", "Input gate per layer", "heatmap",
    "The mean input gate i_t (the learned learning rate) of each layer's weights at each inner step on the probe "
    "task: which layers the meta-learner moves, and when (Ravi & Larochelle 2017, figure 2).",
    x_label="inner step", y_label="layer")
FORGET_BY_LAYER = InspectionSpec(
    "forget_gate_by_layer", "Forget gate per layer", "heatmap",
    "The mean forget gate f_t of each layer's weights at each inner step on the probe task: below 1, the "
    "meta-learner shrinks that layer's weights (Ravi & Larochelle 2017, figure 2).",
    x_label="inner step", y_label="layer")

CLASSIFICATION_DEFAULT = Recipe(
    "default", "The declared defaults: the paper's meta-learner and 32-filter learner, 12 learned updates, one "
    "episode per meta-step, 2,000 steps, cosine schedule.", kind="classification", recommended=True)
PAPER_1SHOT = Recipe(
    "paper", "Ravi & Larochelle (2017) on mini-ImageNet, 5-way 1-shot: 12 learned updates on the 5 support images, "
    "15 queries per class, one episode per update, Adam 1e-3 at a constant rate, 75,000 episodes (the authors' "
    "config). The paper reports 43.44 ± 0.77%.", datasets=("mini-imagenet",),
    dataset={"ways": 5, "shots": 1, "queries": 15},
    training={"meta_batch": 1, "lr": 1e-3, "lr_schedule": "constant", "steps": 75_000, "val_interval": 1000,
              "val_episodes": 100},
    hparams={"hidden": 32, "train_inner_steps": 12, "test_inner_steps": 12})
PAPER_5SHOT = Recipe(
    "paper-5shot", "Ravi & Larochelle (2017) on mini-ImageNet, 5-way 5-shot: 8 learned updates on the 25 support "
    "images, 15 queries per class, one episode per update, Adam 1e-3 at a constant rate, 50,000 episodes (the "
    "authors' config). The paper reports 60.60 ± 0.71%.", datasets=("mini-imagenet",),
    dataset={"ways": 5, "shots": 5, "queries": 15},
    training={"meta_batch": 1, "lr": 1e-3, "lr_schedule": "constant", "steps": 50_000, "val_interval": 1000,
              "val_episodes": 100},
    hparams={"hidden": 32, "train_inner_steps": 8, "test_inner_steps": 8})
OMNIGLOT = Recipe(
    "omniglot", "The paper's 1-shot settings carried over to Omniglot, 5-way 1-shot (the paper has no Omniglot "
    "experiment, so no reference number): 12 learned updates, one episode per update, Adam 1e-3 at a constant rate, "
    "rotation classes, 20,000 episodes.", datasets=("omniglot",), dataset={"rotations": True, "ways": 5, "shots": 1},
    training={"meta_batch": 1, "lr": 1e-3, "lr_schedule": "constant", "steps": 20_000, "val_interval": 1000,
              "val_episodes": 200},
    hparams={"hidden": 32, "train_inner_steps": 12, "test_inner_steps": 12})


@register
class MetaLSTM(MAML):
    name = "meta-lstm"
    title = "Meta-Learner LSTM"
    family = Family.OPTIMIZATION
    summary = "An LSTM learns the learner's update rule: its input gate is the learning rate, its cell the weights."
    description = ("The Meta-Learner LSTM (Ravi & Larochelle, 2017) learns how to train a classifier from a few "
                   "examples. The classifier's weights are the cell state of an LSTM applied to every weight alike: "
                   "at each step it reads the loss and the weight's gradient on the support set and writes the new "
                   "weight, c_t = f_t ∘ c_{t−1} − i_t ∘ ∇_t. The input gate i_t is a learned learning rate and the "
                   "forget gate f_t a learned weight decay, both per weight and per step; the starting weights are "
                   "learned too. The outer loop trains the LSTM so that a few such steps give low query loss "
                   "(treating the learner's gradients as inputs: no second derivatives). The learner is a 32-filter "
                   "Conv-4 with transductive batch norm. The Mechanism view shows the gates per inner step.")
    HParams = MetaLSTMHParams
    kinds = ("classification",)
    recipes = (CLASSIFICATION_DEFAULT, PAPER_1SHOT, PAPER_5SHOT, OMNIGLOT)
    capabilities = frozenset({"embeddings", "adaptation", "inspection"})
    inspections = (GATES, INPUT_BY_LAYER, FORGET_BY_LAYER)
    adaptation_steps_hparam = "test_inner_steps"

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.meta_learner = MetaLearnerLSTM(hparams.lstm_hidden, hparams.input_bias_init,
                                            hparams.forget_bias_init).to(self.device)
        self._probe: tuple[torch.Tensor, torch.Tensor, int] | None = None  # the inspections' fixed task

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "meta_learner": self.meta_learner}

    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        episodes = [episode.to(self.device) for episode in episodes]
        if self._probe is None:
            self._probe = (episodes[0].support_x, episodes[0].support_y, episodes[0].ways)
        losses, outputs = [], []
        for e in episodes:  # one backward per task: only one task's unrolled graph is in memory
            loss, out = meta_lstm_outer_loss(self.model, self.meta_learner, self.task_params(e.ways), e.support_x,
                                             e.support_y, e.query_x, e.query_y, self.hparams.train_inner_steps,
                                             self.kind.loss)
            (loss / len(episodes)).backward()
            losses.append(float(loss.detach()))
            outputs.append(out.detach())
        if self.hparams.grad_clip > 0:
            nn.utils.clip_grad_norm_([p for m in self.modules().values() for p in m.parameters()],
                                     self.hparams.grad_clip)
        optimizer.step()
        self.step_schedulers()
        score = self.kind.score(torch.cat(outputs), torch.cat([e.query_y for e in episodes]))
        return {"loss": float(np.mean(losses)), self.kind.metric.key: score}

    # --- adaptation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _adapted_flat(self, support_x, support_y, ways: int, steps: int, loss_fn: LossFn,
                      gates: list | None = None) -> tuple[torch.Tensor, Params]:
        params = self.task_params(ways, detach=True)
        c = meta_lstm_inner_loop(self.model, self.meta_learner, params, support_x, support_y, steps, loss_fn, gates)
        return c, params

    def adapt(self, support_x, support_y, ways, steps: int | None = None, loss_fn: LossFn | None = None):
        """``steps`` (default test_inner_steps) learned updates from c_0 on the support set; detached weights."""
        self.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        c, like = self._adapted_flat(support_x, support_y, ways, steps, loss_fn or self.kind.loss)
        return {"params": unflatten(c, like), "ways": ways, "support_x": support_x}

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None,
                         loss_fn: LossFn | None = None):
        self.eval()
        steps = self.hparams.test_inner_steps if steps is None else steps
        loss_fn = loss_fn or self.kind.loss
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        start = self.task_params(ways, detach=True)
        state: list[CellState | None] = [None]  # the LSTM's state between the trace's steps

        def step(weights: Params, _index: int):
            loss, grad = learner_gradient(self.model, weights, flatten(weights), support_x, support_y, loss_fn)
            with torch.no_grad():
                c, state[0] = self.meta_learner(loss, grad, flatten(weights).detach(), state[0])
            return unflatten(c, weights), loss

        def outputs(weights: Params, _index: int, x: torch.Tensor) -> torch.Tensor:
            return self._logits(weights, x, support_x)

        return trace_inner_loop(step, outputs, self.kind, start, (support_x, support_y),
                                (query_x.to(self.device), query_y.to(self.device)), steps, loss_fn)

    # --- inspection ------------------------------------------------------------------------------------------
    def inspect(self) -> dict[str, dict]:
        """The gates per inner step on the probe task (the first training task met); nothing before training."""
        if self._probe is None:
            return {}
        self.eval()
        support_x, support_y, ways = self._probe
        gates: list[tuple[torch.Tensor, torch.Tensor]] = []
        _, like = self._adapted_flat(support_x, support_y, ways, self.hparams.test_inner_steps, self.kind.loss,
                                     gates)
        steps = np.arange(1, len(gates) + 1)
        inputs, forgets = (torch.stack(chosen) for chosen in zip(*gates))  # [steps, N] each
        sizes = [value.numel() for value in like.values()]
        layers = np.array([layer_label(name) for name in like])

        def by_layer(values: torch.Tensor) -> dict[str, np.ndarray]:  # [layers, steps]
            means = torch.stack([part.mean(1) for part in values.split(sizes, dim=1)])
            return {"values": means.cpu().numpy(), "rows": layers, "columns": np.array([str(s) for s in steps])}

        return {"gates": {"step": steps, "input": inputs.mean(1).cpu().numpy(),
                          "1 - forget": (1 - forgets).mean(1).cpu().numpy()},
                "input_gate_by_layer": by_layer(inputs), "forget_gate_by_layer": by_layer(forgets)}


__all__ = ["MetaLSTM", "MetaLearnerLSTM", "CellState", "meta_lstm_inner_loop", "meta_lstm_outer_loss",
           "learner_gradient", "preprocess", "flatten", "unflatten"]

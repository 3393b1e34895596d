"""The learned optimizer of Andrychowicz et al. (2016), "Learning to learn by gradient descent by gradient descent"
(NeurIPS): a coordinate-wise two-layer LSTM m with 20 hidden units that maps each coordinate's gradient to its
update, θ_{t+1} = θ_t + m(∇_t), with one set of LSTM weights shared by every coordinate (each coordinate keeps its
own hidden state, so one step runs the LSTM over all N coordinates as a batch of N).

Inputs are the paper's preprocessing (appendix A, p = 10): each gradient value x becomes (log|x| / p, sign x) when
|x| ≥ e^−p, else (−1, e^p x); the output is scaled by 0.1 (section 3). Training minimises the summed optimizee loss
along the trajectory, L(φ) = Σ_t f(θ_t), by truncated backpropagation through time: unrolls of ``unroll`` steps
(20) over the problem's horizon (100 steps), one Adam update of φ after each unroll, the hidden states and θ carried
over (detached) to the next. As in the paper the gradients ∇_t are inputs (``second_order`` off): the meta-gradient
ignores the optimizee's second derivatives.

The Mechanism view shows a race on a fixed probe problem at each validation: the log10 loss against the step of
this optimizer and of the hand-made ones with their tuned learning rates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.algorithms.meta_lstm import preprocess
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.recipes import Recipe

KIND = "learning-to-optimize"


class CoordinateLSTM(nn.Module):
    """Two stacked LSTM cells over each coordinate's preprocessed gradient, then a linear output: the update."""

    def __init__(self, hidden: int = 20, output_scale: float = 0.1):
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(2, hidden), nn.LSTMCell(hidden, hidden)])
        self.out = nn.Linear(hidden, 1)
        self.output_scale = output_scale

    def forward(self, grad: torch.Tensor, state: list | None = None) -> tuple[torch.Tensor, list]:
        """The update [N] for gradients [N], and the new per-coordinate states."""
        x = preprocess(grad)
        new_state = []
        for index, cell in enumerate(self.cells):
            h, c = cell(x, None if state is None else state[index])
            new_state.append((h, c))
            x = h
        return self.out(x).squeeze(-1) * self.output_scale, new_state


def detached(state: list | None) -> list | None:
    return None if state is None else [(h.detach(), c.detach()) for h, c in state]


def unrolled_loss(net: CoordinateLSTM, problem: Any, theta: torch.Tensor, state: list | None, start: int,
                  steps: int, second_order: bool = False, log_loss: bool = False, log_floor: float = 0.0):
    """Σ_{t=1..steps} f(θ_{start+t}) (or Σ log(f + ``log_floor``) with ``log_loss``) along ``steps`` learned updates from
    θ_start = ``theta``; returns it, the last θ and state (still attached: the caller detaches them between
    truncations) and the plain Σ f as a float."""
    theta = theta.detach().requires_grad_(True)
    total, plain = theta.new_zeros(()), 0.0
    for t in range(start, start + steps + 1):
        loss = problem.loss(theta, t)
        if t > start:
            total = total + (torch.log(loss + log_floor) if log_loss else loss)
            plain += float(loss.detach())
        if t == start + steps:
            break
        grad, = torch.autograd.grad(loss, theta, create_graph=second_order, retain_graph=True)
        update, state = net(grad if second_order else grad.detach(), state)
        theta = theta + update
    return total, theta, state, plain


@dataclass
class LSTMOptimizerHParams:
    hidden: int = hparam(20, "Hidden units of each of the two coordinate-wise LSTM layers (20 in Andrychowicz et "
                         "al. 2016).", low=1, high=256)
    unroll: int = hparam(20, "Steps per truncation of backpropagation through time: φ is updated after every this "
                         "many optimizee steps (20 in Andrychowicz et al. 2016).", low=1, high=1000)
    output_scale: float = hparam(0.1, "The LSTM's output is multiplied by this to give the update (0.1 in "
                                 "Andrychowicz et al. 2016).", low=1e-6, high=10.0, log_scale=True)
    second_order: bool = hparam(False, "Backpropagate through the optimizee's gradients (second derivatives). Off "
                                "in Andrychowicz et al. 2016, who treat the gradients as inputs.")
    meta_loss: str = hparam("sum", "What an unroll minimises: sum, Σ_t f(θ_t) as in Andrychowicz et al. 2016; log, "
                            "Σ_t log f(θ_t), which weighs a late fall from 0.01 to 0.001 like an early one from 10 to 1 "
                            "(not in the paper; for problems whose loss spans decades).", choices=("sum", "log"))
    log_floor: float = hparam(0.0, "With the log meta-loss, minimise Σ_t log(f(θ_t) + this): the log's pull, 1/(f + "
                              "floor), stops growing below the floor, so problems still stuck high weigh as much as "
                              "driving solved ones from 1e-5 to 1e-6 (not in the paper; 0: the plain log).", low=0.0,
                              high=1e3)
    grad_clip: float = hparam(1.0, "Clip the meta-gradient's global norm to this; 0 turns clipping off (not in the "
                              "paper; it keeps early truncations on steep problems from blowing up).", low=0.0,
                              high=1e6)


RACE = InspectionSpec(
    "race", "Optimizer race on a probe problem", "curves",
    "The log10 optimizee loss at each step on one fixed problem (a probe drawn like the validation problems): the "
    "learned optimizer against Adam, SGD, RMSprop and Nesterov, each with its learning rate tuned on training "
    "problems (Andrychowicz et al. 2016, figures 2 and 4). The learned curve should fall below the others as "
    "training goes on.", x_label="optimizee step", y_label="log10 loss", x_key="step")

TRAINING = {"steps": 300, "meta_batch": 1, "lr": 3e-3, "lr_schedule": "constant", "val_interval": 50,
            "val_episodes": 10}
QUADRATIC = Recipe(
    "default", "The paper's quadratics (section 3.1): 10-d f(θ) = ‖Wθ − y‖², unrolls of 20 steps over a 100-step "
    "horizon, Adam on the LSTM at 3e-3, 300 problems (a CPU-sized run; the paper trains longer).",
    kind=KIND, recommended=True, task={"optimizee": "quadratic"}, training=TRAINING)
GLYPH_MLP = Recipe(
    "mlp", "The paper's MLP (section 3.2: 20 sigmoid units, minibatches of 128) on 10-way problems of glyph "
    "characters at 16x16 (28x28 in the paper's MNIST; smaller keeps the LSTM's 5,350 coordinates CPU-sized), unrolls "
    "of 20 over a 100-step horizon, the log meta-loss floored at 1e-3 (these losses fall to 1e-3 and below; the "
    "plain log left a few problems stuck near 0.04 while it drove the others to 1e-5), Adam on the LSTM at 3e-3, "
    "150 problems, the best of validations on 20 problems every 25.",
    kind=KIND, datasets=("glyphs",), dataset={"image_size": 16}, task={"optimizee": "mlp"},
    hparams={"meta_loss": "log", "log_floor": 1e-3},
    training={**TRAINING, "steps": 150, "val_interval": 25, "val_episodes": 20})
OMNIGLOT_CONVNET = Recipe(
    "convnet", "A small convnet (two stride-2 convolutions of 8 filters) on 10-way Omniglot problems, unrolls of 20 "
    "over a 100-step horizon, Adam on the LSTM at 3e-3, 200 problems (the paper's convnet runs on CIFAR-10).",
    kind=KIND, datasets=("omniglot",), task={"optimizee": "convnet"}, training={**TRAINING, "steps": 200})


@register
class LSTMOptimizer(Algorithm):
    name = "lstm-optimizer"
    title = "LSTM optimizer (L2L by GD by GD)"
    family = Family.OPTIMIZATION
    summary = "A coordinate-wise LSTM learns the update rule (Andrychowicz et al. 2016)."
    description = ("A two-layer LSTM with 20 hidden units, shared by every coordinate of the optimizee, maps each "
                   "preprocessed gradient (log-magnitude and sign) to that coordinate's update. It is trained by "
                   "truncated backpropagation through time (unrolls of 20 steps over a 100-step horizon) to make "
                   "the optimizee's loss fall fast along the whole trajectory (Andrychowicz et al. 2016).")
    HParams = LSTMOptimizerHParams
    kinds = (KIND,)
    capabilities = frozenset({"inspection", "training_data"})
    inspections = (RACE,)
    recipes = (QUADRATIC, GLYPH_MLP, OMNIGLOT_CONVNET)
    unused_training_fields = ("train_ways", "train_shots", "train_queries")

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.net = CoordinateLSTM(hparams.hidden, hparams.output_scale).to(self.device)
        self._probe: dict[str, Any] | None = None  # problem source, horizon and seed for the race record

    def modules(self) -> dict[str, nn.Module]:
        return {"optimizer_net": self.net}

    # --- training ----------------------------------------------------------------------------------
    def meta_train_step(self, batch) -> dict[str, float]:
        """One problem (or a meta-batch side by side) over its horizon: one update of φ per truncation."""
        problems = [problem.to(self.device) for problem in batch]
        horizon = problems[0].horizon
        thetas = [problem.theta0 for problem in problems]
        states: list = [None] * len(problems)
        optimizer = self.optimizers[0]
        losses = []
        for start in range(0, horizon, self.hparams.unroll):
            steps = min(self.hparams.unroll, horizon - start)
            optimizer.zero_grad(set_to_none=True)
            for index, problem in enumerate(problems):
                total, theta, state, plain = unrolled_loss(self.net, problem, thetas[index], states[index], start,
                                                           steps, self.hparams.second_order,
                                                           self.hparams.meta_loss == "log", self.hparams.log_floor)
                (total / (steps * len(problems))).backward()
                thetas[index], states[index] = theta.detach(), detached(state)
                losses.append(plain / steps)
            if self.hparams.grad_clip:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.hparams.grad_clip)
            optimizer.step()
        self.step_schedulers()
        with torch.no_grad():
            final = float(np.mean([float(p.loss(theta, horizon)) for p, theta in zip(problems, thetas)]))
        return {"loss": float(np.mean(losses)), "final_loss": final}

    # --- optimizing ----------------------------------------------------------------------------------
    def optimizer_steps(self, problem: Any, steps: int) -> Iterator[float]:
        """Yields f(θ_t) for t = 0 .. steps under the learned updates (no meta-gradient)."""
        theta, state = problem.theta0.detach().to(self.device), None
        for t in range(steps + 1):
            with torch.enable_grad():
                leaf = theta.detach().requires_grad_(True)
                loss = problem.loss(leaf, t)
                grad, = torch.autograd.grad(loss, leaf)
            value = float(loss.detach())
            yield value
            if t == steps or not math.isfinite(value):
                return
            with torch.no_grad():
                update, state = self.net(grad, state)
                theta = theta + update

    def adapt(self, support_x, support_y, ways: int):
        raise NotImplementedError(f"{self.title} optimizes problems (optimizer_steps); it does not adapt to a "
                                  "support set")

    def predict(self, adapted, query_x):
        raise NotImplementedError(f"{self.title} optimizes problems (optimizer_steps); it does not predict")

    # --- the race record ----------------------------------------------------------------------------
    def attach_training_data(self, dataset: Any, config: Any) -> None:
        """Where the race record's probe problem and the tuning problems come from."""
        from workbench.core.kinds import get_kind

        kind = get_kind(config.kind, config.task)
        self._probe = {"kind": kind, "dataset": dataset, "seed": config.evaluation.seed}

    def inspect(self) -> dict[str, dict[str, Any]]:
        if self._probe is None:
            return {}
        from workbench.core.kinds.learning_to_optimize import race_record

        probe = self._probe
        return {RACE.name: race_record(probe["kind"], probe["dataset"], self, probe["seed"])}

"""DARTS: Differentiable Architecture Search (Liu, Simonyan & Yang, ICLR 2019, arXiv:1806.09055).

Every edge of a cell is a softmax(alpha)-weighted mixture of candidate operations (the search space of
:mod:`workbench.core.models.darts_cell`), so the architecture becomes continuous and is searched by gradient
descent on a bi-level problem: alpha minimizes the validation loss of the weights w*(alpha) that minimize the
training loss. Each step first updates alpha on a held-out part of the training data (the kind's
:class:`~workbench.core.kinds.architecture_search.SearchTask`), then the weights on the other part.

The architecture gradient (the paper's eq. 6-8): first order takes w*(alpha) ~ w (xi = 0); second order unrolls one
weight step w' = w - xi grad_w L_train(w, alpha) and differentiates through it,
``grad_alpha L_val(w', alpha) - xi grad^2_{alpha,w} L_train(w, alpha) grad_w' L_val(w', alpha)``, the Hessian-vector
product by central finite differences at w +- eps grad_w' L_val (eps = 0.01 / ||grad_w' L_val||). The unrolled step
is plain SGD (the paper's code also carries momentum and weight decay into it).

The derived cell (``genotype()``) keeps for each node its two strongest incoming edges and for each its strongest
non-zero operation; the kind retrains it from scratch for the evaluation. The Mechanism view shows softmax(alpha)
per edge over the search (heatmaps with a scrubber), the mean weight of each operation over the steps (curves) and
the drawing of the derived cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, make_scheduler
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.kinds import get_kind
from workbench.core.kinds.architecture_search import prototype_logits
from workbench.core.models.darts_cell import OP_TITLES, PRIMITIVES, Genotype, draw_cell, edge_names
from workbench.core.recipes import Recipe

Params = dict[str, torch.Tensor]
# loss_of(weights, alphas, "train" | "val") -> the scalar loss of that part with those weights and alphas
LossOf = Callable[[Params, Params, str], torch.Tensor]
HISTORY_POINTS = 400  # op-weight curves keep at most this many points (every other one is thinned beyond)


@dataclass
class DartsHParams:
    init_channels: int = hparam(8, "Channels C of the first cell of the searched network (doubled at each reduction "
                           "cell; the paper searches with 16 on CIFAR-10).", low=2, high=64)
    cells: int = hparam(3, "Cells of the searched network; reduction cells sit at a third and two thirds of the "
                        "depth (the paper searches with 8).", low=2, high=8)
    order: int = hparam(2, "Architecture gradient: 1 = first order (w*(alpha) taken as the current w, xi = 0), 2 = "
                        "second order (one unrolled weight step, Hessian-vector product by finite differences), as "
                        "in Liu et al. 2019, section 2.3.", choices=(1, 2))
    arch_lr: float = hparam(3e-4, "Adam learning rate of alpha (the paper: 3e-4, betas (0.5, 0.999), over about "
                            "20,000 steps; the short CPU recipes use a larger one).", low=1e-6, high=1.0,
                            log_scale=True)
    arch_weight_decay: float = hparam(1e-3, "Weight decay of alpha (the paper: 1e-3).", low=0.0, high=1.0)
    unrolled_lr: float = hparam(0.0, "xi, the step of the unrolled weight update in the second-order gradient; 0 "
                                "uses the weights' current learning rate (the paper's choice, xi = eta).",
                                low=0.0, high=10.0)
    momentum: float = hparam(0.9, "Momentum of the weights' SGD (the paper: 0.9).", low=0.0, high=0.999)
    weight_decay: float = hparam(3e-4, "Weight decay of the weights' SGD (the paper: 3e-4).", low=0.0, high=1.0)
    grad_clip: float = hparam(5.0, "Clip the weights' gradient norm to this (the paper: 5); 0 turns it off.",
                              low=0.0, high=1000.0)


def unrolled_weights(loss_of: LossOf, weights: Params, alphas: Params, xi: float, create_graph: bool) -> Params:
    """w' = w - xi grad_w L_train(w, alpha)."""
    names = list(weights)
    grads = torch.autograd.grad(loss_of(weights, alphas, "train"), [weights[n] for n in names],
                                create_graph=create_graph, allow_unused=True)
    return {n: weights[n] - xi * (g if g is not None else 0.0) for n, g in zip(names, grads)}


def arch_gradient(loss_of: LossOf, weights: Params, alphas: Params, xi: float, order: int,
                  epsilon: float = 0.01) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DARTS' architecture gradient (first or second order) and the validation loss it was taken at."""
    alpha_list = list(alphas.values())
    if order == 1 or xi == 0:
        loss = loss_of(weights, alphas, "val")
        return list(torch.autograd.grad(loss, alpha_list)), loss.detach()
    unrolled = {n: w.detach().requires_grad_() for n, w in unrolled_weights(loss_of, weights, alphas, xi,
                                                                             False).items()}
    loss = loss_of(unrolled, alphas, "val")
    grads = torch.autograd.grad(loss, alpha_list + list(unrolled.values()), allow_unused=True)
    direct = grads[:len(alpha_list)]
    vector = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads[len(alpha_list):],
                                                                          unrolled.values())]
    hessian_vector = finite_difference_hvp(loss_of, weights, alphas, vector, epsilon)
    return [d - xi * h for d, h in zip(direct, hessian_vector)], loss.detach()


def finite_difference_hvp(loss_of: LossOf, weights: Params, alphas: Params, vector: list[torch.Tensor],
                          epsilon: float) -> list[torch.Tensor]:
    """grad^2_{alpha,w} L_train(w, alpha) . v ~ (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2 eps_v, with
    w+- = w +- eps_v v and eps_v = epsilon / ||v|| (the paper's eq. 8)."""
    norm = torch.sqrt(sum((v * v).sum() for v in vector))
    scale = epsilon / norm.clamp_min(1e-12)
    gradients = []
    for sign in (1.0, -1.0):
        shifted = {n: (w + sign * scale * v).detach() for (n, w), v in zip(weights.items(), vector)}
        loss = loss_of(shifted, alphas, "train")
        gradients.append(torch.autograd.grad(loss, list(alphas.values())))
    return [(plus - minus) / (2 * scale) for plus, minus in zip(*gradients)]


def exact_arch_gradient(loss_of: LossOf, weights: Params, alphas: Params, xi: float) -> list[torch.Tensor]:
    """The gradient the second-order approximation estimates, by differentiating through the unrolled step (for
    tests: it keeps the whole second-order graph)."""
    unrolled = unrolled_weights(loss_of, weights, alphas, xi, create_graph=True)
    return list(torch.autograd.grad(loss_of(unrolled, alphas, "val"), list(alphas.values())))


CELL_WORDS = {"normal": "normal", "reduce": "reduction"}


def _heatmap_spec(cell: str) -> InspectionSpec:
    return InspectionSpec(
        f"alpha_{cell}", f"softmax(α) per edge, {CELL_WORDS[cell]} cell", "heatmap",
        f"The mixing weights of each edge of the {CELL_WORDS[cell]} cell (rows: edge 'input → node'; columns: "
        "operations), DARTS' continuous architecture (Liu et al. 2019). The derived cell keeps, for each node, the "
        "two edges whose strongest non-zero operation weighs most. Scrub to watch them leave the uniform start.",
        x_label="operation", y_label="edge")


def _curves_spec(cell: str) -> InspectionSpec:
    return InspectionSpec(
        f"ops_{cell}", f"Operation weights over the search, {CELL_WORDS[cell]} cell", "curves",
        f"The mean softmax(α) weight of each operation over the 14 edges of the {CELL_WORDS[cell]} cell, at every "
        "search step (Liu et al. 2019): which operations the search favours, and whether parameter-free ones "
        "(skip, pool) take over. Starts at 0.2 each; kept from the start of this training session.", x_label="step",
        y_label="mean weight", x_key="step")


CELL_SPEC = InspectionSpec(
    "derived_cell", "Derived cell", "image_grid",
    "The discrete cells derived from the current α (Liu et al. 2019, section 2.4): for each of the 4 nodes its two "
    "strongest incoming edges, each with its strongest non-zero operation; the node outputs are concatenated. The "
    "evaluation retrains this cell from scratch.")

EPISODE_SETTING = {"train_ways": 5, "train_shots": 1, "train_queries": 5}


@register
class Darts(Algorithm):
    name = "darts"
    title = "DARTS"
    family = Family.OPTIMIZATION
    summary = "Differentiable architecture search: a cell's operations searched by bi-level gradient descent."
    description = ("DARTS (Liu, Simonyan & Yang, 2019) relaxes the choice of each edge's operation in a cell into a "
                   "softmax over all candidates, so the architecture weights α can be learned by gradient descent: "
                   "α on held-out data, the network weights on training data, alternately. The second-order "
                   "gradient accounts for how one weight step would change with α (a finite-difference Hessian-"
                   "vector product); the first order ignores it and is cheaper. At the end the strongest operations "
                   "give a discrete cell, which is retrained from scratch.")
    HParams = DartsHParams
    kinds = ("architecture-search",)
    capabilities = frozenset({"embeddings", "inspection", "training_data"})
    inspections = (_heatmap_spec("normal"), _heatmap_spec("reduce"), _curves_spec("normal"), _curves_spec("reduce"),
                   CELL_SPEC)
    recipes = (
        Recipe("default", "Second-order DARTS sized for a CPU: 5-way 1-shot episodes with a ProtoNet head, a "
               "3-cell backbone of 8 channels, 300 search steps (SGD 0.025 with cosine decay for the weights, Adam "
               "3e-3 for α: ten times the paper's rate, for a search 60 times shorter). About 10 CPU-minutes on "
               "glyphs; the evaluation then retrains the derived cell, a random cell and Conv-4.",
               kind="architecture-search", recommended=True,
               training={"steps": 300, "lr": 0.025, "lr_schedule": "cosine", "val_interval": 50,
                         "val_episodes": 100, **EPISODE_SETTING},
               hparams={"order": 2, "arch_lr": 3e-3}),
        Recipe("first-order", "The default recipe with the first-order gradient (ξ = 0): about 2.5 times cheaper "
               "per step; the paper found it found worse cells on CIFAR-10 (3.00% vs 2.76% test error).",
               kind="architecture-search",
               training={"steps": 300, "lr": 0.025, "lr_schedule": "cosine", "val_interval": 50,
                         "val_episodes": 100, **EPISODE_SETTING},
               hparams={"order": 1, "arch_lr": 3e-3}),
    )

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.network = self.kind.search_network(model_spec, hparams.init_channels, hparams.cells).to(self.device)
        self.history_steps: list[int] = []
        self.history: list[dict[str, np.ndarray]] = []
        self.steps_done = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network}

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        hp = self.hparams
        weights = torch.optim.SGD(self.network.weight_parameters(), lr=lr, momentum=hp.momentum,
                                  weight_decay=hp.weight_decay)
        arch = torch.optim.Adam(self.network.arch_parameters(), lr=hp.arch_lr, betas=(0.5, 0.999),
                                weight_decay=hp.arch_weight_decay)
        self.optimizers = [weights, arch]
        self.schedulers = [make_scheduler(weights, total_steps, schedule, self.schedule_clock), None]

    def attach_training_data(self, dataset, config) -> None:
        """The run's kind settings (the task's ProtoNet temperature) replace the defaults the algorithm was built
        with; the search data themselves come from the kind's sampler."""
        self.kind = get_kind(config.kind, config.task)

    # --- the bi-level step ---------------------------------------------------------------------------------
    def split_params(self) -> tuple[Params, Params]:
        arch = set(self.network.arch_names())
        named = dict(self.network.named_parameters())
        return ({n: p for n, p in named.items() if n not in arch}, {n: named[n] for n in self.network.arch_names()})

    def loss_function(self, task) -> LossOf:
        """L(weights, alphas, part) on one SearchTask, through the kind's head (ProtoNet or linear)."""
        def loss_of(weights: Params, alphas: Params, part: str) -> torch.Tensor:
            params = {**weights, **alphas}
            forward = lambda x, head=False: functional_call(self.network, params, (x,), {"head": head})  # noqa: E731
            logits, targets = self.kind.logits(forward, getattr(task, part))
            return F.cross_entropy(logits, targets)
        return loss_of

    def xi(self) -> float:
        return self.hparams.unrolled_lr or float(self.optimizers[0].param_groups[0]["lr"])

    def meta_train_step(self, tasks) -> dict[str, float]:
        self.network.train()
        tasks = [task.to(self.device) for task in tasks]
        weights, alphas = self.split_params()
        weight_opt, arch_opt = self.optimizers
        totals = [torch.zeros_like(a) for a in alphas.values()]
        val_loss = 0.0
        for task in tasks:  # alpha first, on the held-out part
            grads, loss = arch_gradient(self.loss_function(task), weights, alphas, self.xi(), self.hparams.order)
            totals = [t + g / len(tasks) for t, g in zip(totals, grads)]
            val_loss += float(loss) / len(tasks)
        arch_opt.zero_grad(set_to_none=True)
        for alpha, grad in zip(alphas.values(), totals):
            alpha.grad = grad
        arch_opt.step()
        loss, accuracy = self._weight_step(tasks, weight_opt)
        self.step_schedulers()
        self.steps_done += 1
        self._remember_op_weights()
        return {"loss": loss, "accuracy": accuracy, "search_val_loss": val_loss}

    def _weight_step(self, tasks, optimizer) -> tuple[float, float]:
        optimizer.zero_grad(set_to_none=True)
        total_loss, total_accuracy = 0.0, 0.0
        for task in tasks:
            logits, targets = self.kind.logits(lambda x, head=False: self.network(x, head), task.train)
            loss = F.cross_entropy(logits, targets) / len(tasks)
            loss.backward()
            total_loss += float(loss.detach())
            total_accuracy += float((logits.argmax(-1) == targets).float().mean()) / len(tasks)
        for alpha in self.network.arch_parameters():
            alpha.grad = None  # the weights' step never moves alpha
        if self.hparams.grad_clip:
            nn.utils.clip_grad_norm_(self.network.weight_parameters(), self.hparams.grad_clip)
        optimizer.step()
        return total_loss, total_accuracy

    def _remember_op_weights(self) -> None:
        weights = self.network.op_weights()
        self.history_steps.append(self.steps_done)
        self.history.append({cell: values.mean(axis=0) for cell, values in weights.items()})
        if len(self.history_steps) > HISTORY_POINTS:
            keep = sorted(set(range(0, len(self.history_steps) - 1, 2)) | {len(self.history_steps) - 1})
            self.history_steps = [self.history_steps[i] for i in keep]
            self.history = [self.history[i] for i in keep]

    # --- the derived cell and the searched network as an encoder ------------------------------------------------
    def genotype(self) -> Genotype:
        return self.network.genotype()

    @torch.no_grad()
    def embed(self, x, adapted=None):
        self.network.eval()
        return self.network(x.to(self.device))

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        support = self.embed(support_x)
        return {"support": support, "support_y": support_y.to(self.device), "ways": ways}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        logits = prototype_logits(adapted["support"], adapted["support_y"], self.embed(query_x), adapted["ways"],
                                  self.kind.options.temperature)
        return logits.softmax(dim=-1)

    # --- inspection ---------------------------------------------------------------------------------------------
    def inspect(self) -> dict[str, dict]:
        weights = self.network.op_weights()
        genotype = self.genotype()
        titles = np.array([OP_TITLES[op] for op in PRIMITIVES])
        out: dict[str, dict] = {}
        for cell in ("normal", "reduce"):
            out[f"alpha_{cell}"] = {"values": weights[cell], "rows": np.array(edge_names()), "columns": titles}
            steps = self.history_steps or [self.steps_done]
            means = np.stack([h[cell] for h in self.history]) if self.history else weights[cell].mean(0)[None]
            out[f"ops_{cell}"] = {"step": np.asarray(steps, np.float64),
                                  **{OP_TITLES[op]: means[:, k] for k, op in enumerate(PRIMITIVES)}}
        out["derived_cell"] = {
            "images": np.stack([draw_cell(genotype.normal, "normal cell"),
                                draw_cell(genotype.reduce, "reduction cell")]),
            "labels": np.array([f"normal: {Genotype.cell_text(genotype.normal)}",
                                f"reduction: {Genotype.cell_text(genotype.reduce)}"])}
        return out

"""Dataset distillation (Wang, Zhu, Torralba and Efros 2018, "Dataset Distillation", arXiv:1811.10959): learn N
synthetic images per class and one learning rate per gradient step, such that a network trained on the images
by those steps classifies real images well.

One outer step: take a network's starting weights θ0 (the fixed initialisation, or a fresh random one), take the
kind's ``distill_steps`` gradient steps θ_{i+1} = θ_i − η_i ∇ℓ(x̃, ỹ; θ_i) on the whole distilled set (x̃, ỹ), score
θ_K on a batch of real training images, and differentiate that loss through all the steps (second order, as in the
paper) to update x̃ and η with Adam. The steps run through ``torch.func.functional_call`` (functional.sgd_step), so
the network's own weights are never touched. Images start as Gaussian noise, as in the paper; η = softplus(raw)
starts at ``init_lr`` (the authors' code: 0.02) and stays positive.

The kind (``workbench.core.kinds.distillation``) owns the problem and its options: classes, images per class, the
initialisation (fixed or random) and the inner steps. They reach the algorithm through ``attach_training_data``;
a checkpoint holds the distilled set with its shapes and the initialisation, so evaluation needs nothing else.
The Mechanism view shows the distilled images (an image grid) and the learned rates per step (curves).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy, make_scheduler
from workbench.core.algorithms.functional import Params, detached, forward_with, named_params, sgd_step
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.hparams import hparam
from workbench.core.inspection import MAX_GRID_IMAGES, InspectionSpec, image_thumbnails
from workbench.core.kinds import get_kind
from workbench.core.recipes import Recipe


@dataclass
class DatasetDistillationHParams:
    hidden: int = hparam(32, "Filters per conv layer of the networks trained on the distilled set.", low=4, high=256)
    init_lr: float = hparam(0.02, "Starting value of every learned learning rate (Wang et al. 2018's code: 0.02).",
                            low=1e-4, high=10.0, log_scale=True)
    batch_size: int = hparam(1024, "Real training images that score the trained network at each outer step (all "
                             "of them when fewer; Wang et al. 2018's code: 1024).", low=1, high=65_536)
    inits_per_step: int = hparam(1, "Random initialisation: networks drawn per outer step, their losses averaged "
                                 "(lower variance, proportionally slower). Fixed initialisation: ignored.", low=1,
                                 high=64)


def _inverse_softplus(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class DistilledSet(nn.Module):
    """The learned images [classes x per_class, C, H, W] (model-input scale) with their labels (image-major: one
    image of every class, then the next), the raw learning rate of each inner step, and whether the initialisation
    is fixed."""

    def __init__(self, classes: int, per_class: int, channels: int, size: int, steps: int, init_lr: float,
                 fixed: bool):
        super().__init__()
        self.images = nn.Parameter(torch.randn(classes * per_class, channels, size, size))
        self.raw_lrs = nn.Parameter(torch.full((steps,), _inverse_softplus(init_lr)))
        self.register_buffer("labels", torch.arange(classes).repeat(per_class))
        self.register_buffer("fixed", torch.tensor(bool(fixed)))

    def lrs(self) -> torch.Tensor:
        return F.softplus(self.raw_lrs)

    @classmethod
    def shaped_like(cls, state: dict[str, torch.Tensor]) -> "DistilledSet":
        """An empty set of a saved state's shapes (a checkpoint holds its own images per class and steps)."""
        images, labels = state["images"], state["labels"]
        classes = int(labels.max()) + 1 if len(labels) else 1
        made = cls(classes, max(1, len(labels) // classes), images.shape[1], images.shape[2],
                   len(state["raw_lrs"]), 0.02, bool(state["fixed"]))
        made.images = nn.Parameter(torch.zeros_like(images))
        return made


# Outer Adam at a constant rate: a decaying one stalled the images on glyphs (loss 0.86 after 300 steps, against
# 0.06 after 200 at a constant 0.03).
GLYPH_TRAINING = {"steps": 300, "lr": 0.03, "lr_schedule": "constant", "val_interval": 50, "val_episodes": 10,
                  "checkpoint_interval": 100}


@register
class DatasetDistillationAlgorithm(Algorithm):
    name = "dataset-distillation"
    title = "Dataset distillation"
    family = Family.OPTIMIZATION
    summary = "Learns a few synthetic images per class, and the learning rates to train a network on them."
    description = ("Dataset distillation (Wang et al. 2018) compresses a training set into a few synthetic images "
                   "per class. A network takes a few gradient steps on the synthetic images, each with its own "
                   "learned learning rate; its loss on real images is differentiated through those steps to update "
                   "the images and the rates. With a fixed initialisation the images fit one network; with random "
                   "initialisations they must teach any network of the architecture. The Mechanism view shows the "
                   "images as they form.")
    HParams = DatasetDistillationHParams
    kinds = ("distillation",)
    capabilities = frozenset({"training_data", "inspection"})
    inspections = (
        InspectionSpec("distilled_images", "Distilled images", "image_grid",
                       "The synthetic training images with their classes (Wang et al. 2018, figure 2), each scaled "
                       "to its own range. They start as noise and take the shapes a network needs to learn the "
                       "classes in a few steps."),
        InspectionSpec("real_examples", "A real image per class", "image_grid",
                       "One real training image of each class, for comparison with the distilled images (the "
                       "same order)."),
        InspectionSpec("learning_rates", "Learned learning rates", "curves",
                       "The learned learning rate of each gradient step on the distilled images (Wang et al. 2018 "
                       "learn one per step).", "inner step", "learning rate", x_key="step"),
    )
    training_input = "batches"
    unused_training_fields = ("meta_batch", "train_ways", "train_shots", "train_queries")
    recipes = (
        Recipe("glyphs-fixed", "10 glyph classes, 1 image per class, one fixed initialisation, 10 inner steps, "
               "Adam at a constant 0.03 on images and rates for 300 steps (a few CPU minutes); the README's "
               "acceptance setting.", kind="distillation", datasets=("glyphs",), recommended=True,
               task={"classes": 10, "images_per_class": 1, "init": "fixed"}, training=GLYPH_TRAINING),
        Recipe("glyphs-random", "As glyphs-fixed, but a new random initialisation at every step (2 averaged), so the "
               "images must teach any network; harder, as in the paper.", kind="distillation", datasets=("glyphs",),
               task={"classes": 10, "images_per_class": 1, "init": "random"}, hparams={"inits_per_step": 2},
               training=GLYPH_TRAINING),
        Recipe("glyphs-10-per-class", "10 glyph classes, 10 images per class, fixed initialisation.",
               kind="distillation", datasets=("glyphs",), task={"classes": 10, "images_per_class": 10},
               training=GLYPH_TRAINING),
        Recipe("omniglot-20", "20 Omniglot characters of the background set, 1 image per class, fixed "
               "initialisation, 500 steps.", kind="distillation", datasets=("omniglot",), recommended=True,
               task={"classes": 20, "images_per_class": 1},
               training={**GLYPH_TRAINING, "steps": 500, "val_interval": 100}),
        Recipe("default", "Any image dataset: 10 classes, 1 image per class, fixed initialisation, 300 steps.",
               kind="distillation", recommended=True, task={"classes": 10, "images_per_class": 1},
               training=GLYPH_TRAINING),
    )

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.init_net = self.kind.build_network(model_spec, hparams.hidden).to(self.device)
        self.init_net.requires_grad_(False)  # the fixed initialisation is drawn once, never trained
        self.class_names: list[str] = []
        self.real_examples: np.ndarray | None = None  # one training image per class, for the Mechanism view
        self._build_distilled()

    def _build_distilled(self) -> None:
        options, spec = self.kind.options, self.model_spec
        self.distilled = DistilledSet(spec.ways, options.images_per_class, spec.in_channels, spec.image_size,
                                      options.distill_steps, self.hparams.init_lr, options.init == "fixed")
        self.distilled.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"distilled": self.distilled, "init_net": self.init_net}

    def load_state_dict(self, state) -> None:
        saved = state.get("distilled") or {}
        if saved and any(saved[key].shape != value.shape for key, value in self.distilled.state_dict().items()
                         if key in saved):
            self.distilled = DistilledSet.shaped_like(saved).to(self.device)
        super().load_state_dict(state)

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        optimizer = torch.optim.Adam(self.distilled.parameters(), lr=lr)
        self.optimizers = [optimizer]
        self.schedulers = [make_scheduler(optimizer, total_steps, schedule, self.schedule_clock)]

    # --- the kind's protocol ------------------------------------------------------------------------
    @property
    def init_mode(self) -> str:
        return "fixed" if bool(self.distilled.fixed) else "random"

    @property
    def inner_steps(self) -> int:
        return int(self.distilled.raw_lrs.numel())

    def attach_training_data(self, dataset, config) -> None:
        """The trainer's call before training: the kind's options size the distilled set."""
        self.kind = get_kind(config.kind, config.task)
        if self.kind.options.classes != self.model_spec.ways:
            raise ConfigError("task.classes", f"the model was built for {self.model_spec.ways} classes, the task "
                              f"has {self.kind.options.classes}")
        problem = self.kind.problem(dataset)
        self.class_names = problem.class_names
        images, labels = problem.parts["train"]
        first = torch.stack([torch.nonzero(labels == c)[0, 0] for c in range(problem.num_classes)])
        self.real_examples = image_thumbnails(dataset.spec.normalize(images[first]))
        self._build_distilled()

    def distilled_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.distilled.images.detach(), self.distilled.labels

    def fresh_network(self) -> nn.Module:
        """An untrained network: the fixed initialisation, or one drawn from torch's random stream."""
        if self.init_mode == "fixed":
            return copy.deepcopy(self.init_net)
        dtype = self.distilled.images.dtype
        return self.kind.build_network(self.model_spec, self.hparams.hidden).to(self.device, dtype)

    # --- learning --------------------------------------------------------------------------------
    def unrolled(self, params: Params, create_graph: bool) -> Params:
        """The weights after the inner steps on the distilled set, from ``params`` (leaves that require grad).
        With ``create_graph`` they stay differentiable with respect to the images and the rates."""
        with torch.enable_grad():  # also under a caller's no_grad: the steps need their gradients
            images, labels, lrs = self.distilled.images, self.distilled.labels, self.distilled.lrs()
            for lr in lrs:
                params, _, _ = sgd_step(self.init_net, params, images, labels, lr, create_graph, self.kind.loss)
        return params

    def outer_loss(self, real_x: torch.Tensor, real_y: torch.Tensor,
                   network: nn.Module) -> tuple[torch.Tensor, Params]:
        """The loss on real images of ``network`` trained by the inner steps (differentiable in images and rates),
        and the trained weights."""
        trained = self.unrolled(named_params(network, detach=True), create_graph=True)
        return self.kind.loss(forward_with(self.init_net, trained, real_x), real_y), trained

    def meta_train_step(self, batch) -> dict[str, float]:
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        count = 1 if self.init_mode == "fixed" else self.hparams.inits_per_step
        total_loss, total_accuracy = 0.0, 0.0
        for _ in range(count):
            loss, trained = self.outer_loss(batch.x, batch.y, self.fresh_network())
            (loss / count).backward()
            with torch.no_grad():
                total_accuracy += accuracy(forward_with(self.init_net, trained, batch.x), batch.y) / count
            total_loss += float(loss.detach()) / count
        optimizer.step()
        self.step_schedulers()
        lrs = self.distilled.lrs().detach()
        return {"loss": total_loss, "accuracy": total_accuracy, "lr_mean": float(lrs.mean()),
                "image_std": float(self.distilled.images.detach().std())}

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Params:
        """A fresh network trained on (support_x, support_y) by the learned steps and rates (no graph kept)."""
        if ways != self.model_spec.ways:
            raise WorkbenchError(f"a distilled set's networks classify its {self.model_spec.ways} classes, not "
                                 f"{ways}")
        params = named_params(self.fresh_network(), detach=True)
        with torch.enable_grad():
            for lr in self.distilled.lrs().detach():
                params, _, _ = sgd_step(self.init_net, params, support_x, support_y, lr, False, self.kind.loss)
                params = {name: value.detach().requires_grad_(True) for name, value in params.items()}
        return detached(params)

    @torch.no_grad()
    def predict(self, adapted: Params, query_x: torch.Tensor) -> torch.Tensor:
        return self.kind.predictions(forward_with(self.init_net, adapted, query_x))

    # --- inspection ------------------------------------------------------------------------------
    def inspect(self) -> dict[str, dict[str, np.ndarray]]:
        images, labels = self.distilled_set()
        classes = self.model_spec.ways
        keep = (MAX_GRID_IMAGES // classes) * classes or MAX_GRID_IMAGES  # whole rows of classes
        names = self.class_names if len(self.class_names) == classes else [f"class {c}" for c in range(classes)]
        lrs = self.distilled.lrs().detach().cpu().numpy()
        records = {"distilled_images": {"images": image_thumbnails(images[:keep]),
                                        "labels": np.asarray([names[int(c)] for c in labels[:keep]])},
                   "learning_rates": {"step": np.arange(1, len(lrs) + 1), "learning rate": lrs}}
        if self.real_examples is not None:
            records["real_examples"] = {"images": self.real_examples[:MAX_GRID_IMAGES],
                                        "labels": np.asarray(names[:MAX_GRID_IMAGES])}
        return records

"""The algorithm interface. Each algorithm is one module that subclasses :class:`Algorithm` and registers itself.

An algorithm declares its family, a description and its hyperparameters (a dataclass of
:func:`workbench.core.hparams.hparam` fields). It owns its networks and optimizers and implements:

- ``meta_train_step(batch)``: one outer update; ``batch`` is a list of episodes, or a
  :class:`LabeledBatch` for algorithms whose ``training_input`` is ``"batches"`` (pre-training baselines);
- ``adapt(support_x, support_y, ways)``: a support set gives a task-specific classifier;
- ``predict(adapted, query_x)``: class probabilities for queries;

and the hooks views need: ``embed`` (features the method compares in), ``adaptation_trace``
(per-inner-step losses for gradient-based methods) and ``weight_function`` (learned sample weights).
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn

from workbench.core.hparams import HParamSpec, build, specs, to_dict


class Family(str, Enum):
    OPTIMIZATION = "optimization"
    METRIC = "metric"
    MODEL = "model"
    BASELINE = "baseline"

    @property
    def title(self) -> str:
        return {"optimization": "Optimization-based", "metric": "Metric-based", "model": "Model-based",
                "baseline": "Baselines"}[self.value]


@dataclass(frozen=True)
class ModelSpec:
    """What an algorithm needs to know about the data to build its networks."""

    in_channels: int
    image_size: int
    ways: int  # ways of training episodes (size of MAML's head)
    num_train_classes: int  # classes in meta-train (size of a pre-training head)

    def to_dict(self) -> dict:
        return {"in_channels": self.in_channels, "image_size": self.image_size, "ways": self.ways,
                "num_train_classes": self.num_train_classes}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(int(data["in_channels"]), int(data["image_size"]), int(data["ways"]),
                   int(data["num_train_classes"]))


@dataclass
class LabeledBatch:
    """A plain classification batch over all meta-train classes (for pre-training baselines)."""

    x: torch.Tensor
    y: torch.Tensor  # global class ids in 0..num_train_classes-1

    def to(self, device) -> "LabeledBatch":
        return LabeledBatch(self.x.to(device, non_blocking=True), self.y.to(device))


@dataclass
class NoHParams:
    """For algorithms with nothing to tune."""


class Algorithm(ABC):
    name: ClassVar[str]
    title: ClassVar[str]
    family: ClassVar[Family]
    summary: ClassVar[str]  # one line
    description: ClassVar[str]  # one paragraph, shown in the GUI
    HParams: ClassVar[type] = NoHParams
    training_input: ClassVar[str] = "episodes"  # or "batches"
    gradient_based: ClassVar[bool] = False  # has an inner loop, so adaptation_trace is meaningful

    def __init__(self, hparams: Any, model_spec: ModelSpec, device: torch.device | str = "cpu"):
        self.hparams = hparams
        self.model_spec = model_spec
        self.device = torch.device(device)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []

    # --- declarations --------------------------------------------------------------------------
    @classmethod
    def hparam_specs(cls) -> list[HParamSpec]:
        return specs(cls.HParams)

    @classmethod
    def build_hparams(cls, values: dict | None):
        return build(cls.HParams, values, "algorithm.hparams")

    @classmethod
    def training_input_for(cls, hparams: Any) -> str:
        """What the trainer feeds ``meta_train_step`` under these hyperparameters: "episodes" or "batches".
        By default the class's ``training_input``; an algorithm whose settings change it overrides this."""
        return cls.training_input

    @classmethod
    def full_hparams(cls, values: dict | None) -> dict:
        return to_dict(cls.build_hparams(values))

    @classmethod
    def info(cls) -> dict:
        return {"name": cls.name, "title": cls.title, "family": cls.family.value, "summary": cls.summary,
                "description": cls.description, "gradient_based": cls.gradient_based,
                "training_input": cls.training_input,
                "hparams": [{"name": s.name, "type": s.type.__name__, "default": s.default, "help": s.help,
                             "low": s.low, "high": s.high, "choices": list(s.choices) if s.choices else None}
                            for s in cls.hparam_specs()]}

    # --- networks and optimizers -----------------------------------------------------------------
    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """The networks whose weights make up a checkpoint."""

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        """Default: one Adam over every module's parameters with the requested schedule."""
        params = [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=lr)
        self.optimizers = [optimizer]
        self.schedulers = [make_scheduler(optimizer, total_steps, schedule)]

    def step_schedulers(self) -> None:
        for scheduler in self.schedulers:
            if scheduler is not None:
                scheduler.step()

    def train(self, mode: bool = True) -> "Algorithm":
        for module in self.modules().values():
            module.train(mode)
        return self

    def eval(self) -> "Algorithm":
        return self.train(False)

    def state_dict(self) -> dict[str, Any]:
        return {name: module.state_dict() for name, module in self.modules().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        modules = self.modules()
        missing = sorted(set(modules) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks networks {missing}")
        for name, module in modules.items():
            module.load_state_dict(state[name])

    def optimizer_state(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() if s is not None else None for s in self.schedulers]}

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        for optimizer, saved in zip(self.optimizers, state.get("optimizers", [])):
            try:
                optimizer.load_state_dict(saved)
            except ValueError as error:
                # A checkpoint from an older layout of the network (e.g. Conv-4 with conv biases): the weights
                # convert exactly, the optimizer's moments cannot, so it restarts them.
                warnings.warn(f"optimizer state not restored ({error}); it starts afresh", stacklevel=2)
        for scheduler, saved in zip(self.schedulers, state.get("schedulers", [])):
            if scheduler is not None and saved is not None:
                scheduler.load_state_dict(saved)

    # --- learning --------------------------------------------------------------------------------
    @abstractmethod
    def meta_train_step(self, batch) -> dict[str, float]:
        """One outer update. Returns at least {"loss": float, "accuracy": float}."""

    @abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Any:
        """Build a task-specific classifier from a support set."""

    @abstractmethod
    def predict(self, adapted: Any, query_x: torch.Tensor) -> torch.Tensor:
        """Class probabilities [len(query_x), ways] for queries under an adapted classifier."""

    # --- hooks for views ---------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, adapted: Any = None) -> torch.Tensor:
        """Features the method compares in (metric) or penultimate features (gradient-based, after
        adaptation when ``adapted`` is given)."""
        raise NotImplementedError(f"{self.name} does not expose embeddings")

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways: int,
                         steps: int | None = None) -> list[dict[str, float]]:
        """Per inner step (0 = the meta-learned start): support loss, query loss and query accuracy."""
        return []

    def weight_function(self, losses: torch.Tensor) -> torch.Tensor | None:
        """Learned sample weight for each loss value, or None if the algorithm learns no weighting."""
        return None


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str):
    if schedule == "constant":
        return None
    if schedule == "cosine":
        # Floor at 5% of the base rate so late steps still learn.
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / max(1, total_steps))))
    if schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, total_steps // 4), gamma=0.5)
    raise ValueError(f"unknown lr schedule {schedule!r}")


def accuracy(logits_or_probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float((logits_or_probs.argmax(dim=-1) == targets).float().mean())

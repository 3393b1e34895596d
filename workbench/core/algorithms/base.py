"""The algorithm interface. Each algorithm is one module that subclasses :class:`Algorithm` and registers itself.

An algorithm declares, as data on the class: its family, the experiment kinds it supports (``kinds``), a
description, its hyperparameters (a dataclass of :func:`workbench.core.hparams.hparam` fields), its recipes
(complete training setups) and its capabilities (which optional hooks it implements, so views know what it
feeds). It owns its networks and optimizers and implements:

- ``meta_train_step(batch)``: one outer update; ``batch`` is a list of tasks (episodes), or a
  :class:`LabeledBatch` for algorithms whose ``training_input`` is ``"batches"`` (pre-training baselines);
- ``adapt(support_x, support_y, ways)``: a support set gives a task-specific model;
- ``predict(adapted, query_x)``: the kind's predictions for queries (class probabilities, regression values).

Its kind (``self.kind``) supplies the loss, the head and the metric, so one implementation serves several kinds.
The optional hooks are declared here, each with the capability that announces it (:data:`HOOKS`).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.data.episodes import LabeledBatch  # noqa: F401 (re-exported)
from workbench.core.errors import ConfigError
from workbench.core.hparams import HParamSpec, build, specs, to_dict
from workbench.core.inspection import InspectionSpec
from workbench.core.kinds import get_kind
from workbench.core.models.spec import ModelSpec
from workbench.core.recipes import Recipe

# Optional hooks and the capability flag that says an algorithm implements each. Views and the trainer check the
# flag, never the method: a capability is declared data (see ``Algorithm.capabilities``).
HOOKS = {
    "embeddings": "embed",  # features the method compares in: the Embeddings view, try-a-task maps
    "adaptation": "adaptation_trace",  # per-inner-step losses: the Adaptation view
    "sample_weights": "weight_function",  # learned weight(loss): the Sample weights view
    "training_data": "attach_training_data",  # builds its own problem from the training data before training
    "run_folder": "set_run_folder",  # mirrors view data (histories) into the run folder
    "evaluation_extras": "evaluation_extras",  # adds its own numbers to an evaluation
    "own_validation": "validation_correct",  # scores its own clean held-out set: validation picks checkpoints on it
    "inspection": "inspect",  # records of its mechanism (learned rates, gates, ...): the Mechanism view
    "descriptors": "adapt_from_descriptors",  # classes given by attribute vectors (zero-shot): evaluation, try a task
}


class Family(str, Enum):
    OPTIMIZATION = "optimization"
    METRIC = "metric"
    MODEL = "model"
    BASELINE = "baseline"

    @property
    def title(self) -> str:
        return {"optimization": "Optimization-based", "metric": "Metric-based", "model": "Model-based",
                "baseline": "Baselines"}[self.value]


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
    kinds: ClassVar[tuple[str, ...]] = ("classification",)  # experiment kinds it supports
    capabilities: ClassVar[frozenset[str]] = frozenset()  # keys of HOOKS it implements
    recipes: ClassVar[tuple[Recipe, ...]] = ()  # complete training setups; see workbench.core.recipes
    training_input: ClassVar[str] = "episodes"  # or "batches"
    gradient_based: ClassVar[bool] = False  # has an inner loop, so adaptation_trace is meaningful
    # embed(x, adapted) depends on the task's support (Matching Networks' full context embeddings): the projector
    # then also shows the support-conditioned space, as it shows a gradient-based method's adapted one.
    support_dependent_embeddings: ClassVar[bool] = False
    # The hyperparameter holding its test-time adaptation steps, if it has one (the Adaptation view reads it).
    adaptation_steps_hparam: ClassVar[str] = ""
    # The records ``inspect()`` returns (capability "inspection"), drawn by the generic Mechanism view.
    inspections: ClassVar[tuple[InspectionSpec, ...]] = ()
    # Training settings (TrainingConfig fields) it ignores, e.g. an outer step of its own instead of training.lr;
    # the GUI greys them.
    unused_training_fields: ClassVar[tuple[str, ...]] = ()
    # Whether training.precision = "auto" may run its backbones in bfloat16 (workbench.core.precision). Set it
    # only after a measured comparison (bench/precision.py) showed equal accuracy; otherwise auto keeps float32.
    auto_reduced_precision: ClassVar[bool] = False

    def __init__(self, hparams: Any, model_spec: ModelSpec, device: torch.device | str = "cpu"):
        self.hparams = hparams
        self.model_spec = model_spec
        self.kind = get_kind(model_spec.kind)
        self.device = torch.device(device)
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.schedule_clock = ScheduleClock()

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
    def legacy_kind(cls, hparams: dict[str, Any]) -> str | None:
        """The kind a config of the first format (no ``kind``) meant, from its hyperparameters; None: the
        default kind. An algorithm whose settings once chose the kind (a flag that became a kind) overrides it."""
        return None

    @classmethod
    def upgrade_hparams(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Saved hyperparameters of an older version as this version's (renamed or retired keys)."""
        return values

    @classmethod
    def supports(cls, kind: str) -> bool:
        return kind in cls.kinds

    @classmethod
    def has(cls, capability: str) -> bool:
        return capability in cls.capabilities

    @classmethod
    def info(cls) -> dict:
        return {"name": cls.name, "title": cls.title, "family": cls.family.value, "summary": cls.summary,
                "description": cls.description, "kinds": list(cls.kinds), "capabilities": sorted(cls.capabilities),
                "gradient_based": cls.gradient_based, "training_input": cls.training_input,
                "adaptation_steps_hparam": cls.adaptation_steps_hparam,
                "auto_reduced_precision": cls.auto_reduced_precision,
                "recipes": [recipe.to_dict() for recipe in cls.recipes],
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
        self.schedulers = [make_scheduler(optimizer, total_steps, schedule, self.schedule_clock)]

    def step_schedulers(self) -> None:
        for scheduler in self.schedulers:
            if scheduler is not None:
                scheduler.step()

    def cross_entropy_step(self, episodes, query_logits) -> dict[str, float]:
        """One step of the first optimizer on the query cross-entropy averaged over ``episodes``, the metric
        methods' training step; ``query_logits(episode)`` gives an episode's query logits (the episode is already
        on the device). Gradients accumulate episode by episode, so memory holds one episode's graph at a time.
        Off the CPU the values stay 0-dim device tensors: the trainer reads them without stalling the device."""
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        on_cpu = self.device.type == "cpu"
        total_loss, total_acc = 0.0, 0.0
        for episode in episodes:
            episode = episode.to(self.device)
            logits = query_logits(episode)
            loss = F.cross_entropy(logits, episode.query_y) / len(episodes)
            loss.backward()
            if on_cpu:
                total_loss += loss.item()
                total_acc += accuracy(logits, episode.query_y) / len(episodes)
            else:
                total_loss = total_loss + loss.detach()
                total_acc = total_acc + accuracy_tensor(logits.detach(), episode.query_y) / len(episodes)
        optimizer.step()
        self.step_schedulers()
        return {"loss": total_loss, "accuracy": total_acc}

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

    # --- optional hooks (announce each in ``capabilities``; see HOOKS) ------------------------------------
    def embed(self, x: torch.Tensor, adapted: Any = None) -> torch.Tensor:
        """[embeddings] Features the method compares in (metric) or penultimate features (gradient-based, after
        adaptation when ``adapted`` is given)."""
        raise NotImplementedError(f"{self.name} does not expose embeddings")

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways: int,
                         steps: int | None = None) -> list[dict[str, float]]:
        """[adaptation] Per inner step (0 = the meta-learned start): support loss, query loss and the kind's
        metric on the queries (``query_accuracy`` for classification, ``query_mse`` for regression)."""
        return []

    def weight_function(self, losses: torch.Tensor) -> torch.Tensor | None:
        """[sample_weights] Learned sample weight for each loss value, or None if it learns no weighting."""
        return None

    def attach_training_data(self, dataset: Any, config: Any) -> None:
        """[training_data] Called by the trainer before training, with the loaded dataset and the run's config,
        for algorithms that build their own problem from the training data (e.g. the noisy-label problem)."""

    def set_run_folder(self, folder: Any) -> None:
        """[run_folder] Called by the trainer once the run folder exists (where view data may be mirrored)."""

    def evaluation_extras(self, tasks: Any) -> dict[str, Any]:
        """[evaluation_extras] Algorithm-specific numbers added to an evaluation on ``tasks``."""
        return {}

    def validation_correct(self) -> np.ndarray | None:
        """[own_validation] 1.0 / 0.0 per image of the algorithm's own clean validation set (a noisy-label problem's
        held-out images), or None when it has none; the trainer's validation then scores this instead of
        few-shot episodes, so the best checkpoint is the one that classifies clean images best."""
        return None

    def inspect(self) -> dict[str, dict[str, Any]]:
        """[inspection] One record per declared :class:`InspectionSpec` (by name): named numpy arrays as its
        plot type describes (see workbench.core.inspection). Called at every validation, in eval mode."""
        return {}

    def adapt_from_descriptors(self, descriptors: torch.Tensor) -> Any:
        """[descriptors] A classifier for classes given by their descriptors, float [ways, D] (raw values in the
        order of its ``descriptor_space.fields``, a :class:`workbench.core.data.descriptors.DescriptorSpace` the
        algorithm holds, empty until it has met descriptors), for ``predict`` as ``adapt``'s result is. Evaluation
        passes each episode's class descriptors instead of its support images; "try a task" passes sliders."""
        raise NotImplementedError(f"{self.name} does not classify from descriptors")


class ScheduleClock:
    """What a learning-rate schedule follows: the fraction of the planned steps or, when training has a time
    budget, of the budget (whichever is further), so a budget that ends before the planned steps still gets
    the whole schedule. The trainer sets ``time_fraction``; 0 steps planned means "until the budget"."""

    def __init__(self, total_steps: int = 0):
        self.total_steps = total_steps
        self.time_fraction = 0.0

    def fraction(self, step: int) -> float:
        by_steps = step / self.total_steps if self.total_steps else 0.0
        return min(1.0, max(by_steps, self.time_fraction))


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str,
                   clock: ScheduleClock | None = None):
    """A LambdaLR over the clock's fraction of training: constant (None), cosine down to 5% of the base rate
    (late steps still learn), or step (halved at each quarter)."""
    if clock is None:
        clock = ScheduleClock(total_steps)
    clock.total_steps = total_steps
    if schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * clock.fraction(step))))
    if schedule == "step":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** math.floor(4 * clock.fraction(step)))
    raise ValueError(f"unknown lr schedule {schedule!r}")


def check_declarations(cls: type[Algorithm]) -> None:
    """Raise TypeError if a class's declarations are incomplete or contradict its code."""
    for attribute in ("name", "title", "family", "summary", "description"):
        if not getattr(cls, attribute, None):
            raise TypeError(f"algorithm {cls.__name__} does not declare '{attribute}'")
    if not isinstance(cls.family, Family):
        raise TypeError(f"algorithm {cls.name}: family must be a Family, not {cls.family!r}")
    unknown = sorted(set(cls.capabilities) - set(HOOKS))
    if unknown:
        raise TypeError(f"algorithm {cls.name}: unknown capabilities {unknown}; known are {', '.join(HOOKS)}")
    for capability, hook in HOOKS.items():
        overridden = getattr(cls, hook) is not getattr(Algorithm, hook)
        if capability in cls.capabilities and not overridden:
            raise TypeError(f"algorithm {cls.name} declares '{capability}' but does not implement {hook}()")
    if cls.adaptation_steps_hparam and cls.adaptation_steps_hparam not in {s.name for s in cls.hparam_specs()}:
        raise TypeError(f"algorithm {cls.name}: adaptation_steps_hparam '{cls.adaptation_steps_hparam}' is not "
                        "one of its hyperparameters")
    undeclared = [f.name for f in dataclasses.fields(cls.HParams) if "hparam" not in f.metadata]
    if undeclared:
        raise TypeError(f"algorithm {cls.name}: HParams fields {undeclared} are not declared with hparam() (range "
                        "and help text)")
    for spec in cls.hparam_specs():  # a malformed HParams dataclass fails here
        _check_default(cls, spec)
    for recipe in cls.recipes:
        recipe.check(cls)
    _check_inspections(cls)


def _check_inspections(cls: type[Algorithm]) -> None:
    if ("inspection" in cls.capabilities) != bool(cls.inspections):
        raise TypeError(f"algorithm {cls.name}: the 'inspection' capability and the 'inspections' declaration go "
                        "together (one without the other)")
    names = [spec.name for spec in cls.inspections]
    if len(set(names)) != len(names):
        raise TypeError(f"algorithm {cls.name}: inspection names repeat: {names}")
    for spec in cls.inspections:
        for problem in spec.problems():
            raise TypeError(f"algorithm {cls.name}: {problem}")


def _check_default(cls: type[Algorithm], spec: HParamSpec) -> None:
    """A default outside its own range or choices would make every config that leaves the field out invalid."""
    if spec.default is dataclasses.MISSING:
        raise TypeError(f"algorithm {cls.name}: hyperparameter '{spec.name}' has no default")
    try:
        spec.validate(spec.default, "")
    except ConfigError as error:
        detail = str(error).removeprefix(f"{error.field}: ")
        raise TypeError(f"algorithm {cls.name}: the default of hyperparameter '{spec.name}' is invalid: {detail}") \
            from None


def accuracy(logits_or_probs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(accuracy_tensor(logits_or_probs, targets))


def accuracy_tensor(logits_or_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The accuracy as a 0-dim tensor on the logits' device (reading it is what synchronises a GPU)."""
    return (logits_or_probs.argmax(dim=-1) == targets).float().mean()

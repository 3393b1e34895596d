"""What an experiment kind declares: the data it trains on, the metric its evaluation reports, the views that
apply, what "try a task" means, the datasets that serve it, and the loss, head and task sampling that
algorithms take from it (so one MAML serves classification and regression alike).

A kind is one module under :mod:`workbench.core.kinds` (or a plugin's, through the ``workbench.kinds`` entry
point) that subclasses :class:`ExperimentKind` and registers itself. Kinds sit below the algorithms: an
algorithm receives its kind as an object (``algorithm.kind``) and calls it; a kind never imports an algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from workbench.core.hparams import HParamSpec, build, specs, to_dict
from workbench.core.progress import ProgressCallback, no_progress

if TYPE_CHECKING:  # only for annotations: kinds never import the layers above them
    from workbench.core.data.base import FewShotDataset

# What a kind trains on; the trainer builds its sampler from the kind, so these are descriptions for people.
TRAINS_ON = ("image episodes", "regression tasks", "labelled batches", "optimizee problems")

# View capabilities: a view declares the one it needs; a kind lists those that apply to it, an algorithm those it
# feeds (see Algorithm.capabilities). Views a kind lists but no algorithm must feed ("curves", "evaluation", "try")
# are always on for that kind.
VIEW_CAPABILITIES = ("curves", "embeddings", "adaptation", "sample_weights", "evaluation", "fit", "try_images",
                     "try_points", "inspection")


@dataclass(frozen=True)
class MetricSpec:
    """The headline number of a kind's evaluation."""

    key: str  # "accuracy", "mse": the JSON key of `workbench eval --json` and of the training records
    title: str  # "Accuracy", "MSE"
    higher_is_better: bool
    percent: bool  # shown as a percentage
    # The run index's columns that hold it (best_val_<column>, test_<column>): "accuracy" for a score where higher
    # is better, "mse" for one where lower is; empty: the key itself.
    index_column: str = ""

    @property
    def column(self) -> str:
        return self.index_column or self.key

    def format(self, value: float | None, ci95: float | None = None) -> str:
        if value is None or value != value:
            return "–"
        if self.percent:
            text = f"{100 * value:.2f}%"
            return text + (f" ± {100 * ci95:.2f}" if ci95 is not None and ci95 == ci95 else "")
        text = f"{value:.4g}"
        return text + (f" ± {ci95:.2g}" if ci95 is not None and ci95 == ci95 else "")

    def better(self, new: float, old: float | None) -> bool:
        if old is None or old != old:
            return True
        return new > old if self.higher_is_better else new < old

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "higher_is_better": self.higher_is_better,
                "percent": self.percent}


ACCURACY = MetricSpec("accuracy", "Accuracy", higher_is_better=True, percent=True)
MSE = MetricSpec("mse", "MSE", higher_is_better=False, percent=False)


@dataclass(kw_only=True)
class ResultProvenance:
    """What every kind's evaluation result records besides its numbers: which run, checkpoint and dataset it
    scored, with which algorithm, when, how long it took, and the algorithm's extra numbers (keyword-only, so a
    result class lists its own fields first)."""

    elapsed_s: float = 0.0
    checkpoint: str = ""
    run: str = ""
    dataset: str = ""
    algorithm: str = ""
    created: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def stem_suffix(self, split: str = "test") -> str:
        """The end of a saved result's file stem: its split when not the test split, '-last' for the last
        checkpoint (the best one is the usual)."""
        return (f"-{split}" if split != "test" else "") + ("-last" if self.checkpoint == "last" else "")


@dataclass
class NoOptions:
    """For kinds with no settings of their own."""


class ExperimentKind:
    """Base class of experiment kinds. Everything a GUI or CLI needs to know about a kind is data on the class;
    the methods are what the trainer, the evaluation and the algorithms call."""

    name: ClassVar[str]
    title: ClassVar[str]
    description: ClassVar[str]
    trains_on: ClassVar[str]  # one of TRAINS_ON
    metric: ClassVar[MetricSpec]
    views: ClassVar[tuple[str, ...]]  # VIEW_CAPABILITIES that apply
    try_task: ClassVar[str] = ""  # "images", "points" or "" (none)
    try_task_help: ClassVar[str] = ""
    # DatasetConfig fields that mean something for this kind (the GUI shows only these; others keep defaults).
    dataset_fields: ClassVar[tuple[str, ...]] = ("name", "root", "split", "image_size", "rotations", "download",
                                                 "split_seed", "ways", "shots", "queries")
    default_dataset: ClassVar[str]
    default_algorithm: ClassVar[str]
    # Settings of the kind itself, stored under [task] in the config (noise rates, task ranges, ...).
    Options: ClassVar[type] = NoOptions
    # Evaluation counts: test tasks when the config says 0, per dataset name, else the default.
    test_tasks: ClassVar[int] = 600

    # --- declarations -------------------------------------------------------------------------
    @classmethod
    def option_specs(cls) -> list[HParamSpec]:
        return specs(cls.Options)

    @classmethod
    def build_options(cls, values: dict | None):
        return build(cls.Options, values, "task")

    @classmethod
    def info(cls) -> dict[str, Any]:
        from workbench.core.data import datasets_for_kind

        return {"name": cls.name, "title": cls.title, "description": cls.description, "trains_on": cls.trains_on,
                "metric": cls.metric.to_dict(), "views": list(cls.views), "try_task": cls.try_task,
                "try_task_help": cls.try_task_help, "datasets": datasets_for_kind(cls.name),
                "default_dataset": cls.default_dataset, "default_algorithm": cls.default_algorithm,
                "dataset_fields": list(cls.dataset_fields),
                "options": [{"name": s.name, "type": s.type.__name__, "default": s.default, "help": s.help,
                             "low": s.low, "high": s.high, "choices": list(s.choices) if s.choices else None}
                            for s in cls.option_specs()]}

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.build_options(None)

    def options_dict(self) -> dict[str, Any]:
        return to_dict(self.options)

    # --- what algorithms take from the kind ----------------------------------------------------------
    def output_size(self, ways: int) -> int:
        """Outputs of a task's head: one per class, or one per regression target."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """The metric on one batch of outputs (accuracy, MSE)."""
        raise NotImplementedError

    def predictions(self, outputs: torch.Tensor) -> torch.Tensor:
        """What ``Algorithm.predict`` returns for raw outputs: class probabilities, or the regression values."""
        raise NotImplementedError

    def build_network(self, spec: Any, width: int, *, running_stats: bool = True) -> nn.Module:
        """A backbone ``features`` plus a linear ``head`` of ``output_size(spec.ways)`` outputs, for this kind's
        inputs (Conv-4 for images, an MLP for vectors). ``width``: filters or hidden units."""
        raise NotImplementedError

    def build_encoder(self, spec: Any, width: int) -> nn.Module:
        """The backbone alone, with ``out_dim`` (metric methods and pre-training baselines)."""
        raise NotImplementedError

    # --- data ------------------------------------------------------------------------------------
    def model_spec(self, dataset: "FewShotDataset", config: Any) -> Any:
        """What algorithms need to know about the data to build their networks (a ModelSpec)."""
        raise NotImplementedError

    def train_sampler(self, dataset: "FewShotDataset", config: Any):
        """Draws training tasks (``.sample()`` -> an episode-like task; ``.generator`` is checkpointed)."""
        raise NotImplementedError

    def batch_sampler(self, dataset: "FewShotDataset", config: Any, batch_size: int):
        """Plain labelled batches over all training data, for pre-training baselines."""
        raise NotImplementedError

    def has_validation(self, dataset: "FewShotDataset") -> bool:
        """Whether the dataset can give validation tasks (else the last checkpoint is the best)."""
        return True

    def fixed_tasks(self, dataset: "FewShotDataset", config: Any, split: str, count: int, seed: int, *,
                    ways: int | None = None, shots: int | None = None, queries: int | None = None):
        """Tasks fixed by their seed: every algorithm evaluated with them sees the same ones."""
        raise NotImplementedError

    def evaluate(self, algorithm: Any, tasks: Any, device: torch.device | str = "cpu",
                 progress: ProgressCallback = no_progress, split: str = "test"):
        """Adapt to each fixed task and score it; returns a result with ``value``, ``ci95`` and ``to_dict()``."""
        raise NotImplementedError

    @classmethod
    def result_from_dict(cls, data: dict[str, Any], arrays: dict | None = None):
        """A saved evaluation (JSON plus its arrays) back as this kind's result object."""
        raise NotImplementedError

    def test_task_count(self, dataset_name: str) -> int:
        from workbench.core.data import dataset_info

        info = dataset_info(dataset_name)
        return info.test_tasks if info is not None and info.test_tasks else self.test_tasks

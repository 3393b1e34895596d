"""Recipes: complete, named training setups that an algorithm (or a plugin) declares for a kind and datasets.

A recipe sets what a run needs beyond the algorithm's own defaults: the episodes (train way/shot/query), steps or
a time budget, the schedule, the precision (``training={"precision": "bf16"}``, a TrainingConfig field like the
others), and hyperparameters. Its help text says where it comes from ("the paper's setup",
"tuned here for 10 CPU-minutes"). The config keeps the recipe's name; fields given explicitly (flags, the form)
override the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

SECTIONS = ("dataset", "training", "evaluation", "task", "hparams")


def _frozen(values: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(values or {}))


@dataclass(frozen=True)
class Recipe:
    name: str  # e.g. "paper", "fast"; unique within an algorithm and kind
    help: str  # where it comes from and what it reaches
    kind: str = "classification"
    datasets: tuple[str, ...] = ()  # empty: any dataset of the kind
    recommended: bool = False  # the default for its kind and datasets
    dataset: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    evaluation: Mapping[str, Any] = field(default_factory=dict)
    task: Mapping[str, Any] = field(default_factory=dict)
    hparams: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for section in SECTIONS:
            object.__setattr__(self, section, _frozen(getattr(self, section)))

    def fits(self, kind: str, dataset: str) -> bool:
        return self.kind == kind and (not self.datasets or dataset in self.datasets)

    def sections(self) -> dict[str, dict[str, Any]]:
        """The settings by config section, "hparams" meaning [algorithm.hparams]."""
        return {section: dict(getattr(self, section)) for section in SECTIONS}

    def check(self, algorithm_cls) -> None:
        """Validate the hyperparameters against the algorithm (raises ConfigError naming the field)."""
        if self.kind not in algorithm_cls.kinds:
            raise TypeError(f"algorithm {algorithm_cls.name}: recipe '{self.name}' is for kind '{self.kind}', which "
                            f"the algorithm does not support")
        algorithm_cls.build_hparams(dict(self.hparams))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "help": self.help, "kind": self.kind, "datasets": list(self.datasets),
                "recommended": self.recommended, **self.sections()}


def recipes_for(algorithm_cls, kind: str, dataset: str) -> list[Recipe]:
    """The algorithm's recipes that fit a kind and dataset, the recommended one first."""
    fitting = [r for r in algorithm_cls.recipes if r.fits(kind, dataset)]
    return sorted(fitting, key=lambda r: (not r.recommended, bool(not r.datasets)))


def recommended_recipe(algorithm_cls, kind: str, dataset: str) -> Recipe | None:
    fitting = recipes_for(algorithm_cls, kind, dataset)
    return fitting[0] if fitting else None


def find_recipe(algorithm_cls, name: str, kind: str, dataset: str) -> Recipe:
    from workbench.core.errors import ConfigError

    for recipe in recipes_for(algorithm_cls, kind, dataset):
        if recipe.name == name:
            return recipe
    names = [r.name for r in recipes_for(algorithm_cls, kind, dataset)]
    raise ConfigError("algorithm.recipe", f"'{algorithm_cls.name}' has no recipe '{name}' for {kind} on "
                      f"'{dataset}'; " + (f"choose one of {', '.join(names)}" if names else "it has none there"))

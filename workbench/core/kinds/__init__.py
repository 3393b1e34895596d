"""The registry of experiment kinds: one module per kind registers its class with :func:`register` when
imported; plugins add kinds through the ``workbench.kinds`` entry point."""

from __future__ import annotations

from workbench.core.kinds.base import ACCURACY, MSE, ExperimentKind, MetricSpec, VIEW_CAPABILITIES
from workbench.core.registry import Registry

DEFAULT_KIND = "classification"


def _checked(cls: type[ExperimentKind]) -> str:
    if not (isinstance(cls, type) and issubclass(cls, ExperimentKind)):
        raise TypeError(f"{cls!r} is not an ExperimentKind subclass")
    for attribute in ("name", "title", "description", "trains_on", "metric", "views", "default_dataset",
                      "default_algorithm"):
        if not hasattr(cls, attribute):
            raise TypeError(f"kind {cls.__name__} does not declare '{attribute}'")
    unknown = sorted(set(cls.views) - set(VIEW_CAPABILITIES))
    if unknown:
        raise TypeError(f"kind {cls.name}: unknown views {unknown}; known are {', '.join(VIEW_CAPABILITIES)}")
    cls.option_specs()  # a bad Options dataclass is refused here, not at first use
    return cls.name


REGISTRY: Registry[type[ExperimentKind]] = Registry(
    "experiment kind", "kind", "workbench.core.kinds",
    ("classification", "regression", "noisy_labels", "learning_to_optimize", "augmentation", "architecture_search", "distillation"), "kinds", _checked)
register = REGISTRY.register


def kind_names() -> list[str]:
    return REGISTRY.names()


def get_kind_class(name: str) -> type[ExperimentKind]:
    return REGISTRY.get(name)


def get_kind(name: str, options: dict | None = None) -> ExperimentKind:
    """An instance of the kind with its options (validated; defaults where not given)."""
    cls = get_kind_class(name)
    return cls(cls.build_options(options))


__all__ = ["ACCURACY", "MSE", "DEFAULT_KIND", "ExperimentKind", "MetricSpec", "REGISTRY", "VIEW_CAPABILITIES",
           "register", "kind_names", "get_kind_class", "get_kind"]

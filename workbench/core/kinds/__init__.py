"""The registry of experiment kinds: one module per kind registers its class with :func:`register` when
imported; plugins add kinds through the ``workbench.kinds`` entry point."""

from __future__ import annotations

import importlib
import threading

from workbench.core.errors import ConfigError
from workbench.core.kinds.base import ACCURACY, MSE, ExperimentKind, MetricSpec, VIEW_CAPABILITIES

DEFAULT_KIND = "classification"
_REGISTRY: dict[str, type[ExperimentKind]] = {}
_MODULES = ("classification", "regression", "noisy_labels")
_lock = threading.RLock()
_loaded = False


def register(cls: type[ExperimentKind]) -> type[ExperimentKind]:
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
    with _lock:
        if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
            raise ValueError(f"kind name {cls.name!r} is registered twice")
        _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    with _lock:
        if _loaded:
            return
        for module in _MODULES:
            importlib.import_module(f"workbench.core.kinds.{module}")
        from workbench.core import plugins

        plugins.load_group("kinds", register)
        _loaded = True


def kind_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_kind_class(name: str) -> type[ExperimentKind]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError("kind", f"unknown experiment kind '{name}'; choose one of {', '.join(_REGISTRY)}") from None


def get_kind(name: str, options: dict | None = None) -> ExperimentKind:
    """An instance of the kind with its options (validated; defaults where not given)."""
    cls = get_kind_class(name)
    return cls(cls.build_options(options))


__all__ = ["ACCURACY", "MSE", "DEFAULT_KIND", "ExperimentKind", "MetricSpec", "VIEW_CAPABILITIES", "register",
           "kind_names", "get_kind_class", "get_kind"]

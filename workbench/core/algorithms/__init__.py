"""The algorithm registry. Modules register their class with :func:`register` when imported; plugins add
algorithms through the ``workbench.algorithms`` entry point (a broken one is recorded, never fatal)."""

from __future__ import annotations

import importlib
import threading

from workbench.core.algorithms.base import Algorithm, Family, LabeledBatch, ModelSpec, check_declarations

_REGISTRY: dict[str, type[Algorithm]] = {}
_lock = threading.RLock()
_loaded = False

# One module per algorithm; importing a module registers it.
_MODULES = ("protonet", "maml", "fomaml", "nearest_neighbour", "finetune", "meta_weight_net")


def register(cls: type[Algorithm]) -> type[Algorithm]:
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"{cls!r} is not an Algorithm subclass")
    check_declarations(cls)
    with _lock:
        if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
            raise ValueError(f"algorithm name {cls.name!r} is registered twice")
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
            importlib.import_module(f"workbench.core.algorithms.{module}")
        from workbench.core import plugins

        plugins.load_group("algorithms", register)
        _loaded = True


def algorithm_names() -> list[str]:
    _load_all()
    return list(_REGISTRY)


def get_algorithm(name: str) -> type[Algorithm]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        from workbench.core.errors import ConfigError

        raise ConfigError("algorithm.name", f"unknown algorithm '{name}'; choose one of {', '.join(_REGISTRY)}") from None


def algorithms_by_family(kind: str | None = None) -> dict[Family, list[type[Algorithm]]]:
    """Registered algorithms grouped by family; only those supporting ``kind`` when given."""
    _load_all()
    grouped: dict[Family, list[type[Algorithm]]] = {family: [] for family in Family}
    for cls in _REGISTRY.values():
        if kind is None or cls.supports(kind):
            grouped[cls.family].append(cls)
    return grouped


__all__ = ["Algorithm", "Family", "LabeledBatch", "ModelSpec", "register", "algorithm_names", "get_algorithm",
           "algorithms_by_family"]

"""The algorithm registry. Modules register their class with :func:`register` when imported."""

from __future__ import annotations

import importlib

from workbench.core.algorithms.base import Algorithm, Family, LabeledBatch, ModelSpec

_REGISTRY: dict[str, type[Algorithm]] = {}

# One module per algorithm; importing a module registers it.
_MODULES = ("protonet", "maml", "fomaml", "nearest_neighbour", "finetune", "meta_weight_net")


def register(cls: type[Algorithm]) -> type[Algorithm]:
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"algorithm name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"workbench.core.algorithms.{module}")


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


def algorithms_by_family() -> dict[Family, list[type[Algorithm]]]:
    _load_all()
    grouped: dict[Family, list[type[Algorithm]]] = {family: [] for family in Family}
    for cls in _REGISTRY.values():
        grouped[cls.family].append(cls)
    return grouped


__all__ = ["Algorithm", "Family", "LabeledBatch", "ModelSpec", "register", "algorithm_names", "get_algorithm",
           "algorithms_by_family"]

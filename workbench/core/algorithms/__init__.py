"""The algorithm registry. Modules register their class with :func:`register` when imported; plugins add
algorithms through the ``workbench.algorithms`` entry point (a broken one is recorded, never fatal)."""

from __future__ import annotations

from workbench.core.algorithms.base import Algorithm, Family, LabeledBatch, ModelSpec, check_declarations
from workbench.core.registry import Registry


def _checked(cls: type[Algorithm]) -> str:
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"{cls!r} is not an Algorithm subclass")
    check_declarations(cls)
    return cls.name


# One module per algorithm; importing a module registers it.
REGISTRY: Registry[type[Algorithm]] = Registry(
    "algorithm", "algorithm.name", "workbench.core.algorithms",
    ("protonet", "maml", "fomaml", "nearest_neighbour", "finetune", "meta_weight_net", "focal_loss", "l2rw",
     "reptile", "anil", "meta_sgd", "maml_plus_plus", "meta_lstm", "leo", "adml",
     "matching", "relation_net", "siamese", "gnn", "zero_shot", "mann", "snail", "cnaps",
     "simple_cnaps", "meta_networks", "lstm_optimizer", "dada", "darts", "dataset_distillation"), "algorithms", _checked)
register = REGISTRY.register


def algorithm_names() -> list[str]:
    return REGISTRY.names()


def get_algorithm(name: str) -> type[Algorithm]:
    return REGISTRY.get(name)


def algorithms_by_family(kind: str | None = None) -> dict[Family, list[type[Algorithm]]]:
    """Registered algorithms grouped by family; only those supporting ``kind`` when given."""
    grouped: dict[Family, list[type[Algorithm]]] = {family: [] for family in Family}
    for cls in REGISTRY.items():
        if kind is None or cls.supports(kind):
            grouped[cls.family].append(cls)
    return grouped


__all__ = ["Algorithm", "Family", "LabeledBatch", "ModelSpec", "REGISTRY", "register", "algorithm_names",
           "get_algorithm", "algorithms_by_family"]

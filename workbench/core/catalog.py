"""What is installed, as plain data for the CLI and the GUI: kinds, algorithms (with their kinds, capabilities
and recipes), datasets, and the plugins that added to them (with the errors of broken ones)."""

from __future__ import annotations

from typing import Any

from workbench.core import plugins
from workbench.core.algorithms import algorithm_names, algorithms_by_family, get_algorithm
from workbench.core.data import dataset_info, dataset_names, datasets_for_kind
from workbench.core.kinds import get_kind_class, kind_names


def load_everything() -> list[plugins.PluginEntry]:
    """Load the three registries (and so every plugin); the plugin entry points seen, broken ones included."""
    kind_names()
    dataset_names()
    algorithm_names()
    return plugins.plugin_entries()


def kinds_info() -> list[dict[str, Any]]:
    return [get_kind_class(name).info() for name in kind_names()]


def algorithms_info(kind: str | None = None) -> list[dict[str, Any]]:
    """Every algorithm's declarations (only those supporting ``kind`` when given), grouped by family order."""
    return [cls.info() for group in algorithms_by_family(kind).values() for cls in group]


def datasets_info(kind: str | None = None) -> list[dict[str, Any]]:
    names = datasets_for_kind(kind) if kind else dataset_names()
    return [dataset_info(name).to_dict() for name in names]


def algorithm_names_for(kind: str) -> list[str]:
    return [cls.name for group in algorithms_by_family(kind).values() for cls in group]


def feeders(capability: str) -> dict[str, list[str]]:
    """Which kinds list a view capability and which algorithms feed it (titles), for a disabled view's text.
    Views every algorithm of a kind feeds ("curves", "evaluation", try-a-task) list no algorithms."""
    kinds = [get_kind_class(name).title for name in kind_names() if capability in get_kind_class(name).views]
    algorithms = [get_algorithm(name).title for name in algorithm_names() if get_algorithm(name).has(capability)]
    return {"kinds": kinds, "algorithms": algorithms}

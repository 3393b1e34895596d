"""Third-party algorithms, datasets and kinds, registered through Python entry points.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."workbench.algorithms"]
    my-algorithm = "my_package.my_module:MyAlgorithm"

Each registry (algorithms, datasets, kinds) calls :func:`load_group` once; an entry point that fails to import,
or whose object the registry refuses, is recorded as a :class:`PluginProblem` instead of raising, so a broken
plugin never stops the app. ``workbench plugins`` and the Plugins dialog list them with their errors.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

GROUPS = {"algorithms": "workbench.algorithms", "datasets": "workbench.datasets", "kinds": "workbench.kinds"}


@dataclass(frozen=True)
class PluginEntry:
    """One entry point as read from the installed distributions."""

    group: str  # "algorithms" | "datasets" | "kinds"
    name: str
    target: str  # "module:attribute"
    distribution: str
    error: str = ""  # empty when it loaded and registered
    details: str = ""  # traceback of the error

    @property
    def ok(self) -> bool:
        return not self.error

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "target": self.target, "distribution": self.distribution,
                "ok": self.ok, "error": self.error}


_entries: dict[tuple[str, str], PluginEntry] = {}
_loaded_groups: set[str] = set()
_lock = threading.RLock()


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=GROUPS[group]))


def load_group(group: str, register: Callable[[Any], None]) -> None:
    """Load every entry point of ``group`` once and hand each loaded object to ``register``, which raises
    (any exception) to refuse it; failures are recorded, never raised."""
    with _lock:
        if group in _loaded_groups:
            return
        _loaded_groups.add(group)
        for point in _entry_points(group):
            distribution = getattr(point.dist, "name", "") or ""
            error, details = "", ""
            try:
                register(point.load())
            except Exception as exc:  # a plugin's bug must not take the app down
                error = f"{type(exc).__name__}: {exc}"
                details = traceback.format_exc()
            _entries[(group, point.name)] = PluginEntry(group, point.name, point.value, distribution, error, details)


def plugin_entries() -> list[PluginEntry]:
    """Every plugin entry point seen so far (load the registries first: :func:`workbench.core.catalog.load_everything`)."""
    with _lock:
        return sorted(_entries.values(), key=lambda e: (e.group, e.name))


def reset() -> None:
    """Forget what was loaded (tests that install a plugin at run time)."""
    with _lock:
        _entries.clear()
        _loaded_groups.clear()

"""Third-party algorithms, datasets and kinds, registered through Python entry points.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."workbench.algorithms"]
    my-algorithm = "my_package.my_module:MyAlgorithm"

Each registry (algorithms, datasets, kinds) calls :func:`load_group` once; an entry point that fails to import,
or whose object the registry refuses, is recorded as a :class:`PluginEntry` with its error instead of raising, so
a broken plugin never stops the app. ``workbench plugins`` and the Plugins dialog list them with their errors.
"""

from __future__ import annotations

import threading
import traceback
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable

GROUPS = {"algorithms": "workbench.algorithms", "datasets": "workbench.datasets", "kinds": "workbench.kinds"}
REGISTRY_TITLES = {"algorithms": "algorithm", "datasets": "dataset", "kinds": "kind"}


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


# Keyed by (group, name, distribution, target): two distributions declaring one name are both listed (the
# registry refuses the second, and that refusal is what the user needs to see).
_entries: dict[tuple[str, str, str, str], PluginEntry] = {}
_entries_lock = threading.Lock()
# One lock per group: a plugin of one group may use another registry while it loads (its import runs arbitrary
# code), which must not wait on a lock held for the first group.
_group_locks = {group: threading.RLock() for group in GROUPS}
_loaded_groups: set[str] = set()


def _record(entry: PluginEntry) -> None:
    with _entries_lock:
        _entries[(entry.group, entry.name, entry.distribution, entry.target)] = entry


def _failure(stage: str, exc: BaseException) -> tuple[str, str]:
    message = str(exc).strip() or "(no message)"
    return f"{stage}: {type(exc).__name__}: {message}", traceback.format_exc()


def _entry_points(group: str) -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=GROUPS[group]))


def _load_one(group: str, point: metadata.EntryPoint, register: Callable[[Any], None]) -> PluginEntry:
    distribution = getattr(point.dist, "name", "") or ""
    error, details = "", ""
    try:
        loaded = point.load()
    except (Exception, SystemExit) as exc:  # a plugin's bug (even a sys.exit at import) must not end the app
        error, details = _failure("import failed", exc)
    else:
        try:
            register(loaded)
        except Exception as exc:
            error, details = _failure(f"refused by the {REGISTRY_TITLES[group]} registry", exc)
    return PluginEntry(group, point.name, point.value, distribution, error, details)


def load_group(group: str, register: Callable[[Any], None]) -> None:
    """Load every entry point of ``group`` once and hand each loaded object to ``register``, which raises
    (any exception) to refuse it; failures are recorded, never raised."""
    with _group_locks[group]:
        if group in _loaded_groups:
            return
        # Marked first: a plugin that asks its own registry for names while loading gets the names so far.
        _loaded_groups.add(group)
        try:
            points = _entry_points(group)
        except Exception as exc:  # unreadable metadata of some installed distribution
            error, details = _failure("reading the installed entry points failed", exc)
            _record(PluginEntry(group, "(entry points)", GROUPS[group], "", error, details))
            return
        for point in points:
            _record(_load_one(group, point, register))


def plugin_entries() -> list[PluginEntry]:
    """Every plugin entry point seen so far; load the registries first
    (:func:`workbench.core.catalog.load_everything`)."""
    with _entries_lock:
        return sorted(_entries.values(), key=lambda e: (e.group, e.name, e.distribution))


def problems() -> list[PluginEntry]:
    """The entries that failed to import or were refused."""
    return [entry for entry in plugin_entries() if not entry.ok]


def reset() -> None:
    """Forget what was loaded (tests that install a plugin at run time; the registries keep what they hold)."""
    for lock in _group_locks.values():
        lock.acquire()
    try:
        with _entries_lock:
            _entries.clear()
        _loaded_groups.clear()
    finally:
        for lock in _group_locks.values():
            lock.release()

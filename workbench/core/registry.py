"""A named registry of declared things (algorithms, kinds): the built-in modules register on import, plugins
through an entry-point group, both loaded on first use."""

from __future__ import annotations

import importlib
import threading
from typing import Any, Callable, Generic, TypeVar

from workbench.core import plugins
from workbench.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """``check(item)`` validates an item (raising to refuse it) and returns its name; ``field`` is the config
    field an unknown name is reported against."""

    def __init__(self, what: str, field: str, package: str, modules: tuple[str, ...], group: str,
                 check: Callable[[T], str]):
        self.what, self.field, self.package, self.modules, self.group = what, field, package, modules, group
        self._check = check
        self._module_order = {f"{package}.{module}": i for i, module in enumerate(modules)}
        self._items: dict[str, T] = {}
        self._loaded = False
        self._lock = threading.RLock()

    def register(self, item: T) -> T:
        name = self._check(item)
        with self._lock:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.what} name {name!r} is registered twice")
            self._items[name] = item
        return item

    def _load(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            for module in self.modules:
                importlib.import_module(f"{self.package}.{module}")
            plugins.load_group(self.group, self.register)
            self._loaded = True

    def _ordered(self) -> list[tuple[str, T]]:
        """Built-in items in the order of their modules, then plugins' in the order they registered: the same
        order whichever module happened to be imported first."""
        last = len(self._module_order)
        return sorted(self._items.items(), key=lambda pair: self._module_order.get(pair[1].__module__, last))

    def names(self) -> list[str]:
        self._load()
        return [name for name, _ in self._ordered()]

    def items(self) -> list[T]:
        self._load()
        return [item for _, item in self._ordered()]

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(self.field, f"unknown {self.what} '{name}'; choose one of "
                              f"{', '.join(self._items)}") from None

    # --- for tests that install plugins at run time ------------------------------------------------
    def snapshot(self) -> tuple[dict[str, T], bool]:
        with self._lock:
            return dict(self._items), self._loaded

    def restore(self, snapshot: tuple[dict[str, Any], bool]) -> None:
        with self._lock:
            self._items.clear()
            self._items.update(snapshot[0])
            self._loaded = snapshot[1]

    def load_again(self) -> None:
        """The next use loads the modules and plugins again (already imported modules do not register twice)."""
        with self._lock:
            self._loaded = False

"""Installing plugins into a test without pip: a folder on ``sys.path`` (or PYTHONPATH) holding ``*.dist-info``
directories with an ``entry_points.txt`` is an installed distribution for ``importlib.metadata``.

:func:`make_site` writes the example plugin's distribution (its entry points read from
``examples/plugin/pyproject.toml``) and, on request, two broken ones. :func:`plugins_installed` makes them visible
in this process and restores every registry afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO_ROOT / "examples" / "plugin"
EXAMPLE_PACKAGE = "workbench_example_plugin"

BROKEN_IMPORT_SOURCE = 'raise RuntimeError("this plugin is broken on purpose")\n'
# One class whose hyperparameter default lies outside its own range, one that declares a hook it lacks.
BAD_DECLARATIONS_SOURCE = '''
from dataclasses import dataclass

from workbench.core.algorithms.base import Algorithm, Family, NoHParams
from workbench.core.hparams import hparam


@dataclass
class BadHParams:
    hidden: int = hparam(4, "Filters per block.", low=8, high=64)


class BadDefault(Algorithm):
    name = "bad-default"
    title = "Bad default"
    family = Family.METRIC
    summary = "Its hidden default is below its own range."
    description = "A broken plugin for the tests."
    HParams = BadHParams

    def modules(self):
        return {}

    def meta_train_step(self, batch):
        return {"loss": 0.0}

    def adapt(self, support_x, support_y, ways):
        return None

    def predict(self, adapted, query_x):
        return None


class MissingHook(BadDefault):
    name = "missing-hook"
    title = "Missing hook"
    HParams = NoHParams
    capabilities = frozenset({"embeddings"})  # declared, but embed() is not implemented
'''

BROKEN_ENTRY_POINTS = {
    "broken-import-plugin": {"workbench.algorithms": {"explodes": "broken_import_plugin:Anything"}},
    "bad-declarations-plugin": {"workbench.algorithms": {"bad-default": "bad_declarations_plugin:BadDefault",
                                                         "missing-hook": "bad_declarations_plugin:MissingHook"}},
}


def example_entry_points() -> dict[str, dict[str, str]]:
    """The entry points the example declares in its pyproject.toml (what pip would install)."""
    project = tomllib.loads((EXAMPLE_DIR / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {group: dict(points) for group, points in project["entry-points"].items()}


def write_distribution(site: Path, name: str, entry_points: dict[str, dict[str, str]], version: str = "0.1.0") -> Path:
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = []
    for group, points in entry_points.items():
        lines += [f"[{group}]", *(f"{point} = {target}" for point, target in points.items()), ""]
    (folder / "entry_points.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


def make_site(root: Path, broken: bool = False) -> Path:
    """A site folder with the example plugin's distribution, and the two broken ones when ``broken``."""
    site = root / "site"
    write_distribution(site, "workbench-example-plugin", example_entry_points())
    if broken:
        (site / "broken_import_plugin.py").write_text(BROKEN_IMPORT_SOURCE, encoding="utf-8")
        (site / "bad_declarations_plugin.py").write_text(BAD_DECLARATIONS_SOURCE, encoding="utf-8")
        for name, points in BROKEN_ENTRY_POINTS.items():
            write_distribution(site, name, points)
    return site


def subprocess_env(site: Path) -> dict[str, str]:
    """The environment for a `workbench` subprocess that sees the site folder and the example's package."""
    env = dict(os.environ)
    paths = [str(site), str(EXAMPLE_DIR), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _registry_state():
    from workbench.core import algorithms, data, kinds, plugins

    return [algorithms.REGISTRY, kinds.REGISTRY], (data, "CATALOG", "_plugins_loaded"), plugins


@contextlib.contextmanager
def plugins_installed(site: Path):
    """Within the block, this process sees the distributions in ``site`` (and the example's package): the
    registries load again, plugins included. Afterwards every registry holds what it held before (restored in
    place, since modules keep references to the dicts) and the plugin modules are forgotten."""
    from workbench.core import catalog

    # Loaded first: built-in modules register on their first import only, so the state worth restoring is the
    # loaded one.
    catalog.load_everything()
    registries, (data, table, flag), plugins = _registry_state()
    saved = [registry.snapshot() for registry in registries]
    saved_catalog, saved_flag = dict(getattr(data, table)), getattr(data, flag)
    saved_entries, saved_groups = dict(plugins._entries), set(plugins._loaded_groups)
    modules_before, path_before = set(sys.modules), list(sys.path)
    sys.path[:0] = [str(site), str(EXAMPLE_DIR)]
    importlib.invalidate_caches()
    for registry in registries:
        registry.load_again()
    setattr(data, flag, False)
    plugins.reset()
    try:
        yield
    finally:
        sys.path[:] = path_before
        importlib.invalidate_caches()
        for registry, snapshot in zip(registries, saved):
            registry.restore(snapshot)
        getattr(data, table).clear()
        getattr(data, table).update(saved_catalog)
        setattr(data, flag, saved_flag)
        plugins.reset()
        plugins._entries.update(saved_entries)
        plugins._loaded_groups.update(saved_groups)
        for name in set(sys.modules) - modules_before:
            if name.split(".")[0] in (EXAMPLE_PACKAGE, "broken_import_plugin", "bad_declarations_plugin"):
                del sys.modules[name]
        from workbench.core import data

        data.clear_cache()

"""Dataset catalog and loading. Each dataset module provides ``load(config, progress) -> FewShotDataset``.

The catalog holds :class:`DatasetInfo` declarations: which kinds a dataset serves, whether it needs a folder
or can download, its standard test-task count and its default image size. Plugins add datasets through the
``workbench.datasets`` entry point, whose object is a :class:`DatasetInfo` naming the plugin's module."""

from __future__ import annotations

import importlib
import importlib.util
import threading
from dataclasses import dataclass

from workbench.core.data.base import (SPLITS, Cancelled, ClassSplit, FewShotDataset, PreprocessSpec,
                                      ProgressCallback, no_progress)
from workbench.core.data.episodes import (Episode, EpisodeSampler, FixedEpisodes, LabeledBatch,
                                          check_episode_setting)

IMAGE_KINDS = ("classification", "noisy-labels", "augmentation", "architecture-search", "learning-to-optimize", "distillation")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    module: str  # a module of workbench.core.data, or a plugin's full dotted module path
    description: str
    needs_root: bool
    downloadable: bool = False
    kinds: tuple[str, ...] = IMAGE_KINDS  # experiment kinds it serves
    test_tasks: int = 600  # standard count of test episodes (tasks) when the config says 0
    default_image_size: int = 0  # 0: not an image dataset, or the module decides
    splits: tuple[str, ...] = ()  # class-split protocols it understands besides "default" (and "ratio")
    has_zip_form: bool = False  # can be read from its official zip files (the GUI offers a zip picker)
    # DatasetConfig fields that only this dataset reads (the GUI shows them for it alone), e.g. a mixture's sources.
    own_fields: tuple[str, ...] = ()

    @property
    def module_path(self) -> str:
        return self.module if "." in self.module else f"workbench.core.data.{self.module}"

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description,
                "needs_root": self.needs_root, "downloadable": self.downloadable, "kinds": list(self.kinds),
                "test_tasks": self.test_tasks, "default_image_size": self.default_image_size,
                "splits": list(self.splits), "has_zip_form": self.has_zip_form, "own_fields": list(self.own_fields)}


CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("glyphs", "Glyphs (built-in)", "glyphs",
                    "Procedurally generated handwritten characters grouped in alphabets that share strokes; "
                    "Omniglot-like, deterministic, no download.", needs_root=False, test_tasks=1000,
                    default_image_size=28),
        DatasetInfo("omniglot", "Omniglot", "omniglot",
                    "1,623 handwritten characters from 50 alphabets (Lake et al. 2015). Reads the official folders "
                    "or zip files; can download through torchvision.", needs_root=True, downloadable=True,
                    test_tasks=1000, default_image_size=28, splits=("lake", "vinyals"), has_zip_form=True),
        DatasetInfo("folder", "Image folder", "folder",
                    "Any folder with one subfolder per class, or train/val/test subfolders of class folders, or "
                    "domain folders of class folders (<root>/<domain>/<class>/).",
                    needs_root=True, splits=("ratio", "domains")),
        DatasetInfo("mini-imagenet", "mini-ImageNet", "miniimagenet",
                    "100 ImageNet classes at 84x84, Ravi & Larochelle split (64/16/20), from split CSVs plus images "
                    "or the common pickle cache.", needs_root=True, default_image_size=84),
        DatasetInfo("cifar-fs", "CIFAR-FS", "cifar",
                    "CIFAR-100 with the Bertinetto et al. random class split (64/16/20), 32x32.", needs_root=True,
                    downloadable=True, default_image_size=32),
        DatasetInfo("fc100", "FC100", "cifar",
                    "CIFAR-100 split by superclass (Oreshkin et al.): 12/4/4 superclasses, 60/20/20 classes.",
                    needs_root=True, downloadable=True, default_image_size=32),
        DatasetInfo("mixture", "Several datasets", "mixture",
                    "Several image datasets side by side (e.g. glyphs, Omniglot and an image folder), each keeping "
                    "its own class split and each a domain: with 'within' episodes every task comes from one "
                    "dataset and evaluation reports accuracy per dataset (the multi-dataset training of CNAPs).",
                    needs_root=False, default_image_size=28, own_fields=("sources",)),
        DatasetInfo("sine", "Sine waves (built-in)", "sine",
                    "The sine-wave toy of Finn et al. (2017): each task is a sine with amplitude in [0.1, 5] and "
                    "phase in [0, pi]; K points with x in [-5, 5] to adapt on. Generated, no download.",
                    needs_root=False, kinds=("regression",), test_tasks=600),
    )
}

_registry_lock = threading.RLock()
_plugins_loaded = False


def register(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to the catalog (plugins: the object of a ``workbench.datasets`` entry point)."""
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"{info!r} is not a DatasetInfo")
    try:
        found = importlib.util.find_spec(info.module_path) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ImportError(f"dataset {info.name!r}: its module {info.module_path} cannot be found")
    with _registry_lock:
        if info.name in CATALOG and CATALOG[info.name] != info:
            raise ValueError(f"dataset name {info.name!r} is registered twice")
        CATALOG[info.name] = info
    return info


def _load_plugins() -> None:
    global _plugins_loaded
    if not _plugins_loaded:
        from workbench.core import plugins

        plugins.load_group("datasets", register)
        _plugins_loaded = True


def own_fields() -> set[str]:
    """The DatasetConfig fields some dataset reads alone (shown only for it)."""
    _load_plugins()
    return {name for info in CATALOG.values() for name in info.own_fields}


def dataset_names() -> list[str]:
    _load_plugins()
    return list(CATALOG)


def dataset_info(name: str) -> DatasetInfo | None:
    _load_plugins()
    return CATALOG.get(name)


def datasets_for_kind(kind: str) -> list[str]:
    _load_plugins()
    return [name for name, info in CATALOG.items() if kind in info.kinds]


_cache: dict[tuple, FewShotDataset] = {}
_cache_lock = threading.Lock()


def _cache_key(config) -> tuple:
    return (config.name, config.root, config.split, config.image_size, config.rotations, config.split_seed,
            getattr(config, "sources", ""))


def load_dataset(config, progress: ProgressCallback = no_progress, use_cache: bool = True) -> FewShotDataset:
    """Load (or reuse) the dataset a DatasetConfig names. Raises DatasetError with a readable message."""
    from workbench.core.errors import ConfigError

    if dataset_info(config.name) is None:
        raise ConfigError("dataset.name", f"unknown dataset '{config.name}'; choose one of {', '.join(CATALOG)}")
    key = _cache_key(config)
    with _cache_lock:
        if use_cache and key in _cache:
            return _cache[key]
    module = importlib.import_module(CATALOG[config.name].module_path)
    dataset = module.load(config, progress)
    check_disjoint = getattr(dataset, "check_disjoint", None)
    if callable(check_disjoint):  # class splits (regression tasks have no classes)
        check_disjoint()
    with _cache_lock:
        if use_cache:
            # Keep a few: switching back and forth in the GUI should not reload.
            while len(_cache) >= 3:
                _cache.pop(next(iter(_cache)))
            _cache[key] = dataset
    return dataset


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


__all__ = ["CATALOG", "DatasetInfo", "IMAGE_KINDS", "LabeledBatch", "register", "own_fields", "dataset_names",
           "dataset_info",
           "datasets_for_kind", "load_dataset", "clear_cache", "SPLITS", "Cancelled", "ClassSplit",
           "FewShotDataset", "PreprocessSpec", "Episode", "EpisodeSampler", "FixedEpisodes",
           "check_episode_setting", "ProgressCallback", "no_progress"]

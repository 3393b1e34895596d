"""Dataset catalog and loading. Each dataset module provides ``load(config, progress) -> FewShotDataset``."""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass

from workbench.core.data.base import (SPLITS, Cancelled, ClassSplit, FewShotDataset, PreprocessSpec,
                                      ProgressCallback, no_progress)
from workbench.core.data.episodes import Episode, EpisodeSampler, FixedEpisodes, check_episode_setting


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    module: str
    description: str
    needs_root: bool
    downloadable: bool = False


CATALOG: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("glyphs", "Glyphs (built-in)", "glyphs",
                    "Procedurally generated handwritten characters grouped in alphabets that share strokes; "
                    "Omniglot-like, deterministic, no download.", needs_root=False),
        DatasetInfo("omniglot", "Omniglot", "omniglot",
                    "1,623 handwritten characters from 50 alphabets (Lake et al. 2015). Reads the official folders "
                    "or zip files; can download through torchvision.", needs_root=True, downloadable=True),
        DatasetInfo("folder", "Image folder", "folder",
                    "Any folder with one subfolder per class, or train/val/test subfolders of class folders.",
                    needs_root=True),
        DatasetInfo("mini-imagenet", "mini-ImageNet", "miniimagenet",
                    "100 ImageNet classes at 84x84, Ravi & Larochelle split (64/16/20), from split CSVs plus images "
                    "or the common pickle cache.", needs_root=True),
        DatasetInfo("cifar-fs", "CIFAR-FS", "cifar",
                    "CIFAR-100 with the Bertinetto et al. random class split (64/16/20), 32x32.", needs_root=True,
                    downloadable=True),
        DatasetInfo("fc100", "FC100", "cifar",
                    "CIFAR-100 split by superclass (Oreshkin et al.): 12/4/4 superclasses, 60/20/20 classes.",
                    needs_root=True, downloadable=True),
    )
}

_cache: dict[tuple, FewShotDataset] = {}
_cache_lock = threading.Lock()


def _cache_key(config) -> tuple:
    return (config.name, config.root, config.split, config.image_size, config.rotations, config.split_seed)


def load_dataset(config, progress: ProgressCallback = no_progress, use_cache: bool = True) -> FewShotDataset:
    """Load (or reuse) the dataset a DatasetConfig names. Raises DatasetError with a readable message."""
    from workbench.core.errors import ConfigError

    if config.name not in CATALOG:
        raise ConfigError("dataset.name", f"unknown dataset '{config.name}'; choose one of {', '.join(CATALOG)}")
    key = _cache_key(config)
    with _cache_lock:
        if use_cache and key in _cache:
            return _cache[key]
    module = importlib.import_module(f"workbench.core.data.{CATALOG[config.name].module}")
    dataset = module.load(config, progress)
    dataset.check_disjoint()
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


__all__ = ["CATALOG", "DatasetInfo", "load_dataset", "clear_cache", "SPLITS", "Cancelled", "ClassSplit",
           "FewShotDataset", "PreprocessSpec", "Episode", "EpisodeSampler", "FixedEpisodes",
           "check_episode_setting", "ProgressCallback", "no_progress"]

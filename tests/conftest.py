"""Shared test fixtures.

- Every test gets its own WORKBENCH_HOME and WORKBENCH_CACHE_DIR (tmp folders), so no test touches
  the user's runs or caches.
- Qt runs offscreen.
- ``synthetic_dataset()`` builds a tiny learnable FewShotDataset in memory, and the
  ``use_synthetic_data`` fixture makes ``workbench.core.data.load_dataset`` return it, so engine
  tests stay fast whatever the real dataset modules do.
- ``tiny_dataset_config()`` gives a config small enough to train in a fraction of a second.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolated_workbench_dirs(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("workbench-home")
    cache = tmp_path_factory.mktemp("workbench-cache")
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(cache))
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if torch is not None and threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)  # code under test may retune threads; keep tests independent


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test (small models; the other core stays free), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def workbench_home() -> Path:
    return Path(os.environ["WORKBENCH_HOME"])


@pytest.fixture
def omniglot_root() -> Path:
    root = SHARED_DATA / "omniglot"
    if not root.is_dir():
        pytest.skip(f"the real Omniglot data is not at {root}")
    return root


def synthetic_dataset(train_classes: int = 12, val_classes: int = 6, test_classes: int = 8, per_class: int = 8,
                      image_size: int = 16, channels: int = 1, seed: int = 0, noise: float = 40.0):
    """A small in-memory FewShotDataset whose classes are noisy copies of random blob patterns.

    Learnable (a few steps lift accuracy above chance) and deterministic for a given seed.
    """
    import torch
    import torch.nn.functional as F

    from workbench.core.data.base import ClassSplit, FewShotDataset, PreprocessSpec

    generator = torch.Generator().manual_seed(seed)

    def make_split(prefix: str, classes: int) -> ClassSplit:
        images, labels = [], []
        for c in range(classes):
            coarse = torch.rand(1, channels, 4, 4, generator=generator)
            prototype = F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)[0]
            for _ in range(per_class):
                sample = prototype * 255 + noise * torch.randn(prototype.shape, generator=generator)
                images.append(sample.clamp(0, 255).round().to(torch.uint8))
                labels.append(c)
        if not images:
            return ClassSplit(torch.zeros(0, channels, image_size, image_size, dtype=torch.uint8),
                              torch.zeros(0, dtype=torch.long), [])
        names = [f"{prefix}-{c:02d}" for c in range(classes)]
        groups = [f"{prefix}-group{c % 3}" for c in range(classes)]
        return ClassSplit(torch.stack(images), torch.tensor(labels), names, groups)

    spec = PreprocessSpec(image_size=image_size, channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    splits = {"train": make_split("train", train_classes), "val": make_split("val", val_classes),
              "test": make_split("test", test_classes)}
    return FewShotDataset("synthetic", spec, splits, description="synthetic test data")


@pytest.fixture(name="synthetic_dataset")
def _synthetic_dataset_fixture():
    """The synthetic_dataset() factory, for tests that prefer fixtures to imports."""
    return synthetic_dataset


@pytest.fixture
def use_synthetic_data(monkeypatch):
    """Make load_dataset() return one synthetic dataset (whatever the config names); returns it."""
    from workbench.core import data

    dataset = synthetic_dataset()

    def fake_load_dataset(config, progress=data.no_progress, use_cache=True):
        progress(1, 1, "synthetic data ready")
        return dataset

    monkeypatch.setattr(data, "load_dataset", fake_load_dataset)
    return dataset


def tiny_dataset_config(**sections):
    """A glyphs ProtoNet config small enough to train in well under a second on one CPU thread.

    Keyword arguments are config sections to override, e.g. ``training={"steps": 10}``, ``name="x"``.
    """
    from workbench.core.config import ExperimentConfig

    data = {
        "dataset": {"name": "glyphs", "image_size": 16, "ways": 3, "shots": 1, "queries": 2},
        "algorithm": {"name": "protonet", "hparams": {"hidden": 8}},
        "training": {"steps": 6, "val_interval": 3, "val_episodes": 4, "checkpoint_interval": 3, "device": "cpu",
                     "threads": 1, "seed": 0, "lr": 1e-3},
        "evaluation": {"episodes": 5, "seed": 7},
    }
    for section, values in sections.items():
        if section == "name":
            data["name"] = values
        elif section == "algorithm" and values.get("name", "protonet") != data["algorithm"]["name"]:
            data["algorithm"] = dict(values)
        else:
            data.setdefault(section, {}).update(values)
    return ExperimentConfig.from_dict(data)


def train_with_inspections(algorithm: dict, **training):
    """Six tiny meta-steps of ``algorithm`` on the synthetic data, validating at steps 3 and 6: checks that the run
    finished with finite losses and stored inspection records at both validations; returns the trainer and them."""
    import math

    from workbench.core.snapshots import INSPECTION_FILE, read_inspections
    from workbench.core.training import Trainer

    config = tiny_dataset_config(algorithm=algorithm, training={"steps": 6, "val_interval": 3,
                                                                "checkpoint_interval": 3, "lr": 1e-2, **training})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    steps = [m for m in trainer.run.read_metrics() if m["event"] == "step"]
    assert len(steps) == 6 and all(math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1 for m in steps)
    history = read_inspections(trainer.run.path / INSPECTION_FILE)
    assert history.steps == [3, 6]
    return trainer, history


@pytest.fixture(name="tiny_dataset_config")
def _tiny_dataset_config_fixture():
    """The tiny_dataset_config() factory as a fixture."""
    return tiny_dataset_config

"""Several datasets as one ("mixture", the multi-dataset training of CNAPs): members keep their class splits, images
share one size and channel count, each member is a domain, and "within" evaluation reports accuracy per dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures_data import make_split_folders
from workbench.core.config import DatasetConfig, ExperimentConfig
from workbench.core.data import SPLITS, clear_cache, dataset_info, load_dataset, own_fields
from workbench.core.data.mixture import member_tags, parse_sources
from workbench.core.errors import ConfigError, DatasetError
from workbench.core.kinds.classification import accuracy_by_domain

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYOUT = {"train": {f"t{i}": 4 for i in range(5)}, "val": {f"v{i}": 4 for i in range(3)},
          "test": {f"s{i}": 4 for i in range(3)}}


@pytest.fixture
def two_folders(tmp_path):
    colour, grey = tmp_path / "colour", tmp_path / "grey"
    make_split_folders(colour, LAYOUT, mode="RGB")
    make_split_folders(grey, LAYOUT, mode="L")
    clear_cache()
    yield colour, grey
    clear_cache()


def test_sources_are_parsed_with_clear_errors():
    members = parse_sources("glyphs; omniglot = ~/om\nfolder=/a/b")
    assert [(m.name, m.root) for m in members] == [("glyphs", ""), ("omniglot", "~/om"), ("folder", "/a/b")]
    assert member_tags(parse_sources("folder=/x/cats; folder=/y/dogs")) == ["folder:cats", "folder:dogs"]
    with pytest.raises(ConfigError, match="dataset.sources.*at least two.*'glyphs' alone"):
        parse_sources("glyphs")
    with pytest.raises(ConfigError, match="names no dataset"):
        parse_sources("glyphs; =/x")
    with pytest.raises(ConfigError, match="glyphs is named twice"):
        parse_sources("glyphs; glyphs")


def test_members_are_checked_by_name(two_folders):
    colour, _ = two_folders
    for sources, message in ((f"folder={colour}; nowhere", "unknown dataset 'nowhere'"),
                             (f"folder={colour}; sine", "not an image dataset"),
                             (f"folder={colour}; mixture", "itself a mixture")):
        with pytest.raises(ConfigError, match=message):
            load_dataset(DatasetConfig(name="mixture", sources=sources))
    # A member that fails to load is named, with its own reason.
    with pytest.raises(DatasetError, match=r"dataset.sources: folder=.*missing: .*(not|no) "):
        load_dataset(DatasetConfig(name="mixture", sources=f"folder={colour}; folder={colour / 'missing'}"))


def test_a_mixture_keeps_each_members_split_and_shares_one_image_format(two_folders):
    colour, grey = two_folders
    data = load_dataset(DatasetConfig(name="mixture", sources=f"folder={colour}; folder={grey}", image_size=12))
    assert data.spec.channels == 3 and data.spec.image_size == 12 and data.spec.foreground == "natural"
    for name in SPLITS:
        split = data.split(name)
        assert tuple(split.images.shape[1:]) == (3, 12, 12)
        assert split.num_classes == 2 * len(LAYOUT[name])
        assert set(split.class_groups) == {"folder:colour", "folder:grey"}
        assert all(c.startswith(f"{g}/") for c, g in zip(split.class_names, split.class_groups))
        assert split.labels.max().item() == split.num_classes - 1
    grey_rows = torch.tensor([g == "folder:grey" for g in data.split("train").class_groups])[data.split("train").labels]
    grey_images = data.split("train").images[grey_rows].int()
    assert torch.equal(grey_images[:, 0], grey_images[:, 1]) and torch.equal(grey_images[:, 1], grey_images[:, 2])
    colour_images = data.split("train").images[~grey_rows].int()
    assert not torch.equal(colour_images[:, 0], colour_images[:, 1])  # colour stays colour
    # The mixture's own normalisation: its meta-train images have mean 0 and std 1 per channel.
    x = data.spec.normalize(data.split("train").images)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-2)
    data.check_disjoint()


def test_grey_members_stay_grey_and_the_field_belongs_to_the_mixture(two_folders):
    _, grey = two_folders
    data = load_dataset(DatasetConfig(name="mixture", sources=f"glyphs; folder={grey}", image_size=16))
    assert data.spec.channels == 1 and data.split("test").images.shape[1:] == (1, 16, 16)
    assert {"glyphs", "folder"} == set(data.split("val").class_groups)
    assert dataset_info("mixture").own_fields == ("sources",) and "sources" in own_fields()


def test_accuracy_by_domain_is_the_mean_of_each_domains_episodes():
    values = np.array([1.0, 0.5, 0.0, 0.25], np.float32)
    extras = accuracy_by_domain(values, ["b", "a", "b", "a"])
    assert extras["accuracy_by_domain"] == pytest.approx({"a": 0.375, "b": 0.5})
    assert extras["episodes_by_domain"] == {"a": 2, "b": 2}
    assert extras["ci95_by_domain"]["b"] == pytest.approx(1.96 * 0.5 / np.sqrt(2))
    assert accuracy_by_domain(values, []) == {}


def test_training_within_datasets_reports_accuracy_per_dataset(two_folders, tmp_path):
    from workbench.core.evaluation import evaluate_run
    from workbench.core.runs import RunStore
    from workbench.core.training import Trainer

    colour, grey = two_folders
    config = ExperimentConfig.from_dict({
        "algorithm": {"name": "protonet", "hparams": {"hidden": 8}},
        "dataset": {"name": "mixture", "sources": f"folder={colour}; folder={grey}", "image_size": 16, "ways": 3,
                    "shots": 1, "queries": 2, "episode_domains": "within"},
        "training": {"steps": 3, "val_interval": 3, "val_episodes": 4, "device": "cpu", "threads": 1},
        "evaluation": {"episodes": 12}})
    trainer = Trainer(config, RunStore(tmp_path / "runs"))
    assert list(trainer.steps())[-1].event == "finished"
    result = evaluate_run(trainer.run, device="cpu")
    by_dataset = result.extras["accuracy_by_domain"]
    assert set(by_dataset) == {"folder:colour", "folder:grey"}
    assert sum(result.extras["episodes_by_domain"].values()) == 12
    weights = np.array([result.extras["episodes_by_domain"][k] for k in sorted(by_dataset)])
    overall = np.dot(weights, [by_dataset[k] for k in sorted(by_dataset)]) / weights.sum()
    assert overall == pytest.approx(result.accuracy, abs=1e-5)
    # Episodes from any domain carry no per-dataset numbers.
    assert "accuracy_by_domain" not in evaluate_run(trainer.run, device="cpu", episode_domains="any").extras


def test_the_terminal_lists_accuracy_per_dataset_with_its_episodes_once():
    from workbench.cli import _extras_lines

    extras = accuracy_by_domain(np.array([1.0, 0.5, 0.75], np.float32), ["glyphs", "omniglot", "glyphs"])
    lines = _extras_lines(extras)
    assert lines[0] == "  accuracy by domain:"
    assert lines[1].split()[:2] == ["glyphs", "87.50%"] and lines[1].endswith("(2 episodes)")
    assert lines[2].split()[:2] == ["omniglot", "50.00%"] and lines[2].endswith("(1 episode)")
    assert sum("mean over that domain's episodes" in line for line in lines) == 1 and len(lines) == 4

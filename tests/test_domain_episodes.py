"""Domain-level episodes (``dataset.episode_domains``): every class of a "within" episode comes from one domain;
"any" keeps the original sampling stream; image-folder subtrees give domains; the 'domains' split holds out whole
domains; the Trainer trains, validates and tests within domains."""

from __future__ import annotations

import pytest
import torch

from fixtures_data import make_class_folders, make_split_folders
from workbench.core.config import DatasetConfig, ExperimentConfig, config_fields
from workbench.core.data.base import SPLITS, ClassSplit, PreprocessSpec
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes, check_episode_setting, episode_options
from workbench.core.data.folder import load as load_folder
from workbench.core.errors import ConfigError, DatasetError
from workbench.core.kinds import get_kind, get_kind_class
from workbench.core.kinds.classification import EvalResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = PreprocessSpec(image_size=8, channels=1, mean=(0.5,), std=(0.25,))


def grouped_split(sizes: dict[str, int], per_class: int = 4) -> ClassSplit:
    """Domains of the given class counts; every image is blank (only indexes matter here)."""
    groups = [domain for domain, count in sizes.items() for _ in range(count)]
    labels = torch.arange(len(groups)).repeat_interleave(per_class)
    images = torch.zeros(len(labels), 1, 8, 8, dtype=torch.uint8)
    return ClassSplit(images, labels, [f"{g}-{i}" for i, g in enumerate(groups)], groups)


def domains_of(split: ClassSplit, class_ids: list[int]) -> set[str]:
    return {split.class_groups[c] for c in class_ids}


# --- sampling ------------------------------------------------------------------------------------------------
def test_within_episodes_take_every_class_from_one_domain():
    split = grouped_split({"alpha": 6, "beta": 5, "gamma": 7})
    sampler = EpisodeSampler(split, SPEC, 4, 1, 2, seed=3, domains="within")
    seen = set()
    for _ in range(60):
        episode = sampler.sample()
        (domain,) = domains_of(split, episode.class_ids)  # exactly one
        seen.add(domain)
        assert len(set(episode.class_ids)) == 4
    assert seen == {"alpha", "beta", "gamma"}  # every domain serves episodes
    fixed = FixedEpisodes(split, SPEC, 4, 1, 2, count=30, seed=5, split_name="test", domains="within")
    assert fixed.domains == "within"
    assert all(len(domains_of(split, episode.class_ids)) == 1 for episode in fixed)
    again = FixedEpisodes(split, SPEC, 4, 1, 2, count=30, seed=5, split_name="test", domains="within")
    assert [e.class_ids for e in fixed] == [e.class_ids for e in again]


def test_any_keeps_the_original_stream():
    """"any" (the default) draws exactly what the sampler drew before domains existed: a permutation of the
    eligible classes, then one of each class's rows, from one generator."""
    split = grouped_split({"alpha": 6, "beta": 5, "gamma": 7}, per_class=5)

    def original(generator, ways=5, need=3):
        eligible = torch.tensor(check_episode_setting(split, ways, 1, 2))
        chosen = eligible[torch.randperm(len(eligible), generator=generator)[:ways]].tolist()
        rows = [split.indices_by_class()[c] for c in chosen]
        picks = [r[torch.randperm(r.numel(), generator=generator)[:need]] for r in rows]
        return chosen, torch.cat([p[:1] for p in picks]), torch.cat([p[1:] for p in picks])

    generator = torch.Generator().manual_seed(11)
    expected = [original(generator) for _ in range(20)]
    for sampler in (EpisodeSampler(split, SPEC, 5, 1, 2, seed=11),
                    EpisodeSampler(split, SPEC, 5, 1, 2, seed=11, domains="any")):
        for want in expected:
            got = sampler.sample_indices()
            assert got[0] == want[0] and torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])
    fixed = FixedEpisodes(split, SPEC, 5, 1, 2, count=20, seed=11)
    assert [task[0] for task in fixed._tasks] == [want[0] for want in expected]
    assert len(set().union(*(domains_of(split, want[0]) for want in expected))) == 3


def test_domains_with_too_few_classes_are_skipped():
    split = grouped_split({"big": 6, "small": 2, "other": 4})
    sampler = EpisodeSampler(split, SPEC, 4, 1, 1, seed=0, domains="within")
    assert sampler.domain_names == ["big", "other"] and sampler.skipped_domains == ["small"]
    assert all(domains_of(split, sampler.sample().class_ids) != {"small"} for _ in range(40))


def test_no_domain_with_enough_classes_is_a_clear_error():
    split = grouped_split({"alpha": 6, "beta": 5, "gamma": 7})
    with pytest.raises(ConfigError) as error:
        EpisodeSampler(split, SPEC, 8, 1, 1, split_name="test", dataset_name="omniglot", domains="within")
    text = str(error.value)
    assert error.value.field == "dataset.episode_domains"
    assert "meta-test split of omniglot" in text and "n-way = 8" in text and "0 of the 3 domains" in text
    assert "gamma 7, alpha 6, beta 5" in text and "lower n-way to at most 7 (1 domain qualifies)" in text
    # Small classes do not count: only classes with k-shot + q-query images can serve.
    counts = [4, 4, 1, 1, 1, 1, 4, 4, 4]  # alpha: 6 classes, 2 usable; beta: 3 usable
    mixed = ClassSplit(torch.zeros(sum(counts), 1, 8, 8, dtype=torch.uint8),
                       torch.arange(len(counts)).repeat_interleave(torch.tensor(counts)),
                       [f"c{i}" for i in range(len(counts))], ["alpha"] * 6 + ["beta"] * 3)
    assert EpisodeSampler(mixed, SPEC, 3, 1, 2, domains="within").domain_names == ["beta"]
    with pytest.raises(ConfigError, match=r"0 of the 2 domains .*\(usable classes per domain: beta 3, alpha 2\)"):
        EpisodeSampler(mixed, SPEC, 4, 1, 2, domains="within")


def test_within_needs_domains():
    plain = ClassSplit(torch.zeros(12, 1, 8, 8, dtype=torch.uint8), torch.arange(6).repeat_interleave(2),
                       [f"c{i}" for i in range(6)])
    with pytest.raises(ConfigError, match="meta-train split of cifar-fs has no domains"):
        EpisodeSampler(plain, SPEC, 3, 1, 1, dataset_name="cifar-fs", domains="within")
    with pytest.raises(ConfigError, match="episode_domains"):
        EpisodeSampler(plain, SPEC, 3, 1, 1, domains="nearby")


# --- config, kind, CLI ---------------------------------------------------------------------------------------
def test_config_field_is_declared_and_reaches_the_kind(synthetic_dataset):
    spec = {s.name: s for s in config_fields()["dataset"]}["episode_domains"]
    assert spec.default == "any" and spec.choices == ("any", "within") and "Lake" in spec.help
    assert "episode_domains" in get_kind_class("classification").dataset_fields
    assert "episode_domains" not in get_kind_class("regression").dataset_fields
    with pytest.raises(ConfigError, match="dataset.episode_domains"):
        ExperimentConfig.from_dict({"dataset": {"episode_domains": "everywhere"}})
    config = ExperimentConfig.from_dict({"dataset": {"ways": 2, "shots": 1, "queries": 2,
                                                     "episode_domains": "within"}})
    assert episode_options(vars(config.dataset)) == {"domains": "within"}
    dataset = synthetic_dataset()  # 3 domains: 4 training and 2 validation classes each
    kind = get_kind("classification")
    assert kind.train_sampler(dataset, config).domains == "within"
    tasks = kind.fixed_tasks(dataset, config, "val", 10, 7)
    assert tasks.domains == "within"
    assert all(len(domains_of(tasks.split, e.class_ids)) == 1 for e in tasks)
    default = ExperimentConfig.from_dict({"dataset": {"ways": 3, "queries": 2}})
    assert kind.fixed_tasks(dataset, default, "val", 3, 7).domains == "any"


def test_cli_sets_the_field():
    from workbench.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--episode-domains", "within", "--steps", "5"])
    assert config_from_args(args).dataset.episode_domains == "within"
    args = build_parser().parse_args(["train", "--set", "dataset.episode_domains=within", "--steps", "5"])
    assert config_from_args(args).dataset.episode_domains == "within"
    assert config_from_args(build_parser().parse_args(["train", "--steps", "5"])).dataset.episode_domains == "any"


def test_result_records_domains_in_its_file_name_and_json():
    result = EvalResult(accuracy=0.5, ci95=0.1, episodes=10, ways=20, shots=1, queries=15, seed=1, domains="within")
    assert result.file_stem() == "20w1s-10ep-seed1-within" and "within one domain" in result.summary()
    assert EvalResult.from_dict(result.to_dict()).domains == "within"
    old = result.to_dict()
    del old["episode_domains"]  # saved before domains existed
    assert EvalResult.from_dict(old).domains == "any" and EvalResult.from_dict(old).file_stem() == "20w1s-10ep-seed1"


# --- image folders -------------------------------------------------------------------------------------------
def folder_config(root, **values) -> DatasetConfig:
    return DatasetConfig(**{"name": "folder", "root": str(root), "ways": 2, "shots": 1, "queries": 1,
                            "image_size": 16, **values})


def domain_tree(root, domains: dict[str, int], per_class: int = 2) -> dict[str, list[str]]:
    counts = {f"{d}/c{i}": per_class for d, n in domains.items() for i in range(n)}
    make_class_folders(root, counts)
    return {d: [f"{d}/c{i}" for i in range(n)] for d, n in domains.items()}


def test_folder_subtrees_give_domains(tmp_path):
    tree = domain_tree(tmp_path, {"latin": 5, "greek": 5, "runic": 4, "braille": 4})
    dataset = load_folder(folder_config(tmp_path))
    for split in dataset.splits.values():
        assert split.class_groups == [name.split("/")[0] for name in split.class_names]
    assert sorted(c for s in dataset.splits.values() for c in s.class_names) == sorted(sum(tree.values(), []))
    assert "in 4 domain folders" in dataset.description
    # Under train/val/test too, named <domain>/<class>.
    layered = tmp_path / "layered"
    make_split_folders(layered, {"train": {"a/x": 2, "a/y": 2, "b/x": 2}, "val": {"c/x": 2, "c/y": 2},
                                 "test": {"d/x": 2, "d/y": 2}})
    dataset = load_folder(folder_config(layered))
    assert dataset.splits["train"].class_names == ["a/x", "a/y", "b/x"]
    assert dataset.splits["train"].class_groups == ["a", "a", "b"]
    assert dataset.splits["test"].class_groups == ["d", "d"]
    # Plain class folders have none.
    flat = tmp_path / "flat"
    make_class_folders(flat, {f"k{i}": 2 for i in range(9)})
    assert all(s.class_groups is None for s in load_folder(folder_config(flat)).splits.values())


def test_domains_split_keeps_every_domain_in_one_split(tmp_path):
    domain_tree(tmp_path, {f"d{i}": 3 + i % 3 for i in range(9)})
    dataset = load_folder(folder_config(tmp_path, split="domains"))
    owner: dict[str, str] = {}
    for name in SPLITS:
        split = dataset.splits[name]
        assert split.num_classes >= 5  # each held-out split gets about 20% of the 36 classes, at least 5
        for domain in split.class_groups:
            assert owner.setdefault(domain, name) == name
    assert len(owner) == 9 and "whole domains split" in dataset.description
    again = load_folder(folder_config(tmp_path, split="domains"))
    assert again.splits["test"].class_names == dataset.splits["test"].class_names
    others = {tuple(load_folder(folder_config(tmp_path, split="domains", split_seed=s)).splits["test"].class_names)
              for s in range(1, 5)}
    assert len(others | {tuple(dataset.splits["test"].class_names)}) > 1
    # The class ratio split spreads domains over the splits; the same tree and seed.
    by_class = load_folder(folder_config(tmp_path, split="ratio"))
    spread = [{g for g in by_class.splits[s].class_groups} for s in SPLITS]
    assert spread[0] & (spread[1] | spread[2])


def test_domains_split_needs_domain_folders(tmp_path):
    make_class_folders(tmp_path / "flat", {f"k{i}": 2 for i in range(9)})
    with pytest.raises(DatasetError, match="has class folders directly"):
        load_folder(folder_config(tmp_path / "flat", split="domains"))
    domain_tree(tmp_path / "two", {"a": 4, "b": 4})
    with pytest.raises(DatasetError, match="has 2 domain folder"):
        load_folder(folder_config(tmp_path / "two", split="domains"))


# --- training ------------------------------------------------------------------------------------------------
def test_trainer_runs_within_domains(tiny_dataset_config, use_synthetic_data):
    from workbench.core.evaluation import evaluate_run
    from workbench.core.training import Trainer

    # The synthetic data has 3 domains: 4 training, 2 validation and 2 or 3 test classes each.
    config = tiny_dataset_config(dataset={"episode_domains": "within", "ways": 2},
                                 training={"steps": 4, "val_interval": 2})
    trainer = Trainer(config)
    drawn = []
    sample = trainer.sampler.sample

    def recording_sample():
        episode = sample()
        drawn.append(episode.class_ids)
        return episode

    trainer.sampler.sample = recording_sample
    records = list(trainer.steps())
    assert records[-1].event == "finished" and len(drawn) == 4
    assert all(len(domains_of(use_synthetic_data.split("train"), ids)) == 1 for ids in drawn)
    assert trainer.val_episodes.domains == "within"
    assert all(len(domains_of(trainer.val_episodes.split, e.class_ids)) == 1 for e in trainer.val_episodes)
    result = evaluate_run(trainer.run, device="cpu")
    assert result.domains == "within" and result.file_stem().endswith("-within")
    groups = use_synthetic_data.split("test").class_groups
    records = result.query_records
    for index in range(result.episodes):
        assert len({groups[c] for c in records["true"][records["episode"] == index].tolist()}) == 1
    # The same model tested on episodes from any domain: the override is used and recorded.
    mixed = evaluate_run(trainer.run, device="cpu", episode_domains="any", episodes=20)
    assert mixed.domains == "any" and not mixed.file_stem().endswith("-within")
    assert any(len({groups[c] for c in mixed.query_records["true"][mixed.query_records["episode"] == index].tolist()})
               > 1 for index in range(mixed.episodes))


def test_cli_eval_takes_the_episode_domains():
    from workbench.cli import build_parser

    assert build_parser().parse_args(["eval", "RUN", "--episode-domains", "within"]).episode_domains == "within"
    assert build_parser().parse_args(["eval", "RUN"]).episode_domains is None

"""The experiment config: one TOML file that the GUI exports and `workbench train --config` runs.

Every field is declared with its range and help (see :mod:`workbench.core.hparams`), so a bad
value is reported as ``section.field: what is wrong; what is allowed``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from workbench.core.data import dataset_info, dataset_names, datasets_for_kind
from workbench.core.data.episodes import EPISODE_DOMAINS
from workbench.core.device import DEVICE_CHOICES
from workbench.core.errors import ConfigError
from workbench.core.fileio import parse_toml, read_toml
from workbench.core.hparams import build, hparam, to_dict
from workbench.core.precision import PRECISION_CHOICES, PRECISION_HELP
from workbench.core.kinds import DEFAULT_KIND, get_kind_class
from workbench.core.recipes import find_recipe

SECTIONS = ("dataset", "algorithm", "training", "evaluation", "task")

@dataclass
class DatasetConfig:
    # The choices are the catalog's (plugins add datasets), checked in ExperimentConfig.from_dict.
    name: str = hparam("glyphs", "Which dataset to sample tasks from.")
    root: str = hparam("", "Folder (or zip) holding the data; not needed for the built-in glyphs.")
    split: str = hparam("default", "Class split protocol. Omniglot: 'lake' (background/evaluation; holds out whole "
                        "alphabets) or 'vinyals' (1,200 training characters); image folders: 'ratio' (classes "
                        "split 60/20/20) or 'domains' (whole domain folders <root>/<domain>/<class>/ split "
                        "60/20/20 by class count, so no domain is in two splits); glyphs always hold out whole "
                        "alphabets; 'default' picks the dataset's usual one.",
                        choices=("default", "lake", "vinyals", "ratio", "domains"))
    image_size: int = hparam(0, "Side of the square images fed to the model; 0 uses the dataset's default.",
                             low=0, high=512)
    rotations: bool = hparam(False, "Rotation class augmentation: each training class also appears rotated by "
                             "90, 180 and 270 degrees as three new classes (x4).")
    download: bool = hparam(False, "Download the dataset through torchvision when it is not found under root.")
    split_seed: int = hparam(0, "Seed for splitting classes by ratio when a folder has no train/val/test subfolders.",
                             low=0, high=2**31 - 1)
    ways: int = hparam(5, "N-way: classes per episode.", low=2, high=100)
    shots: int = hparam(1, "K-shot: labelled support examples per class (regression: support points per task).",
                        low=1, high=100)
    queries: int = hparam(15, "Q-query: query examples per class in each episode (regression: query points per "
                          "task).", low=1, high=1000)
    sources: str = hparam("", "The datasets of a mixture ('Several datasets'), separated by ';': each 'name' or "
                          "'name=location', e.g. 'glyphs; omniglot=~/data/omniglot; folder=~/photos'. Each keeps its "
                          "own class split; each is a domain, so 'within' episodes come from one dataset.",
                          label="Datasets")
    episode_domains: str = hparam("any", "Where an episode's classes come from: 'any' class of the split, or "
                                  "'within' one domain (an Omniglot or glyph alphabet, an image-folder subtree "
                                  "<root>/<domain>/<class>/), as in Lake et al.'s one-shot runs; the domain is chosen "
                                  "uniformly among those with at least n-way classes. Training, validation and test "
                                  "episodes all follow it.", choices=EPISODE_DOMAINS, label="Episode domains")


@dataclass
class AlgorithmConfig:
    name: str = "protonet"
    hparams: dict[str, Any] = field(default_factory=dict)
    recipe: str = ""  # the recipe the run started from ("" for none); its fields are already in the sections


@dataclass
class TrainingConfig:
    steps: int = hparam(2000, "Meta-training steps (each step is one batch of episodes); 0 trains until the time "
                        "budget (max_minutes) is spent.", low=0, high=10_000_000)
    max_minutes: float = hparam(0.0, "Wall-clock budget in minutes; 0 means no limit. When spent, training "
                                "validates, saves and stops. The learning-rate schedule follows the budget when it "
                                "ends before the planned steps.", low=0.0, high=100_000.0)
    meta_batch: int = hparam(1, "Episodes per meta-step (tasks averaged in one outer update).", low=1, high=256)
    lr: float = hparam(1e-3, "Outer (meta) learning rate of the Adam optimizer.", low=1e-7, high=10.0, log_scale=True)
    lr_schedule: str = hparam("cosine", "Outer learning-rate schedule over the planned steps.",
                              choices=("constant", "cosine", "step"))
    train_ways: int = hparam(0, "Ways used for training episodes; 0 uses the evaluation ways. ProtoNets train "
                             "better with more ways than they are tested on.", low=0, high=200)
    train_shots: int = hparam(0, "Shots used for training episodes; 0 uses the evaluation shots.", low=0, high=100)
    train_queries: int = hparam(0, "Queries per class for training episodes; 0 uses the evaluation queries.",
                                low=0, high=100)
    val_interval: int = hparam(200, "Validate every this many steps; 0 only validates at the end.", low=0,
                               high=10_000_000)
    val_episodes: int = hparam(100, "Fixed meta-validation episodes per validation.", low=1, high=10_000)
    on_divergence: str = hparam("stop", "What to do when the loss stays far above where training started "
                                "(divergence_factor times the first step's loss, in 45 of 50 steps): stop "
                                "and keep the checkpoints, or warn once and go on. A NaN or infinite loss always "
                                "stops.", choices=("stop", "warn"))
    divergence_factor: float = hparam(10.0, "How far above its starting value the loss must stay to count as "
                                      "diverging; 0 turns the check off.", low=0.0, high=1e9)
    checkpoint_interval: int = hparam(500, "Write the latest checkpoint every this many steps (a crash loses at "
                                      "most these).", low=1, high=10_000_000)
    device: str = hparam("auto", "Where to train: auto picks CUDA, then MPS, then CPU.", choices=DEVICE_CHOICES)
    precision: str = hparam("auto", PRECISION_HELP, choices=PRECISION_CHOICES)
    threads: int = hparam(0, "CPU threads for torch; 0 picks all cores (one fewer when the GUI is open).",
                          low=0, high=512)
    seed: int = hparam(0, "Seed for weights and episode sampling; the same seed reproduces a run.",
                       low=0, high=2**31 - 1)


@dataclass
class EvaluationConfig:
    episodes: int = hparam(0, "Fixed test episodes; 0 uses the dataset's standard count (1,000 for Omniglot "
                           "and glyphs, 600 otherwise).", low=0, high=100_000)
    seed: int = hparam(12345, "Seed of the fixed test episodes; every algorithm evaluated with it sees the same "
                       "episodes.", low=0, high=2**31 - 1)


@dataclass
class ExperimentConfig:
    name: str = ""
    kind: str = DEFAULT_KIND
    task: dict[str, Any] = field(default_factory=dict)  # the kind's own settings, validated by kind.Options
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    # --- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from workbench.core.algorithms import get_algorithm

        hparams = get_algorithm(self.algorithm.name).full_hparams(self.algorithm.hparams)
        algorithm: dict[str, Any] = {"name": self.algorithm.name, "hparams": hparams}
        if self.algorithm.recipe:
            algorithm["recipe"] = self.algorithm.recipe
        return {
            "name": self.name,
            "kind": self.kind,
            "task": to_dict(get_kind_class(self.kind).build_options(self.task)),
            "dataset": to_dict(self.dataset),
            "algorithm": algorithm,
            "training": to_dict(self.training),
            "evaluation": to_dict(self.evaluation),
        }

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    def save(self, path: str | Path) -> Path:
        from workbench.core.fileio import atomic_write_text

        return atomic_write_text(Path(path), self.to_toml())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExperimentConfig":
        """Validate a config dict (TOML, flags, a form). Sections left out take the named recipe's values, then
        the declared defaults; a config without ``kind`` is few-shot classification (the first format)."""
        data = _checked_sections(data)
        algo = dict(data.get("algorithm", {}))
        algorithm_cls = _algorithm_class(algorithm_name(data))
        algo.pop("name", None)
        hparams = dict(algo.pop("hparams", {}) or {})
        recipe_name = str(algo.pop("recipe", "") or "")
        if algo:
            raise ConfigError(f"algorithm.{sorted(algo)[0]}", "unknown setting; put algorithm settings under "
                              "[algorithm.hparams]")
        kind = str(data.get("kind") or algorithm_cls.legacy_kind(hparams) or DEFAULT_KIND)
        kind_cls = get_kind_class(kind)
        if not algorithm_cls.supports(kind):
            raise ConfigError("algorithm.name", f"'{algorithm_cls.name}' does not support the {kind_cls.title.lower()} "
                              f"kind; it supports {', '.join(algorithm_cls.kinds)}")
        hparams = algorithm_cls.upgrade_hparams(hparams)
        sections = {name: dict(data.get(name) or {}) for name in ("dataset", "training", "evaluation", "task")}
        sections["dataset"].setdefault("name", kind_cls.default_dataset)
        if recipe_name:
            recipe = find_recipe(algorithm_cls, recipe_name, kind, str(sections["dataset"]["name"]))
            for section, values in recipe.sections().items():
                target = hparams if section == "hparams" else sections[section]
                for key, value in values.items():
                    target.setdefault(key, value)
        typed = algorithm_cls.build_hparams(hparams)  # validates, naming the field
        config = cls(
            name=str(data.get("name", "")), kind=kind,
            task=to_dict(kind_cls.build_options(sections["task"])),
            dataset=build(DatasetConfig, sections["dataset"], "dataset"),
            # Keep only the keys given, but as validated values ("0.4" from a flag becomes 0.4).
            algorithm=AlgorithmConfig(algorithm_cls.name, {key: getattr(typed, key) for key in hparams},
                                      recipe_name),
            training=build(TrainingConfig, sections["training"], "training"),
            evaluation=build(EvaluationConfig, sections["evaluation"], "evaluation"),
        )
        config.check()
        return config

    @classmethod
    def from_toml(cls, text: str, source: str = "config") -> "ExperimentConfig":
        return cls.from_dict(parse_toml(text, source))

    @classmethod
    def load(cls, path: str | Path) -> "ExperimentConfig":
        return cls.from_dict(read_toml(path, "config file"))

    def replace(self, **sections: dict[str, Any]) -> "ExperimentConfig":
        """A copy with some fields changed, e.g. ``replace(training={"steps": 10})``; validated."""
        data = self.to_dict()
        for section, values in sections.items():
            if section == "name":
                data["name"] = values
            elif section == "kind":
                if values != data["kind"]:
                    data["kind"], data["task"] = values, {}
            elif section == "algorithm":
                values = dict(values)
                if "name" in values and values["name"] != data["algorithm"]["name"]:
                    data["algorithm"] = {"name": values["name"], "hparams": {}}
                data["algorithm"]["hparams"].update(values.get("hparams", {}))
                if "recipe" in values:
                    data["algorithm"]["recipe"] = values["recipe"]
            else:
                data[section].update(values)
        return ExperimentConfig.from_dict(data)

    def check(self) -> None:
        """Cross-field checks that single-field ranges cannot express."""
        if self.training.steps == 0 and not self.training.max_minutes:
            raise ConfigError("training.steps", "0 steps means 'until the time budget', but training.max_minutes "
                              "is 0; set a number of steps or a budget (--max-minutes)")
        info = dataset_info(self.dataset.name)
        if info is None:
            raise ConfigError("dataset.name", f"unknown dataset '{self.dataset.name}'; choose one of "
                              f"{', '.join(dataset_names())}")
        if self.kind not in info.kinds:
            raise ConfigError("dataset.name", f"'{self.dataset.name}' does not serve the "
                              f"{get_kind_class(self.kind).title.lower()} kind; use one of "
                              f"{', '.join(datasets_for_kind(self.kind)) or 'none installed'}")
        if info.needs_root and not self.dataset.root and not self.dataset.download:
            raise ConfigError("dataset.root", f"the '{self.dataset.name}' dataset needs a folder; set dataset.root "
                              "(--data-root) or allow downloading")

    # --- effective values -------------------------------------------------------------------
    @property
    def train_ways(self) -> int:
        return self.training.train_ways or self.dataset.ways

    @property
    def train_shots(self) -> int:
        return self.training.train_shots or self.dataset.shots

    @property
    def train_queries(self) -> int:
        return self.training.train_queries or self.dataset.queries

    def eval_episodes(self) -> int:
        if self.evaluation.episodes:
            return self.evaluation.episodes
        return get_kind_class(self.kind)(None).test_task_count(self.dataset.name)


def algorithm_name(data: dict[str, Any]) -> str:
    """The config's algorithm; without one, its kind's default algorithm (ProtoNet when no kind is given)."""
    algorithm = data.get("algorithm") or {}
    if algorithm.get("name"):
        return str(algorithm["name"])
    kind = data.get("kind")
    return get_kind_class(str(kind)).default_algorithm if kind else "protonet"


def with_recommended_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` naming the algorithm's recommended recipe for its kind and dataset when it names none (a new
    experiment without flags gets a good setup); ``recipe = "none"`` keeps the bare declared defaults."""
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    algorithm = dict(data.get("algorithm") or {})
    if algorithm.get("recipe") == "none":
        algorithm.pop("recipe")
        data["algorithm"] = algorithm
        return data
    if algorithm.get("recipe"):
        return data
    from workbench.core.recipes import recommended_recipe

    algorithm_cls = _algorithm_class(algorithm_name(data))
    kind = str(data.get("kind") or algorithm_cls.legacy_kind(dict(algorithm.get("hparams") or {})) or DEFAULT_KIND)
    dataset = (data.get("dataset") or {}).get("name") or get_kind_class(kind).default_dataset
    recipe = recommended_recipe(algorithm_cls, kind, str(dataset))
    if recipe is not None:
        algorithm["recipe"] = recipe.name
        data["algorithm"] = algorithm
    return data


def recipe_changes(config: ExperimentConfig) -> list[str]:
    """The fields ("training.lr", "hparams.hidden") where a config departs from the recipe it names; empty when
    it names none (or one that no longer fits its kind and dataset)."""
    if not config.algorithm.recipe:
        return []
    algorithm_cls = _algorithm_class(config.algorithm.name)
    try:
        recipe = find_recipe(algorithm_cls, config.algorithm.recipe, config.kind, config.dataset.name)
    except ConfigError:
        return []
    current = config.to_dict()
    current["hparams"] = current["algorithm"]["hparams"]
    changed = []
    for section, values in recipe.sections().items():
        typed = algorithm_cls.build_hparams(dict(values)) if section == "hparams" else None
        for key, value in values.items():
            wanted = getattr(typed, key) if typed is not None else value
            if current.get(section, {}).get(key) != wanted:
                changed.append(f"{section}.{key}")
    return changed


def _checked_sections(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    known = {"name", "kind", *SECTIONS}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; known sections are {', '.join(sorted(known))}")
    for section in SECTIONS:
        if section in data and not isinstance(data[section], dict):
            raise ConfigError(section, "must be a table of settings")
    return data


def _algorithm_class(name: str):
    from workbench.core.algorithms import algorithm_names, get_algorithm

    if name not in algorithm_names():
        raise ConfigError("algorithm.name", f"unknown algorithm '{name}'; choose one of {', '.join(algorithm_names())}")
    return get_algorithm(name)


def config_fields() -> dict[str, list]:
    """Section name -> field specs, for forms and flag parsers."""
    from workbench.core.hparams import specs

    return {"dataset": specs(DatasetConfig), "training": specs(TrainingConfig), "evaluation": specs(EvaluationConfig)}


def copy_config(config: ExperimentConfig) -> ExperimentConfig:
    return dataclasses.replace(
        config,
        dataset=dataclasses.replace(config.dataset),
        algorithm=AlgorithmConfig(config.algorithm.name, dict(config.algorithm.hparams), config.algorithm.recipe),
        task=dict(config.task),
        training=dataclasses.replace(config.training),
        evaluation=dataclasses.replace(config.evaluation),
    )

"""The experiment config: TOML round trips, validation naming the field, cross-field checks."""

from __future__ import annotations

import pytest

from workbench.core.config import ExperimentConfig, config_fields, copy_config, with_recommended_recipe
from workbench.core.errors import ConfigError


def test_defaults_round_trip_through_toml(tmp_path):
    config = ExperimentConfig()
    again = ExperimentConfig.from_toml(config.to_toml())
    assert again.to_dict() == config.to_dict()
    path = config.save(tmp_path / "exp.toml")
    assert ExperimentConfig.load(path).to_dict() == config.to_dict()
    # Every hyperparameter is written, so the file alone reproduces the run.
    assert set(again.to_dict()["algorithm"]["hparams"]) >= {"hidden", "distance", "temperature"}


def test_values_are_coerced_from_text():
    config = ExperimentConfig.from_dict({"training": {"steps": "30", "lr": "0.01"}, "dataset": {"rotations": "yes"},
                                         "algorithm": {"name": "protonet", "hparams": {"hidden": "16"}}})
    assert (config.training.steps, config.training.lr, config.dataset.rotations) == (30, 0.01, True)
    assert config.to_dict()["algorithm"]["hparams"]["hidden"] == 16


@pytest.mark.parametrize("data, field, words", [
    ({"training": {"steps": -1}}, "training.steps", "between 0 and"),
    ({"training": {"steps": 0}}, "training.steps", "or a budget"),
    ({"training": {"steps": 2.5}}, "training.steps", "expected int"),
    ({"training": {"lr": float("nan")}}, "training.lr", "NaN"),
    ({"training": {"lr_schedule": "linear"}}, "training.lr_schedule", "not allowed"),
    ({"training": {"stepz": 3}}, "training.stepz", "unknown setting"),
    ({"dataset": {"ways": 1}}, "dataset.ways", "between 2 and"),
    ({"dataset": {"rotations": "maybe"}}, "dataset.rotations", "expected bool"),
    ({"dataset": {"rotations": 7}}, "dataset.rotations", "expected bool, got 7"),
    ({"dataset": {"rotations": 1}}, "dataset.rotations", "expected bool, got 1"),
    ({"datasets": {}}, "datasets", "unknown section"),
    ({"training": 3}, "training", "table"),
    ({"algorithm": {"name": "magic"}}, "algorithm.name", "unknown algorithm"),
    ({"algorithm": {"name": "protonet", "hidden": 3}}, "algorithm.hidden", "[algorithm.hparams]"),
    ({"algorithm": {"name": "protonet", "hparams": {"hidden": 3}}}, "algorithm.hparams.hidden", "between 8 and"),
    ({"dataset": {"name": "omniglot"}}, "dataset.root", "--data-root"),
])
def test_errors_name_the_field_and_what_is_allowed(data, field, words):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ") and words in str(info.value)


def test_bad_toml_and_missing_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        ExperimentConfig.load(bad)
    assert info.value.field == str(bad)
    with pytest.raises(ConfigError, match="cannot read the config file"):
        ExperimentConfig.load(tmp_path / "absent.toml")


def test_replace_validates_and_switching_algorithm_resets_hparams():
    config = ExperimentConfig.from_dict({"algorithm": {"name": "protonet", "hparams": {"hidden": 32}}})
    changed = config.replace(training={"steps": 10}, name="short")
    assert (changed.training.steps, changed.name, config.training.steps) == (10, "short", 2000)
    assert changed.algorithm.hparams["hidden"] == 32
    with pytest.raises(ConfigError, match="training.steps"):
        config.replace(training={"steps": -1})
    others = [n for n in __import__("workbench.core.algorithms", fromlist=["x"]).algorithm_names() if n != "protonet"]
    if others:
        switched = config.replace(algorithm={"name": others[0]})
        assert switched.algorithm.name == others[0] and "distance" not in switched.to_dict()["algorithm"]["hparams"]


def test_effective_train_setting_and_eval_episodes():
    config = ExperimentConfig.from_dict({"dataset": {"ways": 5, "shots": 1, "queries": 15}})
    assert (config.train_ways, config.train_shots, config.train_queries) == (5, 1, 15)
    config = config.replace(training={"train_ways": 20, "train_shots": 2, "train_queries": 5})
    assert (config.train_ways, config.train_shots, config.train_queries) == (20, 2, 5)
    assert config.eval_episodes() == 1000  # glyphs
    folder = ExperimentConfig.from_dict({"dataset": {"name": "folder", "root": "/data/x"}})
    assert folder.eval_episodes() == 600
    assert folder.replace(evaluation={"episodes": 50}).eval_episodes() == 50


def test_config_fields_describe_every_section_field():
    fields = config_fields()
    assert set(fields) == {"dataset", "training", "evaluation"}
    for section, specs in fields.items():
        assert specs and all(spec.help for spec in specs)
        names = {spec.name for spec in specs}
        assert names == set(ExperimentConfig().to_dict()[section])


def test_copy_config_is_independent():
    config = ExperimentConfig()
    copy = copy_config(config)
    copy.training.steps = 5
    copy.algorithm.hparams["hidden"] = 8
    assert config.training.steps == 2000 and "hidden" not in config.algorithm.hparams


def test_a_kind_without_an_algorithm_takes_the_kinds_default_algorithm():
    from workbench.core.kinds import get_kind_class

    for kind in ("regression", "noisy-labels"):
        config = ExperimentConfig.from_dict(with_recommended_recipe({"kind": kind}))
        assert config.algorithm.name == get_kind_class(kind).default_algorithm
    assert ExperimentConfig.from_dict({}).algorithm.name == "protonet"

"""Experiment kinds and the declarations algorithms make about them: the registries, the CLI listings, what a
config without a kind means, and that a class's declarations must match its code."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from workbench import cli
from workbench.core.algorithms import algorithm_names, get_algorithm
from workbench.core.algorithms.base import HOOKS, Algorithm, Family, check_declarations
from workbench.core.config import ExperimentConfig, with_recommended_recipe
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.kinds import get_kind, kind_names


def test_cli_lists_the_three_kinds_with_their_declarations(capsys):
    assert cli.main(["kinds", "--json"]) == 0
    kinds = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert {"classification", "regression", "noisy-labels"} <= set(kinds)
    assert kinds["regression"]["metric"]["key"] == "mse" and not kinds["regression"]["metric"]["higher_is_better"]
    assert kinds["classification"]["metric"]["key"] == "accuracy"
    assert "sine" in kinds["regression"]["datasets"] and "glyphs" not in kinds["regression"]["datasets"]
    assert "fit" in kinds["regression"]["views"] and "embeddings" not in kinds["regression"]["views"]
    assert kinds["classification"]["try_task"] == "images" and kinds["regression"]["try_task"] == "points"


def test_cli_lists_kinds_and_capabilities_of_every_algorithm(capsys):
    assert cli.main(["algorithms", "--json"]) == 0
    infos = {item["name"]: item for item in json.loads(capsys.readouterr().out)}
    assert set(infos) == set(algorithm_names())
    for name, info in infos.items():
        assert info["kinds"] and set(info["kinds"]) <= set(kind_names()), name
        assert set(info["capabilities"]) <= set(HOOKS), name
        assert isinstance(info["recipes"], list), name
    assert "embeddings" in infos["protonet"]["capabilities"]
    assert {"sample_weights", "training_data"} <= set(infos["meta-weight-net"]["capabilities"])
    assert "noisy-labels" in infos["meta-weight-net"]["kinds"]
    assert cli.main(["algorithms", "--kind", "noisy-labels", "--json"]) == 0
    listed = [item["name"] for item in json.loads(capsys.readouterr().out)]
    assert "meta-weight-net" in listed and set(listed) == {name for name in algorithm_names()
                                                           if get_algorithm(name).supports("noisy-labels")}


@pytest.mark.parametrize("name", algorithm_names())
def test_declared_capabilities_are_exactly_the_hooks_a_class_implements(name):
    cls = get_algorithm(name)
    implemented = {cap for cap, hook in HOOKS.items() if getattr(cls, hook) is not getattr(Algorithm, hook)}
    assert implemented == set(cls.capabilities), f"{name}: implements {implemented}, declares {cls.capabilities}"


def _algorithm_class(**attributes):
    @dataclass
    class HParams:
        width: int = hparam(8, "Width.", low=1, high=64)

    namespace = {"name": "probe", "title": "Probe", "family": Family.METRIC, "summary": "s", "description": "d",
                 "HParams": HParams, "modules": lambda self: {}, "meta_train_step": lambda self, batch: {},
                 "adapt": lambda self, *a: None, "predict": lambda self, *a: None, **attributes}
    return type("Probe", (Algorithm,), namespace)


def test_declarations_that_contradict_the_code_are_refused():
    check_declarations(_algorithm_class())
    with pytest.raises(TypeError, match="declares 'embeddings' but does not implement embed"):
        check_declarations(_algorithm_class(capabilities=frozenset({"embeddings"})))
    with pytest.raises(TypeError, match="unknown capabilities"):
        check_declarations(_algorithm_class(capabilities=frozenset({"telepathy"})))
    with pytest.raises(TypeError, match="adaptation_steps_hparam"):
        check_declarations(_algorithm_class(adaptation_steps_hparam="steps"))
    with pytest.raises(TypeError, match="family"):
        check_declarations(_algorithm_class(family="metric"))

    @dataclass
    class Undeclared:
        width: int = 3

    with pytest.raises(TypeError, match=r"HParams fields \['width'\] are not declared with hparam"):
        check_declarations(_algorithm_class(HParams=Undeclared))


def test_a_config_without_a_kind_is_classification_and_round_trips_with_it():
    config = ExperimentConfig.from_dict({"algorithm": {"name": "protonet"}})
    assert config.kind == "classification" and config.to_dict()["kind"] == "classification"
    again = ExperimentConfig.from_toml(config.to_toml())
    assert again.kind == "classification" and again.to_dict() == config.to_dict()


def test_a_meta_weight_net_config_of_the_first_format_is_the_noisy_labels_kind():
    old = {"algorithm": {"name": "meta-weight-net", "hparams": {"setting": "classification", "label_noise": 0.4}}}
    config = ExperimentConfig.from_dict(old)
    assert config.kind == "noisy-labels" and "setting" not in config.to_dict()["algorithm"]["hparams"]
    episodic = ExperimentConfig.from_dict({"algorithm": {"name": "meta-weight-net",
                                                         "hparams": {"setting": "episodic"}}})
    assert episodic.kind == "classification"


def test_kind_and_dataset_and_algorithm_must_fit_together():
    with pytest.raises(ConfigError, match="kind: unknown experiment kind 'bogus'"):
        ExperimentConfig.from_dict({"kind": "bogus"})
    with pytest.raises(ConfigError, match="does not support the classification under label noise kind"):
        ExperimentConfig.from_dict({"kind": "noisy-labels", "algorithm": {"name": "protonet"}})
    with pytest.raises(ConfigError, match="dataset.name: 'sine' does not serve the few-shot classification kind"):
        ExperimentConfig.from_dict({"dataset": {"name": "sine"}})


def test_metric_direction_decides_what_is_better():
    accuracy, mse = get_kind("classification").metric, get_kind("regression").metric
    assert accuracy.better(0.9, 0.8) and not accuracy.better(0.7, 0.8)
    assert mse.better(0.1, 0.2) and not mse.better(0.3, 0.2)
    assert accuracy.better(0.1, None) and mse.better(5.0, None)
    assert accuracy.format(0.9512, 0.0031) == "95.12% ± 0.31"


def test_classification_kind_supplies_loss_head_and_score():
    kind = get_kind("classification")
    outputs = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    assert kind.score(outputs, targets) == pytest.approx(2 / 3)
    assert kind.output_size(7) == 7
    assert torch.allclose(kind.predictions(outputs).sum(-1), torch.ones(3))
    assert float(kind.loss(outputs, targets)) > 0


def test_recommended_recipe_is_named_unless_none_is_asked_for():
    data = with_recommended_recipe({"algorithm": {"name": "protonet"}})
    cls = get_algorithm("protonet")
    recommended = [r.name for r in cls.recipes if r.recommended and r.fits("classification", "glyphs")]
    assert data["algorithm"].get("recipe", "") == (recommended[0] if recommended else "")
    assert "recipe" not in with_recommended_recipe({"algorithm": {"name": "protonet", "recipe": "none"}})["algorithm"]


def test_recipe_changes_name_the_fields_that_depart_from_the_recipe():
    from workbench.core.config import recipe_changes
    from workbench.core.recipes import Recipe

    recipe = Recipe("probe", "for the test", training={"lr": 0.002, "steps": 50}, hparams={"hidden": 16})
    cls = get_algorithm("protonet")
    original = cls.recipes
    cls.recipes = original + (recipe,)
    try:
        config = ExperimentConfig.from_dict({"algorithm": {"name": "protonet", "recipe": "probe"}})
        assert config.training.lr == 0.002 and config.algorithm.hparams["hidden"] == 16
        assert recipe_changes(config) == []
        changed = config.replace(training={"steps": 60}, algorithm={"hparams": {"hidden": 32}})
        assert sorted(recipe_changes(changed)) == ["hparams.hidden", "training.steps"]
        assert recipe_changes(ExperimentConfig.from_dict({"algorithm": {"name": "protonet"}})) == []
    finally:
        cls.recipes = original


@pytest.mark.parametrize("name", algorithm_names())
def test_every_algorithm_has_a_recipe_for_the_built_in_glyphs_and_every_recipe_validates(name):
    from workbench.core.recipes import recipes_for

    cls = get_algorithm(name)
    image_kinds = [kind for kind in cls.kinds if "glyphs" in get_kind(kind).info()["datasets"]]
    assert any(recipes_for(cls, kind, "glyphs") for kind in image_kinds), f"{name} has no recipe for glyphs"
    for recipe in cls.recipes:
        datasets = recipe.datasets or (get_kind(recipe.kind).default_dataset,)
        for dataset in datasets:
            data = {"kind": recipe.kind, "dataset": {"name": dataset, "root": "/data" if dataset != "glyphs" else ""},
                    "algorithm": {"name": name, "recipe": recipe.name}}
            config = ExperimentConfig.from_dict(data)  # every field of the recipe validates, naming it if not
            sections = config.to_dict()
            for section, values in recipe.sections().items():
                target = sections["algorithm"]["hparams"] if section == "hparams" else sections[section]
                for key, value in values.items():
                    assert target[key] == pytest.approx(value), f"{name}/{recipe.name}: {section}.{key}"


def test_unused_training_fields_name_training_settings():
    from dataclasses import fields

    from workbench.core.config import TrainingConfig

    known = {f.name for f in fields(TrainingConfig)}
    for name in algorithm_names():
        assert set(get_algorithm(name).unused_training_fields) <= known, name



def test_a_registry_lists_built_ins_in_their_modules_order_whichever_was_imported_first():
    from workbench.core.registry import Registry

    registry = Registry("thing", "thing", "pkg", ("first", "second"), "no.such.group", lambda item: item.__name__)
    made = {name: type(name, (), {"__module__": module}) for name, module in
            (("plugin", "elsewhere"), ("b", "pkg.second"), ("a", "pkg.first"))}
    for item in made.values():  # a plugin first, then the built-ins in reverse
        registry.register(item)
    registry._loaded = True  # nothing to import: the items are here
    assert registry.names() == ["a", "b", "plugin"]
    assert registry.items() == [made["a"], made["b"], made["plugin"]]

"""The screenshot tour's later parts (``workbench tour --parts mechanism,weights,robustness``): short runs of the
algorithms that feed the Mechanism and Sample weights views, and accuracy against ε of two runs compared in the
Evaluation tab, each shot to a numbered PNG."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from workbench.core.adversarial import epsilon_key
from workbench.core.algorithms import get_algorithm
from workbench.core.recipes import recommended_recipe
from workbench.gui import tour
from workbench.gui.settings import SETTINGS_DIR_ENV


def test_a_short_run_shrinks_a_pre_training_phase_but_no_inner_loop():
    config = tour.short_config("classification", "leo", 30, 10, 4)
    recipe = recommended_recipe(get_algorithm("leo"), "classification", config.dataset.name)
    phase = recipe.hparams.get("pretrain_steps", get_algorithm("leo").HParams().pretrain_steps)
    # LEO's pre-training (half its recipe's steps) shrinks in proportion, so the run reaches LEO itself.
    assert config.algorithm.hparams == {"pretrain_steps": round(phase * 30 / recipe.training["steps"])}
    assert 0 < config.algorithm.hparams["pretrain_steps"] < config.training.steps == 30
    maml = tour.short_config("classification", "maml", 30, 10, 4)
    assert maml.algorithm.hparams == {} and maml.algorithm.recipe == "default"
    assert (maml.training.steps, maml.training.val_interval, maml.training.val_episodes) == (30, 10, 4)


def test_a_short_run_shrinks_an_evaluation_longer_than_the_recipe_and_validates_as_few_tasks_as_it_asks():
    from workbench.core.hparams import specs
    from workbench.core.kinds import get_kind_class

    def recipe_of(kind, algorithm):
        return recommended_recipe(get_algorithm(algorithm), kind, get_kind_class(kind).default_dataset)

    def default(kind, option):
        return next(spec.default for spec in specs(get_kind_class(kind).Options) if spec.name == option)

    # DARTS retrains its candidates for twice its search's steps: the short run's evaluation retrains for less.
    search = recipe_of("architecture-search", "darts")
    darts = tour.short_config("architecture-search", "darts", 30, 10, 20)
    planned, retrain = search.training["steps"], default("architecture-search", "retrain_steps")
    assert retrain > planned
    assert darts.task["retrain_steps"] == round(retrain * 30 / planned) < retrain
    # A test horizon shorter than the run is what the evaluation measures: kept.
    l2o = tour.short_config("learning-to-optimize", "lstm-optimizer", 30, 10, 20)
    assert l2o.task["eval_steps"] == default("learning-to-optimize", "eval_steps")
    # Each of DADA's validation tasks trains networks from scratch: its recipe asks for few, and gets them.
    dada = tour.short_config("augmentation", "dada", 30, 10, 20)
    assert dada.training.val_episodes == recipe_of("augmentation", "dada").training["val_episodes"] < 20
    assert tour.short_config("classification", "maml", 30, 10, 20).training.val_episodes == 20


def test_the_race_and_evaluations_parts_find_their_kinds_from_the_declarations():
    from workbench.core.kinds import DEFAULT_KIND, get_kind_class, kind_names

    assert {"race", "evaluations"} <= set(tour.PARTS)
    assert tour._parser().parse_args(["--out", "unused", "--parts", "race,evaluations"]).parts == ("race",
                                                                                                   "evaluations")
    racing = tour.race_feeders()
    assert racing == [(kind, get_kind_class(kind).default_algorithm) for kind in kind_names()
                      if get_kind_class(kind).try_task == "race"]
    assert ("learning-to-optimize", "lstm-optimizer") in racing
    evaluated = tour.evaluation_feeders()
    assert DEFAULT_KIND not in {kind for kind, _ in evaluated}
    assert {("learning-to-optimize", "lstm-optimizer"), ("distillation", "dataset-distillation"),
            ("architecture-search", "darts"), ("augmentation", "dada")} <= set(evaluated)
    args = tour._parser().parse_args(["--out", "unused", "--algorithms", "darts,dada"])
    assert sorted(name for _, name in tour._chosen(args, evaluated)) == ["dada", "darts"]


def test_the_tour_finds_the_feeders_of_the_new_views_from_the_declarations():
    inspection = tour.feeders_by_kind("inspection")
    assert inspection and inspection[0][0] == "classification"
    assert all(get_algorithm(name).has("inspection") for _, name in inspection)
    assert len({name for _, name in inspection}) == len(inspection)  # each algorithm once
    weighting = tour.weighting_feeders()
    assert len(weighting) >= 2 and len({kind for kind, _ in weighting}) == 1
    assert all(get_algorithm(name).has("sample_weights") for _, name in weighting)


def test_unknown_parts_are_refused_naming_the_choices(capsys):
    with pytest.raises(SystemExit):
        tour.main(["--out", "unused", "--parts", "mechanism,everything"])
    assert "everything" in capsys.readouterr().err


def test_algorithms_narrow_the_feeders_and_unknown_ones_are_refused(capsys):
    args = tour._parser().parse_args(["--out", "unused", "--algorithms", "meta-sgd,l2rw"])
    assert [name for _, name in tour._chosen(args, tour.feeders_by_kind("inspection"))] == ["meta-sgd"]
    assert [name for _, name in tour._chosen(args, tour.weighting_feeders())] == ["l2rw"]
    everything = tour._parser().parse_args(["--out", "unused"])
    assert tour._chosen(everything, tour.weighting_feeders()) == tour.weighting_feeders()
    with pytest.raises(SystemExit):
        tour.main(["--out", "unused", "--algorithms", "meta-sgd,nonesuch"])
    assert "nonesuch" in capsys.readouterr().err


def _saved_evaluations(home):
    found = {}
    for path in (home / "runs").glob("*/evaluations/*.json"):
        data = json.loads(path.read_text())
        found[data["algorithm"]] = data
    return found


@pytest.mark.slow
def test_the_later_parts_shoot_each_record_weighting_and_the_robustness_comparison(qapp, tmp_path, monkeypatch):
    monkeypatch.setenv(SETTINGS_DIR_ENV, str(tmp_path / "settings"))  # main() sets it; restored afterwards
    out, home = tmp_path / "shots", tmp_path / "home"
    code = tour.main(["--out", str(out), "--home", str(home), "--parts", "mechanism,weights,robustness",
                      "--short-steps", "3", "--val-episodes", "2", "--attack-episodes", "3", "--timeout", "600"])
    assert code == 0

    expected = [f"mechanism-{name}-{spec.name.replace('_', '-')}" for _, name in tour.feeders_by_kind("inspection")
                for spec in get_algorithm(name).inspections]
    expected += [f"weights-{name}" for _, name in tour.weighting_feeders()]
    expected += ["accuracy-against-eps"]
    files = sorted(path.name for path in out.glob("*.png"))
    assert files == [f"{tour.LATER_FIRST_NUMBER + i:02d}-{name}.png" for i, name in enumerate(expected)]
    for name in files:
        with Image.open(out / name) as image:
            assert image.size[0] >= 1000 and image.getextrema() != ((255, 255), (255, 255), (255, 255))

    # The two compared runs saved their evaluation with accuracy at every budget, on the same episodes.
    saved = _saved_evaluations(home)
    curves = {name: data for name, data in saved.items() if "accuracy_by_epsilon" in data.get("extras", {})}
    assert len(curves) == 2
    for data in curves.values():
        assert set(data["extras"]["accuracy_by_epsilon"]) == {epsilon_key(eps) for eps in tour.EPSILONS}
    assert len({(data["episodes"], data["seed"], data["ways"], data["shots"]) for data in curves.values()}) == 1

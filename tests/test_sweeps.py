"""Sweeps (issue 17): the study file, the declarations a sweep may vary, and real studies on Optuna with trials in
worker processes and on a local Ray instance. Trials are tiny glyph ProtoNet runs (seconds each)."""

from __future__ import annotations

import concurrent.futures as futures
from concurrent.futures.process import BrokenProcessPool
import json

import pytest

from workbench.core.config import ExperimentConfig, with_recommended_recipe
from workbench.core.errors import ConfigError
from workbench.core.runs import RunStore
from workbench.core.sweeps import (SweepError, SweepParameter, SweepSettings, SweepSpec, StudyRunner, _outcome_of, default_storage, list_studies, load_spec, sweepable_fields)

BASE = {"dataset": {"name": "glyphs", "image_size": 16, "ways": 5, "shots": 1, "queries": 5},
        "algorithm": {"name": "protonet", "hparams": {"hidden": 8}, "recipe": "none"},
        "training": {"steps": 30, "val_interval": 10, "val_episodes": 30, "checkpoint_interval": 10,
                     "device": "cpu", "threads": 1, "seed": 0, "lr": 1e-3},
        "evaluation": {"episodes": 5, "seed": 7}}

# Grid order is the listed order. 50 shots + 5 queries is more than a glyph class holds, so trial 1 fails when its
# run is built; trial 3 (1-shot) starts only after two trials have ended, one of them a finished 5- or 4-shot
# trial, and its first validation (1-shot accuracy) is below theirs: the median pruner stops it.
STUDY_FILE = """
[dataset]
name = "glyphs"
image_size = 16
ways = 5
shots = 1
queries = 5

[algorithm]
name = "protonet"
recipe = "none"
hparams = { hidden = 8 }

[training]
steps = 30
val_interval = 10
val_episodes = 30
checkpoint_interval = 10
device = "cpu"
seed = 0
lr = 1e-3

[sweep]
name = "shots-grid"
sampler = "grid"
trials = 4
workers = 2
prune_after_trials = 1

[sweep.parameters]
"dataset.shots" = { values = [5, 50, 4, 1] }
"""


def spec(**settings) -> SweepSpec:
    parameters = settings.pop("parameters", [SweepParameter("training.lr", [1e-3, 3e-3])])
    return SweepSpec(BASE, SweepSettings(name=settings.pop("name", "study"), parameters=parameters, **settings))


# --- declarations and the study file --------------------------------------------------------------
def test_sweepable_fields_come_from_the_declarations_and_include_way_and_shot():
    config = ExperimentConfig.from_dict(with_recommended_recipe({**BASE, "algorithm": {"name": "maml",
                                                                                        "recipe": "none"}}))
    paths = {field.path: field for field in sweepable_fields(config)}
    assert {"dataset.ways", "dataset.shots", "training.lr", "algorithm.hparams.train_inner_lr"} <= set(paths)
    assert "dataset.name" not in paths and "training.seed" not in paths  # these name the experiment
    assert paths["algorithm.hparams.train_inner_lr"].section == "Algorithm" and paths["dataset.ways"].numeric


def test_study_file_round_trips_and_names_bad_fields(tmp_path):
    loaded = SweepSpec.from_toml(STUDY_FILE)
    assert loaded.settings.sampler == "grid" and loaded.settings.parameters[0].values == [5, 50, 4, 1]
    saved = loaded.save(tmp_path / "study.toml")
    again = SweepSpec.load(saved)
    assert again.base == loaded.base and again.settings.to_dict() == loaded.settings.to_dict()
    assert again.checked().grid()[1] == {"dataset.shots": 50}

    with pytest.raises(SweepError, match=r"sweep.parameters.algorithm.hparams.nope: not a field"):
        spec(parameters=[SweepParameter("algorithm.hparams.nope", [1])]).checked()
    with pytest.raises(SweepError, match=r"sweep.parameters.dataset.ways: .*out of range"):
        spec(parameters=[SweepParameter("dataset.ways", [5, 500])]).checked()
    with pytest.raises(SweepError, match=r"training.lr: a grid needs a list of values"):
        spec(sampler="grid", parameters=[SweepParameter("training.lr", low=1e-4, high=1e-2)]).checked()
    with pytest.raises(SweepError, match="low < high"):
        spec(sampler="tpe", parameters=[SweepParameter("training.lr", low=1e-2, high=1e-4)]).checked()
    with pytest.raises(SweepError, match="sweep.name"):
        spec(name=" ").checked()
    with pytest.raises(ConfigError, match=r"sweep.sampler"):
        SweepSpec.from_toml(STUDY_FILE.replace('sampler = "grid"', 'sampler = "bayes"'))
    with pytest.raises(ConfigError, match=r"no \[sweep\] table"):
        SweepSpec.from_toml("[dataset]\nname = 'glyphs'\n", "x.toml")


def test_trial_config_sets_each_value_at_its_path_and_names_the_run():
    study = spec(parameters=[SweepParameter("algorithm.hparams.hidden", [8, 16]), SweepParameter("dataset.ways",
                                                                                                  [3, 5])]).checked()
    assert study.grid() == [{"algorithm.hparams.hidden": h, "dataset.ways": w} for h in (8, 16) for w in (3, 5)]
    data = study.trial_config({"algorithm.hparams.hidden": 16, "dataset.ways": 3}, 2)
    config = ExperimentConfig.from_dict(data)
    assert (config.algorithm.hparams["hidden"], config.dataset.ways, config.name) == (16, 3, "study-trial-2")
    assert BASE["dataset"]["ways"] == 5  # the base is not changed


def test_a_dead_worker_is_a_failed_trial_not_a_failed_study():
    future: futures.Future = futures.Future()
    future.set_exception(BrokenProcessPool("A child process terminated abruptly"))
    outcome = _outcome_of(future, 7)
    assert (outcome.number, outcome.state) == (7, "failed") and "terminated abruptly" in outcome.error


# --- real studies ---------------------------------------------------------------------------------
def test_grid_study_with_two_workers_completes_prunes_fails_and_resumes(tmp_path, workbench_home, capsys):
    from workbench.cli import main

    study_file = tmp_path / "study.toml"
    study_file.write_text(STUDY_FILE)
    assert main(["sweep", str(study_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    states = {t["number"]: t["state"] for t in result["trials"]}
    assert states[0] == "complete" and states[1] == "failed" and states[3] == "pruned"
    errors = {t["number"]: t["error"] for t in result["trials"]}
    assert "images per class" in errors[1]  # the dataset's own message, naming k-shot + q-query
    assert result["best"]["number"] in (0, 2) and result["direction"] == "maximize"

    # Every trial that got a run is an ordinary run of the store, named after the study.
    runs = {record.name: record for record in RunStore(workbench_home).list()}
    assert {"shots-grid-trial-0", "shots-grid-trial-3"} <= set(runs)
    assert runs["shots-grid-trial-3"].status == "stopped" and runs["shots-grid-trial-0"].status == "finished"
    assert runs["shots-grid-trial-0"].best_val_accuracy == pytest.approx(result["best"]["value"]) or \
        result["best"]["number"] == 2

    # The study survives: listed, and a resume finds nothing left to run.
    storage = default_storage(workbench_home)
    assert [s["name"] for s in list_studies(storage)] == ["shots-grid"]
    assert main(["sweep", "--resume", "shots-grid", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert len(resumed["trials"]) == 4 and resumed["counts"] == result["counts"]


def test_cancel_stops_running_trials_and_a_resume_runs_them_again(workbench_home):
    long_run = {**BASE, "training": {**BASE["training"], "steps": 100_000, "val_interval": 50}}
    study = SweepSpec(long_run, SweepSettings(name="cancel-me", sampler="grid", trials=2, workers=1,
                                              parameters=[SweepParameter("training.lr", [1e-3, 2e-3])]))
    runner = StudyRunner(study, workbench_home, tick_s=0.2)
    snapshots = []
    for snap in runner.updates():
        snapshots.append(snap)
        running = [t for t in snap.trials if t.state == "running"]
        if running and RunStore(workbench_home).list() and any(r.steps_done > 0 for r in RunStore(
                workbench_home).list()):
            runner.cancel()
    last = snapshots[-1]
    assert last.finished and last.cancelled and "cancelled" in last.message
    assert [t.state for t in last.trials] == ["failed"] and last.trials[0].error.startswith("cancelled")
    assert RunStore(workbench_home).list()[0].status == "stopped"  # its run was saved, not lost

    # Resumed with a short training, the cancelled point runs again and the second one follows.
    short = SweepSpec(long_run | {"training": BASE["training"]}, load_spec(default_storage(workbench_home),
                                                                            "cancel-me").settings)
    with pytest.raises(SweepError, match="exists with another experiment"):
        StudyRunner(short, workbench_home)
    resumed = StudyRunner(load_spec(default_storage(workbench_home), "cancel-me"), workbench_home)
    assert resumed._remaining() == 2  # the cancelled trial does not count


def test_ray_runs_the_same_study_on_a_local_instance(workbench_home):
    import ray  # the 'ray' extra is part of the test install (pip install -e ".[test]")

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        study = spec(name="on-ray", sampler="grid", trials=2, workers=2, ray_address="auto",
                     parameters=[SweepParameter("dataset.ways", [3, 5])])
        last = StudyRunner(study, workbench_home).run()
    finally:
        ray.shutdown()
    assert [t.state for t in last.trials] == ["complete", "complete"], [t.error for t in last.trials]
    assert {r.name for r in RunStore(workbench_home).list()} == {"on-ray-trial-0", "on-ray-trial-1"}
    assert {r.ways for r in RunStore(workbench_home).list()} == {3, 5}


def test_the_example_study_file_is_a_valid_study():
    from pathlib import Path

    example = SweepSpec.load(Path(__file__).resolve().parents[1] / "examples" / "sweep-protonet-glyphs.toml")
    study = example.checked()
    assert study.planned_trials() == 6 and {"training.train_ways", "training.lr"} == set(study.grid()[0])

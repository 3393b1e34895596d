"""Plugins: the example plugin (examples/plugin) is installed through its entry points without pip (a
``*.dist-info`` folder on the path); its algorithm and dataset appear in the CLI, train and evaluate; broken
plugins (one that raises on import, two that the algorithm registry refuses) are listed with their errors and
never stop a command."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from plugin_helpers import example_entry_points, make_site, plugins_installed, subprocess_env

EXAMPLE_DISTRIBUTION = "workbench-example-plugin"
BROKEN = {"explodes", "bad-default", "missing-hook"}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return make_site(tmp_path_factory.mktemp("plugins"), broken=True)


@pytest.fixture
def installed(site):
    with plugins_installed(site):
        yield site


def workbench(site: Path, *argv: str, timeout: int = 180) -> subprocess.CompletedProcess:
    """`workbench ARGV` in a fresh process that sees the plugins only through PYTHONPATH."""
    return subprocess.run([sys.executable, "-m", "workbench", *argv], env=subprocess_env(site), capture_output=True,
                          text=True, timeout=timeout)


def json_out(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- the command line, in subprocesses ----------------------------------------------------------------------------
def test_workbench_plugins_lists_every_entry_with_its_error(site):
    entries = {entry["name"]: entry for entry in json_out(workbench(site, "plugins", "--json"))}
    assert set(entries) == {"cosine-centroids", "shapes"} | BROKEN
    assert all(set(entry) == {"group", "name", "target", "distribution", "ok", "error"} for entry in entries.values())
    declared = example_entry_points()
    for group, name in (("algorithms", "cosine-centroids"), ("datasets", "shapes")):
        assert entries[name]["ok"] and entries[name]["error"] == ""
        assert entries[name]["group"] == group and entries[name]["distribution"] == EXAMPLE_DISTRIBUTION
        assert entries[name]["target"] == declared[f"workbench.{group}"][name]
    assert not any(entries[name]["ok"] for name in BROKEN)
    assert entries["explodes"]["error"] == "import failed: RuntimeError: this plugin is broken on purpose"
    assert entries["explodes"]["distribution"] == "broken-import-plugin"
    bad_default = entries["bad-default"]["error"]
    assert bad_default.startswith("refused by the algorithm registry: TypeError")
    assert "'hidden'" in bad_default and "4 is out of range" in bad_default and "between 8 and 64" in bad_default
    assert "declares 'embeddings' but does not implement embed()" in entries["missing-hook"]["error"]


def test_algorithms_and_datasets_include_the_plugin_and_leave_the_broken_out(site):
    algorithms = {info["name"]: info for info in json_out(workbench(site, "algorithms", "--json"))}
    assert "cosine-centroids" in algorithms and "protonet" in algorithms
    assert not BROKEN & set(algorithms)
    info = algorithms["cosine-centroids"]
    assert info["family"] == "metric" and info["kinds"] == ["classification"]
    assert info["capabilities"] == ["embeddings", "evaluation_extras"]
    assert [recipe["name"] for recipe in info["recipes"]] == ["quick"]
    assert "glyphs" in info["recipes"][0]["datasets"] and info["recipes"][0]["recommended"]
    hparams = {h["name"]: h for h in info["hparams"]}
    assert set(hparams) == {"hidden", "scale", "learn_scale"}
    assert all(h["help"] for h in hparams.values())
    assert (hparams["hidden"]["low"], hparams["hidden"]["high"]) == (8, 256)
    datasets = {info["name"]: info for info in json_out(workbench(site, "datasets", "--json"))}
    assert "glyphs" in datasets
    assert datasets["shapes"]["kinds"] == ["classification", "noisy-labels"]
    assert datasets["shapes"]["needs_root"] is False and datasets["shapes"]["available"] is True


def test_the_plugin_algorithm_trains_on_glyphs_through_the_cli(site):
    result = json_out(workbench(
        site, "train", "--algorithm", "cosine-centroids", "--dataset", "glyphs", "--image-size", "16", "--ways", "3",
        "--shots", "1", "--queries", "2", "--train-ways", "3", "--steps", "6", "--val-interval", "3",
        "--val-episodes", "3", "--checkpoint-interval", "3", "--eval-episodes", "4", "--device", "cpu",
        "--threads", "1", "--hparam", "hidden=8", "--json", "--quiet"))
    assert (result["algorithm"], result["dataset"], result["status"]) == ("cosine-centroids", "glyphs", "finished")
    assert result["recipe"] == "quick" and result["steps"] == 6  # the recommended recipe, flags over its fields
    assert result["test"]["episodes"] == 4 and 0 <= result["test"]["accuracy"] <= 1
    [saved] = (Path(result["path"]) / "evaluations").glob("*.json")
    # The evaluation_extras hook: the learned scale starts at 10 and moves with training.
    scale = json.loads(saved.read_text(encoding="utf-8"))["extras"]["logit_scale"]
    assert scale > 0 and scale != 10.0


# --- in this process ------------------------------------------------------------------------------------------------
def test_registries_take_the_plugin_and_record_the_broken(installed):
    from workbench.core import catalog, plugins
    from workbench.core.algorithms import algorithm_names, get_algorithm
    from workbench.core.data import dataset_info

    entries = catalog.load_everything()
    assert {e.name for e in entries if e.ok} == {"cosine-centroids", "shapes"}
    assert {e.name for e in plugins.problems()} == BROKEN
    assert "cosine-centroids" in algorithm_names() and not BROKEN & set(algorithm_names())
    assert get_algorithm("cosine-centroids").title == "Cosine centroids (example plugin)"
    assert dataset_info("shapes").module_path == "workbench_example_plugin.shapes"
    explodes = next(e for e in entries if e.name == "explodes")
    assert explodes.details.startswith("Traceback") and "broken_import_plugin.py" in explodes.details


def test_the_example_trains_and_evaluates_on_its_shapes_dataset(installed, one_torch_thread):
    from workbench.core.config import ExperimentConfig
    from workbench.core.evaluation import evaluate_run
    from workbench.core.runs import RunStore
    from workbench.core.training import Trainer

    config = ExperimentConfig.from_dict({
        "dataset": {"name": "shapes", "image_size": 16, "ways": 3, "shots": 1, "queries": 2},
        "algorithm": {"name": "cosine-centroids", "hparams": {"hidden": 8}},
        "training": {"steps": 4, "val_interval": 2, "val_episodes": 3, "checkpoint_interval": 4, "device": "cpu",
                     "threads": 1},
        "evaluation": {"episodes": 5}})
    store = RunStore()
    trainer = Trainer(config, store)
    final = trainer.run_all(lambda record: None)
    assert final.event == "finished" and trainer.step == 4
    assert trainer.dataset.summary()["splits"]["test"]["classes"] == 48
    result = evaluate_run(trainer.run, store, device="cpu")
    assert result.episodes == 5 and 0 <= result.value <= 1
    assert result.extras["logit_scale"] > 0
    embeddings = trainer.algorithm.embed(trainer.dataset.spec.normalize(trainer.dataset.split("test").images[:4]))
    assert embeddings.shape[0] == 4  # the "embeddings" capability


def test_the_registries_are_restored_after_a_test_that_installed_plugins():
    from workbench.core import plugins
    from workbench.core.algorithms import algorithm_names
    from workbench.core.data import dataset_names

    assert "cosine-centroids" not in algorithm_names() and "shapes" not in dataset_names()
    assert not any(e.distribution == EXAMPLE_DISTRIBUTION for e in plugins.plugin_entries())
    assert "workbench_example_plugin" not in sys.modules


# --- load_group and check_declarations, unit by unit ---------------------------------------------------------------
@pytest.fixture
def fresh_plugins(monkeypatch):
    """plugins' bookkeeping emptied for the test (and put back afterwards)."""
    from workbench.core import plugins

    monkeypatch.setattr(plugins, "_entries", {})
    monkeypatch.setattr(plugins, "_loaded_groups", set())
    return plugins


def fake_points(monkeypatch, plugins, *points: metadata.EntryPoint) -> None:
    monkeypatch.setattr(plugins, "_entry_points", lambda group: list(points))


def test_a_plugin_that_exits_at_import_is_recorded(fresh_plugins, monkeypatch, tmp_path):
    (tmp_path / "exits_at_import.py").write_text("import sys\nsys.exit(3)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_points(monkeypatch, fresh_plugins, metadata.EntryPoint("quits", "exits_at_import:X", "workbench.kinds"))
    registered = []
    fresh_plugins.load_group("kinds", registered.append)
    [entry] = fresh_plugins.plugin_entries()
    assert not registered and entry.error == "import failed: SystemExit: 3"
    monkeypatch.delitem(sys.modules, "exits_at_import", raising=False)


def test_one_name_declared_twice_is_listed_twice(fresh_plugins, monkeypatch):
    points = [metadata.EntryPoint("same", f"json:{name}", "workbench.datasets") for name in ("dumps", "loads")]
    fake_points(monkeypatch, fresh_plugins, *points)
    seen = []

    def register(obj):
        if seen:
            raise ValueError("dataset name 'same' is registered twice")
        seen.append(obj)

    fresh_plugins.load_group("datasets", register)
    fresh_plugins.load_group("datasets", register)  # once per group
    entries = fresh_plugins.plugin_entries()
    assert [e.ok for e in entries] == [True, False] and seen == [json.dumps]
    assert entries[1].error == "refused by the dataset registry: ValueError: dataset name 'same' is registered twice"


def test_unreadable_entry_point_metadata_is_recorded(fresh_plugins, monkeypatch):
    def broken(group):
        raise OSError("cannot read entry_points.txt")

    monkeypatch.setattr(fresh_plugins, "_entry_points", broken)
    fresh_plugins.load_group("algorithms", lambda obj: None)
    [entry] = fresh_plugins.plugin_entries()
    assert entry.name == "(entry points)" and "OSError: cannot read entry_points.txt" in entry.error


def _algorithm_with(field_value):
    from workbench.core.algorithms.base import Algorithm, Family

    hparams = dataclasses.make_dataclass("HParams", [("value", type(field_value.default) if field_value.default
                                                       is not dataclasses.MISSING else int, field_value)])
    return type("Declared", (Algorithm,), {
        "name": "declared", "title": "Declared", "family": Family.METRIC, "summary": "s", "description": "d",
        "HParams": hparams, "modules": lambda self: {}, "meta_train_step": lambda self, b: {},
        "adapt": lambda self, *a: None, "predict": lambda self, *a: None})


@pytest.mark.parametrize("field_value, message", [
    ("float_above", "'value' is invalid: 5.0 is out of range; use a value between 0 and 1"),
    ("choice_missing", "'value' is invalid: 'c' is not allowed; use one of 'a', 'b'"),
    ("no_default", "hyperparameter 'value' has no default"),
])
def test_check_declarations_refuses_a_default_its_own_declaration_rejects(field_value, message):
    from workbench.core.algorithms.base import check_declarations
    from workbench.core.hparams import hparam

    fields = {"float_above": hparam(5.0, "A rate.", low=0.0, high=1.0),
              "choice_missing": hparam("c", "A choice.", choices=("a", "b")),
              "no_default": dataclasses.field(metadata={"hparam": {"help": "h", "low": 0, "high": 3, "choices": None,
                                                                   "log_scale": False, "label": ""}})}
    with pytest.raises(TypeError, match="algorithm declared") as raised:
        check_declarations(_algorithm_with(fields[field_value]))
    assert message in str(raised.value)

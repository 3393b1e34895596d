"""bench/catalogue.py: configs through the recommended recipes, the floors against MAML, own-terms comparisons, paper
numbers quoted only from the project's texts, resuming, and one tiny run through the Trainer and evaluate_run."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def catalogue():
    spec = importlib.util.spec_from_file_location("catalogue_bench", REPO_ROOT / "bench" / "catalogue.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def args_for(catalogue, *extra: str):
    args = catalogue.parse_args(["--minutes", "2", "--threads", "1", "--data-root", "/data/omniglot", *extra])
    args.plan_algorithms = ["maml", "protonet"]
    return args


def row(algorithm: str, dataset: str, accuracy: float, setting: str = "5w1s", **fields):
    base = {"algorithm": algorithm, "dataset": dataset, "setting": setting, "minutes": 3.0, "clock": "cpu",
            "threads": 1, "recipe": "default", "steps": 500, "steps_planned": 0, "best_step": 400,
            "train_cpu_minutes": 3.1, "test_wall_minutes": 1.0, "validations": 3, "validation_episodes": 100,
            "validation_cpu_minutes": 0.2,
            "test": {"accuracy": accuracy, "ci95": 0.01, "episodes": 1000, "extras": {}}}
    base.update(fields)
    return base


def table_data(*runs):
    return {"runs": list(runs), "skipped": [{"algorithm": "l2rw", "reason": "does not support the classification "
                                             "kind (kinds: noisy-labels)"}],
            "args": {"minutes": 3.0, "clock": "cpu", "threads": 1, "eval_seed": 12345},
            "environment": {"cpu": "x86_64", "torch": "2", "load_average_1m": 1.0}}


def test_configs_are_the_recommended_recipes_with_the_setting_and_budget(catalogue):
    args = args_for(catalogue)
    config, mode = catalogue.bench_config("maml", "glyphs", "20w1s", args)
    assert (config.algorithm.recipe, config.dataset.ways, config.dataset.shots) == ("default", 20, 1)
    assert (config.training.steps, config.training.max_minutes, config.training.threads) == (0, 2.0, 1)
    assert mode == "until the budget" and config.training.device == "cpu"
    config, mode = catalogue.bench_config("maml", "omniglot", "5w1s", args)
    # The Omniglot recipe fixes its steps: kept, the budget caps them; the Lake split, whatever the recipe says.
    assert config.algorithm.recipe == "omniglot-20min" and config.training.steps == 4000 and "4,000" in mode
    assert config.dataset.split == "lake" and config.dataset.rotations and config.training.meta_batch == 4
    assert catalogue.paper_recipe("maml", "omniglot") == {"steps": 60000, "meta_batch": 32}
    assert catalogue.paper_recipe("maml", "glyphs") is None


def test_only_classification_algorithms_run_and_maml_is_added_first(catalogue):
    chosen, skipped = catalogue.classification_algorithms("protonet,l2rw")
    assert chosen == ["maml", "protonet"]
    assert [s["algorithm"] for s in skipped] == ["l2rw"] and "noisy-labels" in skipped[0]["reason"]
    with pytest.raises(SystemExit, match="unknown nope"):
        catalogue.classification_algorithms("nope")


def test_floors_against_maml_and_notes(catalogue, monkeypatch):
    maml = row("maml", "glyphs", 0.80)
    assert catalogue.floor_status(row("protonet", "glyphs", 0.65), maml)[1] is False  # 81% of MAML's
    status, below = catalogue.floor_status(row("reptile", "glyphs", 0.63), maml)  # 79%
    assert below and status.startswith("below floor: 79% of MAML's 80.0%")
    omniglot = row("maml", "omniglot", 0.95)
    assert catalogue.floor_status(row("anil", "omniglot", 0.921), omniglot)[1] is False  # -2.9 points
    assert catalogue.floor_status(row("anil", "omniglot", 0.919), omniglot)[1] is True  # -3.1 points
    rows = {r[0]: r for r in catalogue.table_rows(table_data(row("reptile", "glyphs", 0.63), maml))}
    assert rows["MAML"][7] == "reference"
    assert "below floor; not investigated" in rows["Reptile"][8]
    assert "best validation at step 400 of 500 steps of 1 task (500 tasks)" in rows["Reptile"][8]
    improving = row("reptile", "glyphs", 0.63, best_step=500, config={"training": {"meta_batch": 5}})
    rows = {r[0]: r for r in catalogue.table_rows(table_data(improving, maml))}
    assert "still improving when the budget ended: 500 steps of 5 tasks (2,500 tasks)" in rows["Reptile"][8]
    assert "best validation" not in rows["MAML"][8]  # only rows below their floor say it
    monkeypatch.setitem(catalogue.NOTES, ("reptile", "glyphs"), "measured: 50 test steps overfit")
    rows = {r[0]: r for r in catalogue.table_rows(table_data(row("reptile", "glyphs", 0.63), maml))}
    assert "measured: 50 test steps overfit" in rows["Reptile"][8] and "not investigated" not in rows["Reptile"][8]
    assert catalogue.floor_status(row("reptile", "glyphs", 0.63), None)[0] == "no MAML run to compare with"


def test_metric_and_model_families_have_an_absolute_floor_on_omniglot_5_way(catalogue):
    maml = row("maml", "omniglot", 0.92)
    status, below = catalogue.floor_status(row("gnn", "omniglot", 0.949), maml)
    assert below and status.startswith("below floor: 94.9% (floor 95%)") and "+2.9 points vs MAML" in status
    assert catalogue.floor_status(row("matching-net", "omniglot", 0.95), maml)[1] is False
    status, below = catalogue.floor_status(row("matching-net", "omniglot", 0.80, setting="20w1s"),
                                           row("maml", "omniglot", 0.85, setting="20w1s"))
    assert below is None and status == "no floor here; -5.0 points vs MAML's 85.0%"
    assert catalogue.floor_status(row("siamese", "omniglot", 0.97), None) == ("meets floor: 97.0% (floor 95%)",
                                                                               False)


def test_mann_is_judged_by_its_accuracy_by_instance(catalogue):
    learned = row("mann", "glyphs", 0.6, test={"accuracy": 0.6, "ci95": 0.01, "episodes": 1000, "extras": {
        "accuracy_by_instance": {"1": 0.36, "2": 0.5, "10": 0.7}, "ci95_by_instance": {}}})
    status, below = catalogue.floor_status(learned, row("maml", "glyphs", 0.8))
    assert below is None and status.startswith("own terms (meets floor: 10th instance +34.0 points over the 1st")
    assert "2: 50.0%, 10: 70.0%" in status
    learned["test"]["extras"]["accuracy_by_instance"]["10"] = 0.5
    assert "below floor: 10th instance +14.0" in catalogue.floor_status(learned, None)[0]
    learned["test"]["extras"] = {"instance_note": "accuracy by instance unavailable: too few images"}
    assert catalogue.floor_status(learned, None)[0] == "own terms: accuracy by instance unavailable: too few images"


def test_leo_and_adml_are_measured_on_their_own_terms(catalogue):
    leo = row("leo", "glyphs", 0.70, test={"accuracy": 0.70, "ci95": 0.01, "episodes": 1000, "extras": {
        "protonet_same_features": {"accuracy": 0.72, "ci95": 0.01, "episodes": 1000}}})
    status, below = catalogue.floor_status(leo, row("maml", "glyphs", 0.99))
    assert below is None and "-2.0 points vs a prototype classifier on the same features (72.00% ± 1.00)" in status
    adml = row("adml", "glyphs", 0.70, test={"accuracy": 0.70, "ci95": 0.01, "episodes": 1000, "extras": {
        "accuracy_by_epsilon": {"0": 0.70, "0.00784314": 0.55}, "ci95_by_epsilon": {"0": 0.01, "0.00784314": 0.02}}})
    maml = row("maml", "glyphs", 0.75, adversarial={"epsilon": 0.00784314, "accuracy": 0.40, "ci95": 0.02})
    status, below = catalogue.floor_status(adml, maml)
    assert below is None and "55.00% ± 2.00 vs MAML's 40.00% ± 2.00 (+15.0 points)" in status
    assert "under attack" in catalogue.ours_cell(maml)
    assert "no MAML measurement" in catalogue.floor_status(adml, row("maml", "glyphs", 0.75))[0]


def test_paper_column_and_budget_notes(catalogue):
    maml = row("maml", "omniglot", 0.93, steps=900, steps_planned=4000,
               paper_recipe={"steps": 60000, "meta_batch": 32})
    note = catalogue.budget_note(maml)
    assert "short of the recipe's 4,000 steps" in note and "the paper recipe's 60,000 steps of 32 tasks" in note
    assert "below the paper's number" in note
    assert catalogue.paper_cell(maml).startswith("98.7% ± 0.4 (Finn et al. 2017")
    assert catalogue.paper_cell(row("meta-lstm", "omniglot", 0.9)).startswith("— (the paper has no Omniglot")
    assert catalogue.paper_cell(row("maml", "glyphs", 0.9)).startswith("— (glyphs")
    text = catalogue.render_table(table_data(maml), readme=True)
    assert text.startswith(catalogue.START) and text.endswith(catalogue.END) and "Not run: l2rw" in text


def test_every_paper_number_is_quoted_where_it_says(catalogue):
    from workbench.core.algorithms import get_algorithm

    for (algorithm, dataset, setting), paper in catalogue.PAPER_NUMBERS.items():
        assert get_algorithm(algorithm).supports("classification") and setting in catalogue.SETTINGS
        files = [REPO_ROOT / "workbench" / "core" / "algorithms" / name
                 for name in re.findall(r"[a-z_]+\.py", paper.quoted_in)]
        files += [REPO_ROOT / "README.md"] if "README" in paper.quoted_in else []
        assert files, f"{algorithm}: name the file that quotes {paper.accuracy}"
        texts = [f.read_text(encoding="utf-8") for f in files]
        quoted = {f"{paper.accuracy:g}%", f"{paper.accuracy:g} ±", f"{paper.accuracy:.1f}%", f"{paper.accuracy:.2f}%"}
        assert any(form in text for form in quoted for text in texts), \
            f"{algorithm} {dataset} {setting}: {paper.accuracy} is not in {paper.quoted_in}"


def test_resume_keeps_finished_runs_and_retries_failed_ones(catalogue, tmp_path, monkeypatch):
    args = args_for(catalogue, "--datasets", "glyphs", "--settings", "5w1s", "--algorithms", "protonet",
                    "--resume", "x")
    args.minutes = 3.0
    done = {("maml", "glyphs", "5w1s"): row("maml", "glyphs", 0.8),
            ("protonet", "glyphs", "5w1s"): row("protonet", "glyphs", 0.9, error="RuntimeError: boom"),
            ("protonet", "omniglot", "5w1s"): row("protonet", "omniglot", 0.97)}
    trained = []
    monkeypatch.setattr(catalogue, "run_one", lambda *key_args: trained.append(key_args[:3]) or
                        row(*key_args[:2], 0.91))
    data = {"runs": [], "skipped": []}
    catalogue.run_all(args, data, tmp_path / "out.json", done, store=None)
    assert trained == [("protonet", "glyphs", "5w1s")]
    assert {(r["algorithm"], r["dataset"]) for r in data["runs"]} == {("maml", "glyphs"), ("protonet", "glyphs"),
                                                                      ("protonet", "omniglot")}
    assert (tmp_path / "out.json").is_file()


def test_results_of_parallel_invocations_merge_without_losing_a_good_run(catalogue, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(table_data(row("maml", "glyphs", 0.8), row("leo", "glyphs", 0.7),
                                           row("gnn", "glyphs", 0.6))))
    second.write_text(json.dumps(table_data(row("maml", "glyphs", 0.5, error="RuntimeError: boom"),
                                            row("leo", "glyphs", 0.75), row("siamese", "glyphs", 0.9))))
    merged = catalogue.read_results(f"{first},{second}", "--render")
    accuracy = {r["algorithm"]: r["test"]["accuracy"] for r in merged["runs"]}
    # A failed rerun keeps the earlier good row; a later good row replaces the earlier one.
    assert accuracy == {"maml": 0.8, "leo": 0.75, "gnn": 0.6, "siamese": 0.9}
    assert set(catalogue.load_previous(f"{second},{first}")) == {(a, "glyphs", "5w1s") for a in accuracy}
    with pytest.raises(SystemExit, match="b.json"):
        catalogue.read_results(f"{first},{tmp_path / 'missing' / 'b.json'}", "--resume")


def test_a_tiny_run_trains_selects_on_validation_and_tests_once(catalogue, one_torch_thread, tmp_path):
    from workbench.core.runs import RunStore

    args = args_for(catalogue, "--test-episodes", "5")
    args.minutes = 0.003
    result = catalogue.run_one("protonet", "glyphs", "5w1s", args, RunStore(tmp_path))
    assert "error" not in result, result.get("traceback")
    assert result["recipe"] == "default" and result["steps_mode"] == "until the budget"
    assert result["steps"] > 0 and result["best_step"] == result["steps"] and result["validations"] >= 1
    assert result["test"]["episodes"] == 5 and result["test"]["checkpoint"] == "best"
    assert 0.0 <= result["test"]["accuracy"] <= 1.0 and result["train_cpu_minutes"] > 0
    assert result["config"]["dataset"]["ways"] == 5
    assert len(result["per_episode_accuracy"]) == 5  # for the paired comparisons


def test_the_cpu_budget_leaves_validations_out(catalogue, monkeypatch):
    import workbench.core.training.trainer as trainer_module

    now = [10.0]
    monkeypatch.setattr(catalogue.time, "process_time", lambda: now[0])
    validations = catalogue.ValidationClock("cpu")
    for now[0], event in ((12.0, "step"), (20.0, "validation"), (20.5, "step")):
        validations(type("Record", (), {"event": event})())
    assert (validations.count, validations.cpu_s) == (1, 8.0)
    wall = trainer_module.clock
    now[0] = 21.0
    with catalogue.budget_clock(validations):
        assert trainer_module.clock() == 13.0  # 21 less the validation's 8
    assert trainer_module.clock is wall
    assert catalogue.ValidationClock("cpu-all").clock() == 21.0
    with catalogue.budget_clock(catalogue.ValidationClock("wall")):
        assert trainer_module.clock is wall


def test_methods_are_paired_against_maml_on_the_same_episodes(catalogue):
    maml = [1.0, 0.8, 0.6, 1.0]

    def tested(accuracies, seed=12345):
        return {"accuracy": sum(accuracies) / len(accuracies), "ci95": 0.01, "episodes": len(accuracies),
                "seed": seed, "extras": {}}

    data = {"runs": [row("maml", "glyphs", 0.85, per_episode_accuracy=maml, test=tested(maml)),
                     row("anil", "glyphs", 0.90, per_episode_accuracy=[1.0, 1.0, 0.8, 1.0],
                         test=tested([1.0, 1.0, 0.8, 1.0])),
                     row("protonet", "glyphs", 0.95),  # no per-episode accuracies: left out
                     row("reptile", "glyphs", 0.80, per_episode_accuracy=[1.0, 0.8, 0.6, 1.0],
                         test=tested([1.0, 0.8, 0.6, 1.0], seed=7)),  # other episodes: left out
                     # the first 3 of the same episodes: paired with MAML's first 3
                     row("meta-sgd", "glyphs", 0.73, per_episode_accuracy=[1.0, 0.6, 0.6],
                         test=tested([1.0, 0.6, 0.6])),
                     row("fomaml", "omniglot", 0.90, per_episode_accuracy=maml)],  # no MAML on Omniglot
            "args": {"minutes": 3, "clock": "cpu", "threads": 1, "eval_seed": 12345},
            "environment": {"cpu": "test", "torch": "x", "load_average_1m": 0}}
    paired = catalogue.paired_rows(data)
    assert [r[0] for r in paired] == ["ANIL", "Meta-SGD"]
    assert paired[0][2].startswith("+10.00 ± ") and float(paired[0][3]) < 1 and paired[0][4] == "4"
    assert paired[1][2].startswith("-6.67 ± ") and paired[1][4] == "3"
    assert "Paired against MAML" in catalogue.render_table(data)


def test_zero_shot_runs_where_descriptors_exist_and_is_judged_on_its_own_terms(catalogue, monkeypatch):
    assert "descriptors" in catalogue.get_algorithm("zero-shot").capabilities
    planned = []
    monkeypatch.setattr(catalogue, "run_one", lambda *key: planned.append(key[:3]) or {"error": "stub"})
    monkeypatch.setattr(catalogue, "write_results", lambda data, out: None)
    args = args_for(catalogue, "--datasets", "glyphs,omniglot", "--settings", "5w1s", "--algorithms", "zero-shot")
    data = {"runs": [], "skipped": []}
    catalogue.run_all(args, data, Path("unused.json"), {}, None)
    assert ("zero-shot", "glyphs", "5w1s") in planned and ("zero-shot", "omniglot", "5w1s") not in planned
    assert any(s["algorithm"] == "zero-shot" and "omniglot" in s["reason"] for s in data["skipped"])
    zero = row("zero-shot", "glyphs", 0.94, test={"accuracy": 0.94, "ci95": 0.003, "episodes": 1000, "extras": {
        "chance": 0.2, "protonet_one_shot": {"accuracy": 0.88, "ci95": 0.005}}})
    status, below = catalogue.floor_status(zero, row("maml", "glyphs", 0.9))
    assert below is None and "chance 20%" in status and "+6.0 points" in status

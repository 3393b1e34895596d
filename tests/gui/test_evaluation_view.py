"""The Evaluation tab: evaluating a saved run through the evaluation service, the confusion matrix and the images
of a clicked cell, comparing runs with a paired test, the shot sweep, regression results (MSE by adaptation
steps, lower is better), the service shared with the Runs tab, and the headless helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QObject, Signal

from conftest import tiny_dataset_config
from workbench.core.config import ExperimentConfig
from workbench.core.kinds import ACCURACY, MSE
from workbench.core.runs import RunStore
from workbench.core.training import Trainer
from workbench.gui import theme as themes
from workbench.gui.evaluation.results import ResultData, compare_rows, most_confused, verdict
from workbench.gui.evaluation.service import EvaluationService
from workbench.gui.evaluation_view import EvaluationView

EVAL_TIMEOUT_MS = 60_000
SCREENSHOT_DIR = os.environ.get("WORKBENCH_SCREENSHOTS")  # set to keep the rendered PNGs for a look


def save_screenshot(widget, name: str) -> None:
    from PySide6.QtWidgets import QApplication

    QApplication.processEvents()  # widgets added to a visible layout show on the next turn of the event loop
    image = widget.grab()
    assert not image.isNull() and image.width() > 100
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        image.save(str(Path(SCREENSHOT_DIR) / name))


def train_run(store, hidden: int = 8, steps: int = 6, name: str = "") -> str:
    config = tiny_dataset_config(algorithm={"hparams": {"hidden": hidden}}, training={"steps": steps},
                                 dataset={"ways": 3, "shots": 1, "queries": 3}, name=name)
    trainer = Trainer(config, store)
    trainer.run_all()
    return trainer.run.id


@pytest.fixture
def view(qtbot, use_synthetic_data):
    store = RunStore()
    widget = EvaluationView(store)
    qtbot.addWidget(widget)
    widget.resize(1200, 800)
    widget.show()
    yield widget
    assert widget.shutdown()


def test_verdict_follows_the_direction_of_the_metric():
    assert verdict(0.05, 1e-6) == verdict(0.05, 1e-6, ACCURACY) == "better"
    assert verdict(-0.05, 1e-6, ACCURACY) == "worse"
    assert verdict(-0.05, 1e-6, MSE) == "better" and verdict(0.05, 1e-6, MSE) == "worse"  # lower MSE wins
    assert verdict(0.05, 0.2, MSE) == verdict(0.0, 0.0) == "same"


def test_most_confused_keeps_the_classes_with_most_errors():
    confusion = np.diag(np.full(30, 10))
    confusion[3, 7] = 5
    confusion[12, 20] = 4
    keep = most_confused(confusion, limit=4)
    assert len(keep) == 4 and {3, 7, 12, 20} == set(keep.tolist())
    assert list(most_confused(np.eye(5), limit=20)) == list(range(5))


def test_evaluate_a_saved_run_then_open_a_confusion_cell(qtbot, view):
    run_id = train_run(view.store)
    view.refresh_runs()
    view.select_run(run_id)
    assert view.ways_spin.value() == 3 and view.episodes_spin.value() == 5
    view.episodes_spin.setValue(12)
    with qtbot.waitSignal(view.evaluation_finished, timeout=EVAL_TIMEOUT_MS) as finished:
        view.evaluate_selected()
    result = finished.args[0]
    assert result.episodes == 12 and len(result.per_episode_accuracy) == 12
    assert f"{100 * result.accuracy:.2f}%" in view.summary_label.text()
    assert view.per_class_table.rowCount() == len(result.per_class_accuracy) > 0
    n = view.confusion_table.rowCount()
    assert n == view.confusion_table.columnCount() == len(result.confusion_classes)
    # The saved result is listed for the run (works after a restart: it is read from the run folder).
    assert view.saved_combo.count() >= 1

    confusion = view.result_panel.confusion
    assert all(view.tabs.isTabVisible(view.tabs.indexOf(page)) for page in (confusion, view.per_class_table))
    assert not view.tabs.isTabVisible(view.tabs.indexOf(view.result_panel.steps))  # no scores by steps here
    assert view.tabs.currentWidget() is confusion  # the first result opens on its first page

    # Click the off-diagonal cell with the most errors (or the diagonal if the model is perfect).
    sub = result.confusion[np.ix_(confusion.indexes, confusion.indexes)].copy()
    off = sub - np.diag(np.diag(sub))
    row, column = np.unravel_index(np.argmax(off), off.shape) if off.max() > 0 else (0, 0)
    true_name, pred_name = confusion.cell_classes(row, column)
    with qtbot.waitSignal(view.examples_shown, timeout=EVAL_TIMEOUT_MS) as shown:
        view.confusion_table.cellClicked.emit(int(row), int(column))
    found = shown.args[0]
    assert found["true"] == true_name and found["pred"] == pred_name
    assert found["total"] == int(sub[row, column]) > 0
    dataset = found["dataset"]
    split = dataset.split("test")
    for example in found["examples"]:
        # The query image is the row recorded by the evaluation, of the clicked true class.
        assert split.class_names[int(split.labels[example["row"]])] == true_name
        assert np.array_equal(example["query_image"], split.images[example["row"]].numpy())
        assert len(example["true_support"]) == result.shots
    assert confusion.examples_grid.count() >= len(found["examples"])
    save_screenshot(view, "evaluation_classification.png")


def test_compare_runs_on_identical_episodes(qtbot, view):
    first = train_run(view.store, hidden=8, name="small")
    second = train_run(view.store, hidden=16, steps=4, name="wide")
    view.refresh_runs()
    view.select_run(first)
    view.episodes_spin.setValue(10)
    view.set_checked([first, second])
    with qtbot.waitSignal(view.comparison_finished, timeout=2 * EVAL_TIMEOUT_MS) as compared:
        view.compare_checked()
    rows = compared.args[0]
    assert {r["run"] for r in rows} == {first, second}
    assert view.compare_table.rowCount() == 2
    assert [r["verdict"] for r in rows].count("baseline") == 1
    other = next(r for r in rows if not r["baseline"])
    assert other["verdict"] in ("better", "same", "worse") and 0.0 <= other["p"] <= 1.0
    # Both results came from the same episodes: the saved per-episode arrays align.
    a = view.compare_panel.results[first].per_task()
    b = view.compare_panel.results[second].per_task()
    assert len(a) == len(b) == 10
    # Switching the baseline re-tests without evaluating again.
    with qtbot.waitSignal(view.comparison_finished, timeout=1_000):
        view.baseline_combo.setCurrentIndex(1 - view.baseline_combo.currentIndex())
    assert next(r for r in view.comparison if r["baseline"])["run"] == other["run"]
    view.tabs.setCurrentWidget(view.compare_panel)
    save_screenshot(view, "evaluation_compare_classification.png")


def test_shot_sweep_plots_accuracy_against_shots(qtbot, view):
    run_id = train_run(view.store)
    view.refresh_runs()
    view.select_run(run_id)
    view.episodes_spin.setValue(4)
    view.sweep_shots = (1, 3, 5, 10)  # the synthetic test classes have 8 images: 10 shots + 3 queries is skipped
    with qtbot.waitSignal(view.evaluation_finished, timeout=2 * EVAL_TIMEOUT_MS):
        view.evaluate_shot_sweep()
    series = view.shot_series(view.store.get(run_id))
    assert [s for s, _, _ in series[3]] == [1, 3, 5]
    curves = view.shot_plot.getPlotItem().listDataItems()
    assert curves and list(curves[0].getData()[0]) == [1.0, 3.0, 5.0]


def test_cancel_stops_an_evaluation(qtbot, view):
    run_id = train_run(view.store)
    view.refresh_runs()
    view.select_run(run_id)
    view.episodes_spin.setValue(5000)
    with qtbot.waitSignal(view.service.cancelled, timeout=EVAL_TIMEOUT_MS):
        view.evaluate_selected()
        qtbot.waitUntil(lambda: view.progress_bar.value() > 0, timeout=EVAL_TIMEOUT_MS)
        view.cancel_button.click()
    assert view.status_label.text() == "cancelled"
    assert view.evaluate_button.isEnabled()


def test_a_saved_result_reopens_in_a_fresh_view_after_a_restart(qtbot, view):
    run_id = train_run(view.store)
    view.refresh_runs()
    view.select_run(run_id)
    view.episodes_spin.setValue(6)
    with qtbot.waitSignal(view.evaluation_finished, timeout=EVAL_TIMEOUT_MS) as finished:
        view.evaluate_selected()
    original = finished.args[0]

    fresh = EvaluationView(RunStore())  # a new store object and view: only the run folder carries over
    qtbot.addWidget(fresh)
    try:
        fresh.select_run(run_id)
        assert fresh.saved_combo.count() == 1
        assert fresh.result is not None  # selecting a run shows its newest saved result
        fresh.show_saved(0)
        assert fresh.result.accuracy == pytest.approx(original.accuracy)
        assert np.array_equal(fresh.result.confusion, original.confusion)
        assert fresh.confusion_table.rowCount() == len(original.confusion_classes)
        with qtbot.waitSignal(fresh.examples_shown, timeout=EVAL_TIMEOUT_MS) as shown:
            fresh.result_panel.confusion.open_cell(0, 0)
        assert shown.args[0]["total"] == int(original.confusion[0, 0])
    finally:
        assert fresh.shutdown()


# --- regression results (hand-made in the documented JSON format) ---------------------------------------
STEPS = (0, 1, 10)


def per_task_mse(level: float, tasks: int = 40, seed: int = 0) -> np.ndarray:
    """[tasks, 3]: MSE after 0, 1, 10 steps, falling with the steps, around ``level`` after 10."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.5, 1.5, tasks)
    return np.stack([base * 6 * level, base * 2 * level, base * level], 1).astype(np.float32)


def regression_json(per_task: np.ndarray, run_id: str = "", steps: int = 10, shots: int = 5, seed: int = 3) -> dict:
    means = per_task.mean(0)
    cis = 1.96 * per_task.std(0) / np.sqrt(len(per_task))
    headline = STEPS.index(steps)
    return {"kind": "regression", "mse": float(means[headline]), "ci95": float(cis[headline]),
            "mse_by_steps": {str(s): float(m) for s, m in zip(STEPS, means)},
            "ci95_by_steps": {str(s): float(c) for s, c in zip(STEPS, cis)}, "episodes": len(per_task),
            "shots": shots, "queries": 10, "seed": seed, "steps": steps, "split": "test", "run": run_id,
            "dataset": "sine", "algorithm": "maml", "checkpoint": "best", "created": "2026-01-01T00:00:00+00:00",
            "elapsed_s": 0.5}


class HandMadeRegressionResult:
    """What a regression kind's result offers the GUI: its JSON and its arrays."""

    def __init__(self, per_task: np.ndarray, **settings):
        self.per_task = per_task
        self.data = regression_json(per_task, **settings)

    def to_dict(self) -> dict:
        return dict(self.data)

    def arrays(self) -> dict:
        return {"per_task_mse": self.per_task, "reported_steps": np.asarray(STEPS)}


def regression_run(store: RunStore, name: str, level: float, seed: int = 0, shots: int = 5) -> str:
    """A regression run with a placeholder best checkpoint and one saved test evaluation (JSON + .npz)."""
    per_task = per_task_mse(level, seed=seed)
    config = ExperimentConfig.from_dict({"kind": "regression", "name": name, "algorithm": {"name": "maml"},
                                         "dataset": {"name": "sine", "shots": shots, "queries": 10},
                                         "evaluation": {"episodes": len(per_task), "seed": 3}})
    run = store.create(config)
    (run.path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run.path / "checkpoints" / "best.pt").write_bytes(b"placeholder")  # enough to count as evaluated from "best"
    folder = run.path / "evaluations"
    folder.mkdir(parents=True, exist_ok=True)
    data = regression_json(per_task, run.id, shots=shots)
    stem = f"k{shots}-{len(per_task)}tasks-seed3"
    (folder / f"{stem}.json").write_text(json.dumps(data))
    np.savez(folder / f"{stem}.npz", per_task_mse=per_task, reported_steps=np.asarray(STEPS))
    store.update(run.id, status="finished", test_mse=data["mse"], test_ci95=data["ci95"], test_shots=shots)
    return run.id


def test_result_data_reads_any_kind_through_its_json_and_arrays():
    per_task = per_task_mse(0.2)
    data = ResultData.of(HandMadeRegressionResult(per_task))
    assert data.metric is MSE and data.value == pytest.approx(per_task[:, 2].mean())
    assert [s for s, _, _ in data.by_steps()] == [0, 1, 10]
    assert np.allclose(data.per_task(), per_task[:, 2])  # the column of the headline steps
    assert data.headline().startswith("MSE ") and "after 10 steps" in data.setting()
    one_step = ResultData.of(HandMadeRegressionResult(per_task, steps=1))
    assert np.allclose(one_step.per_task(), per_task[:, 1])
    odd = ResultData(None, dict(data.data, steps=5), data.arrays)  # headline steps not among the saved columns
    with pytest.raises(ValueError, match="headline 5 steps"):
        odd.per_task()


def test_compare_rows_prefer_lower_mse_and_say_why_a_run_is_untested():
    base = ResultData.of(HandMadeRegressionResult(per_task_mse(0.30, seed=1)))
    good = ResultData.of(HandMadeRegressionResult(per_task_mse(0.30, seed=1) * 0.5))
    short = ResultData(None, dict(base.data), {"per_task_mse": per_task_mse(0.3, tasks=10)})
    rows = {row["run"]: row for row in compare_rows({"base": base, "good": good, "short": short}, "base")}
    assert rows["base"]["verdict"] == "baseline"
    assert rows["good"]["diff"] < 0 and rows["good"]["p"] < 1e-6 and rows["good"]["verdict"] == "better"
    assert rows["short"]["verdict"] == "untested" and "same episodes" in rows["short"]["error"]


def test_a_regression_result_shows_mse_by_steps_instead_of_a_confusion_matrix(qtbot, view):
    run_id = regression_run(view.store, "sine-maml", level=0.25)
    view.refresh_runs()
    view.select_run(run_id)
    # Selecting the run shows its saved result: MSE after the headline steps and the MSE by steps page.
    data = ResultData.of(view.result)
    assert data.metric is MSE
    assert f"MSE {MSE.format(data.value, data.ci95)}" in view.summary_label.text()
    assert "after 10 steps" in view.summary_label.text() and "-way" not in view.summary_label.text()
    steps_page = view.result_panel.steps
    assert view.tabs.isTabVisible(view.tabs.indexOf(steps_page))
    assert not view.tabs.isTabVisible(view.tabs.indexOf(view.result_panel.confusion))
    assert not view.tabs.isTabVisible(view.tabs.indexOf(view.per_class_table))
    table = steps_page.table
    assert [table.item(r, 0).text().split()[0] for r in range(table.rowCount())] == ["0", "1", "10"]
    assert "headline" in table.item(2, 0).text()
    assert table.item(0, 1).text() == MSE.format(*data.by_steps()[0][1:])
    # Regression tasks have no ways: the form hides the field; the saved list and the plot speak MSE.
    assert not view.form.isRowVisible(view.ways_spin) and view.shots_spin.value() == 5
    assert view.form.isRowVisible(view.shots_spin) and not view.sweep_button.isHidden()  # support points sweep
    assert view.saved_combo.itemText(0).startswith(MSE.format(data.value, data.ci95))
    assert view.tabs.tabText(view.tabs.indexOf(view.shot_plot)) == "MSE vs shots"
    assert [s for s, _, _ in view.shot_series(view.store.get(run_id))[None]] == [5]
    view.tabs.setCurrentWidget(steps_page)
    save_screenshot(view, "evaluation_regression.png")


def test_regression_runs_compare_on_their_saved_tasks_lower_mse_better(qtbot, view):
    base = regression_run(view.store, "maml-base", level=0.40, seed=1)
    better = regression_run(view.store, "maml-better", level=0.40, seed=1)
    # The second run's saved per-task MSE: the same tasks, each 30% lower (so the paired test is clear).
    run = view.store.get(better)
    npz = next((run.path / "evaluations").glob("*.npz"))
    scaled = np.load(npz)["per_task_mse"] * 0.7
    np.savez(npz, per_task_mse=scaled, reported_steps=np.asarray(STEPS))
    json_file = npz.with_suffix(".json")
    json_file.write_text(json.dumps(regression_json(scaled, better)))
    view.refresh_runs()
    view.select_run(base)
    view.set_checked([base, better])
    with qtbot.waitSignal(view.comparison_finished, timeout=EVAL_TIMEOUT_MS):
        view.compare_checked()  # reuses the saved results: nothing to evaluate
    combo = view.baseline_combo
    if combo.currentData() != base:
        with qtbot.waitSignal(view.comparison_finished, timeout=1_000):
            combo.setCurrentIndex(combo.findData(base))
    rows = {row["run"]: row for row in view.comparison}
    assert rows[base]["verdict"] == "baseline"
    assert rows[better]["verdict"] == "better" and rows[better]["diff"] < 0 and rows[better]["p"] < 1e-6
    header = view.compare_table.horizontalHeaderItem(2).text()
    assert header == "MSE ± 95% CI"
    delta = view.compare_table.item(1 if view.compare_table.item(0, 0).text() == "maml-base" else 0, 3).text()
    assert delta.startswith("-") and "pts" not in delta
    assert "lower is better" in view.compare_panel.note.text()
    view.tabs.setCurrentWidget(view.compare_panel)
    save_screenshot(view, "evaluation_compare_regression.png")


def test_compare_refuses_runs_of_different_kinds(qtbot, view):
    classification = train_run(view.store)
    regression = regression_run(view.store, "sine", level=0.3)
    view.refresh_runs()
    view.set_checked([classification, regression])
    view.compare_checked()
    assert not view.service.is_running
    assert "different kinds" in view.status_label.text() and "different kinds" in view.compare_panel.note.text()


# --- declared as a view, sharing the window's evaluation service ------------------------------------------
class FakeWindow(QObject):
    """The main window's signals and the slots the views connect to."""

    training_started = Signal(int, object)
    training_records = Signal(int, object)
    training_finished = Signal(int, object)
    theme_changed = Signal(object)
    run_store_changed = Signal()

    def __init__(self, store):
        super().__init__()
        self.store = store
        self.theme = themes.LIGHT
        self.opened: list[str] = []

    def open_run(self, run_id):
        self.opened.append(run_id)

    def overlay_runs(self, run_ids, baseline):
        pass

    def resume_run(self, run_id):
        pass

    def statusBar(self):  # noqa: N802 - Qt's name
        return self

    def showMessage(self, text, timeout=0):  # noqa: N802
        pass


def test_both_views_share_the_windows_evaluation_service(qtbot, use_synthetic_data):
    from workbench.gui.runs_view import RunsView

    store = RunStore()
    window = FakeWindow(store)
    runs = window.runs_view = RunsView.for_window(window)  # the window keeps views under their snake-case names
    evaluation = EvaluationView.for_window(window)
    for widget in (evaluation, runs):
        qtbot.addWidget(widget)
    try:
        assert (EvaluationView.view_title, EvaluationView.view_capability) == ("Evaluation", "evaluation")
        assert isinstance(window.evaluation_service, EvaluationService)
        assert evaluation.service is runs.service is window.evaluation_service
        assert EvaluationService.for_window(window) is window.evaluation_service
        run_id = train_run(store)
        assert evaluation.run_list.count() == 0
        window.run_store_changed.emit()
        assert evaluation.run_list.count() == 1 and evaluation.saved_combo.count() == 0

        # The Runs tab's Evaluate goes through the same service: the Evaluation tab is busy meanwhile, does not
        # take the result as its own, and lists it once saved.
        taken = []
        evaluation.evaluation_finished.connect(taken.append)
        runs.eval_device = "cpu"
        runs.select_runs([run_id])
        with qtbot.waitSignal(runs.evaluation_finished, timeout=EVAL_TIMEOUT_MS):
            runs.evaluate_current()
            assert not evaluation.evaluate_button.isEnabled() and evaluation.cancel_button.isEnabled()
        assert taken == [] and not window.evaluation_service.is_running
        qtbot.waitUntil(lambda: evaluation.saved_combo.count() == 1, timeout=5_000)
        assert evaluation.evaluate_button.isEnabled()
        other = train_run(store, name="other")
        window.run_store_changed.emit()
        evaluation.select_run(run_id)
        runs.select_runs([other])
        runs.open_current()  # opening a run in the Runs tab selects it here too
        assert evaluation.selected_run_id() == other
    finally:
        assert evaluation.shutdown() and runs.shutdown()


def test_a_run_is_tested_on_another_dataset_chosen_from_the_catalog(qtbot, tmp_path):
    from fixtures_data import make_class_folders
    from workbench.core.data import dataset_info, datasets_for_kind
    from workbench.gui.evaluation.view import OWN_DATA

    store = RunStore()
    run_id = train_run(store)  # real glyphs: 1 channel, 16 px, 3-way
    folder = tmp_path / "drawings"
    make_class_folders(folder, {f"shape{i:02d}": 4 for i in range(15)}, mode="L")
    view = EvaluationView(store)
    qtbot.addWidget(view)
    view.resize(1200, 800)
    view.show()
    try:
        view.select_run(run_id)
        combo = view.dataset_combo
        assert combo.itemText(0) == OWN_DATA and combo.currentIndex() == 0 and view.data_choice() == {}
        assert [combo.itemData(i) for i in range(1, combo.count())] == datasets_for_kind("classification")
        assert not view.form.isRowVisible(view.data_root_row)  # the run's own data needs no location
        combo.setCurrentIndex(combo.findData("folder"))
        assert combo.currentText() == dataset_info("folder").title
        assert view.form.isRowVisible(view.data_root_row)
        view.data_root_edit.setText(str(folder))
        view.episodes_spin.setValue(4)
        assert view.data_choice() == {"dataset": "folder", "data_root": str(folder)}
        with qtbot.waitSignal(view.evaluation_finished, timeout=EVAL_TIMEOUT_MS) as finished:
            view.evaluate_selected()
        result = finished.args[0]
        assert result.dataset == "folder" and result.ways == 3 and result.episodes == 4
        assert result.extras["evaluated_on"]["root"] == str(folder)
        assert f"on {dataset_info('folder').title} ({folder})" in view.summary_label.text()
        assert "trained on" in view.summary_label.text()
        assert view.saved_combo.count() == 1 and view.saved_combo.itemText(0).startswith(
            f"on {dataset_info('folder').title}: ")
        assert view.shot_series(store.get(run_id)) == {}  # another dataset's numbers stay off the run's curve
        # A saved result is reused only for the data it was tested on.
        from workbench.gui.evaluation.service import matching_evaluation

        request = view._request(run_id, "classification")
        assert matching_evaluation(store.get(run_id), request).dataset == "folder"
        assert matching_evaluation(store.get(run_id), {k: v for k, v in request.items()
                                                       if k not in ("dataset", "data_root")}) is None
        # The images behind a confusion cell come from the data the result was tested on.
        with qtbot.waitSignal(view.examples_shown, timeout=EVAL_TIMEOUT_MS) as shown:
            view.confusion_table.cellClicked.emit(0, 0)
        assert shown.args[0]["dataset"].name == "folder"
        assert all(name.startswith("shape") for name in shown.args[0]["dataset"].split("test").class_names)
        save_screenshot(view, "evaluation_other_dataset.png")
        combo.setCurrentIndex(0)
        assert view.data_choice() == {} and not view.form.isRowVisible(view.data_root_row)
    finally:
        assert view.shutdown()


# --- curves among an algorithm's extras (accuracy against an attack's budget) ------------------------------------
def gradient_run(store: RunStore, algorithm: str, name: str) -> str:
    hparams = {"hidden": 8, "train_inner_steps": 1, "train_inner_lr": 0.4, "test_inner_steps": 3,
               "test_inner_lr": 0.4}
    if algorithm == "adml":
        hparams["epsilon"] = 0.05
    config = tiny_dataset_config(algorithm={"name": algorithm, "hparams": hparams}, training={"steps": 4},
                                 dataset={"ways": 3, "shots": 1, "queries": 3}, name=name)
    trainer = Trainer(config, store)
    trainer.run_all()
    return trainer.run.id


def test_a_curve_the_algorithm_adds_to_its_result_shows_as_a_titled_page(qtbot, view):
    run_id = gradient_run(view.store, "adml", "robust")
    view.refresh_runs()
    view.select_run(run_id)
    view.episodes_spin.setValue(6)
    with qtbot.waitSignal(view.evaluation_finished, timeout=EVAL_TIMEOUT_MS) as finished:
        view.evaluate_selected()
    result = finished.args[0]
    page = view.result_panel.curves
    index = view.tabs.indexOf(page)
    assert view.tabs.isTabVisible(index) and view.tabs.tabText(index) == "Accuracy by epsilon"
    points = result.extras["accuracy_by_epsilon"]
    assert [page.table.item(r, 0).text() for r in range(page.table.rowCount())] == list(points) == ["0", "0.05"]
    assert page.table.item(0, 1).text() == ACCURACY.format(points["0"], result.extras["ci95_by_epsilon"]["0"])
    line = page.plot.getPlotItem().listDataItems()[0]
    assert list(line.getData()[0]) == [0.0, 0.05]
    assert list(line.getData()[1]) == pytest.approx([100 * points["0"], 100 * points["0.05"]])
    assert "FGSM" in page.note.text()
    view.tabs.setCurrentWidget(page)
    save_screenshot(view, "evaluation_curve.png")
    # A result without a curve hides the page again.
    plain = ResultData.of(result)
    plain.data["extras"] = {}
    view.show_result(plain, run_id)
    assert not view.tabs.isTabVisible(index)


def test_a_metric_per_named_group_shows_as_a_table_page(qtbot, view):
    """Accuracy per dataset of a mixture (extras keyed by names, not numbers) is a table, not a curve."""
    from workbench.core.kinds.classification import EvalResult, accuracy_by_domain

    result = EvalResult(accuracy=0.7, ci95=0.02, episodes=4, ways=5, shots=1, queries=15, seed=1, domains="within",
                        per_episode_accuracy=np.array([0.9, 0.8, 0.5, 0.6], np.float32))
    result.extras = accuracy_by_domain(result.per_episode_accuracy, ["omniglot", "omniglot", "glyphs", "glyphs"])
    data = ResultData.of(result)
    assert not data.curves() and [b.title for b in data.breakdowns()] == ["Accuracy by domain"]
    view.show_result(data, "no-such-run")
    page = view.result_panel.breakdown
    index = view.tabs.indexOf(page)
    assert view.tabs.isTabVisible(index) and view.tabs.tabText(index) == "Accuracy by domain"
    cells = [[page.item(r, c).text() for c in range(3)] for r in range(page.rowCount())]
    assert [row[0] for row in cells] == ["glyphs", "omniglot"] and [row[2] for row in cells] == ["2", "2"]
    assert cells[1][1] == ACCURACY.format(0.85, result.extras["ci95_by_domain"]["omniglot"])
    view.tabs.setCurrentWidget(page)
    save_screenshot(view, "evaluation_breakdown.png")
    plain = ResultData.of(result)
    plain.data["extras"] = {}
    view.show_result(plain, "no-such-run")
    assert not view.tabs.isTabVisible(index)


def test_compared_runs_draw_their_curves_on_the_same_tasks_together(qtbot, view, capsys):
    from workbench import cli

    plain = gradient_run(view.store, "maml", "plain")
    robust = gradient_run(view.store, "adml", "robust")
    for run_id in (plain, robust):  # saved with their curves, at the settings the view will ask for
        assert cli.main(["eval", run_id, "--episodes", "6", "--seed", "7", "--adversarial", "0,0.05,0.2",
                         "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    view.refresh_runs()
    view.select_run(plain)
    view.episodes_spin.setValue(6)
    view.seed_spin.setValue(7)
    view.set_checked([plain, robust])
    with qtbot.waitSignal(view.comparison_finished, timeout=EVAL_TIMEOUT_MS):
        view.compare_checked()  # reuses the saved results: the same tasks, with their curves
    panel = view.compare_panel
    assert panel.curve_plot.isVisibleTo(panel)
    assert [run_id for run_id, _ in panel.compared_curves(plain)] == [plain, robust]
    lines = panel.curve_plot.getPlotItem().listDataItems()
    assert len(lines) == 2 and all(list(line.getData()[0]) == [0.0, 0.05, 0.2] for line in lines)
    assert {line.name() for line in lines} == {view._label(plain), view._label(robust)}
    assert "Accuracy by epsilon" in panel.note.text()
    view.tabs.setCurrentWidget(panel)
    save_screenshot(view, "evaluation_compare_curves.png")
    # Runs whose results carry no curve show no plot.
    panel.show_results([plain], [ResultData(None, {**panel.results[plain].data, "extras": {}},
                                            panel.results[plain].arrays)])
    assert not panel.curve_plot.isVisibleTo(panel)


def test_long_notes_and_result_names_never_widen_the_view(qtbot, view):
    """At 1280x720 the Evaluation tab has about 900 px beside the setup docks: a long confusion note or saved-result
    label must wrap or elide, not force a sideways scroll."""
    from PySide6.QtWidgets import QApplication

    view.show()
    for index in range(view.tabs.count()):
        view.tabs.setTabVisible(index, True)  # as when a result fills them
    view.tabs.setCurrentWidget(view.result_panel.confusion)
    before = view.minimumSizeHint().width()
    view.result_panel.confusion.note.setText("Rows: true class, columns: predicted class; " * 12)
    view.saved_combo.addItem("70.21% ± 2.73 · 5-way 1-shot, 1000 episodes, seed 12345, best checkpoint " * 3)
    view.dataset_combo.addItem("a dataset with a very long title " * 4)
    QApplication.processEvents()  # layouts recompute their hints on the next turn of the event loop
    assert view.result_panel.confusion.minimumSizeHint().width() <= max(before, 800)
    assert view.saved_combo.minimumSizeHint().width() <= 300 and view.dataset_combo.minimumSizeHint().width() <= 300


def test_a_kind_without_shots_is_asked_for_none_and_described_without_them(view):
    """Optimizee problems have no shots: the request leaves the field out (the kind refuses it) and the result's
    setting and saved-results line say nothing of shots."""
    from workbench.gui.evaluation.results import ResultData, describe_saved

    request = view._request("some-run", "learning-to-optimize")
    assert "shots" not in request and "ways" not in request
    assert view._request("some-run", "classification")["shots"] == view.shots_spin.value()
    entry = {"kind": "learning-to-optimize", "final_loss": 0.01, "ci95": 0.002, "episodes": 5, "seed": 7,
             "checkpoint": "best"}
    assert "None" not in describe_saved(entry) and "-shot" not in describe_saved(entry)
    setting = ResultData(None, entry).setting()
    assert "None" not in setting and setting.startswith("5 test tasks, seed 7")

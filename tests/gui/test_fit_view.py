"""The Fit view of few-shot regression: curves per inner-step count from a hand-made fit_history.npz in a run
folder, the time scrubber, live re-reads while a run trains, the baseline combo of regression runs, theming
through the window's signals, and export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PySide6.QtCore import QObject, Signal

from conftest import tiny_dataset_config
from workbench.core.config import ExperimentConfig
from workbench.core.runs import RunStore
from workbench.gui import fit_view
from workbench.gui.fit_view import FitView
from workbench.gui.theme import DARK, LIGHT

GRID = 50
COUNTS = 11


def regression_config(name: str) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"name": name, "kind": "regression", "dataset": {"name": "sine"},
                                       "algorithm": {"name": "maml", "recipe": "paper"}})


def write_history(folder, snapshots: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A fit history in the trainer's format, with recognisable predictions (snapshot s, count p: offset)."""
    x = np.linspace(-5, 5, GRID, dtype=np.float32)
    amplitude, phase = np.float32(2.0), np.float32(0.5)
    true_y = (amplitude * np.sin(x - phase)).astype(np.float32)
    predictions = np.stack([np.stack([true_y * (p / 10) + 0.1 * s + seed for p in range(COUNTS)])
                            for s in range(snapshots)]).astype(np.float32)
    history = {"steps": (np.arange(snapshots, dtype=np.int64) + 1) * 100, "x_grid": x, "true_y": true_y,
               "support_x": np.array([-3.0, 0.0, 2.5], np.float32),
               "support_y": (amplitude * np.sin(np.array([-3.0, 0.0, 2.5]) - phase)).astype(np.float32),
               "inner_steps": np.arange(COUNTS, dtype=np.int64), "predictions": predictions,
               "probe_mse": ((predictions - true_y) ** 2).mean(axis=2).astype(np.float32),
               "amplitude": amplitude, "phase": phase, "algorithm": np.array("maml")}
    tmp = folder / "fit_history.tmp.npz"
    np.savez(tmp, **history)
    os.replace(tmp, folder / fit_view.HISTORY_FILE)  # atomically, as the trainer does
    return history


def write_evaluation(run, mse: dict[str, float]) -> None:
    folder = run.path / "evaluations"
    folder.mkdir(exist_ok=True)
    data = {"kind": "regression", "mse": mse["10"], "ci95": 0.1, "mse_by_steps": mse,
            "ci95_by_steps": {key: 0.1 for key in mse}, "episodes": 50, "shots": 5, "queries": 10, "seed": 1,
            "steps": 10, "run": run.id, "dataset": "sine", "algorithm": "maml"}
    (folder / "k5-50tasks-seed1-q10.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def store():
    return RunStore()


@pytest.fixture
def view(qtbot, store):
    widget = FitView(store)
    qtbot.addWidget(widget)
    widget.resize(1100, 700)
    widget.show()
    return widget


def curve_y(view, count: int) -> np.ndarray:
    return view.prediction_curves()[count][1]


def test_explains_itself_until_a_regression_run_is_shown(view, store):
    assert view.showing_explanation
    assert "Train a regression run, or open one in the Runs tab" in view.explanation.text()
    classification = store.create(tiny_dataset_config(name="images"))
    view.show_run(classification.id)
    assert view.showing_explanation and "classification run" in view.explanation.text()
    empty = store.create(regression_config("no-fit-yet"))
    view.show_run(empty.id)
    assert view.showing_explanation and "no fit yet" in view.explanation.text()


def test_draws_the_chosen_step_counts_of_the_newest_snapshot(view, store):
    run = store.create(regression_config("sine-run"))
    history = write_history(run.path, snapshots=3)
    view.show_run(run.id)
    assert not view.showing_explanation
    assert sorted(view.prediction_curves()) == [0, 1, 10]  # the default highlights
    np.testing.assert_allclose(curve_y(view, 10), history["predictions"][2, 10])
    np.testing.assert_allclose(view.true_curve.getData()[1], history["true_y"])
    assert len(view.support_points.getData()[0]) == 3
    assert "step 300 (3/3)" in view.step_label.text() and "sine-run" in view.title.text()
    view.show_counts(None)
    assert sorted(view.prediction_curves()) == list(range(COUNTS))
    view.count_buttons[4].setChecked(False)
    assert 4 not in view.prediction_curves() and len(view.prediction_curves()) == COUNTS - 1
    np.testing.assert_allclose(view.probe_mse_curve.getData()[1], history["probe_mse"][2])


def test_scrubbing_shows_earlier_snapshots(qtbot, view, store):
    run = store.create(regression_config("sine-run"))
    history = write_history(run.path, snapshots=3)
    view.show_run(run)
    assert view.slider.maximum() == 2 and view.slider.value() == 2
    with qtbot.waitSignal(view.snapshot_changed, timeout=2000) as shown:
        view.slider.setValue(0)
    assert shown.args == [0] and "step 100 (1/3)" in view.step_label.text()
    np.testing.assert_allclose(curve_y(view, 1), history["predictions"][0, 1])
    assert not np.allclose(curve_y(view, 1), history["predictions"][2, 1])
    np.testing.assert_allclose(view.probe_mse_curve.getData()[1], history["probe_mse"][0])


def test_live_training_rereads_the_history(view, store, monkeypatch):
    monkeypatch.setattr(fit_view, "RELOAD_SECONDS", 0.0)
    run = store.create(regression_config("live"))
    view.on_training_started(7, {"run_id": run.id, "run_path": str(run.path)})
    assert view.showing_explanation and "no fit yet" in view.explanation.text()
    write_history(run.path, snapshots=1)
    view.on_training_records(8, {})  # another job's records are ignored
    assert view.showing_explanation
    view.on_training_records(7, {})
    assert not view.showing_explanation and view.slider.maximum() == 0
    write_history(run.path, snapshots=2)
    view.on_training_records(7, {})
    assert view.slider.maximum() == 1 and view.slider.value() == 1  # at the end: follows the newest
    view.slider.setValue(0)
    history = write_history(run.path, snapshots=3)
    view.on_training_records(7, {})
    assert view.slider.maximum() == 2 and view.slider.value() == 0  # moved by the user: stays there
    np.testing.assert_allclose(curve_y(view, 0), history["predictions"][0, 0])
    write_history(run.path, snapshots=4)
    view.on_training_finished(7, {"event": "finished"})
    assert view.slider.maximum() == 3 and view.live_job is None


def test_baseline_combo_lists_regression_runs_and_plots_their_evaluation(view, store):
    shown = store.create(regression_config("shown"))
    write_history(shown.path, snapshots=2)
    write_evaluation(shown, {"0": 3.0, "1": 1.5, "10": 0.4})
    evaluated = store.create(regression_config("pretrained"))
    write_evaluation(evaluated, {"0": 3.2, "1": 2.9, "10": 2.5})
    unevaluated = store.create(regression_config("never-evaluated"))
    store.create(tiny_dataset_config(name="images"))  # a classification run: no baseline
    view.refresh_runs()
    assert sorted(view.baseline_ids()) == sorted([shown.id, evaluated.id, unevaluated.id])
    view.show_run(shown.id)
    np.testing.assert_allclose(view.eval_curve.getData()[1], [3.0, 1.5, 0.4])
    np.testing.assert_allclose(view.eval_curve.getData()[0], [0, 1, 10])
    view.select_baseline(evaluated.id)
    np.testing.assert_allclose(view.baseline_curve.getData()[1], [3.2, 2.9, 2.5])
    assert "pretrained" in view.baseline_note.text() and "50 test tasks" in view.baseline_note.text()
    view.select_baseline(unevaluated.id)
    assert view.baseline_curve.getData()[0] is None or len(view.baseline_curve.getData()[0]) == 0
    assert "no saved evaluation" in view.baseline_note.text()
    later = store.create(regression_config("later"))
    view.refresh_runs()  # a new run appears; the choice is kept
    assert later.id in view.baseline_ids() and view.baseline_combo.currentData() == unevaluated.id


class FakeRunsView(QObject):
    open_run = Signal(str)


class FakeWindow(QObject):
    training_started = Signal(int, object)
    training_records = Signal(int, object)
    training_finished = Signal(int, object)
    theme_changed = Signal(object)
    run_store_changed = Signal()

    def __init__(self, store):
        super().__init__()
        self.store, self.theme, self.runs_view = store, LIGHT, FakeRunsView()


def test_for_window_follows_the_window(qtbot, store):
    window = FakeWindow(store)
    view = FitView.for_window(window)
    qtbot.addWidget(view)
    run = store.create(regression_config("opened"))
    history = write_history(run.path, snapshots=2)
    window.runs_view.open_run.emit(run.id)
    assert not view.showing_explanation
    np.testing.assert_allclose(curve_y(view, 10), history["predictions"][1, 10])
    window.run_store_changed.emit()
    assert view.baseline_ids() == [run.id]
    window.theme_changed.emit(DARK)
    assert view.theme is DARK
    assert view.fit_plot.backgroundBrush().color().name() == DARK.plot_background


def test_export_png_and_svg(view, store, tmp_path):
    run = store.create(regression_config("export"))
    write_history(run.path, snapshots=2)
    view.show_run(run.id)
    png = view.export(tmp_path / "fit.png")
    svg = view.export(tmp_path / "mse.svg", plot="mse")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in svg.read_text(encoding="utf-8")[:500]


def test_damaged_history_is_explained(view, store):
    run = store.create(regression_config("damaged"))
    history = write_history(run.path, snapshots=2)
    history["predictions"] = history["predictions"][:, :3]
    np.savez(run.path / fit_view.HISTORY_FILE, **history)
    view.show_run(run.id)
    assert view.showing_explanation and "'predictions' has shape [2, 3, 50]" in view.explanation.text()

"""The Evaluation tab: evaluating a saved run in the background, the confusion matrix and the images of a
clicked cell, comparing runs with a paired test, the shot sweep, and the headless helpers."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_dataset_config
from workbench.core.runs import RunStore
from workbench.core.training import Trainer
from workbench.gui.evaluation_view import EvaluationView, most_confused, paired_test, verdict

EVAL_TIMEOUT_MS = 60_000


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


def test_paired_test_and_verdict():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.6, 200)
    better = np.clip(base + 0.05 + rng.normal(0, 0.02, 200), 0, 1)
    diff, p = paired_test(better, base)
    assert diff == pytest.approx(0.05, abs=0.01) and p < 1e-6 and verdict(diff, p) == "better"
    diff, p = paired_test(base, better)
    assert verdict(diff, p) == "worse"
    noisy = base + rng.normal(0, 0.05, 200) - 0.0  # no systematic difference
    diff, p = paired_test(noisy - noisy.mean() + base.mean(), base)
    assert p > 0.05 and verdict(diff, p) == "same"
    assert paired_test(base, base) == (0.0, 1.0)
    with pytest.raises(ValueError):
        paired_test(base[:10], base[:11])


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

    # Click the off-diagonal cell with the most errors (or the diagonal if the model is perfect).
    sub = result.confusion[np.ix_(view._confusion_indexes, view._confusion_indexes)].copy()
    off = sub - np.diag(np.diag(sub))
    row, column = np.unravel_index(np.argmax(off), off.shape) if off.max() > 0 else (0, 0)
    true_name, pred_name = view.cell_classes(row, column)
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
    assert view.examples_grid.count() >= len(found["examples"])


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
    a = view._comparison_results[first]
    b = view._comparison_results[second]
    assert len(a.per_episode_accuracy) == len(b.per_episode_accuracy) == 10
    # Switching the baseline re-tests without evaluating again.
    with qtbot.waitSignal(view.comparison_finished, timeout=1_000):
        view.baseline_combo.setCurrentIndex(1 - view.baseline_combo.currentIndex())
    assert next(r for r in view.comparison if r["baseline"])["run"] == other["run"]


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
    with qtbot.waitSignal(view.task.cancelled, timeout=EVAL_TIMEOUT_MS):
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
        fresh.show_saved(0)
        assert fresh.result.accuracy == pytest.approx(original.accuracy)
        assert np.array_equal(fresh.result.confusion, original.confusion)
        assert fresh.confusion_table.rowCount() == len(original.confusion_classes)
        with qtbot.waitSignal(fresh.examples_shown, timeout=EVAL_TIMEOUT_MS) as shown:
            fresh.open_cell(0, 0)
        assert shown.args[0]["total"] == int(original.confusion[0, 0])
    finally:
        assert fresh.shutdown()

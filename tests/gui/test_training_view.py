"""The Training tab's curves: debiased EMA smoothing, growing arrays, stale records, saved runs, overlays,
export (CSV, PNG, SVG), labels that follow the run's metric (accuracy, MSE), ranges that hold still while a run
trains and a 100,000-step run that stays responsive."""

from __future__ import annotations

import csv
import math
import time

import numpy as np
import pytest

from workbench.gui.training_view import LIVE_HEADROOM, GrowingArray, TrainingView, debiased_ema, steady_range


def reference_ema(values, weight):
    """TensorBoard's smoothing, written as the plain loop it is."""
    out, last = [], 0.0
    for t, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight ** t))
    return np.array(out)


def payload(steps, loss=None, accuracy=None, val_steps=(), val_accuracy=(), val_ci95=(), total=None):
    steps = np.asarray(steps, dtype=np.float64)
    rng = np.random.default_rng(int(steps[0]) if len(steps) else 0)
    return {
        "steps": steps,
        "loss": np.asarray(loss if loss is not None else rng.random(len(steps)) + 1, dtype=np.float64),
        "accuracy": np.asarray(accuracy if accuracy is not None else rng.random(len(steps)), dtype=np.float64),
        "lr": np.full(len(steps), 1e-3),
        "extras": {},
        "val_steps": np.asarray(val_steps, dtype=np.float64),
        "val_accuracy": np.asarray(val_accuracy, dtype=np.float64),
        "val_ci95": np.asarray(val_ci95, dtype=np.float64),
        "events": [],
        "last": {"step": int(steps[-1]) if len(steps) else 0, "total_steps": total or 100, "steps_per_s": 12.5,
                 "eta_s": 30.0, "event": "step", "message": ""},
    }


@pytest.fixture
def view(qtbot):
    widget = TrainingView()
    qtbot.addWidget(widget)
    widget.resize(900, 600)
    widget.show()
    return widget


@pytest.mark.parametrize("weight", [0.0, 0.6, 0.95])
def test_debiased_ema_matches_tensorboard_and_continues_in_chunks(weight):
    values = np.random.default_rng(1).random(500) * 3
    full, _ = debiased_ema(values, weight)
    assert np.allclose(full, reference_ema(values, weight))
    first, state = debiased_ema(values[:123], weight)
    rest, _ = debiased_ema(values[123:], weight, state)
    assert np.allclose(np.concatenate([first, rest]), full)
    # Debiased: the first smoothed value is the first raw value, not pulled towards 0.
    assert math.isclose(full[0], values[0])


def test_ema_skips_non_finite_values():
    smoothed, _ = debiased_ema(np.array([1.0, np.nan, 3.0, np.inf]), 0.5)
    assert np.isfinite(smoothed).all()
    assert np.allclose(smoothed[:2], [1.0, 1.0])


def test_growing_array_keeps_everything():
    array = GrowingArray(capacity=4)
    for start in range(0, 100, 7):
        array.extend(np.arange(start, min(start + 7, 100)))
    assert np.array_equal(array.data, np.arange(100)) and array.data.dtype == np.float64


def test_records_update_curves_and_stale_jobs_are_ignored(view, qtbot):
    view.begin_job(7, "run", total_steps=100)
    assert view.append(7, payload(range(1, 11), val_steps=[10], val_accuracy=[0.6], val_ci95=[0.05]))
    assert view.append(7, payload(range(11, 21)))
    assert not view.append(6, payload(range(1, 50)))  # an old job's late records
    qtbot.waitUntil(lambda: view.loss_smooth.getData()[0] is not None, timeout=5_000)  # the throttled redraw
    assert np.array_equal(view.loss.x.data, np.arange(1, 21))
    assert len(view.loss.smoothed) == 20 and len(view.score.smoothed) == 20
    x, y = view.loss_smooth.getData()
    assert len(x) > 0 and np.isfinite(y).all()
    assert list(view.val_steps.data) == [10.0] and view.val_band.isVisible()
    assert "step 20 / 100" in view.progress.format() and "12.5 steps/s" in view.progress.format()
    assert "best validation accuracy 60.0%" in view.summary_label.text()


def test_smoothing_slider_recomputes_from_raw_data(view):
    view.begin_job(1)
    loss = np.random.default_rng(0).random(200)
    view.append(1, payload(range(1, 201), loss=loss))
    view.smoothing_slider.setValue(90)
    assert np.allclose(view.loss.smoothed.data, reference_ema(loss, 0.9))
    assert np.array_equal(view.loss.y.data, loss)  # raw data untouched
    view.smoothing_slider.setValue(0)
    assert np.allclose(view.loss.smoothed.data, loss)


def test_load_metrics_shows_a_saved_run(view):
    records = [{"step": s, "total_steps": 4, "loss": 1.0 / s, "accuracy": 0.2 * s, "event": "step"}
               for s in (1, 2, 3, 4)]
    records.insert(2, {"step": 2, "event": "validation", "val_accuracy": 0.5, "val_ci95": 0.1, "loss": 0.5})
    records.append({"step": 4, "event": "finished", "val_accuracy": 0.7, "message": "finished 4 steps"})
    view.load_metrics(records, title="Run x")
    assert np.array_equal(view.loss.x.data, [1, 2, 3, 4]) and np.allclose(view.score.y.data, [0.2, 0.4, 0.6, 0.8])
    assert list(view.val_steps.data) == [2.0]  # the final record repeats the last validation; not counted twice
    assert view.title_label.text() == "Run x" and view.job_id is None
    assert view.acc_plot.titleLabel.text == "Accuracy"  # records without "metric" are accuracy (old runs)
    assert not view.append(1, payload([5]))  # a saved run accepts no live records


def mse_records():
    """A regression run's metrics.jsonl: scores under "mse", the metric named in every record."""
    records = [{"step": s, "total_steps": 6, "loss": 1.0 / s, "mse": 2.0 / s, "metric": "mse", "event": "step"}
               for s in range(1, 7)]
    records.insert(3, {"step": 3, "event": "validation", "metric": "mse", "val_mse": 0.9, "val_ci95": 0.1})
    records.insert(7, {"step": 6, "event": "validation", "metric": "mse", "val_mse": 0.4, "val_ci95": 0.05})
    return records


def test_a_regression_run_is_labelled_mse_lower_is_better(view, tmp_path):
    view.load_metrics(mse_records(), title="Run sine")
    assert np.allclose(view.score.y.data, [2.0 / s for s in range(1, 7)])
    assert list(view.val_score.data) == [0.9, 0.4]
    assert view.acc_plot.titleLabel.text == "MSE (lower is better)"
    assert view.acc_plot.getAxis("left").labelText == "MSE"
    # The band is the MSE's CI, and the best validation is the lowest MSE, unscaled (not a percentage).
    upper, lower = view.val_upper.yData, view.val_lower.yData  # all points, not only those in view
    assert np.allclose(upper, [1.0, 0.45]) and np.allclose(lower, [0.8, 0.35])
    assert "best validation MSE 0.4 ± 0.05 at step 6" in view.summary_label.text()
    assert "%" not in view.summary_label.text()
    rows = list(csv.DictReader(view.export(tmp_path / "mse.csv").open(newline="")))
    assert {"mse", "mse_smoothed", "val_mse"} <= set(rows[0]) and "accuracy" not in rows[0]
    # Back to a classification run: the labels and the 0..1 range return.
    view.load_metrics([{"step": 1, "loss": 1.0, "accuracy": 0.5, "event": "step"}])
    assert view.acc_plot.titleLabel.text == "Accuracy"


def test_live_mse_records_relabel_the_plot(view):
    view.begin_job(2, "run", total_steps=10, metric="mse")
    assert view.acc_plot.titleLabel.text.startswith("MSE")
    live = payload(range(1, 4), accuracy=[3.0, 2.0, 1.0], val_steps=[3], val_accuracy=[1.5], val_ci95=[0.2])
    for old, new in (("accuracy", "mse"), ("val_accuracy", "val_mse")):
        live[new] = live.pop(old)
    live["metric"] = "mse"
    view.append(2, live)
    view.flush()
    assert np.allclose(view.score.y.data, [3.0, 2.0, 1.0]) and list(view.val_score.data) == [1.5]
    assert "train MSE" in view.summary_label.text() and "best validation MSE 1.5 ± 0.2" in view.summary_label.text()


def test_overlays_are_added_and_cleared(view):
    records = [{"step": s, "loss": 2.0 / s, "accuracy": 0.1 * s, "event": "step"} for s in range(1, 11)]
    records.append({"step": 10, "event": "validation", "val_accuracy": 0.8, "val_ci95": 0.02})
    view.add_overlay("baseline", records, pinned=True)
    view.add_overlay("other", records)
    assert view.overlay_names() == ["baseline", "other"]
    overlay = view._overlays[0]
    assert len(overlay["loss"].getData()[0]) == 10 and list(overlay["validation"].getData()[1]) == [0.8]
    items_before = len(view.acc_plot.listDataItems())
    view.clear_overlays()
    assert view.overlay_names() == [] and len(view.acc_plot.listDataItems()) == items_before - 4


def test_export_csv_png_and_svg(view, tmp_path):
    view.begin_job(3)
    view.append(3, payload(range(1, 6), loss=[5, 4, 3, 2, 1], accuracy=[0.1, 0.2, 0.3, 0.4, 0.5],
                           val_steps=[5], val_accuracy=[0.45], val_ci95=[0.05]))
    view.append(3, payload([6], loss=[0.5], accuracy=[0.6]))
    path = view.export(tmp_path / "curves.csv")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["loss"]) for r in rows] == [5, 4, 3, 2, 1, 0.5]
    assert float(rows[4]["val_accuracy"]) == 0.45 and float(rows[4]["val_ci95"]) == 0.05
    assert rows[0]["val_accuracy"] == "" and float(rows[0]["loss_smoothed"]) == 5.0
    assert {"accuracy", "lr", "accuracy_smoothed"} <= set(rows[0])
    png = view.export(tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = view.export(tmp_path / "curves.svg")
    assert "<svg" in svg.read_text(encoding="utf-8")[:2000]
    with pytest.raises(ValueError):
        view.export(tmp_path / "curves.gif")


def test_a_100000_step_run_stays_responsive(view, qtbot):
    view.begin_job(1, total_steps=100_000)
    chunk = 5_000
    for start in range(1, 100_001, chunk):
        view.append(1, payload(range(start, start + chunk), total=100_000))
    assert len(view.loss) == 100_000 and view.loss.x.data.dtype == np.float64
    # One more live update plus its redraw and a repaint, with all 100,000 points held.
    started = time.perf_counter()
    view.append(1, payload(range(100_001, 100_011), total=100_010))
    view.flush()
    view.plots.repaint()
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5, f"an update with 100k points took {elapsed:.3f}s"
    # Peak downsampling keeps what is drawn far smaller than the data once the view has its range.
    qtbot.waitUntil(lambda: len(view.loss_smooth.curve.getData()[0]) < 20_000, timeout=10_000)


def test_steady_range_holds_until_the_data_leave_or_shrink():
    assert steady_range((0, 100), (0, 80), 0.0, 0.25) is None  # inside and filling most of it: kept
    assert steady_range((-2, 102), (0, 120), 0.0, 0.25) == (0, 150)  # out on the right: headroom there only
    assert steady_range((-2, 102), (0, 120), 0.1, 0.25) == (-12, 162)  # padding on both sides
    assert steady_range((0, 1), (-1, 0.5), 0.0, 0.5) == (-1.75, 0.5)  # out below: headroom below
    assert steady_range((0, 100), (10, 40), 0.0, 0.25) == (10, 40)  # the data fill less than half: fitted again


def test_live_ranges_move_in_steps_and_fit_the_data_at_the_end(view, qtbot):
    """While a run trains, the axes (their ticks, labels and grid) change a few times, not at every redraw; the
    newest point is always in view; when the run ends the plots fit its curves."""
    view.begin_job(1, total_steps=1000)
    box = view.loss_plot.getViewBox()
    changes = []
    box.sigXRangeChanged.connect(lambda *_: changes.append(box.viewRange()[0]))
    updates = 0
    for start in range(1, 601, 3):
        view.append(1, payload(range(start, start + 3), loss=np.linspace(2, 1.9, 3) - start / 1000, total=1000))
        view.flush()
        view.plots.viewport().repaint()  # ranges follow the data when painted
        updates += 1
        assert box.viewRange()[0][1] >= start + 2 and box.viewRange()[1][0] <= view.loss.y.data.min()
    assert 3 <= len(changes) <= updates // 10
    last = payload([603], loss=[1.2], total=1000)
    last["events"] = [{"event": "finished", "step": 603, "message": ""}]
    view.append(1, last)
    view.plots.viewport().repaint()
    low, high = box.viewRange()[0]
    assert high < 603 * (1 + LIVE_HEADROOM / 2) and low < 1  # fitted, with pyqtgraph's small padding

"""The Sample weights view: explanation for algorithms without a learned weighting, the curve of a saved
Meta-Weight-Net run (read from its folder, as after a restart), the time scrubber, live reloads."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import tiny_dataset_config
from workbench.core.runs import RunStore
from workbench.core.training.trainer import Trainer
from workbench.gui.weights_view import WeightsView, read_history


def train(config) -> str:
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, RunStore())
        trainer.run_all()
        return trainer.run.id
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def mwn_run(use_synthetic_data) -> str:
    return train(tiny_dataset_config(
        algorithm={"name": "meta-weight-net", "hparams": {"hidden": 8, "num_classes": 5, "meta_per_class": 1,
                                                          "test_per_class": 2, "batch_size": 16,
                                                          "history_interval": 2, "weight_net_lr": 0.01}},
        training={"steps": 8, "val_interval": 4, "checkpoint_interval": 4}))


def noisy_config(algorithm: str, **hparams):
    """A tiny run of a weighting algorithm on the noisy-labels kind (snapshots at steps 1, 2 and 4)."""
    from workbench.core.config import ExperimentConfig

    data = tiny_dataset_config(training={"steps": 4, "val_interval": 2, "checkpoint_interval": 2}).to_dict()
    data["kind"] = "noisy-labels"
    data["algorithm"] = {"name": algorithm, "hparams": {"hidden": 8, "num_classes": 5, "meta_per_class": 1,
                                                        "test_per_class": 2, "batch_size": 16,
                                                        "history_interval": 2, **hparams}}
    return ExperimentConfig.from_dict(data)


def test_explains_itself_for_protonet(qtbot, use_synthetic_data):
    run_id = train(tiny_dataset_config())
    view = WeightsView(RunStore())
    qtbot.addWidget(view)
    assert view.showing_explanation  # nothing shown yet: explanation, never an empty plot
    view.show_run(run_id)
    assert view.showing_explanation
    text = view.explanation.text()
    assert "protonet" in text and "learns no sample weighting" in text and "Meta-Weight-Net" in text


def test_saved_run_curve_and_scrubber(qtbot, mwn_run, tmp_path):
    store = RunStore()
    history = read_history(store.get(mwn_run).path)
    assert history is not None and history["steps"].tolist() == [1, 2, 4, 6, 8]
    view = WeightsView(store)  # a fresh view, as after a restart: reads the run folder only
    qtbot.addWidget(view)
    view.resize(1000, 640)
    view.show()
    view.show_run(mwn_run)
    assert not view.showing_explanation
    assert "label noise" in view.title.text()  # the history describes its own setting; the view names none
    assert f"Run {mwn_run}" in view.title.text()  # unnamed: its id
    store.rename(mwn_run, "noisy baseline")
    view.show_run(mwn_run)
    assert "Run noisy baseline" in view.title.text()  # named: its name, as the other views show it
    assert view.slider.maximum() == 4 and view.slider.value() == 4
    x, y = view.curve_data()
    assert len(x) == history["curves"].shape[1]
    assert np.allclose(y, history["curves"][-1].astype(np.float32))
    assert "step 8" in view.step_label.text()
    assert view.strip.pixmap() is not None and not view.strip.pixmap().isNull()
    with qtbot.waitSignal(view.snapshot_changed, timeout=2000) as shown:
        view.slider.setValue(0)
    assert shown.args == [0] and "step 1 " in view.step_label.text()
    _, first = view.curve_data()
    assert np.allclose(first, history["curves"][0].astype(np.float32))
    assert not np.allclose(first, y)  # the weighting was learned: the replayed curve differs
    # No per-sample records in this history: no dots and no legend entries for them, the default axis label.
    assert view.sample_count() == 0 and not view.curve_legend.items
    assert view.curve_plot.getAxis("left").labelText == "learned weight"
    assert "Dots:" not in view.summary.text()
    out = os.environ.get("WEIGHTS_VIEW_PNG")
    if out:
        view.slider.setValue(view.slider.maximum())
        view.grab().save(out)


def test_per_sample_weights_are_drawn_against_loss_and_replayed(qtbot, use_synthetic_data):
    run_id = train(noisy_config("l2rw"))
    store = RunStore()
    history = read_history(store.get(run_id).path)
    finite = np.isfinite(history["sample_losses"].astype(np.float32)).sum(axis=1)
    # One batch of 16 at step 1 and at step 2, two batches (steps 3 and 4) at step 4: the rest is NaN padding.
    assert history["steps"].tolist() == [1, 2, 4] and finite.tolist() == [16, 16, 32]
    view = WeightsView(store)
    qtbot.addWidget(view)
    view.resize(1000, 640)
    view.show()
    view.show_run(run_id)
    assert view.slider.value() == 2 and view.sample_count() == 32
    axis = view.curve_plot.getAxis("left").labelText
    assert axis == str(history["weight_label"]) and axis != "learned weight"  # the history names its weights
    noisy = history["sample_noisy"][2][:32]
    assert len(view.noisy_samples.data) == int(noisy.sum()) and len(view.clean_samples.data) == int((~noisy).sum())
    x, y = view.noisy_samples.getData()
    assert np.allclose(np.sort(x), np.sort(history["sample_losses"][2][:32][noisy].astype(np.float32)))
    assert "Dots: 32 training samples" in view.summary.text()
    assert len(view.curve_legend.items) == 2
    with qtbot.waitSignal(view.snapshot_changed, timeout=2000):
        view.slider.setValue(0)
    assert view.sample_count() == 16 and "Dots: 16 " in view.summary.text()
    # The weight axis reaches the largest single weight (above the curve's bin means).
    top = float(np.nanmax(history["sample_weights"].astype(np.float32)))
    assert top > float(np.nanmax(history["curves"].astype(np.float32)))
    assert view.curve_plot.getViewBox().viewRange()[1][1] >= top
    out = os.environ.get("WEIGHTS_VIEW_PNG_SAMPLES")
    if out:
        view.slider.setValue(view.slider.maximum())
        view.grab().save(out)


def test_weight_label_of_a_fixed_weighting(qtbot, use_synthetic_data):
    run_id = train(noisy_config("focal-loss"))
    store = RunStore()
    history = read_history(store.get(run_id).path)
    view = WeightsView(store)
    qtbot.addWidget(view)
    view.resize(1000, 640)
    view.show()
    view.show_run(run_id)
    assert view.curve_plot.getAxis("left").labelText == str(history["weight_label"])
    assert str(history["caption"]) in view.title.text()
    assert view.sample_count() == 0  # a weight function of the loss: no per-sample records
    # A view that showed per-sample dots drops them and their legend for a history without them.
    history_with_dots = dict(history)
    count = len(history["steps"])
    history_with_dots.update(sample_losses=np.full((count, 4), 1.0, np.float16),
                             sample_weights=np.full((count, 4), 0.5, np.float16),
                             sample_noisy=np.array([[True, False, False, False]] * count))
    view.set_history(history_with_dots, "dots")
    assert view.sample_count() == 4 and len(view.noisy_samples.data) == 1 and len(view.curve_legend.items) == 2
    view.set_history(history, "no dots")
    assert view.sample_count() == 0 and not view.curve_legend.items
    out = os.environ.get("WEIGHTS_VIEW_PNG_FIXED")
    if out:
        view.grab().save(out)


def test_live_records_reload_the_history(qtbot, mwn_run, monkeypatch):
    from workbench.gui import weights_view

    monkeypatch.setattr(weights_view, "RELOAD_SECONDS", 0.0)
    store = RunStore()
    run = store.get(mwn_run)
    view = WeightsView(store)
    qtbot.addWidget(view)
    path = run.path / weights_view.HISTORY_FILE
    full = read_history(run.path)
    partial = {key: (value[:2] if key in ("steps", "curves", "hist_clean", "hist_noisy", "clean_mean", "noisy_mean",
                                          "test_accuracy", "thumb_weights", "thumb_losses") else value)
               for key, value in full.items()}
    np.savez(path, **partial)
    view.on_training_started(7, {"run_id": mwn_run, "run_path": str(run.path)})
    assert view.slider.maximum() == 1
    np.savez(path, **full)
    os.utime(path, (path.stat().st_atime, path.stat().st_mtime + 5))
    view.on_training_records(3, {})  # another job's records are ignored
    assert view.slider.maximum() == 1
    view.on_training_records(7, {})
    assert view.slider.maximum() == 4 and view.slider.value() == 4  # follows the newest snapshot


def constructed_history(val_accuracy) -> dict[str, np.ndarray]:
    """Four snapshots of a falling weight curve; clean losses near 0.5, noisy ones near 4.5."""
    grid = np.linspace(0.0, 10.0, 101, dtype=np.float32)
    curves = np.stack([np.exp(-grid * k) for k in (0.1, 0.5, 1.0, 1.5)]).astype(np.float16)
    hist_clean = np.zeros((4, 40), np.int32)
    hist_noisy = np.zeros((4, 40), np.int32)
    hist_clean[:, 2] = 60  # the bin [0.5, 0.75): centre 0.625
    hist_noisy[:, 18] = 40  # the bin [4.5, 4.75): centre 4.625
    return {"steps": np.array([1, 100, 200, 300]), "curves": curves, "loss_grid": grid, "hist_clean": hist_clean,
            "hist_noisy": hist_noisy, "clean_mean": np.array([0.9, 0.6, 0.5, 0.45]),
            "noisy_mean": np.array([0.9, 0.2, 0.05, 0.02]), "test_accuracy": np.array([0.1, 0.8, 0.9, 0.85]),
            "val_accuracy": np.asarray(val_accuracy, np.float64), "caption": np.str_("40% uniform label noise")}


def test_curve_markers_and_mean_weights_over_training_tell_the_story(qtbot, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    history = constructed_history([0.1, 0.82, 0.93, 0.88])
    np.savez(folder / "weight_history.npz", **history)
    view = WeightsView()
    qtbot.addWidget(view)
    view.resize(1100, 700)
    view.show_run(folder)
    assert not view.showing_explanation and view.slider.value() == 3
    # The curve is marked where the clean and the noisy samples sit, with the weight it gives them there.
    (clean_x,), (clean_y,) = view.clean_marker.getData()
    (noisy_x,), (noisy_y,) = view.noisy_marker.getData()
    assert clean_x == pytest.approx(0.625) and noisy_x == pytest.approx(4.625)
    assert clean_y == pytest.approx(np.exp(-1.5 * 0.625), abs=2e-3)
    assert noisy_y == pytest.approx(np.exp(-1.5 * 4.625), abs=2e-3)
    assert "weight 0.39" in view.clean_marker_text.toPlainText()
    assert "noisy labels" in view.noisy_marker_text.toPlainText()
    # Mean weights over training, with the shown snapshot and the best validation marked and the values written.
    steps, clean = view.clean_means.getData()
    assert steps.tolist() == [1, 100, 200, 300] and np.allclose(clean, history["clean_mean"])
    assert np.allclose(view.noisy_means.getData()[1], history["noisy_mean"])
    assert view.now_line.value() == 300 and view.best_line.isVisible() and view.best_line.value() == 200
    assert "93.0%" in view.best_line.label.toPlainText()
    assert "clean 0.450, noisy 0.020" in view.means_text.toPlainText()
    assert "At the best clean validation (step 200, 93.0%)" in view.summary.text()
    view.slider.setValue(1)
    assert view.now_line.value() == 100 and "clean 0.600, noisy 0.200" in view.means_text.toPlainText()
    (clean_x,), (clean_y,) = view.clean_marker.getData()
    assert clean_y == pytest.approx(np.exp(-0.5 * 0.625), abs=2e-3)
    out = os.environ.get("WEIGHTS_VIEW_PNG")
    if out:
        view.grab().save(out.replace(".png", "-markers.png"))


def test_a_history_without_validation_shows_no_best_line(qtbot, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    history = constructed_history([np.nan] * 4)
    history["hist_noisy"][:] = 0  # no noisy samples: no noisy marker
    np.savez(folder / "weight_history.npz", **history)
    view = WeightsView()
    qtbot.addWidget(view)
    view.show_run(folder)
    assert not view.best_line.isVisible() and "best clean validation" not in view.summary.text()
    assert view.noisy_marker.getData()[0].size == 0 and view.noisy_marker_text.toPlainText() == ""
    assert view.clean_marker.getData()[0].size == 1


def test_main_window_has_the_tab(make_window):
    window = make_window()
    view = window.view("Sample weights")
    assert isinstance(view, WeightsView) and view.showing_explanation

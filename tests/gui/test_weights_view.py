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
    out = os.environ.get("WEIGHTS_VIEW_PNG")
    if out:
        view.slider.setValue(view.slider.maximum())
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


def test_main_window_has_the_tab(make_window):
    window = make_window()
    view = window.view("Sample weights")
    assert isinstance(view, WeightsView) and view.showing_explanation

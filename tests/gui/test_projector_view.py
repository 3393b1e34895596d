"""The Embeddings tab: a run's saved probe history is projected and replayed, hovering a point names its class,
the scrubber changes the plot, a checkpoint can be embedded on demand, and exports write files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from conftest import tiny_dataset_config
from workbench.core.runs import RunStore
from workbench.core.training import Trainer
from workbench.gui.projector_view import ProjectorView

TIMEOUT_MS = 60_000


def train(store, steps: int = 9, val_interval: int = 3, **algorithm) -> str:
    config = tiny_dataset_config(training={"steps": steps, "val_interval": val_interval, "lr": 3e-3},
                                 **({"algorithm": algorithm} if algorithm else {}))
    trainer = Trainer(config, store)
    trainer.run_all()
    return trainer.run.id


@pytest.fixture
def view(qtbot, use_synthetic_data):
    widget = ProjectorView(RunStore())
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    yield widget
    assert widget.shutdown()


def test_history_scrubber_and_hover(qtbot, view, tmp_path):
    run_id = train(view.store)
    view.refresh_runs()
    view.select_run(run_id)
    with qtbot.waitSignal(view.frames_loaded, timeout=TIMEOUT_MS) as loaded:
        view.history_button.click()
    data = loaded.args[0]
    assert data["steps"] == [3, 6, 9]
    assert view.slider.isEnabled() and view.slider.value() == 2
    frame = view.current_frame()
    ways, shots, queries = 3, 1, 2
    assert list(np.bincount(frame["kind"])) == [ways * shots, ways * queries, ways]
    assert len(view.scatter["support"].data) == ways * shots and len(view.scatter["prototype"].data) == ways

    # The scrubber shows another snapshot.
    before = view.current_xy().copy()
    with qtbot.waitSignal(view.frame_shown, timeout=1_000):
        view.slider.setValue(0)
    assert view.frame_index == 0 and "step 3" in view.step_label.text()
    assert not np.allclose(before, view.current_xy())
    assert np.allclose(view.scatter["support"].data["x"], view.current_xy()[frame["kind"] == 0, 0])

    # Hovering a known query point names its class and prediction; far away hides the tooltip.
    qtbot.wait(50)
    query = int(np.flatnonzero(view.current_frame()["kind"] == 1)[0])
    view._on_mouse_moved(view.scene_position(query))
    assert view.hover_index is not None
    info = view.point_info(view.hover_index)
    assert info["class"] in view.hover_text and "predicted" in view.hover_text
    assert info["class"] == view.class_name(int(view.current_frame()["label"][view.hover_index]))
    assert view.hover_index == query or np.allclose(view.current_xy()[view.hover_index], view.current_xy()[query],
                                                    atol=1e-3)
    assert view.data["thumbs"].get(info["row"]) is not None

    # Exports.
    rows = list(csv.reader(open(view.export_csv(tmp_path / "points.csv"), encoding="utf-8")))
    assert rows[0][:3] == ["step", "kind", "class"] and len(rows) == 1 + len(view.current_xy())
    assert view.export_png(tmp_path / "plot.png").stat().st_size > 1000
    assert view.export_svg(tmp_path / "plot.svg").read_text(encoding="utf-8").lstrip().startswith("<")


def test_gradient_runs_switch_between_features_before_and_after_adapting(qtbot, view):
    run_id = train(view.store, steps=4, val_interval=2, name="maml",
                   hparams={"hidden": 8, "train_inner_steps": 1, "test_inner_steps": 2})
    view.refresh_runs()
    view.select_run(run_id)
    with qtbot.waitSignal(view.frames_loaded, timeout=TIMEOUT_MS):
        view.history_button.click()
    assert view.stage_combo.count() == 2 and view.stage_combo.isEnabled()
    after = view.current_xy().copy()
    view.stage_combo.setCurrentIndex(0)
    assert view.stage_combo.currentText() == "before adaptation"
    assert not np.allclose(after, view.current_xy())


def test_checkpoint_on_demand_and_tsne(qtbot, view):
    run_id = train(view.store, steps=3, val_interval=3)
    view.refresh_runs()
    view.select_run(run_id)
    with qtbot.waitSignal(view.frames_loaded, timeout=TIMEOUT_MS) as loaded:
        view.checkpoint_button.click()
    assert loaded.args[0]["source"] == "best checkpoint" and loaded.args[0]["steps"] == [3]
    pca = view.current_xy().copy()
    view.projection_combo.setCurrentText("t-SNE")  # PCA stands in until the worker's t-SNE arrives
    assert view.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not view.is_busy and bool(view._tsne), timeout=TIMEOUT_MS)
    assert view.current_xy().shape == pca.shape and not np.allclose(view.current_xy(), pca)
    assert np.allclose(view.scatter["query"].data["x"], view.current_xy()[view.current_frame()["kind"] == 1, 0])

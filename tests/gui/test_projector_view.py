"""The Embeddings tab: a run's saved probe history is projected and replayed, hovering a point names its class,
the scrubber changes the plot, a checkpoint can be embedded on demand, exports write files, the view follows a
run live while it trains, and a t-SNE runs in a child process that Cancel (and closing) terminates."""

from __future__ import annotations

import csv
import multiprocessing
import time

import numpy as np
import pytest
from PySide6.QtCore import Qt

from conftest import tiny_dataset_config
from workbench.core import probes
from workbench.core.runs import RunStore
from workbench.core.training import Trainer
from workbench.gui.projector_view import RELOAD_SECONDS, RELOAD_SHARE, ProjectorView, project_frames

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
    messages = []
    view.layout_task.progress.connect(lambda done, total, message: messages.append(message))
    qtbot.waitUntil(lambda: not view.is_busy and bool(view._layouts), timeout=TIMEOUT_MS)
    assert view.current_xy().shape == pca.shape and not np.allclose(view.current_xy(), pca)
    assert np.allclose(view.scatter["query"].data["x"], view.current_xy()[view.current_frame()["kind"] == 1, 0])
    assert any("iteration" in message for message in messages)  # progress from the child process
    assert view.projection_combo.currentText() == "t-SNE" and not multiprocessing.active_children()


def big_frame_data(points: int = 4000, dims: int = 32, ways: int = 5) -> dict:
    """What load_history gives for one snapshot, with enough points that a t-SNE takes a while."""
    rng = np.random.default_rng(0)
    support_y = np.arange(points) % ways
    snapshot = {"support": rng.normal(size=(points, dims)).astype(np.float16),
                "query": rng.normal(size=(ways, dims)).astype(np.float16),
                "prototypes": rng.normal(size=(ways, dims)).astype(np.float16),
                "query_pred": np.arange(ways, dtype=np.int16)}
    meta = {"support_y": support_y.astype(np.int16), "query_y": np.arange(ways, dtype=np.int16),
            "support_row": np.full(points, -1), "query_row": np.full(ways, -1)}
    return {"run": "big", "steps": [1], "stages": project_frames([snapshot], meta), "info": {"ways": ways},
            "thumbs": {}, "source": "history"}


def start_tsne(qtbot, view) -> list:
    """Choose t-SNE and wait until its child process computes (past its start-up); returns the children."""
    view.projection_combo.setCurrentText("t-SNE")
    qtbot.waitUntil(lambda: any(word in view.status_label.text() for word in ("neighbours", "iteration")),
                    timeout=TIMEOUT_MS)
    children = multiprocessing.active_children()
    assert [child.name for child in children] == ["workbench-t-SNE"]
    return children


def test_cancel_terminates_a_running_tsne_and_closing_ends_it_too(qtbot, view):
    view._on_loaded(big_frame_data())
    children = start_tsne(qtbot, view)
    assert view.cancel_button.isEnabled() and view.progress_bar.maximum() == probes.TSNE_ITERATIONS
    with qtbot.waitSignal(view.layout_task.cancelled, timeout=2_000):
        view.cancel_button.click()
    qtbot.waitUntil(lambda: not any(child.is_alive() for child in children), timeout=1_000)
    assert view.projection_combo.currentText() == "PCA" and not view._layouts and not view.is_busy
    assert "cancelled" in view.status_label.text()

    # Closing the view while a t-SNE runs ends the process and joins the thread at once.
    children = start_tsne(qtbot, view)
    began = time.monotonic()
    assert view.shutdown()
    assert time.monotonic() - began < 2.0 and not any(child.is_alive() for child in children)


def test_umap_is_listed_and_says_why_it_is_unavailable(view):
    item = view.projection_combo.model().item(2)
    tip = view.projection_combo.itemData(2, Qt.ItemDataRole.ToolTipRole)
    if probes.umap_available():
        assert item.isEnabled() and "UMAP" in tip
    else:
        assert not item.isEnabled() and "umap-learn" in tip and "not installed" in view.projection_combo.itemText(2)


def test_the_view_follows_a_training_run_live(qtbot, make_window, gui, workbench_home):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=100_000, val_interval=5, val_episodes=1)
    view = window.projector_view
    loads = []  # (snapshots, training still running) per load
    view.frames_loaded.connect(lambda data: loads.append((len(data["steps"]), window.controller.is_running)))
    began = time.monotonic()
    window.start_training()
    qtbot.waitUntil(lambda: window.controller.last_run_id is not None and
                    view.run_combo.currentData() == window.controller.last_run_id, timeout=gui.TRAIN_TIMEOUT_MS)
    run_id = view.run_combo.currentData()
    assert "every 5 steps" in view.status_label.text()

    # Behind the Training tab (Run shows it) the view reads no snapshots; shown, it catches up.
    assert window.tabs.currentWidget().title == "Training" and not view.isVisible()
    snapshots = RunStore(workbench_home).get(run_id).path / probes.PROBE_FILE
    qtbot.waitUntil(snapshots.is_file, timeout=gui.TRAIN_TIMEOUT_MS)
    with qtbot.waitSignal(window.training_records, timeout=gui.TRAIN_TIMEOUT_MS):
        pass  # records after the snapshot: the view checks for it
    assert view._live_stale and not loads and not view.live_task.is_running and view.data is None
    window.show_view("Embeddings")

    # Frames arrive while training runs, the scrubber grows and stays on the newest.
    qtbot.waitUntil(lambda: len({n for n, running in loads if running}) >= 2, timeout=gui.TRAIN_TIMEOUT_MS)
    assert window.controller.is_running
    counts = [n for n, _ in loads]
    assert counts == sorted(counts) and counts[-1] > counts[0] >= 1
    assert view.slider.maximum() == len(view.data["steps"]) - 1 == view.slider.value()
    assert view.data["run"] == run_id and view.data["thumbs"]
    window.grab().save(str(workbench_home / "embeddings_live.png"))

    # Moved back, the scrubber stays on its step while new frames arrive; to the end, it follows again.
    view.slider.setValue(0)
    shown_step, seen = view.data["steps"][0], len(loads)
    qtbot.waitUntil(lambda: len(loads) > seen, timeout=gui.TRAIN_TIMEOUT_MS)
    assert view.data["steps"][view.slider.value()] == shown_step and view.slider.value() < view.slider.maximum()
    view.slider.setValue(view.slider.maximum())
    seen = len(loads)
    qtbot.waitUntil(lambda: len(loads) > seen, timeout=gui.TRAIN_TIMEOUT_MS)
    assert view.slider.value() == view.slider.maximum()

    # Reads while training are throttled to about one a second.
    assert sum(running for _, running in loads) <= 1 + (time.monotonic() - began) / RELOAD_SECONDS

    # After the run ends the view holds every snapshot it saved.
    with qtbot.waitSignal(window.training_finished, timeout=gui.TRAIN_TIMEOUT_MS):
        window.stop_training()
    qtbot.waitUntil(lambda: view.live_run_id is None and not view.live_task.is_running, timeout=10_000)
    history = probes.ProbeHistory.load(RunStore(workbench_home).get(run_id).path)
    assert view.data["steps"] == history.steps


def test_slow_live_reads_are_spaced_out(view):
    """A re-read of a growing history that took long waits longer before the next one (it holds the GIL the
    training thread needs); the first read, which also loads the images, does not count."""
    view._last_live_check = time.monotonic() - 0.5
    view._on_live_loaded(big_frame_data())  # nothing shown yet: a first read
    assert view._reload_seconds == RELOAD_SECONDS
    view._on_loaded(big_frame_data())
    view._last_live_check = time.monotonic() - 0.5  # a re-read of the run shown that took half a second
    view._on_live_loaded(big_frame_data())
    assert view._reload_seconds >= 0.5 / RELOAD_SHARE > RELOAD_SECONDS


def test_a_live_reload_projects_only_new_snapshots_and_matches_a_full_load(use_synthetic_data, monkeypatch):
    from workbench.gui import projector_view

    store = RunStore()
    run_id = train(store)  # snapshots at steps 3, 6 and 9
    path = store.get(run_id).path / probes.PROBE_FILE
    full = probes.ProbeHistory.load(path)
    assert full.steps == [3, 6, 9]
    first = probes.ProbeHistory(path)
    first.info, first.meta = dict(full.info, steps=full.steps[:2]), full.meta
    first.snapshots = full.snapshots[:2]
    first.save()
    progress = lambda *args: None  # noqa: E731
    earlier = projector_view.load_history(progress, store, run_id)
    full.save()  # the run went on: one more snapshot
    projected = []
    real_pca = probes.pca_2d
    monkeypatch.setattr(probes, "pca_2d", lambda *a: projected.append(1) or real_pca(*a))
    grown = projector_view.load_history(progress, store, run_id, earlier)
    stages = [prefix for prefix in projector_view.STAGES if prefix + "support" in full.snapshots[-1]]
    assert grown["steps"] == [3, 6, 9] and len(projected) == len(stages)  # one new frame per stage
    monkeypatch.undo()
    fresh = projector_view.load_history(progress, store, run_id)
    for prefix in stages:
        for mine, theirs in zip(grown["stages"][prefix], fresh["stages"][prefix]):
            assert np.allclose(mine["xy"], theirs["xy"], atol=1e-5)

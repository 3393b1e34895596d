"""The Mechanism view: inspection records of all four plot types from a hand-made inspections.npz in a run folder
(record list, what each panel draws, the time scrubber and its keys), live re-reads of a training run's file,
the window's signals, export, the explanation of what feeds it, and a real Meta-SGD training's alpha histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage

from conftest import tiny_dataset_config
from workbench.core import catalog
from workbench.core.inspection import InspectionSpec, compact
from workbench.core.runs import RunStore
from workbench.core.snapshots import INSPECTION_FILE, InspectionHistory, read_inspections, write_inspections
from workbench.core.training.trainer import Trainer
from workbench.gui import inspection_view
from workbench.gui.inspection_view import InspectionView
from workbench.gui.theme import DARK, LIGHT

RATES = InspectionSpec("rates", "Learned rates", "layer_histograms", "Rates per layer (a test paper).",
                       x_label="rate", y_label="weights")
GATES = InspectionSpec("gates", "Gates per inner step", "curves", "Input and forget gates.",
                       x_label="inner step", y_label="gate", x_key="step")
ATTENTION = InspectionSpec("attention", "Attention", "heatmap", "Attention of queries to supports.",
                           x_label="support", y_label="query")
IMAGES = InspectionSpec("images", "Distilled images", "image_grid", "Images learned per class.")
SPECS = (RATES, GATES, ATTENTION, IMAGES)
LAYERS = ("conv1", "conv2", "head")
SHAPE = (4, 6)  # attention rows, columns
THUMBS = 5


def raw_record(snapshot: int) -> dict[str, dict[str, np.ndarray]]:
    """Recognisable records: every value moves with the snapshot."""
    rng = np.random.default_rng(snapshot)
    steps = np.arange(5, dtype=np.float32)
    return {
        "rates": {layer: rng.normal(0.01 * (snapshot + 1), 0.002, size=50 * (i + 1)) for i, layer in enumerate(LAYERS)},
        "gates": {"step": steps, "input": steps * 0.1 + snapshot, "forget": 1.0 - steps * 0.05 * (snapshot + 1)},
        "attention": {"values": rng.random(SHAPE) + snapshot, "rows": np.array([f"q{i}" for i in range(SHAPE[0])]),
                      "columns": np.array([f"s{j}" for j in range(SHAPE[1])]),
                      "row_images": rng.random((SHAPE[0], 8, 8)), "column_images": rng.random((SHAPE[1], 8, 8))},
        "images": {"images": np.stack([np.full((8, 8), (i + snapshot) / 10) for i in range(THUMBS)]),
                   "labels": np.array([f"class {i}" for i in range(THUMBS)])},
    }


def history(snapshots: int) -> InspectionHistory:
    records = [{spec.name: compact(spec, raw_record(s)[spec.name]) for spec in SPECS} for s in range(snapshots)]
    return InspectionHistory(list(SPECS), [100 * (s + 1) for s in range(snapshots)], records, "stub")


def conv1_mean(snapshot: int) -> str:
    """The mean of conv1's rates at a snapshot as a title writes it."""
    return f"{raw_record(snapshot)['rates']['conv1'].mean():.3g}"


def write(folder, snapshots: int) -> None:
    write_inspections(folder / INSPECTION_FILE, history(snapshots))  # atomically, as the trainer does


@pytest.fixture
def store():
    return RunStore()


@pytest.fixture
def view(qtbot, store):
    widget = InspectionView(store)
    qtbot.addWidget(widget)
    widget.resize(1280, 720)
    widget.show()
    return widget


@pytest.fixture
def shown(view, store):
    """A run with three snapshots of all four plot types, opened in the view."""
    run = store.create(tiny_dataset_config(name="mechanism"))
    write(run.path, 3)
    view.refresh_runs()
    view.show_run(run.id)
    return run


def test_explains_what_feeds_it_until_a_run_with_records_is_shown(view, store):
    assert view.showing_explanation and not view.export_button.isEnabled()
    plain = store.create(tiny_dataset_config(name="no-records"))  # its algorithm declares no records
    view.refresh_runs()
    assert view.run_folders() == []  # only runs with records are offered
    view.show_run(plain.id)
    text = view.explanation.text()
    assert view.showing_explanation and "which declares no inspection records" in text and "no-records" in text
    feeders = catalog.feeders("inspection")["algorithms"]
    assert feeders and all(title in text for title in feeders)
    with_records = store.create(tiny_dataset_config(name="with-records"))
    write(with_records.path, 1)
    view.refresh_runs()
    assert str(with_records.path) in view.run_folders() and str(plain.path) in view.run_folders()  # + the shown
    (plain.path / INSPECTION_FILE).write_bytes(b"not an npz")  # damaged: said, never a crash
    view.show_run(plain.id)
    assert view.showing_explanation and "cannot be read" in view.explanation.text()


def test_lists_the_records_and_draws_each_plot_type(view, shown):
    assert not view.showing_explanation and view.export_button.isEnabled()
    assert view.record_titles() == [spec.title for spec in SPECS]
    assert view.run_combo.currentData() == str(shown.path) and "mechanism" in view.run_combo.currentText()
    drawn = {}
    for spec in SPECS:
        view.select_record(spec.name)
        panel = view.current_panel()
        assert panel is view.panels[spec.plot] and view.description.text() == spec.help
        drawn[spec.plot] = panel.drawn_count()
    assert drawn == {"layer_histograms": len(LAYERS), "curves": 2, "heatmap": 1, "image_grid": THUMBS}
    histograms = view.panels["layer_histograms"]
    assert list(histograms.plots) == list(LAYERS)
    assert f"mean {conv1_mean(2)} " in histograms.plots["conv1"].titleLabel.text
    heatmap = view.panels["heatmap"]
    np.testing.assert_allclose(heatmap.image.image, raw_record(2)["attention"]["values"].T, rtol=1e-6)
    assert heatmap.plot.getAxis("bottom")._tickLevels[0][0][1] == "s0"  # the columns' names
    assert heatmap.thumbnail_count() == SHAPE[0] + SHAPE[1]  # a thumbnail beside each row, above each column
    rects = [item.mapRectToView(item.boundingRect()) for item in heatmap.thumbnails]
    assert all(rect.right() < 0 < rect.bottom() for rect in rects[:SHAPE[0]])  # left of the matrix
    assert all(rect.bottom() < 0 < rect.right() for rect in rects[SHAPE[0]:])  # above it
    view_range = heatmap.plot.getPlotItem().vb.viewRange()
    assert view_range[0][0] <= -1 and view_range[1][0] <= -1  # and in view
    assert [cell.findChildren(type(view.status))[1].text() for cell in view.panels["image_grid"].cells][:2] == \
        ["class 0", "class 1"]


def test_the_scrubber_replays_the_snapshots_and_follows_the_keys(qtbot, view, shown):
    view.select_record("gates")
    curves = view.panels["curves"]
    assert view.slider.maximum() == 2 and view.slider.value() == 2 and "step 300 (3/3)" in view.step_label.text()
    np.testing.assert_allclose(curves.curve_data("input")[1], raw_record(2)["gates"]["input"])
    with qtbot.waitSignal(view.snapshot_changed, timeout=2000) as changed:
        view.slider.setValue(0)
    assert changed.args == [0] and "step 100 (1/3)" in view.step_label.text()
    np.testing.assert_allclose(curves.curve_data("input")[1], raw_record(0)["gates"]["input"])
    view.select_record("rates")  # another record keeps the time chosen
    assert f"mean {conv1_mean(0)} " in view.panels["layer_histograms"].plots["conv1"].titleLabel.text
    view.activateWindow()
    view.record_list.setFocus()
    qtbot.waitUntil(view.record_list.hasFocus)
    qtbot.keyClick(view.record_list, Qt.Key.Key_Right)
    assert view.slider.value() == 1
    assert f"mean {conv1_mean(1)} " in view.panels["layer_histograms"].plots["conv1"].titleLabel.text
    qtbot.keyClick(view.record_list, Qt.Key.Key_Left)
    qtbot.keyClick(view.record_list, Qt.Key.Key_Left)  # stops at the first snapshot
    assert view.slider.value() == 0


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


@pytest.fixture
def window_view(qtbot, store):
    window = FakeWindow(store)
    view = InspectionView.for_window(window)
    qtbot.addWidget(view)
    view.resize(1280, 720)
    view.show()
    return window, view


def test_follows_the_live_run_and_stays_at_the_newest_snapshot(qtbot, window_view, store, monkeypatch):
    monkeypatch.setattr(inspection_view, "RELOAD_SECONDS", 0.02)
    window, view = window_view
    run = store.create(tiny_dataset_config(name="live", algorithm={"name": "meta-sgd"}))  # declares records
    window.training_started.emit(7, {"run_id": run.id, "run_path": str(run.path)})
    assert view.showing_explanation and "no inspection records yet" in view.explanation.text()
    assert view.run_folders() == [str(run.path)] and "(training)" in view.run_combo.currentText()
    write(run.path, 3)
    qtbot.waitUntil(lambda: not view.showing_explanation and view.slider.maximum() == 2, timeout=5000)
    view.select_record("gates")
    write(run.path, 4)  # a 4th validation
    qtbot.waitUntil(lambda: view.slider.maximum() == 3, timeout=5000)
    assert view.slider.value() == 3 and "step 400 (4/4)" in view.step_label.text()
    np.testing.assert_allclose(view.panels["curves"].curve_data("input")[1], raw_record(3)["gates"]["input"])
    view.slider.setValue(1)  # dragged back: stays there while new snapshots arrive
    write(run.path, 5)
    qtbot.waitUntil(lambda: view.slider.maximum() == 4, timeout=5000)
    assert view.slider.value() == 1 and view.current_spec().name == "gates"
    window.training_finished.emit(7, {"event": "finished"})
    assert view.live_job is None and not view._timer.isActive() and "(training)" not in view.run_combo.currentText()


def test_opens_runs_from_the_runs_view_follows_the_theme_and_exports(window_view, store, tmp_path):
    window, view = window_view
    run = store.create(tiny_dataset_config(name="opened"))
    write(run.path, 2)
    window.run_store_changed.emit()
    assert view.run_folders() == [str(run.path)]
    window.runs_view.open_run.emit(run.id)
    assert not view.showing_explanation and view.slider.maximum() == 1
    window.theme_changed.emit(DARK)
    assert view.panels["curves"].plot.backgroundBrush().color().name() == DARK.plot_background
    for spec in SPECS:
        view.select_record(spec.name)
        path = view.export(tmp_path / f"{spec.name}.png")
        assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 1000
    # The image grid's PNG holds its thumbnails, not the empty rest of the scroll area below them.
    grid = view.panels["image_grid"]
    exported = QImage(str(tmp_path / f"{IMAGES.name}.png"))
    assert grid.thumb < exported.height() == grid.grid.sizeHint().height() < grid.grid_widget.height()


def test_a_real_training_feeds_the_alpha_histograms(qtbot, view, store, use_synthetic_data, one_torch_thread):
    config = tiny_dataset_config(name="learned-rates", algorithm={"name": "meta-sgd", "hparams": {"hidden": 8}},
                                 training={"steps": 4, "val_interval": 2, "checkpoint_interval": 4})
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, store)
        assert trainer.run_all().event == "finished"
    finally:
        torch.set_num_threads(threads)
    saved = read_inspections(trainer.run.path / INSPECTION_FILE)
    view.refresh_runs()
    assert str(trainer.run.path) in view.run_folders()
    view.show_run(trainer.run.id)
    assert view.record_titles() == [spec.title for spec in saved.specs] and view.slider.maximum() == 1
    panel = view.current_panel()
    assert panel is view.panels["layer_histograms"]
    layers = list(panel.plots)
    assert len(layers) > 4 and panel.drawn_count() == len(layers)
    assert all("mean" in plot.titleLabel.text for plot in panel.plots.values())


def test_long_heatmap_labels_are_elided_on_the_axis(qtbot):
    from workbench.gui.inspection_plots import MAX_TICK_CHARACTERS, HeatmapPlot

    panel = HeatmapPlot()
    qtbot.addWidget(panel)
    long_name = "Alphabet_of_the_Magi/character05"
    record = compact(ATTENTION, {"values": np.eye(2), "columns": np.array([long_name, "b"]),
                                 "rows": np.array(["q0", "q1"])})
    panel.set_history(ATTENTION, [record])
    panel.show_snapshot(0)
    panel.resize(1200, 500)
    panel.show()
    qtbot.waitExposed(panel)
    ticks = [text for _, text in panel.plot.getAxis("bottom")._tickLevels[0]]
    assert ticks[0].endswith("…") and len(ticks[0]) == MAX_TICK_CHARACTERS and ticks[1] == "b"
    many = compact(ATTENTION, {"values": np.ones((2, 20)), "columns": np.array([long_name] * 20)})
    panel.set_history(ATTENTION, [many])
    panel.show_snapshot(0)
    panel.resize(400, 300)  # twenty columns in a narrow panel: a few characters each
    qtbot.waitUntil(lambda: len(panel.plot.getAxis("bottom")._tickLevels[0][0][1]) < MAX_TICK_CHARACTERS)


def test_row_labels_have_room_from_the_first_draw(qtbot):
    """pyqtgraph widens an axis to its labels only after painting it once and drops what does not fit until then;
    the heatmap sizes its left axis to the longest row label itself."""
    from PySide6.QtGui import QFont, QFontMetrics

    from workbench.gui.inspection_plots import HeatmapPlot

    panel = HeatmapPlot()
    qtbot.addWidget(panel)
    rows = np.array(["u representation", "b: W1"])
    panel.set_history(ATTENTION, [compact(ATTENTION, {"values": np.eye(2), "rows": rows})])
    panel.show_snapshot(0)
    axis = panel.plot.getAxis("left")
    assert not axis.style["autoExpandTextSpace"]
    shown = [text for _, text in axis._tickLevels[0]]
    assert shown[0].startswith("u represent") and shown[1] == "b: W1"
    assert axis.style["tickTextWidth"] >= max(QFontMetrics(QFont()).horizontalAdvance(text) for text in shown)
    panel.set_history(ATTENTION, [compact(ATTENTION, {"values": np.eye(2)})])  # unnamed rows: numbers, auto width
    panel.show_snapshot(0)
    assert axis.style["autoExpandTextSpace"]


def test_long_record_titles_wrap_instead_of_scrolling_sideways(qtbot, view, store):
    long_spec = InspectionSpec("attention", "Queries against the prototypes made from class descriptors", "heatmap",
                               "help")
    run = store.create(tiny_dataset_config(name="long-title"))
    records = [{"attention": compact(long_spec, raw_record(0)["attention"])}]
    write_inspections(run.path / INSPECTION_FILE, InspectionHistory([long_spec], [10], records, "stub"))
    view.refresh_runs()
    view.show_run(run.id)
    qtbot.waitUntil(lambda: view.record_titles() == [long_spec.title])
    item = view.record_list.item(0)
    assert view.record_list.visualItemRect(item).right() <= view.record_list.viewport().width()
    assert view.record_list.visualItemRect(item).height() > view.record_list.fontMetrics().height() * 1.5  # wrapped

"""The "Try a task" page of kinds whose try mode is a race (learning to optimize): pick a trained run, a problem and a
seed, and watch the run's learned optimizer race the hand-made ones, loss against step on a log scale, drawn live.

The race itself is the kind's (``race_choices`` and ``race_on``); it runs in a background thread that keeps the
curves so far in a :class:`RaceBuffer` and reports progress (throttled by BackgroundTask), and each report redraws
from the buffer."""

from __future__ import annotations

import math
import threading

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from workbench.gui.background import BackgroundTask
from workbench.gui.fit_view import themed_legend
from workbench.gui.inspection_plots import series_pens, theme_plot_item
from workbench.gui.theme import LIGHT, Theme
from workbench.gui.view_registry import register_view

CAPABILITY = "try_race"
MODE = CAPABILITY.removeprefix("try_")  # the kinds' try_task this page serves


class RaceBuffer:
    """The race so far, written by the worker thread and read by the GUI thread."""

    def __init__(self, steps: int):
        self._lock = threading.Lock()
        self.steps = steps
        self.title = ""
        self.names: list[str] = []
        self.labels: dict[str, str] = {}
        self._losses: dict[str, list[float]] = {}

    def begin(self, title: str, labels: dict[str, str]) -> None:
        with self._lock:
            self.title, self.labels = title, dict(labels)
            self.names = list(labels)
            self._losses = {name: [] for name in labels}

    def add(self, losses: dict[str, float]) -> None:
        with self._lock:
            for name, value in losses.items():
                self._losses[name].append(value)

    def curves(self) -> dict[str, np.ndarray]:
        with self._lock:
            return {name: np.asarray(values, dtype=float) for name, values in self._losses.items()}


def run_race(progress, run, choice: str, seed: int, steps: int, buffer: RaceBuffer) -> dict[str, np.ndarray]:
    """Worker: load the run's optimizer and data, then race step by step into ``buffer``."""
    from workbench.core.data import load_dataset
    from workbench.core.kinds import get_kind
    from workbench.core.runs import load_model

    progress(0, steps, "loading the trained optimizer")
    loaded = load_model(run)
    config = run.config
    kind = get_kind(config.kind, config.task)
    dataset = load_dataset(config.dataset, progress)
    title, labels, rows = kind.race_on(loaded.algorithm, dataset, choice, seed, steps, progress)
    buffer.begin(title, labels)
    for t, losses in rows:
        buffer.add(losses)
        progress(t, steps, f"step {t}/{steps}")
    return buffer.curves()


@register_view
class TryRaceView(QWidget):
    """Run, problem and seed choosers, a Race / Stop button pair and the live race plot."""

    view_title = "Try a task"
    view_capability = CAPABILITY
    view_order = 30  # the other Try pages' tab

    race_finished = Signal(object)  # the curves {name: losses}, or None when stopped or failed
    status_message = Signal(str)

    def __init__(self, store=None, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.theme = theme
        self.buffer: RaceBuffer | None = None
        self.plot_curves: dict[str, pg.PlotDataItem] = {}
        self.worker = BackgroundTask(self, progress=self._on_progress, finished=self._on_finished,
                                     failed=self._on_failed, cancelled=self._on_cancelled)
        self._build()
        self.apply_theme(theme)
        self.refresh_models()

    @classmethod
    def for_window(cls, window) -> "TryRaceView":
        view = cls(getattr(window, "store", None), getattr(window, "theme", LIGHT))
        window.theme_changed.connect(view.apply_theme)
        window.run_store_changed.connect(view.refresh_models)
        window.training_finished.connect(lambda *_: view.refresh_models())
        return view

    # --- building ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The trained run whose learned optimizer races")
        self.model_combo.currentIndexChanged.connect(self._fill_choices)
        self.problem_combo = QComboBox()
        self.problem_combo.setToolTip("The optimizee problem to race on (a test problem: unseen in training)")
        self.seed_box = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.seed_box.setToolTip("Seed of the test problem: the same seed gives the same problem and minibatches")
        self.steps_box = QSpinBox(minimum=10, maximum=5000, value=200, singleStep=50)
        self.steps_box.setToolTip("Optimizer steps of the race (the learned optimizer trained on a 100-step horizon)")
        self.race_button = QPushButton("Race")
        self.race_button.clicked.connect(self.start_race)
        self.stop_button = QPushButton("Stop", enabled=False)
        self.stop_button.clicked.connect(self.worker.cancel)
        row = QHBoxLayout()
        for label, widget in (("Run", self.model_combo), ("Problem", self.problem_combo), ("Seed", self.seed_box),
                              ("Steps", self.steps_box)):
            row.addWidget(QLabel(label))
            row.addWidget(widget, 1 if widget is self.model_combo else 0)
        row.addWidget(self.race_button)
        row.addWidget(self.stop_button)
        self.plot = pg.PlotWidget()
        self.plot.setLogMode(x=False, y=True)
        self.plot.setLabel("bottom", "optimizer step")
        self.plot.setLabel("left", "optimizee loss (log scale)")
        self.plot.setMinimumHeight(260)
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.status = QLabel("Pick a run, a problem and a seed, then press Race.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.plot, 1)
        layout.addWidget(self.status)

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.plot.setBackground(theme.plot_background)
        self.plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)
        theme_plot_item(self.plot.getPlotItem(), theme)
        themed_legend(self.legend, theme)
        self._style_curves()

    # --- runs and problems --------------------------------------------------------------------------
    def _race_records(self) -> list:
        from workbench.core.errors import WorkbenchError
        from workbench.core.kinds import get_kind_class

        if self.store is None:
            return []
        found = []
        try:
            records = self.store.list()
        except Exception:  # an unreadable store: no runs rather than a broken page
            return []
        for record in records:
            try:
                races = get_kind_class(record.kind).try_task == MODE
            except WorkbenchError:
                continue
            run = self.store.run(record.id)
            if races and any(run.has_checkpoint(k) for k in ("best", "last")):
                found.append(record)
        return found

    def refresh_models(self) -> None:
        """List the runs of racing kinds that saved a checkpoint, keeping the current choice."""
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for record in self._race_records():
            self.model_combo.addItem(f"{record.label} · {record.algorithm}", record.id)
        if self.model_combo.count() == 0:
            self.model_combo.addItem("(no trained run of a racing kind yet)", None)
        index = self.model_combo.findData(current) if current is not None else -1
        self.model_combo.setCurrentIndex(max(0, index))
        self.model_combo.blockSignals(False)
        self._fill_choices()

    def select_model(self, run_id: str) -> None:
        index = self.model_combo.findData(run_id)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)

    def _fill_choices(self) -> None:
        """The problems the chosen run's kind offers, starting on the one it trained on."""
        from workbench.core.kinds import get_kind

        run = self._run()
        self.problem_combo.clear()
        self.race_button.setEnabled(run is not None)
        if run is None:
            return
        kind = get_kind(run.config.kind, run.config.task)
        for value, title in kind.race_choices():
            trained_on = value == kind.race_choice()
            self.problem_combo.addItem(title + (" (trained on)" if trained_on else ""), value)
            if trained_on:
                self.problem_combo.setCurrentIndex(self.problem_combo.count() - 1)

    def _run(self):
        run_id = self.model_combo.currentData()
        return self.store.run(run_id) if run_id is not None and self.store is not None else None

    # --- the race ----------------------------------------------------------------------------------
    def start_race(self) -> None:
        run = self._run()
        if run is None:
            self.status.setText("Train a run of a racing kind first; it appears here with its checkpoint.")
            return
        steps = self.steps_box.value()
        self.buffer = RaceBuffer(steps)
        self._clear_curves()
        self.race_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.status.setText("Starting the race…")
        self.worker.start(run_race, run, self.problem_combo.currentData(), self.seed_box.value(), steps, self.buffer)

    def _clear_curves(self) -> None:
        for curve in self.plot_curves.values():
            self.plot.removeItem(curve)
        self.plot_curves = {}
        self.legend.clear()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.status.setText(message)
        self.redraw()

    def redraw(self) -> None:
        """Draw the buffer's curves so far (non-finite losses, a diverged optimizer, leave a gap)."""
        if self.buffer is None or not self.buffer.names:
            return
        if list(self.plot_curves) != self.buffer.names:
            self._clear_curves()
            for name in self.buffer.names:
                self.plot_curves[name] = self.plot.plot([], [], name=self.buffer.labels[name])
            self._style_curves()
            self.plot.setTitle(self.buffer.title)
            self.plot.setXRange(0, self.buffer.steps, padding=0.02)
        for name, losses in self.buffer.curves().items():
            shown = np.where(np.isfinite(losses) & (losses > 0), losses, np.nan)
            self.plot_curves[name].setData(np.arange(len(shown)), shown, connect="finite")

    def _style_curves(self) -> None:
        # The first series is the learned optimizer's: drawn thicker.
        for index, (curve, (colour, style)) in enumerate(zip(self.plot_curves.values(),
                                                             series_pens(len(self.plot_curves), self.theme))):
            curve.setPen(pg.mkPen(colour, width=3 if index == 0 else 1.5, style=style))
            curve.setZValue(1 if index == 0 else 0)
        themed_legend(self.legend, self.theme)

    def _finish(self, text: str) -> None:
        self.race_button.setEnabled(self._run() is not None)
        self.stop_button.setEnabled(False)
        self.status.setText(text)
        self.status_message.emit(text)

    def _on_finished(self, curves: dict[str, np.ndarray]) -> None:
        self.redraw()
        finals = {self.buffer.labels[name]: float(values[-1]) for name, values in curves.items()}
        ranking = sorted(finals.items(), key=lambda item: item[1] if math.isfinite(item[1]) else math.inf)
        self._finish("Final loss: " + ", ".join(f"{label} {value:.4g}" for label, value in ranking))
        self.race_finished.emit(curves)

    def _on_failed(self, message: str, details: str) -> None:
        self._finish(f"The race failed: {message}")
        self.race_finished.emit(None)

    def _on_cancelled(self) -> None:
        self._finish("Stopped.")
        self.race_finished.emit(None)

    def shutdown(self) -> None:
        self.worker.shutdown()

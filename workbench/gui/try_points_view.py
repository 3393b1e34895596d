"""The regression "Try a task" page: click points on a canvas (or type them), pick a trained regression run, and
watch its model adapt to the points step by step. The learning is workbench.core.try_points (``fit_points``);
it runs in a background thread whenever the points or the model change, and the step slider and the Animate
button only replay the steps it returned."""

from __future__ import annotations

import threading

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QLineEdit,
                               QPushButton, QSizePolicy, QSlider, QSplitter, QTableWidget, QTableWidgetItem,
                               QToolButton, QVBoxLayout, QWidget)

from workbench.core.try_points import (DEFAULT_STEPS, MAX_POINTS, REGRESSION_KIND, X_RANGE, PointsError,
                                       check_points, fit_points, parse_points)
from workbench.gui.background import BackgroundTask
from workbench.gui.fit_view import finite_or_nan, themed_legend
from workbench.gui.theme import LIGHT, Theme
from workbench.gui.view_registry import register_view

Y_VIEW = (-6.0, 6.0)  # the sine tasks' amplitudes reach 5
SELECT_PIXELS = 10  # a click this close to a point selects it instead of adding one
ANIMATE_MS = 450
_MODEL_LOCK = threading.Lock()  # one adaptation at a time over the shared cached model
_MODEL_CACHE: dict[tuple, object] = {}


def checkpoint_key(run) -> tuple:
    """Identifies a run's checkpoint files as they are now, so a retrained run is loaded afresh."""
    stamps = []
    for kind in ("best", "last"):
        path = run.checkpoint_path(kind)
        stamps.append(path.stat().st_mtime_ns if path.is_file() else 0)
    return (str(run.path), *stamps)


def compute_fit(progress, run, key: tuple, xs: list[float], ys: list[float], steps: int) -> dict:
    """Worker: load (or reuse) the run's model and adapt it to the points."""
    from workbench.core.runs import load_model

    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE.clear()  # keep one model in memory
            _MODEL_CACHE[key] = load_model(run)
        progress(0, 1, "adapting")
        fit = fit_points(_MODEL_CACHE[key], xs, ys, steps)
    return {"fit": fit, "points": (list(xs), list(ys)), "run_id": run.id}


@register_view
class TryPointsView(QWidget):
    """Canvas of support points, model chooser, prediction per inner step with its support MSE."""

    view_title = "Try a task"
    view_capability = "try_points"
    view_order = 30  # the image Try view's tab, which this page shares

    fit_updated = Signal(object)  # PointsFit or None
    status_message = Signal(str)

    def __init__(self, store=None, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.theme = theme
        self.xs: list[float] = []
        self.ys: list[float] = []
        self.selected: int | None = None
        self.fit = None
        self._undo: list[tuple[list[float], list[float]]] = []
        self.worker = BackgroundTask(self, finished=self._on_result, failed=self._on_failed)
        self._refresh_timer = QTimer(self, singleShot=True, interval=0)  # one job for a burst of edits
        self._refresh_timer.timeout.connect(self._start_compute)
        self.animation = QTimer(self, interval=ANIMATE_MS)
        self.animation.timeout.connect(self._animate_tick)
        self._build()
        self._shortcuts()
        self.apply_theme(theme)
        self.refresh_models()
        self._redraw()

    # --- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.setMinimumContentsLength(28)
        self.model_combo.setToolTip("A trained regression run whose model adapts to your points")
        self.model_combo.currentIndexChanged.connect(lambda _: self.refresh(clear=True))
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top = QHBoxLayout()
        top.addWidget(QLabel("Model"))
        top.addWidget(self.model_combo)
        top.addWidget(self.status, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._build_canvas())
        splitter.addWidget(self._build_side())
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(splitter, 1)
        layout.addLayout(self._build_steps_row())

    def _build_canvas(self) -> pg.PlotWidget:
        self.canvas = pg.PlotWidget()
        self.canvas.setMouseEnabled(x=False, y=False)
        self.canvas.setMenuEnabled(False)  # right-click removes a point instead
        self.canvas.hideButtons()
        self.canvas.setXRange(*X_RANGE, padding=0.02)
        self.canvas.setYRange(*Y_VIEW, padding=0.0)
        self.canvas.setLabel("bottom", "x")
        self.canvas.setLabel("left", "y")
        self.canvas.getAxis("left").enableAutoSIPrefix(False)
        self.canvas.setToolTip("Click to add a point, click a point to select it, right-click to remove the "
                               "nearest point")
        self.legend = self.canvas.addLegend(offset=(10, 10))
        self.start_curve = self.canvas.plot([], [], name="before adaptation (0 steps)")
        self.curve = self.canvas.plot([], [], name="after adaptation")
        self.points = pg.ScatterPlotItem(size=11, name="your points")
        self.points.setZValue(20)
        self.canvas.addItem(self.points)
        self.hint = pg.TextItem(anchor=(0.5, 0.5))
        self.hint.setPos(0.0, 0.0)
        self.canvas.addItem(self.hint)
        self.canvas.scene().sigMouseClicked.connect(self._on_canvas_click)
        return self.canvas

    def _build_side(self) -> QWidget:
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["x", "y"])
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemSelectionChanged.connect(self._on_table_selection)
        self.table.itemChanged.connect(self._on_table_edit)
        self.entry = QLineEdit()
        self.entry.setPlaceholderText("x, y; x, y …")
        self.entry.setToolTip("Type points as 'x, y' pairs separated by ';' and press Enter")
        self.entry.returnPressed.connect(self._add_typed)
        add = QToolButton(text="Add")
        add.clicked.connect(self._add_typed)
        entry_row = QHBoxLayout()
        entry_row.addWidget(self.entry, 1)
        entry_row.addWidget(add)
        buttons = QHBoxLayout()
        for text, slot, tip in (("Remove", self.remove_selected, "Remove the selected point (Delete)"),
                                ("Undo", self.undo, "Undo the last change to the points (Ctrl+Z)"),
                                ("Clear", self.clear_points, "Remove every point")):
            button = QToolButton(text=text, toolTip=tip)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.mse_plot = pg.PlotWidget()
        self.mse_plot.setMinimumHeight(150)
        self.mse_plot.setMouseEnabled(x=False, y=False)
        self.mse_plot.setLabel("bottom", "inner steps")
        self.mse_plot.setLabel("left", "support MSE")
        self.mse_plot.getAxis("left").enableAutoSIPrefix(False)
        self.mse_plot.setXRange(0, DEFAULT_STEPS, padding=0.05)
        self.mse_curve = self.mse_plot.plot([], [], symbol="o", symbolSize=5)
        self.mse_marker = self.mse_plot.plot([], [], pen=None, symbol="o", symbolSize=11)
        side = QVBoxLayout()
        heading = QLabel(f"<b>Support points</b> (x in [{X_RANGE[0]:g}, {X_RANGE[1]:g}], at most {MAX_POINTS})")
        heading.setWordWrap(True)
        side.addWidget(heading)
        side.addWidget(self.table, 2)
        side.addLayout(entry_row)
        side.addLayout(buttons)
        side.addWidget(self.mse_plot, 1)
        widget = QWidget()
        widget.setLayout(side)
        widget.setMinimumWidth(260)
        return widget

    def _build_steps_row(self) -> QHBoxLayout:
        self.step_slider = QSlider(Qt.Orientation.Horizontal)
        self.step_slider.setRange(0, DEFAULT_STEPS)
        self.step_slider.setValue(DEFAULT_STEPS)
        self.step_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.step_slider.setToolTip("Inner gradient steps taken on your points")
        self.step_slider.valueChanged.connect(lambda _: self._redraw())
        self.step_label = QLabel()
        self.step_label.setMinimumWidth(280)
        self.animate_button = QPushButton("Animate")
        self.animate_button.setToolTip("Step through the adaptation from 0 steps (Space)")
        self.animate_button.clicked.connect(self.toggle_animation)
        row = QHBoxLayout()
        row.addWidget(QLabel("Inner steps:"))
        row.addWidget(self.step_slider, 1)
        row.addWidget(self.step_label)
        row.addWidget(self.animate_button)
        return row

    def _shortcuts(self) -> None:
        context = Qt.ShortcutContext.WidgetWithChildrenShortcut
        for keys, slot in ((QKeySequence.StandardKey.Delete, self.remove_selected),
                           (QKeySequence.StandardKey.Undo, self.undo), (QKeySequence(Qt.Key.Key_Space),
                                                                       self.toggle_animation)):
            QShortcut(QKeySequence(keys), self, slot, context=context)

    # --- wiring ----------------------------------------------------------------------------------
    @classmethod
    def for_window(cls, window) -> "TryPointsView":
        """A page that follows the window's theme and lists the store's regression runs as they change."""
        view = cls(getattr(window, "store", None), getattr(window, "theme", LIGHT))
        window.theme_changed.connect(view.apply_theme)
        window.run_store_changed.connect(view.refresh_models)
        window.training_finished.connect(lambda *_: view.refresh_models())
        return view

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        for plot in (self.canvas, self.mse_plot):
            plot.setBackground(theme.plot_background)
            plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setPen(theme.plot_foreground)
                plot.getAxis(axis).setTextPen(theme.plot_foreground)
        themed_legend(self.legend, theme)
        self.start_curve.setPen(pg.mkPen(theme.muted_text, width=1.5, style=Qt.PenStyle.DashLine))
        self.curve.setPen(pg.mkPen(theme.train, width=3))
        self.mse_curve.setPen(pg.mkPen(theme.train, width=2))
        self.mse_curve.setSymbolBrush(theme.train)
        self.mse_curve.setSymbolPen(theme.train)
        self.mse_marker.setSymbolBrush(theme.validation)
        self.mse_marker.setSymbolPen(theme.plot_foreground)
        self.hint.setColor(theme.muted_text)
        self._redraw()

    # --- models ----------------------------------------------------------------------------------
    def refresh_models(self) -> None:
        """List the store's regression runs that saved a checkpoint, keeping the current choice."""
        current = self.model_combo.currentData()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for record in self._regression_records():
            self.model_combo.addItem(f"{record.label} · {record.algorithm}", record.id)
        if self.model_combo.count() == 0:
            self.model_combo.addItem("(no trained regression run yet)", None)
        index = self.model_combo.findData(current) if current is not None else -1
        self.model_combo.setCurrentIndex(max(0, index))
        self.model_combo.blockSignals(False)
        if self.model_combo.currentData() != current:
            self.refresh(clear=True)

    def _regression_records(self) -> list:
        if self.store is None:
            return []
        try:
            records = [r for r in self.store.list() if r.kind == REGRESSION_KIND]
        except Exception:  # an unreadable store: no models rather than a broken page
            return []
        return [r for r in records if any(self.store.run(r.id).has_checkpoint(k) for k in ("best", "last"))]

    def select_model(self, run_id: str) -> None:
        index = self.model_combo.findData(run_id)
        if index < 0:
            self.refresh_models()
            index = self.model_combo.findData(run_id)
        if index >= 0:
            self.model_combo.setCurrentIndex(index)

    def model_ids(self) -> list[str]:
        return [self.model_combo.itemData(i) for i in range(self.model_combo.count())
                if self.model_combo.itemData(i) is not None]

    # --- points ----------------------------------------------------------------------------------
    def set_points(self, xs, ys, remember: bool = True) -> bool:
        """Replace the points (validated); False and a message when they are not valid."""
        xs, ys = [float(x) for x in xs], [float(y) for y in ys]
        if xs:
            try:
                check_points(xs, ys)
            except PointsError as exc:
                self._show_status(str(exc), error=True)
                return False
        if remember:
            self._undo.append((list(self.xs), list(self.ys)))
        self.xs, self.ys = xs, ys
        if self.selected is not None and self.selected >= len(xs):
            self.selected = len(xs) - 1 if xs else None
        self._fill_table()
        self.refresh()
        return True

    def add_point(self, x: float, y: float) -> bool:
        if self.set_points(self.xs + [x], self.ys + [y]):
            self.select(len(self.xs) - 1)
            return True
        return False

    def remove_point(self, index: int) -> None:
        if 0 <= index < len(self.xs):
            self.selected = None
            self.set_points(self.xs[:index] + self.xs[index + 1:], self.ys[:index] + self.ys[index + 1:])

    def remove_selected(self) -> None:
        if self.selected is not None:
            self.remove_point(self.selected)

    def remove_nearest(self, x: float, y: float) -> None:
        index = self.nearest(x, y)
        if index is not None:
            self.remove_point(index)

    def nearest(self, x: float, y: float, max_pixels: float | None = None) -> int | None:
        """The point nearest (x, y) on screen; None if there is none (within ``max_pixels`` when given)."""
        if not self.xs:
            return None
        view = self.canvas.getPlotItem().getViewBox()
        sx, sy = view.viewPixelSize()  # data units per pixel, so distance is measured as the user sees it
        dist = np.hypot((np.asarray(self.xs) - x) / sx, (np.asarray(self.ys) - y) / sy)
        index = int(np.argmin(dist))
        return index if max_pixels is None or dist[index] <= max_pixels else None

    def select(self, index: int | None) -> None:
        self.selected = index
        self.table.blockSignals(True)
        self.table.clearSelection()
        if index is not None:
            self.table.selectRow(index)
        self.table.blockSignals(False)
        self._draw_points()

    def undo(self) -> None:
        if self._undo:
            xs, ys = self._undo.pop()
            self.set_points(xs, ys, remember=False)
            self._show_status("undone")

    def clear_points(self) -> None:
        if self.xs:
            self.set_points([], [])

    def _on_canvas_click(self, event) -> None:
        view = self.canvas.getPlotItem().getViewBox()
        if not view.sceneBoundingRect().contains(event.scenePos()):
            return  # a click on an axis or the legend margin
        point = view.mapSceneToView(event.scenePos())
        x, y = min(max(float(point.x()), X_RANGE[0]), X_RANGE[1]), float(point.y())  # the margin means the edge
        if event.button() == Qt.MouseButton.RightButton:
            self.remove_nearest(x, y)
        elif event.button() == Qt.MouseButton.LeftButton:
            hit = self.nearest(x, y, SELECT_PIXELS)
            if hit is not None:
                self.select(hit)
            else:
                self.add_point(x, y)
        event.accept()

    def _add_typed(self) -> None:
        try:
            xs, ys = parse_points(self.entry.text())
        except PointsError as exc:
            self._show_status(str(exc), error=True)
            return
        if xs and self.set_points(self.xs + xs, self.ys + ys):
            self.entry.clear()

    def _fill_table(self) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.xs))
        for row, (x, y) in enumerate(zip(self.xs, self.ys)):
            for column, value in enumerate((x, y)):
                self.table.setItem(row, column, QTableWidgetItem(f"{value:.3g}"))
        if self.selected is not None:
            self.table.selectRow(self.selected)
        self.table.blockSignals(False)

    def _on_table_selection(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        self.selected = rows[0].row() if rows else None
        self._draw_points()

    def _on_table_edit(self, item: QTableWidgetItem) -> None:
        try:
            value = float(item.text())
        except ValueError:
            self._show_status(f"point {item.row() + 1}: '{item.text()}' is not a number", error=True)
            self._fill_table()
            return
        xs, ys = list(self.xs), list(self.ys)
        (xs if item.column() == 0 else ys)[item.row()] = value
        if not self.set_points(xs, ys):
            self._fill_table()

    # --- adaptation ------------------------------------------------------------------------------
    def refresh(self, clear: bool = False) -> None:
        """Recompute the fit for the current points and model (coalesced; runs in the background). The last fit
        stays drawn meanwhile, unless ``clear`` (another model) or no points are left."""
        if clear or not self.xs:
            self.fit = None
        self._refresh_timer.start()
        self._redraw()

    def _start_compute(self) -> None:
        run_id = self.model_combo.currentData()
        if not self.xs:
            self._show_status("Click on the canvas to add support points.")
            return
        if run_id is None or self.store is None:
            self._show_status("Train a regression run first: its model appears in the Model list.", error=True)
            return
        try:
            run = self.store.get(run_id)
            key = checkpoint_key(run)
        except Exception as exc:  # the run vanished since the list was made
            self._show_status(f"Run {run_id} cannot be read: {exc}", error=True)
            return
        self._show_status("adapting…")
        self.worker.start(compute_fit, run, key, list(self.xs), list(self.ys), DEFAULT_STEPS)

    @property
    def busy(self) -> bool:
        return self.worker.is_running or self._refresh_timer.isActive()

    def _on_result(self, output: dict) -> None:
        if output["points"] != (self.xs, self.ys) or output["run_id"] != self.model_combo.currentData():
            return  # the points changed meanwhile; their own job follows
        self.fit = output["fit"]
        steps = self.fit.steps
        self.step_slider.setRange(min(steps), max(steps))
        self._show_status(f"{self.fit.algorithm}: adapted to {len(self.xs)} point{'s' * (len(self.xs) != 1)} "
                          f"with 0 to {max(steps)} inner steps")
        self._redraw()
        self.fit_updated.emit(self.fit)

    def _on_failed(self, message: str, _details: str) -> None:
        self.fit = None
        self._redraw()
        self._show_status(message, error=True)
        self.fit_updated.emit(None)

    # --- animation -------------------------------------------------------------------------------
    def toggle_animation(self) -> None:
        if self.animation.isActive():
            self.stop_animation()
            return
        if self.fit is None:
            self._show_status("Nothing to animate yet: add points and pick a model.", error=True)
            return
        self.step_slider.setValue(self.step_slider.minimum())
        self.animate_button.setText("Stop")
        self.animation.start()

    def stop_animation(self) -> None:
        self.animation.stop()
        self.animate_button.setText("Animate")

    def _animate_tick(self) -> None:
        if self.fit is None or self.step_slider.value() >= self.step_slider.maximum():
            self.stop_animation()
            return
        self.step_slider.setValue(self.step_slider.value() + 1)

    # --- drawing ---------------------------------------------------------------------------------
    def _draw_points(self) -> None:
        # The selected point (Delete removes it) gets a thick ring in the prediction's colour.
        normal, ring = pg.mkPen(self.theme.plot_foreground), pg.mkPen(self.theme.train, width=3)
        count = len(self.xs)
        self.points.setData(self.xs, self.ys, brush=pg.mkBrush(self.theme.validation),
                            size=[16 if i == self.selected else 11 for i in range(count)],
                            pen=[ring if i == self.selected else normal for i in range(count)])

    def _hint_text(self) -> str:
        if self.xs:
            return ""
        if not self.model_ids():
            from workbench.core.kinds import get_kind_class

            kind = get_kind_class(REGRESSION_KIND).title
            return (f"No trained regression run yet: train one (kind: {kind[:1].lower() + kind[1:]}),\n"
                    "then click here to add points it should fit")
        return "Click to add support points; the model adapts to them"

    def _redraw(self) -> None:
        self._draw_points()
        self.hint.setText(self._hint_text())
        fit, step = self.fit, self.step_slider.value()
        self.legend.setVisible(fit is not None)
        if fit is None or step not in fit.steps:
            for item in (self.curve, self.start_curve, self.mse_curve, self.mse_marker):
                item.setData([], [])
            self.step_label.setText(f"{step} step{'s' * (step != 1)}" + ("" if fit is not None or not self.xs
                                                                          else " — adapting…"))
            return
        self.curve.setData(fit.x_grid, finite_or_nan(fit.prediction_at(step)), connect="finite")
        self._legend_label(self.curve, f"after {step} step{'s' * (step != 1)}")
        if fit.steps[0] == 0:
            self.start_curve.setData(fit.x_grid, finite_or_nan(fit.predictions[0]), connect="finite")
        else:
            self.start_curve.setData([], [])
        self.mse_curve.setData(np.asarray(fit.steps, dtype=float), finite_or_nan(fit.support_mse), connect="finite")
        finite = fit.support_mse[np.isfinite(fit.support_mse)]
        if finite.size:  # capped at a few times the start: a diverging adaptation leaves the frame
            top = min(float(finite.max()), 3 * float(finite[0]))
            top = top if top > 0 else 1.0
            self.mse_plot.setYRange(-0.04 * top, 1.08 * top, padding=0.0)  # markers at 0 stay whole
        mse = float(fit.support_mse[fit.steps.index(step)])
        self.mse_marker.setData(*(([float(step)], [mse]) if np.isfinite(mse) else ([], [])))
        text = f"support MSE <b>{mse:.3g}</b>" if np.isfinite(mse) else "diverged (the inner steps overshoot)"
        self.step_label.setText(f"after {step} step{'s' * (step != 1)}: {text} "
                                f"(0 steps: {float(fit.support_mse[0]):.3g})")

    def _legend_label(self, item, text: str) -> None:
        for sample, label in self.legend.items:
            if sample.item is item and label.text != text:
                label.setText(text, color=self.theme.plot_foreground)

    def prediction(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The prediction curve drawn now (for tests), or None."""
        x, y = self.curve.getData()
        return (np.asarray(x), np.asarray(y)) if x is not None and len(x) else None

    def _show_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet(f"color: {self.theme.error_text};" if error else "")
        self.status.setToolTip(text)
        self.status_message.emit(text)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        self._refresh_timer.stop()
        self.animation.stop()
        return self.worker.shutdown(timeout_ms)

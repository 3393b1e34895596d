"""The "Fit" view of few-shot regression: on a fixed probe task, the true function, its K support points and the
model's prediction after 0, 1, ... 10 inner steps, replayable over training; beside it, the MSE against inner
steps for the run and for a baseline run.

Data source: ``fit_history.npz`` in the run folder, which the trainer rewrites at each validation (format in the
notes: steps, x_grid, true_y, support_x/y, inner_steps, predictions [S, P, G], probe_mse [S, P], amplitude,
phase, algorithm). While a run trains, the view re-reads the file when it changed, checked at most once a second
on the worker's record signal; the file is small (at most 200 snapshots of 11 curves), so reading it on the GUI
thread costs a few milliseconds. Saved evaluations (``mse_by_steps``) come from ``Run.evaluations()``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QMenu, QSlider, QSplitter,
                               QStackedWidget, QToolButton, QVBoxLayout, QWidget)

from workbench.gui.theme import LIGHT, Theme
from workbench.gui.svg_export import export_svg
from workbench.gui.view_registry import register_view

HISTORY_FILE = "fit_history.npz"
RELOAD_SECONDS = 1.0
Y_CAP = 5.0  # predictions are shown up to this far beyond the true function's range
DEFAULT_SHOWN = (0, 1, 10)
REGRESSION_KIND = "regression"
ARRAYS = {"steps": 1, "x_grid": 1, "true_y": 1, "support_x": 1, "support_y": 1, "inner_steps": 1,
          "predictions": 3, "probe_mse": 2}
EMPTY_TEXT = "Train a regression run, or open one in the Runs tab; the fit appears at the first validation."

EXPLANATION = (
    "<h3>Fit</h3>"
    "<p>This view shows how a few-shot regression model fits a new function from a handful of points: on a fixed "
    "probe task, the <b>true function</b>, its <b>support points</b> and the model's prediction <b>before "
    "adaptation</b> (0 inner steps) and after each inner gradient step. Drag the time slider to replay how "
    "meta-training shaped the starting point.</p>"
    "<p>Beside it, the mean squared error against inner steps, for this run and for a baseline run you pick.</p>"
    "<p><i>{reason}</i></p>")


def read_fit_history(path: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of a run folder's fit history (or an .npz file); None if there is none or it is unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError):
        return None


def history_problem(history: dict[str, np.ndarray]) -> str:
    """What is wrong with a history's arrays ("" when they fit together)."""
    for key, ndim in ARRAYS.items():
        if key not in history:
            return f"it has no '{key}' array"
        if history[key].ndim != ndim:
            return f"'{key}' has {history[key].ndim} dimensions, expected {ndim}"
    snapshots, counts, grid = history["steps"].size, history["inner_steps"].size, history["x_grid"].size
    if history["predictions"].shape != (snapshots, counts, grid):
        return (f"'predictions' has shape {list(history['predictions'].shape)}, expected "
                f"[{snapshots}, {counts}, {grid}] (snapshots, inner-step counts, grid points)")
    if history["probe_mse"].shape != (snapshots, counts):
        return f"'probe_mse' has shape {list(history['probe_mse'].shape)}, expected [{snapshots}, {counts}]"
    if history["true_y"].size != grid or history["support_x"].size != history["support_y"].size:
        return "'true_y' does not match 'x_grid', or 'support_x' does not match 'support_y'"
    return ""


def step_colours(count: int, theme: Theme) -> list[QColor]:
    """A colour ramp from the first inner-step count to the last that reads on the theme's background."""
    low, high = (0.3, 1.0) if theme.is_dark else (0.0, 0.82)
    cmap = pg.colormap.get("plasma")
    # Logarithmic spacing: most of the change happens in the first steps, so 0 and 1 must differ clearly.
    where = np.log1p(np.arange(count)) / np.log1p(max(1, count - 1))
    return [cmap.map(low + (high - low) * float(t), mode="qcolor") for t in where]


def themed_legend(legend: pg.LegendItem, theme: Theme) -> None:
    """Legend text in the theme's colour (existing labels too: pyqtgraph only colours new ones) on a backdrop."""
    legend.setLabelTextColor(theme.plot_foreground)
    for _sample, label in legend.items:
        label.setText(label.text, color=theme.plot_foreground)
    background = QColor(theme.plot_background)
    background.setAlpha(200)
    legend.setBrush(background)


def finite_or_nan(values) -> np.ndarray:
    """Float64 values with inf turned to nan: a diverged prediction leaves a gap instead of breaking the axes."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)


def mse_text(value) -> str:
    value = float(value)
    return f"{value:.3g}" if math.isfinite(value) else "diverged"


def steps_text(count: int) -> str:
    return f"{count} step" + ("" if count == 1 else "s")


def mse_by_steps(evaluation: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(inner steps, MSE, ci95) of a saved regression evaluation, sorted by steps; None if it has none."""
    values = evaluation.get("mse_by_steps") if isinstance(evaluation, dict) else None
    if not isinstance(values, dict) or not values:
        return None
    cis = evaluation.get("ci95_by_steps") or {}
    try:
        steps = sorted(int(key) for key in values)
        mse = np.array([float(values[str(s)]) for s in steps])
        ci = np.array([float(cis.get(str(s), math.nan)) for s in steps])
    except (TypeError, ValueError, KeyError):
        return None
    return np.array(steps, dtype=float), mse, ci


def latest_regression_evaluation(run) -> dict | None:
    """The newest saved evaluation of a run that has MSE by inner steps."""
    try:
        evaluations = run.evaluations()
    except OSError:
        return None
    found = [e for e in evaluations if mse_by_steps(e) is not None]
    return found[-1] if found else None


@register_view
class FitView(QWidget):
    """Explains itself until a regression run with a fit history is shown; then plots it with a time scrubber."""

    view_title = "Fit"
    view_capability = "fit"
    view_order = 55  # after Adaptation

    snapshot_changed = Signal(int)  # index of the snapshot shown
    exported = Signal(str)  # path written

    def __init__(self, store=None, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.theme = theme
        self.history: dict[str, np.ndarray] | None = None
        self.run_folder: Path | None = None
        self.run_id: str | None = None
        self.live_job: int | None = None
        self.evaluation: dict | None = None  # the shown run's saved evaluation
        self.baseline: dict | None = None
        self._last_check = 0.0
        self._loaded_mtime: tuple | None = None
        self._follow_latest = True
        self._shown_counts: set[int] = set(DEFAULT_SHOWN)
        self._curves: dict[int, pg.PlotDataItem] = {}
        self.stack = QStackedWidget()
        self.explanation = QLabel()
        self.explanation.setWordWrap(True)
        self.explanation.setTextFormat(Qt.TextFormat.RichText)
        self.explanation.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.explanation.setContentsMargins(24, 24, 24, 24)
        self.stack.addWidget(self.explanation)
        self.stack.addWidget(self._build_content())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.stack)
        self.apply_theme(theme)
        self.refresh_runs()
        self.show_explanation(EMPTY_TEXT)

    # --- layout ----------------------------------------------------------------------------------
    def _build_content(self) -> QWidget:
        content = QWidget()
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.export_button = QToolButton(text="Export")
        self.export_button.setToolTip("Save the plots as an image (PNG) or a vector image (SVG)")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.export_button)
        for text, plot, kind in (("Fit as PNG…", "fit", "png"), ("Fit as SVG…", "fit", "svg"),
                                 ("MSE by steps as PNG…", "mse", "png"), ("MSE by steps as SVG…", "mse", "svg")):
            menu.addAction(text, lambda p=plot, k=kind: self._export_dialog(p, k))
        self.export_button.setMenu(menu)
        head = QHBoxLayout()
        head.addWidget(self.title, 1)
        head.addWidget(self.export_button)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._build_fit_plot())
        splitter.addWidget(self._build_mse_panel())
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)

        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider.setToolTip("Replay the fit at each validation of training.")
        self.slider.valueChanged.connect(self._on_slider)
        self.step_label = QLabel()
        self.step_label.setMinimumWidth(150)
        scrubber = QHBoxLayout()
        scrubber.addWidget(QLabel("Training time:"))
        scrubber.addWidget(self.slider, 1)
        scrubber.addWidget(self.step_label)
        self.summary = QLabel()
        self.summary.setWordWrap(True)

        layout = QVBoxLayout(content)
        layout.addLayout(head)
        layout.addWidget(splitter, 1)
        layout.addLayout(self._build_count_buttons())
        layout.addLayout(scrubber)
        layout.addWidget(self.summary)
        return content

    def _build_fit_plot(self) -> pg.PlotWidget:
        self.fit_plot = pg.PlotWidget()
        self.fit_plot.setLabel("bottom", "x")
        self.fit_plot.setLabel("left", "y")
        self.fit_plot.setMouseEnabled(x=False, y=False)
        self.fit_plot.getAxis("left").enableAutoSIPrefix(False)
        self.fit_legend = self.fit_plot.addLegend(offset=(10, 5), colCount=3)  # wide and short, above the curves
        self.true_curve = self.fit_plot.plot([], [], name="true function")
        self.true_curve.setZValue(30)  # dashed on top, so a good fit still shows the truth
        self.support_points = self.fit_plot.plot([], [], pen=None, symbol="o", symbolSize=10, name="support points")
        self.support_points.setZValue(40)
        return self.fit_plot

    def _build_mse_panel(self) -> QWidget:
        panel = QWidget()
        self.mse_plot = pg.PlotWidget()
        self.mse_plot.setLabel("bottom", "inner steps")
        self.mse_plot.setLabel("left", "MSE")
        self.mse_plot.setMouseEnabled(x=False, y=False)
        self.mse_plot.getAxis("left").enableAutoSIPrefix(False)
        self.mse_legend = self.mse_plot.addLegend(offset=(-10, 10))
        # Named in the legend only while they have data (see _draw_mse).
        self.probe_mse_curve = self.mse_plot.plot([], [], symbol="o", symbolSize=6)
        self.eval_curve = self.mse_plot.plot([], [], symbol="s", symbolSize=7)
        self.baseline_curve = self.mse_plot.plot([], [], symbol="t", symbolSize=8)
        self._mse_names = {self.probe_mse_curve: "this run, probe task", self.eval_curve: "this run, test tasks",
                           self.baseline_curve: "baseline, test tasks"}
        self.eval_bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0), beam=0.15)
        self.baseline_bars = pg.ErrorBarItem(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0), beam=0.15)
        for item in (self.eval_bars, self.baseline_bars):
            self.mse_plot.addItem(item)
        self.baseline_combo = QComboBox()
        self.baseline_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.baseline_combo.setMinimumContentsLength(18)
        self.baseline_combo.setToolTip("A regression run to compare with: its saved evaluation's MSE by inner steps")
        self.baseline_combo.currentIndexChanged.connect(self._on_baseline_changed)
        self.baseline_note = QLabel()
        self.baseline_note.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(QLabel("Baseline:"))
        row.addWidget(self.baseline_combo, 1)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.mse_plot, 1)
        layout.addWidget(self.baseline_note)
        return panel

    def _build_count_buttons(self) -> QHBoxLayout:
        self.count_row = QHBoxLayout()
        self.count_row.addWidget(QLabel("Inner steps shown:"))
        self.count_buttons: dict[int, QToolButton] = {}
        self._count_slot = QHBoxLayout()
        self._count_slot.setSpacing(2)
        self.count_row.addLayout(self._count_slot)
        for text, counts in (("0, 1, 10", DEFAULT_SHOWN), ("All", None)):
            button = QToolButton(text=text)
            button.setToolTip("Show these inner-step counts" if counts else "Show every inner-step count")
            button.clicked.connect(lambda _=False, c=counts: self.show_counts(c))
            self.count_row.addWidget(button)
        self.count_row.addStretch(1)
        return self.count_row

    # --- wiring ----------------------------------------------------------------------------------
    @classmethod
    def for_window(cls, window) -> "FitView":
        """A view following the window's training jobs, its run store and the runs opened in its Runs view."""
        view = cls(getattr(window, "store", None), getattr(window, "theme", LIGHT))
        window.training_started.connect(view.on_training_started)
        window.training_records.connect(view.on_training_records)
        window.training_finished.connect(view.on_training_finished)
        window.theme_changed.connect(view.apply_theme)
        window.run_store_changed.connect(view.refresh_runs)
        if not view._connect_runs_view(window):  # the Runs view may be built after this one
            QTimer.singleShot(0, lambda: view._connect_runs_view(window))
        return view

    def _connect_runs_view(self, window) -> bool:
        runs_view = getattr(window, "runs_view", None)
        if runs_view is None or getattr(self, "_runs_view_connected", False):
            return runs_view is not None
        runs_view.open_run.connect(self.show_run)
        self._runs_view_connected = True
        return True

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        for plot in (self.fit_plot, self.mse_plot):
            plot.setBackground(theme.plot_background)
            plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setPen(theme.plot_foreground)
                plot.getAxis(axis).setTextPen(theme.plot_foreground)
        for legend in (self.fit_legend, self.mse_legend):
            themed_legend(legend, theme)
        self.true_curve.setPen(pg.mkPen(theme.plot_foreground, width=2, style=Qt.PenStyle.DashLine))
        self.support_points.setSymbolBrush(theme.validation)
        self.support_points.setSymbolPen(pg.mkPen(theme.plot_foreground, width=1))
        for curve, bars, colour in ((self.eval_curve, self.eval_bars, theme.train),
                                    (self.baseline_curve, self.baseline_bars, theme.overlays[2])):
            curve.setPen(pg.mkPen(colour, width=2))
            curve.setSymbolBrush(colour)
            curve.setSymbolPen(colour)
            bars.setOpts(pen=pg.mkPen(colour, width=1))
        self.probe_mse_curve.setPen(pg.mkPen(theme.muted_text, width=2, style=Qt.PenStyle.DashLine))
        self.probe_mse_curve.setSymbolBrush(theme.muted_text)
        self.probe_mse_curve.setSymbolPen(theme.muted_text)
        if self.history is not None:
            self._rebuild_count_buttons()
            self._draw(self.slider.value())

    # --- sources ---------------------------------------------------------------------------------
    def _record_of(self, run_id: str | None):
        """The index record of a run (id, name or folder), or None when it cannot be read."""
        if self.store is None or not run_id:
            return None
        try:
            return self.store.get(run_id).record()
        except Exception:  # a vanished or unreadable run: the caller explains instead of failing
            return None

    def show_run(self, run_or_id) -> None:
        """Show a saved run (Run object, id, name or folder)."""
        run_id = str(getattr(run_or_id, "id", run_or_id))
        record = self._record_of(str(getattr(run_or_id, "path", run_or_id)))
        if record is not None:
            self._show_folder(Path(record.path), record.kind, record.id, record.label)
        elif Path(str(run_or_id)).is_dir():
            self._show_folder(Path(str(run_or_id)), None, None)
        else:
            self.show_explanation(f"Run {run_id} cannot be read.")

    def _show_folder(self, folder: Path, kind: str | None, run_id: str | None, label: str = "") -> None:
        self.run_folder, self.run_id = folder, run_id
        self._run_label = label or folder.name
        self._loaded_mtime = None
        self.history = None
        self._follow_latest = True
        if kind is not None and kind != REGRESSION_KIND:
            self.show_explanation(f"The run shown ({self._run_label}) is a {kind} run; the fit is drawn for "
                                  f"regression runs. {EMPTY_TEXT}")
            return
        self.evaluation = self._own_evaluation()
        self.show_explanation(f"Run {self._run_label} has no fit yet: it appears at the first validation.")
        self._reload()  # the fit, or what is wrong with its file

    def _own_evaluation(self) -> dict | None:
        if self.store is None or self.run_id is None:
            return None
        try:
            return latest_regression_evaluation(self.store.get(self.run_id))
        except Exception:  # a run without readable evaluations: plot without them
            return None

    def on_training_started(self, job_id: int, info) -> None:
        info = info if isinstance(info, dict) else {}
        self.live_job = job_id
        folder = info.get("run_path")
        record = self._record_of(info.get("run_id"))
        if record is not None:
            self._show_folder(Path(folder or record.path), record.kind, record.id, record.label)
        elif folder:
            self._show_folder(Path(folder), None, None)

    def on_training_records(self, job_id: int, payload) -> None:
        if job_id != self.live_job or self.run_folder is None:
            return
        now = time.monotonic()
        if now - self._last_check < RELOAD_SECONDS:
            return
        self._last_check = now
        self._reload()

    def on_training_finished(self, job_id: int, final) -> None:
        if job_id == self.live_job and self.run_folder is not None:
            self.evaluation = self._own_evaluation()
            self._reload()
        self.live_job = None
        self.refresh_runs()

    def _reload(self) -> bool:
        """Re-read the history file if it changed; True if new data is shown."""
        path = self.run_folder / HISTORY_FILE if self.run_folder is not None else None
        if path is None or not path.is_file():
            return False
        stat = path.stat()
        mtime = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # an atomic rewrite is a new file
        if mtime == self._loaded_mtime:
            return False
        history = read_fit_history(path)
        if history is None:
            return False  # being replaced: the next check reads the new file
        problem = history_problem(history)
        if problem or history["steps"].size == 0:
            self.show_explanation(f"{path} cannot be shown: {problem or 'it has no snapshot'}.")
            return False
        self._loaded_mtime = mtime
        self.set_history(history, title=f"Run {getattr(self, '_run_label', self.run_folder.name)}")
        return True

    # --- baseline --------------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        """List the store's regression runs as baselines, keeping the current choice."""
        current = self.baseline_combo.currentData()
        self.baseline_combo.blockSignals(True)
        self.baseline_combo.clear()
        self.baseline_combo.addItem("(none)", None)
        records = []
        if self.store is not None:
            try:
                records = [r for r in self.store.list() if r.kind == REGRESSION_KIND]
            except Exception:  # an unreadable store: no baselines rather than a broken view
                records = []
        for record in records:
            self.baseline_combo.addItem(f"{record.label} · {record.algorithm}", record.id)
        index = self.baseline_combo.findData(current) if current is not None else 0
        self.baseline_combo.setCurrentIndex(max(0, index))
        self.baseline_combo.blockSignals(False)
        self._on_baseline_changed()

    def baseline_ids(self) -> list[str]:
        return [self.baseline_combo.itemData(i) for i in range(1, self.baseline_combo.count())]

    def select_baseline(self, run_id: str | None) -> None:
        self.baseline_combo.setCurrentIndex(max(0, self.baseline_combo.findData(run_id)) if run_id else 0)

    def _on_baseline_changed(self, *_args) -> None:
        run_id = self.baseline_combo.currentData()
        self.baseline = None
        if run_id is None:
            self.baseline_note.setText("Pick a baseline run to compare its MSE on the test tasks.")
        else:
            try:
                self.baseline = latest_regression_evaluation(self.store.get(run_id))
            except Exception as exc:  # a vanished run: say so
                self.baseline_note.setText(f"Run {run_id} cannot be read: {exc}")
            else:
                label = self.baseline_combo.currentText().split(" · ")[0]
                self.baseline_note.setText(
                    f"Baseline: {label}, {self._evaluation_text(self.baseline)}." if self.baseline else
                    f"Run {label} has no saved evaluation yet: evaluate it in the Runs tab "
                    f"(or <code>workbench eval {run_id}</code>) to compare it here.")
        self._draw_mse()

    @staticmethod
    def _evaluation_text(evaluation: dict) -> str:
        return (f"{evaluation.get('episodes', '?')} test tasks, {evaluation.get('shots', '?')} shots, "
                f"MSE {float(evaluation.get('mse', math.nan)):.3g} after {evaluation.get('steps', '?')} steps")

    # --- drawing ---------------------------------------------------------------------------------
    def show_explanation(self, reason: str) -> None:
        self.explanation.setText(EXPLANATION.format(reason=reason))
        self.stack.setCurrentIndex(0)

    @property
    def showing_explanation(self) -> bool:
        return self.stack.currentIndex() == 0

    def set_history(self, history: dict[str, np.ndarray], title: str = "") -> None:
        count = int(history["steps"].size)
        at_end = self.history is None or self._follow_latest or self.slider.value() == self.slider.maximum()
        old_counts = None if self.history is None else self.history["inner_steps"].tolist()
        self.history = history
        if old_counts != history["inner_steps"].tolist():
            self._rebuild_count_buttons()
        algorithm = str(history.get("algorithm", ""))
        task = "probe task"
        if "amplitude" in history and "phase" in history:  # the sine tasks' parameters
            task += f" y = {float(history['amplitude']):.2f}·sin(x − {float(history['phase']):.2f})"
        self.title.setText(f"<b>{title}</b>" + (f" ({algorithm})" if algorithm else "") +
                           f": {task}, {history['support_x'].size} support points")
        self.stack.setCurrentIndex(1)
        self._fit_ranges(history)
        self.slider.blockSignals(True)
        self.slider.setMaximum(max(0, count - 1))
        if at_end:
            self.slider.setValue(count - 1)
        self.slider.blockSignals(False)
        self._follow_latest = self.slider.value() == self.slider.maximum()
        self._draw(self.slider.value())

    def _fit_ranges(self, history: dict[str, np.ndarray]) -> None:
        """Fixed axes while scrubbing: the grid, and the values that occur (true function, support points, the
        bulk of the predictions), capped so a wild early prediction leaves the frame rather than squash the rest."""
        x = history["x_grid"]
        self.fit_plot.setXRange(float(x[0]), float(x[-1]), padding=0.02)
        truth = np.concatenate([history["true_y"].ravel(), history["support_y"].ravel()]).astype(float)
        predictions = history["predictions"].astype(float)
        predictions = predictions[np.isfinite(predictions)]
        low, high = float(np.nanmin(truth)), float(np.nanmax(truth))
        if predictions.size:
            bulk = np.percentile(predictions, [1, 99])
            low, high = min(low, max(float(bulk[0]), low - Y_CAP)), max(high, min(float(bulk[1]), high + Y_CAP))
        margin = max(0.5, 0.1 * (high - low))
        # Headroom above the curves for the legend's two rows.
        self.fit_plot.setYRange(low - margin, high + max(1.0, 0.25 * (high - low)), padding=0.0)
        counts = history["inner_steps"]
        self.mse_plot.setXRange(float(counts.min()), float(counts.max()), padding=0.05)

    def _rebuild_count_buttons(self) -> None:
        while self._count_slot.count():
            widget = self._count_slot.takeAt(0).widget()
            if widget is not None:
                widget.hide()
                widget.deleteLater()
        self.count_buttons = {}
        counts = self.history["inner_steps"].tolist() if self.history is not None else []
        for count, colour in zip(counts, step_colours(len(counts), self.theme)):
            button = QToolButton(text=str(count))
            button.setCheckable(True)
            button.setChecked(count in self._shown_counts)
            button.setToolTip(f"Show the prediction after {steps_text(count)}")
            button.setStyleSheet(f"QToolButton {{ border-bottom: 3px solid {colour.name()}; min-width: 18px; }}")
            button.toggled.connect(lambda on, c=count: self._toggle_count(c, on))
            self._count_slot.addWidget(button)
            self.count_buttons[count] = button

    def _toggle_count(self, count: int, on: bool) -> None:
        (self._shown_counts.add if on else self._shown_counts.discard)(count)
        if self.history is not None:
            self._draw(self.slider.value())

    def show_counts(self, counts=None) -> None:
        """Show these inner-step counts (None: all of them)."""
        available = self.history["inner_steps"].tolist() if self.history is not None else list(DEFAULT_SHOWN)
        self._shown_counts = set(available if counts is None else counts)
        for count, button in self.count_buttons.items():
            button.blockSignals(True)
            button.setChecked(count in self._shown_counts)
            button.blockSignals(False)
        if self.history is not None:
            self._draw(self.slider.value())

    def _on_slider(self, index: int) -> None:
        if self.history is None:
            return
        self._follow_latest = index == self.slider.maximum()
        self._draw(index)

    def _draw(self, index: int) -> None:
        history = self.history
        count = int(history["steps"].size)
        index = max(0, min(index, count - 1))
        self.true_curve.setData(history["x_grid"].astype(float), history["true_y"].astype(float))
        self.support_points.setData(history["support_x"].astype(float), history["support_y"].astype(float))
        self._draw_predictions(index)
        step = int(history["steps"][index])
        self.step_label.setText(f"step {step:,} ({index + 1}/{count})")
        self._draw_mse()
        self.summary.setText(self._summary_text(index))
        self.snapshot_changed.emit(index)

    def _draw_predictions(self, index: int) -> None:
        for curve in self._curves.values():
            self.fit_plot.removeItem(curve)
            self.fit_legend.removeItem(curve)
        self._curves = {}
        history = self.history
        counts = history["inner_steps"].tolist()
        colours = step_colours(len(counts), self.theme)
        x = history["x_grid"].astype(float)
        shown = [c for c in counts if c in self._shown_counts]
        named = set(shown) if len(shown) <= 4 else {shown[0], shown[-1]} | (set(DEFAULT_SHOWN) & set(shown))
        for slot, (count, colour) in enumerate(zip(counts, colours)):
            if count not in self._shown_counts:
                continue
            width = 3 if count in DEFAULT_SHOWN else 1.5
            curve = pg.PlotDataItem(x, finite_or_nan(history["predictions"][index, slot]), connect="finite",
                                    pen=pg.mkPen(colour, width=width),
                                    name=f"after {steps_text(count)}" if count in named else None)
            curve.setZValue(10 + slot)
            self.fit_plot.addItem(curve)
            self._curves[count] = curve

    def _draw_mse(self) -> None:
        history, tops = self.history, []  # per curve: the MSE plus its interval, by inner steps
        if history is not None:
            index = max(0, min(self.slider.value(), int(history["steps"].size) - 1))
            probe = finite_or_nan(history["probe_mse"][index])
            self.probe_mse_curve.setData(history["inner_steps"].astype(float), probe, connect="finite")
            tops.append(probe)
        else:
            self.probe_mse_curve.setData([], [])
        for evaluation, curve, bars in ((self.evaluation, self.eval_curve, self.eval_bars),
                                        (self.baseline, self.baseline_curve, self.baseline_bars)):
            data = mse_by_steps(evaluation) if evaluation else None
            if data is None:
                curve.setData([], [])
                bars.setData(x=np.zeros(0), y=np.zeros(0), height=np.zeros(0))
                continue
            steps, mse, ci = data
            curve.setData(steps, mse)
            ok = np.isfinite(ci)
            bars.setData(x=steps[ok], y=mse[ok], height=2 * ci[ok])
            tops.append(mse + np.where(ok, ci, 0.0))
        self._name_drawn_curves()
        self._fit_mse_range(tops)

    def _fit_mse_range(self, tops: list[np.ndarray]) -> None:
        """From 0 to a bit above the largest MSE, but at most a few times the worst start (0 steps): a diverging
        adaptation leaves the frame instead of flattening every other curve."""
        finite = [t[np.isfinite(t)] for t in tops]
        highest = max((float(t.max()) for t in finite if t.size), default=None)
        if highest is None:
            return
        starts = [float(t[0]) for t in tops if t.size and np.isfinite(t[0])]
        top = min(highest, 3 * max(starts)) if starts else highest
        top = top if top > 0 else 1.0
        self.mse_plot.setYRange(-0.04 * top, 1.08 * top, padding=0.0)  # markers at 0 stay whole

    def _name_drawn_curves(self) -> None:
        """The MSE legend lists the curves that have data, in a fixed order."""
        for curve in self._mse_names:
            self.mse_legend.removeItem(curve)
        for curve, name in self._mse_names.items():
            x, _ = curve.getData()
            if x is not None and len(x):
                self.mse_legend.addItem(curve, name)

    def _summary_text(self, index: int) -> str:
        history = self.history
        counts = history["inner_steps"].tolist()
        mse = history["probe_mse"][index]
        parts = [f"{steps_text(c)} <b>{mse_text(mse[counts.index(c)])}</b>" for c in DEFAULT_SHOWN if c in counts]
        text = f"At step {int(history['steps'][index]):,}, MSE on the probe task after " + ", ".join(parts) + "."
        if self.evaluation:
            text += f" Saved evaluation of this run: {self._evaluation_text(self.evaluation)}."
        else:
            text += " This run has no saved evaluation yet (evaluate it in the Runs tab to add test-task MSEs)."
        return text

    def prediction_curves(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """The prediction curves drawn now, by inner-step count (for tests and exports)."""
        return {count: tuple(np.asarray(a) for a in curve.getData()) for count, curve in self._curves.items()}

    # --- export ----------------------------------------------------------------------------------
    def export(self, path: str | Path, plot: str = "fit") -> Path:
        """Write the fit plot (or the "mse" plot) as PNG or SVG, chosen by the file's suffix."""
        from pyqtgraph.exporters import ImageExporter

        path = Path(path)
        widget = self.fit_plot if plot == "fit" else self.mse_plot
        if path.suffix.lower() == ".svg":
            export_svg(widget.getPlotItem(), path)
        else:
            exporter = ImageExporter(widget.getPlotItem())
            exporter.parameters()["width"] = max(800, int(widget.width()))
            exporter.export(str(path))
        self.exported.emit(str(path))
        return path

    def _export_dialog(self, plot: str, kind: str) -> None:
        if self.history is None:
            self.summary.setText("Nothing to export yet.")
            return
        filters = {"png": "PNG image (*.png)", "svg": "SVG image (*.svg)"}
        path, _ = QFileDialog.getSaveFileName(self, "Export plot", f"{plot}.{kind}", filters[kind])
        if path:
            self.export(path, plot)
            self.summary.setText(f"Saved {path}")

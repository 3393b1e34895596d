"""The Training tab: live curves of meta-train loss and of the run's metric (accuracy, MSE: whatever the
experiment kind reports, named in the records) with its validation value and 95% CI.

Data is kept in growing float64 numpy arrays; curves clip to the view and downsample ("peak"), so a
100,000-step run stays smooth. While a run trains, the curves are redrawn at most twice a second and only when
the tab is shown, and the plots' ranges grow in steps (SteadyViewBox), so the axes are not redrawn each time:
painting runs in the GUI thread and holds the GIL the training thread needs. A smoothing slider applies
TensorBoard's debiased EMA to the raw data, with the raw curve drawn faintly underneath. The same widget shows
a saved run (``load_metrics``) and overlays of other runs (``add_overlay`` / ``clear_overlays``) for the Runs
tab.
"""

from __future__ import annotations

import csv
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyqtgraph as pg
import pyqtgraph.exporters  # noqa: F401  (registers the exporters)
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QFileDialog, QGraphicsItem, QHBoxLayout, QLabel, QMenu, QProgressBar, QSlider,
                               QToolButton, QVBoxLayout, QWidget)

from workbench.core.kinds import ACCURACY, MetricSpec
from workbench.gui.theme import LIGHT, Theme, blend, with_alpha
from workbench.gui.svg_export import export_svg
from workbench.gui.view_registry import register_view
from workbench.gui.worker import FINAL_EVENTS, RecordBatch

# Curves are redrawn at most this often, and only when shown: painting holds the GIL part of the time, which the
# training thread then waits for, and delays other events (bench/gui_responsiveness.py).
REDRAW_INTERVAL_MS = 500
# While a run trains, the plots' ranges grow by a quarter of the data's span at a time (see SteadyViewBox).
LIVE_HEADROOM = 0.25
DEFAULT_SMOOTHING = 0.8  # per-episode values are noisy; TensorBoard's 0.6 leaves them jagged

# Longer series are filtered by scipy's lfilter (in C); shorter ones, like the few points of a live update, by a
# Python loop, so scipy.signal (a second to import) is not loaded at start-up.
LFILTER_MIN_POINTS = 2000


def _lfilter():
    """scipy.signal.lfilter, imported on first use; None without scipy."""
    try:
        from scipy.signal import lfilter
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        return None
    return lfilter


def _biased_ema(x: np.ndarray, weight: float, biased: float) -> np.ndarray:
    """ema_t = w*ema_{t-1} + (1-w)*x_t from ema_0 = ``biased``."""
    lfilter = _lfilter() if x.size >= LFILTER_MIN_POINTS or "scipy.signal" in sys.modules else None
    if lfilter is not None:
        return lfilter([1.0 - weight], [1.0, -weight], x, zi=[weight * biased])[0]
    values, running = [], biased
    for value in x.tolist():
        running = weight * running + (1.0 - weight) * value
        values.append(running)
    return np.array(values, dtype=np.float64)


def debiased_ema(values: np.ndarray, weight: float, state: tuple[float, int, float] = (0.0, 0, math.nan)
                 ) -> tuple[np.ndarray, tuple[float, int, float]]:
    """TensorBoard's smoothing: ema_t = w*ema_{t-1} + (1-w)*x_t, divided by (1 - w^t).

    ``state`` (biased ema, count so far, last finite value) continues a series chunk by chunk, so live updates
    cost only the new points. Non-finite values are replaced by the last finite one (the smoothed curve stays
    drawable after a NaN).
    """
    x = np.array(values, dtype=np.float64)
    biased, count, last_finite = state
    if x.size == 0:
        return x, state
    bad = ~np.isfinite(x)
    if bad.any():
        if math.isfinite(last_finite):
            fill = last_finite
        else:
            fill = float(x[~bad][0]) if (~bad).any() else 0.0
        source = np.where(bad, -1, np.arange(x.size))
        np.maximum.accumulate(source, out=source)
        x = np.where(source >= 0, x[np.maximum(source, 0)], fill)
    if weight <= 0:
        return x, (float(x[-1]), count + x.size, float(x[-1]))
    biased_values = _biased_ema(x, weight, biased)
    t = np.arange(count + 1, count + x.size + 1, dtype=np.float64)
    smoothed = biased_values / (1.0 - np.power(weight, t))
    return smoothed, (float(biased_values[-1]), count + x.size, float(x[-1]))


class GrowingArray:
    """A float64 array with amortised O(1) append; ``data`` is a view of the filled part."""

    def __init__(self, capacity: int = 1024):
        self._buffer = np.empty(capacity, dtype=np.float64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def data(self) -> np.ndarray:
        return self._buffer[: self._size]

    def extend(self, values: Iterable[float] | np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        needed = self._size + values.size
        if needed > self._buffer.size:
            grown = np.empty(max(needed, 2 * self._buffer.size), dtype=np.float64)
            grown[: self._size] = self._buffer[: self._size]
            self._buffer = grown
        self._buffer[self._size: needed] = values
        self._size = needed

    def clear(self) -> None:
        self._size = 0


class SmoothedSeries:
    """Raw (x, y) plus the EMA-smoothed y, updated incrementally."""

    def __init__(self):
        self.x = GrowingArray()
        self.y = GrowingArray()
        self.smoothed = GrowingArray()
        self._state: tuple[float, int, float] = (0.0, 0, math.nan)
        self.weight = DEFAULT_SMOOTHING

    def __len__(self) -> int:
        return len(self.x)

    def extend(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x.extend(x)
        self.y.extend(y)
        smoothed, self._state = debiased_ema(y, self.weight, self._state)
        self.smoothed.extend(smoothed)

    def set_weight(self, weight: float) -> None:
        self.weight = weight
        smoothed, self._state = debiased_ema(self.y.data, weight)
        self.smoothed.clear()
        self.smoothed.extend(smoothed)

    def clear(self) -> None:
        self.x.clear()
        self.y.clear()
        self.smoothed.clear()
        self._state = (0.0, 0, math.nan)


def steady_range(current: tuple[float, float], data: tuple[float, float], padding: float, headroom: float,
                 fill: float = 0.5) -> tuple[float, float] | None:
    """The range to show while live data arrive: None (keep ``current``) while it holds the ``data``'s range and
    the data fill at least ``fill`` of it; otherwise the data's range with ``padding`` of its span on each side,
    plus ``headroom`` on each side the data left ``current`` through, so the next change is a while away."""
    (c0, c1), (d0, d1) = current, data
    if c0 <= d0 and d1 <= c1 and (d1 - d0) >= fill * (c1 - c0):
        return None
    span = (d1 - d0) or abs(d1) or 1.0
    return (d0 - span * (padding + (headroom if d0 < c0 else 0.0)),
            d1 + span * (padding + (headroom if d1 > c1 else 0.0)))


class SteadyViewBox(pg.ViewBox):
    """A ViewBox whose auto-range, while ``headroom`` > 0, moves in steps (see :func:`steady_range`) instead of
    at every new point. A range change regenerates the axes, their grid and tick labels: most of a redraw's
    cost, and painting holds the GIL the training thread needs. With ``headroom`` 0 it fits the data exactly."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.headroom = 0.0

    def setRange(self, rect=None, xRange=None, yRange=None, padding=None, update=True,  # noqa: N802 (Qt's name)
                 disableAutoRange=True):  # noqa: N803 (pyqtgraph's name)
        if not disableAutoRange and rect is None and self.headroom > 0:  # an auto-range update
            xRange = self._steady(0, xRange)
            yRange = self._steady(1, yRange)
            if xRange is None and yRange is None:
                return
        super().setRange(rect, xRange, yRange, padding, update, disableAutoRange)

    def _steady(self, axis: int, wanted) -> tuple[float, float] | None:
        """``wanted``: the data's range widened by the padding updateAutoRange adds, which is taken off again."""
        if wanted is None:
            return None
        padding = self.suggestPadding(axis)
        span = (wanted[1] - wanted[0]) / (1 + 2 * padding)
        data = (wanted[0] + padding * span, wanted[1] - padding * span)
        return steady_range(tuple(self.viewRange()[axis]), data, padding, self.headroom)

    def set_headroom(self, headroom: float) -> None:
        """Steady (> 0) while a run trains; 0 fits the data exactly again at once."""
        changed, self.headroom = headroom != self.headroom, headroom
        if changed and headroom == 0 and any(self.state["autoRange"]):
            self.updateAutoRange()


def _curve(**kwargs) -> pg.PlotDataItem:
    item = pg.PlotDataItem(**kwargs)
    item.setClipToView(True)
    item.setDownsampling(auto=True, method="peak")
    return item


def metric_spec(key: str | None) -> MetricSpec:
    """The metric a kind declares under ``key`` ("accuracy", "mse"); accuracy when None (runs before kinds)."""
    if not key:
        return ACCURACY
    from workbench.core.kinds import get_kind_class, kind_names

    for name in kind_names():
        metric = get_kind_class(name).metric
        if metric.key == key:
            return metric
    return MetricSpec(key, key.capitalize(), higher_is_better=True, percent=False)  # a kind since uninstalled


def metric_name(metric: MetricSpec) -> str:
    """The metric inside a sentence: "accuracy", "MSE"."""
    return metric.title if metric.title[1:2].isupper() else metric.title.lower()


def format_value(metric: MetricSpec, value: float, ci95: float = math.nan) -> str:
    """One decimal for percentages ("61.3% ± 1.2"), four significant digits otherwise ("0.1234 ± 0.011")."""
    if metric.percent:
        return f"{100 * value:.1f}%" + (f" ± {100 * ci95:.1f}" if math.isfinite(ci95) else "")
    return f"{value:.4g}" + (f" ± {ci95:.2g}" if math.isfinite(ci95) else "")


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@register_view
class TrainingView(QWidget):
    """Live and saved training curves. Records for another job id than the current one are ignored."""

    view_title = "Training"
    view_capability = "curves"
    view_order = 10

    exported = Signal(str)  # path written

    @classmethod
    def for_window(cls, window) -> "TrainingView":
        """The window drives this view directly (begin_job, append, load_metrics) as its jobs and runs change."""
        return cls(theme=getattr(window, "theme", LIGHT))

    def __init__(self, parent: QWidget | None = None, theme: Theme = LIGHT):
        super().__init__(parent)
        self.theme = theme
        self.job_id: int | None = None
        self.run_metric = ACCURACY  # of the run shown (not "metric": QWidget.metric() is a Qt method)
        self.loss = SmoothedSeries()
        self.score = SmoothedSeries()  # the metric's per-step values
        self.lr = GrowingArray()
        self.extras: dict[str, GrowingArray] = {}
        self.val_steps = GrowingArray(64)
        self.val_score = GrowingArray(64)
        self.val_ci95 = GrowingArray(64)
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}
        self._overlays: list[dict[str, Any]] = []
        self._dirty = False
        self._drawn_validations = 0  # validation points given to the curves
        self._main_in_legend = True
        self._redraw_timer = QTimer(self)
        self._redraw_timer.setSingleShot(True)
        self._redraw_timer.setInterval(REDRAW_INTERVAL_MS)
        self._redraw_timer.timeout.connect(self.flush)
        self._build()
        self.apply_theme(theme)
        self._refresh_summary()

    # --- widgets ----------------------------------------------------------------------------
    def _build(self) -> None:
        self.title_label = QLabel("No training yet: choose a dataset and an algorithm, then press Run (Ctrl+R).")
        self.title_label.setWordWrap(True)
        self.title_label.setObjectName("trainingTitle")
        top = self._build_top()
        self._build_plots()

        self.summary_label = QLabel()
        self.summary_label.setObjectName("trainingSummary")
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title_label)
        layout.addLayout(top)
        layout.addWidget(self.plots, 1)
        layout.addWidget(self.summary_label)
        self._on_smoothing_changed(self.smoothing_slider.value())

    def _build_top(self) -> QHBoxLayout:
        """Progress bar, smoothing slider and the Export menu."""
        self.progress = QProgressBar()
        self.progress.setObjectName("trainingProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setMinimumWidth(200)
        self.progress.setVisible(False)

        self.smoothing_slider = QSlider(Qt.Orientation.Horizontal)
        self.smoothing_slider.setObjectName("smoothingSlider")
        self.smoothing_slider.setRange(0, 99)
        self.smoothing_slider.setValue(int(round(DEFAULT_SMOOTHING * 100)))
        self.smoothing_slider.setFixedWidth(140)
        self.smoothing_slider.setToolTip("Exponential moving average of the curves (as in TensorBoard), debiased "
                                         "at the start; the raw values are drawn faintly underneath.")
        self.smoothing_value = QLabel()
        self.smoothing_value.setMinimumWidth(32)
        self.smoothing_slider.valueChanged.connect(self._on_smoothing_changed)

        self._build_export_button()

        # The bar sits in a holder that keeps its place when the bar is hidden, so the controls do not move.
        holder = QWidget()
        holder_layout = QHBoxLayout(holder)
        holder_layout.setContentsMargins(0, 0, 0, 0)
        holder_layout.addWidget(self.progress)
        top = QHBoxLayout()
        top.addWidget(holder, 1)
        top.addSpacing(12)
        top.addWidget(QLabel("Smoothing"))
        top.addWidget(self.smoothing_slider)
        top.addWidget(self.smoothing_value)
        top.addSpacing(8)
        top.addWidget(self.export_button)
        return top

    def _build_export_button(self) -> None:
        self.export_button = QToolButton()
        self.export_button.setText("Export")
        self.export_button.setToolTip("Save the curves as an image (PNG, SVG) or their data (CSV)")
        self.export_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.export_button)
        menu.addAction("Image (PNG)…", lambda: self._export_dialog("png"))
        menu.addAction("Vector image (SVG)…", lambda: self._export_dialog("svg"))
        menu.addAction("Data (CSV)…", lambda: self._export_dialog("csv"))
        self.export_button.setMenu(menu)

    def _build_plots(self) -> None:
        """The loss plot above the metric plot (x axes linked) and their curves."""
        self.plots = pg.GraphicsLayoutWidget()
        self.plots.setObjectName("trainingPlots")
        self.loss_plot = self.plots.addPlot(row=0, col=0, viewBox=SteadyViewBox())
        self.acc_plot = self.plots.addPlot(row=1, col=0, viewBox=SteadyViewBox())
        self.loss_plot.setTitle("Meta-train loss")
        self.loss_plot.setLabel("left", "loss")
        for plot in (self.loss_plot, self.acc_plot):
            plot.setLabel("bottom", "meta-training step")
            plot.showGrid(x=True, y=True)
            plot.setClipToView(True)
            plot.setDownsampling(auto=True, mode="peak")
            plot.getAxis("left").setWidth(56)  # same width in both plots, so their x axes line up
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setStyle(maxTickLevel=0)  # major grid lines only: minor ones cost paint time
                # An axis draws its grid over the whole plot: kept as a pixmap, a redraw of the curves does not
                # replay its lines and labels (they change only with the range, see SteadyViewBox).
                plot.getAxis(axis).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.acc_plot.setXLink(self.loss_plot)
        self._show_metric()
        self.legend = self.acc_plot.addLegend(offset=(-10, -10))  # bottom right: curves rise from the bottom left

        self.loss_raw = _curve()
        self.loss_smooth = _curve(name="meta-train")
        self.acc_raw = _curve()
        self.acc_smooth = _curve(name="meta-train (smoothed)")
        self.val_upper = _curve()
        self.val_lower = _curve()
        self.val_band = pg.FillBetweenItem(self.val_upper, self.val_lower)
        self.val_curve = _curve(name="validation, 95% CI", symbol="o", symbolSize=6)
        self.loss_plot.addItem(self.loss_raw)
        self.loss_plot.addItem(self.loss_smooth)
        self.acc_plot.addItem(self.acc_raw)
        self.acc_plot.addItem(self.acc_smooth)
        self.acc_plot.addItem(self.val_upper)
        self.acc_plot.addItem(self.val_lower)
        self.acc_plot.addItem(self.val_band)
        self.acc_plot.addItem(self.val_curve)

    def set_metric(self, key: str | None) -> None:
        """Label the second plot, its range and the summary after the run's metric (accuracy, MSE, ...)."""
        metric = metric_spec(key)
        if metric != self.run_metric:
            self.run_metric = metric
            self._show_metric()

    def _show_metric(self) -> None:
        metric = self.run_metric
        self.acc_plot.setTitle(metric.title + ("" if metric.higher_is_better else " (lower is better)"),
                               color=self.theme.plot_foreground)
        self.acc_plot.setLabel("left", metric_name(metric))
        if metric.percent:
            self.acc_plot.setLimits(yMin=-0.05, yMax=1.05)
            self.acc_plot.setYRange(0, 1, padding=0.02)
        else:
            self.acc_plot.setLimits(yMin=None, yMax=None)
            self.acc_plot.enableAutoRange(axis="y")
        if hasattr(self, "legend"):  # where the curves are not: they rise to the top or fall to the bottom
            corner = (1, 1) if metric.higher_is_better else (1, 0)
            self.legend.anchor(corner, corner, offset=(-10, -10 if metric.higher_is_better else 10))

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.plots.setBackground(theme.plot_background)
        for plot in (self.loss_plot, self.acc_plot):
            for axis in ("left", "bottom"):
                ax = plot.getAxis(axis)
                ax.setPen(pg.mkPen(theme.plot_foreground))
                ax.setTextPen(pg.mkPen(theme.plot_foreground))
            plot.titleLabel.setText(plot.titleLabel.text, color=theme.plot_foreground)
            plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)
        self.legend.setLabelTextColor(theme.plot_foreground)
        for _, label in self.legend.items:  # existing entries keep their colour otherwise
            label.setText(label.text, color=theme.plot_foreground)
        self.legend.setBrush(pg.mkBrush(with_alpha(theme.plot_background, 200)))
        # The faint raw curve is pre-blended with the background: opaque lines paint much faster than translucent.
        raw_train = blend(theme.train, theme.plot_background, theme.raw_alpha / 255)
        self.loss_raw.setPen(pg.mkPen(raw_train, width=1))
        self.acc_raw.setPen(pg.mkPen(raw_train, width=1))
        self.loss_smooth.setPen(pg.mkPen(theme.train, width=2))
        self.acc_smooth.setPen(pg.mkPen(theme.train, width=2))
        self.val_curve.setPen(pg.mkPen(theme.validation, width=2))
        self.val_curve.setSymbolBrush(pg.mkBrush(theme.validation))
        self.val_curve.setSymbolPen(pg.mkPen(theme.validation))
        transparent = pg.mkPen(None)
        self.val_upper.setPen(transparent)
        self.val_lower.setPen(transparent)
        self.val_band.setBrush(pg.mkBrush(with_alpha(theme.validation, theme.band_alpha)))
        for index, overlay in enumerate(self._overlays):
            self._style_overlay(overlay, index)

    # --- data -------------------------------------------------------------------------------
    def clear(self) -> None:
        self.loss.clear()
        self.score.clear()
        self.lr.clear()
        self.extras = {}
        self.val_steps.clear()
        self.val_score.clear()
        self.val_ci95.clear()
        self.events = []
        self.last = {}
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("")
        self.progress.setVisible(False)  # shown again by a job or a saved run with known steps
        self._redraw()
        self._refresh_summary()

    def begin_job(self, job_id: int, title: str = "", total_steps: int = 0,
                  history: Iterable[dict[str, Any]] | None = None, metric: str | None = None) -> None:
        """Forget the previous curves and accept records of ``job_id`` only. ``history``: records a resumed run
        already has (its metrics.jsonl), drawn first so the curves continue. ``metric``: the kind's metric key
        (the records name it too)."""
        self.job_id = job_id
        self.clear()
        self.set_metric(metric)
        self._set_live(True)
        if history:
            batch = RecordBatch(self.run_metric.key)
            for record in history:
                if record.get("event", "step") not in FINAL_EVENTS:
                    batch.add(dict(record))
            self._add_payload(batch.payload())
            self._redraw()
        self.title_label.setText(title or "Training…")
        self.progress.setVisible(True)
        self.progress.setRange(0, max(1, total_steps))
        self.progress.setValue(0)
        self.progress.setFormat("preparing…")

    def set_loading(self, done: int, total: int, message: str) -> None:
        self.progress.setVisible(True)
        if total > 0:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
        else:
            self.progress.setRange(0, 0)  # busy indicator
        self.progress.setFormat(message or "loading…")

    def append(self, job_id: int, payload: dict[str, Any]) -> bool:
        """Add a batch of records from the worker; returns False (and changes nothing) for a stale job id."""
        if self.job_id is None or job_id != self.job_id:
            return False
        self._add_payload(payload)
        self._dirty = True
        if any(event.get("event") in FINAL_EVENTS for event in payload.get("events") or []):
            self._set_live(False)  # the finished curves fill the plots
        if payload.get("events"):  # validation results and the end of a run show at once
            self.flush()
        elif not self._redraw_timer.isActive() and self.isVisible():  # a hidden view catches up in showEvent
            self._redraw_timer.start()
        return True

    def flush(self) -> None:
        """Draw what has arrived. Live records are drawn at most every REDRAW_INTERVAL_MS, and only when shown."""
        self._redraw_timer.stop()
        if not self._dirty or not self.isVisible():
            return  # a hidden view catches up in showEvent
        self._dirty = False
        self._redraw(live=True)
        self._refresh_progress()
        self._refresh_summary()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.flush()

    def _add_payload(self, payload: dict[str, Any]) -> None:
        if payload.get("metric"):
            self.set_metric(payload["metric"])
        key = self.run_metric.key
        steps = payload.get("steps")
        if steps is not None and len(steps):
            previous = len(self.loss)
            self.loss.extend(steps, payload["loss"])
            self.score.extend(steps, payload.get(key, np.full(len(steps), np.nan)))
            self.lr.extend(payload.get("lr", np.full(len(steps), np.nan)))
            for name, values in (payload.get("extras") or {}).items():
                column = self.extras.get(name)
                if column is None:
                    column = self.extras[name] = GrowingArray()
                    column.extend(np.full(previous, np.nan))
                column.extend(values)
            for column in self.extras.values():
                if len(column) < len(self.loss):
                    column.extend(np.full(len(self.loss) - len(column), np.nan))
        val_steps = payload.get("val_steps")
        if val_steps is not None and len(val_steps):
            self.val_steps.extend(val_steps)
            self.val_score.extend(payload.get(f"val_{key}", np.full(len(val_steps), np.nan)))
            self.val_ci95.extend(payload["val_ci95"])
        self.events.extend(payload.get("events") or [])
        if payload.get("last"):
            self.last = dict(payload["last"])

    def load_metrics(self, records: Iterable[dict[str, Any]], title: str = "", metric: str | None = None) -> None:
        """Show a saved run's curves (records as in metrics.jsonl; ``metric``: the run's kind's metric key)."""
        self.job_id = None
        self.clear()
        self.set_metric(metric)
        self._set_live(False)
        batch = RecordBatch(self.run_metric.key)
        for record in records:
            batch.add(dict(record))
        self._add_payload(batch.payload())
        if title:
            self.title_label.setText(title)
        self._redraw()
        self._refresh_progress()
        self._refresh_summary()
        self.loss_plot.enableAutoRange()
        self.acc_plot.enableAutoRange(axis="x")

    def _set_live(self, live: bool) -> None:
        for plot in (self.loss_plot, self.acc_plot):
            plot.getViewBox().set_headroom(LIVE_HEADROOM if live else 0.0)
        if live:  # the steps axis is the loss plot's (the metric plot follows it), else the two would take turns
            self.acc_plot.enableAutoRange(axis="x", enable=False)

    def has_data(self) -> bool:
        return len(self.loss) > 0

    # --- overlays ---------------------------------------------------------------------------
    def add_overlay(self, name: str, records: Iterable[dict[str, Any]], pinned: bool = False) -> None:
        """Draw another run's smoothed loss and validation metric (dashed when ``pinned``, e.g. a baseline)."""
        batch = RecordBatch(self.run_metric.key)
        for record in records:
            batch.add(dict(record))
        payload = batch.payload()
        if not self.has_data() and not self._overlays:
            self.set_metric(payload["metric"])  # comparing runs only: label the plot after the first
        key = payload["metric"]
        payload["score"], payload["val_score"] = payload[key], payload[f"val_{key}"]
        weight = self.smoothing_slider.value() / 100
        loss_smoothed, _ = debiased_ema(payload["loss"], weight)
        acc_smoothed, _ = debiased_ema(payload["score"], weight)
        overlay = {
            "name": name, "pinned": pinned,
            "loss": _curve(name=name),
            "score": _curve(),
            "validation": _curve(name=f"{name} (validation)", symbol="t", symbolSize=6),
            "raw": payload,
        }
        # Data only after the items are in their plots: clip-to-view needs the view box.
        self.loss_plot.addItem(overlay["loss"])
        self.acc_plot.addItem(overlay["score"])
        self.acc_plot.addItem(overlay["validation"])
        overlay["loss"].setData(payload["steps"], loss_smoothed)
        overlay["score"].setData(payload["steps"], acc_smoothed)
        overlay["validation"].setData(payload["val_steps"], payload["val_score"])
        self._overlays.append(overlay)
        self._style_overlay(overlay, len(self._overlays) - 1)
        self._refresh_summary()

    def _style_overlay(self, overlay: dict[str, Any], index: int) -> None:
        color = self.theme.overlays[index % len(self.theme.overlays)]
        style = Qt.PenStyle.DashLine if overlay["pinned"] else Qt.PenStyle.SolidLine
        overlay["loss"].setPen(pg.mkPen(color, width=1.5, style=style))
        overlay["score"].setPen(pg.mkPen(with_alpha(color, 150), width=1, style=style))
        overlay["validation"].setPen(pg.mkPen(color, width=2, style=style))
        overlay["validation"].setSymbolBrush(pg.mkBrush(color))
        overlay["validation"].setSymbolPen(pg.mkPen(color))

    def overlay_names(self) -> list[str]:
        return [overlay["name"] for overlay in self._overlays]

    def clear_overlays(self) -> None:
        for overlay in self._overlays:
            self.loss_plot.removeItem(overlay["loss"])
            self.acc_plot.removeItem(overlay["score"])
            self.acc_plot.removeItem(overlay["validation"])
            for item in (overlay["loss"], overlay["validation"]):
                self.legend.removeItem(item)
        self._overlays = []
        self._refresh_summary()

    # --- drawing ----------------------------------------------------------------------------
    def _on_smoothing_changed(self, value: int) -> None:
        weight = value / 100
        self.smoothing_value.setText(f"{weight:.2f}")
        self.loss.set_weight(weight)
        self.score.set_weight(weight)
        for overlay in self._overlays:
            raw = overlay["raw"]
            overlay["loss"].setData(raw["steps"], debiased_ema(raw["loss"], weight)[0])
            overlay["score"].setData(raw["steps"], debiased_ema(raw["score"], weight)[0])
        self._redraw()

    @property
    def smoothing(self) -> float:
        return self.smoothing_slider.value() / 100

    def _redraw(self, live: bool = False) -> None:
        """Give the curves their data; ``live``: only new steps arrived, so the validation curves are set only
        when they have new points (each setData costs GUI-thread time while training)."""
        self._dirty = False
        x = self.loss.x.data
        show_raw = self.smoothing_slider.value() > 0
        self.loss_raw.setData(x, self.loss.y.data) if show_raw else self.loss_raw.setData([], [])
        self.acc_raw.setData(x, self.score.y.data) if show_raw else self.acc_raw.setData([], [])
        self.loss_smooth.setData(x, self.loss.smoothed.data)
        self.acc_smooth.setData(x, self.score.smoothed.data)
        vx, vy, ci = self.val_steps.data, self.val_score.data, self.val_ci95.data
        if not live or len(vx) != self._drawn_validations:
            ci = np.nan_to_num(ci, nan=0.0)
            self.val_curve.setData(vx, vy)
            self.val_upper.setData(vx, vy + ci)
            self.val_lower.setData(vx, vy - ci)
            self.val_band.setVisible(len(vx) > 0)  # an emptied band would keep its old outline
            self._drawn_validations = len(vx)
        self._sync_legend()

    def _sync_legend(self) -> None:
        """List this run's curves in the legend only while there are some (not when only comparing runs)."""
        wanted = len(self.loss) > 0 or len(self.val_steps) > 0
        if wanted == self._main_in_legend:
            return
        if wanted:
            self.legend.addItem(self.acc_smooth, "meta-train (smoothed)")
            self.legend.addItem(self.val_curve, "validation, 95% CI")
        else:
            self.legend.removeItem(self.acc_smooth)
            self.legend.removeItem(self.val_curve)
        self._main_in_legend = wanted

    def _refresh_progress(self) -> None:
        last = self.last
        total = int(last.get("total_steps") or 0)
        step = int(last.get("step") or 0)
        if total <= 0:
            return
        self.progress.setVisible(True)
        self.progress.setRange(0, total)
        self.progress.setValue(min(step, total))
        event = last.get("event", "step")
        if event in FINAL_EVENTS:
            self.progress.setFormat(f"{event} at step {step:,} of {total:,}")
        else:
            self.progress.setFormat(self.progress_text())

    def progress_text(self) -> str:
        last = self.last
        if not last:
            return ""
        step, total = int(last.get("step") or 0), int(last.get("total_steps") or 0)
        rate = last.get("steps_per_s", math.nan)
        rate_text = f"{rate:.1f} steps/s" if isinstance(rate, float) and math.isfinite(rate) else "– steps/s"
        return f"step {step:,} / {total:,} · {rate_text} · ETA {_format_duration(last.get('eta_s', math.nan))}"

    def _refresh_summary(self) -> None:
        parts = []
        metric, name = self.run_metric, metric_name(self.run_metric)
        if len(self.loss):
            parts.append(f"last loss {self.loss.smoothed.data[-1]:.3f} (smoothed)")
            parts.append(f"train {name} {format_value(metric, self.score.smoothed.data[-1])}")
        if len(self.val_score):
            values = self.val_score.data
            if np.isfinite(values).any():
                best = int(np.nanargmax(values) if metric.higher_is_better else np.nanargmin(values))
            else:
                best = len(values) - 1
            parts.append(f"best validation {name} {format_value(metric, values[best], self.val_ci95.data[best])} "
                         f"at step {int(self.val_steps.data[best]):,}")
        message = self.last.get("message") if self.last else ""
        if message and self.last.get("event") in ("diverged", "stopped", "budget", "finished"):
            parts.append(message)
        if not parts and self._overlays:
            parts.append("Comparing " + ", ".join(overlay["name"] for overlay in self._overlays))
        self.summary_label.setText(" · ".join(parts) if parts else "Curves appear here while a run trains.")

    # --- export -----------------------------------------------------------------------------
    def _export_dialog(self, kind: str) -> None:
        filters = {"png": "PNG image (*.png)", "svg": "SVG image (*.svg)", "csv": "CSV data (*.csv)"}
        path, _ = QFileDialog.getSaveFileName(self, "Export curves", f"training-curves.{kind}", filters[kind])
        if path:
            self.export(path, kind)

    def export(self, path: str | Path, kind: str | None = None) -> Path:
        path = Path(path)
        kind = (kind or path.suffix.lstrip(".")).lower()
        self.flush()
        if kind == "csv":
            self.export_csv(path)
        elif kind in ("svg", "png"):
            with self._axes_uncached():  # drawn afresh at the export's size, as vectors in an SVG
                if kind == "svg":
                    self._export_svg(path)
                else:
                    exporter = pg.exporters.ImageExporter(self.plots.scene())
                    exporter.parameters()["width"] = max(800, int(self.plots.width()))
                    exporter.export(str(path))
        else:
            raise ValueError(f"cannot export curves as {kind!r}; use png, svg or csv")
        self.exported.emit(str(path))
        return path

    @contextmanager
    def _axes_uncached(self):
        axes = [plot.getAxis(name) for plot in (self.loss_plot, self.acc_plot) for name in ("left", "bottom")]
        modes = [axis.cacheMode() for axis in axes]
        for axis in axes:
            axis.setCacheMode(QGraphicsItem.CacheMode.NoCache)
        try:
            yield
        finally:
            for axis, mode in zip(axes, modes):
                axis.setCacheMode(mode)

    def _export_svg(self, path: Path) -> None:
        export_svg(self.plots.scene(), path)

    def export_csv(self, path: str | Path) -> Path:
        """All series in one table: one row per step; validation columns are empty where none ran."""
        path = Path(path)
        rows: dict[int, dict[str, Any]] = {}
        extras = sorted(self.extras)
        key = self.run_metric.key  # columns named after the metric, as in metrics.jsonl
        columns = ["step", "loss", key, "lr", "loss_smoothed", f"{key}_smoothed", *extras, f"val_{key}", "val_ci95"]
        for i, step in enumerate(self.loss.x.data):
            row = rows.setdefault(int(step), {})
            row.update({"loss": self.loss.y.data[i], key: self.score.y.data[i],
                        "loss_smoothed": self.loss.smoothed.data[i], f"{key}_smoothed": self.score.smoothed.data[i]})
            if i < len(self.lr):
                row["lr"] = self.lr.data[i]
            for name in extras:
                row[name] = self.extras[name].data[i]
        for i, step in enumerate(self.val_steps.data):
            rows.setdefault(int(step), {}).update({f"val_{key}": self.val_score.data[i],
                                                   "val_ci95": self.val_ci95.data[i]})

        def cell(value: Any) -> str:
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                return ""
            return repr(float(value))

        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for step in sorted(rows):
                row = rows[step]
                writer.writerow([step] + [cell(row.get(name)) for name in columns[1:]])
        return path

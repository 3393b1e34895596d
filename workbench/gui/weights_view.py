"""The "Sample weights" view: the weight function of an algorithm that weights its samples (capability
"sample_weights"), replayable over training.

Data source: ``weight_history.npz`` in the run folder, which the algorithm rewrites at each snapshot. Its optional
entries describe it: ``caption`` (the setting, in the title), ``weight_label`` (the weight axis) and per-sample
records ``sample_losses``/``sample_weights``/``sample_noisy`` [snapshots, n] (NaN-padded), drawn as dots of weight
against loss where the weights are per sample rather than a function of the loss. While a run trains, the view
re-reads the file when it changed (checked at most once a second, on the worker's record signal); a saved run is
read once. So the view never touches the model of a running training thread, and it works the same after a
restart.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QScrollArea, QSizePolicy, QSlider, QSplitter, QStackedWidget,
                               QVBoxLayout, QWidget)

from workbench.gui.qimage import to_qimage
from workbench.gui.theme import LIGHT, Theme
from workbench.gui.view_registry import feeders_text, register_view

HISTORY_FILE = "weight_history.npz"  # the name the weighting algorithms write (kept import-free of torch)
CAPABILITY = "sample_weights"
# Entries of the history that are data, not a description of the run's setting.
HISTORY_ARRAYS = {"steps", "curves", "loss_grid", "hist_clean", "hist_noisy", "clean_mean", "noisy_mean",
                  "test_accuracy", "val_accuracy", "thumbnails", "thumb_weights", "thumb_noisy", "thumb_losses", "setting", "caption",
                  "sample_losses", "sample_weights", "sample_noisy", "algorithm", "weight_label"}
DEFAULT_WEIGHT_LABEL = "learned weight"  # histories from before ``weight_label`` are of a learned weighting
RELOAD_SECONDS = 1.0
THUMB_PIXELS = 48

EXPLANATION = (
    "<h3>Sample weights</h3>"
    "<p>This view shows how an algorithm that <i>learns to weight</i> its training samples treats them: "
    "the learned curve <b>weight(loss)</b>, how it changed over training (drag the time slider), "
    "histograms of the training losses of clean and noisy samples, and training images sorted by the weight "
    "they get.</p>"
    "<p>{feeders} Train one (choose it in the Algorithm panel), for example with part of the labels "
    "corrupted, or open such a run in the Runs view.</p>"
    "<p><i>{reason}</i></p>")


def learns_weights(algorithm: str) -> bool:
    """Whether the algorithm declares the capability this view shows."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.errors import WorkbenchError

    try:
        return get_algorithm(algorithm).has(CAPABILITY)
    except WorkbenchError:
        return False


def history_caption(history: dict[str, np.ndarray]) -> str:
    """What the history says about its run's setting: its ``caption``, else its other scalar entries."""
    caption = history.get("caption")
    if caption is not None and caption.ndim == 0:
        return str(caption)
    parts = []
    for key, value in history.items():
        if key in HISTORY_ARRAYS or np.ndim(value) != 0:
            continue
        item = value.item()
        text = f"{item:g}" if isinstance(item, float) else str(item)
        parts.append(f"{key.replace('_', ' ')} {text}")
    return ", ".join(parts)


def history_text(history: dict[str, np.ndarray], key: str) -> str:
    """A text entry of the history ("" when absent or not a single string)."""
    value = history.get(key)
    return str(value) if value is not None and np.ndim(value) == 0 else ""


def sample_points(history: dict[str, np.ndarray], index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The finite (loss, weight, noisy) records of one snapshot, or None when the history keeps none."""
    if any(history.get(key) is None for key in ("sample_losses", "sample_weights", "sample_noisy")):
        return None
    losses = history["sample_losses"][index].astype(np.float32)
    weights = history["sample_weights"][index].astype(np.float32)
    finite = np.isfinite(losses) & np.isfinite(weights)
    return losses[finite], weights[finite], history["sample_noisy"][index].astype(bool)[finite]


def finite_max(*arrays: np.ndarray | None) -> float | None:
    """The largest finite value of the arrays (None when there is none)."""
    values = [np.asarray(a, np.float32).ravel() for a in arrays if a is not None]
    values = np.concatenate(values) if values else np.zeros(0, np.float32)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else None


def histogram_mean(counts: np.ndarray, edges: np.ndarray) -> float:
    """The mean loss of a snapshot's histogram (bin centres; NaN when empty): where its samples sit on the curve."""
    counts = np.asarray(counts, np.float64)
    total = counts.sum()
    return float((counts * (edges[:-1] + edges[1:]) / 2).sum() / total) if total > 0 else float("nan")


def best_validation_index(history: dict[str, np.ndarray]) -> int | None:
    """The snapshot with the best clean validation accuracy, when the history records one."""
    validation = history.get("val_accuracy")
    if validation is None or len(validation) != len(history["steps"]):
        return None
    validation = np.asarray(validation, np.float64)
    return int(np.nanargmax(validation)) if np.isfinite(validation).any() else None


def read_history(path: str | Path) -> dict[str, np.ndarray] | None:
    """The history arrays of a run folder (or an .npz file); None if there is none or it is unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError):
        return None


def weight_text(weight: float) -> str:
    """Two decimals, or two significant digits for the tiny weights a collapsed curve gives."""
    weight = float(weight)
    return f"{weight:.2f}" if weight >= 0.01 or weight == 0.0 else f"{weight:.1e}"


def thumbnail_strip(images: np.ndarray, weights: np.ndarray, noisy: np.ndarray, theme: Theme,
                    size: int = THUMB_PIXELS) -> QPixmap:
    """Images sorted by increasing weight, framed red (noisy label) or green (clean), weight written under."""
    order = np.argsort(weights, kind="stable")
    gap, text_h = 4, 14
    pixmap = QPixmap(max(1, len(order) * (size + gap)), size + text_h + 2 * gap)
    pixmap.fill(QColor(theme.plot_background))
    painter = QPainter(pixmap)
    try:
        for slot, index in enumerate(order):
            qimage = to_qimage(images[index])
            x = gap + slot * (size + gap)
            painter.drawImage(x, gap, qimage.scaled(size, size, Qt.AspectRatioMode.IgnoreAspectRatio,
                                                    Qt.TransformationMode.SmoothTransformation))
            painter.setPen(QPen(QColor(theme.error_text if noisy[index] else theme.ok_text), 3))
            painter.drawRect(x, gap, size - 1, size - 1)
            painter.setPen(QColor(theme.plot_foreground))
            painter.drawText(x, gap + size, size, text_h, Qt.AlignmentFlag.AlignCenter, weight_text(weights[index]))
    finally:
        painter.end()
    return pixmap


@register_view
class WeightsView(QWidget):
    """Explains itself for algorithms without a learned weighting; otherwise plots the run's history."""

    view_title = "Sample weights"
    view_capability = CAPABILITY
    view_order = 70

    snapshot_changed = Signal(int)  # index of the snapshot shown

    def __init__(self, store=None, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.theme = theme
        self.history: dict[str, np.ndarray] | None = None
        self.run_folder: Path | None = None
        self.run_title = ""  # the shown run's name, or its folder's
        self.live_job: int | None = None
        self._last_check = 0.0
        self._loaded_mtime: float | None = None
        self._follow_latest = True
        self._best_index: int | None = None  # the history's best clean validation snapshot
        self._build()
        self.apply_theme(theme)
        self.show_explanation("No run is shown yet.")

    def _build(self) -> None:
        """Two pages: the explanation, and the run's weights."""
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

    def _build_content(self) -> QWidget:
        content = QWidget()
        self.title = QLabel()
        self.title.setWordWrap(True)
        plots = self._build_plots()
        scrubber = self._build_scrubber()
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        strip_scroll = self._build_strip()

        layout = QVBoxLayout(content)
        layout.addWidget(self.title)
        layout.addWidget(plots, 1)
        layout.addLayout(scrubber)
        layout.addWidget(self.summary)
        layout.addWidget(self.strip_caption)
        layout.addWidget(strip_scroll)
        return content

    def _build_plots(self) -> QSplitter:
        """The weight function (learned weight by loss) beside the loss histograms of clean and noisy samples."""
        self.curve_plot = pg.PlotWidget()
        self.curve_plot.setLabel("bottom", "training loss of a sample")
        self.curve_plot.setLabel("left", DEFAULT_WEIGHT_LABEL)
        self.curve_plot.setMouseEnabled(x=False, y=False)
        self.curve_plot.getAxis("left").enableAutoSIPrefix(False)
        self.curve_legend = self.curve_plot.addLegend(offset=(-10, 10))
        # Per-sample dots first, so the curves draw over them; their legend entries come and go with them.
        self.clean_samples = pg.ScatterPlotItem(size=5, pen=None)
        self.noisy_samples = pg.ScatterPlotItem(size=5, pen=None)
        self.curve_plot.addItem(self.clean_samples)
        self.curve_plot.addItem(self.noisy_samples)
        self.first_curve = self.curve_plot.plot([], [])
        self.curve = self.curve_plot.plot([], [])
        self.hist_plot = pg.PlotWidget()
        self.hist_plot.setLabel("bottom", "training loss of a sample")
        self.hist_plot.setLabel("left", "samples")
        self.hist_plot.setMouseEnabled(x=False, y=False)
        self.hist_legend = self.hist_plot.addLegend(offset=(-10, 10))
        self.clean_hist = self.hist_plot.plot([], [], stepMode="center", fillLevel=0, name="clean labels")
        self.noisy_hist = self.hist_plot.plot([], [], stepMode="center", fillLevel=0, name="noisy labels")
        # Where the clean and the noisy samples sit on the curve: at their mean loss, with the weight written.
        self.clean_marker = pg.ScatterPlotItem(size=13, symbol="o")
        self.noisy_marker = pg.ScatterPlotItem(size=13, symbol="s")
        self.clean_marker_text = pg.TextItem(anchor=(0, 1))
        self.noisy_marker_text = pg.TextItem(anchor=(0, 0))
        for item in (self.clean_marker, self.noisy_marker, self.clean_marker_text, self.noisy_marker_text):
            self.curve_plot.addItem(item)
        self.means_plot = self._build_means_plot()
        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(self.hist_plot)
        side.addWidget(self.means_plot)
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.curve_plot)
        plots.addWidget(side)
        plots.setSizes([560, 440])
        # Three plots' preferred heights would make the tab scroll; they take the height that is there instead.
        plots.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Ignored)
        plots.setMinimumHeight(320)
        return plots

    def _build_means_plot(self) -> pg.PlotWidget:
        """Mean weight of clean and of noisy samples over training, the shown snapshot marked, values written."""
        plot = pg.PlotWidget()
        plot.setLabel("bottom", "training step")
        plot.setLabel("left", "mean weight")
        plot.setMouseEnabled(x=False, y=False)
        plot.getAxis("left").enableAutoSIPrefix(False)
        self.means_legend = plot.addLegend(offset=(-10, 10))
        self.clean_means = plot.plot([], [], name="clean labels")
        self.noisy_means = plot.plot([], [], name="noisy labels")
        self.now_line = pg.InfiniteLine(angle=90, movable=False)
        self.best_line = pg.InfiniteLine(angle=90, movable=False, label="best validation",
                                         labelOpts={"position": 0.5, "anchors": [(1, 0.5), (1, 0.5)]})
        plot.addItem(self.now_line)
        plot.addItem(self.best_line)
        self.means_text = pg.TextItem(anchor=(0, 0))
        self.means_text.setParentItem(plot.getPlotItem().vb)  # fixed in the corner, whatever the ranges
        self.means_text.setPos(8, 4)
        return plot

    def _build_scrubber(self) -> QHBoxLayout:
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider.setToolTip("Replay how the weight function changed during training.")
        self.slider.valueChanged.connect(self._on_slider)
        self.step_label = QLabel()
        self.step_label.setMinimumWidth(140)
        scrubber = QHBoxLayout()
        scrubber.addWidget(QLabel("Training time:"))
        scrubber.addWidget(self.slider, 1)
        scrubber.addWidget(self.step_label)
        return scrubber

    def _build_strip(self) -> QScrollArea:
        """The training images sorted by weight, in a row that scrolls, and its caption."""
        self.strip = QLabel()
        self.strip.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        strip_scroll = QScrollArea()
        strip_scroll.setWidget(self.strip)
        strip_scroll.setWidgetResizable(False)
        strip_scroll.setFixedHeight(THUMB_PIXELS + 44)
        strip_scroll.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.strip_caption = QLabel("Training images sorted by weight (lowest first); red frame: corrupted label, "
                                    "green: correct label.")
        return strip_scroll

    # --- wiring ----------------------------------------------------------------------------------
    @classmethod
    def for_window(cls, window) -> "WeightsView":
        """A view following the window's training jobs and the runs opened in its Runs view."""
        view = cls(getattr(window, "store", None), getattr(window, "theme", LIGHT))
        window.training_started.connect(view.on_training_started)
        window.training_records.connect(view.on_training_records)
        window.training_finished.connect(view.on_training_finished)
        window.theme_changed.connect(view.apply_theme)
        runs_view = getattr(window, "runs_view", None)
        if runs_view is not None:
            runs_view.open_run.connect(view.show_run)
        return view

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        for plot in (self.curve_plot, self.hist_plot, self.means_plot):
            plot.setBackground(theme.plot_background)
            plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setPen(theme.plot_foreground)
                plot.getAxis(axis).setTextPen(theme.plot_foreground)
        self.curve.setPen(pg.mkPen(theme.train, width=3))
        self.first_curve.setPen(pg.mkPen(theme.muted_text, width=1, style=Qt.PenStyle.DashLine))
        clean, noisy = QColor(theme.ok_text), QColor(theme.error_text)
        self.clean_hist.setPen(pg.mkPen(clean, width=2))
        self.noisy_hist.setPen(pg.mkPen(noisy, width=2))
        clean.setAlpha(70)
        noisy.setAlpha(70)
        self.clean_hist.setBrush(clean)
        self.noisy_hist.setBrush(noisy)
        clean.setAlpha(140)
        noisy.setAlpha(140)
        self.clean_samples.setBrush(pg.mkBrush(clean))
        self.noisy_samples.setBrush(pg.mkBrush(noisy))
        solid_clean, solid_noisy = QColor(theme.ok_text), QColor(theme.error_text)
        for marker, colour in ((self.clean_marker, solid_clean), (self.noisy_marker, solid_noisy)):
            marker.setBrush(pg.mkBrush(colour))
            marker.setPen(pg.mkPen(theme.plot_foreground, width=1.5))
        self.clean_marker_text.setColor(solid_clean)
        self.noisy_marker_text.setColor(solid_noisy)
        self.clean_means.setPen(pg.mkPen(solid_clean, width=2))
        self.noisy_means.setPen(pg.mkPen(solid_noisy, width=2))
        self.now_line.setPen(pg.mkPen(theme.plot_foreground, width=1))
        self.best_line.setPen(pg.mkPen(theme.muted_text, width=1, style=Qt.PenStyle.DashLine))
        self.best_line.label.setColor(theme.muted_text)
        self.means_text.setColor(theme.plot_foreground)
        for legend in (self.curve_legend, self.hist_legend, self.means_legend):
            legend.setLabelTextColor(theme.plot_foreground)
            for _, label in legend.items:  # pyqtgraph recolours a label only when its text is set again
                label.setText(label.text)
        if self.history is not None:
            self._draw(self.slider.value())

    # --- sources ---------------------------------------------------------------------------------
    def _algorithm_of(self, run) -> str:
        try:
            return run.config.algorithm.name
        except Exception:  # a damaged config: show the explanation rather than fail
            return ""

    def show_run(self, run_or_id) -> None:
        """Show a saved run (Run object, id or folder)."""
        run = run_or_id
        if isinstance(run_or_id, (str, Path)) and Path(str(run_or_id)).is_dir():
            self._show_folder(Path(run_or_id), None)
            return
        if isinstance(run_or_id, str):
            if self.store is None:
                return
            try:
                run = self.store.get(run_or_id)
            except Exception as exc:  # the run vanished: say so instead of failing
                self.show_explanation(f"Run {run_or_id} cannot be read: {exc}")
                return
        self._show_folder(Path(run.path), self._algorithm_of(run), _run_name(run))

    def _show_folder(self, folder: Path, algorithm: str | None, name: str = "") -> None:
        self.run_folder = folder
        self.run_title = name or folder.name  # the run's name when it has one, as the other views show it
        self._loaded_mtime = None
        if algorithm is not None and not learns_weights(algorithm):
            self.history = None
            self.show_explanation(f"The run shown ({folder.name}) uses {algorithm or 'an unknown algorithm'}, "
                                  f"which learns no sample weighting.")
            return
        if not self._reload() and self.history is None:
            self.show_explanation(f"Run {folder.name} has no weight history yet: it appears after the first "
                                  f"training step's snapshot.")

    def on_training_started(self, job_id: int, info: dict) -> None:
        folder = info.get("run_path") if isinstance(info, dict) else None
        algorithm, name = None, ""
        if self.store is not None and info.get("run_id"):
            try:
                run = self.store.get(info["run_id"])
                algorithm, name = self._algorithm_of(run), _run_name(run)
            except Exception:
                algorithm = None
        self.live_job = job_id
        self._follow_latest = True
        self.history = None
        if folder:
            self._show_folder(Path(folder), algorithm, name)

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
            self._reload()
        self.live_job = None

    def _reload(self) -> bool:
        """Re-read the history file if it changed; True if new data is shown."""
        path = self.run_folder / HISTORY_FILE if self.run_folder is not None else None
        if path is None or not path.is_file():
            return False
        mtime = path.stat().st_mtime
        if mtime == self._loaded_mtime:
            return False
        history = read_history(path)
        if history is None or history.get("steps") is None or history["steps"].size == 0:
            return False
        self._loaded_mtime = mtime
        self.set_history(history, title=f"Run {self.run_title}")
        return True

    # --- drawing ---------------------------------------------------------------------------------
    def show_explanation(self, reason: str) -> None:
        self.explanation.setText(EXPLANATION.format(feeders=feeders_text(CAPABILITY), reason=reason))
        self.stack.setCurrentIndex(0)

    @property
    def showing_explanation(self) -> bool:
        return self.stack.currentIndex() == 0

    def set_history(self, history: dict[str, np.ndarray], title: str = "") -> None:
        count = int(history["steps"].size)
        at_end = self.history is None or self._follow_latest or self.slider.value() == self.slider.maximum()
        self.history = history
        episodic = str(history.get("setting", "")) == "episodic"
        caption = history_caption(history)
        self.title.setText(f"<b>{title}</b>" + (f": {caption}" if caption else ""))
        self.strip_caption.setText(
            ("Support images of fixed training tasks" if episodic else "Training images") +
            " sorted by weight (lowest first); red frame: corrupted label, green: correct label.")
        self.stack.setCurrentIndex(1)
        self.curve_plot.setLabel("left", history_text(history, "weight_label") or DEFAULT_WEIGHT_LABEL)
        self._fit_loss_range(history)
        self._draw_means(history)
        self.slider.blockSignals(True)
        self.slider.setMaximum(max(0, count - 1))
        if at_end:
            self.slider.setValue(count - 1)
        self.slider.blockSignals(False)
        self._draw(self.slider.value())

    def _fit_loss_range(self, history: dict[str, np.ndarray]) -> None:
        """Both plots show the losses that occur (over all snapshots), so the curve lines up with the bars."""
        grid = history.get("loss_grid")
        end = float(grid[-1]) if grid is not None else 10.0
        high = end
        counts = history["hist_clean"].sum(axis=0) + history["hist_noisy"].sum(axis=0)
        used = np.nonzero(counts)[0]
        if used.size:
            high = min(end, max(3.0, (used[-1] + 2) * end / len(counts)))
        sample_high = finite_max(history.get("sample_losses"))
        if sample_high is not None:  # no dot off the right edge
            high = max(high, min(end, 1.02 * sample_high))
        for plot in (self.curve_plot, self.hist_plot):
            plot.setXRange(0.0, high, padding=0.02)
        # Only relative weights matter when the batch's weights are normalized, so curves may sit far below 1;
        # single samples' weights exceed the curve's bin means, so they count too.
        top = finite_max(history["curves"], history.get("sample_weights"))
        top = 1.0 if top is None else top
        high = max(0.05, 1.05 * top)
        self.curve_plot.setYRange(0.0, high if top > 1.0 else min(1.0, high), padding=0.02)

    def _draw_means(self, history: dict[str, np.ndarray]) -> None:
        """The mean weights of clean and noisy samples over all snapshots, and where validation was best."""
        steps = history["steps"].astype(np.float64)
        clean = history["clean_mean"].astype(np.float64)
        noisy = history["noisy_mean"].astype(np.float64)
        self.clean_means.setData(steps, clean, connect="finite")
        self.noisy_means.setData(steps, noisy, connect="finite")
        top = finite_max(clean, noisy)
        # Headroom above the lines for the values written in the corner.
        self.means_plot.setYRange(0.0, max(0.05, 1.45 * (top or 1.0)), padding=0.02)
        self.means_plot.setXRange(0.0, max(1.0, float(steps[-1])), padding=0.02)
        self._best_index = best = best_validation_index(history)
        self.best_line.setVisible(best is not None)
        if best is not None:
            self.best_line.setValue(float(steps[best]))
            accuracy = float(history["val_accuracy"][best])
            self.best_line.label.setFormat(f"best validation {100 * accuracy:.1f}%")

    def _draw_markers(self, index: int, grid: np.ndarray, curve: np.ndarray, edges: np.ndarray) -> None:
        """Mark the curve at the mean loss of the clean and of the noisy samples, with the weight it gives there."""
        history = self.history
        for kind, marker, text in (("clean", self.clean_marker, self.clean_marker_text),
                                   ("noisy", self.noisy_marker, self.noisy_marker_text)):
            loss = histogram_mean(history[f"hist_{kind}"][index], edges)
            if not math.isfinite(loss):
                marker.clear()
                text.setText("")
                continue
            weight = float(np.interp(loss, grid, curve))
            marker.setData([loss], [weight])
            text.setText(f"{kind} labels: mean loss {loss:.2f}, weight {weight_text(weight)}")
            text.setPos(loss, weight)
            # Above the marker (a weight near 0 leaves no room below) and towards the middle of the plot, so it
            # never runs off an edge.
            x_low, x_high = self.curve_plot.getViewBox().viewRange()[0]
            text.setAnchor((1.0 if loss > (x_low + x_high) / 2 else 0.0, 1.1))

    def _on_slider(self, index: int) -> None:
        if self.history is None:
            return
        self._follow_latest = index == self.slider.maximum()
        self._draw(index)

    def _draw(self, index: int) -> None:
        history = self.history
        count = int(history["steps"].size)
        index = max(0, min(index, count - 1))
        grid = history.get("loss_grid")
        curves = history["curves"].astype(np.float32)
        if grid is None:
            grid = np.linspace(0.0, 10.0, curves.shape[1], dtype=np.float32)
        self.curve.setData(grid, curves[index])
        self.first_curve.setData(grid, curves[0])
        dots = self._draw_samples(index)
        edges = np.linspace(float(grid[0]), float(grid[-1]), history["hist_clean"].shape[1] + 1)
        self.clean_hist.setData(edges, history["hist_clean"][index].astype(float))
        self.noisy_hist.setData(edges, history["hist_noisy"][index].astype(float))
        self._draw_markers(index, grid, curves[index], edges)
        step = int(history["steps"][index])
        self.now_line.setValue(float(step))
        self.step_label.setText(f"step {step:,} ({index + 1}/{count})")

        def percent(key):
            value = float(history[key][index])
            return f"{value:.3f}" if math.isfinite(value) else "n/a"

        test = float(history["test_accuracy"][index])
        clean, noisy = float(history["clean_mean"][index]), float(history["noisy_mean"][index])
        ratio = (f" (noisy/clean {noisy / clean:.2f})" if math.isfinite(clean) and math.isfinite(noisy) and clean > 0
                 else "")
        if str(history.get("setting", "")) == "episodic":
            accuracy = (f"query accuracy of fixed training tasks adapted on their noisy supports "
                        f"<b>{100 * test:.1f}%</b>")
            samples = "support samples (weights of inner steps 1 and later)"
        else:
            accuracy, samples = f"clean test accuracy <b>{100 * test:.1f}%</b>", "samples"
        self.means_text.setText(f"step {step:,}: clean {percent('clean_mean')}, noisy {percent('noisy_mean')}"
                                + (f"\nnoisy / clean {noisy / clean:.2f}" if ratio else ""))
        best = self._best_index  # found once per history, in _draw_means
        at_best = ""
        if best is not None:
            best_clean, best_noisy = float(history["clean_mean"][best]), float(history["noisy_mean"][best])
            at_best = (f" At the best clean validation (step {int(history['steps'][best]):,}, "
                       f"{100 * float(history['val_accuracy'][best]):.1f}%): weights {weight_text(best_clean)} clean vs "
                       f"{weight_text(best_noisy)} noisy, test {100 * float(history['test_accuracy'][best]):.1f}%.")
        self.summary.setText(
            f"At step {step:,}: mean weight of clean {samples} <b>{percent('clean_mean')}</b>, of noisy ones "
            f"<b>{percent('noisy_mean')}</b>{ratio}; {accuracy}.{at_best} Dashed: the curve at the first snapshot."
            f"{dots}")
        thumbnails = history.get("thumbnails")
        if thumbnails is not None and thumbnails.ndim == 4 and len(thumbnails):
            self.strip.setPixmap(thumbnail_strip(thumbnails, history["thumb_weights"][index].astype(np.float32),
                                                 history["thumb_noisy"], self.theme))
            self.strip.adjustSize()
        self.snapshot_changed.emit(index)

    def _draw_samples(self, index: int) -> str:
        """The snapshot's per-sample dots (cleared when the history keeps none); a sentence for the summary."""
        points = sample_points(self.history, index)
        listed = any(sample.item is self.clean_samples for sample, _ in self.curve_legend.items)
        if points is None:
            self.clean_samples.clear()
            self.noisy_samples.clear()
            if listed:
                self.curve_legend.removeItem(self.clean_samples)
                self.curve_legend.removeItem(self.noisy_samples)
            return ""
        losses, weights, noisy = points
        self.clean_samples.setData(losses[~noisy], weights[~noisy])
        self.noisy_samples.setData(losses[noisy], weights[noisy])
        if not listed:
            self.curve_legend.addItem(self.clean_samples, "sample, correct label")
            self.curve_legend.addItem(self.noisy_samples, "sample, corrupted label")
        return (f" Dots: {len(losses)} training samples recorded for this snapshot, each at its loss and the "
                f"weight it got.")

    def sample_count(self) -> int:
        """How many per-sample dots are drawn now (for tests)."""
        return len(self.clean_samples.data) + len(self.noisy_samples.data)

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The curve drawn now (for tests)."""
        x, y = self.curve.getData()
        return (np.asarray(x), np.asarray(y)) if x is not None else (np.zeros(0), np.zeros(0))


def _run_name(run) -> str:
    """A run's given name, or '' (then its folder's name is shown)."""
    try:
        return run.record().name or ""
    except Exception:  # an index that cannot be read: the folder name will do
        return ""

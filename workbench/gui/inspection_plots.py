"""The plot panels of the Mechanism view, one per inspection plot type (:data:`workbench.core.inspection.PLOT_TYPES`).

A panel gets one record's stored arrays at every snapshot (:meth:`InspectionPlot.set_history`; None where a
snapshot lacks the record) and draws one snapshot (:meth:`InspectionPlot.show_snapshot`). Axes and colour scales
span all snapshots, so scrubbing shows the record change instead of rescaling it. Each panel saves itself as a PNG
(:meth:`InspectionPlot.export`) and says how many things it drew (:meth:`InspectionPlot.drawn_count`, for tests).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics
from PySide6.QtWidgets import QFrame, QGridLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from workbench.core.inspection import InspectionSpec, layer_histograms
from workbench.gui.qimage import to_pixmap
from workbench.gui.theme import LIGHT, Theme

Record = dict[str, np.ndarray] | None
MAX_TICK_LABELS = 24  # heatmap rows or columns named on an axis; more are thinned
MAX_TICK_CHARACTERS = 14  # longer heatmap tick labels are elided (the hover line gives them whole)
TICK_CHARACTER_PIXELS = 7  # about one character of the axis font: the column ticks fit their cells
THUMBNAIL_GAP = 0.08  # a heatmap's axis thumbnails: the gap around each, in cells
HOVER_HINT = "Point at a cell to read its row, column and value."


# --- helpers ------------------------------------------------------------------------------------------------------
def value_text(value) -> str:
    value = float(value)
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def finite_range(arrays: list[np.ndarray]) -> tuple[float, float] | None:
    """(low, high) of the finite values of all arrays, widened when flat; None when there are none."""
    values = [np.asarray(a, dtype=float).ravel() for a in arrays if a is not None and np.size(a)]
    values = [v[np.isfinite(v)] for v in values]
    values = [v for v in values if v.size]
    if not values:
        return None
    low, high = min(float(v.min()) for v in values), max(float(v.max()) for v in values)
    if high <= low:
        pad = max(abs(low), 1.0) * 0.05
        low, high = low - pad, high + pad
    return low, high


LINE_STYLES = (Qt.PenStyle.SolidLine, Qt.PenStyle.DashLine, Qt.PenStyle.DotLine)


def series_pens(count: int, theme: Theme) -> list[tuple[QColor, Qt.PenStyle]]:
    """(colour, line style) per series: the theme's distinct colours, solid first, then dashed and dotted (a
    ramp, for lots of series, would make neighbours look alike)."""
    base = [theme.train, theme.validation, *theme.overlays]
    return [(QColor(base[i % len(base)]), LINE_STYLES[(i // len(base)) % len(LINE_STYLES)]) for i in range(count)]


def theme_plot_item(plot: pg.PlotItem, theme: Theme) -> None:
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setPen(theme.plot_foreground)
        plot.getAxis(axis).setTextPen(theme.plot_foreground)
    plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)


def fixed_plot_item(plot: pg.PlotItem) -> None:
    """No mouse panning or zooming: the ranges are chosen to compare snapshots."""
    plot.setMouseEnabled(x=False, y=False)
    plot.setMenuEnabled(False)
    plot.hideButtons()
    for axis in ("left", "bottom"):
        plot.getAxis(axis).enableAutoSIPrefix(False)


def themed_legend(legend: pg.LegendItem, theme: Theme) -> None:
    """Legend text in the theme's colour (pyqtgraph colours only new labels), on a translucent backdrop."""
    legend.setLabelTextColor(theme.plot_foreground)
    for _sample, label in legend.items:
        label.setText(label.text, color=theme.plot_foreground)
    background = QColor(theme.plot_background)
    background.setAlpha(210)
    legend.setBrush(background)
    legend.setPen(pg.mkPen(theme.muted_text))


def export_graphics(item, path: Path, theme: Theme) -> Path:
    """A pyqtgraph item (plot, layout) as a PNG at its on-screen size or 800 pixels wide, on the theme's
    background."""
    from pyqtgraph.exporters import ImageExporter

    exporter = ImageExporter(item)
    exporter.parameters()["width"] = max(800, int(item.boundingRect().width()))
    exporter.parameters()["background"] = QColor(theme.plot_background)
    exporter.export(str(path))
    return Path(path)


def as_image(array: np.ndarray) -> np.ndarray:
    """An [H, W] or [H, W, C] image in [0, 1] (values beyond are clipped) as uint8."""
    image = np.nan_to_num(np.asarray(array, dtype=np.float32), nan=0.0)
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


def label_texts(values) -> list[str]:
    """Axis or caption labels from a stored array (strings, or numbers written short)."""
    return [value_text(v) if np.asarray(v).dtype.kind == "f" else str(v) for v in np.asarray(values).ravel()]


# --- the panels ---------------------------------------------------------------------------------------------------
class InspectionPlot(QWidget):
    """One plot type's panel; subclasses implement ``_prepare`` (after a new history), ``_draw`` (one snapshot's
    record, or None), ``_apply_theme``, ``export`` and ``drawn_count``."""

    def __init__(self, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(parent)
        self.theme = theme
        self.spec: InspectionSpec | None = None
        self.records: list[Record] = []
        self.index = 0
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(0, 0, 0, 0)
        self.layout_.addWidget(self.caption)

    def set_history(self, spec: InspectionSpec, records: list[Record]) -> None:
        self.spec, self.records = spec, list(records)
        self._prepare()

    def show_snapshot(self, index: int) -> None:
        self.index = max(0, min(index, len(self.records) - 1))
        self._draw(self.records[self.index] if self.records else None)

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        self._apply_theme()
        if self.spec is not None and self.records:
            self.show_snapshot(self.index)

    def _prepare(self) -> None:
        raise NotImplementedError

    def _draw(self, record: Record) -> None:
        raise NotImplementedError

    def _apply_theme(self) -> None:
        raise NotImplementedError

    def export(self, path: str | Path) -> Path:
        raise NotImplementedError

    def drawn_count(self) -> int:
        raise NotImplementedError


class HistogramGrid(InspectionPlot):
    """layer_histograms: one small histogram per layer in a grid that scrolls; the title gives mean and median."""

    MAX_COLUMNS = 4
    PLOT_WIDTH = 290  # the narrowest a histogram and its two-line title stay readable
    ROW_HEIGHT = 190

    def __init__(self, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(theme, parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.graphics)
        self.layout_.addWidget(self.scroll, 1)
        self.layers: list[str] = []
        self.columns = 0
        self.plots: dict[str, pg.PlotItem] = {}
        self.bars: dict[str, pg.PlotDataItem] = {}
        self.per_snapshot: list[dict] = []

    def _prepare(self) -> None:
        self.per_snapshot = [layer_histograms(record) if record else {} for record in self.records]
        layers = list(dict.fromkeys(layer for snapshot in self.per_snapshot for layer in snapshot))
        if layers != self.layers or self.fitting_columns(len(layers)) != self.columns:
            self._build(layers, self.fitting_columns(len(layers)))
        for layer, plot in self.plots.items():
            entries = [snapshot[layer] for snapshot in self.per_snapshot if layer in snapshot]
            x = finite_range([entry["edges"] for entry in entries])
            y = finite_range([entry["counts"] for entry in entries])
            if x is not None:
                plot.setXRange(*x, padding=0.02)
            plot.setYRange(0.0, (y[1] if y else 1.0) * 1.08, padding=0.0)
        spec = self.spec
        self.caption.setText(
            f"One histogram of {spec.x_label or 'the values'} per layer (height: number of "
            f"{spec.y_label or 'values'}); each title gives the layer's mean and median. The axes span all "
            f"snapshots, so moving the time slider shows the values move.")

    def fitting_columns(self, layers: int) -> int:
        """As many columns as the width holds (a wider window shows more layers at once)."""
        return max(1, min(self.MAX_COLUMNS, layers, (self.width() - 20) // self.PLOT_WIDTH))

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if self.layers and self.fitting_columns(len(self.layers)) != self.columns:
            self._prepare()
            self.show_snapshot(self.index)

    def _build(self, layers: list[str], columns: int) -> None:
        self.graphics.clear()
        self.layers, self.columns, self.plots, self.bars = layers, columns, {}, {}
        for slot, layer in enumerate(layers):
            plot = self.graphics.addPlot(row=slot // columns, col=slot % columns)
            fixed_plot_item(plot)
            plot.getAxis("left").setWidth(40)
            bars = pg.PlotDataItem(stepMode="center", fillLevel=0)
            plot.addItem(bars)
            self.plots[layer], self.bars[layer] = plot, bars
        rows = math.ceil(len(layers) / columns) if layers else 0
        self.graphics.setMinimumHeight(rows * self.ROW_HEIGHT)
        # A grid rebuilt with fewer rows while hidden keeps its old height unless told (the plots would be cut off).
        self.graphics.resize(self.graphics.width(), max(self.graphics.minimumHeight(), self.scroll.viewport().height()))
        self._apply_theme()

    def _draw(self, record: Record) -> None:
        histograms = self.per_snapshot[self.index] if record else {}
        for layer, plot in self.plots.items():
            entry = histograms.get(layer)
            if entry is None:
                self.bars[layer].setData([], [])
                self._title(plot, layer, "not recorded at this step")
                continue
            self.bars[layer].setData(entry["edges"].astype(float), entry["counts"].astype(float))
            self._title(plot, layer, f"mean {value_text(entry['mean'])} · median {value_text(entry['median'])}")

    def _title(self, plot: pg.PlotItem, layer: str, detail: str) -> None:
        colour = self.theme.plot_foreground
        plot.setTitle(f"<span style='color:{colour}'><b>{layer}</b><br>{detail}</span>", size="9pt")

    def _apply_theme(self) -> None:
        theme = self.theme
        self.graphics.setBackground(theme.plot_background)
        fill = QColor(theme.train)
        fill.setAlpha(110)
        for layer, plot in self.plots.items():
            theme_plot_item(plot, theme)
            self.bars[layer].setPen(pg.mkPen(theme.train, width=1.5))
            self.bars[layer].setBrush(fill)

    def export(self, path: str | Path) -> Path:
        return export_graphics(self.graphics.ci, Path(path), self.theme)

    def drawn_count(self) -> int:
        return sum(1 for bars in self.bars.values() if bars.getData()[0] is not None and len(bars.getData()[0]))


class CurvesPlot(InspectionPlot):
    """curves: one line per series against the x array, with a legend and the spec's axis labels."""

    def __init__(self, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(theme, parent)
        self.caption.hide()
        self.plot = pg.PlotWidget()
        fixed_plot_item(self.plot.getPlotItem())
        self.layout_.addWidget(self.plot, 1)
        self.legend = self.plot.addLegend(offset=(-10, 8))
        self.curves: dict[str, pg.PlotDataItem] = {}

    def _prepare(self) -> None:
        spec = self.spec
        names = list(dict.fromkeys(key for record in self.records if record for key in record if key != spec.x_key))
        if names != list(self.curves):
            self._build(names)
        self.plot.setLabel("bottom", spec.x_label or spec.x_key)
        self.plot.setLabel("left", spec.y_label)
        present = [record for record in self.records if record]
        x = finite_range([record.get(spec.x_key) for record in present])
        y = finite_range([record[name] for record in present for name in names if name in record])
        if x is not None:
            self.plot.setXRange(*x, padding=0.04)
        if y is not None:
            rows = math.ceil(len(names) / (1 if len(names) <= 6 else 2)) if len(names) > 1 else 0
            top = y[1] + min(0.6, 0.09 * rows) * (y[1] - y[0])  # headroom, so the legend hides no line
            self.plot.setYRange(y[0], top, padding=0.06)
        xs = [np.asarray(record[spec.x_key], dtype=float) for record in present if spec.x_key in record]
        counting = x is not None and bool(xs) and all(np.all(v == np.round(v)) for v in xs)
        every = max(1, math.ceil((x[1] - x[0]) / 10)) if counting else 0
        self.plot.getAxis("bottom").setTickSpacing(*((every, every) if every else ()))  # whole steps: no 0.5

    def _build(self, names: list[str]) -> None:
        for curve in self.curves.values():
            self.plot.removeItem(curve)  # and from the legend
        self.legend.setColumnCount(1 if len(names) <= 6 else 2)
        self.curves = {}
        for name in names:
            curve = pg.PlotDataItem(name=name)
            self.plot.addItem(curve)
            self.curves[name] = curve
        self._apply_theme()

    def _draw(self, record: Record) -> None:
        x = record.get(self.spec.x_key) if record else None
        for name, curve in self.curves.items():
            if x is None or name not in record:
                curve.setData([], [])
                continue
            y = np.asarray(record[name], dtype=float)
            curve.setData(np.asarray(x, dtype=float), np.where(np.isfinite(y), y, np.nan), connect="finite")

    def _apply_theme(self) -> None:
        theme = self.theme
        self.plot.setBackground(theme.plot_background)
        theme_plot_item(self.plot.getPlotItem(), theme)
        short = all(record is None or len(next(iter(record.values()), [])) <= 30 for record in self.records)
        for (name, curve), (colour, style) in zip(self.curves.items(), series_pens(len(self.curves), theme)):
            curve.setPen(pg.mkPen(colour, width=2.5, style=style))
            curve.setSymbol("o" if short else None)
            curve.setSymbolSize(7)
            curve.setSymbolBrush(colour)
            curve.setSymbolPen(pg.mkPen(colour))
        themed_legend(self.legend, theme)

    def curve_data(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.curves[name].getData()
        return (np.asarray(x), np.asarray(y)) if x is not None else (np.zeros(0), np.zeros(0))

    def export(self, path: str | Path) -> Path:
        return export_graphics(self.plot.getPlotItem(), Path(path), self.theme)

    def drawn_count(self) -> int:
        return sum(1 for name in self.curves if len(self.curve_data(name)[0]))


class HeatmapPlot(InspectionPlot):
    """heatmap: 'values' [rows, columns] as an image with a colour bar fixed over the snapshots; 'rows' and
    'columns' name the axes' ticks when given; 'row_images' and 'column_images' are drawn as one-cell thumbnails
    left of each row and above each column, so they scale with the cells; the value under the mouse is shown
    beneath."""

    def __init__(self, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(theme, parent)
        self.caption.hide()
        self.plot = pg.PlotWidget()
        item = self.plot.getPlotItem()
        fixed_plot_item(item)
        item.invertY(True)  # row 0 at the top, as a matrix is read
        self.image = pg.ImageItem()
        self.plot.addItem(self.image)
        self.bar = pg.ColorBarItem(values=(0.0, 1.0), colorMap=pg.colormap.get("viridis"), interactive=False,
                                   colorMapMenu=False, width=18)
        self.bar.setImageItem(self.image, insert_in=item)
        self.hover = QLabel(HOVER_HINT)
        self.layout_.addWidget(self.plot, 1)
        self.layout_.addWidget(self.hover)
        self.plot.scene().sigMouseMoved.connect(self._on_mouse)
        self.values: np.ndarray | None = None
        self.thumbnails: list[pg.ImageItem] = []

    def _prepare(self) -> None:
        levels = finite_range([record.get("values") for record in self.records if record])
        self.bar.setLevels(levels or (0.0, 1.0))
        self.plot.setLabel("bottom", self.spec.x_label)
        self.plot.setLabel("left", self.spec.y_label)

    def _draw(self, record: Record) -> None:
        values = record.get("values") if record else None
        self.values = None if values is None else np.asarray(values, dtype=np.float32)
        if self.values is None:
            self.image.clear()
            return
        rows, columns = self.values.shape
        self.image.setImage(self.values.T, autoLevels=False, levels=self.bar.levels())  # x: columns, y: rows
        row_images, column_images = self._images(record, "row_images", rows), self._images(record, "column_images",
                                                                                             columns)
        self._draw_thumbnails(row_images, column_images)
        self.plot.setXRange(-1 if row_images is not None else 0, columns, padding=0.0)
        self.plot.setYRange(-1 if column_images is not None else 0, rows, padding=0.0)
        self._ticks("bottom", record.get("columns"), columns)
        self._ticks("left", record.get("rows"), rows)

    @staticmethod
    def _images(record: dict, key: str, count: int) -> np.ndarray | None:
        images = record.get(key)
        return images if images is not None and np.ndim(images) in (3, 4) and len(images) == count else None

    def _draw_thumbnails(self, row_images: np.ndarray | None, column_images: np.ndarray | None) -> None:
        """Row thumbnails in the column at x in [-1, 0], column thumbnails in the row at y in [-1, 0]."""
        for item in self.thumbnails:
            self.plot.removeItem(item)
        self.thumbnails = []
        size = 1.0 - 2 * THUMBNAIL_GAP
        placed = [((-1 + THUMBNAIL_GAP, i + THUMBNAIL_GAP), image) for i, image in enumerate(
            row_images if row_images is not None else [])]
        placed += [((i + THUMBNAIL_GAP, -1 + THUMBNAIL_GAP), image) for i, image in enumerate(
            column_images if column_images is not None else [])]
        for (x, y), image in placed:
            pixels = as_image(image)
            item = pg.ImageItem(pixels.swapaxes(0, 1), levels=(0, 255))  # pyqtgraph's images are [x, y]
            item.setRect(QRectF(x, y, size, size))
            self.plot.addItem(item)
            self.thumbnails.append(item)

    def _ticks(self, axis: str, labels, count: int) -> None:
        """Named ticks at the cells' centres (every k-th when there are many), or numbers when unnamed."""
        if labels is None or np.size(labels) != count:
            self.plot.getAxis(axis).setTicks(None)
            if axis == "left":
                self._fit_left_axis(None)
            return
        every = max(1, math.ceil(count / MAX_TICK_LABELS))
        limit = MAX_TICK_CHARACTERS
        if axis == "bottom":  # side by side: each label gets its cells' width
            width = self.plot.getPlotItem().vb.width() or self.plot.width()
            limit = max(3, min(limit, int(width * every / (count + 1) / TICK_CHARACTER_PIXELS)))
        texts = [text if len(text) <= limit else text[:limit - 1] + "…" for text in label_texts(labels)]
        shown = [(i + 0.5, texts[i]) for i in range(0, count, every)]
        self.plot.getAxis(axis).setTicks([shown])
        if axis == "left":
            self._fit_left_axis([text for _, text in shown])

    def _fit_left_axis(self, texts: list[str] | None) -> None:
        """Make room for the row labels before the first paint: pyqtgraph widens an axis to its text only after
        drawing it once, and until then leaves out the labels that do not fit."""
        axis = self.plot.getAxis("left")
        if not texts:
            axis.setStyle(autoExpandTextSpace=True)
            return
        metrics = QFontMetrics(axis.style.get("tickFont") or QFont())
        axis.setStyle(autoExpandTextSpace=False, tickTextWidth=max(metrics.horizontalAdvance(t) for t in texts) + 4)

    def _on_mouse(self, position: QPointF) -> None:
        if self.values is None or not self.plot.sceneBoundingRect().contains(position):
            return
        point = self.plot.getPlotItem().vb.mapSceneToView(position)
        column, row = int(math.floor(point.x())), int(math.floor(point.y()))
        rows, columns = self.values.shape
        if 0 <= row < rows and 0 <= column < columns:
            record = self.records[self.index] or {}
            names = [label_texts(record[key])[i] if key in record and np.size(record[key]) == n else str(i)
                     for key, i, n in (("rows", row, rows), ("columns", column, columns))]
            self.hover.setText(f"row {names[0]}, column {names[1]}: {value_text(self.values[row, column])}")

    def _apply_theme(self) -> None:
        theme = self.theme
        self.plot.setBackground(theme.plot_background)
        theme_plot_item(self.plot.getPlotItem(), theme)
        self.plot.getPlotItem().showGrid(x=False, y=False)
        for side in ("left", "right", "top", "bottom"):  # the colour bar's frame and its value axis
            self.bar.getAxis(side).setPen(theme.plot_foreground)
            self.bar.getAxis(side).setTextPen(theme.plot_foreground)

    def export(self, path: str | Path) -> Path:
        return export_graphics(self.plot.getPlotItem(), Path(path), self.theme)

    def drawn_count(self) -> int:
        return int(self.image.image is not None and self.values is not None)

    def thumbnail_count(self) -> int:
        return len(self.thumbnails)

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if self.values is not None and self.records and self.records[self.index]:
            self._draw(self.records[self.index])  # the column ticks fit the new cell width


class ImageGrid(InspectionPlot):
    """image_grid: thumbnails in a grid that fills the width and scrolls, each with its label beneath."""

    GAP = 10

    def __init__(self, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(theme, parent)
        self.caption.hide()
        self.grid_widget = QWidget()
        self.grid = QGridLayout(self.grid_widget)
        self.grid.setSpacing(self.GAP)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(self.grid_widget)
        self.layout_.addWidget(self.scroll, 1)
        self.cells: list[QWidget] = []
        self._columns = 0
        self.thumb = 96

    def _prepare(self) -> None:
        pass  # each snapshot's images are drawn as they are

    def columns(self) -> int:
        width = self.scroll.viewport().width() if self.scroll.viewport().width() > 50 else 800
        return max(1, (width - self.GAP) // (self.thumb + self.GAP))

    def _draw(self, record: Record) -> None:
        for cell in self.cells:
            self.grid.removeWidget(cell)
            cell.deleteLater()
        self.cells = []
        images = record.get("images") if record else None
        if images is None:
            return
        labels = label_texts(record["labels"]) if "labels" in record else []
        self.thumb = 128 if len(images) <= 16 else 96 if len(images) <= 40 else 72  # few images: larger
        self._columns = self.columns()
        for slot, image in enumerate(np.asarray(images)):
            cell = self._cell(image, labels[slot] if slot < len(labels) else "")
            self.grid.addWidget(cell, slot // self._columns, slot % self._columns)
            cell.show()  # now, not at the next event loop turn: an export right after drawing includes it
            self.cells.append(cell)

    def _cell(self, image: np.ndarray, label: str) -> QWidget:
        cell = QWidget()
        column = QVBoxLayout(cell)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        picture = QLabel()
        picture.setPixmap(to_pixmap(as_image(image), self.thumb))
        picture.setFixedSize(self.thumb, self.thumb)
        picture.setAlignment(Qt.AlignmentFlag.AlignCenter)
        picture.setStyleSheet(f"background: {self.theme.plot_background}; border: 1px solid {self.theme.muted_text};")
        text = QLabel(label)
        text.setAlignment(Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        text.setFixedWidth(self.thumb)
        text.setWordWrap(True)
        column.addWidget(picture)
        column.addWidget(text)
        return cell

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().resizeEvent(event)
        if self.cells and self.columns() != self._columns:
            self.show_snapshot(self.index)

    def _apply_theme(self) -> None:
        pass  # the cells take the theme's colours when drawn

    def export(self, path: str | Path) -> Path:
        path = Path(path)
        # Only the thumbnails and their labels: the grid widget stretches to the scroll area's height.
        whole = self.grid_widget.rect()
        used = whole.adjusted(0, 0, 0, min(0, self.grid.sizeHint().height() - whole.height()))
        picture = self.grid_widget.grab(used) if self.cells else self.grid_widget.grab()
        if not picture.save(str(path)):
            raise OSError(f"could not write {path}")
        return path

    def drawn_count(self) -> int:
        return len(self.cells)


PANELS: dict[str, type[InspectionPlot]] = {"layer_histograms": HistogramGrid, "curves": CurvesPlot,
                                           "heatmap": HeatmapPlot, "image_grid": ImageGrid}

"""The Studies tab's plots (pyqtgraph), drawn from a StudySnapshot's plain data: the best value so far by trial,
parallel coordinates (one polyline per complete trial across the parameters and the objective, each axis scaled
to its own range, coloured by the objective) and a slice (the objective against one parameter)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import pyqtgraph as pg
from PySide6.QtGui import QColor, QFont
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from workbench.gui.hparam_form import narrow_combo
from workbench.gui.theme import LIGHT, Theme

MAX_TICKS = 6  # an axis with at most this many distinct values labels each; others their ends and middle
COLOUR_MAP = "viridis"  # dark = worst, yellow = best
DARK_FLOOR = 0.25  # on a dark background the map starts here: its darkest purples would vanish
LOG_SPAN = 100.0  # positive values spanning this factor or more get a log axis


# --- the objective's units ------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    """How the study's metric is shown: percentages for a percent metric, its title, which way is better."""

    title: str = "Value"
    percent: bool = False
    maximize: bool = True

    @classmethod
    def of(cls, metric_key: str, direction: str) -> "Objective":
        from workbench.core.errors import WorkbenchError
        from workbench.core.kinds import get_kind_class, kind_names

        for name in kind_names():
            try:
                metric = get_kind_class(name).metric
            except WorkbenchError:
                continue
            if metric.key == metric_key:
                return cls(metric.title, metric.percent, direction == "maximize")
        return cls(metric_key.capitalize() or "Value", False, direction == "maximize")

    def shown(self, value: float | None) -> float:
        if value is None:
            return math.nan
        return 100 * value if self.percent else value

    def label(self) -> str:
        return f"Validation {self.title.lower()}" + (" (%)" if self.percent else "")

    def format(self, value: float | None) -> str:
        if value is None or value != value:
            return "–"
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4g}"


# --- axes of the parallel coordinates ------------------------------------------------------------
@dataclass
class Axis:
    """One vertical axis: each trial's position on it (0 = bottom, 1 = top) and the labels along it."""

    name: str
    positions: list[float]
    ticks: list[tuple[float, str]]
    log: bool = False
    categories: list[Any] | None = None  # a categorical axis: its values, bottom to top


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_label(value: float) -> str:
    return f"{value:.3g}"


def make_axis(name: str, values: Sequence[Any], log: bool | None = None, order: Sequence[Any] = (),
              label: Callable[[float], str] = _number_label) -> Axis:
    """An axis for ``values`` (one per trial): numbers on their range (log when ``log``, or when None and the
    positive values span LOG_SPAN or more); anything else as categories, the listed ones first, then others as
    they appear."""
    if not values:
        return Axis(name, [], [])
    if not all(is_number(v) for v in values):
        categories = list(dict.fromkeys([v for v in order if v in values] + list(values)))
        step = 1 / (len(categories) - 1) if len(categories) > 1 else 0
        where = {repr(c): (i * step if step else 0.5) for i, c in enumerate(categories)}
        return Axis(name, [where[repr(v)] for v in values], [(where[repr(c)], _category_text(c)) for c in categories],
                    categories=categories)
    numbers = [float(v) for v in values]
    low, high = min(numbers), max(numbers)
    if log is None:
        log = low > 0 and high / low >= LOG_SPAN
    log = bool(log and low > 0)
    scale = (lambda v: math.log10(v)) if log else (lambda v: v)
    span = scale(high) - scale(low)
    position = (lambda v: (scale(v) - scale(low)) / span) if span > 0 else (lambda v: 0.5)
    distinct = sorted(set(numbers))
    if len(distinct) > MAX_TICKS or not all(v.is_integer() for v in distinct):  # few integers: each labelled
        middle = 10 ** ((scale(low) + scale(high)) / 2) if log else (low + high) / 2
        distinct = sorted({low, middle, high})
    return Axis(name, [position(v) for v in numbers], [(position(v), label(v)) for v in distinct], log)


def log_ticks(low: float, high: float) -> list[tuple[float, str]]:
    """Ticks at 1, 2 and 5 times the powers of ten between ``low`` and ``high`` (only the powers when those are
    many), at their log10 positions: pyqtgraph's own log axis labels every minor tick within a decade."""
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    for factors in ((1, 2, 5), (1,)):
        values = [f * 10.0 ** e for e in range(first, last + 1) for f in factors if low <= f * 10.0 ** e <= high]
        if len(values) <= MAX_TICKS:
            break
    return [(math.log10(v), _number_label(v)) for v in values]


def _category_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _spaced(ticks: list[tuple[float, str]], gap: float = 0.06) -> list[tuple[float, str]]:
    """Ticks far enough apart to read (a label too close to the one kept before it is dropped)."""
    kept: list[tuple[float, str]] = []
    for position, text in sorted(ticks):
        if not kept or position - kept[-1][0] >= gap:
            kept.append((position, text))
    return kept


def colours(values: Sequence[float], maximize: bool, floor: float = 0.0) -> list[QColor]:
    """A colour per value from the colour map, the best value brightest; ``floor`` skips the map's darkest part
    (on a dark background)."""
    if not values:
        return []
    low, high = min(values), max(values)
    span = high - low
    cmap = pg.colormap.get(COLOUR_MAP)
    out = []
    for value in values:
        share = (value - low) / span if span > 0 else 1.0
        out.append(cmap.map(floor + (1 - floor) * (share if maximize else 1 - share), mode="qcolor"))
    return out


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """Each config path's last part, or the whole path where two would read the same."""
    last = [path.rsplit(".", 1)[-1] for path in paths]
    return {path: (name if last.count(name) == 1 else path) for path, name in zip(paths, last)}


# --- plots ---------------------------------------------------------------------------------------
def _styled(plot: pg.PlotWidget, theme: Theme) -> None:
    plot.setBackground(theme.plot_background)
    for axis in ("left", "bottom"):
        plot.getAxis(axis).setPen(theme.plot_foreground)
        plot.getAxis(axis).setTextPen(theme.plot_foreground)


def _new_plot() -> pg.PlotWidget:
    plot = pg.PlotWidget()
    plot.setMenuEnabled(False)
    plot.hideButtons()
    plot.getAxis("left").enableAutoSIPrefix(False)
    plot.getAxis("bottom").enableAutoSIPrefix(False)
    return plot


class BestSoFarPlot(pg.PlotWidget):
    """Each complete trial's value by trial number, the best so far as a step line, pruned trials' last values
    hollow."""

    def __init__(self, theme: Theme = LIGHT):
        super().__init__()
        self.setMenuEnabled(False)
        self.getAxis("left").enableAutoSIPrefix(False)
        self.setLabel("bottom", "Trial")
        self.values = self.plot([], [], pen=None, symbol="o", symbolSize=7)
        self.pruned = self.plot([], [], pen=None, symbol="o", symbolSize=7, symbolBrush=None)
        self.best = self.plot([], [])
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        _styled(self, theme)
        self.showGrid(x=True, y=True, alpha=theme.grid_alpha)
        self.values.setSymbolBrush(theme.train)
        self.values.setSymbolPen(pg.mkPen(theme.train))
        self.pruned.setSymbolPen(pg.mkPen(theme.muted_text, width=1.5))
        self.best.setPen(pg.mkPen(theme.validation, width=2.5))
        # The key as the title: a legend inside the plot would hide points wherever it sits.
        self.setTitle(f"<span style='color:{theme.validation}'>━ best so far</span>&nbsp;&nbsp; "
                      f"<span style='color:{theme.train}'>● trial</span>&nbsp;&nbsp; "
                      f"<span style='color:{theme.muted_text}'>○ pruned (its last validation)</span>", size="9pt")

    def show_snapshot(self, snapshot, objective: Objective) -> None:
        self.setLabel("left", objective.label())
        done = [t for t in snapshot.trials if t.state == "complete" and t.value is not None]
        pruned = [t for t in snapshot.trials if t.state == "pruned" and t.value is not None]
        self.values.setData([t.number for t in done], [objective.shown(t.value) for t in done])
        self.pruned.setData([t.number for t in pruned], [objective.shown(t.value) for t in pruned])
        best = snapshot.best_so_far()
        last = max((t.number for t in snapshot.trials), default=0)
        xs, ys = [], []
        for i, (number, value) in enumerate(best):
            end = best[i + 1][0] if i + 1 < len(best) else last
            xs += [number, end]
            ys += [objective.shown(value)] * 2
        self.best.setData(xs, ys)
        self.getAxis("bottom").setTickSpacing(major=max(1, math.ceil((last + 1) / 8)), minor=1)


class ParallelCoordinatesPlot(pg.PlotWidget):
    """One polyline per complete trial across the parameters' axes and the objective's."""

    def __init__(self, theme: Theme = LIGHT):
        super().__init__()
        self.setMenuEnabled(False)
        self.hideButtons()
        self.setMouseEnabled(x=False, y=False)
        self.getPlotItem().hideAxis("left")
        self.axes: list[Axis] = []
        self._values: list[float] = []
        self._maximize, self._caption = True, ""
        self.theme = theme
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        _styled(self, theme)
        if self.axes:
            self._draw(self.axes, self._values)

    def show_trials(self, trials, parameters: Sequence[str], logs: dict[str, bool], orders: dict[str, list],
                    objective: Objective) -> None:
        trials = [t for t in trials if t.state == "complete" and t.value is not None
                  and all(p in t.params for p in parameters)]
        names = short_names(parameters)
        axes = [make_axis(names[p], [t.params[p] for t in trials], logs.get(p), orders.get(p, ())) for p in parameters]
        values = [objective.shown(t.value) for t in trials]
        fmt = (lambda v: f"{v:.1f}%") if objective.percent else _number_label
        axes.append(make_axis(objective.title, values, log=False, label=fmt))
        self._maximize = objective.maximize
        self._caption = (f"{len(trials)} complete trial{'s' if len(trials) != 1 else ''}, one line each · colour: "
                         f"{objective.title.lower()} (yellow: best)")
        self._draw(axes, values)

    def _draw(self, axes: list[Axis], values: list[float]) -> None:
        self.clear()
        self.axes, self._values = axes, values
        foreground = self.theme.plot_foreground
        backdrop = QColor(self.theme.plot_background)
        backdrop.setAlpha(200)
        font = QFont()
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        for i, axis in enumerate(axes):
            self.plot([i, i], [0, 1], pen=pg.mkPen(foreground, width=1.5))
            for position, text in _spaced(axis.ticks):
                self.plot([i - 0.025, i], [position, position], pen=pg.mkPen(foreground))
                label = pg.TextItem(text, color=foreground, anchor=(1, 0.5), fill=backdrop)
                label.setFont(font)
                label.setZValue(10)  # above the lines that cross it
                label.setPos(i - 0.03, position)
                self.addItem(label)
        order = sorted(range(len(values)), key=lambda j: values[j] if self._maximize else -values[j])
        palette = colours(values, self._maximize, DARK_FLOOR if self.theme.is_dark else 0.0)
        for rank, j in enumerate(order):  # the best last, on top and wider
            best = rank == len(order) - 1
            self.plot(list(range(len(axes))), [axis.positions[j] for axis in axes],
                      pen=pg.mkPen(palette[j], width=3 if best else 1.6))
        self.getAxis("bottom").setTicks([[(i, axis.name) for i, axis in enumerate(axes)]])
        self.setTitle(self._caption, size="9pt", color=foreground)
        self.setXRange(-0.45, max(len(axes) - 1, 1) + 0.25, padding=0)
        self.setYRange(-0.05, 1.05, padding=0)


class SlicePlot(QWidget):
    """The objective against one parameter (chosen in the combo box), complete trials coloured by trial number
    (dark: early, yellow: late)."""

    def __init__(self, theme: Theme = LIGHT):
        super().__init__()
        self.parameter_combo = narrow_combo(QComboBox())
        self.parameter_combo.setToolTip("The parameter on the horizontal axis")
        self.parameter_combo.currentIndexChanged.connect(lambda _: self._redraw())
        self.plot = _new_plot()
        self.points = self.plot.plot([], [], pen=None, symbol="o", symbolSize=9)
        top = QHBoxLayout()
        top.addWidget(QLabel("Parameter:"))
        top.addWidget(self.parameter_combo, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(top)
        layout.addWidget(self.plot, 1)
        self._data: tuple = ([], [], {}, {}, Objective())
        self.apply_theme(theme)

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        _styled(self.plot, theme)
        self.plot.showGrid(x=True, y=True, alpha=theme.grid_alpha)
        self.plot.setTitle("complete trials · colour: trial number (yellow: latest)", size="9pt",
                           color=theme.plot_foreground)
        self._redraw()

    def show_trials(self, trials, parameters: Sequence[str], logs: dict[str, bool], orders: dict[str, list],
                    objective: Objective) -> None:
        current = self.parameter_combo.currentData()
        self.parameter_combo.blockSignals(True)
        self.parameter_combo.clear()
        for path in parameters:
            self.parameter_combo.addItem(path, path)
        index = self.parameter_combo.findData(current)
        self.parameter_combo.setCurrentIndex(max(index, 0))
        self.parameter_combo.blockSignals(False)
        done = [t for t in trials if t.state == "complete" and t.value is not None]
        self._data = (done, list(parameters), logs, orders, objective)
        self._redraw()

    def _redraw(self) -> None:
        trials, parameters, logs, orders, objective = self._data
        path = self.parameter_combo.currentData()
        self.plot.setLabel("left", objective.label())
        self.plot.setLabel("bottom", path or "")
        trials = [t for t in trials if path in t.params]
        if not trials:
            self.points.setData([], [])
            self.plot.getAxis("bottom").setTicks(None)
            return
        axis = make_axis(path, [t.params[path] for t in trials], logs.get(path), orders.get(path, ()))
        if axis.categories is not None:
            count = len(axis.categories) - 1
            xs = [round(p * count) if count else 0 for p in axis.positions]
            ticks = [(round(p * count) if count else 0, text) for p, text in axis.ticks]
            self.plot.getAxis("bottom").setTicks([ticks])
        else:
            xs = [float(t.params[path]) for t in trials]
            distinct = sorted(set(xs))  # few values: a tick at each (no 4.2 shots)
            if len(distinct) <= MAX_TICKS:
                ticks = [(math.log10(v) if axis.log else v, _number_label(v)) for v in distinct]
            else:
                ticks = log_ticks(min(xs), max(xs)) if axis.log else None
            self.plot.getAxis("bottom").setTicks([ticks] if ticks else None)
        self.plot.getPlotItem().setLogMode(x=axis.log and axis.categories is None)
        brushes = colours([t.number for t in trials], True, DARK_FLOOR if self.theme.is_dark else 0.0)
        self.points.setData(xs, [objective.shown(t.value) for t in trials], symbolBrush=brushes,
                            symbolPen=pg.mkPen(self.theme.plot_foreground, width=0.8))
        self.plot.getPlotItem().autoRange(padding=0.12)

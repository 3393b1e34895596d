"""One evaluation result: the headline line (the kind's metric ± 95% CI and the setting) and the pages that fit the
result: the confusion matrix and per-class accuracy of a classification, the score after 0, 1, 10 adaptation
steps of a kind that reports them, a curve an algorithm added (e.g. accuracy against an attack's budget). A page
shows itself when the result holds its data, so no kind or algorithm is named."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import QHeaderView, QLabel, QTableWidget, QVBoxLayout, QWidget

from workbench.gui import theme as themes
from workbench.gui.evaluation.confusion import ConfusionPage
from workbench.gui.evaluation.curve_plot import CurvePlot
from workbench.gui.evaluation.results import ResultData
from workbench.gui.evaluation.widgets import heat, number_item, table_item

PROMPT = "Pick a run and press Evaluate, or choose a saved result."


class PerClassTable(QTableWidget):
    """Accuracy of each test class, worst first, coloured by accuracy."""

    title = "Per class"

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["Class", "Accuracy (%)", "Queries"])
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.setSortingEnabled(True)

    @staticmethod
    def accepts(data: ResultData) -> bool:
        return bool(data.data.get("per_class"))

    def show_result(self, data: ResultData, theme: themes.Theme) -> None:
        confusion = np.asarray(getattr(data.result, "confusion", np.zeros((0, 0))))
        classes = list(data.data.get("confusion_classes") or [])
        counts = {name: int(confusion[i].sum()) for i, name in enumerate(classes)} if len(confusion) else {}
        items = sorted(data.data["per_class"].items(), key=lambda kv: (kv[1], kv[0]))
        self.setSortingEnabled(False)
        self.setRowCount(len(items))
        for r, (name, accuracy) in enumerate(items):
            self.setItem(r, 0, table_item(name))
            cell = number_item(round(100 * accuracy, 2))
            cell.setBackground(QBrush(heat(accuracy * 0.8, theme.is_dark)))
            cell.setForeground(QBrush(QColor("white" if accuracy > 0.7 else theme.plot_foreground)))
            self.setItem(r, 1, cell)
            self.setItem(r, 2, number_item(counts.get(name, 0)))
        self.setSortingEnabled(True)
        self.sortItems(1, Qt.SortOrder.AscendingOrder)


class StepsPage(QWidget):
    """The score after each count of adaptation steps (e.g. MSE after 0, 1 and 10 steps), as a table and a plot."""

    title = "By steps"

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        layout.addWidget(self.note)
        self.table = QTableWidget(0, 2)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        layout.addWidget(self.table)
        self.plot = pg.PlotWidget()
        self.plot.setLabel("bottom", "adaptation steps on the support set")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.getAxis("left").enableAutoSIPrefix(False)
        layout.addWidget(self.plot, 1)

    @staticmethod
    def accepts(data: ResultData) -> bool:
        return bool(data.by_steps())

    def show_result(self, data: ResultData, theme: themes.Theme) -> None:
        metric, rows = data.metric, data.by_steps()
        self.table.setHorizontalHeaderLabels(["Adaptation steps", f"{metric.title} ± 95% CI"])
        self.table.setRowCount(len(rows))
        for r, (steps, value, ci95) in enumerate(rows):
            headline = steps == data.steps
            self.table.setItem(r, 0, table_item(f"{steps}" + ("  (headline)" if headline else "")))
            self.table.setItem(r, 1, table_item(metric.format(value, ci95), align_right=True))
        self.table.resizeRowsToContents()  # as tall as its few rows, the plot takes the rest
        self.table.setFixedHeight(self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
                                  + sum(self.table.rowHeight(r) for r in range(len(rows))))
        scale = 100.0 if metric.percent else 1.0
        x = np.array([s for s, _, _ in rows], float)
        y = np.array([v for _, v, _ in rows]) * scale
        ci = np.nan_to_num(np.array([c for _, _, c in rows]) * scale)
        self.plot.clear()
        self.plot.setLabel("left", f"test {metric.title}" + (" (%)" if metric.percent else ""))
        self.plot.addItem(pg.ErrorBarItem(x=x, y=y, height=2 * ci, beam=0.3, pen=pg.mkPen(theme.overlays[0])))
        self.plot.plot(x, y, pen=pg.mkPen(theme.overlays[0], width=2), symbol="o", symbolBrush=theme.overlays[0],
                       symbolPen=theme.overlays[0])
        direction = "higher" if metric.higher_is_better else "lower"
        self.note.setText(f"{metric.title} on the {data.episodes} test tasks after each number of adaptation steps "
                          f"on the support points ({direction} is better). 0 steps is the meta-learned "
                          "initialisation before any adaptation.")

    def apply_theme(self, theme: themes.Theme) -> None:
        self.plot.setBackground(theme.plot_background)
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setPen(theme.plot_foreground)
            self.plot.getAxis(axis).setTextPen(theme.plot_foreground)


class CurvesPage(QWidget):
    """A curve among the result's extras (the first, when it has several): its points in a table and a plot."""

    def __init__(self, theme: themes.Theme, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = "Curve"  # the curve's own title once one is shown
        layout = QVBoxLayout(self)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        layout.addWidget(self.note)
        self.table = QTableWidget(0, 2)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        layout.addWidget(self.table)
        self.plot = CurvePlot(theme)
        layout.addWidget(self.plot, 1)

    @staticmethod
    def accepts(data: ResultData) -> bool:
        return bool(data.curves())

    def show_result(self, data: ResultData, theme: themes.Theme) -> None:
        curve = data.curves()[0]
        self.title = curve.title
        headline = curve.metric == data.metric.key
        self.table.setHorizontalHeaderLabels([curve.x.replace("_", " "), f"{curve.metric_title} ± 95% CI"])
        self.table.setRowCount(len(curve.points))
        for r, (x, value, ci95) in enumerate(curve.points):
            self.table.setItem(r, 0, table_item(f"{x:g}"))
            text = data.metric.format(value, ci95) if headline else f"{value:.4g} ± {ci95:.2g}"
            self.table.setItem(r, 1, table_item(text, align_right=True))
        self.table.resizeRowsToContents()  # as tall as its few rows (up to a dozen), the plot takes the rest
        rows = sum(self.table.rowHeight(r) for r in range(min(len(curve.points), 12)))
        self.table.setFixedHeight(self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
                                  + rows)
        scale = data.scale(curve.metric)
        self.plot.apply_theme(theme)
        self.plot.show_curves([("", curve)], scale, "%" if scale == 100.0 else "")
        note = curve.note[:1].upper() + curve.note[1:]  # notes are written as clauses
        self.note.setText(f"{curve.title} on the {data.episodes} test tasks. {note}".strip())

    def apply_theme(self, theme: themes.Theme) -> None:
        self.plot.apply_theme(theme)


class BreakdownPage(QTableWidget):
    """A metric per named group among the result's extras (the first, when it has several), e.g. accuracy per
    dataset of a mixture evaluated on episodes within one dataset each."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(0, 3, parent)
        self.title = "Breakdown"  # the breakdown's own title once one is shown
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.setSortingEnabled(False)

    @staticmethod
    def accepts(data: ResultData) -> bool:
        return bool(data.breakdowns())

    def show_result(self, data: ResultData, theme: themes.Theme) -> None:
        breakdown = data.breakdowns()[0]
        self.title = breakdown.title
        headline = breakdown.metric == data.metric.key
        self.setHorizontalHeaderLabels([breakdown.x.replace("_", " ").capitalize(),
                                        f"{breakdown.metric.replace('_', ' ').capitalize()} ± 95% CI", "Episodes"])
        self.setRowCount(len(breakdown.rows))
        for r, (name, value, ci95, count) in enumerate(breakdown.rows):
            text = data.metric.format(value, ci95) if headline else f"{value:.4g} ± {ci95:.2g}"
            self.setItem(r, 0, table_item(name, breakdown.note))
            cell = table_item(text, breakdown.note, align_right=True)
            if headline and data.metric.percent:
                cell.setBackground(QBrush(heat(value * 0.8, theme.is_dark)))
                cell.setForeground(QBrush(QColor("white" if value > 0.7 else theme.plot_foreground)))
            self.setItem(r, 1, cell)
            self.setItem(r, 2, table_item("" if count is None else f"{count:,}", align_right=True))
        self.resizeColumnsToContents()
        self.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)


class ResultPanel(QObject):
    """The summary line and the single-result pages; the view places them (pages as tabs, see ``pages``)."""

    def __init__(self, store, theme: themes.Theme, parent: QObject | None = None):
        super().__init__(parent)
        self.store = store
        self.theme = theme
        self.data: ResultData | None = None
        self.run_id: str | None = None
        self.summary_label = QLabel(PROMPT)
        self.summary_label.setWordWrap(True)
        font = self.summary_label.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        self.summary_label.setFont(font)
        self.confusion = ConfusionPage(store, theme)
        self.per_class = PerClassTable()
        self.steps = StepsPage()
        self.curves = CurvesPage(theme)
        self.breakdown = BreakdownPage()

    @property
    def pages(self) -> list[QWidget]:
        return [self.confusion, self.per_class, self.steps, self.curves, self.breakdown]

    def accepted(self) -> list[QWidget]:
        """The pages that have something to show for the current result."""
        return [page for page in self.pages if self.data is not None and page.accepts(self.data)]

    def show_result(self, data: ResultData, run_id: str) -> list[QWidget]:
        self.data, self.run_id = data, run_id
        try:
            label = self.store.record(run_id).label
        except Exception:  # a bare id reads well enough
            label = run_id
        checkpoint = data.data.get("checkpoint") or "best"
        self.summary_label.setText(f"<b>{label}</b>: {data.headline()} <span style='color:{self.theme.muted_text}'>"
                                   f"({data.setting()}, {checkpoint} checkpoint)</span>")
        if self.confusion.accepts(data):
            self.confusion.show_result(data, run_id)
        if self.per_class.accepts(data):
            self.per_class.show_result(data, self.theme)
        if self.steps.accepts(data):
            self.steps.show_result(data, self.theme)
        if self.curves.accepts(data):
            self.curves.show_result(data, self.theme)
        if self.breakdown.accepts(data):
            self.breakdown.show_result(data, self.theme)
        return self.accepted()

    def clear(self, prompt: str = PROMPT) -> None:
        self.data, self.run_id = None, None
        self.summary_label.setText(prompt)

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.steps.apply_theme(theme)
        self.curves.apply_theme(theme)
        self.confusion.apply_theme(theme)
        if self.data is not None and self.per_class.accepts(self.data):
            self.per_class.show_result(self.data, theme)
        if self.data is not None and self.breakdown.accepts(self.data):
            self.breakdown.show_result(self.data, theme)

    def shutdown(self) -> bool:
        return self.confusion.shutdown()

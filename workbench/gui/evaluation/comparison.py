"""Runs compared on identical test tasks: each run's score and, against a chosen baseline, the mean per-task
difference with the p-value of a paired t-test and a verdict (better / same / worse by the kind's metric); and, when
results carry a curve among their extras (e.g. accuracy against an attack's budget), the runs' curves together."""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QComboBox, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget, QVBoxLayout,
                               QWidget)

from workbench.gui import theme as themes
from workbench.gui.evaluation.curve_plot import CurvePlot
from workbench.gui.evaluation.results import SIGNIFICANCE, Curve, ResultData, compare_rows, metric_name
from workbench.gui.evaluation.widgets import table_item

MARKS = {"better": "▲ better", "worse": "▼ worse", "same": "= same", "baseline": "baseline", "untested": "not tested"}


class ComparisonPanel(QWidget):
    """The baseline chooser, the Compare button (the view connects it) and the table of paired tests."""

    title = "Compare runs"
    comparison_finished = Signal(object)  # list of row dicts (see results.compare_rows)

    def __init__(self, theme: themes.Theme, parent: QWidget | None = None):
        super().__init__(parent)
        self.theme = theme
        self.results: dict[str, ResultData] = {}
        self.labels: dict[str, str] = {}
        self.rows: list[dict[str, Any]] = []
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("Baseline:"))
        self.baseline_combo = QComboBox()
        self.baseline_combo.setMinimumContentsLength(24)
        self.baseline_combo.currentIndexChanged.connect(self.retest)
        row.addWidget(self.baseline_combo, 1)
        self.compare_button = QPushButton("Compare ticked runs")
        self.compare_button.setToolTip("Evaluate every ticked run on the same test tasks (settings on the left) and "
                                       "test each against the baseline with a paired t-test")
        row.addWidget(self.compare_button)
        layout.addLayout(row)
        self.table = QTableWidget(0, 6)
        self._set_headers("Score")
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        layout.addWidget(self.table, 1)
        self.curve_plot = CurvePlot(theme)  # shown when a compared result carries a curve
        self.curve_plot.setVisible(False)
        layout.addWidget(self.curve_plot, 1)
        self.note = QLabel(f"better / worse: significant at p < {SIGNIFICANCE} on identical tasks.")
        self.note.setWordWrap(True)
        layout.addWidget(self.note)

    def _set_headers(self, metric_title: str) -> None:
        self.table.setHorizontalHeaderLabels(["Run", "Algorithm", f"{metric_title} ± 95% CI", "Δ vs baseline",
                                              "p (paired t)", "Verdict"])

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.curve_plot.apply_theme(theme)
        if self.rows:
            self.retest()

    def say(self, text: str) -> None:
        self.note.setText(text)

    def show_results(self, run_ids: list[str], results: list, labels: dict[str, str] | None = None) -> None:
        """Show results of the same tasks, one per run id (in the same order); keeps the baseline if still there."""
        baseline_id = self.baseline_combo.currentData()
        self.results = {run_id: ResultData.of(result) for run_id, result in zip(run_ids, results)}
        self.labels = dict(labels or {})
        ids = list(self.results)
        if baseline_id not in ids:
            baseline_id = ids[0]
        self.baseline_combo.blockSignals(True)
        self.baseline_combo.clear()
        for run_id in ids:
            self.baseline_combo.addItem(self.labels.get(run_id, run_id), run_id)
        self.baseline_combo.setCurrentIndex(ids.index(baseline_id))
        self.baseline_combo.blockSignals(False)
        self.retest()

    def retest(self, *_args) -> None:
        """Test every run against the baseline in the combo (no evaluation: the per-task scores are kept)."""
        baseline_id = self.baseline_combo.currentData()
        if baseline_id not in self.results:
            return
        self.rows = compare_rows(self.results, baseline_id)
        first = self.results[baseline_id]
        self._set_headers(first.metric.title)
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            self._fill_row(r, row, first)
        noun = "per-episode" if first.data.get("ways") else "per-task"
        note = (f"All runs on the same test tasks ({first.setting()}). better / worse: paired t-test over {noun} "
                f"{metric_name(first.metric)}, p < {SIGNIFICANCE}; "
                f"{'higher' if first.metric.higher_is_better else 'lower'} is better.")
        curve = self._show_curves(baseline_id)
        self.note.setText(note + (f" {curve.title}: {curve.note}" if curve is not None and curve.note else ""))
        self.comparison_finished.emit(self.rows)

    def compared_curves(self, baseline_id: str) -> list[tuple[str, Curve]]:
        """(run id, curve) of every compared result that carries the curve the baseline (else the first run with
        one) carries."""
        ordered = [baseline_id] + [run_id for run_id in self.results if run_id != baseline_id]
        found = {run_id: {curve.key: curve for curve in self.results[run_id].curves()} for run_id in ordered}
        key = next((next(iter(curves)) for curves in found.values() if curves), None)
        return [(run_id, found[run_id][key]) for run_id in ordered if key in found[run_id]]

    def _show_curves(self, baseline_id: str) -> Curve | None:
        series = self.compared_curves(baseline_id)
        self.curve_plot.setVisible(bool(series))
        if not series:
            return None
        curve = series[0][1]
        scale = self.results[baseline_id].scale(curve.metric)
        self.curve_plot.show_curves([(self.labels.get(run_id, run_id), c) for run_id, c in series], scale,
                                    "%" if scale == 100.0 else "")
        self.curve_plot.setTitle(f"{curve.title}, same test tasks", color=self.theme.plot_foreground)
        return curve

    def _fill_row(self, r: int, row: dict[str, Any], first: ResultData) -> None:
        metric = first.metric
        table = self.table
        table.setItem(r, 0, table_item(self.labels.get(row["run"], row["run"]), row["run"]))
        table.setItem(r, 1, table_item(row["algorithm"]))
        table.setItem(r, 2, table_item(metric.format(row["value"], row["ci95"]), align_right=True))
        untested = row["baseline"] or math.isnan(row["diff"])
        diff = "" if untested else (f"{100 * row['diff']:+.2f} pts" if metric.percent else f"{row['diff']:+.4g}")
        table.setItem(r, 3, table_item(diff, align_right=True))
        table.setItem(r, 4, table_item("" if untested else f"{row['p']:.3g}", align_right=True))
        item = table_item(MARKS[row["verdict"]], row["error"])
        colour = {"better": self.theme.ok_text, "worse": self.theme.error_text}.get(row["verdict"])
        if colour:
            item.setForeground(QBrush(QColor(colour)))
        table.setItem(r, 5, item)

"""A small plot of the curves evaluation results carry among their extras (see ``results.Curve``): one line with
95% CI bars per result, e.g. accuracy against an attack's budget for several runs tested on the same tasks."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from workbench.gui import theme as themes
from workbench.gui.evaluation.results import Curve


class CurvePlot(pg.PlotWidget):
    """Value ± 95% CI against the curve's x, one line per (label, curve)."""

    def __init__(self, theme: themes.Theme, parent=None):
        super().__init__(parent)
        self.theme = theme
        self.showGrid(x=True, y=True, alpha=0.25)
        self.legend = self.addLegend(offset=(-10, 10))  # top right: scores fall along most such curves
        self.getAxis("left").enableAutoSIPrefix(False)
        self.getAxis("bottom").enableAutoSIPrefix(False)  # budgets like 0.008 read as they are
        self.setMinimumHeight(180)
        self.apply_theme(theme)

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.setBackground(theme.plot_background)
        self.legend.setLabelTextColor(theme.plot_foreground)
        for axis in ("left", "bottom"):
            self.getAxis(axis).setPen(theme.plot_foreground)
            self.getAxis(axis).setTextPen(theme.plot_foreground)

    def show_curves(self, series: list[tuple[str, Curve]], scale: float = 1.0, unit: str = "") -> None:
        """Plot each (label, curve); ``scale`` multiplies the values (100 for percent, named by ``unit``)."""
        self.clear()
        if not series:
            return
        first = series[0][1]
        self.setLabel("bottom", first.x.replace("_", " "))
        self.setLabel("left", first.metric.replace("_", " ") + (f" ({unit})" if unit else ""))
        xs = [x for _, curve in series for x, _, _ in curve.points]
        beam = 0.03 * (max(xs) - min(xs) or 1.0)
        for k, (label, curve) in enumerate(series):
            colour = self.theme.overlays[k % len(self.theme.overlays)]
            x = np.array([p[0] for p in curve.points], float)
            y = np.array([p[1] for p in curve.points], float) * scale
            ci = np.nan_to_num(np.array([p[2] for p in curve.points], float) * scale)
            self.addItem(pg.ErrorBarItem(x=x, y=y, height=2 * ci, beam=beam, pen=pg.mkPen(colour)))
            self.plot(x, y, pen=pg.mkPen(colour, width=2), symbol="o", symbolBrush=colour, symbolPen=colour,
                      symbolSize=7, name=label or None)

"""A run's test score against shots per class (or support points), one curve per way count, from its saved
evaluations."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from workbench.core.kinds import MetricSpec
from workbench.gui import theme as themes
from workbench.gui.evaluation.results import shot_series


class ShotsPlot(pg.PlotWidget):
    """Score ± 95% CI against shots, in the metric of the run's kind."""

    def __init__(self, theme: themes.Theme, parent=None):
        super().__init__(parent)
        self.theme = theme
        self.showGrid(x=True, y=True, alpha=0.25)
        self.addLegend(offset=(10, 10))
        self.getAxis("left").enableAutoSIPrefix(False)  # "0.31", not "310 (x0.001)"
        self.apply_theme(theme)

    @staticmethod
    def title_for(metric: MetricSpec) -> str:
        return f"{metric.title} vs shots"

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.setBackground(theme.plot_background)
        for axis in ("left", "bottom"):
            self.getAxis(axis).setPen(theme.plot_foreground)
            self.getAxis(axis).setTextPen(theme.plot_foreground)

    def show_run(self, saved: list[dict], metric: MetricSpec, sweep_hint: str) -> dict:
        """Plot a run's saved evaluations (``Run.evaluations()``); returns the series plotted."""
        self.clear()
        scale = 100.0 if metric.percent else 1.0
        series = shot_series(saved)
        per = "per task" if None in series else "per class"  # kinds without ways count support points per task
        self.setLabel("bottom", f"shots (support examples {per})")
        self.setLabel("left", f"test {metric.title}" + (" (%)" if metric.percent else ""))
        colours = self.theme.overlays
        for k, (ways, points) in enumerate(sorted(series.items(), key=lambda item: item[0] or 0)):
            shots = np.array([p[0] for p in points], float)
            values = np.array([p[1] for p in points]) * scale
            ci = np.nan_to_num(np.array([p[2] for p in points]) * scale)
            colour = colours[k % len(colours)]
            self.addItem(pg.ErrorBarItem(x=shots, y=values, height=2 * ci, beam=0.2, pen=pg.mkPen(colour)))
            self.plot(shots, values, pen=pg.mkPen(colour, width=2), symbol="o", symbolBrush=colour,
                      symbolPen=colour, name=f"{ways}-way" if ways else metric.title)
        shots = [point[0] for points in series.values() for point in points]
        if shots:  # a shot of margin: a single point gets a readable axis, not one squeezed around it
            self.setXRange(min(shots) - 1, max(shots) + 1, padding=0)
        if not series:
            text = pg.TextItem(f"No saved test results yet: press '{sweep_hint}'.", color=self.theme.muted_text,
                               anchor=(0.5, 0.5))
            self.addItem(text)
            text.setPos(0.5, 0.5)
        return series

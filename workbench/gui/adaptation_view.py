"""The "Adaptation" tab: for a gradient-based run, query loss and accuracy against the inner step on fixed probe
tasks, from the meta-learned start and from a random start of the same architecture, so the benefit of
meta-learning is visible. Computed off the GUI thread; reads saved runs, so it works after a restart."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QLabel, QProgressBar, QPushButton, QSpinBox,
                               QStackedWidget, QVBoxLayout, QWidget)

from workbench.core.kinds import ACCURACY
from workbench.gui import theme as themes
from workbench.gui.background import BackgroundTask
from workbench.gui.view_registry import register_view


def gradient_based_titles() -> list[str]:
    from workbench.core.algorithms import algorithm_names, get_algorithm

    return [get_algorithm(name).title for name in algorithm_names() if get_algorithm(name).gradient_based]


def trained_inner_steps(algorithm) -> int | None:
    """How many inner steps the algorithm uses at test time (marked on the plot): the hyperparameter it declares
    as ``adaptation_steps_hparam``."""
    name = type(algorithm).adaptation_steps_hparam
    value = getattr(algorithm.hparams, name, None) if name else None
    return value if isinstance(value, int) else None


def configured_steps(algorithm_config) -> int | None:
    """The test-time steps a run's config sets (its declared hyperparameter, default filled in), or None."""
    from workbench.core.algorithms import get_algorithm

    cls = get_algorithm(algorithm_config.name)
    if not cls.adaptation_steps_hparam:
        return None
    value = cls.full_hparams(algorithm_config.hparams).get(cls.adaptation_steps_hparam)
    return value if isinstance(value, int) else None


def compute_adaptation(progress, store, run_id: str, steps: int, tasks: int, checkpoint: str = "best") -> dict:
    """Load the run, build its probe tasks and trace both starts. Runs in a worker thread."""
    from workbench.core import data, probes
    from workbench.core.runs import load_model

    run = store.get(run_id)
    loaded = load_model(run, "cpu", kind=checkpoint)
    if not loaded.algorithm.gradient_based:
        raise ValueError(f"{loaded.algorithm.title} adapts without gradient steps; pick a gradient-based run")
    dataset = data.load_dataset(run.config.dataset, progress)
    kind = loaded.algorithm.kind
    if "ways" in kind.dataset_fields:  # episodes of classes: validation classes when there are enough
        split = probes.probe_split_name(dataset, run.config.dataset.ways)
        episodes = probes.config_probe_episodes(dataset, run.config, tasks)
    else:  # tasks the kind draws (functions to fit), fixed by the probe seed
        split = "val"
        episodes = kind.fixed_tasks(dataset, run.config, split, tasks, probes.PROBE_SEED)
    result = probes.adaptation_comparison(loaded.algorithm, episodes, steps, progress)
    result.update(run=run_id, trained_steps=trained_inner_steps(loaded.algorithm), split=split,
                  title=loaded.algorithm.title, checkpoint_step=loaded.step, metric=kind.metric)
    return result


def metric_series(trace: dict, metric) -> tuple[np.ndarray, str]:
    """The query metric of a trace, scaled for the plot (percent for accuracy), and its axis label."""
    values = np.asarray(trace[f"query_{metric.key}"], float)
    name = metric.title if metric.title.isupper() else metric.title.lower()
    return (100 * values, f"query {name} (%)") if metric.percent else (values, f"query {name}")


@register_view
class AdaptationView(QWidget):
    view_title = "Adaptation"
    view_capability = "adaptation"
    view_order = 50

    trace_ready = Signal(object)

    @classmethod
    def for_window(cls, window) -> "AdaptationView":
        """A view whose run list follows the window's run store and finished trainings."""
        view = cls(window.store, theme=window.theme)
        window.run_store_changed.connect(view.refresh_runs)
        window.training_finished.connect(lambda *_: view.refresh_runs())
        return view

    def __init__(self, store=None, theme: themes.Theme | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        from workbench.core.runs import RunStore

        self.store = store if store is not None else RunStore()
        self.theme = theme or themes.LIGHT
        self.result: dict[str, Any] | None = None
        self.task = BackgroundTask(self, progress=self._on_progress, finished=self._on_finished,
                                   failed=lambda message, _details: self._set_busy(False, f"Failed: {message}"),
                                   cancelled=lambda: self._set_busy(False, "cancelled"))
        self._build()
        self.refresh_runs()

    def _build(self) -> None:
        controls = self._build_controls()

        self.progress_bar = QProgressBar()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)

        self._build_pages()

        self.caption = QLabel("")
        self.caption.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(controls)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status_label)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.caption)
        self.apply_theme(self.theme)

    def _build_controls(self) -> QHBoxLayout:
        """Run, inner steps, probe tasks and the buttons."""
        controls = QHBoxLayout()
        form = QFormLayout()
        self.run_combo = QComboBox()
        self.run_combo.setMinimumContentsLength(30)
        self.run_combo.currentIndexChanged.connect(self._on_run_changed)
        form.addRow("Run", self.run_combo)
        controls.addLayout(form, 2)
        form2 = QFormLayout()
        self.steps_spin = QSpinBox(minimum=1, maximum=1000, value=20)
        self.steps_spin.setToolTip("Inner steps to trace; more than training used shows what further adapting does")
        self.tasks_spin = QSpinBox(minimum=1, maximum=50, value=1)
        self.tasks_spin.setToolTip("Fixed probe tasks (from meta-validation) to average over")
        form2.addRow("Inner steps", self.steps_spin)
        form2.addRow("Probe tasks", self.tasks_spin)
        controls.addLayout(form2, 1)
        buttons = QVBoxLayout()
        self.compute_button = QPushButton("Trace adaptation")
        self.compute_button.clicked.connect(self.compute)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.task.cancel)
        self.refresh_button = QPushButton("Refresh runs")
        self.refresh_button.clicked.connect(self.refresh_runs)
        for button in (self.compute_button, self.cancel_button, self.refresh_button):
            buttons.addWidget(button)
        controls.addLayout(buttons)
        return controls

    def _build_pages(self) -> None:
        """The loss and accuracy plots on one page; on the other, why a run has no inner loop to trace."""
        self.loss_plot = pg.PlotWidget()
        self.accuracy_plot = pg.PlotWidget()
        # Loss falls and accuracy rises: legends sit where the curves are not (top right / bottom right).
        for plot, label, corner in ((self.loss_plot, "loss", (-10, 10)),
                                    (self.accuracy_plot, "query accuracy (%)", (-10, -10))):
            plot.setLabel("bottom", "inner step (0 = before adapting)")
            plot.setLabel("left", label)
            plot.showGrid(x=True, y=True, alpha=0.25)
            plot.addLegend(offset=corner)
        plots = QWidget()
        plots_layout = QHBoxLayout(plots)
        plots_layout.setContentsMargins(0, 0, 0, 0)
        plots_layout.addWidget(self.loss_plot)
        plots_layout.addWidget(self.accuracy_plot)

        self.explanation = QLabel()
        self.explanation.setWordWrap(True)
        self.explanation.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.explanation.setTextFormat(Qt.TextFormat.RichText)
        self.explanation.setMargin(16)
        self.pages = QStackedWidget()
        self.pages.addWidget(plots)
        self.pages.addWidget(self.explanation)

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        for plot in (self.loss_plot, self.accuracy_plot):
            plot.setBackground(theme.plot_background)
            for axis in ("left", "bottom"):
                plot.getAxis(axis).setPen(theme.plot_foreground)
                plot.getAxis(axis).setTextPen(theme.plot_foreground)
        if self.result is not None:
            self._plot(self.result)

    # --- runs -------------------------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        from workbench.core.algorithms import get_algorithm
        from workbench.core.errors import WorkbenchError

        current = self.run_combo.currentData()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        for record in self.store.list():
            try:
                gradient = get_algorithm(record.algorithm).gradient_based
            except (WorkbenchError, KeyError):
                gradient = False
            mark = "" if gradient else "  (not gradient-based)"
            self.run_combo.addItem(f"{record.label} · {record.algorithm}{mark}", (record.id, gradient))
        index = next((i for i in range(self.run_combo.count()) if self.run_combo.itemData(i) == current), -1)
        if index < 0:  # prefer a run this tab can show
            index = next((i for i in range(self.run_combo.count()) if self.run_combo.itemData(i)[1]), 0)
        self.run_combo.setCurrentIndex(index)
        self.run_combo.blockSignals(False)
        self._on_run_changed()

    def select_run(self, run_id: str) -> None:
        for i in range(self.run_combo.count()):
            if self.run_combo.itemData(i)[0] == run_id:
                self.run_combo.setCurrentIndex(i)
                return

    def _on_run_changed(self, *_args) -> None:
        data = self.run_combo.currentData()
        gradient = bool(data and data[1])
        self.compute_button.setEnabled(gradient and not self.task.is_running)
        if data is None:
            self._explain("There are no runs yet. Train a gradient-based algorithm first.")
            return
        if not gradient:
            self._explain(f"The run <b>{self.run_combo.currentText().split(' (')[0]}</b> does not adapt with "
                          f"gradient steps.")
            return
        self.pages.setCurrentIndex(0)
        try:
            steps = configured_steps(self.store.get(data[0]).config.algorithm)
        except Exception:  # a damaged or unreadable run: keep the steps shown
            steps = None
        if steps:
            self.steps_spin.setValue(max(2 * steps, 10) if steps <= 200 else steps)
        if self.result is None or self.result.get("run") != data[0]:
            self._clear_plots("Press 'Trace adaptation' to adapt on the probe tasks.")
            if self.isVisible():  # a shown tab traces at once rather than showing empty axes
                self.compute()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        data = self.run_combo.currentData()
        if data and data[1] and not self.task.is_running and (self.result is None or self.result.get("run") != data[0]):
            self.compute()

    def _explain(self, lead: str) -> None:
        names = ", ".join(gradient_based_titles()) or "none are installed"
        self.explanation.setText(
            f"<h3>How adaptation unfolds</h3><p>{lead}</p>"
            "<p>This tab plots, for a fixed probe task from the meta-validation classes, the query loss and "
            "accuracy after each inner gradient step on the support set: step 0 is the meta-learned "
            "initialization, later steps are the adapted network. The same is drawn for a randomly initialized "
            "network of the same architecture, so you can see how much the meta-learned start helps.</p>"
            f"<p>Algorithms that feed this tab (gradient-based): <b>{names}</b>.</p>"
            "<p>Metric methods adapt in one shot by comparing embeddings, without an inner loop; look at them in "
            "the <i>Embeddings</i> tab instead.</p>")
        self.pages.setCurrentIndex(1)
        self.caption.setText("")
        self.status_label.setText("")
        self.progress_bar.setValue(0)

    # --- work ---------------------------------------------------------------------------------------------
    def compute(self) -> None:
        data = self.run_combo.currentData()
        if not data or not data[1]:
            return
        self._set_busy(True, "loading the run…")
        self.task.start(compute_adaptation, self.store, data[0], self.steps_spin.value(), self.tasks_spin.value())

    @property
    def is_busy(self) -> bool:
        return self.task.is_running

    def _set_busy(self, busy: bool, message: str) -> None:
        self.cancel_button.setEnabled(busy)
        data = self.run_combo.currentData()
        self.compute_button.setEnabled(not busy and bool(data and data[1]))
        if not busy:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0 if message != "done" else 1)
        self.status_label.setText(message)

    def _on_progress(self, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.status_label.setText(message)

    def _on_finished(self, result: dict) -> None:
        self._set_busy(False, "done")
        self.result = result
        self._plot(result)
        self.trace_ready.emit(result)

    def _clear_plots(self, caption: str) -> None:
        for plot in (self.loss_plot, self.accuracy_plot):
            plot.clear()
        self.caption.setText(caption)

    def _plot(self, result: dict) -> None:
        self._clear_plots("")
        t = self.theme
        metric = result.get("metric", ACCURACY)
        self.accuracy_plot.setLabel("left", metric_series(result["meta"], metric)[1])
        legend = self.accuracy_plot.getPlotItem().legend  # where the curves end: low for a rising metric
        corner = (1, 1) if metric.higher_is_better else (1, 0)
        legend.anchor(corner, corner, offset=(-10, -10 if metric.higher_is_better else 10))
        series = (("meta", "meta-learned start", t.train, Qt.PenStyle.SolidLine),
                  ("random", "random start", t.muted_text, Qt.PenStyle.DashLine))
        for key, name, colour, style in series:
            trace = result[key]
            steps = np.asarray(trace["step"], float)
            self.loss_plot.plot(steps, trace["query_loss"], pen=pg.mkPen(colour, width=2, style=style),
                                name=f"{name}: query", symbol="o", symbolSize=5, symbolBrush=colour, symbolPen=None)
            self.loss_plot.plot(steps, trace["support_loss"], pen=pg.mkPen(colour, width=1, style=Qt.PenStyle.DotLine),
                                name=f"{name}: support")
            self.accuracy_plot.plot(steps, metric_series(trace, metric)[0],
                                    pen=pg.mkPen(colour, width=2, style=style), name=name, symbol="o", symbolSize=5,
                                    symbolBrush=colour, symbolPen=None)
        trained = result.get("trained_steps")
        if trained is not None and trained <= result["steps"]:
            for plot in (self.loss_plot, self.accuracy_plot):
                line = pg.InfiniteLine(pos=trained, angle=90, pen=pg.mkPen(t.validation, width=1,
                                                                           style=Qt.PenStyle.DashLine),
                                       label="test-time steps", labelOpts={"color": t.validation,
                                                                           "position": 0.92})
                plot.addItem(line)
        meta, rand = (metric_series(result[key], metric)[0] for key in ("meta", "random"))
        label = metric_series(result["meta"], metric)[1].replace(" (%)", "")
        unit = "%" if metric.percent else ""
        shown = (lambda value: f"{value:.1f}{unit}") if metric.percent else (lambda value: f"{value:.3g}")
        self.caption.setText(
            f"{result.get('title', '')} on {result['episodes']} probe task(s): {label} {shown(meta[0])} before "
            f"adapting → {shown(meta[-1])} after {result['steps']} steps from the meta-learned start; "
            f"{shown(rand[0])} → {shown(rand[-1])} from a random start.")

    def shutdown(self) -> bool:
        return self.task.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

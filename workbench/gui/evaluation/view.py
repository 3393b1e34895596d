"""The "Evaluation" tab: pick saved runs, evaluate them through the window's evaluation service, read one result
(its kind's metric ± 95% CI and the pages that fit it), compare runs of one kind on identical test tasks, and plot
the score against shots.

A run can be tested on another dataset of its kind ("Test on", listed from the data catalog, with its location):
the core reads it at the run's image size and preprocesses it like the run's training data.

Everything is read from the run folders, so the tab works on runs saved before a restart.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget,
                               QListWidgetItem, QProgressBar, QPushButton, QScrollArea, QSpinBox, QSplitter, QTabWidget,
                               QVBoxLayout, QWidget)

from workbench.core.kinds import DEFAULT_KIND, get_kind_class
from workbench.gui import theme as themes
from workbench.gui.evaluation.comparison import ComparisonPanel
from workbench.gui.evaluation.confusion import tasks_key
from workbench.gui.evaluation.results import ResultData, describe_saved, metric_of, setting_text, shot_series
from workbench.gui.evaluation.service import EvaluationService
from workbench.gui.evaluation.shots_plot import ShotsPlot
from workbench.gui.evaluation.single_run import PROMPT, ResultPanel
from workbench.gui.hparam_form import narrow_combo
from workbench.gui.view_registry import register_view

SHOT_SWEEP = (1, 5, 10)
OWN_DATA = "the run's dataset"


@register_view
class EvaluationView(QWidget):
    """Evaluate runs, inspect one result, compare several."""

    view_title = "Evaluation"
    view_capability = "evaluation"
    view_order = 40

    evaluation_finished = Signal(object)  # the result shown (after a sweep or a comparison: the selected run's)
    examples_shown = Signal(object)  # the dict from confusion.gather_examples
    comparison_finished = Signal(object)  # list of row dicts

    def __init__(self, store=None, theme: themes.Theme | None = None, parent: QWidget | None = None,
                 service: EvaluationService | None = None):
        super().__init__(parent)
        from workbench.core.runs import RunStore

        self.store = store if store is not None else RunStore()
        self.theme = theme or themes.LIGHT
        self.service = service if service is not None else EvaluationService(self)
        self.sweep_shots = SHOT_SWEEP
        self._settings_run: str | None = None
        self._jobs: dict[int, tuple[str, list[str]]] = {}  # this view's jobs: id -> (purpose, run ids)
        self._build()
        for signal, slot in ((self.service.started, self._on_started), (self.service.progress, self._on_progress),
                             (self.service.finished, self._on_finished), (self.service.failed, self._on_failed),
                             (self.service.cancelled, self._on_cancelled)):
            signal.connect(slot)
        self.refresh_runs()

    @classmethod
    def for_window(cls, window) -> "EvaluationView":
        """The tab of ``window``: it shares the window's evaluation service and follows its runs."""
        view = cls(window.store, theme=window.theme, service=EvaluationService.for_window(window))
        window.run_store_changed.connect(view.refresh_runs)
        window.training_finished.connect(lambda *_: view.refresh_runs())
        window.theme_changed.connect(view.apply_theme)
        runs_view = getattr(window, "runs_view", None)  # built first (lower view_order) when the window has one
        if runs_view is not None:
            runs_view.open_run.connect(view.select_run)
        return view

    # --- layout -------------------------------------------------------------------------------------
    def _build(self) -> None:
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        self._build_run_list(left_layout)
        self._build_settings(left_layout)
        self._build_actions(left_layout)
        left_scroll = QScrollArea()  # scrolls rather than forcing a tall minimum on the main window
        left_scroll.setWidgetResizable(True)
        left_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        left_scroll.setWidget(left)
        left_scroll.setMinimumWidth(260)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left_scroll)
        splitter.addWidget(self._build_right())
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([300, 900])
        QVBoxLayout(self).addWidget(splitter)
        self.apply_theme(self.theme)

    def _build_run_list(self, layout: QVBoxLayout) -> None:
        layout.addWidget(QLabel("Runs (tick several to compare):"))
        self.run_list = QListWidget()
        self.run_list.setMinimumHeight(80)
        self.run_list.currentItemChanged.connect(self._on_run_selected)
        layout.addWidget(self.run_list, 1)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.clicked.connect(self.refresh_runs)
        layout.addWidget(self.refresh_button)

    def _build_settings(self, layout: QVBoxLayout) -> None:
        self.form = QFormLayout()
        self.ways_spin = QSpinBox(minimum=2, maximum=100, value=5)
        self.shots_spin = QSpinBox(minimum=1, maximum=100, value=1)
        self.episodes_spin = QSpinBox(minimum=2, maximum=10_000, value=600)
        self.seed_spin = QSpinBox(minimum=0, maximum=2**31 - 1, value=0)
        self.checkpoint_combo = QComboBox()
        self.checkpoint_combo.addItems(["best", "last"])
        self._build_data_choice()
        for label, widget in (("Test on", self.dataset_combo), ("Location", self.data_root_row),
                              ("Ways", self.ways_spin), ("Shots", self.shots_spin),
                              ("Test episodes", self.episodes_spin), ("Episode seed", self.seed_spin),
                              ("Checkpoint", self.checkpoint_combo)):
            self.form.addRow(label, widget)
        self.form.setRowVisible(self.data_root_row, False)
        layout.addLayout(self.form)

    def _build_data_choice(self) -> None:
        """Which dataset's test tasks: the run's own, or another of its kind (from the catalog) and its location."""
        self.dataset_combo = narrow_combo(QComboBox())
        self.dataset_combo.setToolTip("Test the run on its own dataset, or on another dataset of its kind; the "
                                      "other data is preprocessed like the run's training data")
        self.dataset_combo.addItem(OWN_DATA, None)
        self.dataset_combo.currentIndexChanged.connect(self._on_data_choice)
        self.data_root_edit = QLineEdit()
        self.data_root_edit.setPlaceholderText("folder (or zip) with the data")
        self.data_root_edit.setClearButtonEnabled(True)
        self.data_root_edit.textChanged.connect(self.data_root_edit.setToolTip)  # the whole path, when it is long
        self.data_root_button = QPushButton("Browse…")
        self.data_root_button.setToolTip("Choose the folder holding the dataset")
        self.data_root_button.clicked.connect(self._choose_data_root)
        self.data_root_row = QWidget()
        row = QHBoxLayout(self.data_root_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.data_root_edit, 1)
        row.addWidget(self.data_root_button)

    # --- the dataset to test on -----------------------------------------------------------------------
    def _fill_data_choices(self, kind: str) -> None:
        """The catalog's datasets of ``kind`` after the run's own; the choice is kept when it still fits."""
        from workbench.core.data import dataset_info, datasets_for_kind

        chosen = self.dataset_combo.currentData()
        self.dataset_combo.blockSignals(True)
        while self.dataset_combo.count() > 1:
            self.dataset_combo.removeItem(1)
        for name in datasets_for_kind(kind):
            info = dataset_info(name)
            self.dataset_combo.addItem(info.title, name)
            self.dataset_combo.setItemData(self.dataset_combo.count() - 1, info.description,
                                           Qt.ItemDataRole.ToolTipRole)
        index = self.dataset_combo.findData(chosen) if chosen else 0
        self.dataset_combo.setCurrentIndex(max(index, 0))
        self.dataset_combo.blockSignals(False)
        self._on_data_choice()

    def _on_data_choice(self) -> None:
        from workbench.core.data import dataset_info

        name = self.dataset_combo.currentData()
        info = dataset_info(name) if name else None
        self.form.setRowVisible(self.data_root_row, bool(info and info.needs_root))

    def _choose_data_root(self) -> None:
        from workbench.core.data import dataset_info

        info = dataset_info(self.dataset_combo.currentData() or "")
        title = info.title if info is not None else "dataset"
        folder = QFileDialog.getExistingDirectory(self, f"Choose the {title} folder", self.data_root_edit.text())
        if folder:
            self.data_root_edit.setText(folder)

    def data_choice(self) -> dict[str, str]:
        """{"dataset": name, "data_root": location} for another dataset; empty for the run's own."""
        from workbench.core.data import dataset_info

        name = self.dataset_combo.currentData()
        if not name:
            return {}
        choice = {"dataset": name}
        info = dataset_info(name)
        if info is not None and info.needs_root and self.data_root_edit.text().strip():
            choice["data_root"] = self.data_root_edit.text().strip()
        return choice

    def _build_actions(self, layout: QVBoxLayout) -> None:
        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.setToolTip("Run the fixed test tasks for the selected run")
        self.evaluate_button.clicked.connect(self.evaluate_selected)
        self.sweep_button = QPushButton("Evaluate at " + ", ".join(map(str, SHOT_SWEEP)) + " shots")
        self.sweep_button.clicked.connect(self.evaluate_shot_sweep)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        self.saved_combo = narrow_combo(QComboBox())
        self.saved_combo.activated.connect(self._on_saved_chosen)
        for widget in (self.evaluate_button, self.sweep_button, self.cancel_button, self.progress_bar,
                       self.status_label, QLabel("Saved results of this run:"), self.saved_combo):
            layout.addWidget(widget)

    def _build_right(self) -> QWidget:
        right = QWidget()
        layout = QVBoxLayout(right)
        layout.setContentsMargins(0, 0, 0, 0)
        self.result_panel = ResultPanel(self.store, self.theme, self)
        self.result_panel.confusion.examples_shown.connect(self.examples_shown)
        layout.addWidget(self.result_panel.summary_label)
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs, 1)
        for page in self.result_panel.pages:
            self.tabs.setTabVisible(self.tabs.addTab(page, page.title), False)  # until a result fits them
        self.compare_panel = ComparisonPanel(self.theme)
        self.compare_panel.compare_button.clicked.connect(self.compare_checked)
        self.compare_panel.comparison_finished.connect(self.comparison_finished)
        self.tabs.addTab(self.compare_panel, self.compare_panel.title)
        self.shot_plot = ShotsPlot(self.theme)
        self.tabs.addTab(self.shot_plot, ShotsPlot.title_for(metric_of(DEFAULT_KIND)))
        # Short names for the widgets tests and the tour reach for.
        self.summary_label = self.result_panel.summary_label
        self.confusion_table = self.result_panel.confusion.table
        self.per_class_table = self.result_panel.per_class
        self.compare_table = self.compare_panel.table
        self.baseline_combo = self.compare_panel.baseline_combo
        return right

    def apply_theme(self, theme: themes.Theme) -> None:
        self.theme = theme
        self.result_panel.apply_theme(theme)
        self.compare_panel.apply_theme(theme)
        self.shot_plot.apply_theme(theme)

    # --- what is shown ------------------------------------------------------------------------------
    @property
    def result(self):
        """The result object shown (the kind's result class), or None."""
        return self.result_panel.data.result if self.result_panel.data is not None else None

    @property
    def comparison(self) -> list[dict[str, Any]]:
        return self.compare_panel.rows

    def show_result(self, result, run_id: str) -> None:
        accepted = self.result_panel.show_result(ResultData.of(result), run_id)
        self._show_pages(accepted)

    def _show_pages(self, accepted: list[QWidget]) -> None:
        current = self.tabs.currentWidget()
        had_pages = any(self.tabs.isTabVisible(self.tabs.indexOf(page)) for page in self.result_panel.pages)
        for page in self.result_panel.pages:
            self.tabs.setTabVisible(self.tabs.indexOf(page), page in accepted)
            self.tabs.setTabText(self.tabs.indexOf(page), page.title)  # a page may title itself after its result
        if accepted and (not had_pages or (current in self.result_panel.pages and current not in accepted)):
            self.tabs.setCurrentWidget(accepted[0])  # the first result, or the page shown no longer fits

    def clear_result(self, prompt: str = PROMPT) -> None:
        self.result_panel.clear(prompt)
        self._show_pages([])

    # --- runs -----------------------------------------------------------------------------------------
    def refresh_runs(self) -> None:
        current = self.selected_run_id()
        checked = set(self.checked_run_ids())
        self.run_list.blockSignals(True)
        self.run_list.clear()
        for record in self.store.list():
            item = QListWidgetItem(f"{record.label}  ·  {record.algorithm}, {record.dataset} "
                                   f"{setting_text(record.kind, record.ways, record.shots)}")
            item.setData(Qt.ItemDataRole.UserRole, record.id)
            item.setToolTip(f"{record.id}: {record.kind}, {record.status}, {record.steps_done}/"
                            f"{record.steps_total} steps")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if record.id in checked else Qt.CheckState.Unchecked)
            self.run_list.addItem(item)
            if record.id == current:
                self.run_list.setCurrentItem(item)
        self.run_list.blockSignals(False)
        if self.run_list.currentItem() is None and self.run_list.count():
            self.run_list.setCurrentRow(0)
        elif self.run_list.currentItem() is not None:
            self._on_run_selected(self.run_list.currentItem())
        self._update_buttons()

    def selected_run_id(self) -> str | None:
        item = self.run_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else None

    def select_run(self, run_id: str) -> None:
        for attempt in range(2):  # the second time after reloading the list: the run may be new
            for i in range(self.run_list.count()):
                if self.run_list.item(i).data(Qt.ItemDataRole.UserRole) == run_id:
                    self.run_list.setCurrentRow(i)
                    return
            if attempt == 0:
                self.refresh_runs()

    def checked_run_ids(self) -> list[str]:
        return [self.run_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.run_list.count())
                if self.run_list.item(i).checkState() == Qt.CheckState.Checked]

    def set_checked(self, run_ids) -> None:
        wanted = set(run_ids)
        for i in range(self.run_list.count()):
            item = self.run_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.data(Qt.ItemDataRole.UserRole) in wanted
                               else Qt.CheckState.Unchecked)

    def _kind_of(self, run_id: str) -> str:
        return getattr(self.store.record(run_id), "kind", "") or DEFAULT_KIND

    def _on_run_selected(self, item, _previous=None) -> None:
        self.saved_combo.clear()
        if item is None:
            return
        try:
            run = self.store.get(item.data(Qt.ItemDataRole.UserRole))
            kind = get_kind_class(self._kind_of(run.id))
            self._apply_run_settings(run, kind)
            saved = run.evaluations()
        except Exception as exc:  # a damaged run folder (or a kind whose plugin is gone) must not break the tab
            self.status_label.setText(f"Cannot read this run: {exc}")
            return
        for entry in reversed(saved):
            try:
                self.saved_combo.addItem(describe_saved(entry), entry["file"])
            except Exception:  # a result of an unknown kind: listed by file name only
                self.saved_combo.addItem(str(entry.get("file", "?")).rsplit("/", 1)[-1], entry.get("file"))
        self.tabs.setTabText(self.tabs.indexOf(self.shot_plot), ShotsPlot.title_for(kind.metric))
        self.shot_plot.show_run(saved, kind.metric, self.sweep_button.text())
        if self.result_panel.run_id != run.id:  # show this run's newest result, not another run's
            if saved:
                self.show_saved(0)
            else:
                self.clear_result()
        self._update_buttons()

    def _apply_run_settings(self, run, kind) -> None:
        """The run's own test setting in the form (once per run: what the user typed stays)."""
        self.form.setRowVisible(self.ways_spin, "ways" in kind.dataset_fields)
        # A kind without shots (its tasks are not episodes) has no shot count to change or sweep.
        self.form.setRowVisible(self.shots_spin, "shots" in kind.dataset_fields)
        self.sweep_button.setVisible("shots" in kind.dataset_fields)
        self.shot_plot_visible("shots" in kind.dataset_fields)
        self._fill_data_choices(kind.name)
        if self._settings_run == run.id:
            return
        self._settings_run = run.id
        config = run.config
        self.ways_spin.setValue(config.dataset.ways)
        self.shots_spin.setValue(config.dataset.shots)
        self.episodes_spin.setValue(config.eval_episodes())
        self.seed_spin.setValue(config.evaluation.seed)

    def _on_saved_chosen(self, index: int) -> None:
        run_id = self.selected_run_id()
        file = self.saved_combo.itemData(index)
        if run_id is None or not file:
            return
        try:
            result = self.store.get(run_id).load_evaluation(file)
            self.show_result(result, run_id)
        except Exception as exc:
            self.clear_result(f"Cannot read the saved result {file}: {exc}")

    def show_saved(self, index: int = 0) -> None:
        """Show the saved result at ``index`` of the combo (newest first)."""
        self.saved_combo.setCurrentIndex(index)
        self._on_saved_chosen(index)

    def shot_series(self, run) -> dict:
        """{ways (None for kinds without classes): [(shots, score, ci95)]} from the run's saved test results."""
        return shot_series(run.evaluations())

    # --- asking the evaluation service ---------------------------------------------------------------
    def _request(self, run_id: str, kind: str, shots: int | None = None) -> dict[str, Any]:
        request = {"run": run_id, "episodes": self.episodes_spin.value(), "seed": self.seed_spin.value(),
                   "checkpoint": self.checkpoint_combo.currentText()}
        fields = get_kind_class(kind).dataset_fields
        if "shots" in fields:  # kinds without shots (e.g. optimizee problems) refuse the field
            request["shots"] = shots or self.shots_spin.value()
        if "ways" in fields:
            request["ways"] = self.ways_spin.value()
        request.update(self.data_choice())
        return request

    def _submit(self, purpose: str, requests: list[dict[str, Any]], reuse: bool, label: str) -> None:
        job_id = self.service.submit(self.store, requests, reuse=reuse, skip_impossible=purpose == "sweep",
                                     label=label)
        if job_id is None:
            self.status_label.setText("Another evaluation is running; wait for it or cancel it first.")
            return
        self._jobs[job_id] = (purpose, [request["run"] for request in requests])

    def evaluate_selected(self) -> None:
        run_id = self.selected_run_id()
        if run_id is not None:
            self._submit("evaluate", [self._request(run_id, self._kind_of(run_id))], False, "Evaluating")

    def evaluate_shot_sweep(self) -> None:
        run_id = self.selected_run_id()
        if run_id is not None:
            kind = self._kind_of(run_id)
            self._submit("sweep", [self._request(run_id, kind, shots) for shots in self.sweep_shots], True,
                         "Evaluating at several shots")

    def compare_checked(self) -> None:
        run_ids = self.checked_run_ids()
        problem = self._compare_problem(run_ids)
        if problem:
            self.status_label.setText(problem)
            self.compare_panel.say(problem)
            return
        kind = self._kind_of(run_ids[0])
        self._submit("compare", [self._request(run_id, kind) for run_id in run_ids], True,
                     f"Comparing {len(run_ids)} runs")

    def _compare_problem(self, run_ids: list[str]) -> str:
        """Why these runs cannot be tested on identical tasks, or ''."""
        if len(run_ids) < 2:
            return "Tick at least two runs in the list on the left to compare them."
        try:
            kinds = {self._kind_of(run_id) for run_id in run_ids}
            keys = {tasks_key(self.store.get(run_id)) for run_id in run_ids}
        except Exception as exc:
            return f"Cannot read a ticked run: {exc}"
        if len(kinds) > 1:
            return (f"The ticked runs are of different kinds ({', '.join(sorted(kinds))}), so they have no common "
                    "metric. Tick runs of one kind.")
        if len(keys) > 1 and not self.data_choice():  # different data, different tasks: no paired test
            return ("The ticked runs use different datasets or task settings, so they cannot be tested on "
                    "identical tasks. Tick runs of one dataset.")
        return ""

    def cancel(self) -> None:
        self.service.cancel()

    @property
    def is_busy(self) -> bool:
        return self.service.is_running

    def _set_busy(self, busy: bool, message: str = "") -> None:
        self.cancel_button.setEnabled(busy)
        if not busy:
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0 if message == "cancelled" else 1)
        self.status_label.setText(message)
        self._update_buttons()

    def shot_plot_visible(self, visible: bool) -> None:
        self.tabs.setTabVisible(self.tabs.indexOf(self.shot_plot), visible)

    def _update_buttons(self) -> None:
        idle = not self.service.is_running
        has_run = self.selected_run_id() is not None
        self.evaluate_button.setEnabled(idle and has_run)
        self.sweep_button.setEnabled(idle and has_run)
        self.compare_panel.compare_button.setEnabled(idle)

    # --- the service's reports -------------------------------------------------------------------------
    def _on_started(self, job_id: int, label: str) -> None:
        self.progress_bar.setRange(0, 0)  # busy until the first report (loading the dataset)
        self._set_busy(True, f"{label}…")

    def _on_progress(self, job_id: int, done: int, total: int, message: str) -> None:
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.status_label.setText(message)

    def _on_failed(self, job_id: int, message: str, details: str) -> None:
        mine = self._jobs.pop(job_id, None) is not None
        self._set_busy(False, f"Evaluation failed: {message}" if mine else "")

    def _on_cancelled(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        self._set_busy(False, "cancelled")

    def _on_finished(self, job_id: int, results: list) -> None:
        purpose, run_ids = self._jobs.pop(job_id, ("", []))
        self._set_busy(False, "done")
        if not purpose:  # another view's job: its results are saved in the runs, so list them
            self.refresh_runs()
            return
        if not results:
            self.status_label.setText("Nothing could be evaluated: the test split has too few images per class.")
            return
        run_id, shown = run_ids[-1], results[-1]
        if purpose == "compare":  # keep the selected run on display when it was compared
            by_id = dict(zip(run_ids, results))
            self.compare_panel.show_results(run_ids, results, {r: self._label(r) for r in run_ids})
            run_id = self.selected_run_id() if self.selected_run_id() in by_id else run_ids[0]
            shown = by_id[run_id]
        elif purpose == "sweep":
            wanted = self.shots_spin.value()
            shown = next((r for r in results if ResultData.of(r).data.get("shots") == wanted), results[0])
        self.show_result(shown, run_id)
        if self.selected_run_id() is not None:
            self._on_run_selected(self.run_list.currentItem())
        self.evaluation_finished.emit(shown)

    def _label(self, run_id: str) -> str:
        try:
            return self.store.record(run_id).label
        except Exception:
            return run_id

    # --- lifetime -------------------------------------------------------------------------------------
    def shutdown(self) -> bool:
        ok = self.service.shutdown()
        return self.result_panel.shutdown() and ok

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

"""The Studies tab: hyperparameter studies (``workbench.core.sweeps``), run here or read from the study storage.

A study picker lists the stored studies (``list_studies`` on the storage beside the run store). For the chosen
study: the trials table (state in colour, each parameter, the value, the run, and a failed trial's error or a
pruned one's step), the best value so far, parallel coordinates and a slice plot (``study_plots``). A study started
here (from the Sweep dialog, or Resume for a stopped one) runs in a :class:`StudyJob` thread iterating
``StudyRunner.updates()``; its trials train in processes of their own, so the GUI only receives snapshots (plain
Python data, at most about ten a second). Cancel stops every running trial (their runs are saved as stopped) and
keeps the finished ones; closing the window cancels and joins the study's thread. Double-clicking a trial selects
its run in the Runs tab. Stored studies are read in a background task (Optuna is imported on first use).
"""

from __future__ import annotations

import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QThread, Signal
from PySide6.QtGui import QAction, QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QLabel, QMenu, QPushButton,
                               QSplitter, QTableView, QTabWidget, QVBoxLayout, QWidget)

from workbench.gui.background import BackgroundTask, describe_exception
from workbench.gui.hparam_form import narrow_combo
from workbench.gui.study_plots import (BestSoFarPlot, Objective, ParallelCoordinatesPlot, SlicePlot, is_number,
                                       short_names)
from workbench.gui.theme import LIGHT, Theme
from workbench.gui.view_registry import register_view

# Optuna creates its tables when a storage is first opened, and two threads opening a new SQLite file at once race
# on that ("table studies already exists"): this process opens the storage (a runner, a read) one at a time.
STORAGE_LOCK = threading.Lock()
EMIT_INTERVAL_S = 0.1  # at most about ten snapshots a second reach the GUI
SHUTDOWN_TIMEOUT_MS = 180_000  # cancelled trials stop at their next step; one still loading its data takes longer
NOTE_WIDTH = 420  # the error / note column's widest; longer notes are elided (the tooltip has them whole)
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
RUN_ID_ROLE = Qt.ItemDataRole.UserRole + 2
STATE_COLOURS = {"complete": "#2a8a3e", "pruned": "#b35c00", "failed": "#c62828", "running": "#1f6fd1",
                 "waiting": "#666666"}
DARK_STATE_COLOURS = {"complete": "#8ce99a", "pruned": "#ffc078", "failed": "#ff8787", "running": "#4dabf7",
                      "waiting": "#a0a0a0"}
EMPTY_TEXT = ("No studies yet. Training > Sweep… (Ctrl+Shift+S) sets up a hyperparameter study of the current "
              "experiment; `workbench sweep STUDY.toml` runs one from the command line, and it shows here too.")


class StudyJob(QThread):
    """Runs ``make_runner()`` (a StudyRunner: it opens the storage, so it is built here too) and sends its
    snapshots, throttled; the last one (finished) always."""

    snapshot = Signal(int, object)  # job id, StudySnapshot
    failed = Signal(int, str, str)  # job id, message, traceback

    def __init__(self, job_id: int, name: str, make_runner: Callable[[], Any], parent=None):
        super().__init__(parent)
        self.job_id, self.name = job_id, name
        self.setObjectName(f"StudyJob-{job_id}")
        self._make_runner = make_runner
        self._cancel = threading.Event()
        self.runner = None

    def cancel(self) -> None:
        """Stop the study (safe from any thread, before or after its runner exists)."""
        self._cancel.set()
        runner = self.runner
        if runner is not None:
            runner.cancel()

    @property
    def cancelling(self) -> bool:
        return self._cancel.is_set()

    def run(self) -> None:  # the study's thread
        try:
            with STORAGE_LOCK:
                self.runner = self._make_runner()
            if self._cancel.is_set():
                self.runner.cancel()
            last = 0.0
            for snapshot in self.runner.updates():
                now = time.monotonic()
                if snapshot.finished or now - last >= EMIT_INTERVAL_S:
                    last = now
                    self.snapshot.emit(self.job_id, snapshot)
        except BaseException as exc:  # noqa: BLE001 - reported to the user, never lost on stderr
            self.failed.emit(self.job_id, describe_exception(exc), traceback.format_exc())
        finally:
            self._make_runner = None


# --- the trials table ----------------------------------------------------------------------------
def trial_note(trial, objective: Objective) -> str:
    """What the table says beside a trial: its error, where it was pruned, or its last validation."""
    if trial.state == "failed":
        return trial.error or "failed"
    last = max(trial.intermediate) if trial.intermediate else None
    if trial.state == "pruned":
        return (f"pruned at step {last}: below the median of earlier trials" if last is not None else "pruned")
    if trial.state == "running":
        return (f"step {last}: {objective.format(trial.intermediate[last])}" if last is not None
                else "starting…")
    return ""


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class TrialsModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.trials: list = []
        self.parameters: list[str] = []
        self.objective = Objective()
        self.best_number: int | None = None
        self.dark = False
        self._names: dict[str, str] = {}

    def columns(self) -> list[str]:
        return ["#", "State", *[self._names[p] for p in self.parameters], self.objective.title, "Run", "Time",
                "Error / note"]

    def set_snapshot(self, snapshot, parameters: list[str], objective: Objective) -> None:
        self.beginResetModel()
        self.trials = sorted(snapshot.trials, key=lambda t: t.number)
        self.parameters, self.objective = list(parameters), objective
        self._names = short_names(self.parameters)
        best = snapshot.best()
        self.best_number = best.number if best is not None else None
        self.endResetModel()

    def clear(self) -> None:
        self.beginResetModel()
        self.trials, self.best_number = [], None
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.trials)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.columns())

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns()[section]
        if role == Qt.ItemDataRole.ToolTipRole and 2 <= section < 2 + len(self.parameters):
            return self.parameters[section - 2]
        return None

    def cell(self, trial, column: int) -> tuple[str, Any]:
        """(text, sort key) of one cell."""
        params = len(self.parameters)
        if column == 0:
            return str(trial.number), trial.number
        if column == 1:
            return trial.state + (" ★" if trial.number == self.best_number else ""), trial.state
        if column < 2 + params:
            value = trial.params.get(self.parameters[column - 2])
            return ("" if value is None else _param_text(value)), (value if is_number(value) else str(value))
        column -= 2 + params
        if column == 0:
            text = self.objective.format(trial.value) if trial.value is not None else ""
            text = f"({text})" if trial.state == "pruned" and text else text
            return text, (trial.value if trial.value is not None else float("-inf"))
        if column == 1:
            return trial.run_id, trial.run_id
        if column == 2:
            return _duration(trial.duration_s), trial.duration_s or 0.0
        note = trial_note(trial, self.objective)
        return note, note

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        trial = self.trials[index.row()]
        column = index.column()
        if role in (Qt.ItemDataRole.DisplayRole, SORT_ROLE, Qt.ItemDataRole.ToolTipRole):
            text, key = self.cell(trial, column)
            if role == SORT_ROLE:
                return key
            if role == Qt.ItemDataRole.ToolTipRole:
                return text if column == self.columnCount() - 1 and text else None
            return text
        if role == RUN_ID_ROLE:
            return trial.run_id
        if role == Qt.ItemDataRole.ForegroundRole and column in (1, self.columnCount() - 1):
            colours = DARK_STATE_COLOURS if self.dark else STATE_COLOURS
            return QBrush(QColor(colours.get(trial.state, colours["waiting"])))
        if role == Qt.ItemDataRole.TextAlignmentRole and (column == 0 or 2 <= column < 3 + len(self.parameters)):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


# --- reading the storage -------------------------------------------------------------------------
def read_storage(progress, storage: str, name: str | None, with_snapshot: bool = True) -> dict[str, Any]:
    """The stored studies and, for ``name`` (else the newest), its snapshot and spec. Runs in a BackgroundTask."""
    from workbench.core.sweeps import list_studies, load_spec, read_study

    with STORAGE_LOCK:
        studies = list_studies(storage)
        names = [study["name"] for study in studies]
        if name not in names:
            name = names[-1] if names else None
        result: dict[str, Any] = {"studies": studies, "name": name, "snapshot": None, "spec": None}
        if name is not None and with_snapshot:
            result["snapshot"] = read_study(storage, name)
            result["spec"] = load_spec(storage, name)
    return result


@register_view
class StudiesView(QWidget):
    """See the module's docstring. Signals ask the window to show a run (``select_run``: in the Runs tab,
    ``open_run``: its curves), to say something (``status_message``), to open the Sweep dialog (``new_sweep``),
    that trial runs appeared (``runs_changed``), that a study started (``study_started``) or failed (``error``)."""

    view_title = "Studies"
    view_capability = None  # every kind: a study of any experiment
    view_order = 100  # after the views of runs

    select_run = Signal(str)
    open_run = Signal(str)
    status_message = Signal(str)
    new_sweep = Signal()
    runs_changed = Signal()
    study_started = Signal(str)
    study_finished = Signal(object)  # the last StudySnapshot of a study run here
    error = Signal(str, str, str)  # title, message, details

    def __init__(self, home: str | Path, theme: Theme = LIGHT, settings=None, parent: QWidget | None = None):
        super().__init__(parent)
        from workbench.core.sweeps import default_storage

        self.home = str(home)
        self.storage = default_storage(home)
        self.settings = settings
        self.theme = theme
        self.snapshot = None  # the shown study's snapshot
        self.spec = None  # the shown study's SweepSpec
        self.studies: list[dict] = []
        self.live = None  # the last snapshot of the study running here
        self._job: StudyJob | None = None
        self._jobs: list[StudyJob] = []  # every thread not yet joined
        self._next_id = 0
        self._shown_key = None
        self._counts = None
        self.last_error: tuple[str, str] | None = None
        self._reader = BackgroundTask(self, finished=self._on_read, failed=self._on_read_failed)
        self._build()
        self.apply_theme(theme)
        self._loaded = False

    # --- layout -----------------------------------------------------------------------------
    def _build(self) -> None:
        self.study_combo = narrow_combo(QComboBox(), 24)
        self.study_combo.setToolTip("The stored studies (newest last)")
        self.study_combo.activated.connect(lambda _: self.show_study(self.study_combo.currentData()))
        self.new_button = QPushButton("New sweep…")
        self.new_button.setToolTip("Set up a study of the current experiment (Ctrl+Shift+S)")
        self.new_button.clicked.connect(self.new_sweep.emit)
        self.refresh_button = QPushButton("Refresh")
        self.refresh_button.setToolTip("Read the studies again (a study run from the command line shows here too)")
        self.refresh_button.clicked.connect(self.refresh)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Run the rest of a stopped or interrupted study (cancelled trials run again)")
        self.resume_button.clicked.connect(self.resume)
        self.cancel_button = QPushButton("Cancel study")
        self.cancel_button.setToolTip("Stop every running trial (their runs are saved as stopped); finished "
                                      "trials are kept and Resume runs the rest")
        self.cancel_button.clicked.connect(self.cancel)
        bar = QHBoxLayout()
        bar.addWidget(QLabel("Study:"))
        bar.addWidget(self.study_combo, 1)
        for button in (self.refresh_button, self.resume_button, self.cancel_button, self.new_button):
            bar.addWidget(button)
        self.message = QLabel()
        self.message.setObjectName("studyMessage")
        self.message.setWordWrap(True)
        self.empty_label = QLabel(EMPTY_TEXT)
        self.empty_label.setWordWrap(True)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(self._build_table())
        self.splitter.addWidget(self._build_plots())
        self.splitter.setStretchFactor(0, 1)
        self.splitter.setStretchFactor(1, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(bar)
        layout.addWidget(self.message)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.splitter, 1)
        self._update_buttons()

    def _build_table(self) -> QTableView:
        self.model = TrialsModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.table = QTableView()
        self.table.setObjectName("trialsTable")
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 8)
        self.table.setWordWrap(False)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setToolTip("Double-click a trial to select its run in the Runs tab; right-click for more")
        self.table.doubleClicked.connect(lambda index: self._emit_run(self.select_run, index))
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._context_menu)
        return self.table

    def _build_plots(self) -> QSplitter:
        self.best_plot = BestSoFarPlot(self.theme)
        self.parallel_plot = ParallelCoordinatesPlot(self.theme)
        self.slice_plot = SlicePlot(self.theme)
        self.plot_tabs = QTabWidget()
        self.plot_tabs.addTab(self.parallel_plot, "Parallel coordinates")
        self.plot_tabs.addTab(self.slice_plot, "Slice")
        self.plot_tabs.setTabToolTip(0, "One line per complete trial across the parameters and the objective, "
                                        "each axis on its own range; colour: the objective (yellow: best)")
        self.plot_tabs.setTabToolTip(1, "The objective against one parameter; colour: the trial number (yellow: "
                                        "latest)")
        plots = QSplitter(Qt.Orientation.Horizontal)
        plots.addWidget(self.best_plot)
        plots.addWidget(self.plot_tabs)
        plots.setStretchFactor(0, 2)
        plots.setStretchFactor(1, 3)
        return plots

    @classmethod
    def for_window(cls, window) -> "StudiesView":
        """The tab of ``window`` (its run store's studies), wired to the Runs tab, the status bar and the theme."""
        view = cls(window.store.home, theme=window.theme, settings=window.settings)
        view.open_run.connect(window.open_run)
        view.select_run.connect(lambda run_id: _select_in_runs(window, run_id))
        view.status_message.connect(window.show_status)
        view.runs_changed.connect(window.run_store_changed.emit)
        view.study_started.connect(lambda _name: window.show_view("Studies"))
        view.error.connect(window.report_error)
        if hasattr(window, "open_sweep_dialog"):
            view.new_sweep.connect(window.open_sweep_dialog)
        window.theme_changed.connect(view.apply_theme)
        return view

    # --- showing a study --------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        if not self._loaded:
            self.refresh()

    def refresh(self) -> None:
        """Read the list of studies and the shown one (unless it runs here: its snapshots come live)."""
        self._loaded = True
        name = self.study_combo.currentData() or (self.snapshot.name if self.snapshot else None)
        self._reader.start(read_storage, self.storage, name, not self._runs_here(name))

    def show_study(self, name: str | None) -> None:
        if self._runs_here(name):
            if self.live is not None:
                self._show(self.live, self.spec_of_job)
        else:
            self._reader.start(read_storage, self.storage, name)

    @property
    def is_reading(self) -> bool:
        return self._reader.is_running

    def _on_read(self, result: dict) -> None:
        self.studies = result["studies"]
        self._fill_combo(result["name"])
        if result["snapshot"] is not None:
            self._show(result["snapshot"], result["spec"])
        elif self._runs_here(result["name"]):
            if self.live is not None:
                self._show(self.live, self.spec_of_job)
        elif result["name"] is None:
            self._show(None, None)

    def _on_read_failed(self, message: str, details: str) -> None:
        self.last_error = ("Cannot read the studies", message)
        self.message.setText(f"<span style='color:{self.theme.error_text}'>Cannot read the studies: "
                             f"{message}</span>")

    def _fill_combo(self, current: str | None) -> None:
        names = [study["name"] for study in self.studies]
        if self._job is not None and self._job.name not in names:
            names.append(self._job.name)
        self.study_combo.blockSignals(True)
        self.study_combo.clear()
        for name in names:
            study = next((s for s in self.studies if s["name"] == name), None)
            trials = " (running here)" if self._runs_here(name) else f" ({study['trials']} trials)"
            self.study_combo.addItem(name + trials, name)
        self.study_combo.setCurrentIndex(max(self.study_combo.findData(current), 0))
        self.study_combo.blockSignals(False)
        self.empty_label.setVisible(not names)
        self.splitter.setVisible(bool(names))

    def _show(self, snapshot, spec) -> None:
        self.snapshot, self.spec = snapshot, spec
        if snapshot is None:
            self.model.clear()
            self.message.setText("")
            self._update_buttons()
            return
        objective = Objective.of(snapshot.metric, snapshot.direction)
        parameters = self._parameters(snapshot, spec)
        selected = self.selected_trial()
        self.model.dark = self.theme.is_dark
        self.model.set_snapshot(snapshot, parameters, objective)
        self.table.resizeColumnsToContents()
        last = self.model.columnCount() - 1
        self.table.setColumnWidth(last, min(self.table.columnWidth(last), NOTE_WIDTH))  # the whole note: tooltip
        if selected is not None:
            self.select_trial(selected)
        self.best_plot.show_snapshot(snapshot, objective)
        key = [(t.number, t.state, t.value) for t in snapshot.trials if t.state == "complete"]
        if key != self._shown_key:  # parallel coordinates and slices change only when a trial completes
            self._shown_key = key
            logs, orders = self._scales(spec)
            for plot in (self.parallel_plot, self.slice_plot):
                plot.show_trials(snapshot.trials, parameters, logs, orders, objective)
        self.message.setText(self._message(snapshot, objective))
        self._update_buttons()

    @staticmethod
    def _parameters(snapshot, spec) -> list[str]:
        if spec is not None:
            return [p.path for p in spec.settings.parameters]
        return sorted({path for t in snapshot.trials for path in t.params})

    @staticmethod
    def _scales(spec) -> tuple[dict[str, bool], dict[str, list]]:
        """Per parameter: a log axis (a log range says so; else None: decided from the values), and the listed
        values' order for categorical axes."""
        if spec is None:
            return {}, {}
        logs = {p.path: (p.log if p.is_range else None) for p in spec.settings.parameters}
        return logs, {p.path: list(p.values) for p in spec.settings.parameters}

    def _message(self, snapshot, objective: Objective) -> str:
        counts = {state: n for state, n in snapshot.counts().items() if n}
        text = ", ".join(f"{n} {state}" for state, n in counts.items()) or "no trials yet"
        best = snapshot.best()
        best_text = f"; best {objective.format(best.value)} (trial {best.number})" if best else ""
        running = " · running here" if self._runs_here(snapshot.name) and not snapshot.finished else ""
        return (f"<b>{snapshot.name}</b>: {snapshot.message or 'stored'}{running} · {len(snapshot.trials)} of "
                f"{snapshot.planned} planned trials ({text}){best_text}")

    def selected_trial(self) -> int | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return int(self.proxy.data(rows[0], SORT_ROLE)) if rows else None

    def select_trial(self, number: int) -> None:
        for row in range(self.proxy.rowCount()):
            if self.proxy.data(self.proxy.index(row, 0), SORT_ROLE) == number:
                self.table.selectRow(row)
                return

    def row_texts(self) -> list[list[str]]:
        """The table as shown (for tests and copy)."""
        return [[self.proxy.data(self.proxy.index(row, column)) or "" for column in range(self.proxy.columnCount())]
                for row in range(self.proxy.rowCount())]

    # --- running ----------------------------------------------------------------------------
    def study_names(self) -> list[str]:
        """The stored studies' names (read now when the tab has not been shown yet)."""
        if not self._loaded:
            from workbench.core.sweeps import list_studies

            try:
                with STORAGE_LOCK:
                    self.studies = list_studies(self.storage)
            except Exception:  # noqa: BLE001 - an unreadable storage: the view says why when shown
                return []
        return [study["name"] for study in self.studies]

    def sweep_dialog(self, config, parent: QWidget | None = None):
        """Open the Sweep dialog for ``config`` (an ExperimentConfig); accepting it runs the study here."""
        from workbench.gui.sweep_dialog import SweepDialog

        dialog = SweepDialog(config, parent or self, existing=self.study_names(), settings=self.settings)
        dialog.accepted.connect(lambda: self.start_study(dialog.spec()))
        dialog.open()
        return dialog

    @property
    def is_running(self) -> bool:
        return self._job is not None

    @property
    def spec_of_job(self):
        return getattr(self._job, "spec", None)

    def _runs_here(self, name: str | None) -> bool:
        return self._job is not None and name is not None and self._job.name == name

    def start_study(self, spec) -> bool:
        """Run a (checked) SweepSpec here; False, with a message, when a study is already running."""
        from workbench.core.sweeps import StudyRunner

        home, storage = self.home, self.storage
        return self._start(spec.settings.name, spec, lambda: StudyRunner(spec, home, storage))

    def resume(self, name: str | None = None) -> bool:
        """Run the rest of the stored study ``name`` (default: the shown one)."""
        from workbench.core.sweeps import StudyRunner, load_spec

        name = name or (self.snapshot.name if self.snapshot else None)
        if name is None:
            return False
        home, storage = self.home, self.storage
        return self._start(name, self.spec, lambda: StudyRunner(load_spec(storage, name), home, storage))

    def _start(self, name: str, spec, make_runner: Callable[[], Any]) -> bool:
        if self._job is not None:
            self.status_message.emit(f"The study {self._job.name} is running; cancel it before starting another.")
            return False
        self._next_id += 1
        job = StudyJob(self._next_id, name, make_runner, self)
        job.spec = spec
        job.snapshot.connect(self._on_snapshot)
        job.failed.connect(self._on_failed)
        job.finished.connect(self._on_job_ended)
        self._job, self.live, self._counts = job, None, None
        self._jobs.append(job)
        self._fill_combo(name)
        self.study_combo.setCurrentIndex(self.study_combo.findData(name))
        self.message.setText(f"<b>{name}</b>: starting the study…")
        self.empty_label.hide()
        self.splitter.show()
        self._update_buttons()
        job.start()
        self.study_started.emit(name)
        return True

    def cancel(self) -> None:
        """Stop the study running here: its running trials stop at their next step; finished trials are kept."""
        if self._job is not None and not self._job.cancelling:
            self._job.cancel()
            self.message.setText(f"<b>{self._job.name}</b>: cancelling; each running trial stops at its next "
                                 "step and its run is saved…")
            self._update_buttons()

    def _on_snapshot(self, job_id: int, snapshot) -> None:
        if self._job is None or job_id != self._job.job_id:
            return  # a study that ended or was superseded
        self.live = snapshot
        counts = snapshot.counts()
        if counts != self._counts:  # a trial started or ended: its run is in the store
            self._counts = counts
            self.runs_changed.emit()
        if self.study_combo.currentData() == snapshot.name:
            self._show(snapshot, self._job.spec)
        if snapshot.finished:
            self.study_finished.emit(snapshot)
            self.status_message.emit(f"Study {snapshot.name} {snapshot.message}.")

    def _on_failed(self, job_id: int, message: str, details: str) -> None:
        if self._job is None or job_id != self._job.job_id:
            return
        self.last_error = ("The study could not run", message)
        self.message.setText(f"<span style='color:{self.theme.error_text}'>The study {self._job.name} could not "
                             f"run: {message}</span>")
        self.error.emit("The study could not run", message, details)

    def _on_job_ended(self) -> None:
        for job in [job for job in self._jobs if job.isFinished()]:
            job.wait()
            self._jobs.remove(job)
            if job is self._job:
                self._job = None
                index = self.study_combo.findData(job.name)
                if index >= 0 and self.live is not None:  # until the stored list is read again
                    self.study_combo.setItemText(index, f"{job.name} ({len(self.live.trials)} trials)")
            job.deleteLater()
        self._update_buttons()
        if self._job is None:
            self.refresh()  # the stored list (trial counts, best values) and the study as stored

    def _update_buttons(self) -> None:
        running, shown = self._job is not None, self.snapshot
        self.cancel_button.setEnabled(running and not self._job.cancelling)
        self.resume_button.setEnabled(not running and shown is not None and (not shown.finished or shown.cancelled))
        self.refresh_button.setEnabled(True)

    def wait(self, timeout_ms: int = SHUTDOWN_TIMEOUT_MS) -> bool:
        """Join the study's thread (tests, shutdown). Snapshots still arrive through the event loop."""
        deadline = time.monotonic() + timeout_ms / 1000
        return all(job.wait(max(0, int((deadline - time.monotonic()) * 1000))) for job in list(self._jobs))

    def shutdown(self, timeout_ms: int = SHUTDOWN_TIMEOUT_MS) -> bool:
        """Cancel the running study (finished trials kept, running ones saved as stopped) and join every thread."""
        for job in self._jobs:
            job.cancel()
        joined = self.wait(timeout_ms)
        return self._reader.shutdown() and joined

    # --- trial runs -------------------------------------------------------------------------
    def _emit_run(self, signal, index) -> None:
        run_id = self.proxy.data(index, RUN_ID_ROLE) if index.isValid() else ""
        if run_id:
            signal.emit(run_id)
        elif index.isValid():
            self.status_message.emit("This trial has no run (it failed before its run was made).")

    def _context_menu(self, position) -> None:
        index = self.table.indexAt(position)
        if not index.isValid():
            return
        menu = QMenu(self)
        for text, signal in (("Select the run in the Runs tab", self.select_run),
                             ("Show the run's curves", self.open_run)):
            action = QAction(text, menu)
            action.triggered.connect(lambda _=False, s=signal: self._emit_run(s, index))
            action.setEnabled(bool(self.proxy.data(index, RUN_ID_ROLE)))
            menu.addAction(action)
        menu.popup(self.table.viewport().mapToGlobal(position))

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.model.dark = theme.is_dark
        for plot in (self.best_plot, self.parallel_plot, self.slice_plot):
            plot.apply_theme(theme)
        self.model.layoutChanged.emit()


def _select_in_runs(window, run_id: str) -> None:
    runs_view = getattr(window, "runs_view", None)
    if runs_view is None:
        return
    window.show_view("Runs")
    runs_view.refresh()
    runs_view.select_runs([run_id])


__all__ = ["StudiesView", "StudyJob", "TrialsModel", "read_storage", "trial_note"]

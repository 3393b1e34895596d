"""The "Mechanism" view: the inspection records an algorithm declares about its own mechanism (learned learning
rates, gates, attention, memory, conditioning parameters, distilled images), drawn by plot type and replayable over
training with a time slider.

Data source: ``inspections.npz`` in the run folder (``workbench.core.snapshots``: the trainer writes it at each
validation, :func:`read_inspections` reads it). The file holds the declared specs beside the arrays, so the view
needs nothing from the algorithm: a new algorithm adds no GUI code. The panels per plot type are in
:mod:`workbench.gui.inspection_plots`. While a run trains, the view re-reads the file when it changed, checked at
most once a second (on the worker's records, and on a timer while the view is visible); the file is small, so
reading it on the GUI thread costs milliseconds.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QPushButton, QSlider, QSplitter, QStackedWidget, QVBoxLayout, QWidget)

from workbench.core.inspection import InspectionSpec
from workbench.core.snapshots import INSPECTION_FILE, InspectionHistory, read_inspections
from workbench.gui.inspection_plots import PANELS, InspectionPlot
from workbench.gui.theme import LIGHT, Theme
from workbench.gui.view_registry import feeders_text, register_view

CAPABILITY = "inspection"
RELOAD_SECONDS = 1.0

EXPLANATION = (
    "<h3>Mechanism</h3>"
    "<p>This view draws what an algorithm shows of its own mechanism: learned learning rates, gates, attention, "
    "memory, conditioning parameters or distilled images. The algorithm declares each <b>inspection record</b>: "
    "named arrays with a plot type (histograms per layer, curves, a heatmap or an image grid). The trainer stores "
    "them at every validation, and the time slider replays them.</p>"
    "<p>{feeders} Train one of them (choose it in the Algorithm panel), or open such a run in the Runs view.</p>"
    "<p><i>{reason}</i></p>")


def algorithm_class(name: str):
    """The registered algorithm class of a run, or None when it is unknown here."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.errors import WorkbenchError

    try:
        return get_algorithm(name) if name else None
    except WorkbenchError:
        return None


def file_stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size, stat.st_ino  # an atomic rewrite is a new file


@register_view
class InspectionView(QWidget):
    """Explains what feeds it until a run with inspection records is shown; then lists the records and draws the
    chosen one at the snapshot the time slider picks."""

    view_title = "Mechanism"
    view_capability = CAPABILITY
    view_order = 80  # after the other training views

    snapshot_changed = Signal(int)  # index of the snapshot shown
    exported = Signal(str)  # path written

    def __init__(self, store=None, theme: Theme = LIGHT, parent: QWidget | None = None):
        super().__init__(parent)
        self.store = store
        self.theme = theme
        self.history: InspectionHistory | None = None
        self.run_folder: Path | None = None
        self.run_label = ""
        self.live_job: int | None = None
        self.live_folder: Path | None = None
        self._records: dict[str, object] = {}  # run folder -> the store's record
        self._stamp: tuple | None = None
        self._last_check = 0.0
        self._follow_latest = True
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._poll)
        self._build()
        self._shortcuts()
        self.apply_theme(theme)
        self.refresh_runs()
        self.show_explanation("No run with inspection records is shown yet.")

    # --- layout ----------------------------------------------------------------------------------
    def _build(self) -> None:
        """A run row on top; below it, the explanation page or the records and their plot."""
        self.run_combo = QComboBox()
        self.run_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.run_combo.setMinimumContentsLength(30)
        self.run_combo.setToolTip("Runs with inspection records, and the run training now")
        self.run_combo.setPlaceholderText("No run with inspection records yet")
        self.run_combo.activated.connect(self._on_run_chosen)
        self.export_button = QPushButton("Export PNG…")
        self.export_button.setToolTip("Save the record drawn now as a PNG image")
        self.export_button.clicked.connect(self._export_dialog)
        head = QHBoxLayout()
        head.addWidget(QLabel("Run:"))
        head.addWidget(self.run_combo, 1)
        head.addWidget(self.export_button)
        self.stack = QStackedWidget()
        self.explanation = QLabel()
        self.explanation.setWordWrap(True)
        self.explanation.setTextFormat(Qt.TextFormat.RichText)
        self.explanation.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.explanation.setContentsMargins(24, 24, 24, 24)
        self.stack.addWidget(self.explanation)
        self.stack.addWidget(self._build_content())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(6, 6, 6, 6)
        outer.addLayout(head)
        outer.addWidget(self.stack, 1)

    def _build_content(self) -> QWidget:
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self._build_record_list())
        splitter.addWidget(self._build_plot_area())
        splitter.setStretchFactor(0, 0)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([220, 900])
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider.setToolTip("Replay the records at each validation of training (Left/Right keys).")
        self.slider.valueChanged.connect(self._on_slider)
        self.step_label = QLabel()
        self.step_label.setMinimumWidth(150)
        scrubber = QHBoxLayout()
        scrubber.addWidget(QLabel("Training time:"))
        scrubber.addWidget(self.slider, 1)
        scrubber.addWidget(self.step_label)
        self.status = QLabel()
        self.status.setWordWrap(True)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(splitter, 1)
        layout.addLayout(scrubber)
        layout.addWidget(self.status)
        return content

    def _build_record_list(self) -> QWidget:
        self.record_list = QListWidget()
        self.record_list.setToolTip("The records the run's algorithm declares")
        self.record_list.setWordWrap(True)  # long titles wrap in the narrow column instead of scrolling sideways
        self.record_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.record_list.currentRowChanged.connect(self._on_record_changed)
        self.description = QLabel()
        self.description.setWordWrap(True)
        self.description.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        panel = QWidget()
        panel.setMinimumWidth(180)
        panel.setMaximumWidth(320)
        layout = QVBoxLayout(panel)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Records:"))
        layout.addWidget(self.record_list)
        layout.addWidget(self.description)
        layout.addStretch(1)
        return panel

    def _build_plot_area(self) -> QWidget:
        self.plot_title = QLabel()
        self.plot_title.setWordWrap(True)
        self.plot_stack = QStackedWidget()
        self.panels: dict[str, InspectionPlot] = {plot: cls(self.theme) for plot, cls in PANELS.items()}
        for panel in self.panels.values():
            self.plot_stack.addWidget(panel)
        self.unknown_plot = QLabel()
        self.unknown_plot.setWordWrap(True)
        self.unknown_plot.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.plot_stack.addWidget(self.unknown_plot)
        area = QWidget()
        layout = QVBoxLayout(area)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_title)
        layout.addWidget(self.plot_stack, 1)
        return area

    def _shortcuts(self) -> None:
        context = Qt.ShortcutContext.WidgetWithChildrenShortcut
        for key, delta in ((Qt.Key.Key_Left, -1), (Qt.Key.Key_Right, 1)):
            QShortcut(QKeySequence(key), self, lambda d=delta: self.step_by(d), context=context)

    # --- wiring ----------------------------------------------------------------------------------
    @classmethod
    def for_window(cls, window) -> "InspectionView":
        """A view following the window's training jobs, its run store and the runs opened in its Runs view."""
        view = cls(getattr(window, "store", None), getattr(window, "theme", LIGHT))
        window.training_started.connect(view.on_training_started)
        window.training_records.connect(view.on_training_records)
        window.training_finished.connect(view.on_training_finished)
        window.theme_changed.connect(view.apply_theme)
        window.run_store_changed.connect(view.refresh_runs)
        if not view._connect_runs_view(window):  # the Runs view may be built after this one
            QTimer.singleShot(0, lambda: view._connect_runs_view(window))
        return view

    def _connect_runs_view(self, window) -> bool:
        runs_view = getattr(window, "runs_view", None)
        if runs_view is None or getattr(self, "_runs_view_connected", False):
            return runs_view is not None
        runs_view.open_run.connect(self.show_run)
        self._runs_view_connected = True
        return True

    def apply_theme(self, theme: Theme) -> None:
        self.theme = theme
        self.description.setStyleSheet(f"color: {theme.muted_text};")
        for panel in self.panels.values():
            panel.apply_theme(theme)

    # --- runs ------------------------------------------------------------------------------------
    def _store_records(self) -> list:
        if self.store is None:
            return []
        try:
            return self.store.list()
        except Exception:  # an unreadable store: no runs listed rather than a broken view
            return []

    def refresh_runs(self) -> None:
        """List the runs whose folder has inspection records, the live run and the run shown."""
        self._records = {str(Path(record.path)): record for record in self._store_records() if record.path}
        keep = {str(folder) for folder in (self.live_folder, self.run_folder) if folder is not None and folder.is_dir()}
        folders = [folder for folder in self._records
                   if folder in keep or (Path(folder) / INSPECTION_FILE).is_file()]
        folders += [folder for folder in keep if folder not in folders]
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        for folder in folders:
            self.run_combo.addItem(self._run_text(folder), folder)
        shown = self.run_combo.findData(str(self.run_folder)) if self.run_folder is not None else -1
        self.run_combo.setCurrentIndex(shown)
        self.run_combo.blockSignals(False)

    def _run_text(self, folder: str) -> str:
        record = self._records.get(folder)
        label = getattr(record, "label", "") or Path(folder).name
        cls = algorithm_class(getattr(record, "algorithm", ""))
        text = f"{label} · {cls.title}" if cls is not None else label
        return text + (" (training)" if self.live_folder is not None and folder == str(self.live_folder) else "")

    def run_folders(self) -> list[str]:
        return [self.run_combo.itemData(i) for i in range(self.run_combo.count())]

    def _on_run_chosen(self, index: int) -> None:
        folder = self.run_combo.itemData(index)
        if folder:
            self._show_folder(Path(folder))

    def show_run(self, run_or_id) -> None:
        """Show a saved run (Run object, id, name or folder)."""
        key = str(getattr(run_or_id, "path", run_or_id))
        folder = Path(key) if Path(key).is_dir() else None
        if folder is None and self.store is not None:
            try:
                folder = Path(self.store.get(key).path)
            except Exception as exc:  # a vanished run: say so instead of failing
                self.show_explanation(f"Run {html.escape(key)} cannot be read: {html.escape(str(exc))}")
                return
        if folder is not None:
            self._show_folder(folder)

    def _show_folder(self, folder: Path) -> None:
        self.run_folder = Path(folder)
        if str(self.run_folder) not in self._records or self.run_combo.findData(str(self.run_folder)) < 0:
            self.refresh_runs()
        else:
            self.run_combo.setCurrentIndex(self.run_combo.findData(str(self.run_folder)))
        record = self._records.get(str(self.run_folder))
        self.run_label = getattr(record, "label", "") or self.run_folder.name
        self.history, self._stamp, self._follow_latest = None, None, True
        self.show_explanation(self._missing_reason(record))
        self._reload()
        self._update_timer()

    def _missing_reason(self, record) -> str:
        label = html.escape(self.run_label)
        cls = algorithm_class(getattr(record, "algorithm", ""))
        if cls is not None and not cls.has(CAPABILITY):
            return f"The run shown ({label}) uses {html.escape(cls.title)}, which declares no inspection records."
        return f"Run {label} has no inspection records yet: they appear at its first validation."

    # --- live following --------------------------------------------------------------------------
    def on_training_started(self, job_id: int, info) -> None:
        info = info if isinstance(info, dict) else {}
        folder = info.get("run_path")
        if not folder and self.store is not None and info.get("run_id"):
            try:
                folder = self.store.get(info["run_id"]).path
            except Exception:  # the run is not readable yet: nothing to follow
                folder = None
        self.live_job = job_id
        self.live_folder = Path(folder) if folder else None
        if self.live_folder is not None:
            self._show_folder(self.live_folder)
            self.refresh_runs()  # marks the live run

    def on_training_records(self, job_id: int, payload) -> None:
        if job_id == self.live_job:
            self._poll()

    def on_training_finished(self, job_id: int, final) -> None:
        if job_id != self.live_job:
            return
        following = self.run_folder is not None and self.run_folder == self.live_folder
        self.live_job, self.live_folder = None, None
        self._update_timer()
        if following:
            self._reload()
        self.refresh_runs()

    def _following_live(self) -> bool:
        return self.live_folder is not None and self.run_folder == self.live_folder

    def _update_timer(self) -> None:
        if self._following_live():
            self._timer.start(max(10, int(RELOAD_SECONDS * 1000)))
        else:
            self._timer.stop()

    def _poll(self) -> None:
        """Re-read the live run's file at most once a second, while the view is visible."""
        if not self._following_live() or not self.isVisible():
            return
        now = time.monotonic()
        if now - self._last_check < RELOAD_SECONDS:
            return
        self._last_check = now
        self._reload()

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if self.run_folder is not None:
            self._reload()  # what changed while another tab was shown

    def _reload(self) -> bool:
        """Re-read the run's inspection file if it changed; True if new data is shown."""
        path = self.run_folder / INSPECTION_FILE if self.run_folder is not None else None
        if path is None or not path.is_file():
            return False
        try:
            stamp = file_stamp(path)
        except OSError:
            return False  # being replaced: the next check reads the new file
        if stamp == self._stamp:
            return False
        history = read_inspections(path)
        if not history.steps:
            if self.history is None:
                self.show_explanation(f"{html.escape(str(path))} has no snapshot yet or cannot be read.")
            return False
        self._stamp = stamp
        self.set_history(history)
        return True

    # --- drawing ---------------------------------------------------------------------------------
    def show_explanation(self, reason: str) -> None:
        self.explanation.setText(EXPLANATION.format(feeders=html.escape(feeders_text(CAPABILITY)), reason=reason))
        self.stack.setCurrentIndex(0)
        self.export_button.setEnabled(False)

    @property
    def showing_explanation(self) -> bool:
        return self.stack.currentIndex() == 0

    def set_history(self, history: InspectionHistory) -> None:
        """Show a run's records; the slider stays on the newest snapshot unless it was moved back."""
        count = len(history.steps)
        at_end = self.history is None or self._follow_latest
        self.history = history
        self.stack.setCurrentIndex(1)
        self.export_button.setEnabled(True)
        self._fill_record_list(history.specs)
        self.slider.blockSignals(True)
        self.slider.setMaximum(count - 1)
        if at_end:
            self.slider.setValue(count - 1)
        self.slider.blockSignals(False)
        self._follow_latest = self.slider.value() == self.slider.maximum()
        self._prepare_panel()
        self._draw(self.slider.value())

    def _fill_record_list(self, specs: list[InspectionSpec]) -> None:
        """The records' titles (help as tooltip), keeping the chosen record when it is still there."""
        names = [spec.name for spec in specs]
        shown = [self.record_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.record_list.count())]
        if names == shown:
            return
        current = self.current_spec()
        self.record_list.blockSignals(True)
        self.record_list.clear()
        for spec in specs:
            item = QListWidgetItem(spec.title)
            item.setData(Qt.ItemDataRole.UserRole, spec.name)
            item.setToolTip(spec.help)
            self.record_list.addItem(item)
        row = names.index(current.name) if current is not None and current.name in names else 0
        self.record_list.setCurrentRow(row if names else -1)
        self.record_list.blockSignals(False)
        rows = max(3, min(len(names), 12))  # the list as tall as its records, the description right beneath
        self.record_list.setFixedHeight(rows * max(18, self.record_list.sizeHintForRow(0)) +
                                        2 * self.record_list.frameWidth() + 4)

    def current_spec(self) -> InspectionSpec | None:
        item = self.record_list.currentItem()
        if item is None or self.history is None:
            return None
        name = item.data(Qt.ItemDataRole.UserRole)
        return next((spec for spec in self.history.specs if spec.name == name), None)

    def record_titles(self) -> list[str]:
        return [self.record_list.item(i).text() for i in range(self.record_list.count())]

    def select_record(self, name: str) -> None:
        names = [self.record_list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.record_list.count())]
        self.record_list.setCurrentRow(names.index(name))

    def current_panel(self) -> InspectionPlot | None:
        widget = self.plot_stack.currentWidget()
        return widget if isinstance(widget, InspectionPlot) else None

    def _on_record_changed(self, _row: int) -> None:
        if self.history is not None:
            self._prepare_panel()
            self._draw(self.slider.value())

    def _prepare_panel(self) -> None:
        spec = self.current_spec()
        if spec is None:
            return
        self.description.setText(spec.help)
        panel = self.panels.get(spec.plot)
        if panel is None:
            self.unknown_plot.setText(f"This version of the workbench cannot draw the plot type '{spec.plot}'.")
            self.plot_stack.setCurrentWidget(self.unknown_plot)
            return
        panel.set_history(spec, [record.get(spec.name) for record in self.history.records])
        self.plot_stack.setCurrentWidget(panel)

    def _on_slider(self, index: int) -> None:
        if self.history is None:
            return
        self._follow_latest = index == self.slider.maximum()
        self._draw(index)

    def step_by(self, delta: int) -> None:
        """Move the time slider (the Left and Right keys)."""
        self.slider.setValue(max(0, min(self.slider.maximum(), self.slider.value() + delta)))

    def _draw(self, index: int) -> None:
        history, spec = self.history, self.current_spec()
        count = len(history.steps)
        index = max(0, min(index, count - 1))
        step = history.steps[index]
        self.step_label.setText(f"step {step:,} ({index + 1}/{count})")
        panel = self.current_panel()
        if spec is not None and panel is not None:
            panel.show_snapshot(index)
        missing = spec is not None and spec.name not in history.records[index]
        title = html.escape(spec.title) if spec is not None else "No records"
        self.plot_title.setText(f"<b>{title}</b> at step {step:,}" +
                                (": not recorded at this step" if missing else ""))
        self.snapshot_changed.emit(index)

    # --- export ----------------------------------------------------------------------------------
    def export(self, path: str | Path) -> Path:
        """Write the record drawn now as a PNG."""
        panel = self.current_panel()
        if panel is None:
            raise ValueError("no record is drawn, so there is nothing to export")
        path = panel.export(Path(path))
        self.exported.emit(str(path))
        return path

    def _export_dialog(self) -> None:
        spec = self.current_spec()
        if spec is None or self.current_panel() is None:
            self.status.setText("Nothing to export yet.")
            return
        step = self.history.steps[self.slider.value()]
        suggested = f"{self.run_label}-{spec.name}-step{step}.png"
        path, _ = QFileDialog.getSaveFileName(self, "Export record", suggested, "PNG image (*.png)")
        if path:
            try:
                self.export(path)
            except (OSError, ValueError) as exc:
                self.status.setText(f"Could not save {path}: {exc}")
            else:
                self.status.setText(f"Saved {path}")

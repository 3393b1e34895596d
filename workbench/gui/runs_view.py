"""The Runs tab: every run in the run store, with open, compare, rename, delete, resume and evaluate.

The view reads the run store and asks the window's evaluation service
(:class:`workbench.gui.evaluation.service.EvaluationService`) to evaluate; :meth:`RunsView.for_window` connects
its signals to the window: ``open_run(run_id)``, ``overlay_runs(run_ids, baseline_id)``, ``resume_run(run_id)``,
``status_message(text)``, and the store changes; ``set_active_run`` says which run is training now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from PySide6.QtCore import (QAbstractTableModel, QByteArray, QItemSelectionModel, QModelIndex, QRect, QSettings,
                            QSortFilterProxyModel, Qt, QUrl, Signal)
from PySide6.QtGui import (QAction, QBrush, QColor, QDesktopServices, QFont, QFontMetrics, QKeySequence, QPainter,
                           QPalette)
from PySide6.QtWidgets import (QAbstractItemView, QApplication, QHBoxLayout, QHeaderView, QLabel, QLineEdit, QMenu,
                               QMessageBox, QProgressBar, QPushButton, QStyle, QStyledItemDelegate,
                               QStyleOptionViewItem, QTableView, QToolBar, QVBoxLayout, QWidget)

from workbench.core.errors import ConfigError
from workbench.core.kinds import DEFAULT_KIND, MetricSpec, get_kind_class
from workbench.gui.background import describe_exception
from workbench.gui.dialogs import show_error
from workbench.gui.evaluation.results import ResultData, metric_name, setting_text
from workbench.gui.evaluation.service import EvaluationService
from workbench.gui.view_registry import register_view

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
RUN_ID_ROLE = Qt.ItemDataRole.UserRole + 2
BASELINE_ROLE = Qt.ItemDataRole.UserRole + 3

RESUMABLE_STATUSES = ("stopped", "paused", "failed", "diverged")
SETTINGS_GROUP = "runs_view"
MISSING = float("-inf")  # sorts runs without a value below every real number


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    width: int
    numeric: bool = False
    tooltip: str = ""


# Score columns come early so they stay visible in a narrow tab; the header's context menu hides columns. The
# widths add up to what a 1280-pixel screen leaves beside the setup docks (the last column stretches).
COLUMNS = (
    Column("name", "Name", 140, tooltip="Run name; F2 renames it"),
    Column("status", "Status", 70),
    Column("kind", "Kind", 80, tooltip="The experiment kind; it decides the metric (accuracy, MSE, …)"),
    Column("algorithm", "Algorithm", 100),
    Column("best_val", "Best val.", 70, numeric=True,
           tooltip="Best score on the fixed meta-validation tasks, in the metric of the run's kind"),
    Column("test", "Test ± CI", 95, numeric=True,
           tooltip="Score on the fixed meta-test tasks, in the metric of the run's kind, ± the half-width of its "
                   "95% confidence interval (Evaluate, Ctrl+E, fills it in)"),
    Column("setting", "Way / shot", 75, numeric=True, tooltip="N-way K-shot setting the run was configured for"),
    Column("steps", "Steps", 85, numeric=True, tooltip="Meta-training steps done / planned"),
    Column("dataset", "Dataset", 75),
    Column("created", "Created", 115),
)
COLUMN_INDEX = {column.key: index for index, column in enumerate(COLUMNS)}

STATUS_COLORS = {"running": "#1f6fd1", "finished": "#2a8a3e", "failed": "#c62828", "diverged": "#d35400",
                 "stopped": "#7a6a00", "paused": "#7a6a00"}
DARK_STATUS_COLORS = {"running": "#4dabf7", "finished": "#8ce99a", "failed": "#ff8787", "diverged": "#ffa94d",
                      "stopped": "#ffd43b", "paused": "#ffd43b"}
BASELINE_COLORS = ("#fff4cc", "#202020")  # background, text
DARK_BASELINE_COLORS = ("#4a3f1c", "#f2f2f2")


def _get(record: Any, name: str, default: Any = None) -> Any:
    return getattr(record, name, default)


def format_created(text: str | None) -> str:
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return str(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone()  # show local time
    return moment.strftime("%Y-%m-%d %H:%M")


def record_metric(record: Any) -> MetricSpec | None:
    """The metric of a run's kind; None for a kind no installed module declares (a plugin removed)."""
    try:
        return get_kind_class(_get(record, "kind") or DEFAULT_KIND).metric
    except ConfigError:
        return None


def record_score(record: Any, prefix: str) -> float | None:
    """``best_val`` or ``test`` score of a run in its kind's metric (``test_accuracy``, ``test_mse``, …)."""
    metric = record_metric(record)
    value = _get(record, f"{prefix}_{metric.column}") if metric is not None else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def format_score(record: Any, prefix: str) -> str:
    metric = record_metric(record)
    if metric is None:
        return f"? ({_get(record, 'kind')})"
    ci95 = _get(record, f"{prefix}_ci95")
    return metric.format(record_score(record, prefix), None if prefix == "best_val" else ci95)


def checkpoint_file(record: Any, kind: str) -> Path | None:
    path = _get(record, "path")
    return Path(path) / "checkpoints" / f"{kind}.pt" if path else None


def has_checkpoint(record: Any, kind: str) -> bool:
    file = checkpoint_file(record, kind)
    return bool(file and file.is_file())


class RunsTableModel(QAbstractTableModel):
    """One row per RunRecord. Only the name is editable; editing renames the run in the store."""

    rename_failed = Signal(str, str)  # run id, message
    renamed = Signal(str, str)  # run id, new name

    def __init__(self, store, parent=None):
        super().__init__(parent)
        self.store = store
        self.records: list[Any] = []
        self.baseline_id: str | None = None
        self.active_run_id: str | None = None
        self.status_colors = STATUS_COLORS
        self.baseline_colors = BASELINE_COLORS

    def set_dark(self, dark: bool) -> None:
        self.status_colors = DARK_STATUS_COLORS if dark else STATUS_COLORS
        self.baseline_colors = DARK_BASELINE_COLORS if dark else BASELINE_COLORS
        self._all_changed()

    # --- loading ------------------------------------------------------------------------------
    def set_records(self, records: list[Any]) -> None:
        same_rows = [r.id for r in records] == [r.id for r in self.records]
        if same_rows:
            # Update in place: a reset would close an open name editor and lose the selection.
            self.records = list(records)
            if self.records:
                self.dataChanged.emit(self.index(0, 0), self.index(len(self.records) - 1, len(COLUMNS) - 1))
            return
        self.beginResetModel()
        self.records = list(records)
        self.endResetModel()

    def record(self, row: int) -> Any:
        return self.records[row]

    def row_of(self, run_id: str) -> int:
        for row, record in enumerate(self.records):
            if record.id == run_id:
                return row
        return -1

    def set_baseline(self, run_id: str | None) -> None:
        self.baseline_id = run_id
        self._all_changed()

    def set_active_run(self, run_id: str | None) -> None:
        self.active_run_id = run_id
        self._all_changed()

    def _all_changed(self) -> None:
        if self.records:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self.records) - 1, len(COLUMNS) - 1))

    # --- Qt model interface -------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.records)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(COLUMNS):
            return None
        column = COLUMNS[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return column.title
        if role == Qt.ItemDataRole.ToolTipRole:
            return column.tooltip or None
        if role == Qt.ItemDataRole.TextAlignmentRole and column.numeric:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def flags(self, index):
        flags = super().flags(index)
        if index.isValid() and COLUMNS[index.column()].key == "name":
            flags |= Qt.ItemFlag.ItemIsEditable
        return flags

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self.records):
            return None
        record = self.records[index.row()]
        key = COLUMNS[index.column()].key
        is_baseline = record.id == self.baseline_id
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(record, key, is_baseline)
        if role == Qt.ItemDataRole.EditRole:
            return _get(record, "name", "") if key == "name" else self._display(record, key, is_baseline)
        if role == SORT_ROLE:
            return self._sort_value(record, key)
        if role == RUN_ID_ROLE:
            return record.id
        if role == BASELINE_ROLE:
            return is_baseline
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if COLUMNS[index.column()].numeric:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.FontRole and is_baseline:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.BackgroundRole and is_baseline:
            return QBrush(QColor(self.baseline_colors[0]))
        if role == Qt.ItemDataRole.ForegroundRole:
            if key == "status":
                color = self.status_colors.get(self._display(record, "status", False))
                return QBrush(QColor(color)) if color else None
            if is_baseline:
                return QBrush(QColor(self.baseline_colors[1]))
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(record)
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole):
        if role != Qt.ItemDataRole.EditRole or not index.isValid() or COLUMNS[index.column()].key != "name":
            return False
        record = self.records[index.row()]
        name = str(value).strip()
        if not name or name == _get(record, "name", ""):
            return False
        try:
            updated = self.store.rename(record.id, name) or self.store.get(record.id).record()
        except Exception as exc:  # the store's message (e.g. name already used) goes to the user
            self.rename_failed.emit(record.id, describe_exception(exc))
            return False
        self.records[index.row()] = updated
        self.dataChanged.emit(self.index(index.row(), 0), self.index(index.row(), len(COLUMNS) - 1))
        self.renamed.emit(record.id, name)
        return True

    # --- cell contents ------------------------------------------------------------------------
    def _display(self, record: Any, key: str, is_baseline: bool) -> str:
        if key == "name":
            name = _get(record, "name", "") or record.id
            return f"{name}  \u2605 baseline" if is_baseline else name
        if key == "status":
            status = str(_get(record, "status", "") or "")
            if record.id == self.active_run_id and status != "running":
                status = "running"
            return status
        if key == "kind":
            return str(_get(record, "kind", "") or DEFAULT_KIND)
        if key == "algorithm":
            return str(_get(record, "algorithm", "") or "")
        if key == "dataset":
            return str(_get(record, "dataset", "") or "")
        if key == "setting":
            return setting_text(_get(record, "kind"), _get(record, "ways"), _get(record, "shots"))
        if key == "steps":
            done, total = _get(record, "steps_done") or 0, _get(record, "steps_total") or 0
            return f"{done:,} / {total:,}" if total else f"{done:,}"
        if key == "best_val":
            return format_score(record, "best_val")
        if key == "test":
            return self._test_text(record)
        if key == "created":
            return format_created(_get(record, "created"))
        return ""

    def _sort_value(self, record: Any, key: str):
        if key == "name":
            return (_get(record, "name", "") or record.id).lower()
        if key == "setting":
            return float((_get(record, "ways") or 0) * 1000 + (_get(record, "shots") or 0))
        if key == "steps":
            return float(_get(record, "steps_done") or 0)
        if key in ("best_val", "test"):
            value = record_score(record, key)
            return MISSING if value is None else float(value)
        if key == "created":
            return str(_get(record, "created", "") or "")
        return self._display(record, key, False).lower()

    @staticmethod
    def _test_text(record: Any) -> str:
        """The test score, with its setting when it differs from the one the run was trained for."""
        text = format_score(record, "test")
        test_ways, test_shots = _get(record, "test_ways"), _get(record, "test_shots")
        trained = (_get(record, "ways") if test_ways else None, _get(record, "shots"))
        if record_score(record, "test") is not None and test_shots and (test_ways, test_shots) != trained:
            text += f" ({test_ways}w{test_shots}s)" if test_ways else f" ({test_shots}-shot)"
        return text

    def _tooltip(self, record: Any) -> str:
        lines = [f"<b>{_get(record, 'name', '') or record.id}</b>", f"id: {record.id}",
                 f"kind: {_get(record, 'kind', '') or DEFAULT_KIND}"]
        metric = record_metric(record)
        if record_score(record, "best_val") is not None:
            best = metric.format(record_score(record, "best_val"), _get(record, "best_val_ci95"))
            lines.append(f"best validation {metric_name(metric)}: {best}")
        if record_score(record, "test") is not None:
            tested = setting_text(_get(record, "kind"), _get(record, "test_ways"), _get(record, "test_shots"))
            lines.append(f"test: {format_score(record, 'test')} ({tested})")
        if _get(record, "message"):
            lines.append(f"{_get(record, 'status', '')}: {_get(record, 'message')}")
        if _get(record, "device"):
            lines.append(f"device: {_get(record, 'device')}")
        if _get(record, "updated"):
            lines.append(f"updated: {format_created(_get(record, 'updated'))}")
        if _get(record, "path"):
            lines.append(f"folder: {_get(record, 'path')}")
        if record.id == self.baseline_id:
            lines.append("pinned as the baseline for comparisons")
        return "<br>".join(lines)


class RunsFilterProxy(QSortFilterProxyModel):
    """Sorts on SORT_ROLE (numbers as numbers) and keeps rows whose text in any column contains the filter."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setSortRole(SORT_ROLE)
        self.setFilterKeyColumn(-1)
        self.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setSortCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.setDynamicSortFilter(True)


class _NameEditor(QLineEdit):
    """Inline name editor that keeps Return/Enter for itself (else the view's Open shortcut takes them)."""

    OWN_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Escape)

    def event(self, event):
        if event.type() == event.Type.ShortcutOverride and event.key() in self.OWN_KEYS:
            event.accept()
            return True
        return super().event(event)


class _NameDelegate(QStyledItemDelegate):
    """Name cells: the baseline gets a "baseline" pill drawn at the right, so eliding never hides it."""

    BADGE_TEXT = "baseline"
    BADGE_COLOR = QColor("#b8860b")

    def createEditor(self, parent, option, index):
        editor = _NameEditor(parent)
        editor.setFrame(False)
        return editor

    def paint(self, painter, option, index):
        if not index.data(BASELINE_ROLE):
            super().paint(painter, option, index)
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        name = index.data(Qt.ItemDataRole.EditRole) or ""
        opt.text = ""
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)  # background, selection

        badge_font = QFont(opt.font)
        badge_font.setBold(True)
        badge_font.setPointSizeF(max(6.0, opt.font.pointSizeF() * 0.8))
        badge_metrics = QFontMetrics(badge_font)
        badge_width = badge_metrics.horizontalAdvance(self.BADGE_TEXT) + 12
        badge_height = min(opt.rect.height() - 4, badge_metrics.height() + 4)
        text_rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, widget)
        badge = QRect(text_rect.right() - badge_width - 2, opt.rect.center().y() - badge_height // 2 + 1,
                      badge_width, badge_height)
        margin = style.pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, widget) + 1  # as Qt's own text
        text_rect.setLeft(text_rect.left() + margin)
        text_rect.setRight(badge.left() - 6)

        painter.save()
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        group = QPalette.ColorGroup.Normal if opt.state & QStyle.StateFlag.State_Active else \
            QPalette.ColorGroup.Inactive
        text_color = opt.palette.color(group, QPalette.ColorRole.HighlightedText) if selected else \
            opt.palette.color(group, QPalette.ColorRole.Text)
        foreground = index.data(Qt.ItemDataRole.ForegroundRole)
        if not selected and isinstance(foreground, QBrush):
            text_color = foreground.color()
        painter.setFont(opt.font)
        painter.setPen(text_color)
        elided = QFontMetrics(opt.font).elidedText(name, Qt.TextElideMode.ElideRight, max(0, text_rect.width()))
        painter.drawText(text_rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), elided)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(self.BADGE_COLOR)
        painter.drawRoundedRect(badge, badge_height / 2, badge_height / 2)
        painter.setFont(badge_font)
        painter.setPen(QColor("#ffffff"))
        painter.drawText(badge, int(Qt.AlignmentFlag.AlignCenter), self.BADGE_TEXT)
        painter.restore()

    def sizeHint(self, option, index):
        size = super().sizeHint(option, index)
        if index.data(BASELINE_ROLE):
            size.setWidth(size.width() + QFontMetrics(option.font).horizontalAdvance(self.BADGE_TEXT) + 24)
        return size


def _ask_yes_no(parent: QWidget, title: str, text: str) -> bool:
    answer = QMessageBox.question(parent, title, text, QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


@register_view
class RunsView(QWidget):
    """Table of runs with actions. :meth:`for_window` wires it to the main window; call ``shutdown()`` before
    closing."""

    view_title = "Runs"
    view_capability = None  # every kind has runs
    view_order = 20

    open_run = Signal(str)  # run id: show this run's curves in the training view
    overlay_runs = Signal(list, object)  # run ids to overlay (baseline first, if pinned), baseline id or None
    resume_run = Signal(str)  # run id of a stopped/paused/failed/diverged run with a "last" checkpoint
    baseline_changed = Signal(object)  # run id or None
    run_renamed = Signal(str, str)  # run id, new name
    run_deleted = Signal(str)  # run id (its folder is gone)
    evaluation_finished = Signal(str, object)  # run id, EvalResult
    status_message = Signal(str)  # one line for the main window's status bar

    def __init__(self, store, parent: QWidget | None = None, service: EvaluationService | None = None):
        super().__init__(parent)
        self.store = store
        self.service = service if service is not None else EvaluationService(self)
        # Injectable for tests: confirm(title, text) -> bool, open_url(QUrl) -> bool, error(title, message, details).
        self.confirm: Callable[[str, str], bool] = lambda title, text: _ask_yes_no(self, title, text)
        self.open_url: Callable[[QUrl], bool] = QDesktopServices.openUrl
        self.show_error: Callable[[str, str, str | None], Any] = (
            lambda title, message, details=None: show_error(self, title, message, details, block=False))
        self.eval_device = "auto"
        self._eval_jobs: dict[int, str] = {}  # this view's evaluation jobs: job id -> run id

        self.model = RunsTableModel(store, self)
        self.proxy = RunsFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self.model.rename_failed.connect(self._on_rename_failed)
        self.model.renamed.connect(self._on_renamed)
        self._build_table()
        self._build_actions()
        self.table.selectionModel().selectionChanged.connect(lambda *_: self._update_actions())
        self.table.selectionModel().currentChanged.connect(lambda *_: self._update_actions())
        self._build_layout()
        for signal, slot in ((self.service.started, self._on_eval_started),
                             (self.service.progress, self._on_eval_progress),
                             (self.service.finished, self._on_eval_finished),
                             (self.service.failed, self._on_eval_failed),
                             (self.service.cancelled, self._on_eval_cancelled)):
            signal.connect(slot)
        self.refresh()

    def _build_table(self) -> None:
        self.table = QTableView(self)
        self.table.setObjectName("runsTable")
        self.table.setModel(self.proxy)
        self.table.setItemDelegateForColumn(COLUMN_INDEX["name"], _NameDelegate(self.table))
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(COLUMN_INDEX["created"], Qt.SortOrder.DescendingOrder)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        # Double-click opens; renaming is F2 or the Rename action (inline editor on the name cell).
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.EditKeyPressed)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 10)
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._show_context_menu)
        self.table.doubleClicked.connect(lambda index: self.open_current())
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setHighlightSections(False)
        for index, column in enumerate(COLUMNS):
            self.table.setColumnWidth(index, column.width)
        header.setSectionsMovable(True)
        header.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        header.customContextMenuRequested.connect(self._show_header_menu)
        self._default_header_state = header.saveState()

    def _build_layout(self) -> None:
        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText("Filter runs (name, status, algorithm…)")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.textChanged.connect(self._on_filter_changed)
        self.filter_edit.setMinimumWidth(200)
        self.filter_edit.setMaximumWidth(420)

        self.toolbar = QToolBar(self)
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for action in (self.open_action, self.overlay_action, self.baseline_action, None, self.evaluate_action,
                       self.resume_action, None, self.rename_action, self.delete_action, self.open_folder_action,
                       None, self.refresh_action):
            if action is None:
                self.toolbar.addSeparator()
            else:
                self.toolbar.addAction(action)

        self.count_label = QLabel(self)
        self.count_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.count_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.empty_label = QLabel("No runs yet. Start training in the Training tab; every run is listed here.",
                                  self)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setForegroundRole(QPalette.ColorRole.PlaceholderText)
        self.empty_label.setWordWrap(True)
        self._build_progress_strip()

        # Toolbar on its own row so it never overflows in a narrow tab; filter and count below it.
        filter_row = QHBoxLayout()
        filter_row.setContentsMargins(0, 0, 0, 0)
        filter_row.addWidget(self.filter_edit, 1)
        filter_row.addSpacing(12)
        filter_row.addWidget(self.count_label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.toolbar)
        layout.addLayout(filter_row)
        layout.addWidget(self.empty_label)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.progress_strip)

    def _build_progress_strip(self) -> None:
        # Evaluation progress strip: non-modal so the table stays usable while the test episodes run.
        self.progress_bar = QProgressBar(self)
        self.progress_bar.setTextVisible(True)
        self.progress_label = QLabel(self)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip("Stop the evaluation; nothing is saved")
        self.cancel_button.clicked.connect(self.cancel_evaluation)
        self.progress_strip = QWidget(self)
        strip = QHBoxLayout(self.progress_strip)
        strip.setContentsMargins(0, 0, 0, 0)
        strip.addWidget(self.progress_label)
        strip.addWidget(self.progress_bar, 1)
        strip.addWidget(self.cancel_button)
        self.progress_strip.hide()

    @classmethod
    def for_window(cls, window) -> "RunsView":
        """The tab of ``window``: its actions open, overlay and resume runs there; its changes to the store (and
        those of others) reach every view through ``window.run_store_changed``."""
        view = cls(window.store, service=EvaluationService.for_window(window))
        view.open_run.connect(window.open_run)
        view.overlay_runs.connect(window.overlay_runs)
        view.resume_run.connect(window.resume_run)
        view.status_message.connect(lambda text: window.statusBar().showMessage(text, 8000))
        for signal in (view.run_deleted, view.run_renamed, view.evaluation_finished):
            signal.connect(lambda *_: window.run_store_changed.emit())
        window.training_started.connect(lambda _job, info: view.set_active_run((info or {}).get("run_id")))
        window.training_finished.connect(lambda *_: view.set_active_run(None))
        window.run_store_changed.connect(view.refresh)
        window.theme_changed.connect(view.apply_theme)
        return view

    # --- actions ------------------------------------------------------------------------------
    def _make_action(self, text: str, tip: str, slot, shortcuts=()) -> QAction:
        action = QAction(text, self)
        action.setToolTip(tip)
        action.setStatusTip(tip)
        if shortcuts:
            action.setShortcuts([QKeySequence(key) for key in shortcuts])
            action.setToolTip(f"{tip} ({QKeySequence(shortcuts[0]).toString(QKeySequence.SequenceFormat.NativeText)})")
        # Shortcuts act only while the Runs tab has focus, so they never clash with other tabs.
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.triggered.connect(lambda checked=False: slot())
        self.addAction(action)
        return action

    def _build_actions(self) -> None:
        key = QKeySequence.StandardKey
        self.open_action = self._make_action("Open", "Show this run's curves in the Training tab",
                                             self.open_current, (Qt.Key.Key_Return, Qt.Key.Key_Enter))
        self.overlay_action = self._make_action(
            "Overlay", "Overlay the selected runs' curves (and the baseline) in the Training tab",
            self.overlay_selected, ("Ctrl+Shift+O",))
        self.baseline_action = self._make_action("Pin as baseline", "Mark this run as the baseline that every "
                                                 "overlay is compared with", self.toggle_baseline, ("Ctrl+B",))
        self.evaluate_action = self._make_action("Evaluate", "Measure test accuracy on the fixed meta-test episodes",
                                                 self.evaluate_current, ("Ctrl+E",))
        self.resume_action = self._make_action("Resume", "Continue training a stopped run from its last checkpoint",
                                               self.resume_current)
        self.rename_action = self._make_action("Rename", "Rename this run", self.rename_current, (Qt.Key.Key_F2,))
        self.delete_action = self._make_action("Delete…", "Delete the selected runs and their folders",
                                               self.delete_selected, (key.Delete,))
        self.open_folder_action = self._make_action("Open folder", "Open the run's folder in the file manager",
                                                    self.open_folder)
        self.refresh_action = self._make_action("Refresh", "Reload the list of runs", self.refresh,
                                                (Qt.Key.Key_F5,))

    def run_actions(self) -> list[QAction]:
        """The view's actions, e.g. for a Runs menu or the shortcuts dialog."""
        return [self.open_action, self.overlay_action, self.baseline_action, self.evaluate_action,
                self.resume_action, self.rename_action, self.delete_action, self.open_folder_action,
                self.refresh_action]

    def _show_context_menu(self, position) -> None:
        index = self.table.indexAt(position)
        if index.isValid() and not self.table.selectionModel().isRowSelected(index.row(), QModelIndex()):
            self.table.selectionModel().setCurrentIndex(
                index, QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows)
        menu = QMenu(self)
        for action in (self.open_action, self.overlay_action, self.baseline_action, None, self.evaluate_action,
                       self.resume_action, None, self.rename_action, self.open_folder_action, None,
                       self.delete_action):
            if action is None:
                menu.addSeparator()
            else:
                menu.addAction(action)
        menu.popup(self.table.viewport().mapToGlobal(position))

    def _show_header_menu(self, position) -> None:
        """Right-click on the header: choose which columns to show (kept by save_state)."""
        menu = QMenu(self)
        for index, column in enumerate(COLUMNS):
            action = menu.addAction(column.title)
            action.setCheckable(True)
            action.setChecked(not self.table.isColumnHidden(index))
            action.setEnabled(column.key != "name")  # a row must stay identifiable
            action.toggled.connect(lambda shown, index=index: self.table.setColumnHidden(index, not shown))
        menu.addSeparator()
        menu.addAction("Fit columns to contents", self.fit_columns)
        menu.popup(self.table.horizontalHeader().mapToGlobal(position))

    def fit_columns(self) -> None:
        self.table.resizeColumnsToContents()
        name = COLUMN_INDEX["name"]
        self.table.setColumnWidth(name, min(max(self.table.columnWidth(name), 120), 320))

    def _update_actions(self) -> None:
        record = self.current_record()
        selected = self.selected_run_ids()
        idle = record is not None and record.id != self.model.active_run_id
        self.open_action.setEnabled(record is not None)
        self.overlay_action.setEnabled(bool(selected) or (record is not None))
        self.baseline_action.setEnabled(record is not None)
        self.baseline_action.setText("Unpin baseline" if record is not None and record.id == self.model.baseline_id
                                     else "Pin as baseline")
        self.rename_action.setEnabled(record is not None)
        self.open_folder_action.setEnabled(record is not None)
        busy = self.service.busy_run_ids() | {self.model.active_run_id}
        self.delete_action.setEnabled(bool(selected) and not busy.intersection(selected))
        self.resume_action.setEnabled(idle and self.can_resume(record))
        self.evaluate_action.setEnabled(idle and not self.service.is_running and self.can_evaluate(record))

    @staticmethod
    def can_resume(record: Any) -> bool:
        return _get(record, "status") in RESUMABLE_STATUSES and has_checkpoint(record, "last")

    @staticmethod
    def can_evaluate(record: Any) -> bool:
        return has_checkpoint(record, "best") or has_checkpoint(record, "last")

    # --- selection helpers --------------------------------------------------------------------
    def current_record(self) -> Any | None:
        index = self.table.currentIndex()
        if not index.isValid():
            rows = self.table.selectionModel().selectedRows()
            if not rows:
                return None
            index = rows[0]
        source = self.proxy.mapToSource(index)
        return self.model.record(source.row()) if source.isValid() else None

    def current_run_id(self) -> str | None:
        record = self.current_record()
        return record.id if record is not None else None

    def selected_run_ids(self) -> list[str]:
        """Selected runs in the table's current (sorted) order."""
        rows = sorted(index.row() for index in self.table.selectionModel().selectedRows())
        return [self.proxy.index(row, 0).data(RUN_ID_ROLE) for row in rows]

    def select_runs(self, run_ids: list[str]) -> None:
        selection = self.table.selectionModel()
        selection.clearSelection()
        first = None
        for run_id in run_ids:
            row = self.model.row_of(run_id)
            if row < 0:
                continue
            index = self.proxy.mapFromSource(self.model.index(row, 0))
            if not index.isValid():
                continue  # hidden by the filter
            selection.select(index, QItemSelectionModel.SelectionFlag.Select | QItemSelectionModel.SelectionFlag.Rows)
            first = first or index
        if first is not None:
            selection.setCurrentIndex(first, QItemSelectionModel.SelectionFlag.NoUpdate)
            self.table.scrollTo(first)
        self._update_actions()

    def proxy_row_of(self, run_id: str) -> int:
        row = self.model.row_of(run_id)
        return self.proxy.mapFromSource(self.model.index(row, 0)).row() if row >= 0 else -1

    # --- public API ---------------------------------------------------------------------------
    @property
    def baseline_id(self) -> str | None:
        return self.model.baseline_id

    def set_baseline(self, run_id: str | None) -> None:
        if run_id == self.model.baseline_id:
            return
        self.model.set_baseline(run_id)
        self._update_actions()
        self.baseline_changed.emit(run_id)

    def set_active_run(self, run_id: str | None) -> None:
        """The run training now (or None): it cannot be deleted, resumed or evaluated meanwhile."""
        self.model.set_active_run(run_id)
        self._update_actions()

    def refresh(self) -> None:
        """Reload every run from the store, keeping the selection and the current row."""
        selected = self.selected_run_ids()
        current = self.current_run_id()
        try:
            records = self.store.list()
        except Exception as exc:
            self.show_error("Cannot read the run store", f"The list of runs could not be read: "
                            f"{describe_exception(exc)}", None)
            records = []
        ids = {record.id for record in records}
        if self.model.baseline_id is not None and self.model.baseline_id not in ids and records:
            self.set_baseline(None)  # the baseline run was deleted elsewhere
        editing = self.table.state() == QAbstractItemView.State.EditingState
        self.model.set_records(records)
        if not editing and (selected or current):
            keep = [run_id for run_id in selected if run_id in ids] or ([current] if current in ids else [])
            self.select_runs(keep)
            if current in ids:
                index = self.proxy.mapFromSource(self.model.index(self.model.row_of(current), 0))
                if index.isValid():
                    self.table.selectionModel().setCurrentIndex(index, QItemSelectionModel.SelectionFlag.NoUpdate)
        self._update_counts()
        self._update_actions()

    def open_current(self) -> None:
        run_id = self.current_run_id()
        if run_id is not None:
            self.open_run.emit(run_id)

    def overlay_selected(self) -> None:
        run_ids = self.selected_run_ids() or ([self.current_run_id()] if self.current_run_id() else [])
        baseline = self.model.baseline_id
        if baseline is not None and self.model.row_of(baseline) >= 0:
            run_ids = [baseline] + [run_id for run_id in run_ids if run_id != baseline]
        else:
            baseline = None
        if run_ids:
            self.overlay_runs.emit(run_ids, baseline)

    def toggle_baseline(self) -> None:
        run_id = self.current_run_id()
        if run_id is None:
            return
        self.set_baseline(None if run_id == self.model.baseline_id else run_id)

    def rename_current(self) -> None:
        record = self.current_record()
        if record is None:
            return
        index = self.proxy.mapFromSource(self.model.index(self.model.row_of(record.id), COLUMN_INDEX["name"]))
        self.table.setCurrentIndex(index)
        self.table.edit(index)

    def rename_run(self, run_id: str, name: str) -> bool:
        """Rename without the inline editor (menus, tests); errors are shown like inline ones."""
        row = self.model.row_of(run_id)
        return row >= 0 and self.model.setData(self.model.index(row, COLUMN_INDEX["name"]), name)

    def delete_selected(self) -> None:
        busy = self.service.busy_run_ids() | {self.model.active_run_id}
        run_ids = [run_id for run_id in self.selected_run_ids() if run_id not in busy]
        if not run_ids:
            return
        records = [self.model.record(self.model.row_of(run_id)) for run_id in run_ids]
        if len(records) == 1:
            record = records[0]
            title = "Delete run"
            text = (f"Delete the run \"{_get(record, 'name', '') or record.id}\" ({record.id})?\n\n"
                    f"Its folder, checkpoints and metrics will be removed permanently:\n{_get(record, 'path', '')}")
        else:
            names = "\n".join(f"  • {_get(r, 'name', '') or r.id}" for r in records[:10])
            more = f"\n  … and {len(records) - 10} more" if len(records) > 10 else ""
            title = f"Delete {len(records)} runs"
            text = (f"Delete these {len(records)} runs?\n{names}{more}\n\n"
                    "Their folders, checkpoints and metrics will be removed permanently.")
        if not self.confirm(title, text):
            return
        deleted = []
        for record in records:
            try:
                self.store.delete(record.id)
            except Exception as exc:
                self.show_error("Cannot delete run", f"The run \"{_get(record, 'name', '') or record.id}\" could not "
                                f"be deleted: {describe_exception(exc)}", None)
                continue
            deleted.append(record.id)
        if self.model.baseline_id in deleted:
            self.set_baseline(None)
        self.refresh()
        for run_id in deleted:
            self.run_deleted.emit(run_id)
        if deleted:
            self.status_message.emit(f"Deleted {len(deleted)} run{'s' if len(deleted) > 1 else ''}.")

    def open_folder(self) -> None:
        record = self.current_record()
        if record is None:
            return
        path = Path(_get(record, "path", "") or "")
        if not path.is_dir():
            self.show_error("Cannot open folder", f"The folder of run \"{_get(record, 'name', '')}\" does not exist: "
                            f"{path}", None)
            return
        if not self.open_url(QUrl.fromLocalFile(str(path))):
            self.show_error("Cannot open folder", f"No file manager could open {path}", None)

    def resume_current(self) -> None:
        record = self.current_record()
        if record is not None and record.id != self.model.active_run_id and self.can_resume(record):
            self.resume_run.emit(record.id)

    # --- evaluation (asked of the evaluation service) --------------------------------------------
    @property
    def is_evaluating(self) -> bool:
        """Whether the evaluation service is busy (with this view's job or another view's)."""
        return self.service.is_running

    def evaluate_current(self) -> None:
        record = self.current_record()
        if record is not None and record.id != self.model.active_run_id:
            self.evaluate(record.id)

    def evaluate(self, run_id: str, **options) -> None:
        """Evaluate a run on its fixed meta-test tasks in the background; ``options`` go to evaluate_run
        (episodes, ways, shots, queries, seed)."""
        if self.service.is_running:
            self.show_error("Evaluation running", "Another evaluation is running; wait for it or cancel it first.",
                            None)
            return
        row = self.model.row_of(run_id)
        if row < 0:
            return
        record = self.model.record(row)
        if not self.can_evaluate(record):
            self.show_error("Cannot evaluate", f"The run \"{_get(record, 'name', '')}\" has no checkpoint yet; "
                            "train it for at least one validation or checkpoint interval first.", None)
            return
        checkpoint = "best" if has_checkpoint(record, "best") else "last"
        request = {"run": run_id, "checkpoint": checkpoint, **options}
        job_id = self.service.submit(self.store, [request], device=self.eval_device,
                                     label=f"Evaluating {_get(record, 'name', '') or run_id}")
        if job_id is not None:
            self._eval_jobs[job_id] = run_id
        self._update_actions()

    def cancel_evaluation(self) -> None:
        if self.service.is_running:
            self.cancel_button.setEnabled(False)
            self.progress_bar.setFormat("cancelling…")
            self.service.cancel()

    def _on_eval_started(self, job_id: int, label: str) -> None:
        self.progress_label.setText(f"{label}:")
        self.progress_bar.setRange(0, 0)  # busy until the first report (loading the dataset)
        self.progress_bar.setFormat("loading…")
        self.cancel_button.setEnabled(True)
        self.progress_strip.show()
        self._update_actions()

    def _on_eval_progress(self, job_id: int, done: int, total: int, message: str) -> None:
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)
            self.progress_bar.setFormat(f"{message}  (%p%)" if message else "%v / %m  (%p%)")
        else:
            self.progress_bar.setRange(0, 0)
            self.progress_bar.setFormat(message or "working…")

    def _end_evaluation(self, job_id: int) -> str | None:
        """Hide the strip; the run id when the job was this view's."""
        self.progress_strip.hide()
        self._update_actions()
        return self._eval_jobs.pop(job_id, None)

    def _on_eval_finished(self, job_id: int, results: list) -> None:
        run_id = self._end_evaluation(job_id)
        self.refresh()  # whoever asked: the test columns changed
        if run_id is None or not results:
            return
        result = results[0]
        data = ResultData.of(result)
        self.status_message.emit(f"Test {data.headline()} ({data.setting()}).")
        self.evaluation_finished.emit(run_id, result)

    def _on_eval_failed(self, job_id: int, message: str, details: str) -> None:
        run_id = self._end_evaluation(job_id)
        if run_id is None:
            return  # another view's job: it tells its user
        row = self.model.row_of(run_id)
        name = _get(self.model.record(row), "name", run_id) if row >= 0 else run_id
        self.show_error("Evaluation failed", f"Evaluating \"{name}\" failed: {message}", details)

    def _on_eval_cancelled(self, job_id: int) -> None:
        if self._end_evaluation(job_id) is not None:
            self.status_message.emit("Evaluation cancelled.")

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel a running evaluation and join its thread (call from the main window's closeEvent)."""
        return self.service.shutdown(timeout_ms)

    # --- misc handlers ------------------------------------------------------------------------
    def _on_filter_changed(self, text: str) -> None:
        self.proxy.setFilterFixedString(text.strip())
        self._update_counts()
        self._update_actions()

    def _update_counts(self) -> None:
        total, shown = self.model.rowCount(), self.proxy.rowCount()
        noun = "run" if total == 1 else "runs"
        self.count_label.setText(f"{total} {noun}" if shown == total else f"{shown} of {total} {noun} shown")
        self.empty_label.setVisible(total == 0)

    def _on_rename_failed(self, run_id: str, message: str) -> None:
        self.show_error("Cannot rename run", f"The run could not be renamed: {message}", None)

    def _on_renamed(self, run_id: str, name: str) -> None:
        self.run_renamed.emit(run_id, name)
        self.status_message.emit(f"Renamed the run to \"{name}\".")

    def apply_theme(self, theme) -> None:
        """Called by the main window with a workbench.gui.theme.Theme; only light/dark matters here."""
        self.model.set_dark(bool(getattr(theme, "is_dark", False)))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self.refresh()  # cheap (one SQLite query) and catches runs made by the CLI meanwhile

    # --- persistence --------------------------------------------------------------------------
    def save_state(self, settings: QSettings | None = None) -> None:
        """Column widths/order, sort and baseline into ``settings`` (default: the app's settings file)."""
        settings = settings if settings is not None else _app_settings()
        header = self.table.horizontalHeader()
        settings.beginGroup(SETTINGS_GROUP)
        settings.setValue("header", header.saveState())
        settings.setValue("sort_column", header.sortIndicatorSection())
        settings.setValue("sort_order", 0 if header.sortIndicatorOrder() == Qt.SortOrder.AscendingOrder else 1)
        settings.setValue("baseline", self.model.baseline_id or "")
        settings.endGroup()
        settings.sync()

    def restore_state(self, settings: QSettings | None = None) -> None:
        settings = settings if settings is not None else _app_settings()
        settings.beginGroup(SETTINGS_GROUP)
        try:
            header_state = settings.value("header")
            if isinstance(header_state, (QByteArray, bytes)) and header_state:
                if not self.table.horizontalHeader().restoreState(QByteArray(header_state)):
                    self.table.horizontalHeader().restoreState(self._default_header_state)
            column = _to_int(settings.value("sort_column"), COLUMN_INDEX["created"])
            order = _to_int(settings.value("sort_order"), 1)
            if 0 <= column < len(COLUMNS):
                self.table.sortByColumn(column, Qt.SortOrder.DescendingOrder if order else
                                        Qt.SortOrder.AscendingOrder)
            baseline = settings.value("baseline") or None
        finally:
            settings.endGroup()
        if baseline and self.model.row_of(str(baseline)) >= 0:
            self.set_baseline(str(baseline))


def _app_settings() -> QSettings:
    try:
        from workbench.gui.settings import open_settings
    except ImportError:  # pragma: no cover - the settings module ships with the GUI
        return QSettings()
    return open_settings()


def _to_int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


__all__ = ["RunsView", "RunsTableModel", "RunsFilterProxy", "COLUMNS", "COLUMN_INDEX", "SORT_ROLE", "RUN_ID_ROLE",
           "format_score", "record_metric"]

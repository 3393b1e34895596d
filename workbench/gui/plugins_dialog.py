"""The Plugins dialog: every plugin entry point (algorithms, datasets, kinds) with its distribution, its target and
whether it loaded; a broken one shows its error and traceback. Broken plugins never stop the app: the window
shows :func:`plugin_problems_note` in its status bar at start-up, and Help > Plugins… opens the dialog.
"""

from __future__ import annotations

import html

from PySide6.QtCore import Qt
from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QHeaderView, QLabel, QPlainTextEdit,
                               QPushButton, QSplitter, QStyle, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from workbench.core import catalog
from workbench.core.plugins import GROUPS, PluginEntry

GROUP_TITLES = {"algorithms": "Algorithm", "datasets": "Dataset", "kinds": "Kind"}
COLUMNS = ("Name", "Provides", "Distribution", "Target", "Status")
STATUS_COLUMN = COLUMNS.index("Status")
MAX_COLUMN_WIDTH = 240
HOW_TO = ("Packages add algorithms, datasets and kinds through the entry-point groups "
          + ", ".join(GROUPS.values()) + " (see docs/write-an-algorithm.md).")


def status_text(entry: PluginEntry) -> str:
    return "OK" if entry.ok else f"Error: {entry.error}"


def summary_text(entries: list[PluginEntry]) -> str:
    if not entries:
        return "No plugins are installed. " + HOW_TO
    broken = sum(not entry.ok for entry in entries)
    distributions = len({entry.distribution for entry in entries})
    text = (f"{len(entries)} plugin entr{'y' if len(entries) == 1 else 'ies'} from {distributions} "
            f"package{'' if distributions == 1 else 's'}")
    if not broken:
        return text + "; all loaded."
    return (text + f"; {broken} could not be loaded and {'is' if broken == 1 else 'are'} left out. The rest of "
            "the workbench works without them.")


def entry_details(entry: PluginEntry) -> str:
    """One entry as text: what it is, where it comes from, and its error with the traceback."""
    lines = [f"{GROUP_TITLES.get(entry.group, entry.group)} '{entry.name}'",
             f"  distribution: {entry.distribution or '(unknown)'}",
             f"  target: {entry.target}",
             f"  status: {status_text(entry)}"]
    if entry.details:
        lines += ["", entry.details.rstrip()]
    return "\n".join(lines)


def plugins_report(entries: list[PluginEntry]) -> str:
    """Every entry's details, for the clipboard (a bug report to the plugin's author)."""
    return "\n\n".join([summary_text(entries), *(entry_details(entry) for entry in entries)])


def plugin_problems_note() -> str:
    """A status-bar note when some plugin failed to load ("" when none did); loads every registry first."""
    broken = [entry for entry in catalog.load_everything() if not entry.ok]
    if not broken:
        return ""
    names = ", ".join(f"'{entry.name}'" for entry in broken[:3]) + (" and more" if len(broken) > 3 else "")
    return (f"{len(broken)} plugin{'s' if len(broken) > 1 else ''} could not be loaded ({names}); "
            "see Help > Plugins… for the errors.")


class PluginsDialog(QDialog):
    """A table of the plugin entry points; the selected one's details (error and traceback) below it."""

    def __init__(self, entries: list[PluginEntry], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Plugins")
        self.setObjectName("pluginsDialog")
        self.entries = list(entries)
        self.summary = QLabel(summary_text(self.entries))
        self.summary.setWordWrap(True)
        self.summary.setObjectName("pluginsSummary")
        self.tree = self._build_tree()
        self.problem = QLabel()
        self.problem.setObjectName("pluginProblem")
        self.problem.setWordWrap(True)
        self.problem.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details = QPlainTextEdit()
        self.details.setObjectName("pluginDetails")
        self.details.setReadOnly(True)
        self.details.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.details.setPlaceholderText("Select a plugin to see its details.")
        lower = QWidget()
        lower_layout = QVBoxLayout(lower)
        lower_layout.setContentsMargins(0, 4, 0, 0)
        lower_layout.addWidget(self.problem)
        lower_layout.addWidget(self.details, 1)

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.tree)
        splitter.addWidget(lower)
        splitter.setStretchFactor(0, 1)
        splitter.setStretchFactor(1, 1)
        lower.setVisible(bool(self.entries))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy details")
        self.copy_button.setToolTip("Copy every plugin's status and the errors' tracebacks, e.g. for a bug report")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy_details)
        buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(splitter, 1)
        layout.addWidget(buttons)
        self.tree.currentItemChanged.connect(lambda current, _: self._show_details(current))
        self._select_first_problem()
        self.resize(960, 560)

    def _build_tree(self) -> QTreeWidget:
        tree = QTreeWidget()
        tree.setObjectName("pluginsTable")
        tree.setHeaderLabels(list(COLUMNS))
        tree.setRootIsDecorated(False)
        tree.setUniformRowHeights(True)
        tree.setAlternatingRowColors(True)
        tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        ok_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_DialogApplyButton)
        error_icon = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical)
        for index, entry in enumerate(self.entries):
            item = QTreeWidgetItem([entry.name, GROUP_TITLES.get(entry.group, entry.group),
                                    entry.distribution or "?", entry.target, status_text(entry)])
            item.setIcon(STATUS_COLUMN, ok_icon if entry.ok else error_icon)
            item.setData(0, Qt.ItemDataRole.UserRole, index)
            tip = "Loaded and registered." if entry.ok else entry.error
            for column in range(len(COLUMNS)):
                item.setToolTip(column, tip)
            item.setToolTip(COLUMNS.index("Target"), f"{entry.target}\n{tip}")
            tree.addTopLevelItem(item)
        header = tree.header()
        header.setStretchLastSection(True)
        for column in range(len(COLUMNS) - 1):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
            tree.resizeColumnToContents(column)
            # The Status column (last, stretched) keeps room for the start of an error message.
            tree.setColumnWidth(column, min(tree.columnWidth(column) + 12, MAX_COLUMN_WIDTH))
        return tree

    def _select_first_problem(self) -> None:
        rows = [i for i, entry in enumerate(self.entries) if not entry.ok] or list(range(len(self.entries)))[:1]
        if rows:
            self.tree.setCurrentItem(self.tree.topLevelItem(rows[0]))

    def _show_details(self, item: QTreeWidgetItem | None) -> None:
        if item is None:
            self.problem.clear()
            self.details.clear()
            return
        entry = self.entries[item.data(0, Qt.ItemDataRole.UserRole)]
        what = f"{GROUP_TITLES.get(entry.group, entry.group)} <b>{html.escape(entry.name)}</b>"
        if entry.ok:
            self.problem.setText(f"{what} loaded and registered.")
        else:
            self.problem.setText(f"{what} could not be loaded: {html.escape(entry.error)}")
        self.details.setPlainText(entry_details(entry))

    def status_of(self, name: str) -> str:
        """The Status cell of the entry named ``name`` ("" if none is listed)."""
        for row in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(row)
            if item.text(0) == name:
                return item.text(STATUS_COLUMN)
        return ""

    def copy_details(self) -> None:
        QGuiApplication.clipboard().setText(plugins_report(self.entries))


def show_plugins_dialog(window: QWidget) -> PluginsDialog:
    """Open the Plugins dialog over ``window`` without blocking; loads every registry (and so every plugin)."""
    dialog = PluginsDialog(catalog.load_everything(), window)
    dialog.open()
    return dialog

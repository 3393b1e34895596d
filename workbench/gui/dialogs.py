"""Shared dialogs: readable error boxes, About, keyboard shortcuts, and the application icon."""

from __future__ import annotations

import importlib.resources
import platform
import sys
import traceback
from pathlib import Path
from typing import Iterable

from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QAction, QGuiApplication, QIcon, QKeySequence
from PySide6.QtWidgets import (QAbstractItemView, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout,
                               QHeaderView, QLabel, QMessageBox, QPushButton, QTableWidget, QTableWidgetItem,
                               QVBoxLayout, QWidget)

import workbench
from workbench.gui.background import describe_exception

APP_NAME = "Meta-Learning Workbench"

# Tests set this to False so dialogs open without blocking in a nested event loop.
BLOCKING_DIALOGS = True


# --- resources ---------------------------------------------------------------------------------
def resource_path(name: str) -> Path | None:
    """A file from resources/: the source checkout, a PyInstaller bundle, or installed package data."""
    package_dir = Path(workbench.__file__).resolve().parent
    candidates = []
    if (package_dir.parent / "pyproject.toml").is_file():  # a source checkout (also an editable install)
        candidates.append(package_dir.parent / "resources" / name)
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / "resources" / name)
    candidates.append(package_dir / "resources" / name)  # installed as package data
    try:
        packaged = importlib.resources.files("workbench") / "resources" / name
        candidates.append(Path(str(packaged)))
    except (ModuleNotFoundError, TypeError):
        pass
    return next((path for path in candidates if path.is_file()), None)


_icon_cache: QIcon | None = None


def app_icon() -> QIcon:
    """The application icon (SVG plus pre-rendered PNGs for crisp small sizes); empty if not found."""
    global _icon_cache
    if _icon_cache is None:
        icon = QIcon()
        for size in (32, 64, 256):
            png = resource_path(f"icon-{size}.png")
            if png is not None:
                icon.addFile(str(png))
        svg = resource_path("icon.svg")
        if svg is not None:
            icon.addFile(str(svg))
        _icon_cache = icon
    return _icon_cache


# --- errors ------------------------------------------------------------------------------------
def show_error(parent: QWidget | None, title: str, message: str, details: str | None = None,
               *, block: bool | None = None) -> QMessageBox:
    """An error box whose text says what went wrong; a traceback, if any, sits behind "Show Details...".

    Blocks (``exec``) unless ``block`` is False or the module flag BLOCKING_DIALOGS is off; then it opens
    window-modal and returns at once. Returns the box either way.
    """
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title or APP_NAME)
    box.setText(message)
    box.setTextFormat(Qt.TextFormat.PlainText)
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    # QMessageBox sizes itself to the text; long paths wrap badly in a narrow box.
    box.setStyleSheet("QMessageBox QLabel#qt_msgbox_label { min-width: 420px; }")
    if block if block is not None else BLOCKING_DIALOGS:
        box.exec()
    else:
        box.open()
    return box


def show_exception(parent: QWidget | None, title: str, exc: BaseException, *, block: bool | None = None
                   ) -> QMessageBox:
    """``show_error`` for a caught exception: its message up front, the traceback in the details."""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return show_error(parent, title, describe_exception(exc), details, block=block)


# --- about -------------------------------------------------------------------------------------
def environment_info() -> list[tuple[str, str]]:
    """(label, value) pairs describing this installation, shown in About and copied into bug reports."""
    import torch

    from workbench.core.device import detect_devices

    try:
        import PySide6
        pyside = PySide6.__version__
    except (ImportError, AttributeError):
        pyside = "?"
    torch_text = torch.__version__
    if torch.version.cuda:
        torch_text += f" (CUDA {torch.version.cuda})"
    rows = [
        ("Workbench", workbench.__version__),
        ("Python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("PyTorch", torch_text),
        ("Qt", f"{qVersion()} (PySide6 {pyside})"),
        ("System", f"{platform.system()} {platform.release()} {platform.machine()}".strip()),
    ]
    try:
        devices = [info.label if info.kind == "cpu" else f"{info.kind}: {info.label}" for info in detect_devices()]
    except Exception as exc:  # a broken driver must not prevent the About box from opening
        devices = [f"unavailable ({describe_exception(exc)})"]
    rows.append(("Devices", "\n".join(devices)))
    return rows


class AboutDialog(QDialog):
    """Version of the app and its main dependencies, plus the devices torch can use here."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"About {APP_NAME}")
        self.info = environment_info()

        header = QHBoxLayout()
        icon_label = QLabel()
        icon_label.setPixmap(app_icon().pixmap(64, 64))
        icon_label.setAlignment(Qt.AlignmentFlag.AlignTop)
        header.addWidget(icon_label)
        title = QLabel(f"<h2 style='margin:0'>{APP_NAME}</h2>"
                       f"<p>Version {workbench.__version__}</p>"
                       "<p>Train, compare and inspect meta-learning algorithms<br>"
                       "for few-shot image classification.</p>")
        title.setTextFormat(Qt.TextFormat.RichText)
        header.addWidget(title, 1)

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
        self.value_labels: dict[str, QLabel] = {}
        for label, value in self.info:
            value_label = QLabel(value)
            value_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.value_labels[label] = value_label
            form.addRow(f"<b>{label}:</b>", value_label)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.copy_button = QPushButton("Copy to clipboard")
        self.copy_button.setToolTip("Copy these versions, e.g. to paste into a bug report")
        buttons.addButton(self.copy_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.copy_button.clicked.connect(self.copy_to_clipboard)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(18, 16, 18, 12)
        layout.addLayout(header)
        layout.addSpacing(6)
        layout.addLayout(form)
        layout.addStretch(1)
        layout.addWidget(buttons)

    def text(self) -> str:
        lines = []
        for label, value in self.info:
            first, *rest = value.split("\n")
            lines.append(f"{label}: {first}")
            lines.extend(f"    {more}" for more in rest)
        return "\n".join(lines)

    def copy_to_clipboard(self) -> None:
        QGuiApplication.clipboard().setText(self.text())


# --- shortcuts ---------------------------------------------------------------------------------
def action_label(action: QAction) -> str:
    """The action's text without mnemonic ampersands or a trailing ellipsis."""
    text = action.text().replace("&&", "\0").replace("&", "").replace("\0", "&")
    return text.rstrip(".").rstrip("\u2026").strip()


class ShortcutsDialog(QDialog):
    """A table of every given action that has a keyboard shortcut: what it does and the keys."""

    def __init__(self, actions: Iterable[QAction], parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard Shortcuts")
        self.rows: list[tuple[str, str]] = []
        seen = set()
        for action in actions:
            keys = ", ".join(sequence.toString(QKeySequence.SequenceFormat.NativeText)
                             for sequence in action.shortcuts() if not sequence.isEmpty())
            name = action_label(action)
            if not keys or not name or (name, keys) in seen:
                continue
            seen.add((name, keys))
            self.rows.append((name, keys))

        self.table = QTableWidget(len(self.rows), 2, self)
        self.table.setHorizontalHeaderLabels(["Action", "Shortcut"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setAlternatingRowColors(True)
        for row, (name, keys) in enumerate(self.rows):
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, QTableWidgetItem(keys))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Interactive)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        self.table.resizeColumnToContents(1)
        self.table.setColumnWidth(1, max(130, self.table.columnWidth(1) + 24))

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        if not self.rows:
            layout.addWidget(QLabel("No keyboard shortcuts are defined."))
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        height = self.table.horizontalHeader().height() + sum(self.table.rowHeight(r) for r in range(len(self.rows)))
        self.resize(420, min(560, max(200, height + 80)))

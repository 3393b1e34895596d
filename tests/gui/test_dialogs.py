"""Error, About and Shortcuts dialogs, and the application icon."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

import platform
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

import torch  # noqa: E402
from PySide6.QtCore import qVersion  # noqa: E402
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence  # noqa: E402
from PySide6.QtWidgets import QMessageBox, QPushButton  # noqa: E402

import workbench  # noqa: E402
from workbench.core.errors import CheckpointError  # noqa: E402
from workbench.gui import dialogs  # noqa: E402
from workbench.gui.dialogs import AboutDialog, ShortcutsDialog, app_icon, resource_path, show_error, show_exception  # noqa: E402,E501

SCREENSHOT_DIR = os.environ.get("WORKBENCH_SCREENSHOTS")  # set to keep the rendered PNGs for a look
REPO = Path(__file__).resolve().parents[2]


def save_screenshot(widget, name: str) -> None:
    image = widget.grab()
    assert not image.isNull() and image.width() > 100 and image.height() > 50
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        image.save(str(Path(SCREENSHOT_DIR) / name))


def test_error_dialog_puts_the_traceback_behind_details(qtbot):
    details = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad'
    box = show_error(None, "Cannot load dataset", "/data/omniglot: no PNG images found; point dataset.root at "
                     "the folder holding images_background", details, block=False)
    qtbot.addWidget(box)
    assert box.isVisible()
    assert box.windowTitle() == "Cannot load dataset"
    assert "no PNG images found" in box.text()
    assert box.detailedText() == details
    assert box.icon() == QMessageBox.Icon.Critical
    # Qt adds the "Show Details..." button only when there is detailed text.
    assert any("Details" in button.text() for button in box.findChildren(QPushButton))
    save_screenshot(box, "error_dialog.png")
    box.close()


def test_error_dialog_without_details_has_no_details_button(qtbot):
    box = show_error(None, "Oops", "Something readable", block=False)
    qtbot.addWidget(box)
    assert box.detailedText() == ""
    assert not any("Details" in button.text() for button in box.findChildren(QPushButton))
    box.close()


def test_module_flag_makes_error_dialogs_non_blocking(qtbot, monkeypatch):
    monkeypatch.setattr(dialogs, "BLOCKING_DIALOGS", False)
    box = show_error(None, "Title", "message")  # would block the test forever if it called exec()
    qtbot.addWidget(box)
    assert box.isVisible()
    box.close()


def test_show_exception_uses_the_message_and_the_traceback(qtbot):
    try:
        raise CheckpointError("best.pt: refused: file contains executable pickle data")
    except CheckpointError as exc:
        box = show_exception(None, "Cannot open checkpoint", exc, block=False)
    qtbot.addWidget(box)
    assert box.text() == "best.pt: refused: file contains executable pickle data"
    assert "Traceback" in box.detailedText() and "CheckpointError" in box.detailedText()
    box.close()


def test_about_shows_versions_and_devices(qtbot):
    dialog = AboutDialog()
    qtbot.addWidget(dialog)
    dialog.show()
    text = dialog.text()
    assert workbench.__version__ in text
    assert torch.__version__ in dialog.value_labels["PyTorch"].text()
    assert qVersion() in dialog.value_labels["Qt"].text()
    assert platform.python_version() in dialog.value_labels["Python"].text()
    from workbench.core.device import detect_devices

    for device in detect_devices():
        assert device.name in dialog.value_labels["Devices"].text()
    dialog.copy_button.click()
    assert QGuiApplication.clipboard().text() == text
    save_screenshot(dialog, "about_dialog.png")


def test_shortcuts_dialog_lists_actions_with_keys(qtbot):
    open_action = QAction("&Open config…")
    open_action.setShortcut(QKeySequence("Ctrl+O"))
    evaluate = QAction("Evaluate")
    evaluate.setShortcuts([QKeySequence("Ctrl+E"), QKeySequence("F9")])
    no_keys = QAction("Export PNG")
    save_and_quit = QAction("Save && quit")
    save_and_quit.setShortcut(QKeySequence("Ctrl+Q"))
    dialog = ShortcutsDialog([open_action, evaluate, no_keys, save_and_quit])
    qtbot.addWidget(dialog)
    dialog.show()
    names = [dialog.table.item(row, 0).text() for row in range(dialog.table.rowCount())]
    keys = [dialog.table.item(row, 1).text() for row in range(dialog.table.rowCount())]
    assert names == ["Open config", "Evaluate", "Save & quit"]
    assert keys[0] == QKeySequence("Ctrl+O").toString(QKeySequence.SequenceFormat.NativeText)
    assert "F9" in keys[1] and ", " in keys[1]
    save_screenshot(dialog, "shortcuts_dialog.png")


def test_shortcuts_dialog_with_the_runs_view_actions(qtbot, tmp_path):
    from workbench.core.runs import RunStore
    from workbench.gui.runs_view import RunsView

    view = RunsView(RunStore(tmp_path / "home"))
    qtbot.addWidget(view)
    dialog = ShortcutsDialog(view.run_actions())
    qtbot.addWidget(dialog)
    names = {dialog.table.item(row, 0).text(): dialog.table.item(row, 1).text()
             for row in range(dialog.table.rowCount())}
    assert names["Evaluate"] == QKeySequence("Ctrl+E").toString(QKeySequence.SequenceFormat.NativeText)
    assert names["Rename"] == "F2" and "Delete" in names
    assert view.shutdown()


def test_app_icon_is_found_and_renders():
    svg = resource_path("icon.svg")
    assert svg is not None and svg == REPO / "resources" / "icon.svg"
    icon = app_icon()
    assert not icon.isNull()
    for size in (16, 32, 256):
        image = icon.pixmap(size, size).toImage()
        assert image.width() == size
        # Not blank: the tile is dark blue, so the centre pixel is opaque and not white.
        centre = image.pixelColor(size // 2, size // 2)
        assert centre.alpha() > 200 and centre.lightness() < 250


def test_resource_path_of_a_missing_file_is_none():
    assert resource_path("no-such-file.xyz") is None

"""Start the desktop app: ``workbench`` with no arguments calls :func:`main`."""

from __future__ import annotations

import os
import sys


def ensure_display() -> None:
    """Without a display (CI, ssh) Qt would abort; render offscreen instead."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def create_application(argv: list[str] | None = None):
    from PySide6.QtWidgets import QApplication

    from workbench.gui.settings import APPLICATION, ORGANIZATION

    app = QApplication.instance()
    if app is None:
        ensure_display()
        app = QApplication([sys.argv[0] if sys.argv else "workbench", *(argv or [])])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("Meta-Learning Workbench")
    app.setDesktopFileName("workbench")  # matches packaging/workbench.desktop, so Wayland shows the icon
    try:
        from workbench.gui.dialogs import app_icon

        app.setWindowIcon(app_icon())
    except ImportError:  # pragma: no cover
        pass
    return app


def main(argv: list[str] | None = None) -> int:
    """Open the main window and run the event loop; returns the exit code."""
    app = create_application(argv)
    from workbench.gui.main_window import MainWindow

    window = MainWindow()
    window.show()
    return int(app.exec())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

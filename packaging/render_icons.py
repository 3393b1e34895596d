"""Render resources/icon.svg to the PNG sizes the desktop entry and PyInstaller use.

Run from the repository root after editing the SVG:  python packaging/render_icons.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

RESOURCES = Path(__file__).resolve().parents[1] / "resources"
SIZES = (256, 64, 32)


def main() -> int:
    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (QPainter needs it)
    renderer = QSvgRenderer(str(RESOURCES / "icon.svg"))
    if not renderer.isValid():
        print(f"{RESOURCES / 'icon.svg'}: not a valid SVG", file=sys.stderr)
        return 1
    for size in SIZES:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        target = RESOURCES / f"icon-{size}.png"
        image.save(str(target))
        print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

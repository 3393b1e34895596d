"""Small widget helpers shared by the Evaluation tab's panels."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QLabel, QTableWidgetItem

from workbench.gui.qimage import to_pixmap

THUMB_SIZE = 56


def thumb(image: np.ndarray, colour: str, tip: str, size: int = THUMB_SIZE) -> QLabel:
    """An image in a coloured frame (query, support of the true class, of the predicted class)."""
    label = QLabel()
    label.setPixmap(to_pixmap(image, size))
    label.setStyleSheet(f"border: 2px solid {colour}; padding: 1px;")
    label.setToolTip(tip)
    label.setMinimumSize(label.sizeHint())  # many rows scroll instead of squashing the images
    return label


def heat(value: float, dark: bool) -> QColor:
    """White (dark grey in a dark theme) to blue for 0..1."""
    value = min(max(value, 0.0), 1.0)
    base = (30, 31, 34) if dark else (255, 255, 255)
    target = (31, 111, 209)
    return QColor(*[int(b + (t - b) * value) for b, t in zip(base, target)])


def table_item(text: str, tip: str = "", align_right: bool = False) -> QTableWidgetItem:
    """A read-only table cell."""
    item = QTableWidgetItem(text)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    if tip:
        item.setToolTip(tip)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    return item


def number_item(value: float | int) -> QTableWidgetItem:
    """A read-only cell that sorts as a number."""
    item = QTableWidgetItem()
    item.setData(Qt.ItemDataRole.DisplayRole, value)
    item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
    return item


def short(name: str, width: int = 18) -> str:
    """A long class name cut at the front (the end tells classes of one alphabet apart)."""
    return name if len(name) <= width else "…" + name[-(width - 1):]

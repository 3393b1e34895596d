"""A small drawing surface: dark strokes on white with the mouse, a pen or a tablet; pen width; clear."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QMouseEvent, QPainter, QPen, QTabletEvent
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

CANVAS_SIZE = 224


class SketchCanvas(QWidget):
    """The drawing itself, kept in a QImage at a fixed size so drawings do not depend on the window size."""

    changed = Signal()

    def __init__(self, size: int = CANVAS_SIZE, parent: QWidget | None = None):
        super().__init__(parent)
        self.pen_width = 12
        self._image = QImage(size, size, QImage.Format.Format_Grayscale8)
        self._image.fill(QColor("white"))
        self._last: QPointF | None = None
        self._strokes = 0
        self.setFixedSize(size, size)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setAttribute(Qt.WidgetAttribute.WA_StaticContents)
        self.setToolTip("Draw a character with the mouse or a pen")

    def sizeHint(self) -> QSize:
        return self._image.size()

    def is_empty(self) -> bool:
        return self._strokes == 0

    def clear(self) -> None:
        self._image.fill(QColor("white"))
        self._strokes = 0
        self.update()
        self.changed.emit()

    def image(self) -> QImage:
        return self._image.copy()

    def to_array(self) -> np.ndarray:
        """uint8 [H, W]: 0 is ink, 255 paper."""
        image = self._image.convertToFormat(QImage.Format.Format_Grayscale8)
        width, height, stride = image.width(), image.height(), image.bytesPerLine()
        data = np.frombuffer(image.constBits(), dtype=np.uint8, count=stride * height)
        return data.reshape(height, stride)[:, :width].copy()

    def save(self, path: str) -> bool:
        return self._image.save(path)

    # drawing
    def _stroke_to(self, point: QPointF, pressure: float = 1.0) -> None:
        painter = QPainter(self._image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        width = max(1.0, self.pen_width * (0.4 + 0.6 * pressure))
        painter.setPen(QPen(QColor("black"), width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
                            Qt.PenJoinStyle.RoundJoin))
        if self._last is None:
            painter.drawPoint(point)
        else:
            painter.drawLine(self._last, point)
        painter.end()
        self._last = point
        self.update()

    def _begin(self, point: QPointF, pressure: float = 1.0) -> None:
        self._last = None
        self._strokes += 1
        self._stroke_to(point, pressure)

    def _end(self) -> None:
        if self._last is not None:
            self._last = None
            self.changed.emit()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._begin(event.position())

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if event.buttons() & Qt.MouseButton.LeftButton and self._last is not None:
            self._stroke_to(event.position())

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if event.button() == Qt.MouseButton.LeftButton:
            self._end()

    def tabletEvent(self, event: QTabletEvent) -> None:
        kind = event.type()
        if kind == QTabletEvent.Type.TabletPress:
            self._begin(event.position(), event.pressure())
        elif kind == QTabletEvent.Type.TabletMove and self._last is not None:
            self._stroke_to(event.position(), event.pressure())
        elif kind == QTabletEvent.Type.TabletRelease:
            self._end()
        event.accept()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.drawImage(0, 0, self._image)
        painter.setPen(QPen(QColor("#999999"), 1))
        painter.drawRect(0, 0, self.width() - 1, self.height() - 1)
        painter.end()


class SketchPad(QWidget):
    """The canvas with a pen-width control and a Clear button."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.canvas = SketchCanvas()
        self.width_spin = QSpinBox()
        self.width_spin.setRange(2, 40)
        self.width_spin.setValue(self.canvas.pen_width)
        self.width_spin.setSuffix(" px")
        self.width_spin.setToolTip("Pen width")
        self.width_spin.valueChanged.connect(lambda value: setattr(self.canvas, "pen_width", value))
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.canvas.clear)
        controls = QHBoxLayout()
        controls.addWidget(QLabel("Pen"))
        controls.addWidget(self.width_spin)
        controls.addStretch(1)
        controls.addWidget(self.clear_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas, 0, Qt.AlignmentFlag.AlignHCenter)
        layout.addLayout(controls)

"""numpy images as Qt images: the one conversion every view uses."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap


def to_qimage(image: np.ndarray) -> QImage:
    """A uint8 image, [C, H, W] (C = 1 or 3), [H, W, C] or [H, W], as a QImage that owns its pixels."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (1, 3):
        array = np.transpose(array, (1, 2, 0))
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    array = np.ascontiguousarray(array.astype(np.uint8, copy=False))
    height, width = array.shape[:2]
    if array.ndim == 2:
        qimage = QImage(array.data, width, height, width, QImage.Format.Format_Grayscale8)
    else:
        array = np.ascontiguousarray(array[:, :, :3])
        qimage = QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return qimage.copy()  # detach from the numpy buffer


def to_pixmap(image: np.ndarray, size: int | None = None) -> QPixmap:
    """:func:`to_qimage` as a pixmap, scaled to fit ``size`` x ``size`` (smoothly, keeping the aspect) if given."""
    pixmap = QPixmap.fromImage(to_qimage(image))
    if size is None:
        return pixmap
    return pixmap.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)

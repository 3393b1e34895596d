"""The Evaluation tab; it lives in the package :mod:`workbench.gui.evaluation`. This module keeps the old import
path (``from workbench.gui.evaluation_view import EvaluationView``) and registers the view."""

from __future__ import annotations

import numpy as np
from PySide6.QtGui import QPixmap

from workbench.core.stats import paired_test
from workbench.gui.evaluation.confusion import gather_examples
from workbench.gui.evaluation.results import most_confused, verdict
from workbench.gui.evaluation.service import EvaluationService, evaluate_runs, matching_evaluation
from workbench.gui.evaluation.view import EvaluationView
from workbench.gui.evaluation.widgets import THUMB_SIZE
from workbench.gui.qimage import to_pixmap


def image_pixmap(image: np.ndarray, size: int = THUMB_SIZE) -> QPixmap:
    """Kept for callers of the old name; use :func:`workbench.gui.qimage.to_pixmap`."""
    return to_pixmap(image, size)


__all__ = ["EvaluationService", "EvaluationView", "evaluate_runs", "gather_examples", "image_pixmap",
           "matching_evaluation", "most_confused", "paired_test", "verdict"]

"""The Evaluation tab; it lives in the package :mod:`workbench.gui.evaluation`. This module keeps the old import
path (``from workbench.gui.evaluation_view import EvaluationView``) and registers the view."""

from __future__ import annotations

from workbench.core.stats import paired_test
from workbench.gui.evaluation.confusion import gather_examples
from workbench.gui.evaluation.results import most_confused, verdict
from workbench.gui.evaluation.service import EvaluationService, evaluate_runs, matching_evaluation
from workbench.gui.evaluation.view import EvaluationView


__all__ = ["EvaluationService", "EvaluationView", "evaluate_runs", "gather_examples",
           "matching_evaluation", "most_confused", "paired_test", "verdict"]

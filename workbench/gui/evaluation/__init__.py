"""The Evaluation tab, in parts: ``results`` (reading results of any kind, headless), ``service`` (the window's one
evaluation service), ``confusion`` and ``single_run`` (one result), ``comparison`` (paired tests on identical
tasks), ``shots_plot`` (score against shots) and ``view`` (the tab that assembles them)."""

from workbench.gui.evaluation.service import EvaluationService
from workbench.gui.evaluation.view import EvaluationView

__all__ = ["EvaluationService", "EvaluationView"]

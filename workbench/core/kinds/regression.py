"""Few-shot regression: the sine-wave toy of Finn et al. (2017, section 5.1)."""

from __future__ import annotations

from workbench.core.kinds import register
from workbench.core.kinds.base import MSE, ExperimentKind


@register
class FewShotRegression(ExperimentKind):
    name = "regression"
    title = "Few-shot regression"
    description = ("Each task is a function to fit from K points (the sine toy: amplitude in [0.1, 5], phase in "
                   "[0, pi], x in [-5, 5]). Meta-train on many tasks, then adapt to each test task's K support "
                   "points and predict its query points. Reported as mean squared error with a 95% confidence "
                   "interval over fixed test tasks, after 0, 1 and 10 gradient steps.")
    trains_on = "regression tasks"
    metric = MSE
    views = ("curves", "fit", "adaptation", "evaluation", "try_points")
    try_task = "points"
    try_task_help = "Click points on the canvas (or type them) to make a support set; watch the model adapt."
    dataset_fields = ("name", "shots", "queries")
    default_dataset = "sine"
    default_algorithm = "maml"

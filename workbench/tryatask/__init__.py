"""Try a task: the headless logic lives in workbench.core.tryatask (no Qt); this package adds the CLI."""

from workbench.core.tryatask import (Prediction, Task, TaskClass, TaskError, TaskImage, TaskResult, bundled_models,
                                     classify, resolve_model_source)

__all__ = ["Prediction", "Task", "TaskClass", "TaskError", "TaskImage", "TaskResult", "bundled_models", "classify",
           "resolve_model_source"]

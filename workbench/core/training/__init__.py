"""Meta-training: the :class:`Trainer` loop and its per-step :class:`StepRecord`."""

from workbench.core.training.trainer import FINAL_EVENTS, StepRecord, Trainer

__all__ = ["Trainer", "StepRecord", "FINAL_EVENTS"]

"""The progress protocol of long core work (loading, evaluating, projecting), kept free of torch so that light
processes (the t-SNE child of :mod:`workbench.core.probes`) can use it without importing torch."""

from __future__ import annotations

from typing import Callable

from workbench.core.errors import WorkbenchError

# progress(done, total, message); a callback may raise Cancelled to stop long work.
ProgressCallback = Callable[[int, int, str], None]


class Cancelled(WorkbenchError):
    """Long work (loading, downloading, evaluating) was cancelled by the user."""


def no_progress(done: int, total: int, message: str) -> None:
    return None

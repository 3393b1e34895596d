"""Run one slow core call (evaluation, loading) off the GUI thread, with progress, cancel and stale-result dropping.

Usage::

    task = BackgroundTask(parent, progress=lambda done, total, message: ..., finished=lambda result: ...,
                          failed=lambda message, details: ..., cancelled=lambda: ...)  # each optional
    task.start(evaluate_run, run_id)   # calls evaluate_run(progress_callback, run_id) in a QThread

``fn`` receives a progress callback ``(done, total, message)`` as its first argument; after ``cancel()`` that
callback raises :class:`workbench.core.data.Cancelled`, which the core's long loops let propagate.
Starting a new job supersedes the running one: the old one is cancelled and whatever it still reports is dropped.
"""

from __future__ import annotations

import threading
import time
import traceback
from typing import Any, Callable

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from workbench.core.data.base import Cancelled
from workbench.core.errors import WorkbenchError

# Progress updates closer together than this are coalesced so a fast loop cannot flood the event queue.
PROGRESS_INTERVAL_S = 0.05


def describe_exception(exc: BaseException) -> str:
    """A one-line message for a user: workbench errors already read well, others get their type name."""
    if isinstance(exc, WorkbenchError):
        return str(exc)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Job(QThread):
    """One call of ``fn`` in its own thread. Outcome is stored, then reported from the GUI thread."""

    reported = Signal(int, int, int, str)  # job id, done, total, message (emitted from the worker thread)

    def __init__(self, job_id: int, fn: Callable[..., Any], args: tuple, kwargs: dict, parent: QObject):
        super().__init__(parent)
        self.job_id = job_id
        self.setObjectName(f"BackgroundTask-job-{job_id}")
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.cancel_event = threading.Event()
        self.outcome = "pending"  # "finished" | "failed" | "cancelled"
        self.result: Any = None
        self.error: tuple[str, str] = ("", "")
        self._last_report = 0.0

    def progress_callback(self, done: int, total: int, message: str = "") -> None:
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by the user")
        now = time.monotonic()
        first, final = self._last_report == 0.0, total > 0 and done >= total
        if first or final or now - self._last_report >= PROGRESS_INTERVAL_S:
            self._last_report = now
            self.reported.emit(self.job_id, int(done), int(total), str(message))

    def run(self) -> None:  # runs in the worker thread
        try:
            self.result = self._fn(self.progress_callback, *self._args, **self._kwargs)
            self.outcome = "finished"
        except Cancelled:
            self.outcome = "cancelled"
        except BaseException as exc:  # report everything: an uncaught exception would only reach stderr
            self.outcome = "failed"
            self.error = (describe_exception(exc), traceback.format_exc())
        finally:
            self._fn = self._args = self._kwargs = None  # drop references to big inputs early


class BackgroundTask(QObject):
    """Runs at most one current job; results of superseded jobs are dropped."""

    progress = Signal(int, int, str)  # done, total, message
    finished = Signal(object)  # the function's return value
    failed = Signal(str, str)  # message for the user, traceback details
    cancelled = Signal()

    def __init__(self, parent: QObject | None = None, *, progress: Callable[[int, int, str], Any] | None = None,
                 finished: Callable[[Any], Any] | None = None, failed: Callable[[str, str], Any] | None = None,
                 cancelled: Callable[[], Any] | None = None):
        """The keyword arguments, when given, are connected to the signals of the same name."""
        super().__init__(parent)
        for signal, slot in ((self.progress, progress), (self.finished, finished), (self.failed, failed),
                             (self.cancelled, cancelled)):
            if slot is not None:
                signal.connect(slot)
        self._next_id = 0
        self._current: _Job | None = None
        self._jobs: dict[int, _Job] = {}  # every thread not yet joined, current or superseded
        app = QCoreApplication.instance()
        if app is not None:  # join the threads when the app quits, even if the owner never calls shutdown()
            app.aboutToQuit.connect(self.shutdown)

    # --- public API ---------------------------------------------------------------------------
    def start(self, fn: Callable[..., Any], *args, **kwargs) -> int:
        """Call ``fn(progress_callback, *args, **kwargs)`` in a new thread; returns the job id."""
        if self._current is not None:
            self._current.cancel_event.set()  # superseded: let it stop early; its outcome is ignored
        self._next_id += 1
        job = _Job(self._next_id, fn, args, kwargs, self)
        job.reported.connect(self._on_reported)
        job.finished.connect(self._on_thread_finished)  # a method of self: queued into the GUI thread
        self._jobs[job.job_id] = job
        self._current = job
        job.start()
        return job.job_id

    def cancel(self) -> None:
        """Ask the current job to stop at its next progress report; ``cancelled`` follows when it has."""
        if self._current is not None:
            self._current.cancel_event.set()

    @property
    def is_running(self) -> bool:
        return self._current is not None

    @property
    def current_job_id(self) -> int | None:
        return self._current.job_id if self._current is not None else None

    def wait(self, timeout_ms: int = -1) -> bool:
        """Block until every thread has ended (for shutdown and tests). Signals still arrive via the event loop."""
        deadline = None if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
        for job in list(self._jobs.values()):
            remaining = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not (job.wait() if remaining < 0 else job.wait(remaining)):
                return False
        return True

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel everything and join the threads; call before the owner goes away."""
        for job in self._jobs.values():
            job.cancel_event.set()
        self._current = None
        joined = self.wait(timeout_ms)
        for job in list(self._jobs.values()):
            if job.isFinished():
                self._forget(job)
        return joined

    # --- GUI-thread handlers ------------------------------------------------------------------
    @Slot(int, int, int, str)
    def _on_reported(self, job_id: int, done: int, total: int, message: str) -> None:
        current = self._current
        if current is not None and current.job_id == job_id and not current.cancel_event.is_set():
            self.progress.emit(done, total, message)

    @Slot()
    def _on_thread_finished(self) -> None:
        # QThread.finished is emitted just before the thread ends, so join (a moment at most) every job whose
        # run() has returned; its outcome was set before the signal.
        for job in [job for job in self._jobs.values() if job.outcome != "pending"]:
            job.wait()
            self._forget(job)
            if job is not self._current:
                continue  # superseded or shut down: drop its result
            self._current = None
            if job.outcome == "finished":
                self.finished.emit(job.result)
            elif job.outcome == "cancelled":
                self.cancelled.emit()
            else:
                self.failed.emit(*job.error)

    def _forget(self, job: _Job) -> None:
        if self._jobs.pop(job.job_id, None) is not None:
            job.deleteLater()

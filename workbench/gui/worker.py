"""Meta-training off the GUI thread.

A :class:`TrainingWorker` (a QObject moved to a QThread) builds the core's Trainer inside that thread (loading
a dataset can take seconds) and iterates ``Trainer.steps()``. It sends plain floats and numpy arrays, never
tensors, about 4 times a second (validations, warnings and the end at once): the step records in between are
batched into arrays, so no data is lost. Each batch wakes the GUI thread, whose Python work then holds the GIL
the training thread needs. Every signal carries the job id; :class:`TrainingController` drops whatever an old
job still sends.

Pause and stop go straight to the Trainer (thread-safe), so they act within one meta-step.

A job of several processes (``nproc`` > 1) launches them from the worker thread and follows rank 0's run folder
(:class:`~workbench.core.training.launched.LaunchedTraining`, which acts as the Trainer here); its stop is a request
rank 0 sees before its next step, and it has no pause.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QObject, QThread, Qt, Signal, Slot

from workbench.core.data.base import Cancelled
from workbench.core.errors import WorkbenchError

EMIT_INTERVAL_S = 0.25  # about 4 updates per second (the Training view redraws at most twice a second)
DEFAULT_METRIC = "accuracy"  # what records without a "metric" key hold (runs from before experiment kinds)
FINAL_EVENTS = ("finished", "stopped", "budget", "diverged")


def _num(value: Any) -> float:
    """A plain float (NaN for missing), whatever the record holds."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _record_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return dict(record)
    to_dict = getattr(record, "to_dict", None)
    if to_dict is not None:
        return dict(to_dict())
    return dict(vars(record))


def is_out_of_memory(exc: BaseException) -> bool:
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, MemoryError)) and ("out of memory" in text or isinstance(exc, MemoryError))


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(dialog title, message a user can act on)."""
    if is_out_of_memory(exc):
        return ("Out of memory", "Training ran out of device memory. The run was saved up to its last checkpoint. "
                "Lower the meta-batch, n-way, q-query or image size, or train on the CPU, then run again.")
    if isinstance(exc, WorkbenchError):
        return ("Training could not run", str(exc))
    text = str(exc)
    return ("Training failed", f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class RecordBatch:
    """Step records gathered between two emissions, turned into arrays when sent.

    Records name their score after the kind's metric (``"metric": "mse"`` with ``mse``/``val_mse``); records
    without ``metric`` (runs from before kinds, and classification's compact metrics.jsonl lines) mean accuracy.
    The payload keeps those names: ``payload["metric"]`` says which key holds the scores."""

    def __init__(self, metric: str = DEFAULT_METRIC):
        self.metric = metric
        self.clear()

    def clear(self) -> None:
        self.steps: list[float] = []
        self.loss: list[float] = []
        self.score: list[float] = []
        self.lr: list[float] = []
        self.extras: dict[str, list[float]] = {}
        self.val_steps: list[float] = []
        self.val_score: list[float] = []
        self.val_ci95: list[float] = []
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.steps) + len(self.val_steps) + len(self.events)

    def add(self, record: dict[str, Any]) -> None:
        event = record.get("event", "step")
        metric = self.metric = str(record.get("metric") or self.metric)
        if event == "step":
            count = len(self.steps)
            self.steps.append(_num(record.get("step")))
            self.loss.append(_num(record.get("loss")))
            self.score.append(_num(record.get(metric)))
            self.lr.append(_num(record.get("lr")))
            for name, value in (record.get("extras") or {}).items():
                column = self.extras.setdefault(name, [math.nan] * count)
                column.append(_num(value))
            for column in self.extras.values():  # keys missing from this record
                if len(column) < count + 1:
                    column.append(math.nan)
        elif event == "validation" or record.get(f"val_{metric}") is not None and event not in FINAL_EVENTS:
            self.val_steps.append(_num(record.get("step")))
            self.val_score.append(_num(record.get(f"val_{metric}")))
            self.val_ci95.append(_num(record.get("val_ci95")))
        if event != "step":
            self.events.append({k: v for k, v in record.items() if k != "extras"})
        self.last = record

    def payload(self) -> dict[str, Any]:
        last = self.last or {}
        metric = self.metric
        f64 = lambda values: np.asarray(values, dtype=np.float64)  # noqa: E731
        return {
            "metric": metric,
            "steps": f64(self.steps), "loss": f64(self.loss), metric: f64(self.score), "lr": f64(self.lr),
            "extras": {name: f64(values) for name, values in self.extras.items()},
            "val_steps": f64(self.val_steps), f"val_{metric}": f64(self.val_score), "val_ci95": f64(self.val_ci95),
            "events": list(self.events),
            "last": {
                "step": int(_num(last.get("step")) if last.get("step") is not None else 0),
                "total_steps": int(_num(last.get("total_steps")) if last.get("total_steps") is not None else 0),
                "elapsed_s": _num(last.get("elapsed_s")),
                "steps_per_s": _num(last.get("steps_per_s")),
                "eta_s": _num(last.get("eta_s")),
                f"best_val_{metric}": _num(last.get(f"best_val_{metric}")),
                "event": str(last.get("event", "step")),
                "message": str(last.get("message", "") or ""),
            },
        }


def default_trainer_factory(config, store_home: Path | None, progress, resume: str | None = None):
    from workbench.core.runs import RunStore
    from workbench.core.training.trainer import Trainer

    # The store is opened in the worker thread: SQLite connections belong to the thread that made them.
    return Trainer(config, RunStore(store_home), resume=resume, reserve_gui_core=True, progress=progress)


def launched_trainer_factory(nproc: int) -> Callable:
    """A factory of runs trained by ``nproc`` processes this thread launches and follows."""

    def factory(config, store_home: Path | None, progress, resume: str | None = None):
        from workbench.core.training.launched import LaunchedTraining

        return LaunchedTraining(config, store_home, nproc=nproc, resume=resume, progress=progress)

    return factory


class TrainingWorker(QObject):
    """Runs one training job. Lives in its own QThread; ``pause``/``resume``/``stop`` may be called from any thread."""

    started = Signal(int, object)  # job id, info dict (run_id, run_name, run_path, device, total_steps)
    loading = Signal(int, int, int, str)  # job id, done, total, message
    records = Signal(int, object)  # job id, payload dict of numpy arrays (see RecordBatch.payload)
    finished = Signal(int, object)  # job id, final info (event, message, run_id, step, metric, best_val_<metric>)
    failed = Signal(int, str, str, str)  # job id, title, message, traceback details

    def __init__(self, job_id: int, config, store_home: Path | None = None,
                 trainer_factory: Callable | None = None, emit_interval_s: float = EMIT_INTERVAL_S,
                 resume: str | None = None, nproc: int = 1):
        super().__init__()
        self.job_id = job_id
        self.config = config  # None when resuming a run with its saved config
        self.resume_run_id = resume
        self.store_home = store_home
        self.nproc = nproc
        if nproc > 1:
            self.trainer_factory = launched_trainer_factory(nproc)
        else:
            self.trainer_factory = trainer_factory or default_trainer_factory
        self.emit_interval_s = emit_interval_s
        self._lock = threading.Lock()
        self._trainer = None
        self._stop_requested = threading.Event()
        self._pause_requested = False
        self._last_loading_emit = 0.0
        self._batch = RecordBatch()
        self._batch_lock = threading.Lock()
        self.run_id: str | None = None

    # --- control, from the GUI thread -------------------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._pause_requested = True
            if self._trainer is not None:
                self._trainer.pause()
        # Records held back by the throttle would otherwise stay invisible for the whole pause.
        self._emit_batch()

    def resume(self) -> None:
        with self._lock:
            self._pause_requested = False
            if self._trainer is not None:
                self._trainer.resume()

    def stop(self) -> None:
        with self._lock:
            self._stop_requested.set()
            if self._trainer is not None:
                self._trainer.stop()

    # --- the job, in the worker thread ------------------------------------------------------
    def _progress(self, done: int, total: int, message: str) -> None:
        if self._stop_requested.is_set():
            raise Cancelled("training was stopped while the dataset was loading")
        now = time.monotonic()
        if now - self._last_loading_emit >= self.emit_interval_s or (total and done >= total):
            self._last_loading_emit = now
            self.loading.emit(self.job_id, int(done), int(total), str(message))

    @Slot()
    def run(self) -> None:
        trainer = None
        try:
            self.loading.emit(self.job_id, 0, 0, "Preparing the dataset and the model…")
            if self.resume_run_id:
                trainer = self.trainer_factory(self.config, self.store_home, self._progress,
                                               resume=self.resume_run_id)
            else:
                trainer = self.trainer_factory(self.config, self.store_home, self._progress)
            with self._lock:
                self._trainer = trainer
                if self._stop_requested.is_set():
                    trainer.stop()
                elif self._pause_requested:
                    trainer.pause()
            run = getattr(trainer, "run", None)
            self.run_id = getattr(run, "id", None)
            config = getattr(trainer, "config", None) or self.config
            name = ""
            try:
                name = run.record().name if run is not None else ""
            except Exception:  # the name only decorates the status bar
                name = getattr(config, "name", "") or ""
            self.started.emit(self.job_id, {
                "run_id": self.run_id,
                "run_name": name,
                "run_path": str(getattr(run, "path", "") or ""),
                "device": str(getattr(trainer, "device", "")),
                "total_steps": int(config.training.steps),
                "start_step": int(getattr(trainer, "step", 0) or 0),
                "algorithm": config.algorithm.name,
                "dataset": config.dataset.name,
                "kind": str(getattr(config, "kind", "") or ""),
                "processes": self.nproc,
                "message": str(getattr(trainer, "resume_message", "") or ""),
            })
            final = self._iterate(trainer)
            self.finished.emit(self.job_id, final)
        except Cancelled as exc:
            self.finished.emit(self.job_id, {"event": "cancelled", "message": str(exc), "run_id": self.run_id})
        except BaseException as exc:  # everything reaches the user as a dialog, never only stderr
            title, message = describe_failure(exc)
            self._mark_failed(trainer, message)
            self.failed.emit(self.job_id, title, message, traceback.format_exc())
        finally:
            with self._lock:
                self._trainer = None
            # Quit from this thread (not through the GUI thread's event loop, which may be blocked in wait()).
            thread = self.thread()
            if thread is not None:
                thread.quit()

    def _emit_batch(self) -> None:
        """Send the records gathered so far (from the worker thread, or from pause() in the GUI thread)."""
        with self._batch_lock:
            if not len(self._batch):
                return
            payload = self._batch.payload()
            self._batch.clear()
        # Emit outside the lock: a signal may wait on Qt's event queue, which must never wait on our lock.
        self.records.emit(self.job_id, payload)

    def _iterate(self, trainer) -> dict[str, Any]:
        last_emit = time.monotonic()
        final: dict[str, Any] = {"event": "stopped", "message": ""}
        steps = trainer.steps()
        try:
            for record in steps:
                data = _record_dict(record)
                with self._batch_lock:
                    self._batch.add(data)
                event = data.get("event", "step")
                now = time.monotonic()
                # A pending pause blocks the trainer before its next step: send now, not after the pause.
                if (event != "step" or now - last_emit >= self.emit_interval_s
                        or getattr(trainer, "is_paused", False)):
                    self._emit_batch()
                    last_emit = now
                if event in FINAL_EVENTS:
                    final = data
        finally:
            steps.close()  # after an exception above, closing lets the generator save the run
            self._emit_batch()  # records before a failure are still good data
        result = {k: v for k, v in final.items() if k != "extras"}
        result.setdefault("event", "stopped")
        result["run_id"] = self.run_id
        return result

    def _mark_failed(self, trainer, message: str) -> None:
        run = getattr(trainer, "run", None)
        if run is None:
            return
        try:
            if run.record().status in ("running", "created", "paused"):
                run.set_status("failed", message)
        except Exception:  # the store itself may be what failed; the dialog still tells the user
            pass


class TrainingController(QObject):
    """Starts jobs, forwards their signals to the GUI thread and drops those of stale jobs."""

    job_started = Signal(int, object)
    loading = Signal(int, int, int, str)
    records = Signal(int, object)
    job_finished = Signal(int, object)
    job_failed = Signal(int, str, str, str)
    state_changed = Signal(str)  # "idle", "loading", "running", "paused", "stopping"

    def __init__(self, parent: QObject | None = None, trainer_factory: Callable | None = None,
                 emit_interval_s: float = EMIT_INTERVAL_S):
        super().__init__(parent)
        self.trainer_factory = trainer_factory
        self.emit_interval_s = emit_interval_s
        self._next_job_id = 0
        self._job_id: int | None = None
        self._worker: TrainingWorker | None = None
        self._thread: QThread | None = None
        # Every job not yet joined: the worker object must outlive its thread.
        self._jobs: list[tuple[QThread, TrainingWorker]] = []
        self._state = "idle"
        self.last_run_id: str | None = None

    # --- state ------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def current_job_id(self) -> int | None:
        return self._job_id

    @property
    def is_running(self) -> bool:
        return self._job_id is not None

    @property
    def is_paused(self) -> bool:
        return self._state == "paused"

    @property
    def processes(self) -> int:
        """How many processes train the current job (1 when idle)."""
        return self._worker.nproc if self._worker is not None else 1

    @property
    def can_pause(self) -> bool:
        """A job of several processes cannot pause: they step together."""
        return self.processes == 1

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.state_changed.emit(state)

    # --- control ----------------------------------------------------------------------------
    def start(self, config, store_home: Path | None = None, resume: str | None = None, nproc: int = 1) -> int:
        """Start training ``config`` (or resume the run ``resume`` with its saved config), in ``nproc`` processes
        when above 1 (checked there before they start); returns the job id."""
        if self.is_running:
            raise RuntimeError("a training job is already running; stop it first")
        self._next_job_id += 1
        job_id = self._next_job_id
        worker = TrainingWorker(job_id, config, store_home, self.trainer_factory, self.emit_interval_s, resume,
                                nproc)
        thread = QThread()
        thread.setObjectName(f"training-job-{job_id}")
        worker.moveToThread(thread)
        thread.started.connect(worker.run)
        worker.started.connect(self._on_started, Qt.ConnectionType.QueuedConnection)
        worker.loading.connect(self._on_loading, Qt.ConnectionType.QueuedConnection)
        worker.records.connect(self._on_records, Qt.ConnectionType.QueuedConnection)
        worker.finished.connect(self._on_finished, Qt.ConnectionType.QueuedConnection)
        worker.failed.connect(self._on_failed, Qt.ConnectionType.QueuedConnection)
        thread.finished.connect(self._reap_threads, Qt.ConnectionType.QueuedConnection)
        self._job_id, self._worker, self._thread = job_id, worker, thread
        self._jobs.append((thread, worker))
        self._set_state("loading")
        thread.start()
        return job_id

    def pause(self) -> None:
        if self._worker is not None and self._state in ("running", "loading") and self.can_pause:
            self._worker.pause()
            self._set_state("paused")

    def resume(self) -> None:
        if self._worker is not None and self._state == "paused":
            self._worker.resume()
            self._set_state("running" if self._worker.run_id else "loading")

    def toggle_pause(self) -> None:
        if self._state == "paused":
            self.resume()
        else:
            self.pause()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._set_state("stopping")

    def wait(self, timeout_ms: int = 60_000) -> bool:
        """Join every job thread (signals already sent still arrive through the event loop)."""
        deadline = time.monotonic() + timeout_ms / 1000
        for thread, _ in list(self._jobs):
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            if not thread.wait(remaining):
                return False
        return True

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Stop the running job and join its thread; the Trainer saves the run as stopped."""
        if self._worker is not None:
            self._worker.stop()
        for thread, _ in list(self._jobs):
            thread.quit()  # safe from any thread; the worker also quits its thread when its job returns
        joined = self.wait(timeout_ms)
        if joined:
            self._forget_current()
            self._reap_threads()
            self._set_state("idle")
        return joined

    # --- worker signals (GUI thread) ----------------------------------------------------------
    def _is_current(self, job_id: int) -> bool:
        return self._job_id is not None and job_id == self._job_id

    @Slot(int, object)
    def _on_started(self, job_id: int, info: object) -> None:
        if not self._is_current(job_id):
            return
        self.last_run_id = info.get("run_id") if isinstance(info, dict) else None
        if self._state == "loading":
            self._set_state("running")
        self.job_started.emit(job_id, info)

    @Slot(int, int, int, str)
    def _on_loading(self, job_id: int, done: int, total: int, message: str) -> None:
        if self._is_current(job_id):
            self.loading.emit(job_id, done, total, message)

    @Slot(int, object)
    def _on_records(self, job_id: int, payload: object) -> None:
        if self._is_current(job_id):
            self.records.emit(job_id, payload)

    @Slot(int, object)
    def _on_finished(self, job_id: int, final: object) -> None:
        if not self._is_current(job_id):
            return
        self._forget_current()
        self._set_state("idle")
        self.job_finished.emit(job_id, final)

    @Slot(int, str, str, str)
    def _on_failed(self, job_id: int, title: str, message: str, details: str) -> None:
        if not self._is_current(job_id):
            return
        self._forget_current()
        self._set_state("idle")
        self.job_failed.emit(job_id, title, message, details)

    def _forget_current(self) -> None:
        self._job_id = None
        self._worker = None
        self._thread = None

    @Slot()
    def _reap_threads(self) -> None:
        for job in [job for job in self._jobs if job[0].isFinished()]:
            thread, worker = job
            thread.wait()
            self._jobs.remove(job)
            worker.deleteLater()
            thread.deleteLater()

    @property
    def has_threads(self) -> bool:
        """True while any job thread has not been joined (tests assert this ends False)."""
        return any(not thread.isFinished() for thread, _ in self._jobs)

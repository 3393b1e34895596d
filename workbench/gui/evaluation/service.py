"""The window's one evaluation service: evaluates runs on their kind's fixed test tasks off the GUI thread, one job
at a time, for every view that asks (the Evaluation tab, the Runs tab's Evaluate action).

A view submits requests (``{"run": id, "checkpoint": "best", "episodes": ..., "ways": ..., "shots": ...,
"queries": ..., "seed": ...}``, plus ``"dataset"`` / ``"data_root"`` to test on another dataset; settings left out
come from the run's config) and gets a job id back; the
signals carry the job id, so a view keeps the results of its own jobs and merely refreshes on the others'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QObject, Signal

from workbench.gui.background import BackgroundTask
from workbench.gui.evaluation.results import ResultData

# The evaluation settings a request may fix; a saved result is reused only when it matches each one given.
SETTING_KEYS = ("ways", "shots", "queries", "episodes", "seed")
# Which data to test on (absent: the run's own dataset).
DATA_KEYS = ("dataset", "data_root")


@dataclass(frozen=True)
class EvaluationJob:
    job_id: int
    run_ids: tuple[str, ...]
    label: str  # what the progress bars say: "Evaluating tiny"


def _tested_on(run, saved: dict[str, Any]) -> tuple[str, str]:
    """(dataset, location) of a saved result; the run's own dataset has location ''."""
    other = (saved.get("extras") or {}).get("evaluated_on") or {}
    return (other.get("dataset") or saved.get("dataset") or run.config.dataset.name, other.get("root") or "")


def _requested_data(run, request: dict[str, Any]) -> tuple[str, str]:
    from workbench.core.evaluation import evaluated_on

    own = run.config.dataset
    name, root = request.get("dataset") or own.name, request.get("data_root") or ""
    if name == own.name and root in ("", own.root):
        return own.name, ""
    return name, evaluated_on(run.config, name, root)["root"]


def matching_evaluation(run, request: dict[str, Any]):
    """A saved test evaluation of ``run`` at exactly the request's settings and data (hence the same tasks), or
    None."""
    wanted = {key: request[key] for key in SETTING_KEYS if request.get(key) is not None}
    used = "last" if request.get("checkpoint") == "last" or not run.has_checkpoint("best") else "best"
    data = _requested_data(run, request)
    for saved in reversed(run.evaluations()):
        if saved.get("split", "test") != "test" or any(saved.get(key) != value for key, value in wanted.items()):
            continue
        if _tested_on(run, saved) != data:
            continue
        if (saved.get("checkpoint") or "best") != used:
            continue
        result = run.load_evaluation(saved["file"])
        try:
            if len(ResultData.of(result).per_task()) == saved.get("episodes"):
                return result
        except ValueError:  # no per-task scores of the headline: evaluate again rather than compare blind
            continue
    return None


def _scaled(progress, index: int, count: int):
    """A progress callback for request ``index`` of ``count`` that reports over the whole."""
    def report(done: int, total: int, message: str = "") -> None:
        fraction = (index + (done / total if total else 0.0)) / count
        progress(int(1000 * fraction), 1000, message)
    return report


def _evaluate(run, store, request: dict[str, Any], device: str, progress):
    # Imported here: pulls in torch and the dataset modules only when someone evaluates.
    from workbench.core.evaluation import evaluate_run

    options = {key: request[key] for key in SETTING_KEYS + DATA_KEYS if request.get(key) is not None}
    return evaluate_run(run, store, checkpoint=request.get("checkpoint", "best"), device=device, progress=progress,
                        **options)


def evaluate_runs(progress, store, requests: list[dict[str, Any]], reuse: bool = False,
                  skip_impossible: bool = False, device: str = "auto") -> list:
    """Evaluate each request in turn (in a worker thread); with ``reuse`` a saved result at the same settings is
    taken instead. With ``skip_impossible`` a setting the test split cannot provide (e.g. too few images per
    class for that many shots) is left out instead of failing the job."""
    from workbench.core.errors import ConfigError, EpisodeError

    results = []
    for index, request in enumerate(requests):
        run = store.get(request["run"])
        found = matching_evaluation(run, request) if reuse else None
        if found is None:
            report = progress if len(requests) == 1 else _scaled(progress, index, len(requests))
            try:
                found = _evaluate(run, store, request, device, report)
            except (EpisodeError, ConfigError):
                if not skip_impossible:
                    raise
                continue
        results.append(found)
        if len(requests) > 1:
            progress(int(1000 * (index + 1) / len(requests)), 1000, f"evaluated {index + 1}/{len(requests)}")
    return results


class EvaluationService(QObject):
    """Runs at most one evaluation job; refuses another until it ends (each view says so to its user)."""

    started = Signal(int, str)  # job id, label
    progress = Signal(int, int, int, str)  # job id, done, total, message
    finished = Signal(int, object)  # job id, list of results (one per request; skipped ones left out)
    failed = Signal(int, str, str)  # job id, message for the user, traceback
    cancelled = Signal(int)  # job id
    busy_changed = Signal(bool)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._job: EvaluationJob | None = None
        self._task = BackgroundTask(self, progress=self._on_progress, finished=self._on_finished,
                                    failed=self._on_failed, cancelled=self._on_cancelled)

    @classmethod
    def for_window(cls, window) -> "EvaluationService":
        """The window's service, made on first use and kept as ``window.evaluation_service``."""
        service = getattr(window, "evaluation_service", None)
        if service is None:
            service = cls(window)
            window.evaluation_service = service
        return service

    # --- asking -------------------------------------------------------------------------------
    def submit(self, store, requests: list[dict[str, Any]], *, reuse: bool = False, skip_impossible: bool = False,
               device: str = "auto", label: str = "") -> int | None:
        """Start evaluating ``requests``; the job id, or None while another job runs."""
        if self._job is not None or not requests:
            return None
        requests = [dict(request) for request in requests]
        job_id = self._task.start(evaluate_runs, store, requests, reuse, skip_impossible, device)
        run_ids = tuple(request["run"] for request in requests)
        self._job = EvaluationJob(job_id, run_ids, label or f"Evaluating {len(run_ids)} run(s)")
        self.busy_changed.emit(True)
        self.started.emit(job_id, self._job.label)
        return job_id

    def cancel(self) -> None:
        """Stop the running job at its next progress report; ``cancelled`` follows."""
        self._task.cancel()

    @property
    def is_running(self) -> bool:
        return self._job is not None

    @property
    def current_job(self) -> EvaluationJob | None:
        return self._job

    def busy_run_ids(self) -> set[str]:
        """The runs the running job evaluates (they must not be deleted meanwhile)."""
        return set(self._job.run_ids) if self._job is not None else set()

    def wait(self, timeout_ms: int = -1) -> bool:
        return self._task.wait(timeout_ms)

    def shutdown(self, timeout_ms: int = 10_000) -> bool:
        """Cancel the job and join its thread; its outcome is dropped."""
        self._job = None
        return self._task.shutdown(timeout_ms)

    # --- the task's outcome (GUI thread) -----------------------------------------------------
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._job is not None:
            self.progress.emit(self._job.job_id, done, total, message)

    def _end(self) -> int | None:
        job, self._job = self._job, None
        return job.job_id if job is not None else None

    def _on_finished(self, results: list) -> None:
        job_id = self._end()
        if job_id is not None:
            self.finished.emit(job_id, results)
            self.busy_changed.emit(False)

    def _on_failed(self, message: str, details: str) -> None:
        job_id = self._end()
        if job_id is not None:
            self.failed.emit(job_id, message, details)
            self.busy_changed.emit(False)

    def _on_cancelled(self) -> None:
        job_id = self._end()
        if job_id is not None:
            self.cancelled.emit(job_id)
            self.busy_changed.emit(False)

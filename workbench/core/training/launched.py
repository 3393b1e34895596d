"""A run trained by several processes, driven from a thread of another process (the desktop app).

:class:`LaunchedTraining` looks to its caller like a :class:`~workbench.core.training.trainer.Trainer` (``run``,
``config``, ``device``, ``step``, ``steps()``, ``stop()``): it starts the ranks with :func:`distributed.launch`
in a thread of its own and follows rank 0's run folder, yielding the records rank 0 appends to metrics.jsonl.
A stop reaches rank 0 as a request file in the run folder (``STOP_REQUEST``); rank 0 tells the others at the next
step. There is no pause: the ranks step together.

Before the run folder exists, the ranks and their follower share a scratch folder: rank 0 announces its run there
(``started.json``), a stop while the ranks load is asked there, and a rank that fails leaves its error there.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any, Iterator

from workbench.core.errors import WorkbenchError
from workbench.core.fileio import atomic_write_text
from workbench.core.progress import Cancelled, ProgressCallback, no_progress
from workbench.core.runs import RunStore
from workbench.core.training.distributed import (DistributedContext, LeaderFailed, check_parallel, follow,
                                                 launch)
from workbench.core.training.trainer import FINAL_EVENTS, STOP_REQUEST, Trainer

ANNOUNCEMENT = "started.json"
LIVE_FLUSH_S = 0.25  # rank 0 appends its records this often, so a follower's curves keep up with the run
POLL_S = 0.1


class RemoteTraceback(Exception):
    """A failed rank's traceback, chained under the error the follower raises (shown in its details)."""


class LaunchedTraining:
    """Train ``config`` (or resume the run ``resume``) in ``nproc`` processes on this host and follow it.

    Building it checks the config for data-parallel training (:func:`check_parallel`), starts the ranks and waits
    until rank 0 has opened the run (loading data and building the model); then iterate :meth:`steps`.
    """

    is_paused = False  # the ranks step together: no pause

    def __init__(self, config: Any, store_home: Path | str | None = None, *, nproc: int, resume: str | None = None,
                 progress: ProgressCallback = no_progress, poll_s: float = POLL_S):
        self.store = RunStore(store_home)
        check_parallel(config if config is not None else self.store.get(resume).config, nproc, per_host=nproc)
        self.nproc, self.poll_s = nproc, poll_s
        self._scratch = Path(tempfile.mkdtemp(prefix="workbench-ranks-"))
        self._stop, self._ended = threading.Event(), threading.Event()
        self._outcome: list[Any] = []  # rank 0's exit code, or what the launch raised
        self._run_path: Path | None = None
        self._thread = threading.Thread(target=self._launch, args=(config, str(self.store.home), resume),
                                        name="workbench-ranks", daemon=True)
        self._thread.start()
        try:
            started = self._wait_for_start(progress)
        except BaseException:
            self._end_launch()
            raise
        self.run = self.store.get(started["run_id"])
        self._run_path = self.run.path
        if self._stop.is_set():  # asked while the ranks loaded
            self._ask_stop(self._run_path)
        self.config = self.run.config
        self.device = f"{started['device']} ({nproc} processes)"
        self.step = int(started["step"])
        self.resume_message = str(started.get("message") or "")
        self._offset = int(started["metrics_offset"])  # records before it are an earlier session's

    # --- control (any thread) ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask rank 0 to stop after its current step (or before its first); the run is saved as stopped."""
        self._stop.set()
        self._ask_stop(self._scratch)
        if self._run_path is not None:
            self._ask_stop(self._run_path)

    def pause(self) -> None:
        """Not available: the ranks step together (the caller greys its pause)."""

    def resume(self) -> None:
        pass

    @staticmethod
    def _ask_stop(folder: Path) -> None:
        try:
            (folder / STOP_REQUEST).touch()
        except OSError:  # the folder went away: the ranks are done
            pass

    # --- following ----------------------------------------------------------------------------------------
    def steps(self) -> Iterator[dict]:
        """Rank 0's records as it appends them (plain dicts, as in metrics.jsonl), the final one last; raises
        what made the ranks fail when they end without one."""
        final = None
        try:
            while final is None:
                ended = self._ended.is_set()  # read before the file: then nothing written before the end is missed
                for record in self._new_records():
                    yield record
                    if record.get("event") in FINAL_EVENTS:
                        final = record
                if final is None and ended:
                    raise self._failure()
                if final is None:
                    self._ended.wait(self.poll_s)
        finally:
            self._end_launch()

    def _new_records(self) -> list[dict]:
        """The complete lines appended since the last call."""
        try:
            with open(self.run.metrics_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:  # not a record (cannot happen with rank 0's writes; skipped like read_metrics)
                continue
        return records

    # --- the launch ---------------------------------------------------------------------------------------
    def _launch(self, config: Any, store_home: str, resume: str | None) -> None:
        try:
            self._outcome.append(launch(train_rank, (config, store_home, resume, str(self._scratch)),
                                        nproc=self.nproc))
        except BaseException as exc:  # reported by the follower
            self._outcome.append(exc)
        finally:
            self._ended.set()

    def _wait_for_start(self, progress: ProgressCallback) -> dict:
        message = f"Starting {self.nproc} training processes (each loads the dataset and builds the model)…"
        while True:
            started = _read_json(self._scratch / ANNOUNCEMENT)
            if started is not None:
                return started
            if self._ended.is_set():
                raise self._failure()
            try:
                progress(0, 0, message)
            except Cancelled:  # rank 0 stops while loading, or before its first step
                self.stop()
            self._ended.wait(self.poll_s)

    def _end_launch(self) -> None:
        """Stop the ranks if they still run, wait for them and tidy up (a late stop request included)."""
        if self._thread.is_alive():
            self.stop()
            self._thread.join()
        if self._run_path is not None:
            (self._run_path / STOP_REQUEST).unlink(missing_ok=True)
        shutil.rmtree(self._scratch, ignore_errors=True)

    def _failure(self) -> BaseException:
        """Why the ranks ended without a final record: a rank's error, a cancel, or the launcher's own."""
        for path in sorted(self._scratch.glob("error-*.json")):  # rank 0's first
            error = _read_json(path) or {}
            message = str(error.get("message") or "")
            if error.get("type") == "Cancelled":
                return Cancelled(message)
            if error.get("workbench"):
                return WorkbenchError(message)
            failure = RuntimeError(f"{error.get('type')} in training process {error.get('rank')}: {message}")
            failure.__cause__ = RemoteTraceback(str(error.get("traceback") or ""))
            return failure
        outcome = self._outcome[0] if self._outcome else None
        if isinstance(outcome, BaseException):
            return outcome
        return WorkbenchError(f"the {self.nproc} training processes ended (exit code {outcome}) before the run "
                              "finished; see their output in the terminal")


# --- in each rank -------------------------------------------------------------------------------------------
def train_rank(config: Any, store_home: str, resume: str | None, scratch: str) -> int:
    """One launched rank: rank 0 opens the run, announces it in ``scratch`` and trains; the others follow it.
    A rank's error is left in ``scratch`` for the follower, then raised (the launcher stops the others)."""
    context = DistributedContext.from_env()
    folder = Path(scratch)
    try:
        if not context.is_leader:
            return 0 if follow(lambda: Trainer(config, resume=resume, distributed=context).run_all()) else 130
        return _lead(config, RunStore(store_home), resume, folder, context)
    except LeaderFailed:
        raise
    except Exception as exc:
        _leave_error(folder, context.rank, exc)
        raise


def _lead(config: Any, store: RunStore, resume: str | None, folder: Path, context: DistributedContext) -> int:
    request = folder / STOP_REQUEST

    def cancel_on_request(done: int, total: int, message: str) -> None:
        if request.exists():
            raise Cancelled("training was stopped while the dataset was loading")

    trainer = Trainer(config, store, resume=resume, reserve_gui_core=True, progress=cancel_on_request,
                      distributed=context)
    trainer.flush_seconds = LIVE_FLUSH_S
    run = trainer.run
    offset = run.metrics_path.stat().st_size if run.metrics_path.exists() else 0
    atomic_write_text(folder / ANNOUNCEMENT, json.dumps({
        "run_id": run.id, "device": str(trainer.device), "step": trainer.step,
        "message": trainer.resume_message, "metrics_offset": offset}))
    if request.exists():
        trainer.stop()
    trainer.run_all()
    return 0


def _leave_error(folder: Path, rank: int, exc: BaseException) -> None:
    try:
        atomic_write_text(folder / f"error-{rank:04d}.json", json.dumps({
            "rank": rank, "type": type(exc).__name__, "message": str(exc),
            "workbench": isinstance(exc, WorkbenchError), "traceback": traceback.format_exc()}))
    except OSError:  # the follower went away with its folder
        pass


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None

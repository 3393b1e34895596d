"""The training loop as a generator: one small record per meta-step, pause/resume/stop between steps,
fixed-episode validation, best/last checkpoints, divergence detection, a wall-clock budget and
resuming a run from its last checkpoint.

The GUI drives :meth:`Trainer.steps` from a worker thread and calls :meth:`pause`,
:meth:`resume` and :meth:`stop` from its own thread; the CLI calls :meth:`run_all`.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from workbench.core import data
from workbench.core.algorithms import get_algorithm
from workbench.core.checkpoints import make_payload, payload_algorithm, restore_rng_state, rng_state
from workbench.core.config import ExperimentConfig
from workbench.core.data.base import Cancelled, ProgressCallback, no_progress, write_skipped
from workbench.core.device import configure_cpu_threads, tune_cpu_allocator
from workbench.core.errors import CheckpointError, ConfigError, WorkbenchError
from workbench.core.fileio import atomic_write_text
from workbench.core.kinds import get_kind
from workbench.core.precision import compute_in, resolve_precision
from workbench.core import snapshots
from workbench.core.runs import Run, RunStore
from workbench.core.training.distributed import DetachedRun, DistributedContext, check_parallel, trains_on_batches

# The trainer reads time through this name so tests can fake the wall clock.
clock = time.monotonic

FINAL_EVENTS = ("finished", "stopped", "budget", "diverged")
SKIPPED_FILE = "skipped_files.txt"  # in the run folder: the dataset's unreadable files and why
# Metrics are appended in batches: after this many records or this many seconds.
FLUSH_RECORDS = 200
FLUSH_SECONDS = 5.0
# A file in the run folder by which another process (a GUI following a multi-process run) asks it to stop.
STOP_REQUEST = "stop-requested"
# Settings a resumed run may change; anything else would make it a different experiment.
RESUMABLE_CHANGES = {"name", "dataset.root", "dataset.download", "training.steps", "training.max_minutes",
                     "training.device", "training.precision", "training.threads", "training.checkpoint_interval",
                     "training.val_interval"}
# In the run folder: the precision asked for, the one used (and why) and the hardware found, per session.
PRECISION_FILE = "precision.json"


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class StepRecord:
    """One training record. ``score`` fields hold the kind's metric (``metric``: "accuracy", "mse", ...); the
    JSON forms name them after it (``accuracy``/``val_accuracy`` for classification, ``mse``/``val_mse`` for
    regression), as metrics.jsonl always has."""

    step: int  # meta-steps completed (1-based)
    total_steps: int
    loss: float
    score: float
    lr: float
    elapsed_s: float  # training wall-clock time, pauses excluded, summed over resumed sessions
    steps_per_s: float
    eta_s: float | None
    event: str = "step"  # "step" | "validation" | "warning" | "finished" | "stopped" | "budget" | "diverged"
    val_score: float | None = None
    val_ci95: float | None = None
    best_val_score: float | None = None
    message: str = ""
    extras: dict[str, float] = field(default_factory=dict)
    metric: str = "accuracy"

    @property
    def is_final(self) -> bool:
        return self.event in FINAL_EVENTS

    # Classification's names, which every reader of the first version uses.
    @property
    def accuracy(self) -> float:
        return self.score

    @property
    def val_accuracy(self) -> float | None:
        return self.val_score

    @property
    def best_val_accuracy(self) -> float | None:
        return self.best_val_score

    def _named_fields(self) -> list[tuple[str, str]]:
        """(JSON key, attribute) of every float field."""
        metric = self.metric
        return [("loss", "loss"), (metric, "score"), ("lr", "lr"), ("elapsed_s", "elapsed_s"),
                ("steps_per_s", "steps_per_s"), ("eta_s", "eta_s"), (f"val_{metric}", "val_score"),
                ("val_ci95", "val_ci95"), (f"best_val_{metric}", "best_val_score")]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; NaN and infinities become None."""
        out: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps, "metric": self.metric}
        for key, attribute in self._named_fields():
            out[key] = _finite_or_none(getattr(self, attribute))
        out["event"] = self.event
        out["message"] = self.message
        out["extras"] = {k: _finite_or_none(v) for k, v in self.extras.items()}
        return out

    def compact(self) -> dict[str, Any]:
        """to_dict() without empty fields: one metrics.jsonl line. Built by hand: it runs every step."""
        out: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps, "event": self.event}
        if self.metric != "accuracy":
            out["metric"] = self.metric
        for key, attribute in self._named_fields():
            value = getattr(self, attribute)
            if value is not None and math.isfinite(value):
                out[key] = round(value, 3) if attribute in _ROUNDED_FIELDS else value
        if self.message:
            out["message"] = self.message
        if self.extras:
            out["extras"] = {k: _finite_or_none(v) for k, v in self.extras.items()}
        return out


_ROUNDED_FIELDS = {"elapsed_s", "steps_per_s", "eta_s"}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def preserved_rng(device: torch.device):
    """Run a block (validation) without disturbing the training random streams."""
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    mps_state = torch.mps.get_rng_state() if device.type == "mps" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        if mps_state is not None:
            torch.mps.set_rng_state(mps_state)


def _flatten(config_dict: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "hparams":
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def values_lag(device: torch.device, distributed: bool) -> int:
    """How many meta-steps the trainer may queue before reading a step's numbers: one on CUDA (see PendingStep), so
    the host never waits for the step it has just queued; none elsewhere, and none when several processes average
    the numbers on the host at every step anyway."""
    return 1 if device.type == "cuda" and not distributed else 0


class PendingStep:
    """A meta-step's numbers on their way to the host. On CUDA the 0-dim tensors an algorithm returns are copied to
    pinned memory without blocking, behind the step's work, and read once that copy is done: the trainer reads them
    after queueing the next step, so the GPU never idles while the host waits. Elsewhere they are read at once."""

    def __init__(self, step: int, started: float, out: dict[str, Any]):
        self.step, self.started, self._out = step, started, out
        self._keys = [key for key, value in out.items()
                      if isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type == "cuda"]
        self._event = None
        if self._keys:
            stacked = torch.stack([out[key].detach().float() for key in self._keys])
            self._host = torch.empty(len(self._keys), pin_memory=True)
            self._host.copy_(stacked, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def values(self) -> dict[str, Any]:
        """The step's numbers as Python floats (other values as they are); waits for this step only."""
        out = dict(self._out)
        if self._event is not None:
            self._event.synchronize()
            out.update(zip(self._keys, self._host.tolist()))
        return {key: float(value) if isinstance(value, torch.Tensor) and value.dim() == 0 else value
                for key, value in out.items()}


class DivergenceWatch:
    """Flags a loss that stays far above where training started: a blow-up that stays finite (2e10) slips past
    the NaN checks. The reference is the run's first loss, that of the initial weights (a blow-up can start at
    the second step, so later losses would hide it); a resumed run keeps its reference from the checkpoint.
    It takes most of a window of steps above the threshold, so single noisy episodes never trip it, and a loss
    that swings between huge and normal still does."""

    WINDOW = 50  # steps
    SHARE = 0.9  # of the window above factor x reference

    def __init__(self, factor: float, reference: float | None = None):
        self.factor = factor
        self.reference = reference
        self._above: deque[bool] = deque(maxlen=self.WINDOW)
        self._above_count = 0  # sum(self._above), kept as the window slides (this runs every step)
        self._flagged = False

    def observe(self, loss: float) -> bool:
        """True at the step where the share of recent steps above the threshold first reaches SHARE."""
        if self.factor <= 0:
            return False
        if self.reference is None:
            self.reference = max(loss, 1e-8)
            return False
        above = loss > self.factor * self.reference
        if len(self._above) == self.WINDOW:
            self._above_count -= self._above[0]
        self._above.append(above)
        self._above_count += above
        share = self._above_count / self.WINDOW
        if share < 0.5:
            self._flagged = False  # recovered: a later blow-up is reported again
        if self._flagged or share < self.SHARE:
            return False
        self._flagged = True
        return True

    def describe(self, loss: float) -> str:
        return (f"the loss (now {loss:.3g}) was above {self.factor:g} times its starting value "
                f"({self.reference:.3g}) in {self._above_count} of the last {self.WINDOW} steps")


class Trainer:
    """Meta-trains one run. Build it (loads data, builds the model, creates or reopens the run),
    then iterate :meth:`steps` or call :meth:`run_all`.

    The run's kind supplies the training tasks, the validation tasks and the metric; the algorithm takes its loss
    and head from the same kind. With ``resume=run_id`` the run's saved config is used; ``config`` may then be
    None, or carry changes listed in ``RESUMABLE_CHANGES`` (more steps, another device or time budget).

    With ``distributed`` (several processes, see :mod:`workbench.core.training.distributed`) each rank trains on
    its share of every meta-batch; rank 0 alone opens the run (``store``, ``resume``) and the others take its
    config and starting state, write nothing and stop when it does.
    """

    flush_seconds = FLUSH_SECONDS  # a process following the run from its metrics file may want it sooner

    def __init__(self, config: ExperimentConfig | None = None, store: RunStore | None = None, *,
                 resume: str | None = None, reserve_gui_core: bool = False,
                 progress: ProgressCallback = no_progress, distributed: DistributedContext | None = None):
        self.dist = distributed if distributed is not None else DistributedContext()
        self.dist.join()
        self.store: RunStore | None = None
        run: Run | None = None
        config_changed = False
        if self.dist.is_leader:
            with self.dist.leader_work():
                self.store = store if store is not None else RunStore()
                if resume is not None:
                    run = self.store.get(resume)
                    config, config_changed = self._resumed_config(run, config)
                elif config is None:
                    raise ValueError("Trainer needs a config (or resume=run_id)")
        config = self.dist.from_leader(config)
        self.config = config
        self.config_dict = config.to_dict()  # built once: every checkpoint stores it
        self._set_up_device(reserve_gui_core)
        seed_everything(config.training.seed)
        # Everything that can reject the config happens before a run folder exists.
        self._build_experiment(progress)
        self._reset_progress()
        self.run: Run | DetachedRun = DetachedRun()
        self.skipped_note = ""
        if self.dist.is_leader:
            with self.dist.leader_work():
                self._open_run(run, config_changed)
        self._reset_session()
        self._share_start()
        self.dist.average_gradients(self.algorithm.optimizers)
        # Applied when steps() starts, so torch work done in between (e.g. by a GUI) cannot shift the run.
        self._start_rng_state = torch.get_rng_state()

    # --- setup helpers ----------------------------------------------------------------------------
    def _open_run(self, run: Run | None, config_changed: bool) -> None:
        """The run folder: a resumed run's (restored from its last checkpoint) or a new one."""
        config = self.config
        if run is not None:
            self.run = run
            self._restore_from_checkpoint()
            if config_changed:
                run.save_config(config)
                self.store.update(run.id, steps_total=config.training.steps, device=config.training.device)
        else:
            self.run = self.store.create(config)
        self.skipped_note = self._write_skipped_files()
        self._write_precision()
        if self.algorithm.has("run_folder"):  # where an algorithm may mirror view data (weight history)
            self.algorithm.set_run_folder(self.run.path)

    def _share_start(self) -> None:
        """Several processes: every rank starts from rank 0's weights, optimizer and sampler states and step (a
        resumed run's checkpoint is on rank 0's disk)."""
        if not self.dist.active:
            return
        payload = self.dist.from_leader(self._payload() if self.dist.is_leader else None)
        if not self.dist.is_leader:
            self._restore_from_payload(payload)

    def _write_precision(self) -> None:
        """The precision asked for and used, why, and the hardware found (rewritten by each resumed session)."""
        record = {"device": str(self.device), **self.precision.to_dict()}
        atomic_write_text(self.run.path / PRECISION_FILE, json.dumps(record, indent=1))

    def _write_skipped_files(self) -> str:
        """The dataset's unreadable files, listed in the run folder (GUI and CLI runs alike); returns where."""
        skipped = list(getattr(self.dataset, "skipped_files", None) or [])
        if not skipped:
            return ""
        path = self.run.path / SKIPPED_FILE
        try:
            write_skipped(path, skipped)
        except OSError as exc:
            return f"the dataset description (could not write {path}: {exc.strerror or exc})"
        return str(path)

    def _set_up_device(self, reserve_gui_core: bool) -> None:
        training = self.config.training
        self.device = self.dist.device(training.device)
        if self.device.type == "cpu":
            self.threads = configure_cpu_threads(self.dist.cpu_threads(training.threads), reserve_gui_core)
            tune_cpu_allocator()
        else:
            self.threads = torch.get_num_threads()
        self.dist.bind(self.device)

    def _build_experiment(self, progress: ProgressCallback) -> None:
        """Data, tasks, model and optimizers, all from the config's kind and algorithm."""
        config, training = self.config, self.config.training
        check_parallel(config, self.dist.world_size)
        self.kind = get_kind(config.kind, config.task)
        self.metric = self.kind.metric
        self.dataset = data.load_dataset(config.dataset, progress)
        algorithm_cls = get_algorithm(config.algorithm.name)
        hparams = algorithm_cls.build_hparams(config.algorithm.hparams)
        self._trains_on_batches = trains_on_batches(config)
        if algorithm_cls.training_input_for(hparams) == "batches":
            self.sampler = self.kind.batch_sampler(self.dataset, config, int(getattr(hparams, "batch_size", 64)))
        else:
            self.sampler = self.kind.train_sampler(self.dataset, config)
        self.validation_note = ""
        self.val_episodes = self._make_validation_tasks()
        self.model_spec = self.kind.model_spec(self.dataset, config)
        self.algorithm = algorithm_cls(hparams, self.model_spec, self.device)
        self.precision = resolve_precision(training.precision, self.device, algorithm_cls.auto_reduced_precision)
        self._values_lag = values_lag(self.device, self.dist.active)
        if self.algorithm.has("training_data"):  # algorithms that build their own problem (Meta-Weight-Net)
            self.algorithm.attach_training_data(self.dataset, config)
        self.algorithm.configure_optimizers(training.lr, training.steps, training.lr_schedule)

    def _reset_progress(self) -> None:
        self.step = 0
        self.best_val_score: float | None = None
        self.best_val_ci95: float | None = None
        self.best_step: int | None = None
        self.last_validation: Any = None
        self.last_checkpoint_step: int | None = None
        self._elapsed_before = 0.0  # training time of earlier sessions of a resumed run
        self.resume_message = ""
        self.divergence = DivergenceWatch(self.config.training.divergence_factor)
        self.warnings: list[str] = []

    def _reset_session(self) -> None:
        self._run_event = threading.Event()
        self._run_event.set()
        self._stop_event = threading.Event()
        self._paused_flag = threading.Event()
        self._pending: list[StepRecord] = []
        self._last_flush = 0.0
        self._started = False
        self._finalized = False
        self._last_val_step: int | None = None
        self._session_start = 0.0
        self._session_first_step = 0
        self._paused_total = 0.0
        self._last_loss = float("nan")
        self._last_score = float("nan")
        self._last_record_at = 0.0
        self._steps_per_s = 0.0
        self._snapshot_recorders: list | None = None
        self.final_record: StepRecord | None = None

    @property
    def best_val_accuracy(self) -> float | None:
        """The best validation score (classification's name for it)."""
        return self.best_val_score

    def _resumed_config(self, run: Run, config: ExperimentConfig | None) -> tuple[ExperimentConfig, bool]:
        """The config to resume with, and whether it differs from the saved one (allowed changes only)."""
        saved = run.config
        if config is None:
            return saved, False
        old, new = _flatten(saved.to_dict()), _flatten(config.to_dict())
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key) and key not in RESUMABLE_CHANGES:
                raise ConfigError(key, f"cannot change when resuming run {run.id} (it was {old.get(key)!r}, now "
                                  f"{new.get(key)!r}); start a new run for a different experiment")
        return config, old != new

    def _make_validation_tasks(self):
        config = self.config
        if not self.kind.has_validation(self.dataset):
            self.validation_note = ("the dataset has no meta-validation classes, so no validation runs; the "
                                    "best checkpoint is the last one")
            return None
        return self.kind.fixed_tasks(self.dataset, config, "val", config.training.val_episodes,
                                     config.evaluation.seed)

    def _restore_from_checkpoint(self) -> None:
        run = self.run
        total = self.config.training.steps
        if run.has_checkpoint("last"):
            payload = run.load_checkpoint("last")
            made_by = payload_algorithm(payload)
            if made_by != self.algorithm.name:
                raise CheckpointError(f"run {run.id}: its last checkpoint was made by '{made_by}', "
                                      f"not '{self.algorithm.name}'")
            try:
                self._restore_from_payload(payload)
            except (RuntimeError, KeyError, ValueError) as exc:
                raise CheckpointError(f"run {run.id}: the last checkpoint does not fit the model: "
                                      f"{' '.join(str(exc).split())[:300]}") from None
            self.resume_message = (f"resumed run {run.id} at step {self.step} of {total}" if total else
                                   f"resumed run {run.id} at step {self.step}, to train until its time budget")
        else:
            self.resume_message = f"run {run.id} saved no checkpoint; restarting it from step 0"
        dropped = run.truncate_metrics(self.step)
        if dropped:
            self.resume_message += f" ({dropped} metric records after step {self.step} were dropped)"
        if total and self.step >= total:
            raise WorkbenchError(f"run {run.id} already trained all {total} steps; raise training.steps "
                                 f"(--steps) above {total} to train it longer")

    def _restore_from_payload(self, payload: dict) -> None:
        """Weights, optimizer, random streams and progress from a checkpoint payload."""
        self.algorithm.load_state_dict(payload["state"])
        self.algorithm.load_optimizer_state(payload.get("optimizer") or {})
        restore_rng_state(payload.get("rng") or {}, self.sampler.generator)
        self.step = int(payload["step"])
        self.best_val_score = payload.get("best_val_score", payload.get("best_val_accuracy"))
        self.best_val_ci95 = payload.get("best_val_ci95")
        self.best_step = payload.get("best_step")
        self._elapsed_before = float(payload.get("elapsed_s", 0.0))
        self.divergence.reference = payload.get("start_loss")
        self.last_checkpoint_step = self.step

    # --- control (thread-safe) --------------------------------------------------------------------
    def pause(self) -> None:
        """Block steps() before its next meta-step until resume() or stop()."""
        self._run_event.clear()

    def resume(self) -> None:
        self._run_event.set()

    def stop(self) -> None:
        """Finish after the current meta-step (or abort a running validation) and save as 'stopped'."""
        self._stop_event.set()
        self._run_event.set()

    @property
    def is_paused(self) -> bool:
        return not self._run_event.is_set()

    @property
    def is_stopping(self) -> bool:
        return self._stop_event.is_set()

    def wait_until_paused(self, timeout: float | None = None) -> bool:
        """True once steps() is actually blocked in a pause (not just asked to pause)."""
        return self._paused_flag.wait(timeout)

    # --- the loop ---------------------------------------------------------------------------------
    def _active_elapsed(self) -> float:
        return clock() - self._session_start - self._paused_total

    def _current_lr(self) -> float:
        optimizers = self.algorithm.optimizers
        return float(optimizers[0].param_groups[0]["lr"]) if optimizers else self.config.training.lr

    def _next_batch(self):
        if self._trains_on_batches:
            return self.sampler.sample().to(self.device)
        # Every rank draws the whole meta-batch (one seeded stream) and trains on its share of it.
        tasks = [self.sampler.sample() for _ in range(self.config.training.meta_batch)]
        return [task.to(self.device) for task in self.dist.share_of(tasks)]

    def run_all(self, callback: Callable[[StepRecord], None] | None = None) -> StepRecord:
        """Train to the end; ``callback`` sees every record. Returns the final record."""
        final = None
        for record in self.steps():
            if callback is not None:
                callback(record)
            final = record
        assert final is not None
        return final

    def steps(self) -> Iterator[StepRecord]:
        """The training loop. Each yield is a pause and cancel point; the last record has a final event."""
        if self._started:
            raise RuntimeError("Trainer.steps() can only run once; make a new Trainer (resume=run_id) to continue")
        self._begin_session()
        try:
            final_event, message = yield from self._loop()
            yield from self._finish(final_event, message)
        except GeneratorExit:
            # The consumer closed the loop early: save what we have.
            if not self._finalized:
                self._finalize("stopped", f"stopped after {self.step} steps")
            raise
        except KeyboardInterrupt:
            if not self._finalized:
                self._finalize("stopped", f"interrupted after {self.step} steps")
            raise
        except BaseException as exc:
            if not self._finalized:
                self._flush_metrics()
                self._finalized = True
                self.run.set_status("failed", f"{type(exc).__name__}: {exc}", steps_done=self.step)
                self.run.release()
            raise

    def _begin_session(self) -> None:
        self._started = True
        self._session_start = self._last_flush = clock()
        self._session_first_step = self.step
        torch.set_rng_state(self._start_rng_state)
        self.run.claim()
        self.run.set_status("running", self.resume_message, device=str(self.device),
                            steps_total=self.config.training.steps, steps_done=self.step)
        self.algorithm.train()
        if self.step == 0:
            # A first good checkpoint: a run that diverges or crashes early still has one.
            self._save_checkpoint("last")

    def _reason_to_stop(self) -> tuple[str, str] | None:
        """Checked before each meta-step: a stop request or a spent time budget."""
        training = self.config.training
        if self._stop_requested():
            return "stopped", f"stopped by the user after {self.step} steps"
        if training.max_minutes and self._active_elapsed() >= training.max_minutes * 60.0:
            return "budget", f"time budget of {training.max_minutes:g} min spent after {self.step} steps"
        return None

    def _stop_requested(self) -> bool:
        """stop() was called, or another process left a stop request in the run folder (taken here)."""
        if not self._stop_event.is_set() and self.run.path is not None:
            request = self.run.path / STOP_REQUEST
            if request.exists():
                request.unlink(missing_ok=True)
                self._stop_event.set()
        return self._stop_event.is_set()

    @property
    def planned_steps(self) -> int:
        """Steps planned: the config's, or, when training runs until its time budget (steps 0), an estimate
        from the pace so far (for progress bars and records)."""
        training = self.config.training
        if training.steps:
            return training.steps
        remaining = max(0.0, training.max_minutes * 60.0 - self._active_elapsed()) if self._started else 0.0
        return self.step + int(round(self._steps_per_s * remaining))

    def _update_schedule_clock(self) -> None:
        """Under a time budget the learning-rate schedule follows time (see ScheduleClock)."""
        budget = self.config.training.max_minutes * 60.0
        if budget:
            spent = self._elapsed_before + self._active_elapsed()
            self.algorithm.schedule_clock.time_fraction = min(1.0, spent / (self._elapsed_before + budget))

    def _loop(self) -> Iterator[StepRecord]:
        """Meta-steps until the end, a stop or a budget; returns (final event, message)."""
        training = self.config.training
        unbounded = training.steps == 0
        pending: deque[PendingStep] = deque()  # steps queued whose numbers are not read yet (CUDA)
        while unbounded or self.step < training.steps:
            if not self._run_event.is_set():
                ended = yield from self._settle(pending)  # every record out before the pause
                if ended is not None:
                    return ended
                self._wait_while_paused()
            reason = self._before_step()
            if reason is not None:
                return (yield from self._settle(pending)) or reason
            pending.append(self._meta_step())
            validate = bool(training.val_interval) and self.step % training.val_interval == 0
            checkpoint = self.step % training.checkpoint_interval == 0 and (unbounded or self.step < training.steps)
            at_end = not unbounded and self.step >= training.steps
            # Before a validation, a checkpoint or the end, every loss is checked; otherwise the last may wait.
            ended = yield from self._settle(pending, 0 if validate or checkpoint or at_end else self._values_lag)
            if ended is not None:
                return ended
            if validate:
                validation = self._validate()
                if validation is not None:
                    yield validation
            if checkpoint:
                # Metrics first: after a crash they then cover every step up to the checkpoint.
                self._flush_metrics()
                if not self._save_checkpoint("last"):
                    return "diverged", self._diverged_message(self.step, "the weights became NaN or infinite")
                self.run.update(steps_done=self.step)
        return "finished", ""

    def _meta_step(self) -> PendingStep:
        """One meta-step, its backbones in the run's precision."""
        started = clock()
        with self.dist.meta_step(), compute_in(self.precision.dtype):
            out = self.algorithm.meta_train_step(self._next_batch())
        if self.dist.active:
            out = self._agree_after_step(out)
        self.step += 1
        return PendingStep(self.step, started, out)

    def _settle(self, pending: deque[PendingStep], keep: int = 0):
        """Read the numbers of queued steps (all but the last ``keep``) and yield their records; returns (final
        event, message) when a loss turned NaN or infinite or training diverged, else None."""
        training = self.config.training
        while len(pending) > keep:
            item = pending.popleft()
            out = item.values()
            loss = float(out["loss"])
            if not math.isfinite(loss):
                self.step = item.step - 1  # the last step whose loss was finite
                return "diverged", self._diverged_message(item.step, f"the loss became {loss}")
            yield self._step_record(out, loss, item)
            if self.divergence.observe(loss):
                what = self.divergence.describe(loss)
                if training.on_divergence == "stop":
                    return "diverged", self._diverged_message(item.step, what)
                yield self._warning_record(f"warning: training may be diverging at step {item.step}: {what}; "
                                           f"training goes on (training.on_divergence = \"warn\")")
        return None

    def _before_step(self) -> tuple[str, str] | None:
        """A reason to stop before the next meta-step (and the schedule clock); several processes follow rank
        0's, which alone sees stop requests and measures the time budget."""
        reason = self._reason_to_stop()
        self._update_schedule_clock()
        if self.dist.active:
            clock_ = self.algorithm.schedule_clock
            reason, clock_.time_fraction = self.dist.from_leader((reason, clock_.time_fraction))
        return reason

    def _agree_after_step(self, out: dict[str, float]) -> dict[str, float]:
        """The ranks keep one model: rank 0's buffers, a check that the weights agree (first step of a session and
        each checkpoint), and the whole meta-batch's loss and metric for every rank's records and decisions."""
        step = self.step + 1
        modules = list(self.algorithm.modules().values())
        self.dist.share_buffers(modules)
        if step == self._session_first_step + 1 or step % self.config.training.checkpoint_interval == 0:
            self.dist.check_in_step(modules, step, self.algorithm.name)
        return self.dist.mean_of(out)

    def _step_record(self, out: dict[str, Any], loss: float, item: PendingStep) -> StepRecord:
        training = self.config.training
        now = clock()
        # From the step's start, or, when steps overlap (numbers read a step late), from the previous record.
        duration = max(now - max(item.started, self._last_record_at), 1e-9)
        self._last_record_at = now
        # Smoothed rate: steady for the ETA, yet follows a change of pace.
        rate = self._steps_per_s
        self._steps_per_s = rate = 1.0 / duration if rate == 0.0 else 0.9 * rate + 0.1 / duration
        active = now - self._session_start - self._paused_total
        eta = (training.steps - item.step) / rate if training.steps else float("inf")
        if training.max_minutes:
            eta = min(eta, max(0.0, training.max_minutes * 60.0 - active))
        metric = self.metric.key
        score = float(out.get(metric, out.get("score", float("nan"))))
        self._last_loss, self._last_score = loss, score
        extras = {k: float(v) for k, v in out.items()
                  if k not in ("loss", metric, "score") and isinstance(v, (int, float))} if len(out) > 2 else {}
        record = StepRecord(item.step, self.planned_steps, loss, score, self._current_lr(),
                            self._elapsed_before + active, rate, eta, "step", best_val_score=self.best_val_score,
                            extras=extras, metric=metric)
        self._pending.append(record)
        if len(self._pending) >= FLUSH_RECORDS or now - self._last_flush >= self.flush_seconds:
            self._flush_metrics()
        return record

    def _warning_record(self, message: str) -> StepRecord:
        """A record that tells the user something without stopping; kept in metrics.jsonl."""
        self.warnings.append(message)
        record = StepRecord(self.step, self.planned_steps, self._last_loss, self._last_score, self._current_lr(),
                            self._elapsed_before + self._active_elapsed(), self._steps_per_s, None, "warning",
                            best_val_score=self.best_val_score, message=message, metric=self.metric.key)
        self._pending.append(record)
        return record

    def _finish(self, event: str, message: str) -> Iterator[StepRecord]:
        if event in ("finished", "budget") and self._last_val_step != self.step and not self._stop_event.is_set():
            validation = self._validate()
            if validation is not None:
                yield validation
        planned = self.config.training.steps
        if event in ("finished", "budget") and self._stop_event.is_set() and (not planned or self.step < planned):
            event, message = "stopped", f"stopped by the user after {self.step} steps"
        record = self._finalize(event, message)
        yield record

    def _best_fields(self) -> dict[str, float | None]:
        """The run-index columns of the best validation score."""
        return {f"best_val_{self.metric.column}": self.best_val_score, "best_val_ci95": self.best_val_ci95}

    def _finalize(self, event: str, message: str) -> StepRecord:
        """Save the checkpoint and status, then build the final record (saved before it is yielded)."""
        if event != "diverged" and not self._save_checkpoint("last"):
            event, message = "diverged", self._diverged_message(self.step, "the weights became NaN or infinite")
        if event != "diverged" and self.val_episodes is None:
            self._save_checkpoint("best")
        status = {"finished": "finished", "budget": "finished", "stopped": "stopped", "diverged": "diverged"}[event]
        if event == "finished":
            message = message or f"finished {self.step} steps"
        active = self._active_elapsed()
        steps_done = self.step
        last = self.last_validation
        record = StepRecord(steps_done, max(steps_done, self.config.training.steps), self._last_loss, self._last_score,
                            self._current_lr(), self._elapsed_before + active,
                            ((steps_done - self._session_first_step) / active) if active > 0 else 0.0, 0.0, event,
                            val_score=last.value if last is not None else None,
                            val_ci95=last.ci95 if last is not None else None,
                            best_val_score=self.best_val_score, message=message, metric=self.metric.key)
        self._pending.append(record)
        self._flush_metrics()
        self.run.set_status(status, message, steps_done=steps_done, **self._best_fields())
        self.final_record = record
        self._finalized = True
        self.run.release()
        return record

    def _diverged_message(self, step: int, what: str) -> str:
        kept = (f"the last good checkpoint (step {self.last_checkpoint_step}) was kept"
                if self.last_checkpoint_step is not None else "no checkpoint was saved")
        if self.best_step is not None and self.best_step != self.last_checkpoint_step:
            kept += f", as was the best one (step {self.best_step})"
        return (f"training diverged at step {step}: {what}; {kept}. Lower training.lr (now "
                f"{self.config.training.lr:g}) and train again")

    def _wait_while_paused(self) -> None:
        self._flush_metrics()
        self.run.set_status("paused", f"paused after {self.step} steps", steps_done=self.step)
        started = clock()
        self._paused_flag.set()
        try:
            self._run_event.wait()
        finally:
            self._paused_flag.clear()
            self._paused_total += clock() - started
        if not self._stop_event.is_set():
            self.run.set_status("running", "", steps_done=self.step)

    def _record_view_snapshots(self) -> None:
        """History for the views of training that its kind lists (embeddings, fit, ...); never stops training."""
        if self._snapshot_recorders is None:
            self._snapshot_recorders = snapshots.recorders_for(self.kind.views, self.dataset, self.config,
                                                               self.run.path)
        for recorder in self._snapshot_recorders:
            recorder.record(self.algorithm, self.step)

    def _validate(self) -> StepRecord | None:
        if self.val_episodes is None or not self.dist.is_leader:  # rank 0 validates while the others wait
            return None

        def cancel_on_stop(done: int, total: int, message: str) -> None:
            if self._stop_requested():
                raise Cancelled("validation cancelled")

        try:
            with preserved_rng(self.device), compute_in(self.precision.dtype):
                torch.manual_seed(self.config.training.seed + 1)  # stochastic adaptation: same every time
                result = self.kind.evaluate(self.algorithm, self.val_episodes, self.device, cancel_on_stop,
                                            split="val")
                self._record_view_snapshots()
        except Cancelled:
            return None
        finally:
            self.algorithm.train()
        self.last_validation = result
        self._last_val_step = self.step
        improved = self._keep_if_best(result)
        text = f"validation at step {self.step}: {self.metric.format(result.value, result.ci95)}"
        if improved:
            text += " (new best)"
        record = StepRecord(self.step, self.planned_steps, self._last_loss, self._last_score,
                            self._current_lr(), self._elapsed_before + self._active_elapsed(), self._steps_per_s,
                            None, "validation", val_score=result.value, val_ci95=result.ci95,
                            best_val_score=self.best_val_score, message=text, metric=self.metric.key)
        self._pending.append(record)
        self._flush_metrics()
        self.run.update(steps_done=self.step, **self._best_fields())
        return record

    def _keep_if_best(self, result) -> bool:
        """Save the best checkpoint when the validation improved on the best so far."""
        if not self.metric.better(result.value, self.best_val_score):
            return False
        previous = (self.best_val_score, self.best_val_ci95, self.best_step)
        self.best_val_score, self.best_val_ci95, self.best_step = result.value, result.ci95, self.step
        if not self._save_checkpoint("best"):
            self.best_val_score, self.best_val_ci95, self.best_step = previous
            return False
        return True

    def _weights_finite(self) -> bool:
        for module in self.algorithm.modules().values():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return False
        return True

    def _payload(self) -> dict[str, Any]:
        elapsed = self._elapsed_before + (self._active_elapsed() if self._started else 0.0)
        return make_payload(self.algorithm, self.config, self.dataset.spec, step=self.step,
                            best_val_accuracy=self.best_val_score, rng=rng_state(self.sampler.generator),
                            extra={"best_val_ci95": self.best_val_ci95, "best_step": self.best_step,
                                   "elapsed_s": float(elapsed), "metric": self.metric.key,
                                   "start_loss": self.divergence.reference,
                                   "precision": self.precision.to_dict()},
                            config_dict=self.config_dict)

    def _save_checkpoint(self, kind: str) -> bool:
        """Write a checkpoint unless the weights are NaN/inf (then keep the old one and return False). Every rank
        checks the weights (they agree); rank 0 writes."""
        if not self._weights_finite():
            return False
        if self.dist.is_leader:
            self.run.save_checkpoint(self._payload(), kind)
        if kind == "last":
            self.last_checkpoint_step = self.step
        return True

    def _flush_metrics(self) -> None:
        if self._pending:
            self.run.append_metrics([record.compact() for record in self._pending])
            self._pending.clear()
        self._last_flush = clock()

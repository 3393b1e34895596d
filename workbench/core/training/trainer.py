"""The training loop as a generator: one small record per meta-step, pause/resume/stop between steps,
fixed-episode validation, best/last checkpoints, divergence detection, a wall-clock budget and
resuming a run from its last checkpoint.

The GUI drives :meth:`Trainer.steps` from a worker thread and calls :meth:`pause`,
:meth:`resume` and :meth:`stop` from its own thread; the CLI calls :meth:`run_all`.
"""

from __future__ import annotations

import math
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from workbench.core import data
from workbench.core.algorithms import get_algorithm
from workbench.core.algorithms.base import LabeledBatch, ModelSpec
from workbench.core.checkpoints import make_payload, restore_rng_state, rng_state
from workbench.core.config import ExperimentConfig
from workbench.core.data.base import Cancelled, ClassSplit, PreprocessSpec, ProgressCallback, no_progress
from workbench.core.device import configure_cpu_threads, resolve_device, tune_cpu_allocator
from workbench.core.errors import CheckpointError, ConfigError, DatasetError, WorkbenchError
from workbench.core.evaluation import EvalResult, evaluate
from workbench.core.runs import Run, RunStore

# The trainer reads time through this name so tests can fake the wall clock.
clock = time.monotonic

FINAL_EVENTS = ("finished", "stopped", "budget", "diverged")
# Metrics are appended in batches: after this many records or this many seconds.
FLUSH_RECORDS = 200
FLUSH_SECONDS = 5.0
# Settings a resumed run may change; anything else would make it a different experiment.
RESUMABLE_CHANGES = {"name", "dataset.root", "dataset.download", "training.steps", "training.max_minutes",
                     "training.device", "training.threads", "training.checkpoint_interval",
                     "training.val_interval"}


def _finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class StepRecord:
    step: int  # meta-steps completed (1-based)
    total_steps: int
    loss: float
    accuracy: float
    lr: float
    elapsed_s: float  # training wall-clock time, pauses excluded, summed over resumed sessions
    steps_per_s: float
    eta_s: float | None
    event: str = "step"  # "step" | "validation" | "finished" | "stopped" | "budget" | "diverged"
    val_accuracy: float | None = None
    val_ci95: float | None = None
    best_val_accuracy: float | None = None
    message: str = ""
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def is_final(self) -> bool:
        return self.event in FINAL_EVENTS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; NaN and infinities become None."""
        out: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps}
        for key in _FLOAT_FIELDS:
            out[key] = _finite_or_none(getattr(self, key))
        out["event"] = self.event
        out["message"] = self.message
        out["extras"] = {k: _finite_or_none(v) for k, v in self.extras.items()}
        return out

    def compact(self) -> dict[str, Any]:
        """to_dict() without empty fields: one metrics.jsonl line. Built by hand: it runs every step."""
        out: dict[str, Any] = {"step": self.step, "total_steps": self.total_steps, "event": self.event}
        for key in _FLOAT_FIELDS:
            value = getattr(self, key)
            if value is not None and math.isfinite(value):
                out[key] = round(value, 3) if key in _ROUNDED_FIELDS else value
        if self.message:
            out["message"] = self.message
        if self.extras:
            out["extras"] = {k: _finite_or_none(v) for k, v in self.extras.items()}
        return out


_FLOAT_FIELDS = ("loss", "accuracy", "lr", "elapsed_s", "steps_per_s", "eta_s", "val_accuracy", "val_ci95",
                 "best_val_accuracy")
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


class BatchSampler:
    """Plain labelled batches over all meta-train classes, for pre-training baselines."""

    def __init__(self, split: ClassSplit, spec: PreprocessSpec, batch_size: int, seed: int):
        if len(split) == 0:
            raise DatasetError("the meta-train split has no images")
        self.split = split
        self.spec = spec
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> LabeledBatch:
        rows = torch.randint(len(self.split), (self.batch_size,), generator=self.generator)
        return LabeledBatch(self.spec.normalize(self.split.images[rows]), self.split.labels[rows])


def _flatten(config_dict: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config_dict.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "hparams":
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Trainer:
    """Meta-trains one run. Build it (loads data, builds the model, creates or reopens the run),
    then iterate :meth:`steps` or call :meth:`run_all`.

    With ``resume=run_id`` the run's saved config is used; ``config`` may then be None, or carry
    changes listed in ``RESUMABLE_CHANGES`` (more steps, another device or time budget).
    """

    def __init__(self, config: ExperimentConfig | None = None, store: RunStore | None = None, *,
                 resume: str | None = None, reserve_gui_core: bool = False,
                 progress: ProgressCallback = no_progress):
        self.store = store if store is not None else RunStore()
        run: Run | None = None
        config_changed = False
        if resume is not None:
            run = self.store.get(resume)
            config, config_changed = self._resumed_config(run, config)
        elif config is None:
            raise ValueError("Trainer needs a config (or resume=run_id)")
        self.config = config
        training = config.training
        self.device = resolve_device(training.device)
        if self.device.type == "cpu":
            self.threads = configure_cpu_threads(training.threads, reserve_gui_core)
            tune_cpu_allocator()
        else:
            self.threads = torch.get_num_threads()
        seed_everything(training.seed)

        # Everything that can reject the config happens before a run folder exists.
        self.dataset = data.load_dataset(config.dataset, progress)
        spec = self.dataset.spec
        train_split = self.dataset.split("train")
        algorithm_cls = get_algorithm(config.algorithm.name)
        hparams = algorithm_cls.build_hparams(config.algorithm.hparams)
        if algorithm_cls.training_input_for(hparams) == "batches":
            batch_size = int(getattr(hparams, "batch_size", 64))
            self.sampler: data.EpisodeSampler | BatchSampler = BatchSampler(train_split, spec, batch_size,
                                                                            training.seed)
        else:
            self.sampler = data.EpisodeSampler(train_split, spec, config.train_ways, config.train_shots,
                                               config.train_queries, seed=training.seed, split_name="train",
                                               dataset_name=self.dataset.name)
        self.validation_note = ""
        self.val_episodes = self._make_validation_episodes()
        self.model_spec = ModelSpec(in_channels=spec.channels, image_size=spec.image_size, ways=config.train_ways,
                                    num_train_classes=train_split.num_classes)
        self.algorithm = algorithm_cls(hparams, self.model_spec, self.device)
        attach_data = getattr(self.algorithm, "attach_training_data", None)
        if callable(attach_data):  # algorithms that build their own problem from the split (Meta-Weight-Net)
            attach_data(train_split, spec, training.seed)
        self.algorithm.configure_optimizers(training.lr, training.steps, training.lr_schedule)

        self.step = 0
        self.best_val_accuracy: float | None = None
        self.best_val_ci95: float | None = None
        self.best_step: int | None = None
        self.last_validation: EvalResult | None = None
        self.last_checkpoint_step: int | None = None
        self._elapsed_before = 0.0  # training time of earlier sessions of a resumed run
        self.resume_message = ""
        if run is not None:
            self.run = run
            self._restore_from_checkpoint()
            if config_changed:
                run.save_config(config)
                self.store.update(run.id, steps_total=training.steps, device=training.device)
        else:
            self.run = self.store.create(config)
        set_run_folder = getattr(self.algorithm, "set_run_folder", None)
        if callable(set_run_folder):  # where an algorithm may mirror view data (weight history)
            set_run_folder(self.run.path)
        # Applied when steps() starts, so torch work done in between (e.g. by a GUI) cannot shift the run.
        self._start_rng_state = torch.get_rng_state()

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
        self._last_accuracy = float("nan")
        self._steps_per_s = 0.0
        self.final_record: StepRecord | None = None

    # --- setup helpers ----------------------------------------------------------------------------
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

    def _make_validation_episodes(self) -> data.FixedEpisodes | None:
        config = self.config
        split = self.dataset.split("val")
        if split.num_classes == 0:
            self.validation_note = ("the dataset has no meta-validation classes, so no validation runs; the "
                                    "best checkpoint is the last one")
            return None
        return data.FixedEpisodes(split, self.dataset.spec, config.dataset.ways, config.dataset.shots,
                                  config.dataset.queries, config.training.val_episodes, config.evaluation.seed,
                                  split_name="val", dataset_name=self.dataset.name)

    def _restore_from_checkpoint(self) -> None:
        run = self.run
        total = self.config.training.steps
        if run.has_checkpoint("last"):
            payload = run.load_checkpoint("last")
            if payload["algorithm"] != self.algorithm.name:
                raise CheckpointError(f"run {run.id}: its last checkpoint was made by '{payload['algorithm']}', "
                                      f"not '{self.algorithm.name}'")
            try:
                self.algorithm.load_state_dict(payload["state"])
                self.algorithm.load_optimizer_state(payload.get("optimizer") or {})
            except (RuntimeError, KeyError, ValueError) as exc:
                raise CheckpointError(f"run {run.id}: the last checkpoint does not fit the model: "
                                      f"{' '.join(str(exc).split())[:300]}") from None
            restore_rng_state(payload.get("rng") or {}, self.sampler.generator)
            self.step = int(payload["step"])
            self.best_val_accuracy = payload.get("best_val_accuracy")
            self.best_val_ci95 = payload.get("best_val_ci95")
            self.best_step = payload.get("best_step")
            self._elapsed_before = float(payload.get("elapsed_s", 0.0))
            self.last_checkpoint_step = self.step
            self.resume_message = f"resumed run {run.id} at step {self.step} of {total}"
        else:
            self.resume_message = f"run {run.id} saved no checkpoint; restarting it from step 0"
        dropped = run.truncate_metrics(self.step)
        if dropped:
            self.resume_message += f" ({dropped} metric records after step {self.step} were dropped)"
        if self.step >= total:
            raise WorkbenchError(f"run {run.id} already trained all {total} steps; raise training.steps "
                                 f"(--steps) above {total} to train it longer")

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
        if isinstance(self.sampler, BatchSampler):
            return self.sampler.sample().to(self.device)
        meta_batch = self.config.training.meta_batch
        return [self.sampler.sample().to(self.device) for _ in range(meta_batch)]

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
        self._started = True
        training = self.config.training
        total = training.steps
        budget_s = training.max_minutes * 60.0
        self._session_start = self._last_flush = clock()
        self._session_first_step = self.step
        torch.set_rng_state(self._start_rng_state)
        self.run.claim()
        self.run.set_status("running", self.resume_message, device=str(self.device), steps_total=total,
                            steps_done=self.step)
        self.algorithm.train()
        if self.step == 0:
            # A first good checkpoint: a run that diverges or crashes early still has one.
            self._save_checkpoint("last")
        final_event, message = "finished", ""
        steps_per_s = self._steps_per_s = 0.0
        try:
            while self.step < total:
                if not self._run_event.is_set():
                    self._wait_while_paused()
                if self._stop_event.is_set():
                    final_event, message = "stopped", f"stopped by the user after {self.step} steps"
                    break
                if budget_s and self._active_elapsed() >= budget_s:
                    final_event = "budget"
                    message = f"time budget of {training.max_minutes:g} min spent after {self.step} steps"
                    break
                started = clock()
                out = self.algorithm.meta_train_step(self._next_batch())
                loss = float(out["loss"])
                if not math.isfinite(loss):
                    final_event, message = "diverged", self._diverged_message(self.step + 1, f"the loss became {loss}")
                    break
                self.step += 1
                now = clock()
                duration = max(now - started, 1e-9)
                # Smoothed rate: steady for the ETA, yet follows a change of pace.
                steps_per_s = 1.0 / duration if steps_per_s == 0.0 else 0.9 * steps_per_s + 0.1 / duration
                self._steps_per_s = steps_per_s
                active = now - self._session_start - self._paused_total
                eta = (total - self.step) / steps_per_s
                if budget_s:
                    eta = min(eta, max(0.0, budget_s - active))
                accuracy = float(out.get("accuracy", float("nan")))
                self._last_loss, self._last_accuracy = loss, accuracy
                extras = {k: float(v) for k, v in out.items()
                          if k not in ("loss", "accuracy") and isinstance(v, (int, float))} if len(out) > 2 else {}
                record = StepRecord(self.step, total, loss, accuracy, self._current_lr(),
                                    self._elapsed_before + active, steps_per_s, eta, "step",
                                    best_val_accuracy=self.best_val_accuracy, extras=extras)
                self._pending.append(record)
                if len(self._pending) >= FLUSH_RECORDS or now - self._last_flush >= FLUSH_SECONDS:
                    self._flush_metrics()
                yield record
                if training.val_interval and self.step % training.val_interval == 0:
                    validation = self._validate()
                    if validation is not None:
                        yield validation
                if self.step % training.checkpoint_interval == 0 and self.step < total:
                    # Metrics first: after a crash they then cover every step up to the checkpoint.
                    self._flush_metrics()
                    if not self._save_checkpoint("last"):
                        final_event, message = "diverged", self._diverged_message(self.step, "the weights became "
                                                                                  "NaN or infinite")
                        break
                    self.run.update(steps_done=self.step)
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

    def _finish(self, event: str, message: str) -> Iterator[StepRecord]:
        if event in ("finished", "budget") and self._last_val_step != self.step and not self._stop_event.is_set():
            validation = self._validate()
            if validation is not None:
                yield validation
        if event in ("finished", "budget") and self._stop_event.is_set() and self.step < self.config.training.steps:
            event, message = "stopped", f"stopped by the user after {self.step} steps"
        record = self._finalize(event, message)
        yield record

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
        record = StepRecord(steps_done, self.config.training.steps, self._last_loss, self._last_accuracy,
                            self._current_lr(), self._elapsed_before + active,
                            ((steps_done - self._session_first_step) / active) if active > 0 else 0.0, 0.0, event,
                            val_accuracy=self.last_validation.accuracy if self.last_validation else None,
                            val_ci95=self.last_validation.ci95 if self.last_validation else None,
                            best_val_accuracy=self.best_val_accuracy, message=message)
        self._pending.append(record)
        self._flush_metrics()
        self.run.set_status(status, message, steps_done=steps_done, best_val_accuracy=self.best_val_accuracy,
                            best_val_ci95=self.best_val_ci95)
        self.final_record = record
        self._finalized = True
        self.run.release()
        return record

    def _diverged_message(self, step: int, what: str) -> str:
        kept = (f"the last good checkpoint (step {self.last_checkpoint_step}) was kept"
                if self.last_checkpoint_step is not None else "no checkpoint was saved")
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

    def _record_probe_snapshot(self) -> None:
        """Embed the fixed probe task into <run>/probes.npz for the Embeddings view; never stops training."""
        try:
            from workbench.core import probes

            if getattr(self, "_probe", None) is None:
                fixed = probes.config_probe_episodes(self.dataset, self.config, 1)
                self._probe = (fixed[0], fixed.split.class_names, probes.probe_split_name(
                    self.dataset, self.config.dataset.ways))
            episode, class_names, split_name = self._probe
            probes.record_probe_snapshot(self.run.path, self.algorithm, episode, self.step, class_names, split_name)
        except Exception as exc:  # e.g. an algorithm without embed(): the view explains the missing history
            self._probe = (None, [], str(exc)) if getattr(self, "_probe", None) is None else self._probe
            return

    def _validate(self) -> StepRecord | None:
        if self.val_episodes is None:
            return None

        def cancel_on_stop(done: int, total: int, message: str) -> None:
            if self._stop_event.is_set():
                raise Cancelled("validation cancelled")

        try:
            with preserved_rng(self.device):
                torch.manual_seed(self.config.training.seed + 1)  # stochastic adaptation: same every time
                result = evaluate(self.algorithm, self.val_episodes, self.device, cancel_on_stop, split="val")
                self._record_probe_snapshot()
        except Cancelled:
            return None
        finally:
            self.algorithm.train()
        self.last_validation = result
        self._last_val_step = self.step
        improved = self.best_val_accuracy is None or result.accuracy > self.best_val_accuracy
        if improved:
            previous = (self.best_val_accuracy, self.best_val_ci95, self.best_step)
            self.best_val_accuracy, self.best_val_ci95, self.best_step = result.accuracy, result.ci95, self.step
            if not self._save_checkpoint("best"):
                self.best_val_accuracy, self.best_val_ci95, self.best_step = previous
                improved = False
        text = f"validation at step {self.step}: {100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}%"
        if improved:
            text += " (new best)"
        record = StepRecord(self.step, self.config.training.steps, self._last_loss, self._last_accuracy,
                            self._current_lr(), self._elapsed_before + self._active_elapsed(), self._steps_per_s,
                            None, "validation", val_accuracy=result.accuracy, val_ci95=result.ci95,
                            best_val_accuracy=self.best_val_accuracy, message=text)
        self._pending.append(record)
        self._flush_metrics()
        self.run.update(steps_done=self.step, best_val_accuracy=self.best_val_accuracy,
                        best_val_ci95=self.best_val_ci95)
        return record

    def _weights_finite(self) -> bool:
        for module in self.algorithm.modules().values():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    return False
        return True

    def _save_checkpoint(self, kind: str) -> bool:
        """Write a checkpoint unless the weights are NaN/inf (then keep the old one and return False)."""
        if not self._weights_finite():
            return False
        elapsed = self._elapsed_before + (self._active_elapsed() if self._started else 0.0)
        payload = make_payload(self.algorithm, self.config, self.dataset.spec, step=self.step,
                               best_val_accuracy=self.best_val_accuracy, rng=rng_state(self.sampler.generator),
                               extra={"best_val_ci95": self.best_val_ci95, "best_step": self.best_step,
                                      "elapsed_s": float(elapsed)})
        self.run.save_checkpoint(payload, kind)
        if kind == "last":
            self.last_checkpoint_step = self.step
        return True

    def _flush_metrics(self) -> None:
        if self._pending:
            self.run.append_metrics([record.compact() for record in self._pending])
            self._pending.clear()
        self._last_flush = clock()

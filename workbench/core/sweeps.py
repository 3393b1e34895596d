"""Sweeps: hyperparameter studies on Optuna, each trial an ordinary run of the run store.

A study is a base experiment config plus a :class:`SweepSettings` (which parameters vary and how, the sampler,
the number of trials and workers, pruning). It lives in Optuna's storage, by default the SQLite file
``studies.sqlite3`` beside the run store's index, with its settings in the study's user attributes, so a study
survives a restart and is resumed by name. The study file (``workbench sweep STUDY.toml``, and what the GUI
exports) is the experiment config's TOML with a ``[sweep]`` table:

    kind = "classification"
    [dataset]
    name = "glyphs"
    [algorithm]
    name = "maml"
    [sweep]
    name = "maml-inner-lr"
    sampler = "grid"            # grid | random | tpe
    trials = 4
    workers = 2                 # 0: cores / threads per trial
    [sweep.parameters]
    "algorithm.hparams.train_inner_lr" = { values = [0.1, 0.4] }
    "dataset.ways" = { values = [5, 20] }
    "training.lr" = { low = 1e-4, high = 1e-2, log = true }

Each trial trains a run (named ``<study>-trial-<n>``) in a worker process of its own (so a crashing trial takes
only itself down), or as a Ray task when a Ray address is given. The objective is the run's best validation score
(the kind's metric; checkpoints are selected on validation episodes, the test set stays untouched). At every
validation the trial reports its score to Optuna; the median pruner stops trials below the median of the finished
ones at the same step. A trial whose config is rejected, whose training diverges or whose process dies is marked
failed with its error, and the study goes on. Cancelling stops every running trial at its next step (its run is
saved as stopped) and keeps the finished trials.
"""

from __future__ import annotations

import concurrent.futures as futures
import copy
import itertools
import json
import math
import multiprocessing
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.fileio import parse_toml, read_toml
from workbench.core.hparams import HParamSpec, hparam, specs

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "none")
STUDY_FILE = "studies.sqlite3"
SETTINGS_ATTR = "workbench_settings"  # the study's user attribute holding its settings and base config (JSON)
CANCEL_ATTR = "workbench_cancel"  # set on the study to stop every running trial
CANCEL_POLL_S = 1.0  # how often a trial reads the cancel flag from the storage
TRIAL_STATES = ("waiting", "running", "complete", "pruned", "failed")


class SweepError(WorkbenchError):
    """A study that cannot be set up or resumed (the message names the field or the study)."""


# --- what can vary ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepableField:
    """One config field a sweep may vary: its dotted path in the config dict and its declaration."""

    path: str  # "dataset.ways", "training.lr", "algorithm.hparams.train_inner_lr", "task.optimizee"
    spec: HParamSpec
    section: str  # "Dataset", "Training", "Algorithm", "Task": the group the sweep dialog shows it under

    @property
    def numeric(self) -> bool:
        return self.spec.type in (int, float) and not self.spec.choices


# Fields that name things rather than tune them: a sweep over them is a different experiment.
UNSWEEPABLE = {"dataset.name", "dataset.root", "dataset.download", "training.device", "training.threads",
               "training.seed", "training.max_minutes", "evaluation.episodes", "evaluation.seed"}


def sweepable_fields(config: Any) -> list[SweepableField]:
    """The fields a study of ``config`` (an ExperimentConfig) can vary, from the declarations: the dataset's
    (ways and shots among them), the training's, the algorithm's hyperparameters and the kind's options."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.config import DatasetConfig, TrainingConfig
    from workbench.core.kinds import get_kind_class

    kind_cls = get_kind_class(config.kind)
    groups = [("Dataset", "dataset", specs(DatasetConfig)), ("Training", "training", specs(TrainingConfig)),
              ("Algorithm", "algorithm.hparams", get_algorithm(config.algorithm.name).hparam_specs()),
              ("Task", "task", specs(kind_cls.Options) if kind_cls.Options is not None else [])]
    found = []
    for section, prefix, declared in groups:
        for spec in declared:
            path = f"{prefix}.{spec.name}"
            if path not in UNSWEEPABLE and spec.type in (int, float, bool, str):
                found.append(SweepableField(path, spec, section))
    return found


@dataclass
class SweepParameter:
    """How one field varies: a list of ``values`` (grid points, or the categories random and TPE draw from), or a
    range ``low``..``high`` (``log`` for a log-uniform draw; integer fields draw integers)."""

    path: str
    values: list = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    log: bool = False

    @property
    def is_range(self) -> bool:
        return not self.values

    def check(self, sweepable: dict[str, SweepableField], sampler: str) -> "SweepParameter":
        """Validated against the field's declaration; raises SweepError naming ``sweep.parameters.<path>``."""
        where = f"sweep.parameters.{self.path}"
        known = sweepable.get(self.path)
        if known is None:
            raise SweepError(f"{where}: not a field a sweep can vary; use one of {', '.join(sorted(sweepable))}")
        spec = known.spec
        try:
            values = [spec.validate(value, "") for value in self.values]
            low, high = (spec.validate(bound, "") if bound is not None else None for bound in (self.low, self.high))
        except ConfigError as exc:
            raise SweepError(f"{where}: {str(exc).split(': ', 1)[-1]}") from None
        if len(set(map(repr, values))) != len(values):
            raise SweepError(f"{where}: the values {self.values} repeat one another")
        if self.is_range:
            self._check_range(where, known, sampler, low, high)
        return SweepParameter(self.path, values, low, high, self.log)

    def _check_range(self, where, known, sampler, low, high) -> None:
        if not known.numeric:
            raise SweepError(f"{where}: a {known.spec.type.__name__} field takes a list of values, not a range")
        if sampler == "grid":
            raise SweepError(f"{where}: a grid needs a list of values; give values = [...] or use the random or "
                             "TPE sampler")
        if low is None or high is None or not low < high:
            raise SweepError(f"{where}: give values = [...] or a range with low < high")
        if self.log and low <= 0:
            raise SweepError(f"{where}: a log range needs low > 0")

    def distribution(self, spec_type: type):
        import optuna

        if not self.is_range:
            return optuna.distributions.CategoricalDistribution(self.values)
        if spec_type is int:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.values:
            return {"values": list(self.values)}
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {})}


@dataclass
class SweepSettings:
    name: str = hparam("", "The study's name: trials are runs named <name>-trial-<n>; resume the study by it.")
    sampler: str = hparam("tpe", "How trials are chosen: grid (every combination of the listed values, in order), "
                          "random, or TPE (Optuna's Bayesian sampler; random for its first trials).",
                          choices=SAMPLERS)
    trials: int = hparam(20, "Trials to run (a grid runs at most its number of combinations).", low=1, high=100_000)
    workers: int = hparam(0, "Trials running at once; 0: the CPU cores divided by the threads per trial.",
                          low=0, high=1024)
    threads: int = hparam(1, "Torch CPU threads per trial.", low=1, high=256)
    pruner: str = hparam("median", "median: stop a trial whose validation score is below the median of the finished "
                         "trials at the same step (Optuna's MedianPruner); none: every trial runs to its end.",
                         choices=PRUNERS)
    prune_after_trials: int = hparam(2, "Finished trials needed before the pruner compares (Optuna's "
                                     "n_startup_trials).", low=0, high=10_000)
    seed: int = hparam(0, "Seed of the random and TPE samplers.", low=0, high=2**31 - 1)
    ray_address: str = hparam("", "Run the trials as Ray tasks on this cluster ('auto' for a local cluster already "
                              "running, or host:port); empty: a local process pool. The run store must be a folder "
                              "the cluster's nodes share.")
    parameters: list[SweepParameter] = field(default_factory=list)

    def resolved_workers(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 1) // self.threads)

    def to_dict(self) -> dict[str, Any]:
        data = {spec.name: getattr(self, spec.name) for spec in specs(SweepSettings)}
        data["parameters"] = {p.path: p.to_dict() for p in self.parameters}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepSettings":
        from workbench.core.hparams import build

        data = dict(data)
        raw = data.pop("parameters", {}) or {}
        if not isinstance(raw, dict):
            raise SweepError("sweep.parameters: a table of <field path> = { values = [...] } or { low, high }")
        settings = build(cls, data, "sweep")
        for path, value in raw.items():
            if not isinstance(value, dict):
                value = {"values": value if isinstance(value, list) else [value]}
            unknown = set(value) - {"values", "low", "high", "log"}
            if unknown:
                raise SweepError(f"sweep.parameters.{path}.{sorted(unknown)[0]}: unknown; use values, or low, high "
                                 "and log")
            settings.parameters.append(SweepParameter(path, list(value.get("values") or []), value.get("low"),
                                                      value.get("high"), bool(value.get("log", False))))
        return settings


@dataclass
class SweepSpec:
    """A study: the base experiment config (a dict, as in a TOML file) and how to sweep it."""

    base: dict[str, Any]
    settings: SweepSettings

    def checked(self) -> "SweepSpec":
        """The spec with its parameters validated against the base config's declarations (SweepError or
        ConfigError naming the field otherwise)."""
        config = self.base_config()
        settings = copy.deepcopy(self.settings)
        if not settings.name.strip():
            raise SweepError("sweep.name: give the study a name")
        if not settings.parameters:
            raise SweepError("sweep.parameters: tick at least one parameter to vary")
        sweepable = {f.path: f for f in sweepable_fields(config)}
        settings.parameters = [p.check(sweepable, settings.sampler) for p in settings.parameters]
        return SweepSpec(self.base, settings)

    def base_config(self):
        """The base experiment as an ExperimentConfig (the recommended recipe filled in, as `workbench train`)."""
        from workbench.core.config import ExperimentConfig, with_recommended_recipe

        return ExperimentConfig.from_dict(with_recommended_recipe(self.base))

    def metric(self):
        """The kind's metric: the objective's name and direction."""
        from workbench.core.kinds import get_kind_class

        return get_kind_class(self.base_config().kind).metric

    def grid(self) -> list[dict[str, Any]]:
        """Every combination of the parameters' values, in order (the first parameter varies slowest)."""
        names = [p.path for p in self.settings.parameters]
        return [dict(zip(names, combo)) for combo in itertools.product(*(p.values for p in self.settings.parameters))]

    def planned_trials(self) -> int:
        if self.settings.sampler == "grid":
            return min(self.settings.trials, len(self.grid()))
        return self.settings.trials

    def trial_config(self, params: dict[str, Any], number: int) -> dict[str, Any]:
        """The base config with a trial's values set at their paths, named after the trial."""
        from workbench.core.config import with_recommended_recipe

        data = copy.deepcopy(with_recommended_recipe(self.base))
        for path, value in params.items():
            *parents, leaf = path.split(".")
            target = data
            for key in parents:
                target = target.setdefault(key, {})
            target[leaf] = value
        data["name"] = trial_run_name(self.settings.name, number)
        data.setdefault("training", {})["threads"] = self.settings.threads
        return data

    # --- the study file -----------------------------------------------------------------------
    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({**self.base, "sweep": self.settings.to_dict()})

    def save(self, path: str | Path) -> Path:
        from workbench.core.fileio import atomic_write_text

        return atomic_write_text(Path(path), self.to_toml())

    @classmethod
    def from_toml(cls, text: str, source: str = "study file") -> "SweepSpec":
        return cls.from_dict(parse_toml(text, source), source)

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        return cls.from_dict(read_toml(path, "study file"), str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "study file") -> "SweepSpec":
        """A study file's contents: the experiment config with a [sweep] table."""
        data = dict(data)
        sweep = data.pop("sweep", None)
        if not isinstance(sweep, dict):
            raise ConfigError(source, "no [sweep] table: add one with name, sampler, trials and [sweep.parameters]")
        return cls(data, SweepSettings.from_dict(sweep))

    def to_json(self) -> str:
        return json.dumps({"base": self.base, "settings": self.settings.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        data = json.loads(text)
        return cls(data["base"], SweepSettings.from_dict(data["settings"]))


def trial_run_name(study: str, number: int) -> str:
    return f"{study}-trial-{number}"


# --- the storage --------------------------------------------------------------------------------
def default_storage(home: str | Path) -> str:
    """The study storage beside the run store's index: an SQLite file, as an SQLAlchemy URL."""
    return f"sqlite:///{Path(home) / STUDY_FILE}"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def median_pruner(after_trials: int | None):
    """Optuna's MedianPruner comparing from ``after_trials`` finished trials on (None: never prune). Optuna keeps no
    pruner in its storage, so every process that loads the study builds the same one."""
    optuna = _optuna()
    if after_trials is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=after_trials, n_warmup_steps=0)


def list_studies(storage: str) -> list[dict[str, Any]]:
    """Name, trial count and best value of every study in the storage (empty when it does not exist yet)."""
    optuna = _optuna()
    path = storage.removeprefix("sqlite:///")
    if storage.startswith("sqlite:///") and not Path(path).exists():
        return []
    out = []
    for summary in optuna.get_all_study_summaries(storage):
        best = summary.best_trial.value if summary.best_trial is not None else None
        out.append({"name": summary.study_name, "trials": summary.n_trials, "best_value": best,
                    "created": summary.datetime_start.isoformat(timespec="seconds") if summary.datetime_start else ""})
    return out


def load_spec(storage: str, name: str) -> SweepSpec:
    return _load(storage, name)[1]


def _load(storage: str, name: str):
    """The stored Optuna study and the workbench spec kept in it."""
    try:
        study = _optuna().load_study(study_name=name, storage=storage)
    except KeyError:
        raise SweepError(f"no study named '{name}' in {storage}") from None
    if SETTINGS_ATTR not in study.user_attrs:
        raise SweepError(f"study '{name}' was not made by the workbench (it has no settings)")
    return study, SweepSpec.from_json(study.user_attrs[SETTINGS_ATTR])


def counted_trials(trials: list) -> list:
    """Trials that count towards a study's plan: all but those cancelled or interrupted (run again on resume)."""
    return [t for t in trials if not t.user_attrs.get("retry")]


# --- a trial's snapshot -------------------------------------------------------------------------
@dataclass
class TrialInfo:
    number: int
    state: str  # one of TRIAL_STATES
    params: dict[str, Any]
    value: float | None
    run_id: str = ""
    error: str = ""
    intermediate: dict[int, float] = field(default_factory=dict)  # validation step -> score
    duration_s: float | None = None


@dataclass
class StudySnapshot:
    """What a study looks like now: its trials, the best so far, whether it is finished."""

    name: str
    direction: str  # "maximize" | "minimize"
    metric: str  # the kind's metric key ("accuracy", "mse", ...)
    planned: int
    trials: list[TrialInfo]
    finished: bool = False
    cancelled: bool = False
    message: str = ""

    def counts(self) -> dict[str, int]:
        return {state: sum(t.state == state for t in self.trials) for state in TRIAL_STATES}

    def best(self) -> TrialInfo | None:
        done = [t for t in self.trials if t.state == "complete" and t.value is not None]
        if not done:
            return None
        pick = max if self.direction == "maximize" else min
        return pick(done, key=lambda t: t.value)

    def best_so_far(self) -> list[tuple[int, float]]:
        """(trial number, best value among complete trials up to it), in trial order."""
        out, best = [], None
        for t in sorted(self.trials, key=lambda t: t.number):
            if t.state != "complete" or t.value is None:
                continue
            better = best is None or (t.value > best if self.direction == "maximize" else t.value < best)
            best = t.value if better else best
            out.append((t.number, best))
        return out

    def to_dict(self) -> dict[str, Any]:
        best = self.best()
        return {"study": self.name, "direction": self.direction, "metric": self.metric, "planned": self.planned,
                "finished": self.finished, "cancelled": self.cancelled, "message": self.message,
                "counts": self.counts(), "best": asdict(best) if best else None,
                "trials": [asdict(t) for t in self.trials]}


def _trial_info(trial) -> TrialInfo:
    state = {"WAITING": "waiting", "RUNNING": "running", "COMPLETE": "complete", "PRUNED": "pruned",
             "FAIL": "failed"}[trial.state.name]
    duration = trial.duration.total_seconds() if trial.duration is not None else None
    return TrialInfo(trial.number, state, dict(trial.params), trial.value, trial.user_attrs.get("run_id", ""),
                     trial.user_attrs.get("error", ""), {int(k): float(v) for k, v in trial.intermediate_values.items()},
                     duration)


def snapshot(study, spec: SweepSpec, metric: str, finished: bool = False, message: str = "") -> StudySnapshot:
    trials = [_trial_info(t) for t in study.get_trials(deepcopy=False)]
    return StudySnapshot(study.study_name, study.direction.name.lower(), metric, spec.planned_trials(), trials,
                         finished, bool(study.user_attrs.get(CANCEL_ATTR)), message)


# --- one trial, in its worker -------------------------------------------------------------------
@dataclass
class TrialJob:
    """Everything a worker needs (picklable): where the study and the run store are, the trial and its config."""

    storage: str
    study: str
    trial_id: int
    number: int
    config: dict[str, Any]
    home: str
    prune_after_trials: int | None  # None: no pruning; else the median pruner's n_startup_trials


@dataclass
class TrialOutcome:
    number: int
    state: str  # "complete" | "pruned" | "failed"
    value: float | None = None
    run_id: str = ""
    error: str = ""
    retry: bool = False  # cancelled or interrupted: a resumed study runs this point again


class _CancelFlag:
    """Reads the study's cancel flag from the storage at most every CANCEL_POLL_S seconds."""

    def __init__(self, study):
        self.study, self._next, self.raised = study, 0.0, False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.raised and now >= self._next:
            self._next = now + CANCEL_POLL_S
            self.raised = bool(self.study.user_attrs.get(CANCEL_ATTR))
        return self.raised


def run_trial(job: TrialJob) -> TrialOutcome:
    """Train one trial's run, reporting validation scores to Optuna; never raises (a failure is an outcome)."""
    study = _optuna().load_study(study_name=job.study, storage=job.storage, pruner=median_pruner(job.prune_after_trials))
    trial = _optuna().trial.Trial(study, job.trial_id)
    try:
        return _train_trial(job, study, trial)
    except WorkbenchError as exc:
        return _failed(trial, job.number, str(exc))
    except Exception as exc:  # a bug or a resource error in one trial must not end the study
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return _failed(trial, job.number, detail)


def _failed(trial, number: int, error: str, retry: bool = False) -> TrialOutcome:
    trial.set_user_attr("error", error)
    return TrialOutcome(number, "failed", run_id=trial.user_attrs.get("run_id", ""), error=error, retry=retry)


def _train_trial(job: TrialJob, study, trial) -> TrialOutcome:
    from workbench.core.config import ExperimentConfig
    from workbench.core.runs import RunStore
    from workbench.core.training import Trainer

    config = ExperimentConfig.from_dict(job.config)
    trainer = Trainer(config, RunStore(job.home))
    trial.set_user_attr("run_id", trainer.run.id)
    cancelled, pruned, final = _CancelFlag(study), False, None
    for record in trainer.steps():
        final = record
        if record.event == "validation" and record.val_score is not None and math.isfinite(record.val_score):
            trial.report(float(record.val_score), record.step)
            if job.prune_after_trials is not None and not pruned and trial.should_prune():
                pruned = True
                trainer.stop()
        if cancelled() and not trainer.is_stopping:
            trainer.stop()
    outcome = TrialOutcome(job.number, "complete", trainer.best_val_score, trainer.run.id)
    if pruned:
        outcome.state = "pruned"
    elif cancelled.raised:
        return _failed(trial, job.number, "cancelled: the study was cancelled while this trial ran (its run is "
                                          "saved as stopped)", retry=True)
    elif final is None or final.event in ("diverged", "failed"):
        return _failed(trial, job.number, (final.message if final else "") or "training did not finish")
    elif trainer.best_val_score is None:
        return _failed(trial, job.number, "no validation score: the run validated no time (raise training.steps "
                                          "or lower training.val_interval)")
    return outcome


# --- running a study ----------------------------------------------------------------------------
class ProcessExecutor:
    """A fresh single-worker process pool per trial (spawned: torch and threads do not survive fork), so a trial
    whose process dies fails alone."""

    def __init__(self):
        self._context = multiprocessing.get_context("spawn")
        self._pools: dict[futures.Future, futures.ProcessPoolExecutor] = {}

    def submit(self, job: TrialJob) -> futures.Future:
        pool = futures.ProcessPoolExecutor(max_workers=1, mp_context=self._context)
        future = pool.submit(run_trial, job)
        self._pools[future] = pool
        future.add_done_callback(lambda f: self._pools.pop(f, pool).shutdown(wait=False))
        return future

    def shutdown(self) -> None:
        for pool in list(self._pools.values()):
            pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """Trials as Ray tasks (one CPU each per torch thread), on the cluster at ``address`` or on the Ray instance
    this process already joined."""

    def __init__(self, address: str, threads: int):
        try:
            import ray
        except ImportError:
            raise SweepError("sweep.ray_address: Ray is not installed; install the workbench's 'ray' extra "
                             "(pip install -e \".[ray]\")") from None
        if not ray.is_initialized():
            try:
                ray.init(address=address or None, log_to_driver=False, include_dashboard=False)
            except Exception as exc:
                raise SweepError(f"sweep.ray_address: cannot join the Ray cluster at '{address}': {exc}") from None
        self._remote = ray.remote(num_cpus=threads)(run_trial)

    def submit(self, job: TrialJob) -> futures.Future:
        return self._remote.remote(job).future()

    def shutdown(self) -> None:
        """Leaves the cluster running: it belongs to whoever started it."""


class StudyRunner:
    """Runs (or resumes) a study: ``updates()`` is a generator of StudySnapshots, one per event (a trial started
    or ended) and one at least every ``tick_s``; each yield is a point where ``cancel()`` is seen."""

    def __init__(self, spec: SweepSpec, home: str | Path, storage: str | None = None, tick_s: float = 0.5):
        self.spec = spec.checked()
        self.home = str(home)
        self.storage = storage or default_storage(home)
        self.tick_s = tick_s
        self._cancel = False  # asked (from any thread); the study's flag is set by the thread running updates()
        self._cancel_sent = False
        Path(self.home).mkdir(parents=True, exist_ok=True)
        config = self.spec.base_config()
        self._types = {f.path: f.spec.type for f in sweepable_fields(config)}
        self.study, self.metric = self._open_study(config)

    def _open_study(self, config):
        from workbench.core.kinds import get_kind_class

        optuna = _optuna()
        metric = get_kind_class(config.kind).metric
        direction = "maximize" if metric.higher_is_better else "minimize"
        study = optuna.create_study(study_name=self.spec.settings.name, storage=self.storage, direction=direction,
                                    sampler=self._sampler(), pruner=median_pruner(self._prune_after()),
                                    load_if_exists=True)
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is not None and json.loads(stored)["base"] != self.spec.base:
            raise SweepError(f"sweep.name: a study named '{study.study_name}' exists with another experiment; "
                             "choose a new name or resume it as it is")
        study.set_user_attr(SETTINGS_ATTR, self.spec.to_json())
        study.set_user_attr(CANCEL_ATTR, False)
        self._mark_interrupted(study)
        return study, metric.key

    def _sampler(self):
        optuna = _optuna()
        settings = self.spec.settings
        if settings.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=settings.seed)
        # A grid's points are enqueued in order (see _ask), so its sampler never draws.
        return optuna.samplers.RandomSampler(seed=settings.seed)

    def _prune_after(self) -> int | None:
        settings = self.spec.settings
        return None if settings.pruner == "none" else settings.prune_after_trials

    def _mark_interrupted(self, study) -> None:
        """Trials left running by a process that ended (a crash, a closed window) fail, so a resume retries."""
        optuna = _optuna()
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(trial._trial_id, "error", "interrupted: the sweep stopped while "
                                               "this trial ran")
            study._storage.set_trial_user_attr(trial._trial_id, "retry", True)
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)

    def cancel(self) -> None:
        """Stop every running trial at its next step and start no more; finished trials are kept. Safe from any
        thread: the loop of ``updates()`` raises the study's flag, which the trials read."""
        self._cancel = True

    def _send_cancel(self) -> None:
        if self._cancel and not self._cancel_sent:
            self._cancel_sent = True
            self.study.set_user_attr(CANCEL_ATTR, True)

    def snapshot(self, finished: bool = False, message: str = "") -> StudySnapshot:
        return snapshot(self.study, self.spec, self.metric, finished, message)

    def _counted(self) -> list:
        """Trials that count towards the plan: all but those cancelled or interrupted (run again on resume)."""
        return counted_trials(self.study.get_trials(deepcopy=False))

    def _remaining(self) -> int:
        """Trials still to start: the plan less those counted (finished, failed or running)."""
        return self.spec.planned_trials() - len(self._counted())

    def _ask(self):
        """The next trial: the next grid point not yet tried (in order), else the sampler's draw."""
        settings = self.spec.settings
        if settings.sampler == "grid":
            tried = [t.params for t in self._counted()]
            point = next(point for point in self.spec.grid() if point not in tried)
            self.study.enqueue_trial(point, skip_if_exists=False)
        distributions = {p.path: p.distribution(self._types[p.path]) for p in settings.parameters}
        return self.study.ask(distributions)

    def _tell(self, trial, outcome: TrialOutcome) -> None:
        optuna = _optuna()
        states = optuna.trial.TrialState
        if outcome.state == "complete":
            self.study.tell(trial, outcome.value)
        elif outcome.state == "pruned":
            self.study.tell(trial, state=states.PRUNED)
        else:
            trial.set_user_attr("error", outcome.error)
            if outcome.retry:
                trial.set_user_attr("retry", True)
            self.study.tell(trial, state=states.FAIL)

    def _executor(self):
        settings = self.spec.settings
        if settings.ray_address:
            return RayExecutor(settings.ray_address, settings.threads)
        return ProcessExecutor()

    def updates(self) -> Iterator[StudySnapshot]:
        workers = self.spec.settings.resolved_workers()
        executor = self._executor()
        running: dict[futures.Future, Any] = {}
        try:
            yield self.snapshot(message=f"running {self.spec.planned_trials()} trials, {workers} at a time")
            while True:
                self._send_cancel()
                while not self._cancel and len(running) < workers and self._remaining() > 0:
                    trial = self._ask()
                    job = TrialJob(self.storage, self.study.study_name, trial._trial_id, trial.number,
                                   self.spec.trial_config(trial.params, trial.number), self.home,
                                   self._prune_after())
                    running[executor.submit(job)] = trial
                    yield self.snapshot(message=f"trial {trial.number} started")
                if not running:
                    break
                done, _ = futures.wait(running, timeout=self.tick_s, return_when=futures.FIRST_COMPLETED)
                for future in done:
                    trial = running.pop(future)
                    self._tell(trial, _outcome_of(future, trial.number))
                yield self.snapshot()
        finally:
            if running:  # the consumer closed the generator: stop the trials, keep what finished
                self.cancel()
                self._send_cancel()
                for future, trial in running.items():
                    self._tell(trial, _outcome_of(future, trial.number, wait=True))
            executor.shutdown()
        message = "cancelled: finished trials kept" if self._cancel else "finished"
        yield self.snapshot(finished=True, message=message)

    def run(self) -> StudySnapshot:
        """Run to the end; returns the last snapshot."""
        last = None
        for last in self.updates():
            pass
        return last


def _outcome_of(future: futures.Future, number: int, wait: bool = False) -> TrialOutcome:
    """A finished future's outcome; a worker that died (or a Ray task that failed) is a failed trial."""
    try:
        return future.result(timeout=None if wait else 0)
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return TrialOutcome(number, "failed", error=f"the trial's worker ended abnormally: {detail}")


# --- reading a stored study ---------------------------------------------------------------------
def read_study(storage: str, name: str) -> StudySnapshot:
    """A stored study as it stands, without running it (for viewers: a study run earlier, or by another process).
    ``finished``: no trial is running and the plan is done; ``cancelled``: it was cancelled and not resumed since;
    the message says what is left. Raises SweepError when there is no such workbench study."""
    study, spec = _load(storage, name)
    try:
        metric = spec.metric().key
    except WorkbenchError:  # e.g. its algorithm's plugin is gone: the trials still read
        metric = "value"
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state.name == "RUNNING" for t in trials)
    left = spec.planned_trials() - len(counted_trials(trials))
    finished = not running and left <= 0
    if finished:
        message = "finished"
    elif running:
        message = f"{running} trial{'s' if running != 1 else ''} running (here or in another process)"
    else:
        stopped = "cancelled" if study.user_attrs.get(CANCEL_ATTR) else "stopped"
        message = f"{stopped}: {left} of {spec.planned_trials()} trials left; resume the study to run them"
    return snapshot(study, spec, metric, finished, message)

"""Learning to optimize (Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient descent"):
the tasks are optimizee problems (random quadratics, a small MLP or convnet classifying images; see
:mod:`workbench.core.data.optimizees`), and an algorithm of this kind is an optimizer: from a problem's start θ_0
it takes steps using the gradients it is given.

Evaluation runs the algorithm's optimizer on fixed test problems for ``eval_steps`` steps (200: twice the training
horizon, to test generalisation beyond it) and reports the optimizee loss curve as mean ± 95% CI over the problems.
The headline is the loss after ``horizon`` steps (100). Beside it race the hand-made optimizers (Adam, SGD, RMSprop,
Nesterov momentum, from ``torch.optim``), each with its learning rate tuned on training problems: the one of a
log grid with the lowest mean loss after ``horizon`` steps.

An algorithm of this kind implements ``optimizer_steps(problem, steps)``: a generator of the loss f(θ_t) at
t = 0 .. steps (the loss at θ_t on step t's minibatch, before the update from it).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.data.optimizees import OPTIMIZEES, FixedProblems, OptimizeeSettings, ProblemSampler, ProblemSource
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.kinds import register
from workbench.core.kinds.base import ExperimentKind, MetricSpec, ResultProvenance
from workbench.core.stats import mean_ci95

# Its own key in records and JSON; the run index keeps it in its lower-is-better columns (best_val_mse, test_mse).
FINAL_LOSS = MetricSpec("final_loss", "Final loss", higher_is_better=False, percent=False, index_column="mse")
LEARNED = "learned"  # the algorithm's series among the hand-made ones
# Hand-made optimizers: name -> (title, factory of a torch optimizer over one flat tensor at a learning rate).
HAND_OPTIMIZERS: dict[str, tuple[str, Callable]] = {
    "adam": ("Adam", lambda params, lr: torch.optim.Adam(params, lr=lr)),
    "sgd": ("SGD", lambda params, lr: torch.optim.SGD(params, lr=lr)),
    "rmsprop": ("RMSprop", lambda params, lr: torch.optim.RMSprop(params, lr=lr)),
    "nesterov": ("Nesterov", lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)),
}
LR_GRID = tuple(float(10 ** e) for e in np.arange(-4.0, 1.01, 0.5))  # 1e-4 .. 10, half-decades
REPORT_EVERY = 10  # steps between the points of the loss-by-step curve in the evaluation JSON


@dataclass
class L2OOptions:
    optimizee: str = hparam("quadratic", "The problems to optimize (Andrychowicz et al. 2016, section 3): quadratic "
                            "f(θ) = ‖Wθ − y‖² with W, y, θ_0 drawn from N(0, 1); mlp, a 20-unit sigmoid MLP "
                            "classifying images of the dataset (the paper's MNIST network); convnet, a small convnet "
                            "on them (e.g. Omniglot). Quadratics ignore the dataset.", choices=OPTIMIZEES)
    dimension: int = hparam(10, "Size of θ of the quadratics (10 in the paper).", low=1, high=10_000)
    classes: int = hparam(10, "Classes per image problem (10, as MNIST's).", low=2, high=100)
    batch_size: int = hparam(128, "Images per step of an image problem (128 in the paper).", low=1, high=4096)
    horizon: int = hparam(100, "Steps each training problem is optimized for, and the step of the headline loss "
                          "(100 in the paper).", low=1, high=10_000)
    eval_steps: int = hparam(200, "Steps on each test problem; beyond the horizon it tests generalisation to longer "
                             "runs (the paper's figure 3 runs 200).", low=1, high=10_000)
    tuning_problems: int = hparam(8, "Training problems on which each hand-made optimizer's learning rate is tuned "
                                  "(the best of a log grid from 1e-4 to 10).", low=1, high=1000)


def trajectory(steps: Iterator[float], count: int) -> np.ndarray:
    """The losses a step generator yields, as [count + 1]; a diverged run (non-finite loss) stays infinite."""
    out = np.full(count + 1, np.inf)
    for t, loss in zip(range(count + 1), steps):
        if not math.isfinite(loss):
            break
        out[t] = loss
    return out


def hand_steps(name: str, lr: float, problem: Any, steps: int) -> Iterator[float]:
    """A hand-made optimizer on a problem: yields f(θ_t) for t = 0 .. steps."""
    theta = problem.theta0.detach().clone().requires_grad_(True)
    optimizer = HAND_OPTIMIZERS[name][1]([theta], lr)
    for t in range(steps + 1):
        with torch.enable_grad():
            loss = problem.loss(theta, t)
        value = float(loss.detach())
        yield value
        if t == steps or not math.isfinite(value):
            return
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


_TUNED: dict[tuple, dict[str, float]] = {}
_TUNED_LOCK = threading.Lock()


def tuned_rates(problems: FixedProblems, horizon: int, progress: ProgressCallback = no_progress) -> dict[str, float]:
    """Per hand-made optimizer, the grid learning rate with the lowest mean loss after ``horizon`` steps on the
    training problems (cached per problem source, so validations and the race reuse it)."""
    key = (problems.source.key, len(problems), problems.seed, horizon)
    with _TUNED_LOCK:
        if key in _TUNED:
            return dict(_TUNED[key])
    rates = {}
    total, done = len(HAND_OPTIMIZERS) * len(LR_GRID), 0
    for name in HAND_OPTIMIZERS:
        finals = []
        for lr in LR_GRID:
            losses = [trajectory(hand_steps(name, lr, p, horizon), horizon)[-1] for p in problems]
            finals.append(np.mean(losses) if np.all(np.isfinite(losses)) else np.inf)
            done += 1
            progress(done, total, f"tuning {HAND_OPTIMIZERS[name][0]}'s learning rate on {len(problems)} "
                     "training problems")
        rates[name] = LR_GRID[int(np.argmin(finals))]
    with _TUNED_LOCK:
        _TUNED[key] = dict(rates)
    return rates


def race(algorithm: Any, problem: Any, steps: int, rates: dict[str, float]) -> Iterator[tuple[int, dict[str, float]]]:
    """All optimizers on one problem step by step, side by side: yields (t, {series: f(θ_t)}). ``algorithm`` may
    be None (the hand-made ones alone). Series names: LEARNED and the hand-made optimizers' names."""
    runners = {name: hand_steps(name, lr, problem, steps) for name, lr in rates.items()}
    if algorithm is not None:
        runners = {LEARNED: algorithm.optimizer_steps(problem, steps), **runners}
    finished: set[str] = set()
    for t in range(steps + 1):
        losses = {}
        for name, runner in runners.items():
            value = next(runner, None) if name not in finished else None
            if value is None or not math.isfinite(value):
                finished.add(name)
                value = math.inf
            losses[name] = value
        yield t, losses


def race_rates(kind: "LearningToOptimize", dataset: Any, progress: ProgressCallback = no_progress) -> dict[str, float]:
    """The hand-made optimizers' learning rates tuned on the kind's training problems (cached)."""
    tuning = FixedProblems(kind.problem_source(dataset), "train", kind.options.tuning_problems, 0)
    return tuned_rates(tuning, kind.options.horizon, progress)


def race_record(kind: "LearningToOptimize", dataset: Any, algorithm: Any, seed: int) -> dict[str, np.ndarray]:
    """The Mechanism view's race: log10 loss per step over the horizon on the fixed probe problem, for the
    algorithm and the tuned hand-made optimizers (series named by their titles)."""
    horizon = kind.options.horizon
    rates = race_rates(kind, dataset)
    probe = FixedProblems(kind.problem_source(dataset), "probe", 1, seed)[0].to(algorithm.device)
    curves = {name: np.zeros(horizon + 1) for name in (LEARNED, *rates)}
    for t, losses in race(algorithm, probe, horizon, rates):
        for name, value in losses.items():
            curves[name][t] = value
    with np.errstate(divide="ignore"):
        record = {series_title(name): np.log10(np.maximum(values, 1e-30)) for name, values in curves.items()}
    return {"step": np.arange(horizon + 1, dtype=np.float32), **record}


def series_title(name: str, rates: dict[str, float] | None = None) -> str:
    """"Adam (lr 0.01)"; the learned optimizer as "learned"."""
    if name not in HAND_OPTIMIZERS:
        return name
    title = HAND_OPTIMIZERS[name][0]
    return f"{title} (lr {rates[name]:.3g})" if rates and name in rates else title


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _float_or_inf(value) -> float:
    return math.inf if value is None else float(value)


@dataclass
class L2OResult(ResultProvenance):
    """Optimizee losses on fixed test problems: per optimizer, per problem and step ([problems, steps + 1])."""

    curves: dict[str, np.ndarray]  # series name -> [N, steps + 1]; LEARNED is the algorithm's
    horizon: int
    seed: int
    optimizee: str
    rates: dict[str, float] = field(default_factory=dict)
    split: str = "test"
    kind: str = "learning-to-optimize"

    @property
    def episodes(self) -> int:
        return int(len(self.curves[LEARNED]))

    @property
    def steps(self) -> int:
        return int(self.curves[LEARNED].shape[1] - 1)

    def at(self, name: str, step: int) -> tuple[float, float]:
        """Mean and 95% CI of a series' loss at a step (infinite when a run diverged)."""
        values = self.curves[name][:, min(step, self.steps)]
        return mean_ci95(values) if np.all(np.isfinite(values)) else (math.inf, math.inf)

    @property
    def value(self) -> float:
        return self.at(LEARNED, self.horizon)[0]

    @property
    def ci95(self) -> float:
        return self.at(LEARNED, self.horizon)[1]

    # Read by `workbench eval`'s text output for every kind that is not classification (until it asks
    # setting_text() instead): optimizee problems have no support or query points.
    shots = 0
    queries = 0

    def setting_text(self) -> str:
        """The setting its numbers are for, one line."""
        return (f"{self.episodes} {self.split} problems ({self.optimizee}), seed {self.seed}, loss curves over "
                f"{self.steps} steps, headline at {self.horizon}")

    def reported_steps(self) -> list[int]:
        return sorted({self.horizon, self.steps} & set(range(self.steps + 1)))

    def best_hand_made(self, step: int) -> str | None:
        hand = [name for name in self.curves if name != LEARNED]
        return min(hand, key=lambda name: self.at(name, step)[0]) if hand else None

    def index_fields(self) -> dict[str, Any]:
        return {"test_mse": self.value, "test_ci95": self.ci95}

    def file_stem(self) -> str:
        stem = f"{self.optimizee}-{self.episodes}problems-{self.steps}steps-seed{self.seed}"
        return stem + self.stem_suffix(self.split)

    def summary(self) -> str:
        parts = []
        for step in self.reported_steps():
            row = ", ".join(f"{series_title(name, self.rates)} {self.at(name, step)[0]:.4g}"
                            for name in self.curves)
            parts.append(f"after {step} steps: {row}")
        return f"final loss {FINAL_LOSS.format(self.value, self.ci95)} after {self.horizon} steps on " \
               f"{self.episodes} {self.optimizee} problems; " + "; ".join(parts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"curve_{name}": np.asarray(values, np.float32) for name, values in self.curves.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (a diverged optimizer's infinite loss becomes None), with the curves' summaries."""
        data = {"kind": self.kind, "final_loss": _finite(self.value), "ci95": _finite(self.ci95), "episodes": self.episodes, "horizon": self.horizon,
                "steps": self.horizon, "eval_steps": self.steps, "optimizee": self.optimizee, "seed": self.seed,
                "split": self.split, "rates": {name: float(lr) for name, lr in self.rates.items()},
                "series": list(self.curves)}
        for step in self.reported_steps():
            means = {name: self.at(name, step) for name in self.curves}
            data[f"loss_at_{step}"] = {name: _finite(mean) for name, (mean, _) in means.items()}
            data[f"ci95_at_{step}"] = {name: _finite(ci) for name, (_, ci) in means.items()}
            best = self.best_hand_made(step)
            data[f"best_hand_made_at_{step}"] = best
            data[f"learned_beats_best_at_{step}"] = (best is not None and self.at(LEARNED, step)[0]
                                                     < self.at(best, step)[0])
        data.update({"run": self.run, "dataset": self.dataset, "algorithm": self.algorithm,
                     "checkpoint": self.checkpoint, "created": self.created,
                     "elapsed_s": round(float(self.elapsed_s), 3), "extras": {**self._curve_extras(), **self.extras}})
        return data

    def _curve_extras(self) -> dict[str, Any]:
        """The learned optimizer's loss by step and every optimizer's loss at the reported steps, in the form the
        evaluation views read ("<metric>_by_<x>")."""
        points = sorted({*range(0, self.steps + 1, REPORT_EVERY), *self.reported_steps()})
        extras: dict[str, Any] = {
            "loss_by_step": {str(t): _finite(self.at(LEARNED, t)[0]) for t in points},
            "ci95_by_step": {str(t): _finite(self.at(LEARNED, t)[1]) for t in points},
            "step_note": "the learned optimizer's mean optimizee loss on the test problems"}
        titles = {name: series_title(name, self.rates) for name in self.curves}
        rows = {f"{titles[n]}, {step} steps": (n, step) for step in self.reported_steps() for n in self.curves}
        extras["loss_by_optimizer"] = {row: _finite(self.at(n, step)[0]) for row, (n, step) in rows.items()}
        extras["ci95_by_optimizer"] = {row: _finite(self.at(n, step)[1]) for row, (n, step) in rows.items()}
        extras["episodes_by_optimizer"] = {row: self.episodes for row in rows}
        extras["optimizer_note"] = ("mean optimizee loss of each optimizer on the test problems at the training "
                                    "horizon and beyond it; hand-made learning rates tuned on training problems")
        return extras

    @classmethod
    def from_dict(cls, data: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "L2OResult":
        arrays = arrays or {}
        series = data.get("series") or [LEARNED]
        # "steps" is the headline's step count (the horizon); "eval_steps" how far the curves go.
        steps, count = int(data.get("eval_steps", data.get("steps", 0))), int(data.get("episodes", 0))
        curves = {}
        for name in series:
            stored = arrays.get(f"curve_{name}")
            if stored is None:  # without its arrays: the reported means, one row
                stored = np.full((max(count, 1), steps + 1), np.nan)
                stored[:, min(int(data.get("horizon", steps)), steps)] = _float_or_inf(
                    (data.get(f"loss_at_{data.get('horizon', steps)}") or {}).get(name))
            curves[name] = np.asarray(stored, np.float64)
        extras = {k: v for k, v in (data.get("extras") or {}).items()
                  if not k.startswith(("loss_by_", "ci95_by_", "episodes_by_", "step_note", "optimizer_note"))}
        return cls(curves=curves, horizon=int(data.get("horizon", steps)), seed=int(data.get("seed", 0)),
                   optimizee=str(data.get("optimizee", "")), rates=dict(data.get("rates") or {}),
                   split=data.get("split", "test"), elapsed_s=float(data.get("elapsed_s", 0.0)),
                   checkpoint=data.get("checkpoint", ""), run=data.get("run", ""), dataset=data.get("dataset", ""),
                   algorithm=data.get("algorithm", ""), created=data.get("created", ""), extras=extras,
                   kind=data.get("kind") or "learning-to-optimize")


@register
class LearningToOptimize(ExperimentKind):
    name = "learning-to-optimize"
    title = "Learning to optimize"
    description = ("An optimizer is learned (Andrychowicz et al. 2016): it takes gradient steps on optimizee "
                   "problems (random quadratics, a small MLP or convnet classifying images) and is trained so the "
                   "problems' losses fall fast. Evaluated on fixed test problems over 200 steps (twice the training "
                   "horizon of 100), as mean ± 95% CI of the loss curve, racing Adam, SGD, RMSprop and Nesterov "
                   "with learning rates tuned on training problems.")
    trains_on = "optimizee problems"
    metric = FINAL_LOSS
    views = ("curves", "evaluation", "inspection")
    try_task = "race"
    try_task_help = "Pick an optimizee problem and a seed; watch the learned optimizer race the hand-made ones."
    dataset_fields = ("name", "root", "image_size")
    default_dataset = "glyphs"
    default_algorithm = "lstm-optimizer"
    Options = L2OOptions
    test_tasks = 100

    def settings(self) -> OptimizeeSettings:
        o = self.options
        return OptimizeeSettings(o.optimizee, o.dimension, o.classes, o.batch_size, o.horizon)

    def problem_source(self, dataset: Any, optimizee: str | None = None) -> ProblemSource:
        settings = self.settings()
        if optimizee is not None:
            settings = dataclasses.replace(settings, optimizee=optimizee)
        return ProblemSource(settings, dataset)

    # --- data ------------------------------------------------------------------------------------
    def model_spec(self, dataset, config):
        from workbench.core.models.spec import ModelSpec

        return ModelSpec(in_channels=0, image_size=0, ways=1, num_train_classes=0, kind=self.name)

    def train_sampler(self, dataset, config):
        return ProblemSampler(self.problem_source(dataset), config.training.seed)

    def batch_sampler(self, dataset, config, batch_size: int):
        raise ConfigError("algorithm.name", "learning to optimize trains on optimizee problems, not on labelled "
                          "batches; choose an optimizer algorithm of this kind")

    def fixed_tasks(self, dataset, config, split: str, count: int, seed: int, *, ways=None, shots=None,
                    queries=None):
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries)):
            if value is not None:
                raise ConfigError(name, f"optimizee problems have no {name}; set the problems through the [task] "
                                  "options (optimizee, classes, batch_size)")
        return FixedProblems(self.problem_source(dataset), split, count, seed)

    # --- evaluation ------------------------------------------------------------------------------
    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        """The algorithm's optimizer on each fixed problem (``eval_steps`` on test problems, the horizon on
        validation ones); on test problems the tuned hand-made optimizers race it on the same problems."""
        started = time.monotonic()
        device = torch.device(device)
        algorithm.eval()
        horizon = self.options.horizon
        steps = self.options.eval_steps if split == "test" else horizon
        rates = {}
        if split == "test":
            rates = tuned_rates(tasks.training_problems(self.options.tuning_problems), horizon, progress)
        total = len(tasks)
        curves = {name: np.zeros((total, steps + 1)) for name in (LEARNED, *rates)}
        progress(0, total, f"optimizing {total} {split} problems for {steps} steps")
        for index in range(total):
            problem = tasks[index].to(device)
            curves[LEARNED][index] = trajectory(algorithm.optimizer_steps(problem, steps), steps)
            for name, lr in rates.items():
                curves[name][index] = trajectory(hand_steps(name, lr, problem, steps), steps)
            progress(index + 1, total, f"optimizing: problem {index + 1}/{total}")
        return L2OResult(curves=curves, horizon=min(horizon, steps), seed=int(tasks.seed),
                         optimizee=self.options.optimizee, rates=rates, split=split,
                         elapsed_s=time.monotonic() - started, algorithm=algorithm.name, kind=self.name)

    @classmethod
    def result_from_dict(cls, data, arrays=None):
        return L2OResult.from_dict(data, arrays)

    # --- try a task: the race -------------------------------------------------------------------
    @classmethod
    def race_choices(cls) -> list[tuple[str, str]]:
        """The problems "try a task" offers: (value, title)."""
        return [("quadratic", "Quadratic ‖Wθ − y‖²"), ("mlp", "MLP classifying images"),
                ("convnet", "Convnet classifying images")]

    def race_choice(self) -> str:
        """The problem a run of these options trained on (the race's first choice)."""
        return self.options.optimizee

    def race_on(self, algorithm: Any, dataset: Any, choice: str, seed: int, steps: int,
                progress: ProgressCallback = no_progress):
        """The race on the test problem of ``seed`` of optimizee ``choice`` (this kind's other settings): the
        problem's title, the series' labels ({name: "Adam (lr 0.1)"}, the learned optimizer first; rates are tuned
        first, with progress) and the rows of :func:`race`."""
        kind = LearningToOptimize(dataclasses.replace(self.options, optimizee=choice))
        rates = race_rates(kind, dataset, progress)
        problem = FixedProblems(kind.problem_source(dataset), "test", 1, seed)[0]
        labels = {name: series_title(name, rates) for name in (LEARNED, *rates)}
        rows = race(algorithm, problem.to(algorithm.device), steps, rates)
        return f"{problem.title}, test problem of seed {seed}", labels, rows

"""Few-shot regression: the sine-wave toy of Finn et al. (2017, section 5.1).

Each task is a function to fit from K support points; an algorithm adapts to them and predicts the task's query
points. Scored as mean squared error with a 95% confidence interval over fixed test tasks, after 0, 1 and 10
gradient steps (:data:`REPORTED_STEPS`) and after the algorithm's own test-time steps (the headline).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.data.sine import FixedSineTasks, SineBatchSampler, SineSampler
from workbench.core.errors import ConfigError
from workbench.core.kinds import register
from workbench.core.kinds.base import MSE, ExperimentKind, ResultProvenance
from workbench.core.models.mlp import MLP, MLPRegressor
from workbench.core.stats import mean_ci95

REPORTED_STEPS = (0, 1, 10)  # the paper's figure: before adapting, after one step, after ten


def _step_label(steps: int) -> str:
    return f"{steps} step" if steps == 1 else f"{steps} steps"


@dataclass
class RegressionResult(ResultProvenance):
    """MSE on fixed tasks: the headline after ``steps`` adaptation steps and the values after REPORTED_STEPS."""

    mse: float
    ci95: float
    episodes: int
    shots: int
    queries: int
    seed: int
    steps: int  # the algorithm's own test-time steps, which the headline uses
    mse_by_steps: dict[str, float] = field(default_factory=dict)
    ci95_by_steps: dict[str, float] = field(default_factory=dict)
    split: str = "test"
    per_task_mse: np.ndarray = field(default_factory=lambda: np.zeros((0, len(REPORTED_STEPS)), np.float32))
    kind: str = "regression"

    @property
    def value(self) -> float:
        return self.mse

    def index_fields(self) -> dict[str, Any]:
        return {"test_mse": self.mse, "test_ci95": self.ci95, "test_shots": self.shots}

    def file_stem(self) -> str:
        stem = f"k{self.shots}-{self.episodes}tasks-seed{self.seed}"
        if self.queries != 100:
            stem += f"-q{self.queries}"
        return stem + self.stem_suffix(self.split)

    def summary(self) -> str:
        text = f"MSE {self.mse:.3f} ± {self.ci95:.3f}"
        if not self.mse_by_steps:  # an algorithm without gradient steps
            return text
        others = ", ".join(f"{_step_label(int(k))}: {v:.3f}" for k, v in self.mse_by_steps.items()
                           if int(k) != self.steps)
        return f"{text} after {_step_label(self.steps)}" + (f" ({others})" if others else "")

    def arrays(self) -> dict[str, np.ndarray]:
        return {"per_task_mse": np.asarray(self.per_task_mse, np.float32),
                "reported_steps": np.asarray([int(k) for k in self.mse_by_steps] or REPORTED_STEPS, np.int64)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; a diverged adaptation's NaN or infinite MSE becomes None."""
        return {"kind": self.kind, "mse": _finite(self.mse), "ci95": _finite(self.ci95),
                "mse_by_steps": {k: _finite(v) for k, v in self.mse_by_steps.items()},
                "ci95_by_steps": {k: _finite(v) for k, v in self.ci95_by_steps.items()},
                "episodes": int(self.episodes), "shots": int(self.shots), "queries": int(self.queries),
                "seed": int(self.seed), "steps": int(self.steps), "split": self.split, "run": self.run,
                "dataset": self.dataset, "algorithm": self.algorithm, "checkpoint": self.checkpoint,
                "created": self.created, "elapsed_s": round(float(self.elapsed_s), 3), "extras": dict(self.extras)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "RegressionResult":
        arrays = arrays or {}
        per_task = arrays.get("per_task_mse", np.zeros((0, len(data.get("mse_by_steps") or REPORTED_STEPS))))
        return cls(mse=_float_or_nan(data["mse"]), ci95=_float_or_nan(data["ci95"]), episodes=int(data["episodes"]),
                   shots=int(data["shots"]), queries=int(data.get("queries", 100)), seed=int(data.get("seed", 0)),
                   steps=int(data.get("steps", 0)),
                   mse_by_steps={str(k): _float_or_nan(v) for k, v in (data.get("mse_by_steps") or {}).items()},
                   ci95_by_steps={str(k): _float_or_nan(v) for k, v in (data.get("ci95_by_steps") or {}).items()},
                   split=data.get("split", "test"), per_task_mse=np.asarray(per_task, np.float32),
                   elapsed_s=float(data.get("elapsed_s", 0.0)), checkpoint=data.get("checkpoint", ""),
                   run=data.get("run", ""), dataset=data.get("dataset", ""), algorithm=data.get("algorithm", ""),
                   created=data.get("created", ""), extras=data.get("extras") or {},
                   kind=data.get("kind") or "regression")


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _float_or_nan(value) -> float:
    return float("nan") if value is None else float(value)


def own_test_steps(algorithm: Any) -> int:
    """The algorithm's test-time adaptation steps (its ``adaptation_steps_hparam``); 0 if it declares none."""
    name = getattr(algorithm, "adaptation_steps_hparam", "")
    return int(getattr(algorithm.hparams, name)) if name else 0


def task_mse_by_steps(algorithm: Any, task: Any, counts: list[int], kind: ExperimentKind) -> list[float]:
    """Query MSE of one task after each count of adaptation steps, from one trace of the algorithm's own inner
    loop (``adaptation_trace``); without that hook, only its own adaptation (``adapt`` + ``predict``)."""
    if algorithm.has("adaptation"):
        trace = algorithm.adaptation_trace(task.support_x, task.support_y, task.query_x, task.query_y, ways=1,
                                           steps=max(counts))
        return [float(trace[c][f"query_{kind.metric.key}"]) for c in counts]
    adapted = algorithm.adapt(task.support_x, task.support_y, 1)
    return [kind.score(algorithm.predict(adapted, task.query_x).to(task.query_y.device), task.query_y)]


@register
class FewShotRegression(ExperimentKind):
    name = "regression"
    title = "Few-shot regression"
    description = ("Each task is a function to fit from K points (the sine toy: amplitude in [0.1, 5], phase in "
                   "[0, pi], x in [-5, 5]). Meta-train on many tasks, then adapt to each test task's K support "
                   "points and predict its query points. Reported as mean squared error with a 95% confidence "
                   "interval over fixed test tasks, after 0, 1 and 10 gradient steps.")
    trains_on = "regression tasks"
    metric = MSE
    views = ("curves", "fit", "adaptation", "evaluation", "try_points", "inspection")
    try_task = "points"
    try_task_help = "Click points on the canvas (or type them) to make a support set; watch the model adapt."
    dataset_fields = ("name", "shots", "queries")
    default_dataset = "sine"
    default_algorithm = "maml"
    test_tasks = 600

    # --- what algorithms take from the kind ----------------------------------------------------------
    def output_size(self, ways: int) -> int:
        return 1

    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets)

    def score(self, outputs, targets) -> float:
        return float(F.mse_loss(outputs.detach(), targets))

    def predictions(self, outputs):
        return outputs

    def build_network(self, spec, width: int, *, running_stats: bool = True) -> nn.Module:
        return MLPRegressor(self.output_size(spec.ways), spec.in_channels, width)

    def build_encoder(self, spec, width: int) -> nn.Module:
        return MLP(spec.in_channels, width)

    # --- data ------------------------------------------------------------------------------------
    def model_spec(self, dataset, config):
        from workbench.core.models.spec import ModelSpec

        return ModelSpec(in_channels=1, image_size=0, ways=1, num_train_classes=0, kind=self.name)

    def train_sampler(self, dataset, config):
        # One meta-batch per block: see SineSampler.
        return SineSampler(dataset, config.train_shots, config.train_queries, config.training.seed,
                           block=config.training.meta_batch)

    def batch_sampler(self, dataset, config, batch_size: int):
        return SineBatchSampler(dataset, batch_size, config.training.seed)

    def fixed_tasks(self, dataset, config, split: str, count: int, seed: int, *, ways=None, shots=None,
                    queries=None):
        if ways not in (None, 1):
            raise ConfigError("ways", f"regression tasks have one output, so ways ({ways}) does not apply; "
                              "leave it out")
        return FixedSineTasks(dataset, config.dataset.shots if shots is None else shots,
                              config.dataset.queries if queries is None else queries, count, seed, split)

    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        """Adapt to each fixed task; MSE on its queries after REPORTED_STEPS and the algorithm's own steps."""
        device = torch.device(device)
        started = time.monotonic()
        algorithm.eval()
        own = own_test_steps(algorithm)
        counts = sorted({*REPORTED_STEPS, own}) if algorithm.has("adaptation") else [own]
        total = len(tasks)
        per_task = np.zeros((total, len(counts)), np.float64)
        report_every = max(1, total // 100)
        progress(0, total, f"evaluating on {total} {split} tasks")
        for index in range(total):
            per_task[index] = task_mse_by_steps(algorithm, tasks[index].to(device), counts, self)
            if (index + 1) % report_every == 0 or index + 1 == total:
                progress(index + 1, total, f"evaluating: task {index + 1}/{total}")
        stats = {count: mean_ci95(per_task[:, column]) for column, count in enumerate(counts)}
        # Without a trace only the algorithm's own adaptation was measured: no per-step numbers. With one, the
        # headline's count is reported too, so a paired test on it has per-task values.
        reported = counts if algorithm.has("adaptation") else []
        result = RegressionResult(
            mse=stats[own][0], ci95=stats[own][1], episodes=total, shots=tasks.shots, queries=tasks.queries,
            seed=int(tasks.seed), steps=own, mse_by_steps={str(c): stats[c][0] for c in reported},
            ci95_by_steps={str(c): stats[c][1] for c in reported}, split=split,
            per_task_mse=per_task[:, [counts.index(c) for c in reported] or [0]].astype(np.float32),
            elapsed_s=time.monotonic() - started, algorithm=algorithm.name, kind=self.name)
        extras = algorithm.evaluation_extras(tasks)
        if extras:
            result.extras = dict(extras)
        return result

    @classmethod
    def result_from_dict(cls, data, arrays=None):
        return RegressionResult.from_dict(data, arrays)

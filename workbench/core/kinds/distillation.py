"""Dataset distillation (Wang, Zhu, Torralba and Efros 2018): learn a few synthetic images per class, and the
learning rates to train on them, such that a network trained on them for a few gradient steps classifies real
images of those classes well.

The problem is carved out of an image dataset: ``classes`` classes of its meta-train split (fixed by
``class_seed``), each class's images divided into real training images (what is distilled), validation images and
test images. Training feeds the algorithm batches of the real training images; it learns the distilled set.

Evaluation trains fresh networks, one per seed: on the distilled set (with the learned learning rates), and, as
baselines from the same initialisation, on the same number of random real training images per class and on all the
real training images (``baseline_steps`` Adam steps each). It reports their accuracy on the held-out real images
as mean ± 95% CI over the seeds; the distilled set's is the headline. Validation measures the distilled set alone.

An algorithm of this kind provides, besides ``adapt`` (a fresh network trained on given images by the learned
procedure) and ``predict``: ``distilled_set()`` -> (images [M, C, H, W] as model input, labels [M]) and
``fresh_network()`` -> an untrained network as the distilled set expects it (the fixed initialisation, or one
drawn from torch's random stream).
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
from workbench.core.data.episodes import LabeledBatch
from workbench.core.errors import ConfigError, DatasetError
from workbench.core.hparams import hparam
from workbench.core.kinds import register
from workbench.core.kinds.base import ACCURACY, ExperimentKind, ResultProvenance
from workbench.core.stats import mean_ci95

INITS = ("fixed", "random")
# Training sets a fresh network learns from in a test evaluation (validation: the distilled set alone).
DISTILLED, RANDOM_REAL, FULL_DATA, REAL_LEARNED_LRS = ("distilled", "random real", "full data",
                                                       "random real, learned rates")
TRAINING_SETS = (DISTILLED, RANDOM_REAL, FULL_DATA, REAL_LEARNED_LRS)
BASELINE_BATCH = 64  # real images per Adam step of the full-data baseline


@dataclass
class DistillationOptions:
    classes: int = hparam(10, "Classes of the problem, drawn by class_seed from the dataset's meta-train split.",
                          low=2, high=1000)
    images_per_class: int = hparam(1, "Synthetic images learned per class (Wang et al. 2018: 1 or 10).", low=1,
                                   high=100)
    init: str = hparam("fixed", "Initialisation of the networks trained on the distilled set (Wang et al. 2018, "
                       "sec. 3): fixed: one initialisation, kept in the run and used by every evaluation (the "
                       "images fit that network); random: a new random initialisation at every step, so the "
                       "images must teach any network of the architecture.", choices=INITS)
    distill_steps: int = hparam(10, "Inner steps: gradient steps of a network on the distilled set, each on all of it "
                                "with its own learned learning rate; the meta-gradient flows back through all of "
                                "them (Wang et al. 2018: 10 steps, repeated for 3 epochs).", low=1, high=100)
    val_per_class: int = hparam(3, "Real images per class held out for validation.", low=0, high=1000)
    test_per_class: int = hparam(5, "Real images per class held out for the test evaluation.", low=1, high=1000)
    class_seed: int = hparam(0, "Seed that picks the classes and divides their images.", low=0, high=2**31 - 1)
    baseline_steps: int = hparam(100, "Adam steps of the baselines' fresh networks (random real images, full "
                                 "data) in a test evaluation.", low=1, high=100_000)
    baseline_lr: float = hparam(1e-3, "Adam learning rate of the baselines' fresh networks.", low=1e-6, high=1.0,
                                log_scale=True)


@dataclass
class DistillationProblem:
    """Real images (uint8 [N, C, H, W]) of the chosen classes, labelled 0..classes-1, in three parts."""

    class_names: list[str]
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]]  # "train", "val", "test" -> (images, labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def make_problem(dataset: Any, options: DistillationOptions) -> DistillationProblem:
    """Pick the classes and divide each class's images; DatasetError naming the [task] setting to change."""
    split = dataset.split("train")
    if split.num_classes < options.classes:
        raise DatasetError(f"the meta-train split of '{dataset.name}' has {split.num_classes} classes, fewer than "
                           f"task.classes = {options.classes}; lower task.classes to at most {split.num_classes}")
    generator = torch.Generator().manual_seed(options.class_seed)
    chosen = torch.randperm(split.num_classes, generator=generator)[:options.classes].sort().values.tolist()
    held_out = options.test_per_class + options.val_per_class
    need = held_out + options.images_per_class
    rows: dict[str, list[torch.Tensor]] = {"test": [], "val": [], "train": []}
    for class_id in chosen:
        mine = torch.nonzero(split.labels == class_id).flatten()
        if len(mine) < need:
            raise DatasetError(f"class '{split.class_names[class_id]}' of '{dataset.name}' has {len(mine)} images; "
                               f"task.test_per_class + task.val_per_class + task.images_per_class = {need} are "
                               "needed; lower one of them")
        mine = mine[torch.randperm(len(mine), generator=generator)]
        rows["test"].append(mine[:options.test_per_class])
        rows["val"].append(mine[options.test_per_class:held_out])
        rows["train"].append(mine[held_out:])
    remap = torch.full((split.num_classes,), -1, dtype=torch.long)
    remap[torch.tensor(chosen)] = torch.arange(len(chosen))
    parts = {}
    for name, chunks in rows.items():
        index = torch.cat(chunks)
        parts[name] = (split.images[index], remap[split.labels[index]])
    return DistillationProblem([split.class_names[c] for c in chosen], parts)


class RealBatchSampler:
    """Batches of the problem's real training images: all of them (shuffled) when they fit in a batch, else a
    random ``batch_size`` of them."""

    def __init__(self, problem: DistillationProblem, spec: Any, batch_size: int, seed: int):
        self.images, self.labels = problem.parts["train"]
        self.spec = spec
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self) -> LabeledBatch:
        rows = torch.randperm(len(self.labels), generator=self.generator)[:self.batch_size]
        return LabeledBatch(self.spec.normalize(self.images[rows]), self.labels[rows])


@dataclass
class DistillationTasks:
    """What an evaluation needs: the problem, the held-out images of ``split`` and one seed per fresh network."""

    problem: DistillationProblem
    spec: Any
    split: str
    count: int
    seed: int
    baselines: bool  # also train the baselines' networks (test evaluations; validation skips them)

    def __len__(self) -> int:
        return self.count

    @property
    def seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.count)]

    @property
    def queries(self) -> int:
        """Held-out images per class."""
        return len(self.problem.parts[self.split][1]) // max(1, self.problem.num_classes)

    def held_out(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.problem.parts[self.split]
        return self.spec.normalize(images).to(device), labels.to(device)

    def real_training(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.problem.parts["train"]
        return self.spec.normalize(images).to(device), labels.to(device)

    def random_real_rows(self, per_class: int, seed: int) -> torch.Tensor:
        """``per_class`` random training images of every class (rows into the training part), fixed by ``seed``."""
        labels = self.problem.parts["train"][1]
        generator = torch.Generator().manual_seed(seed)
        picked = []
        for label in range(self.problem.num_classes):
            mine = torch.nonzero(labels == label).flatten()
            picked.append(mine[torch.randperm(len(mine), generator=generator)[:per_class]])
        return torch.cat(picked)


@dataclass
class DistillationResult(ResultProvenance):
    """Accuracy on held-out real images of fresh networks trained on the distilled set (the headline) and, in a
    test evaluation, on the baselines' training sets; mean ± 95% CI over ``episodes`` networks (seeds)."""

    accuracy: float
    ci95: float
    episodes: int  # fresh networks per training set
    shots: int  # distilled images per class
    queries: int  # held-out real images per class
    classes: int
    seed: int
    split: str = "test"
    scores: dict[str, float] = field(default_factory=dict)  # training set -> mean accuracy
    intervals: dict[str, float] = field(default_factory=dict)  # training set -> 95% CI
    per_network: dict[str, np.ndarray] = field(default_factory=dict)  # training set -> accuracy per network
    init: str = ""
    inner_steps: int = 0
    kind: str = "distillation"

    @property
    def value(self) -> float:
        return self.accuracy

    def index_fields(self) -> dict[str, Any]:
        return {"test_accuracy": self.accuracy, "test_ci95": self.ci95, "test_shots": self.shots}

    def file_stem(self) -> str:
        stem = f"{self.classes}c{self.shots}ipc-{self.episodes}nets-seed{self.seed}"
        return stem + self.stem_suffix(self.split)

    def summary(self) -> str:
        parts = [f"{name} {100 * self.scores[name]:.2f}% ± {100 * self.intervals.get(name, math.nan):.2f}"
                 for name in TRAINING_SETS if name in self.scores]
        return (f"{'; '.join(parts)} ({self.classes} classes, {self.shots} image(s) per class, {self.episodes} "
                f"fresh networks, {self.split} images, seed {self.seed})")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"per_episode_accuracy": np.asarray(self.per_network.get(DISTILLED, np.zeros(0)), np.float32)}
        for name, values in self.per_network.items():
            if name != DISTILLED:
                out[f"per_network_{_key(name)}"] = np.asarray(values, np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON; the accuracy of every training set is also in ``extras`` (a breakdown by training set)."""
        extras = dict(self.extras)
        if len(self.scores) > 1:
            extras.update({"accuracy_by_training_set": {k: _finite(v) for k, v in self.scores.items()},
                           "ci95_by_training_set": {k: _finite(v) for k, v in self.intervals.items()},
                           "episodes_by_training_set": {k: int(self.episodes) for k in self.scores},
                           "training_set_note": "fresh networks from the same initialisations; baselines trained "
                                                "with Adam on real training images"})
        return {"kind": self.kind, "accuracy": _finite(self.accuracy), "ci95": _finite(self.ci95),
                "episodes": int(self.episodes), "shots": int(self.shots), "queries": int(self.queries),
                "classes": int(self.classes), "seed": int(self.seed), "split": self.split, "init": self.init,
                "inner_steps": int(self.inner_steps),
                "scores": {k: _finite(v) for k, v in self.scores.items()},
                "intervals": {k: _finite(v) for k, v in self.intervals.items()},
                "run": self.run, "dataset": self.dataset, "algorithm": self.algorithm,
                "checkpoint": self.checkpoint, "created": self.created,
                "elapsed_s": round(float(self.elapsed_s), 3), "extras": extras}

    @classmethod
    def from_dict(cls, data: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "DistillationResult":
        arrays = arrays or {}
        scores = {k: _float_or_nan(v) for k, v in (data.get("scores") or {}).items()}
        per_network = {name: np.asarray(arrays[f"per_network_{_key(name)}"], np.float32) for name in scores
                       if f"per_network_{_key(name)}" in arrays}
        if "per_episode_accuracy" in arrays:
            per_network[DISTILLED] = np.asarray(arrays["per_episode_accuracy"], np.float32)
        extras = {k: v for k, v in (data.get("extras") or {}).items() if not k.endswith("_by_training_set")
                  and k != "training_set_note"}
        return cls(accuracy=_float_or_nan(data["accuracy"]), ci95=_float_or_nan(data["ci95"]),
                   episodes=int(data["episodes"]), shots=int(data.get("shots", 1)),
                   queries=int(data.get("queries", 0)), classes=int(data.get("classes", 0)),
                   seed=int(data.get("seed", 0)), split=data.get("split", "test"), scores=scores,
                   intervals={k: _float_or_nan(v) for k, v in (data.get("intervals") or {}).items()},
                   per_network=per_network, init=data.get("init", ""), inner_steps=int(data.get("inner_steps", 0)),
                   elapsed_s=float(data.get("elapsed_s", 0.0)), checkpoint=data.get("checkpoint", ""),
                   run=data.get("run", ""), dataset=data.get("dataset", ""), algorithm=data.get("algorithm", ""),
                   created=data.get("created", ""), extras=extras, kind=data.get("kind") or "distillation")


def _key(name: str) -> str:
    return name.replace(",", "").replace(" ", "_")


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _float_or_nan(value) -> float:
    return float("nan") if value is None else float(value)


class DistillNet(nn.Module):
    """Three 3x3 convolutions of stride 2 with ReLU, then a linear head (28 -> 14 -> 7 -> 4 pixels). No
    normalisation layer: a network trained on a handful of images must not depend on the statistics of the batch
    it classifies. Strided convolutions instead of max-pooling: the meta-gradient differentiates every inner step
    twice, and on a CPU this runs twice as fast as convolutions at full size followed by pooling."""

    def __init__(self, classes: int, in_channels: int, width: int, image_size: int):
        super().__init__()
        blocks, channels, size = [], in_channels, image_size
        for _ in range(3):
            blocks += [nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU()]
            channels, size = width, (size + 1) // 2
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.out_dim = width * size * size
        self.head = nn.Linear(self.out_dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_with_adam(network: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                    generator: torch.Generator) -> nn.Module:
    """The baselines' training: ``steps`` Adam steps on batches of at most BASELINE_BATCH of (x, y)."""
    network.requires_grad_(True)  # a copy of a fixed initialisation comes frozen
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    with torch.enable_grad():
        for _ in range(steps):
            rows = torch.randperm(len(y), generator=generator)[:BASELINE_BATCH].to(y.device)
            loss = F.cross_entropy(network(x[rows]), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    network.eval()
    return network


@torch.no_grad()
def _accuracy(logits_or_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits_or_probs.argmax(-1) == labels).float().mean())


@register
class DatasetDistillation(ExperimentKind):
    name = "distillation"
    title = "Dataset distillation"
    description = ("Learn N synthetic images per class, and the learning rates to train on them, such that a "
                   "network trained on them for a few gradient steps classifies real images of those classes well "
                   "(Wang et al. 2018). The classes are a subset of an image dataset. Reported as accuracy on "
                   "held-out real images of fresh networks trained on the distilled set, against the same number "
                   "of random real images and against all the real training images, as mean ± 95% CI over seeds.")
    trains_on = "labelled batches"
    metric = ACCURACY
    views = ("curves", "evaluation", "inspection")
    try_task = ""
    try_task_help = ("No task to try: a distilled set teaches its own fixed classes, not classes you bring. See its "
                     "images in the Mechanism view and, in the Evaluation view, fresh networks trained on it against "
                     "random real images and the full data.")
    dataset_fields = ("name", "root", "split", "image_size", "rotations", "download", "split_seed")
    default_dataset = "glyphs"
    default_algorithm = "dataset-distillation"
    Options = DistillationOptions
    test_tasks = 10  # fresh networks per training set

    def test_task_count(self, dataset_name: str) -> int:
        return self.test_tasks  # networks, not episodes: the dataset's episode count does not apply

    # --- what algorithms take from the kind ----------------------------------------------------------
    def output_size(self, ways: int) -> int:
        return ways

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def score(self, outputs, targets) -> float:
        return _accuracy(outputs, targets)

    def predictions(self, outputs):
        return outputs.softmax(dim=-1)

    def build_network(self, spec, width: int, *, running_stats: bool = True) -> nn.Module:
        return DistillNet(self.output_size(spec.ways), spec.in_channels, width, spec.image_size)

    def build_encoder(self, spec, width: int) -> nn.Module:
        return self.build_network(spec, width).features

    # --- data ------------------------------------------------------------------------------------
    def problem(self, dataset) -> DistillationProblem:
        return make_problem(dataset, self.options)

    def model_spec(self, dataset, config):
        from workbench.core.models.spec import ModelSpec

        spec = dataset.spec
        return ModelSpec(in_channels=spec.channels, image_size=spec.image_size, ways=self.options.classes,
                         num_train_classes=self.options.classes, kind=self.name)

    def train_sampler(self, dataset, config):
        return self.batch_sampler(dataset, config, 256)

    def batch_sampler(self, dataset, config, batch_size: int):
        return RealBatchSampler(self.problem(dataset), dataset.spec, batch_size, config.training.seed)

    def has_validation(self, dataset) -> bool:
        return self.options.val_per_class > 0

    def fixed_tasks(self, dataset, config, split: str, count: int, seed: int, *, ways=None, shots=None,
                    queries=None):
        """``count`` fresh networks (seeds ``seed``, ``seed + 1``, ...) scored on the ``split`` images. The
        distilled set fixes the images per class, and the [task] options the held-out images, so ``shots`` and
        ``queries`` (which the Evaluation view always sends) do not apply and are ignored."""
        if ways not in (None, self.options.classes):
            raise ConfigError("ways", f"a distillation run classifies its {self.options.classes} classes; ways "
                              f"({ways}) does not apply, leave it out")
        if split not in ("val", "test"):
            raise ConfigError("split", f"'{split}' is not a part of the distillation problem; use val or test")
        return DistillationTasks(self.problem(dataset), dataset.spec, split, count, seed, baselines=split != "val")

    # --- evaluation ------------------------------------------------------------------------------
    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        """Fresh networks per seed on each training set, scored on the held-out real images."""
        device = torch.device(device)
        started = time.monotonic()
        algorithm.eval()
        query_x, query_y = tasks.held_out(device)
        distilled_x, distilled_y = algorithm.distilled_set()
        per_class = int(torch.bincount(distilled_y.cpu()).max())
        names = list(TRAINING_SETS) if tasks.baselines else [DISTILLED]
        scores = {name: np.zeros(len(tasks), np.float64) for name in names}
        progress(0, len(tasks), f"training {len(tasks)} fresh networks on {len(names)} training set(s)")
        for index, seed in enumerate(tasks.seeds):
            scores[DISTILLED][index] = self._learned_accuracy(algorithm, seed, distilled_x, distilled_y, query_x,
                                                              query_y)
            if tasks.baselines:
                self._baselines(algorithm, tasks, seed, per_class, (query_x, query_y), scores, index)
            progress(index + 1, len(tasks), f"evaluating: network {index + 1}/{len(tasks)}")
        stats = {name: mean_ci95(values) for name, values in scores.items()}
        return DistillationResult(
            accuracy=stats[DISTILLED][0], ci95=stats[DISTILLED][1], episodes=len(tasks), shots=per_class,
            queries=tasks.queries, classes=tasks.problem.num_classes, seed=int(tasks.seed), split=split,
            scores={k: v[0] for k, v in stats.items()}, intervals={k: v[1] for k, v in stats.items()},
            per_network={k: v.astype(np.float32) for k, v in scores.items()},
            init=str(getattr(algorithm, "init_mode", "")), inner_steps=int(getattr(algorithm, "inner_steps", 0)),
            elapsed_s=time.monotonic() - started, algorithm=algorithm.name, kind=self.name)

    def _learned_accuracy(self, algorithm, seed: int, x, y, query_x, query_y) -> float:
        """A fresh network (drawn from ``seed``) trained on (x, y) by the algorithm's learned procedure."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            adapted = algorithm.adapt(x, y, self.options.classes)
            return _accuracy(algorithm.predict(adapted, query_x), query_y)

    def _baselines(self, algorithm, tasks, seed: int, per_class: int, held_out, scores, index: int) -> None:
        """Random real images (by the learned procedure and with Adam) and the full data (with Adam), each from
        the initialisation the distilled set's network of this seed had."""
        options, (query_x, query_y) = self.options, held_out
        real_x, real_y = tasks.real_training(query_x.device)
        rows = tasks.random_real_rows(per_class, seed).to(real_x.device)
        scores[REAL_LEARNED_LRS][index] = self._learned_accuracy(algorithm, seed, real_x[rows], real_y[rows],
                                                                 query_x, query_y)
        for name, (x, y) in ((RANDOM_REAL, (real_x[rows], real_y[rows])), (FULL_DATA, (real_x, real_y))):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                network = algorithm.fresh_network()
            generator = torch.Generator().manual_seed(seed)
            train_with_adam(network, x, y, options.baseline_steps, options.baseline_lr, generator)
            with torch.no_grad():
                scores[name][index] = _accuracy(network(query_x), query_y)

    @classmethod
    def result_from_dict(cls, data, arrays=None):
        return DistillationResult.from_dict(data, arrays)

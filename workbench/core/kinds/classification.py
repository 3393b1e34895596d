"""Few-shot classification, the workbench's first kind: N-way K-shot episodes of images, scored by accuracy with
a 95% confidence interval, per-class accuracy, a confusion matrix and every query's prediction (for views of
misclassified images).

Every algorithm evaluated with the same split, way/shot/query setting, count and seed sees the same episodes
(:class:`FixedEpisodes`), so their numbers compare fairly. ``dataset.episode_domains = "within"`` draws every
training, validation and test episode from one domain (an alphabet); such a result says so (``domains``) and is
saved under its own file name.
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

from workbench.core.data.base import ClassSplit, PreprocessSpec, ProgressCallback, no_progress
from workbench.core.data.descriptors import episode_descriptors
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes, LabeledBatch, episode_options
from workbench.core.errors import DatasetError
from workbench.core.kinds import register
from workbench.core.kinds.base import ACCURACY, ExperimentKind
from workbench.core.models.conv4 import Conv4, Conv4Classifier
from workbench.core.stats import mean_ci95

# JSON keeps the full confusion matrix only up to this many classes; the .npz always has it.
CONFUSION_JSON_LIMIT = 64
QUERY_FIELDS = ("episode", "query", "true", "pred", "row", "confidence")


@dataclass
class EvalResult:
    accuracy: float
    ci95: float
    episodes: int
    ways: int
    shots: int
    queries: int
    seed: int
    split: str = "test"
    per_episode_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    per_class_accuracy: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    confusion_classes: list[str] = field(default_factory=list)
    # Arrays of equal length, one entry per query: episode index, query index in the episode,
    # true and predicted class ids (indexes into the split's class_names), the row of the query
    # image in the split (for thumbnails) and the predicted class probability.
    query_records: dict[str, np.ndarray] = field(default_factory=dict)
    elapsed_s: float = 0.0
    checkpoint: str = ""  # "best" / "last" when evaluated from a run
    run: str = ""
    dataset: str = ""
    algorithm: str = ""
    created: str = ""
    # Algorithm-specific additions (e.g. learned sample weights), from evaluation_extras().
    extras: dict[str, Any] = field(default_factory=dict)
    kind: str = "classification"
    domains: str = "any"  # "within": every episode's classes came from one domain (dataset.episode_domains)

    @property
    def value(self) -> float:
        """The kind's headline metric (every kind's result has ``value`` and ``ci95``)."""
        return self.accuracy

    def index_fields(self) -> dict[str, Any]:
        """The run-index columns this result fills."""
        return {"test_accuracy": self.accuracy, "test_ci95": self.ci95, "test_ways": self.ways,
                "test_shots": self.shots}

    def file_stem(self) -> str:
        stem = f"{self.ways}w{self.shots}s-{self.episodes}ep-seed{self.seed}"
        if self.queries != 15:
            stem += f"-q{self.queries}"
        if self.split != "test":
            stem += f"-{self.split}"
        if self.domains != "any":
            stem += f"-{self.domains}"
        if self.checkpoint == "last":
            stem += "-last"
        return stem

    def misclassified(self) -> dict[str, np.ndarray]:
        """The query records of wrong predictions."""
        if not self.query_records:
            return {}
        wrong = self.query_records["true"] != self.query_records["pred"]
        return {k: v[wrong] for k, v in self.query_records.items()}

    def per_class_extremes(self, count: int = 5) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
        """The ``count`` best and worst classes by accuracy."""
        ranked = sorted(self.per_class_accuracy.items(), key=lambda kv: (kv[1], kv[0]))
        return ranked[::-1][:count], ranked[:count]

    def summary(self) -> str:
        within = ", each within one domain" if self.domains == "within" else ""
        return (f"{100 * self.accuracy:.2f}% ± {100 * self.ci95:.2f}% ({self.ways}-way {self.shots}-shot, "
                f"{self.episodes} {self.split} episodes{within}, seed {self.seed})")

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"per_episode_accuracy": np.asarray(self.per_episode_accuracy, np.float32),
               "confusion": np.asarray(self.confusion, np.int64)}
        for key, value in self.query_records.items():
            out[f"query_{key}"] = np.asarray(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: scalars, per-class accuracy, the confusion matrix when small; the query
        records and per-episode accuracies live in the .npz beside a saved evaluation."""
        best, worst = self.per_class_extremes()
        small = len(self.confusion_classes) <= CONFUSION_JSON_LIMIT
        return {
            "accuracy": float(self.accuracy), "ci95": float(self.ci95), "episodes": int(self.episodes),
            "ways": int(self.ways), "shots": int(self.shots), "queries": int(self.queries), "seed": int(self.seed),
            "split": self.split, "elapsed_s": round(float(self.elapsed_s), 3), "checkpoint": self.checkpoint,
            "run": self.run, "dataset": self.dataset, "algorithm": self.algorithm, "created": self.created,
            "per_class": {k: round(float(v), 6) for k, v in self.per_class_accuracy.items()},
            "per_class_best": [[k, round(float(v), 6)] for k, v in best],
            "per_class_worst": [[k, round(float(v), 6)] for k, v in worst],
            "confusion_classes": list(self.confusion_classes),
            "confusion": np.asarray(self.confusion).tolist() if small else None,
            "misclassified": int(len(self.misclassified().get("true", []))),
            "extras": _jsonable(self.extras), "kind": self.kind, "episode_domains": self.domains,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "EvalResult":
        arrays = arrays or {}
        confusion = arrays.get("confusion")
        if confusion is None:
            confusion = np.asarray(data.get("confusion") or np.zeros((0, 0)), np.int64)
        queries = {key[len("query_"):]: value for key, value in arrays.items() if key.startswith("query_")}
        return cls(
            accuracy=float(data["accuracy"]), ci95=float(data["ci95"]), episodes=int(data["episodes"]),
            ways=int(data["ways"]), shots=int(data["shots"]), queries=int(data.get("queries", 15)),
            seed=int(data.get("seed", 0)), split=data.get("split", "test"),
            per_episode_accuracy=np.asarray(arrays.get("per_episode_accuracy", np.zeros(0)), np.float32),
            per_class_accuracy={k: float(v) for k, v in (data.get("per_class") or {}).items()},
            confusion=confusion, confusion_classes=list(data.get("confusion_classes") or []),
            query_records=queries, elapsed_s=float(data.get("elapsed_s", 0.0)),
            checkpoint=data.get("checkpoint", ""), run=data.get("run", ""), dataset=data.get("dataset", ""),
            algorithm=data.get("algorithm", ""), created=data.get("created", ""), extras=data.get("extras") or {},
            kind=data.get("kind") or "classification", domains=data.get("episode_domains") or "any")


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def evaluate_episodes(algorithm: Any, episodes: FixedEpisodes, device: torch.device | str = "cpu",
             progress: ProgressCallback = no_progress, split: str = "test") -> EvalResult:
    """Adapt on each fixed episode's support set and score its queries."""
    device = torch.device(device)
    started = time.monotonic()
    algorithm.eval()
    total = len(episodes)
    sampler = episodes.sampler
    class_names = episodes.split.class_names
    per_episode = np.zeros(total, np.float32)
    episode_domain: list[str] = []  # with "within" episodes: each episode's domain (a mixture's: its dataset)
    groups = episodes.split.class_groups if getattr(episodes, "domains", "any") == "within" else None
    records = {"episode": [], "query": [], "true": [], "pred": [], "row": [], "confidence": []}
    report_every = max(1, total // 100)
    progress(0, total, f"evaluating on {total} {split} episodes")
    for index in range(total):
        episode = episodes[index].to(device)
        if "descriptors" in getattr(algorithm, "capabilities", ()):  # zero-shot: class descriptors, not images
            descriptors = episode_descriptors(episodes.split, episode.class_ids).to(device)
            adapted = algorithm.adapt_from_descriptors(descriptors)
        else:
            adapted = algorithm.adapt(episode.support_x, episode.support_y, episode.ways)
        probs = algorithm.predict(adapted, episode.query_x).detach().float().cpu()
        confidence, predicted = probs.max(dim=-1)
        truth = episode.query_y.cpu()
        per_episode[index] = float((predicted == truth).float().mean())
        if groups:
            episode_domain.append(groups[episode.class_ids[0]])
        class_ids = torch.as_tensor(episode.class_ids)
        n = truth.numel()
        records["episode"].append(np.full(n, index, np.int32))
        records["query"].append(np.arange(n, dtype=np.int32))
        records["true"].append(class_ids[truth].numpy().astype(np.int32))
        records["pred"].append(class_ids[predicted].numpy().astype(np.int32))
        rows = episode.query_index if episode.query_index is not None else torch.full((n,), -1)
        records["row"].append(rows.cpu().numpy().astype(np.int64))
        records["confidence"].append(confidence.numpy().astype(np.float32))
        if (index + 1) % report_every == 0 or index + 1 == total:
            progress(index + 1, total, f"evaluating: episode {index + 1}/{total}")
    query_records = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in records.items()}

    # Per-class accuracy and the confusion matrix over the classes that appeared.
    true_ids, pred_ids = query_records["true"], query_records["pred"]
    seen = np.unique(np.concatenate([true_ids, pred_ids])) if true_ids.size else np.zeros(0, np.int32)
    confusion = np.zeros((len(seen), len(seen)), np.int64)
    if true_ids.size:
        np.add.at(confusion, (np.searchsorted(seen, true_ids), np.searchsorted(seen, pred_ids)), 1)
    per_class = {}
    for i, c in enumerate(seen):
        count = confusion[i].sum()
        if count:
            per_class[class_names[int(c)]] = float(confusion[i, i] / count)
    accuracy, ci95 = mean_ci95(per_episode)
    result = EvalResult(
        accuracy=accuracy, ci95=ci95, episodes=total, ways=sampler.ways, shots=sampler.shots,
        queries=sampler.queries, seed=int(episodes.seed), split=split, per_episode_accuracy=per_episode,
        per_class_accuracy=per_class, confusion=confusion, confusion_classes=[class_names[int(c)] for c in seen],
        query_records=query_records, elapsed_s=time.monotonic() - started, algorithm=algorithm.name,
        domains=getattr(episodes, "domains", "any"))
    # Hook: algorithms can add their own results (e.g. learned sample weights).
    extras = algorithm.evaluation_extras(episodes)
    result.extras = {**accuracy_by_domain(per_episode, episode_domain), **dict(extras or {})}
    return result


def accuracy_by_domain(per_episode: np.ndarray, domains: list[str]) -> dict[str, Any]:
    """Mean accuracy ± 95% CI of the episodes of each domain, when every episode came from one domain (a mixture's
    domains are its datasets: accuracy per dataset). Empty otherwise."""
    if not domains:
        return {}
    names = sorted(set(domains))
    labels = np.asarray(domains)
    stats = {name: mean_ci95(per_episode[labels == name]) for name in names}
    return {"accuracy_by_domain": {name: float(stats[name][0]) for name in names},
            "ci95_by_domain": {name: float(stats[name][1]) for name in names},
            "episodes_by_domain": {name: int((labels == name).sum()) for name in names},
            "domain_note": "episodes drawn within one domain each; mean over that domain's episodes"}


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


class ImageKind(ExperimentKind):
    """Shared by the kinds whose data are the image datasets (few-shot and noisy-label classification)."""

    trains_on = "image episodes"
    metric = ACCURACY
    default_dataset = "glyphs"
    test_tasks = 600
    dataset_fields = (*ExperimentKind.dataset_fields, "episode_domains", "sources")

    def output_size(self, ways: int) -> int:
        return ways

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs, targets)

    def score(self, outputs, targets) -> float:
        return float((outputs.argmax(dim=-1) == targets).float().mean())

    def predictions(self, outputs):
        return outputs.softmax(dim=-1)

    def build_network(self, spec, width: int, *, running_stats: bool = True) -> nn.Module:
        return Conv4Classifier(self.output_size(spec.ways), spec.in_channels, width, spec.image_size,
                               track_running_stats=running_stats)

    def build_encoder(self, spec, width: int) -> nn.Module:
        return Conv4(spec.in_channels, width, spec.image_size)

    def model_spec(self, dataset, config):
        from workbench.core.models.spec import ModelSpec

        spec = dataset.spec
        return ModelSpec(in_channels=spec.channels, image_size=spec.image_size, ways=config.train_ways,
                         num_train_classes=dataset.split("train").num_classes, kind=self.name)

    def train_sampler(self, dataset, config):
        return EpisodeSampler(dataset.split("train"), dataset.spec, config.train_ways, config.train_shots,
                              config.train_queries, seed=config.training.seed, split_name="train",
                              dataset_name=dataset.name, **episode_options(vars(config.dataset)))

    def batch_sampler(self, dataset, config, batch_size: int):
        return BatchSampler(dataset.split("train"), dataset.spec, batch_size, config.training.seed)

    def has_validation(self, dataset) -> bool:
        return dataset.split("val").num_classes > 0

    def fixed_tasks(self, dataset, config, split: str, count: int, seed: int, *, ways=None, shots=None,
                    queries=None):
        return FixedEpisodes(dataset.split(split), dataset.spec, config.dataset.ways if ways is None else ways,
                             config.dataset.shots if shots is None else shots,
                             config.dataset.queries if queries is None else queries, count, seed, split_name=split,
                             dataset_name=dataset.name, **episode_options(vars(config.dataset)))

    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        result = evaluate_episodes(algorithm, tasks, device, progress, split)
        result.kind = self.name
        return result

    @classmethod
    def result_from_dict(cls, data, arrays=None):
        return EvalResult.from_dict(data, arrays)


@register
class FewShotClassification(ImageKind):
    name = "classification"
    title = "Few-shot classification"
    description = ("N-way K-shot image classification: meta-train on episodes from training classes, then adapt to "
                   "each test episode's K labelled images per class and classify its queries. Reported as mean "
                   "accuracy with a 95% confidence interval over fixed test episodes.")
    views = ("curves", "embeddings", "adaptation", "sample_weights", "evaluation", "try_images", "inspection")
    try_task = "images"
    try_task_help = "Drop, paste, pick or draw a few images per class, then classify new images."
    default_algorithm = "protonet"

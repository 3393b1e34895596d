"""Evaluation on fixed episodes: mean accuracy with a 95% confidence interval, per-class accuracy,
a confusion matrix and every query's prediction (for views of misclassified images).

Every algorithm evaluated with the same split, way/shot/query setting, count and seed sees the
same episodes (:class:`FixedEpisodes`), so their numbers compare fairly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from workbench.core.data.base import ProgressCallback, no_progress

if TYPE_CHECKING:
    from workbench.core.algorithms.base import Algorithm
    from workbench.core.data.episodes import FixedEpisodes
    from workbench.core.runs import Run, RunStore

# JSON keeps the full confusion matrix only up to this many classes; the .npz always has it.
CONFUSION_JSON_LIMIT = 64
QUERY_FIELDS = ("episode", "query", "true", "pred", "row", "confidence")


def mean_ci95(values) -> tuple[float, float]:
    """Mean and half-width of the 95% CI: 1.96 * std / sqrt(M) (population std, as in the
    few-shot literature)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(1.96 * arr.std() / math.sqrt(arr.size))


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

    def file_stem(self) -> str:
        stem = f"{self.ways}w{self.shots}s-{self.episodes}ep-seed{self.seed}"
        if self.queries != 15:
            stem += f"-q{self.queries}"
        if self.split != "test":
            stem += f"-{self.split}"
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
        return (f"{100 * self.accuracy:.2f}% ± {100 * self.ci95:.2f}% ({self.ways}-way {self.shots}-shot, "
                f"{self.episodes} {self.split} episodes, seed {self.seed})")

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
            "extras": _jsonable(self.extras),
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
            algorithm=data.get("algorithm", ""), created=data.get("created", ""), extras=data.get("extras") or {})


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


def evaluate(algorithm: "Algorithm", episodes: "FixedEpisodes", device: torch.device | str = "cpu",
             progress: ProgressCallback = no_progress, split: str = "test") -> EvalResult:
    """Adapt on each fixed episode's support set and score its queries."""
    device = torch.device(device)
    started = time.monotonic()
    algorithm.eval()
    total = len(episodes)
    sampler = episodes.sampler
    class_names = episodes.split.class_names
    per_episode = np.zeros(total, np.float32)
    records = {"episode": [], "query": [], "true": [], "pred": [], "row": [], "confidence": []}
    report_every = max(1, total // 100)
    progress(0, total, f"evaluating on {total} {split} episodes")
    for index in range(total):
        episode = episodes[index].to(device)
        adapted = algorithm.adapt(episode.support_x, episode.support_y, episode.ways)
        probs = algorithm.predict(adapted, episode.query_x).detach().float().cpu()
        confidence, predicted = probs.max(dim=-1)
        truth = episode.query_y.cpu()
        per_episode[index] = float((predicted == truth).float().mean())
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
        query_records=query_records, elapsed_s=time.monotonic() - started, algorithm=algorithm.name)
    # Hook: algorithms can add their own results (e.g. learned sample weights).
    extras_hook = getattr(algorithm, "evaluation_extras", None)
    if callable(extras_hook):
        extras = extras_hook(episodes)
        if extras:
            result.extras = dict(extras)
    return result


def evaluate_run(run_or_id: "Run | str", store: "RunStore | None" = None, *, episodes: int | None = None,
                 ways: int | None = None, shots: int | None = None, queries: int | None = None,
                 seed: int | None = None, device: str = "auto", checkpoint: str = "best",
                 progress: ProgressCallback = no_progress, save: bool = True) -> EvalResult:
    """Evaluate a run's checkpoint on fixed test episodes (defaults from the run's config) and save it.

    ``run_or_id`` may also be a .pt checkpoint file; its embedded config names the dataset and the
    result is not saved anywhere.
    """
    from pathlib import Path

    from workbench.core import data
    from workbench.core.checkpoints import load_model
    from workbench.core.device import resolve_device
    from workbench.core.errors import CheckpointError, ConfigError
    from workbench.core.runs import Run, RunStore, now_iso

    if checkpoint not in ("best", "last"):
        raise ConfigError("checkpoint", f"'{checkpoint}' is not a checkpoint; use 'best' or 'last'")
    torch_device = resolve_device(device)
    run: Run | None = None
    if isinstance(run_or_id, Run):
        run = run_or_id
    elif str(run_or_id).endswith(".pt") and Path(str(run_or_id)).expanduser().is_file():
        save = False
    else:
        run = (store or RunStore()).get(str(run_or_id))
    if run is not None:
        config = run.config
        loaded = load_model(run, torch_device, kind=checkpoint)
        used_checkpoint = "last" if checkpoint == "best" and not run.has_checkpoint("best") else checkpoint
    else:
        loaded = load_model(Path(str(run_or_id)).expanduser(), torch_device)
        if loaded.config is None:
            raise CheckpointError(f"{run_or_id}: the checkpoint does not say which dataset it was trained on")
        config = loaded.config
        used_checkpoint = Path(str(run_or_id)).stem
    dataset = data.load_dataset(config.dataset, progress)
    ways = config.dataset.ways if ways is None else ways
    shots = config.dataset.shots if shots is None else shots
    queries = config.dataset.queries if queries is None else queries
    count = config.eval_episodes() if episodes is None else episodes
    seed = config.evaluation.seed if seed is None else seed
    for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1), ("episodes", count, 1),
                             ("seed", seed, 0)):
        if value < low:
            raise ConfigError(name, f"{value} is too small; use at least {low}")
    fixed = data.FixedEpisodes(dataset.split("test"), dataset.spec, ways, shots, queries, count, seed,
                               split_name="test", dataset_name=dataset.name)
    result = evaluate(loaded.algorithm, fixed, torch_device, progress, split="test")
    result.checkpoint = used_checkpoint
    result.run = run.id if run is not None else str(run_or_id)
    result.dataset = config.dataset.name
    result.created = now_iso()
    if save and run is not None:
        run.save_evaluation(result)
    return result

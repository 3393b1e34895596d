"""Architecture search (DARTS, Liu, Simonyan & Yang 2019): search a cell on training data, then judge the
derived cell the only fair way, by retraining it from scratch.

Search. Each training task is a pair drawn from two disjoint halves of the training data (as DARTS splits its
training set): the weights learn on the first, the architecture weights alpha on the second. The task is either
few-shot episodes scored by a ProtoNet head (the halves are two disjoint sets of training classes) or glyph
classification over the training classes with a linear head (the halves are two halves of each class's images).
Validation during the search scores the relaxed network itself as a ProtoNet encoder on the fixed validation
episodes.

Evaluation. The derived discrete cell, a random cell from the same space and Conv-4 are each trained from scratch
with the same budget, data and seed, then scored as ProtoNet encoders on the same fixed test episodes: accuracy
with a 95% confidence interval for each. The headline is the derived cell's.

Algorithms of this kind give ``search_network(model_spec)`` its network from the kind and provide
``genotype()`` (the derived :class:`~workbench.core.models.darts_cell.Genotype`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core.data.base import ClassSplit, ProgressCallback, no_progress
from workbench.core.data.episodes import Episode, EpisodeSampler, FixedEpisodes, LabeledBatch
from workbench.core.errors import ConfigError, EpisodeError
from workbench.core.hparams import hparam
from workbench.core.kinds import register
from workbench.core.kinds.base import ResultProvenance
from workbench.core.kinds.classification import EvalResult, ImageKind, evaluate_episodes
from workbench.core.models.conv4 import Conv4
from workbench.core.models.darts_cell import (DiscreteNetwork, Genotype, SearchNetwork, parameter_count,
                                              random_genotype, stem_stride)
from workbench.core.stats import mean_ci95

TASKS = ("episodes", "classification")
CANDIDATES = ("derived", "random", "conv4")  # in the order of the result's rows
CANDIDATE_TITLES = {"derived": "derived cell", "random": "random cell", "conv4": "Conv-4"}


@dataclass
class ArchitectureSearchOptions:
    search_task: str = hparam("episodes", "What the search optimizes: few-shot episodes scored by a ProtoNet head "
                       "(weights on episodes of one half of the training classes, alpha on the other half), or "
                       "glyph classification over all training classes with a linear head (weights on half of "
                       "each class's images, alpha on the other half).", choices=TASKS)
    retrain_cells: int = hparam(3, "Cells of the networks built from the derived and the random cell for the "
                                "evaluation (reduction cells at a third and two thirds of the depth; DARTS "
                                "retrains deeper networks than it searches).", low=2, high=20)
    retrain_channels: int = hparam(16, "Channels C of the first cell when the derived and the random cell are "
                                   "retrained from scratch for the evaluation.", low=2, high=128)
    retrain_steps: int = hparam(600, "Training steps (episodes or batches) of each network retrained for the "
                                "evaluation: the derived cell, the random cell and Conv-4 get the same.",
                                low=1, high=1_000_000)
    retrain_lr: float = hparam(1e-3, "Adam learning rate of the retraining.", low=1e-6, high=1.0, log_scale=True)
    batch_size: int = hparam(64, "Images per batch for the classification task (search and retraining).",
                             low=2, high=1024)
    conv4_width: int = hparam(64, "Filters per block of the Conv-4 baseline (64 is the standard).", low=4,
                              high=256)
    temperature: float = hparam(1.0, "ProtoNet logits are negative squared distances divided by this.",
                                low=1e-3, high=1000.0, log_scale=True)
    random_seed: int = hparam(0, "Seed of the random cell drawn from the same space (the baseline).", low=0,
                              high=2**31 - 1)


# --- the ProtoNet head and the search tasks ---------------------------------------------------------------------
def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, queries: torch.Tensor, ways: int,
                     temperature: float) -> torch.Tensor:
    """Negative squared distances of query features to the class means of the support features."""
    sums = torch.zeros(ways, support.shape[1], dtype=support.dtype, device=support.device)
    sums.index_add_(0, support_y, support)
    counts = torch.bincount(support_y, minlength=ways).clamp_min(1).to(support.dtype)
    return -torch.cdist(queries, sums / counts[:, None]).pow(2) / temperature


@dataclass
class SearchTask:
    """One search step's data: ``train`` for the weights, ``val`` (held out from them) for alpha."""

    train: Any  # Episode or LabeledBatch
    val: Any

    def to(self, device) -> "SearchTask":
        return SearchTask(self.train.to(device), self.val.to(device))


def _subset(split: ClassSplit, rows: torch.Tensor, classes: list[int] | None = None) -> ClassSplit:
    """Some rows of a split; with ``classes``, only those classes, renumbered in that order."""
    labels = split.labels[rows]
    names, groups = split.class_names, split.class_groups
    if classes is not None:
        remap = torch.full((split.num_classes,), -1, dtype=torch.long)
        remap[torch.tensor(classes)] = torch.arange(len(classes))
        labels = remap[labels]
        names = [split.class_names[c] for c in classes]
        groups = [split.class_groups[c] for c in classes] if split.class_groups else None
    return ClassSplit(split.images[rows], labels, names, groups)


def class_halves(split: ClassSplit) -> tuple[ClassSplit, ClassSplit]:
    """Two disjoint halves of the classes (a fixed shuffle, alternate classes)."""
    order = torch.randperm(split.num_classes, generator=torch.Generator().manual_seed(0)).tolist()
    halves = []
    for classes in (sorted(order[0::2]), sorted(order[1::2])):
        rows = torch.cat([split.indices_by_class()[c] for c in classes])
        halves.append(_subset(split, rows, classes))
    return halves[0], halves[1]


def image_halves(split: ClassSplit) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the first and second half of each class's images."""
    first, second = [], []
    for rows in split.indices_by_class():
        first.append(rows[: (len(rows) + 1) // 2])
        second.append(rows[(len(rows) + 1) // 2:])
    return torch.cat(first), torch.cat(second)


class EpisodePairSampler:
    """Search tasks of two episodes, one from each half of the training classes."""

    def __init__(self, split: ClassSplit, spec, ways: int, shots: int, queries: int, seed: int, name: str = ""):
        halves = class_halves(split)
        try:
            self.samplers = [EpisodeSampler(half, spec, ways, shots, queries, seed, "train", name) for half in halves]
        except EpisodeError as error:
            raise ConfigError("task.search_task", f"the search splits the {split.num_classes} training classes in "
                              f"two halves for weights and architecture: {error}") from None
        self.generator = torch.Generator().manual_seed(seed)

    def episode(self, half: int) -> Episode:
        sampler = self.samplers[half]
        return sampler.build(*sampler.sample_indices(self.generator))

    def sample(self) -> SearchTask:
        return SearchTask(self.episode(0), self.episode(1))


class BatchPairSampler:
    """Search tasks of two labelled batches over all training classes, from the two halves of each class."""

    def __init__(self, split: ClassSplit, spec, batch_size: int, seed: int):
        self.split, self.spec, self.batch_size = split, spec, batch_size
        self.halves = image_halves(split)
        if min(len(h) for h in self.halves) == 0:
            raise ConfigError("task.search_task", "the classification search needs at least two images per "
                              "training class")
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, rows: torch.Tensor) -> LabeledBatch:
        pick = rows[torch.randint(len(rows), (self.batch_size,), generator=self.generator)]
        return LabeledBatch(self.spec.normalize(self.split.images[pick]), self.split.labels[pick])

    def sample(self) -> SearchTask:
        return SearchTask(self.batch(self.halves[0]), self.batch(self.halves[1]))


@dataclass
class RetrainTasks:
    """The fixed test episodes plus what retraining needs: the training split, the spec and the setting."""

    episodes: FixedEpisodes
    train_split: ClassSplit
    spec: Any
    train_setting: tuple[int, int, int]  # ways, shots, queries of the retraining episodes
    seed: int

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, index: int) -> Episode:
        return self.episodes[index]

    @property
    def split(self) -> ClassSplit:
        return self.episodes.split

    @property
    def sampler(self):
        return self.episodes.sampler


# --- the result ------------------------------------------------------------------------------------------------
@dataclass
class ArchitectureResult(ResultProvenance):
    """The retraining comparison on fixed test episodes: per candidate (CANDIDATES) its accuracy ± 95% CI and its
    parameters; the headline is the derived cell's."""

    comparison: dict[str, dict[str, Any]]
    episodes: int
    ways: int
    shots: int
    queries: int
    seed: int
    genotype: dict[str, Any]
    random_genotype: dict[str, Any]
    retrain_steps: int
    task: str = "episodes"
    split: str = "test"
    per_episode: np.ndarray = field(default_factory=lambda: np.zeros((len(CANDIDATES), 0), np.float32))
    kind: str = "architecture-search"

    @property
    def accuracy(self) -> float:
        return float(self.comparison["derived"]["accuracy"])

    @property
    def ci95(self) -> float:
        return float(self.comparison["derived"]["ci95"])

    @property
    def value(self) -> float:
        return self.accuracy

    @property
    def per_episode_accuracy(self) -> np.ndarray:
        return self.per_episode[CANDIDATES.index("derived")] if self.per_episode.size else np.zeros(0, np.float32)

    def index_fields(self) -> dict[str, Any]:
        return {"test_accuracy": self.accuracy, "test_ci95": self.ci95, "test_ways": self.ways,
                "test_shots": self.shots}

    def file_stem(self) -> str:
        stem = f"{self.ways}w{self.shots}s-{self.episodes}ep-seed{self.seed}-retrain{self.retrain_steps}"
        if self.queries != 15:
            stem += f"-q{self.queries}"
        return stem + self.stem_suffix()

    def per_class_extremes(self, count: int = 5):
        return [], []  # the comparison is by network, not by class

    def summary(self) -> str:
        rows = ", ".join(f"{CANDIDATE_TITLES[name]} {100 * row['accuracy']:.2f}% ± {100 * row['ci95']:.2f}"
                         for name, row in self.comparison.items())
        return (f"{rows} ({self.ways}-way {self.shots}-shot, {self.episodes} {self.split} episodes, each network "
                f"retrained {self.retrain_steps} steps, seed {self.seed})")

    def arrays(self) -> dict[str, np.ndarray]:
        return {"per_episode": np.asarray(self.per_episode, np.float32),
                "candidates": np.asarray(list(self.comparison))}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "accuracy": self.accuracy, "ci95": self.ci95,
                "comparison": {name: dict(row) for name, row in self.comparison.items()},
                "genotype": self.genotype, "random_genotype": self.random_genotype,
                "derived_cell": Genotype.from_dict(self.genotype).text(), "task": self.task,
                "retrain_steps": int(self.retrain_steps), "episodes": int(self.episodes), "ways": int(self.ways),
                "shots": int(self.shots), "queries": int(self.queries), "seed": int(self.seed), "split": self.split,
                "run": self.run, "dataset": self.dataset, "algorithm": self.algorithm, "checkpoint": self.checkpoint,
                "created": self.created, "elapsed_s": round(float(self.elapsed_s), 3), "extras": dict(self.extras)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], arrays: dict | None = None) -> "ArchitectureResult":
        arrays = arrays or {}
        per_episode = arrays.get("per_episode", np.zeros((len(CANDIDATES), 0)))
        return cls(comparison={k: dict(v) for k, v in data["comparison"].items()}, episodes=int(data["episodes"]),
                   ways=int(data["ways"]), shots=int(data["shots"]), queries=int(data.get("queries", 15)),
                   seed=int(data.get("seed", 0)), genotype=dict(data["genotype"]),
                   random_genotype=dict(data.get("random_genotype") or {}),
                   retrain_steps=int(data.get("retrain_steps", 0)), task=data.get("task", "episodes"),
                   split=data.get("split", "test"), per_episode=np.asarray(per_episode, np.float32),
                   elapsed_s=float(data.get("elapsed_s", 0.0)), checkpoint=data.get("checkpoint", ""),
                   run=data.get("run", ""), dataset=data.get("dataset", ""), algorithm=data.get("algorithm", ""),
                   created=data.get("created", ""), extras=data.get("extras") or {},
                   kind=data.get("kind") or "architecture-search")


# --- retraining ------------------------------------------------------------------------------------------------
class _Retrainer:
    """Trains one candidate network from scratch on the training split, then scores it on the test episodes."""

    def __init__(self, kind: "ArchitectureSearch", tasks: RetrainTasks, device: torch.device,
                 progress: ProgressCallback, total: int):
        self.kind, self.tasks, self.device = kind, tasks, device
        self.progress, self.total, self.done = progress, total, 0

    def tick(self, message: str) -> None:
        self.done += 1
        if self.done % 10 == 0 or self.done == self.total:
            self.progress(self.done, self.total, message)

    def batches(self):
        """The retraining's data, the same sequence for every candidate."""
        options, tasks = self.kind.options, self.tasks
        if options.search_task == "classification":
            sampler = BatchPairSampler(tasks.train_split, tasks.spec, options.batch_size, tasks.seed)
            return lambda: sampler.batch(torch.arange(len(tasks.train_split)))
        sampler = EpisodeSampler(tasks.train_split, tasks.spec, *tasks.train_setting, seed=tasks.seed)
        return sampler.sample

    def train(self, name: str, network: torch.nn.Module) -> None:
        options = self.kind.options
        network.to(self.device).train()
        optimizer = torch.optim.Adam(network.parameters(), lr=options.retrain_lr)
        head = (torch.nn.Linear(network.out_dim, self.tasks.train_split.num_classes).to(self.device)
                if options.search_task == "classification" else None)
        if head is not None:
            optimizer.add_param_group({"params": head.parameters()})
        sample = self.batches()
        for _ in range(options.retrain_steps):
            part = sample().to(self.device)
            logits, targets = self.kind.logits(lambda x, head_=False: head(network(x)) if head_ else network(x),
                                               part)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits, targets).backward()
            optimizer.step()
            self.tick(f"retraining the {CANDIDATE_TITLES[name]}")

    @torch.no_grad()
    def score(self, name: str, network: torch.nn.Module) -> np.ndarray:
        network.eval()
        accuracy = np.zeros(len(self.tasks), np.float32)
        for index in range(len(self.tasks)):
            episode = self.tasks[index].to(self.device)
            features = network(torch.cat([episode.support_x, episode.query_x]))
            support, queries = features[: len(episode.support_x)], features[len(episode.support_x):]
            logits = prototype_logits(support, episode.support_y, queries, episode.ways, 1.0)
            accuracy[index] = float((logits.argmax(-1) == episode.query_y).float().mean())
            self.tick(f"testing the {CANDIDATE_TITLES[name]}")
        return accuracy


def comparison_breakdown(comparison: dict[str, dict[str, Any]], episodes: int, steps: int) -> dict[str, Any]:
    """The comparison as the evaluation views' breakdown (accuracy per network, with its CI and episodes)."""
    titles = [row["title"] for row in comparison.values()]
    sizes = ", ".join(f"{row['title']} {row['parameters']:,}" for row in comparison.values())
    return {"accuracy_by_network": {t: row["accuracy"] for t, row in zip(titles, comparison.values())},
            "ci95_by_network": {t: row["ci95"] for t, row in zip(titles, comparison.values())},
            "episodes_by_network": {t: episodes for t in titles},
            "network_note": f"each retrained from scratch for {steps} steps on the same data, then tested on the "
                            f"same episodes; parameters: {sizes}"}


def genotype_of(algorithm: Any) -> Genotype:
    if not callable(getattr(algorithm, "genotype", None)):
        raise ConfigError("algorithm.name", f"'{algorithm.name}' derives no cell (no genotype()); the "
                          "architecture-search kind needs a search algorithm such as darts")
    return algorithm.genotype()


@register
class ArchitectureSearch(ImageKind):
    name = "architecture-search"
    title = "Architecture search (DARTS)"
    description = ("Search a convolutional cell (4 nodes; each edge one of 3x3 conv, 3x3 separable conv, 3x3 max "
                   "pool, skip or zero) by gradient descent on a continuous relaxation: the weights learn on one "
                   "half of the training data, the architecture weights on the other (few-shot episodes with a "
                   "ProtoNet head, or classification of the training classes). The derived discrete cell is then "
                   "retrained from scratch beside a random cell of the same space and Conv-4, and each is scored "
                   "on the same fixed test episodes: accuracy with a 95% confidence interval.")
    views = ("curves", "embeddings", "evaluation", "try_images", "inspection")
    try_task = "images"
    try_task_help = ("Drop, paste, pick or draw a few images per class, then classify new images with the searched "
                     "network (every edge the softmax(alpha) mixture) as a ProtoNet encoder.")
    default_algorithm = "darts"
    Options = ArchitectureSearchOptions
    test_tasks = 600

    # --- what the search algorithm takes from the kind -----------------------------------------------------
    def search_network(self, spec, channels: int, cells: int) -> SearchNetwork:
        """The relaxed network: features, plus a linear head over the training classes that the classification
        task uses (the episode task scores prototypes of the features instead)."""
        return SearchNetwork(spec.in_channels, channels, cells, spec.num_train_classes,
                             stem_stride(spec.image_size))

    def build_encoder(self, spec, width: int):
        return self.search_network(spec, width, 3)

    def logits(self, forward, part) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of one search part: ProtoNet logits of an episode's queries, or the head's logits of
        a labelled batch. ``forward(x, head)`` runs the network (with the weights the caller chooses)."""
        if isinstance(part, LabeledBatch):
            return forward(part.x, True), part.y
        features = forward(torch.cat([part.support_x, part.query_x]), False)
        support, queries = features[: len(part.support_x)], features[len(part.support_x):]
        return prototype_logits(support, part.support_y, queries, part.ways, self.options.temperature), part.query_y

    def train_sampler(self, dataset, config):
        split = dataset.split("train")
        if self.options.search_task == "classification":
            return BatchPairSampler(split, dataset.spec, self.options.batch_size, config.training.seed)
        return EpisodePairSampler(split, dataset.spec, config.train_ways, config.train_shots, config.train_queries,
                                  config.training.seed, dataset.name)

    def fixed_tasks(self, dataset, config, split: str, count: int, seed: int, *, ways=None, shots=None,
                    queries=None):
        episodes = super().fixed_tasks(dataset, config, split, count, seed, ways=ways, shots=shots, queries=queries)
        if split != "test":
            return episodes
        return RetrainTasks(episodes, dataset.split("train"), dataset.spec,
                            (config.train_ways, config.train_shots, config.train_queries), config.training.seed)

    # --- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        """Validation (fixed episodes): the searched network as a ProtoNet encoder. Test (RetrainTasks): retrain
        the derived cell, a random cell and Conv-4 from scratch and score each on the same episodes."""
        if not isinstance(tasks, RetrainTasks):
            result = evaluate_episodes(algorithm, tasks, device, progress, split)
            result.kind = self.name
            result.extras["network"] = "the searched network (softmax(alpha) mixtures), not retrained"
            return result
        device = torch.device(device)
        started = time.monotonic()
        genotype, other = genotype_of(algorithm), random_genotype(self.options.random_seed)
        total = len(CANDIDATES) * (self.options.retrain_steps + len(tasks))
        retrainer = _Retrainer(self, tasks, device, progress, total)
        progress(0, total, f"retraining {len(CANDIDATES)} networks, then testing on {len(tasks)} episodes")
        comparison, per_episode = {}, []
        for name in CANDIDATES:
            torch.manual_seed(tasks.seed)  # every candidate starts from the same random stream
            network = self.candidate(name, genotype, other, tasks.spec)
            retrainer.train(name, network)
            accuracy = retrainer.score(name, network)
            mean, ci95 = mean_ci95(accuracy)
            comparison[name] = {"title": CANDIDATE_TITLES[name], "accuracy": mean, "ci95": ci95,
                                "parameters": parameter_count(network)}
            per_episode.append(accuracy)
        sampler = tasks.sampler
        return ArchitectureResult(
            comparison=comparison, episodes=len(tasks), ways=sampler.ways, shots=sampler.shots,
            queries=sampler.queries, seed=int(tasks.episodes.seed), genotype=genotype.to_dict(),
            random_genotype=other.to_dict(), retrain_steps=self.options.retrain_steps,
            task=self.options.search_task,
            split=split, per_episode=np.stack(per_episode), elapsed_s=time.monotonic() - started,
            algorithm=algorithm.name, kind=self.name, extras=comparison_breakdown(comparison, len(tasks),
                                                                                 self.options.retrain_steps))

    def candidate(self, name: str, derived: Genotype, other: Genotype, spec) -> torch.nn.Module:
        options = self.options
        if name == "conv4":
            return Conv4(spec.channels, options.conv4_width, spec.image_size)
        genotype = derived if name == "derived" else other
        return DiscreteNetwork(genotype, spec.channels, options.retrain_channels, options.retrain_cells,
                               stem_stride=stem_stride(spec.image_size))

    @classmethod
    def result_from_dict(cls, data, arrays=None):
        if "comparison" in data:
            return ArchitectureResult.from_dict(data, arrays)
        return EvalResult.from_dict(data, arrays)

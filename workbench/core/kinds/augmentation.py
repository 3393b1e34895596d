"""Learning to augment: an algorithm learns an augmentation policy (which operations, how strong) on meta-train
data; the policy is judged by training networks from scratch with it on new classes, against the same networks
trained without augmentation and with RandAugment (Cubuk et al. 2020, torchvision's).

Two settings (``[task] setting``):

- ``small-data``: each fixed task is a small classification problem from the split's classes: ``ways`` classes,
  ``shots`` training images per class and ``queries`` test images per class. A Conv-4 classifier is trained on the
  training images alone for ``eval_steps`` full-batch Adam steps, then scored on the test images.
- ``few-shot``: each fixed task is a seed: a Prototypical Network (Snell et al. 2017) is trained for
  ``eval_steps`` episodes from the meta-train split (``train_ways`` etc.), its images augmented, then scored on
  ``judge_episodes`` fixed test episodes (``ways``-way ``shots``-shot) of the split.

Every arm of one task starts from the same weights and sees the same data, so the arms compare in pairs; the
headline is the learned policy's accuracy, mean ± 95% CI over the tasks (seeds). Validation measures the learned
policy alone (the baselines do not change during training).

Searching the policy (the training the trainer drives) is the same in both settings: pairs of episodes from the
meta-train split (:class:`SearchTask`), one augmented to train a network and one clean whose loss trains the
policy. An algorithm of this kind implements ``augment(images, generator) -> images``: a sample of its policy
applied to normalized images [N, C, H, W].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.data.episodes import Episode, EpisodeSampler, FixedEpisodes, episode_options
from workbench.core.errors import WorkbenchError
from workbench.core.hparams import hparam
from workbench.core.kinds import register
from workbench.core.kinds.base import ResultProvenance
from workbench.core.kinds.classification import ImageKind, _jsonable
from workbench.core.models.conv4 import Conv4, Conv4Classifier
from workbench.core.stats import mean_ci95, paired_test

SETTINGS = ("small-data", "few-shot")
ARMS = ("learned", "none", "randaugment")
ARM_TITLES = {"learned": "learned policy", "none": "no augmentation", "randaugment": "RandAugment"}
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class AugmentationOptions:
    protocol: str = hparam("small-data", "small-data: train a classifier from scratch on a few images per class "
                          "(ways x shots) and test it on others of the same classes; few-shot: train a "
                          "Prototypical Network on meta-train episodes and test it on few-shot test episodes.",
                          choices=SETTINGS)
    eval_steps: int = hparam(150, "Training steps of each network that judges a policy (small-data: full-batch "
                             "steps on the training images; few-shot: episodes).", low=1, high=100_000)
    eval_lr: float = hparam(3e-3, "Adam learning rate of each network that judges a policy.", low=1e-5, high=1.0,
                            log_scale=True)
    eval_width: int = hparam(32, "Filters per Conv-4 block of each network that judges a policy.", low=4,
                             high=256)
    judge_episodes: int = hparam(100, "Few-shot: fixed test episodes per seed.", low=1, high=10_000,
                                label="Few-shot test episodes")
    baselines: bool = hparam(True, "Test evaluations also train every network without augmentation and with "
                             "RandAugment, from the same start on the same data.")
    randaugment_ops: int = hparam(2, "RandAugment's N: operations per image (Cubuk et al. 2020).", low=1, high=14,
                                  label="RandAugment N")
    randaugment_magnitude: int = hparam(9, "RandAugment's M: magnitude of its operations, 0 to 30 (Cubuk et al. "
                                        "2020).", low=0, high=30, label="RandAugment M")


# --- tasks -----------------------------------------------------------------------------------------------------------
@dataclass
class SearchTask:
    """One step of a policy search: ``train`` is augmented to train the network, ``val`` (other classes) stays
    clean: the loss on it after the network's step is what the policy learns to lower."""

    train: Episode
    val: Episode

    def to(self, device) -> "SearchTask":
        return SearchTask(self.train.to(device), self.val.to(device))


class SearchSampler:
    """Pairs of meta-train episodes; ``generator`` is checkpointed by the trainer."""

    def __init__(self, sampler: EpisodeSampler):
        self.sampler = sampler
        self.generator = sampler.generator

    def sample(self) -> SearchTask:
        return SearchTask(self.sampler.sample(), self.sampler.sample())


@dataclass
class PolicyTrials:
    """The fixed tasks that judge a policy: ``count`` seeds. Small-data: ``problems[i]`` is seed i's problem
    (support = training images, queries = test images). Few-shot: seed i trains on episodes of ``train_sampler(i)``
    and is tested on ``test`` (the same episodes for every seed)."""

    setting: str
    count: int
    seed: int
    spec: Any
    problems: FixedEpisodes | None = None
    test: FixedEpisodes | None = None
    train_split: Any = None
    train_setting: tuple[int, int, int] = (0, 0, 0)  # ways, shots, queries of few-shot training episodes

    def __len__(self) -> int:
        return self.count

    @property
    def episodes(self) -> FixedEpisodes:
        return self.problems if self.problems is not None else self.test

    def task_seed(self, index: int) -> int:
        return int(self.seed) * 1_000_003 + 7919 * index + 11

    def train_sampler(self, index: int) -> EpisodeSampler:
        ways, shots, queries = self.train_setting
        return EpisodeSampler(self.train_split, self.spec, ways, shots, queries, seed=self.task_seed(index))


# --- the networks that judge a policy -----------------------------------------------------------------------------
def prototype_logits(support: torch.Tensor, support_y: torch.Tensor, queries: torch.Tensor,
                     ways: int) -> torch.Tensor:
    """Negative squared distances of query embeddings to the class means of the support's (Snell et al. 2017)."""
    sums = torch.zeros(ways, support.shape[1], dtype=support.dtype, device=support.device)
    sums = sums.index_add(0, support_y, support)
    counts = torch.bincount(support_y, minlength=ways).clamp_min(1).to(support.dtype)
    return -torch.cdist(queries, sums / counts[:, None]).pow(2)


def prototype_loss(encoder: Callable, episode: Episode, augment: Augment | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """Cross-entropy of an episode's queries under prototypes of its support, images augmented when given."""
    support_x, query_x = episode.support_x, episode.query_x
    if augment is not None:
        support_x, query_x = augment(support_x, generator), augment(query_x, generator)
    embeddings = encoder(torch.cat([support_x, query_x]))
    logits = prototype_logits(embeddings[: len(support_x)], episode.support_y, embeddings[len(support_x):],
                              episode.ways)
    accuracy = float((logits.argmax(-1) == episode.query_y).float().mean())
    return F.cross_entropy(logits, episode.query_y), accuracy


def _seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def fit_classifier(options: AugmentationOptions, images: torch.Tensor, labels: torch.Tensor, ways: int,
                   augment: Augment | None, seed: int) -> torch.nn.Module:
    """A Conv-4 classifier trained from scratch on ``images`` alone (full batches, each freshly augmented)."""
    _, channels, size, _ = images.shape
    model = _seeded(seed, lambda: Conv4Classifier(ways, channels, options.eval_width, size,
                                                  track_running_stats=True)).to(images.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.eval_lr)
    generator = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(options.eval_steps):
        x = augment(images, generator) if augment is not None else images
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def fit_protonet(options: AugmentationOptions, sampler: EpisodeSampler, augment: Augment | None, seed: int,
                 device: torch.device) -> torch.nn.Module:
    """A Prototypical Network's Conv-4 encoder trained from scratch on ``eval_steps`` augmented episodes."""
    spec = sampler.spec
    encoder = _seeded(seed, lambda: Conv4(spec.channels, options.eval_width, spec.image_size)).to(device)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=options.eval_lr)
    generator = torch.Generator().manual_seed(seed + 1)
    encoder.train()
    for _ in range(options.eval_steps):
        loss, _ = prototype_loss(encoder, sampler.sample().to(device), augment, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return encoder.eval()


@torch.no_grad()
def episodes_accuracy(encoder: torch.nn.Module, episodes: FixedEpisodes, device: torch.device) -> float:
    scores = [prototype_loss(encoder, episodes[i].to(device))[1] for i in range(len(episodes))]
    return float(np.mean(scores)) if scores else float("nan")


class RandAugmenter:
    """torchvision's RandAugment on model-input images: back to uint8, N random operations of magnitude M per
    image (fill: the background, by the dataset's foreground), normalized again. Seeded by the generator."""

    def __init__(self, spec: Any, num_ops: int, magnitude: int):
        from torchvision.transforms import v2

        fill = 255 if getattr(spec, "foreground", "dark") == "dark" else 0
        self.spec = spec
        self.transform = v2.RandAugment(num_ops=num_ops, magnitude=magnitude, fill=fill)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pixels = torch.from_numpy(self.spec.denormalize(x.detach().cpu())).permute(0, 3, 1, 2)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = torch.stack([self.transform(image) for image in pixels])
        return self.spec.normalize(out).to(x.device)


def learned_augment(algorithm: Any) -> Augment:
    augment = getattr(algorithm, "augment", None)
    if not callable(augment):
        raise WorkbenchError(f"algorithm '{algorithm.name}' learns no augmentation policy (it has no augment() "
                             "method), so the augmentation kind cannot evaluate it")
    return augment


# --- the result ----------------------------------------------------------------------------------------------------
@dataclass
class AugmentationResult(ResultProvenance):
    """Accuracy of networks trained with the learned policy (the headline) and, when measured, without
    augmentation and with RandAugment: mean ± 95% CI over seeds, with every seed's numbers. ``extras`` holds
    :meth:`comparisons` (filled by the evaluation; the evaluation view and ``workbench eval`` show them)."""

    accuracy: float
    ci95: float
    episodes: int  # seeds (fixed tasks)
    ways: int
    shots: int
    queries: int
    seed: int
    setting: str = "small-data"
    split: str = "test"
    arms: list[str] = field(default_factory=lambda: ["learned"])
    per_seed: np.ndarray = field(default_factory=lambda: np.zeros((0, 1), np.float32))  # [seeds, arms]
    policy: dict[str, Any] = field(default_factory=dict)  # operation -> probability, magnitude
    protocol: dict[str, Any] = field(default_factory=dict)
    kind: str = "augmentation"

    @property
    def value(self) -> float:
        return self.accuracy

    def arm_stats(self) -> dict[str, tuple[float, float]]:
        return {arm: mean_ci95(self.per_seed[:, i]) for i, arm in enumerate(self.arms)}

    def index_fields(self) -> dict[str, Any]:
        return {"test_accuracy": self.accuracy, "test_ci95": self.ci95, "test_ways": self.ways,
                "test_shots": self.shots}

    def file_stem(self) -> str:
        stem = f"{self.setting}-{self.ways}w{self.shots}s-{self.episodes}seeds-seed{self.seed}"
        if self.queries != 15:
            stem += f"-q{self.queries}"
        return stem + self.stem_suffix(self.split)

    def comparisons(self) -> dict[str, Any]:
        """Per arm: mean, CI and seeds (the evaluation view's breakdown), and the paired tests of the learned
        policy against each baseline."""
        stats = self.arm_stats()
        out: dict[str, Any] = {
            "accuracy_by_augmentation": {ARM_TITLES[a]: stats[a][0] for a in self.arms},
            "ci95_by_augmentation": {ARM_TITLES[a]: stats[a][1] for a in self.arms},
            "episodes_by_augmentation": {ARM_TITLES[a]: self.episodes for a in self.arms},
            "augmentation_note": (f"networks trained from scratch with each augmentation ({self.setting}); mean "
                                  "± 95% CI over seeds, each seed the same start and data for every arm")}
        for arm in self.arms[1:]:
            try:
                diff, p_value = paired_test(self.per_seed[:, 0], self.per_seed[:, self.arms.index(arm)])
                out[f"learned_vs_{arm}"] = {"diff": diff, "p_value": p_value}
            except ValueError:  # one seed: no test
                pass
        return out

    def summary(self) -> str:
        parts = [f"{ARM_TITLES[a]} {100 * m:.2f}% ± {100 * c:.2f}" for a, (m, c) in self.arm_stats().items()]
        return f"{'; '.join(parts)} ({self.setting}, {self.ways}-way {self.shots}-shot, {self.episodes} seeds)"

    def arrays(self) -> dict[str, np.ndarray]:
        return {"per_seed_accuracy": np.asarray(self.per_seed, np.float32), "arms": np.asarray(self.arms),
                "per_episode_accuracy": np.asarray(self.per_seed[:, 0] if len(self.per_seed) else
                                                   np.zeros(0), np.float32)}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "accuracy": float(self.accuracy), "ci95": float(self.ci95),
                "episodes": int(self.episodes), "seeds": int(self.episodes), "ways": int(self.ways),
                "shots": int(self.shots), "queries": int(self.queries), "seed": int(self.seed),
                "setting": self.setting, "split": self.split, "arms": list(self.arms),
                "policy": _jsonable(self.policy), "protocol": _jsonable(self.protocol),
                "elapsed_s": round(float(self.elapsed_s), 3), "checkpoint": self.checkpoint, "run": self.run,
                "dataset": self.dataset, "algorithm": self.algorithm, "created": self.created,
                "extras": _jsonable(self.extras)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> "AugmentationResult":
        arrays = arrays or {}
        arms = [str(a) for a in data.get("arms") or ["learned"]]
        per_seed = np.asarray(arrays.get("per_seed_accuracy", np.zeros((0, len(arms)))), np.float32)
        return cls(accuracy=float(data["accuracy"]), ci95=float(data["ci95"]), episodes=int(data["episodes"]),
                   ways=int(data.get("ways", 0)), shots=int(data.get("shots", 0)),
                   queries=int(data.get("queries", 15)), seed=int(data.get("seed", 0)),
                   setting=data.get("setting", "small-data"), split=data.get("split", "test"), arms=arms,
                   per_seed=per_seed, policy=data.get("policy") or {}, protocol=data.get("protocol") or {},
                   elapsed_s=float(data.get("elapsed_s", 0.0)), checkpoint=data.get("checkpoint", ""),
                   run=data.get("run", ""), dataset=data.get("dataset", ""), algorithm=data.get("algorithm", ""),
                   created=data.get("created", ""), extras=data.get("extras") or {},
                   kind=data.get("kind") or "augmentation")


# --- the kind ------------------------------------------------------------------------------------------------------
@register
class LearningToAugment(ImageKind):
    name = "augmentation"
    title = "Learning to augment"
    description = ("Learn an augmentation policy (which of rotate, shear, translate, scale, contrast, brightness, "
                   "cutout and elastic to apply, and how strongly) on meta-train data, then judge it on new "
                   "classes: networks trained from scratch with it, without augmentation and with RandAugment, "
                   "from the same start on the same data. Small-data: a classifier on ways x shots training "
                   "images, tested on queries per class; few-shot: a Prototypical Network trained on episodes, "
                   "tested on few-shot episodes. Reported as accuracy, mean ± 95% CI over seeds.")
    trains_on = "image episodes"
    views = ("curves", "evaluation", "try_images", "inspection")
    try_task = "images"
    try_task_help = ("Drop, paste, pick or draw a few images per class: a small classifier is trained on them from "
                     "scratch with the learned augmentation (a few seconds), then classifies new images.")
    default_algorithm = "dada"
    Options = AugmentationOptions
    test_tasks = 5  # seeds: each trains networks from scratch

    def test_task_count(self, dataset_name: str) -> int:
        return self.test_tasks

    def train_sampler(self, dataset, config):
        return SearchSampler(EpisodeSampler(dataset.split("train"), dataset.spec, config.train_ways,
                                            config.train_shots, config.train_queries, seed=config.training.seed,
                                            split_name="train", dataset_name=dataset.name,
                                            **episode_options(vars(config.dataset))))

    def fixed_tasks(self, dataset, config, split: str, count: int, seed: int, *, ways=None, shots=None,
                    queries=None):
        ways = config.dataset.ways if ways is None else ways
        shots = config.dataset.shots if shots is None else shots
        queries = config.dataset.queries if queries is None else queries
        options = dict(split_name=split, dataset_name=dataset.name, **episode_options(vars(config.dataset)))
        split_data = dataset.split(split)
        if self.options.protocol == "small-data":
            problems = FixedEpisodes(split_data, dataset.spec, ways, shots, queries, count, seed, **options)
            return PolicyTrials("small-data", count, seed, dataset.spec, problems=problems)
        test = FixedEpisodes(split_data, dataset.spec, ways, shots, queries, self.options.judge_episodes, seed,
                             **options)
        return PolicyTrials("few-shot", count, seed, dataset.spec, test=test, train_split=dataset.split("train"),
                            train_setting=(config.train_ways, config.train_shots, config.train_queries))

    # --- evaluation --------------------------------------------------------------------------------------------
    def arms(self, algorithm: Any, spec: Any, split: str) -> dict[str, Augment | None]:
        arms: dict[str, Augment | None] = {"learned": learned_augment(algorithm)}
        if self.options.baselines and split != "val":
            arms["none"] = None
            arms["randaugment"] = RandAugmenter(spec, self.options.randaugment_ops,
                                                self.options.randaugment_magnitude)
        return arms

    def trial(self, tasks: PolicyTrials, index: int, augment: Augment | None, device: torch.device) -> float:
        """Accuracy of one network trained with ``augment`` on task ``index``."""
        seed = tasks.task_seed(index)
        if tasks.setting == "small-data":
            problem = tasks.problems[index].to(device)
            model = fit_classifier(self.options, problem.support_x, problem.support_y, problem.ways, augment, seed)
            with torch.no_grad():
                return float((model(problem.query_x).argmax(-1) == problem.query_y).float().mean())
        encoder = fit_protonet(self.options, tasks.train_sampler(index), augment, seed, device)
        return episodes_accuracy(encoder, tasks.test, device)

    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        device = torch.device(device)
        started = time.monotonic()
        algorithm.eval()
        arms = self.arms(algorithm, tasks.spec, split)
        per_seed = np.zeros((len(tasks), len(arms)), np.float64)
        total = len(tasks) * len(arms)
        progress(0, total, f"training {total} networks to judge the policy")
        for index in range(len(tasks)):
            for column, (arm, augment) in enumerate(arms.items()):
                per_seed[index, column] = self.trial(tasks, index, augment, device)
                done = index * len(arms) + column + 1
                progress(done, total, f"seed {index + 1}/{len(tasks)}: {ARM_TITLES[arm]}")
        accuracy, ci95 = mean_ci95(per_seed[:, 0])
        episodes = tasks.episodes
        policy = algorithm.policy_summary() if callable(getattr(algorithm, "policy_summary", None)) else {}
        result = AugmentationResult(
            accuracy=accuracy, ci95=ci95, episodes=len(tasks), ways=episodes.ways, shots=episodes.sampler.shots,
            queries=episodes.sampler.queries, seed=int(tasks.seed), setting=tasks.setting, split=split,
            arms=list(arms), per_seed=per_seed.astype(np.float32), policy=policy, protocol=self.protocol(tasks),
            elapsed_s=time.monotonic() - started, algorithm=algorithm.name, kind=self.name)
        result.extras = result.comparisons()
        return result

    def protocol(self, tasks: PolicyTrials) -> dict[str, Any]:
        o = self.options
        out = {"eval_steps": o.eval_steps, "eval_lr": o.eval_lr, "eval_width": o.eval_width,
               "randaugment": {"num_ops": o.randaugment_ops, "magnitude": o.randaugment_magnitude}}
        if tasks.setting == "few-shot":
            ways, shots, queries = tasks.train_setting
            out.update(test_episodes=len(tasks.test), train_ways=ways, train_shots=shots, train_queries=queries)
        return out

    @classmethod
    def result_from_dict(cls, data, arrays=None):
        return AugmentationResult.from_dict(data, arrays)

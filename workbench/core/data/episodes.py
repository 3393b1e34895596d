"""N-way K-shot Q-query episodes, seeded, and fixed episode sets for fair evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.core.data.base import SPLIT_TITLES, ClassSplit, PreprocessSpec
from workbench.core.errors import EpisodeError


@dataclass
class Episode:
    """One few-shot task. Labels are 0..ways-1 in the order of ``class_ids``."""

    support_x: torch.Tensor  # float [ways*shots, C, H, W], normalized
    support_y: torch.Tensor  # long [ways*shots]
    query_x: torch.Tensor  # float [ways*queries, C, H, W]
    query_y: torch.Tensor  # long [ways*queries]
    class_ids: list[int]  # indexes into the split's class_names
    class_names: list[str]
    support_index: torch.Tensor | None = None  # row indexes into the split, for thumbnails
    query_index: torch.Tensor | None = None

    @property
    def ways(self) -> int:
        return len(self.class_ids)

    def to(self, device: torch.device) -> "Episode":
        if self.support_x.device == torch.device(device):
            return self
        return Episode(self.support_x.to(device, non_blocking=True), self.support_y.to(device),
                       self.query_x.to(device, non_blocking=True), self.query_y.to(device),
                       self.class_ids, self.class_names, self.support_index, self.query_index)


def check_episode_setting(split: ClassSplit, ways: int, shots: int, queries: int, split_name: str = "train",
                          dataset_name: str = "") -> list[int]:
    """Return the classes that can serve episodes, or raise EpisodeError saying what to change."""
    title = SPLIT_TITLES.get(split_name, split_name)
    where = f"the {title} split" + (f" of {dataset_name}" if dataset_name else "")
    if ways < 2:
        raise EpisodeError(f"n-way is {ways}; an episode needs at least 2 classes")
    if shots < 1 or queries < 1:
        raise EpisodeError("k-shot and q-query must each be at least 1")
    if split.num_classes < ways:
        raise EpisodeError(f"{where} has only {split.num_classes} classes, fewer than n-way = {ways}; "
                           f"lower n-way to at most {split.num_classes} or use a dataset with more classes")
    need = shots + queries
    counts = split.class_counts()
    eligible = [c for c, count in enumerate(counts) if count >= need]
    if len(eligible) < ways:
        most = max(counts) if counts else 0
        short = [split.class_names[c] for c, count in enumerate(counts) if count < need]
        named = ", ".join(f"'{n}'" for n in short[:5]) + (f" and {len(short) - 5} more" if len(short) > 5 else "")
        ranked = sorted(counts, reverse=True)
        fit = ranked[ways - 1] if len(ranked) >= ways else 0
        # Suggest only settings that would work: q-query alone may not be enough, n-way below 2 never is.
        if fit - shots >= 1:
            example = f" (for example q-query = {fit - shots})"
        elif fit >= 2:
            example = f" (for example k-shot = {fit // 2} and q-query = {fit - fit // 2})"
        else:
            example = ""
        lower_ways = f" or lower n-way to {len(eligible)}" if len(eligible) >= 2 else ""
        raise EpisodeError(
            f"k-shot + q-query = {shots} + {queries} = {need} images per class, but only {len(eligible)} classes of "
            f"{where} have that many ({named} have fewer; the largest class has {most}). Lower k-shot + q-query "
            f"to at most {fit}{example}{lower_ways}")
    return eligible


@dataclass
class LabeledBatch:
    """A plain labelled batch over all training classes (for pre-training baselines)."""

    x: torch.Tensor
    y: torch.Tensor  # global class ids (or regression targets)

    def to(self, device) -> "LabeledBatch":
        return LabeledBatch(self.x.to(device, non_blocking=True), self.y.to(device))


class EpisodeSampler:
    """Draws episodes from one split with its own seeded generator."""

    def __init__(self, split: ClassSplit, spec: PreprocessSpec, ways: int, shots: int, queries: int,
                 seed: int = 0, split_name: str = "train", dataset_name: str = ""):
        self.split = split
        self.spec = spec
        self.ways, self.shots, self.queries = ways, shots, queries
        self.eligible = torch.tensor(check_episode_setting(split, ways, shots, queries, split_name, dataset_name))
        self.excluded_classes = [split.class_names[c] for c in range(split.num_classes)
                                 if c not in set(self.eligible.tolist())]
        self.generator = torch.Generator().manual_seed(seed)

    def sample_indices(self, generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Class ids plus support and query row indexes, laid out class by class."""
        gen = generator or self.generator
        by_class = self.split.indices_by_class()
        chosen = self.eligible[torch.randperm(len(self.eligible), generator=gen)[: self.ways]].tolist()
        support, query = [], []
        for c in chosen:
            rows = by_class[c]
            pick = rows[torch.randperm(rows.numel(), generator=gen)[: self.shots + self.queries]]
            support.append(pick[: self.shots])
            query.append(pick[self.shots:])
        return chosen, torch.cat(support), torch.cat(query)

    def build(self, class_ids: list[int], support_index: torch.Tensor, query_index: torch.Tensor) -> Episode:
        # One normalize call for support and query together halves the per-episode overhead.
        rows = torch.cat([support_index, query_index])
        x = self.spec.normalize(self.split.images[rows])
        n_support = support_index.numel()
        ways = len(class_ids)
        return Episode(
            support_x=x[:n_support],
            support_y=torch.arange(ways).repeat_interleave(n_support // ways),
            query_x=x[n_support:],
            query_y=torch.arange(ways).repeat_interleave(query_index.numel() // ways),
            class_ids=class_ids,
            class_names=[self.split.class_names[c] for c in class_ids],
            support_index=support_index,
            query_index=query_index,
        )

    def sample(self) -> Episode:
        return self.build(*self.sample_indices())

    def __iter__(self):
        while True:
            yield self.sample()


class FixedEpisodes:
    """A set of episodes fixed by its seed: every algorithm evaluated with it sees identical tasks.

    Only indexes are kept; images are gathered when an episode is read, so 1,000 episodes cost little memory.
    """

    def __init__(self, split: ClassSplit, spec: PreprocessSpec, ways: int, shots: int, queries: int,
                 count: int, seed: int, split_name: str = "test", dataset_name: str = ""):
        self.sampler = EpisodeSampler(split, spec, ways, shots, queries, seed, split_name, dataset_name)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self._tasks = [self.sampler.sample_indices(generator) for _ in range(count)]

    @property
    def ways(self) -> int:
        return self.sampler.ways

    @property
    def split(self) -> ClassSplit:
        return self.sampler.split

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, i: int) -> Episode:
        return self.sampler.build(*self._tasks[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

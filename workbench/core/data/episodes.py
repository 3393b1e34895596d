"""N-way K-shot Q-query episodes, seeded, and fixed episode sets for fair evaluation.

Episode domains (``dataset.episode_domains``): "any" draws an episode's classes from the whole split; "within"
draws them all from one domain (``ClassSplit.class_groups``: an Omniglot or glyph alphabet, an image-folder
subtree), the sampling of meta face recognition and the shape of Lake et al.'s one-shot runs (an alphabet, then
20 of its characters). The domain is chosen uniformly among the domains with at least n-way eligible classes, as
Lake's runs take one alphabet each whatever its size; domains with fewer classes are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.core.data.base import SPLIT_TITLES, ClassSplit, PreprocessSpec
from workbench.core.device import to_device
from workbench.core.errors import ConfigError, EpisodeError

EPISODE_DOMAINS = ("any", "within")
DOMAINS_FIELD = "dataset.episode_domains"


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
        # Pinned and non-blocking on CUDA (labels too: a blocking copy would synchronise every step).
        return Episode(to_device(self.support_x, device), to_device(self.support_y, device),
                       to_device(self.query_x, device), to_device(self.query_y, device),
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


def episode_options(values: dict) -> dict:
    """The sampler keyword arguments a dataset config (or a form's values) sets beyond n-way / k-shot / q-query."""
    return {"domains": str(values.get("episode_domains") or "any")}


def domain_pools(split: ClassSplit, eligible: list[int], ways: int, split_name: str = "train",
                 dataset_name: str = "") -> tuple[list[str], list[torch.Tensor], list[str]]:
    """The domains with at least ``ways`` eligible classes (names and class-id tensors, in name order), and the
    names of the domains skipped; ConfigError naming the dataset and split when no domain qualifies."""
    title = SPLIT_TITLES.get(split_name, split_name)
    where = f"the {title} split" + (f" of {dataset_name}" if dataset_name else "")
    if not split.class_groups:
        raise ConfigError(DOMAINS_FIELD, f"'within' draws every episode from one domain, but {where} has no domains "
                          "(they come from Omniglot and glyph alphabets, or image-folder subtrees "
                          "<root>/<domain>/<class>/); use 'any'")
    by_domain: dict[str, list[int]] = {}
    for c in eligible:
        by_domain.setdefault(split.class_groups[c], []).append(c)
    names = sorted(by_domain)
    kept = [name for name in names if len(by_domain[name]) >= ways]
    if not kept:
        sizes = sorted(((len(v), k) for k, v in by_domain.items()), key=lambda item: (-item[0], item[1]))
        largest = sizes[0][0] if sizes else 0
        at_largest = sum(1 for size, _ in sizes if size >= largest)
        shown = ", ".join(f"{name} {size}" for size, name in sizes[:8]) + (" ..." if len(sizes) > 8 else "")
        fix = (f"lower n-way to at most {largest} ({at_largest} domain{'s' if at_largest != 1 else ''} "
               f"qualif{'y' if at_largest != 1 else 'ies'}) or use 'any'" if largest >= 2 else "use 'any'")
        raise ConfigError(DOMAINS_FIELD, f"'within' needs a domain with at least n-way = {ways} usable classes, but "
                          f"0 of the {len(sizes)} domains of {where} have that many (usable classes per domain: "
                          f"{shown}); {fix}")
    skipped = [name for name in names if name not in kept]
    return kept, [torch.tensor(by_domain[name]) for name in kept], skipped


@dataclass
class LabeledBatch:
    """A plain labelled batch over all training classes (for pre-training baselines)."""

    x: torch.Tensor
    y: torch.Tensor  # global class ids (or regression targets)

    def to(self, device) -> "LabeledBatch":
        return LabeledBatch(to_device(self.x, device), to_device(self.y, device))


class EpisodeSampler:
    """Draws episodes from one split with its own seeded generator."""

    def __init__(self, split: ClassSplit, spec: PreprocessSpec, ways: int, shots: int, queries: int,
                 seed: int = 0, split_name: str = "train", dataset_name: str = "", domains: str = "any"):
        if domains not in EPISODE_DOMAINS:
            raise ConfigError(DOMAINS_FIELD, f"{domains!r} is not allowed; use one of {', '.join(EPISODE_DOMAINS)}")
        self.split = split
        self.spec = spec
        self.ways, self.shots, self.queries = ways, shots, queries
        self.domains = domains
        eligible = check_episode_setting(split, ways, shots, queries, split_name, dataset_name)
        self.eligible = torch.tensor(eligible)
        usable = set(eligible)
        self.excluded_classes = [split.class_names[c] for c in range(split.num_classes) if c not in usable]
        # "within": the domains episodes come from (names, class ids) and those too small to serve one.
        self.domain_names: list[str] = []
        self.domain_classes: list[torch.Tensor] = []
        self.skipped_domains: list[str] = []
        if domains == "within":
            self.domain_names, self.domain_classes, self.skipped_domains = domain_pools(
                split, eligible, ways, split_name, dataset_name)
        self.generator = torch.Generator().manual_seed(seed)

    def choose_classes(self, generator: torch.Generator) -> list[int]:
        """The episode's class ids: from the whole split, or all from one uniformly chosen domain."""
        pool = self.eligible
        if self.domains == "within":
            pool = self.domain_classes[int(torch.randint(len(self.domain_classes), (1,), generator=generator))]
        return pool[torch.randperm(len(pool), generator=generator)[: self.ways]].tolist()

    def sample_indices(self, generator: torch.Generator | None = None) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Class ids plus support and query row indexes, laid out class by class."""
        gen = generator or self.generator
        by_class = self.split.indices_by_class()
        chosen = self.choose_classes(gen)
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
                 count: int, seed: int, split_name: str = "test", dataset_name: str = "", domains: str = "any"):
        self.sampler = EpisodeSampler(split, spec, ways, shots, queries, seed, split_name, dataset_name, domains)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        self._tasks = [self.sampler.sample_indices(generator) for _ in range(count)]

    @property
    def ways(self) -> int:
        return self.sampler.ways

    @property
    def split(self) -> ClassSplit:
        return self.sampler.split

    @property
    def domains(self) -> str:
        return self.sampler.domains

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, i: int) -> Episode:
        return self.sampler.build(*self._tasks[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

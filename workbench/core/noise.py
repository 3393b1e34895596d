"""Label noise and class imbalance for "learning to weight" experiments (headless, deterministic by seed).

A standard classification problem is carved out of a few-shot split: a fixed subset of its classes, each
class's images divided into training images (whose labels may be corrupted and whose counts may be made
long-tailed), a small clean meta set and a clean test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.core.data.base import ClassSplit
from workbench.core.errors import DatasetError

NOISE_KINDS = ("uniform", "flip")


def corrupt_labels(labels: torch.Tensor, num_classes: int, rate: float, kind: str,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupted labels and a bool mask of the samples whose label changed.

    ``uniform``: each sample, with probability ``rate``, gets one of the *other* classes at random (so every
    corrupted label is wrong and the mask is exactly the noisy samples). ``flip``: each class has one fixed
    other class, drawn at random by the seed (class c goes to c + s_c mod C with s_c in 1..C-1, so several classes
    may share a target: not a permutation), that its samples are flipped to with probability ``rate``.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {', '.join(NOISE_KINDS)}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"noise rate {rate!r} must be in [0, 1)")
    labels = labels.long()
    if rate == 0.0 or num_classes < 2:
        return labels.clone(), torch.zeros(len(labels), dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    corrupt = torch.rand(len(labels), generator=generator) < rate
    if kind == "uniform":
        # An offset in 1..C-1 never maps a class to itself.
        offsets = torch.randint(1, num_classes, (len(labels),), generator=generator)
    else:
        shift = torch.randint(1, num_classes, (num_classes,), generator=generator)
        offsets = shift[labels]
    noisy = torch.where(corrupt, (labels + offsets) % num_classes, labels)
    return noisy, noisy != labels


def long_tail_counts(available: list[int], ratio: float) -> list[int]:
    """Training images kept per class: the first class keeps all, the last ``1/ratio`` of its images,
    exponentially in between (the long-tailed profile of Cui et al., 2019). ``ratio`` 1 keeps everything."""
    count = len(available)
    if ratio <= 1.0 or count < 2:
        return list(available)
    return [max(1, int(round(n * ratio ** (-rank / (count - 1))))) for rank, n in enumerate(available)]


@dataclass
class NoisyProblem:
    """A classification problem with corrupted training labels, a clean meta set and a clean test set.

    Images stay uint8 (normalize per batch); labels are 0..num_classes-1 over ``class_names``.
    """

    class_names: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor  # as trained on (possibly corrupted)
    train_true_labels: torch.Tensor
    train_noisy: torch.Tensor  # bool: the label was corrupted
    meta_images: torch.Tensor
    meta_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def noise_fraction(self) -> float:
        return float(self.train_noisy.float().mean()) if len(self.train_noisy) else 0.0


def make_noisy_problem(split: ClassSplit, num_classes: int, meta_per_class: int, test_per_class: int,
                       label_noise: float, noise_kind: str, imbalance: float, seed: int,
                       where: str = "algorithm.hparams") -> NoisyProblem:
    """Pick ``num_classes`` classes of ``split`` (fixed by ``seed``) and divide each class's images.

    Raises DatasetError naming the setting to change when the split has too few classes or images.
    """
    available = split.num_classes
    if available < num_classes:
        raise DatasetError(f"the meta-train split has {available} classes, fewer than {where}.num_classes = "
                           f"{num_classes}; lower num_classes to at most {available}")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[:num_classes].sort().values.tolist()
    need = meta_per_class + test_per_class + 1
    parts: dict[str, list[torch.Tensor]] = {"train": [], "meta": [], "test": []}
    train_per_class: list[torch.Tensor] = []
    for new_label, class_id in enumerate(chosen):
        rows = torch.nonzero(split.labels == class_id).flatten()
        if len(rows) < need:
            raise DatasetError(f"class '{split.class_names[class_id]}' has {len(rows)} images; {where} needs "
                               f"meta_per_class + test_per_class + 1 = {need}; lower meta_per_class or "
                               f"test_per_class")
        rows = rows[torch.randperm(len(rows), generator=generator)]
        parts["meta"].append(rows[:meta_per_class])
        parts["test"].append(rows[meta_per_class:meta_per_class + test_per_class])
        train_per_class.append(rows[meta_per_class + test_per_class:])
    kept = long_tail_counts([len(rows) for rows in train_per_class], imbalance)
    parts["train"] = [rows[:count] for rows, count in zip(train_per_class, kept)]
    remap = torch.full((available,), -1, dtype=torch.long)
    remap[torch.tensor(chosen)] = torch.arange(num_classes)
    rows = {name: torch.cat(chunks) for name, chunks in parts.items()}
    labels = {name: remap[split.labels[index].long()] for name, index in rows.items()}
    noisy_labels, noisy = corrupt_labels(labels["train"], num_classes, label_noise, noise_kind, seed + 1)
    return NoisyProblem([split.class_names[c] for c in chosen], split.images[rows["train"]], noisy_labels,
                        labels["train"], noisy, split.images[rows["meta"]], labels["meta"],
                        split.images[rows["test"]], labels["test"])

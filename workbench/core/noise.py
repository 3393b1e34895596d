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
    """A classification problem with corrupted training labels, a clean meta set, a clean validation set (to
    select checkpoints on) and a clean test set.

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
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    drawn_per_class: int = 0  # new instances drawn per class beyond the split's images (generated datasets)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def noise_fraction(self) -> float:
        return float(self.train_noisy.float().mean()) if len(self.train_noisy) else 0.0


def make_noisy_problem(split: ClassSplit, num_classes: int, meta_per_class: int, test_per_class: int,
                       label_noise: float, noise_kind: str, imbalance: float, seed: int,
                       where: str = "algorithm.hparams", *, images_per_class: int = 0,
                       val_per_class: int = 0) -> NoisyProblem:
    """Pick ``num_classes`` classes of ``split`` (fixed by ``seed``) and divide each class's images into meta,
    validation, test and training images.

    ``images_per_class`` (0: all) caps the training images per class; where the split has fewer and can draw
    more instances (``split.more_images``: glyphs), new ones are drawn up to it, so a classifier can be given
    more images than it can memorise. Raises DatasetError naming the setting to change when the split has too
    few classes or images.
    """
    available = split.num_classes
    if available < num_classes:
        raise DatasetError(f"the meta-train split has {available} classes, fewer than {where}.num_classes = "
                           f"{num_classes}; lower num_classes to at most {available}")
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(available, generator=generator)[:num_classes].sort().values.tolist()
    held_out = meta_per_class + val_per_class + test_per_class
    by_class = split.indices_by_class()
    drawn = 0
    if images_per_class and split.more_images is not None:
        drawn = max(0, held_out + images_per_class - min(len(by_class[c]) for c in chosen))
    parts: dict[str, list[torch.Tensor]] = {"train": [], "meta": [], "val": [], "test": []}
    train_per_class: list[torch.Tensor] = []
    for class_id in chosen:
        images = split.images[by_class[class_id]]
        if drawn:
            images = torch.cat([images, split.more_images(class_id, drawn)])
        if len(images) < held_out + 1:
            raise DatasetError(f"class '{split.class_names[class_id]}' has {len(images)} images; {where} needs "
                               f"meta_per_class + val_per_class + test_per_class + 1 = {held_out + 1}; lower "
                               f"meta_per_class, val_per_class or test_per_class")
        images = images[torch.randperm(len(images), generator=generator)]
        start = 0
        for name, count in (("meta", meta_per_class), ("val", val_per_class), ("test", test_per_class)):
            parts[name].append(images[start:start + count])
            start += count
        rest = images[start:]
        train_per_class.append(rest[:images_per_class] if images_per_class else rest)
    kept = long_tail_counts([len(images) for images in train_per_class], imbalance)
    parts["train"] = [images[:count] for images, count in zip(train_per_class, kept)]
    # Each part lists its chunks class by class, so a chunk's position is its new label.
    labels = {name: torch.cat([torch.full((len(chunk),), label, dtype=torch.long)
                               for label, chunk in enumerate(chunks)]) for name, chunks in parts.items()}
    images = {name: torch.cat(chunks) for name, chunks in parts.items()}
    noisy_labels, noisy = corrupt_labels(labels["train"], num_classes, label_noise, noise_kind, seed + 1)
    return NoisyProblem([split.class_names[c] for c in chosen], images["train"], noisy_labels, labels["train"],
                        noisy, images["meta"], labels["meta"], images["test"], labels["test"],
                        images["val"] if val_per_class else None, labels["val"] if val_per_class else None,
                        drawn)


def problem_from_hparams(split: ClassSplit, hparams, seed: int) -> NoisyProblem:
    """The noisy problem that a weighting method's hyperparameters describe (the same for every method, so a
    comparison trains on the same classes, corrupted labels and held-out sets)."""
    return make_noisy_problem(split, hparams.num_classes, hparams.meta_per_class, hparams.test_per_class,
                              hparams.label_noise, hparams.noise_kind, hparams.imbalance, seed,
                              images_per_class=hparams.images_per_class, val_per_class=hparams.val_per_class)

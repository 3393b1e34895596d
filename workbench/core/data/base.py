"""What every dataset provides: class splits held in memory as uint8 tensors, and one preprocessing spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core.fileio import atomic_write_text
from workbench.core.progress import Cancelled, ProgressCallback, no_progress  # noqa: F401 (re-exported)

SPLITS = ("train", "val", "test")
SPLIT_TITLES = {"train": "meta-train", "val": "meta-validation", "test": "meta-test"}

@dataclass(frozen=True)
class PreprocessSpec:
    """How raw images become model input; shared by training, evaluation and "try a task"."""

    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # "dark": dark strokes on a light background (Omniglot, glyphs); "light": the reverse; "natural": photos.
    foreground: str = "dark"

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        return cls(int(data["image_size"]), int(data["channels"]), tuple(float(v) for v in data["mean"]),
                   tuple(float(v) for v in data["std"]), str(data.get("foreground", "dark")))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] at any size -> float32 normalized at image_size."""
        x = images.float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> np.ndarray:
        """Model input back to uint8 [N, H, W, C] for thumbnails."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        images = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


@dataclass
class ClassSplit:
    """One split's images: uint8 [N, C, H, W] and labels indexing ``class_names``."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    # Optional grouping of classes (Omniglot alphabets, glyph alphabets): group name per class.
    class_groups: list[str] | None = None
    _by_class: list[torch.Tensor] | None = field(default=None, repr=False)
    # Optional attributes per class (zero-shot; workbench.core.data.descriptors): their fields, and float
    # [num_classes, len(fields)] values or a function computing them on first use (glyphs measure theirs only then).
    descriptor_fields: tuple = ()
    descriptors: Any = field(default=None, repr=False)
    # Datasets that draw their images (glyphs) can draw more instances of a class than the split holds:
    # ``more_images(class_index, count)`` -> uint8 [count, C, H, W], new images (not the split's), deterministic.
    more_images: Any = field(default=None, repr=False)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError("ClassSplit.images must be a uint8 tensor [N, C, H, W]")
        self.labels = self.labels.to(torch.long)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_descriptors(self) -> torch.Tensor | None:
        """float32 [num_classes, len(descriptor_fields)], or None when the classes have no descriptors."""
        if callable(self.descriptors):
            values = torch.as_tensor(self.descriptors(), dtype=torch.float32)
            if tuple(values.shape) != (self.num_classes, len(self.descriptor_fields)):
                raise ValueError(f"class descriptors of shape {tuple(values.shape)} for {self.num_classes} classes "
                                 f"and {len(self.descriptor_fields)} fields")
            self.descriptors = values
        return self.descriptors

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices_by_class(self) -> list[torch.Tensor]:
        if self._by_class is None:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        return self._by_class

    def class_counts(self) -> list[int]:
        return [int(ix.numel()) for ix in self.indices_by_class()]


@dataclass
class FewShotDataset:
    """A dataset ready for episodes: disjoint class splits plus the spec to preprocess them."""

    name: str
    spec: PreprocessSpec
    splits: dict[str, ClassSplit]
    description: str = ""
    # Files that could not be read, as (path, reason); they were skipped.
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    # What a user should know about the data itself (class folders left out as empty or unreadable, ignored
    # folders); one sentence each, independent of the episode setting. Unreadable files are in skipped_files.
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self):
        missing = [s for s in SPLITS if s not in self.splits]
        if missing:
            raise ValueError(f"dataset {self.name} lacks splits {missing}")

    def split(self, name: str) -> ClassSplit:
        return self.splits[name]

    @property
    def descriptor_fields(self) -> tuple:
        """The fields of its class descriptors (workbench.core.data.descriptors); empty when it has none."""
        return next((s.descriptor_fields for s in self.splits.values() if s.descriptors is not None), ())

    def summary(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "image_size": self.spec.image_size,
            "channels": self.spec.channels,
            "splits": {name: {"classes": s.num_classes, "images": len(s)} for name, s in self.splits.items()},
            "skipped_files": len(self.skipped_files),
            "warnings": list(self.warnings),
        }

    def skipped_summary(self, limit: int = 5, where: str = "") -> list[str]:
        """'skipped N files ...' then the first ``limit`` as 'path: reason' lines; empty when nothing was skipped.
        ``where`` names the file holding the full list."""
        return skipped_lines(self.skipped_files, limit, where)

    def write_skipped(self, path) -> Path:
        """Every skipped file as 'path<TAB>reason' lines (the full list the summary points to)."""
        return write_skipped(path, self.skipped_files)

    def check_disjoint(self) -> None:
        """Raise if one class name appears in two splits (a leak between meta-train and meta-test)."""
        seen: dict[str, str] = {}
        for split_name, split in self.splits.items():
            for cname in split.class_names:
                if cname in seen and seen[cname] != split_name:
                    raise ValueError(f"class {cname!r} is in both {seen[cname]} and {split_name}")
                seen[cname] = split_name


def skipped_lines(skipped: list[tuple[str, str]], limit: int = 5, where: str = "") -> list[str]:
    """A headline and the first ``limit`` skipped files with their reasons (shared by the CLI and the GUI)."""
    if not skipped:
        return []
    see = f"; see {where} for the full list" if where else ""
    lines = [f"skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} that could not be read{see}:"]
    lines += [f"  {path}: {reason}" for path, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return lines


def write_skipped(path, skipped: list[tuple[str, str]]) -> Path:
    """The skipped files as 'path<TAB>reason' lines, written atomically."""
    return atomic_write_text(Path(path), "".join(f"{p}\t{reason}\n" for p, reason in skipped))


def rotate_classes(split: ClassSplit) -> ClassSplit:
    """Rotation class augmentation: each class also appears rotated by 90, 180 and 270 degrees as new classes."""
    images = [split.images]
    labels = [split.labels]
    names = list(split.class_names)
    groups = list(split.class_groups) if split.class_groups else None
    n = split.num_classes
    more = None
    if split.more_images is not None:
        def more(class_index: int, count: int) -> torch.Tensor:
            return torch.rot90(split.more_images(class_index % n, count), class_index // n, dims=(2, 3))
    for k in (1, 2, 3):
        images.append(torch.rot90(split.images, k, dims=(2, 3)))
        labels.append(split.labels + k * n)
        names.extend(f"{c} (rot{90 * k})" for c in split.class_names)
        if groups is not None:
            groups.extend(split.class_groups)
    return ClassSplit(torch.cat(images), torch.cat(labels), names, groups, more_images=more)

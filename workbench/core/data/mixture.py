"""Several datasets as one: the classes of each member dataset side by side, each member a domain.

This is the multi-dataset setting CNAPs was built for (Requeima et al. 2019, trained on Meta-Dataset): one model meets
tasks from glyphs, Omniglot and image folders. ``dataset.sources`` names the members, one per entry, separated by
";" or new lines, each ``name`` or ``name=location`` (``omniglot=~/data/omniglot; folder=~/photos; glyphs``). Each
member is loaded with its usual split into meta-train/-validation/-test classes, so the mixture's splits stay disjoint;
its images are resized to one side (``dataset.image_size``, 28 by default) and to one channel count (colour when any
member is in colour, grey replicated; otherwise grey). Class names become ``<member>/<class>`` and each class's domain
is its member, so ``dataset.episode_domains = "within"`` draws every episode from one dataset (Meta-Dataset's
episodes) and the evaluation reports accuracy per dataset; "any" mixes classes of different datasets in one episode.
The normalisation is the mixture's own: the mean and standard deviation of its meta-train images."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from workbench.core.data.base import (SPLITS, ClassSplit, FewShotDataset, PreprocessSpec, ProgressCallback,
                                      no_progress)
from workbench.core.errors import ConfigError, DatasetError

FIELD = "dataset.sources"
DEFAULT_IMAGE_SIZE = 28
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's "L" conversion


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    root: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}={self.root}" if self.root else self.name


def parse_sources(text: str) -> list[Member]:
    """``"glyphs; omniglot=~/omniglot"`` -> members; ConfigError naming the field for anything malformed."""
    entries = [entry.strip() for line in (text or "").splitlines() for entry in line.split(";")]
    members = []
    for entry in filter(None, entries):
        name, _, root = entry.partition("=")
        name, root = name.strip(), root.strip()
        if not name:
            raise ConfigError(FIELD, f"'{entry}' names no dataset; write 'name' or 'name=location'")
        members.append(Member(name, root))
    if len(members) < 2:
        raise ConfigError(FIELD, "name at least two datasets, separated by ';' (e.g. 'glyphs; omniglot=~/omniglot')"
                          + (f"; '{members[0].label}' alone is that dataset: choose it directly" if members else ""))
    labels = [m.label for m in members]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(FIELD, f"{', '.join(repeated)} is named twice")
    return members


def member_tags(members: list[Member]) -> list[str]:
    """The prefix of each member's class names: its dataset name, with its folder's name when a name repeats."""
    names = [m.name for m in members]
    return [m.name if names.count(m.name) == 1 else f"{m.name}:{Path(m.root).expanduser().name or m.root}"
            for m in members]


def _check_member(member: Member) -> None:
    from workbench.core.data import IMAGE_KINDS, dataset_info

    info = dataset_info(member.name)
    if info is None:
        raise ConfigError(FIELD, f"unknown dataset '{member.name}'")
    if info.module_path == __name__:
        raise ConfigError(FIELD, f"'{member.name}' is itself a mixture; name its datasets instead")
    if not set(info.kinds) & set(IMAGE_KINDS):
        raise ConfigError(FIELD, f"'{member.name}' is not an image dataset ({info.title} serves "
                          f"{', '.join(info.kinds)})")


def _resized(images: torch.Tensor, size: int, channels: int) -> torch.Tensor:
    """uint8 [N, C, H, W] at the mixture's side and channel count."""
    x = images
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    if x.shape[1] == channels:
        return x.contiguous()
    if channels == 3:  # grey into colour
        return x.expand(-1, 3, -1, -1).contiguous()
    weights = torch.tensor(LUMINANCE).view(1, 3, 1, 1)
    return (x.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def _mixed_split(parts: list[tuple[str, ClassSplit]], size: int, channels: int) -> ClassSplit:
    images, labels, names, groups = [], [], [], []
    for tag, split in parts:
        images.append(_resized(split.images, size, channels))
        labels.append(split.labels + len(names))
        names += [f"{tag}/{name}" for name in split.class_names]
        groups += [tag] * split.num_classes
    return ClassSplit(torch.cat(images), torch.cat(labels), names, groups)


def _spec(train: ClassSplit, size: int, channels: int, foregrounds: set[str]) -> PreprocessSpec:
    """The mixture's own normalisation (its meta-train images' statistics), in chunks to bound memory."""
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    for chunk in torch.split(train.images, 4096):
        x = chunk.to(torch.float64).div_(255.0)
        total += x.sum((0, 2, 3))
        squares += x.pow(2).sum((0, 2, 3))
    count = train.images.shape[0] * size * size
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(1e-6).sqrt()
    foreground = foregrounds.pop() if len(foregrounds) == 1 else "natural"
    return PreprocessSpec(size, channels, tuple(mean.tolist()), tuple(std.tolist()), foreground)


def load(config, progress: ProgressCallback = no_progress) -> FewShotDataset:
    """Entry point for :func:`workbench.core.data.load_dataset`."""
    from workbench.core.data import load_dataset

    members = parse_sources(getattr(config, "sources", ""))
    for member in members:
        _check_member(member)
    size = int(config.image_size) or DEFAULT_IMAGE_SIZE
    loaded = []
    for index, member in enumerate(members):
        progress(index, len(members), f"loading {member.label} ({index + 1} of {len(members)})")
        # The episode setting is checked on the mixture (or per member with "within"), not on each member alone.
        member_config = dataclasses.replace(config, name=member.name, root=member.root, sources="",
                                            split="default", image_size=size, ways=2, shots=1, queries=1)
        try:
            loaded.append(load_dataset(member_config, progress))
        except (ConfigError, DatasetError) as error:
            raise DatasetError(f"{FIELD}: {member.label}: {error}") from error
    tags = member_tags(members)
    channels = max(dataset.spec.channels for dataset in loaded)
    splits = {name: _mixed_split([(tag, dataset.split(name)) for tag, dataset in zip(tags, loaded)], size, channels)
              for name in SPLITS}
    spec = _spec(splits["train"], size, channels, {dataset.spec.foreground for dataset in loaded})
    progress(len(members), len(members), f"{len(members)} datasets mixed")
    return FewShotDataset(
        "mixture", spec, splits,
        description=f"{len(members)} datasets side by side: " + ", ".join(
            f"{tag} ({sum(d.split(s).num_classes for s in SPLITS):,} classes)" for tag, d in zip(tags, loaded)),
        skipped_files=[(f"{tag}: {path}", why) for tag, d in zip(tags, loaded) for path, why in d.skipped_files],
        warnings=[f"{tag}: {warning}" for tag, d in zip(tags, loaded) for warning in d.warnings])


__all__ = ["Member", "parse_sources", "member_tags", "load", "DEFAULT_IMAGE_SIZE"]

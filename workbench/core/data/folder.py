"""Image folder datasets: one subfolder per class, or train/ val/ test/ subfolders of class folders.

Domains: when the subfolders hold no images of their own but folders of images (``<root>/<domain>/<class>/``,
also under train/ val/ test/), each subfolder is a domain (like an Omniglot alphabet) and its subfolders are the
classes, named ``<domain>/<class>``; the classes' ``class_groups`` are their domains, so
``dataset.episode_domains = "within"`` can draw each episode from one domain. ``dataset.split = "domains"`` splits
whole domains (pooled from train/val/test when present) in a seeded order, each held-out split taking domains
until it has about 20% of the classes (at least 5, or a third when there are fewer than 15), so no domain is in
two splits; ``ratio`` and ``default`` split classes, whatever their domain.

Without train/val/test subfolders (or with ``dataset.split = "ratio"``) classes are shuffled with
``split_seed`` and split 60/20/20, except that meta-validation and meta-test each get at least 5 classes (or a
third of all classes when there are fewer than 15) so small folders still allow 5-way episodes. The split
depends only on the folder and the seed, never on n-way or k-shot. With train/ and test/ but no val/,
meta-validation classes are carved out of train/ the same way (20%, at least 5 or a third).

``validate_folder`` checks a folder before training (every image is decoded): unreadable files are listed
and skipped, classes with fewer than k-shot + q-query images are named, and a split with fewer classes than
n-way is an error saying what to change. ``load`` runs it and raises on errors.

Images are stored at ``dataset.image_size`` (default 84) with 3 channels unless every image is grayscale.
Decoded arrays are cached on disk keyed by the class folders' paths and modification times.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench.core.data.base import (SPLIT_TITLES, SPLITS, ClassSplit, FewShotDataset, PreprocessSpec, no_progress,
                                      rotate_classes)
from workbench.core.data.descriptors import attach_csv_descriptors
from workbench.core.data.images import (IMAGE_SUFFIXES, cache_key, is_image_name, load_many, read_cache,
                                        scan_images, write_cache)
from workbench.core.errors import DatasetError, EpisodeError

DEFAULT_IMAGE_SIZE = 84
RATIOS = (0.6, 0.2, 0.2)
MIN_HELD_OUT = 5
_SPLIT_FOLDER_NAMES = {"train": ("train", "training"), "val": ("val", "validation", "valid"), "test": ("test",)}
_IGNORED_FOLDERS = {"__MACOSX"}


@dataclass
class FolderReport:
    """What validating an image folder found. ``errors`` block training; the rest are warnings."""

    root: str
    layout: str = ""
    classes: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    images_per_class: dict[str, list[int]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    skipped_files: list[tuple[str, str]] = field(default_factory=list)
    # (split, class name, images found) for classes with fewer than k-shot + q-query images
    small_classes: list[tuple[str, str, int]] = field(default_factory=list)
    # (class name, split or "" when left out before splitting, why) for class folders with no readable image
    left_out: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # True when the errors concern the folder itself rather than the n-way / k-shot setting
    folder_problem: bool = False
    channels: int = 3
    needed_per_class: int = 0
    ratio_split: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def warnings(self, skipped: bool = True, small: bool = True) -> list[str]:
        """Sentences for the user. ``skipped=False`` leaves out the unreadable files (listed on their own),
        ``small=False`` the classes too small for this k-shot + q-query (they depend on the episode setting, not
        on the data)."""
        lines = list(self.notes)
        if self.skipped_files and skipped:
            first = self.skipped_files[0]
            lines.append(f"{len(self.skipped_files)} file(s) could not be read and were skipped, e.g. {first[0]}: "
                         f"{first[1]}")
        if self.left_out:
            lines.append(self.left_out_text())
        if self.small_classes and small:
            named = _name_list([f"'{name}' ({count}, {SPLIT_TITLES[split]})"
                                for split, name, count in self.small_classes], quote=False)
            lines.append(f"{len(self.small_classes)} class(es) have fewer than k-shot + q-query = "
                         f"{self.needed_per_class} images and cannot appear in episodes: {named}")
        return lines

    @property
    def empty_classes(self) -> list[str]:
        """The names of the class folders left out (empty, or none of their images readable)."""
        return [name for name, _, _ in self.left_out]

    def left_out_text(self) -> str:
        named = _name_list([f"'{name}'" + (f" ({SPLIT_TITLES[split]})" if split else "") + f": {why}"
                            for name, split, why in self.left_out], quote=False, separator="; ")
        return (f"{len(self.left_out)} class folder(s) hold no readable image and were left out: {named}")

    def summary(self) -> str:
        counts = ", ".join(f"{SPLIT_TITLES[s]} {len(self.classes[s])} classes / {sum(self.images_per_class[s])} "
                           f"images" for s in SPLITS)
        return f"Image folder {self.root} ({self.layout}): {counts}."


def _name_list(names: list[str], limit: int = 8, quote: bool = True, separator: str = ", ") -> str:
    shown = separator.join(f"'{n}'" if quote else n for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in _IGNORED_FOLDERS)


def _find_split_folders(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    by_lower = {p.name.lower(): p for p in _subfolders(root)}
    for split, names in _SPLIT_FOLDER_NAMES.items():
        for name in names:
            if name in by_lower:
                found[split] = by_lower[name]
                break
    return found


def _ratio_counts(n: int, ratios: tuple[float, ...]) -> tuple[int, ...]:
    """Class counts per split. Held-out splits get at least MIN_HELD_OUT classes when there are enough, so
    small folders still allow 5-way episodes; the split never depends on the episode settings."""
    held = [max(round(n * r), min(MIN_HELD_OUT, n // 3)) for r in ratios[1:]]
    return (n - sum(held), *held)


def _shuffled(names: list[str], seed: int) -> list[str]:
    order = sorted(names)
    random.Random(seed).shuffle(order)
    return order


def _root_error(root_text: str) -> str | None:
    if not root_text:
        return ("dataset.root is empty; set it to a folder with one subfolder of images per class, or with "
                "train/, val/ and test/ subfolders of class folders")
    root = Path(root_text).expanduser()
    if not root.exists():
        return f"the image folder {root} does not exist; check dataset.root"
    if not root.is_dir():
        return f"{root} is a file, not a folder; set dataset.root to a folder of class subfolders"
    return None


def _plan(root: Path, config, report: FolderReport) -> dict[str, list[tuple[str, list[Path]]]]:
    """Class folders and their image files per split (no decoding)."""
    split_folders = _find_split_folders(root)
    if split_folders and config.split not in ("ratio", "domains"):
        return _plan_from_split_folders(root, split_folders, config, report)
    # One folder per class, possibly gathered from train/val/test when the split is forced to a ratio.
    return _plan_by_ratio(root, list(split_folders.values()) if split_folders else [root], config, report)


def _class_folders(source: Path) -> list[tuple[str, Path]]:
    """(class name, folder) of a source's classes: its subfolders, or, when they are domain folders (no images
    of their own, only folders), each domain's subfolders named ``<domain>/<class>``."""
    folders = _subfolders(source)
    if folders and not any(scan_images(f) for f in folders) and any(_subfolders(f) for f in folders):
        return [(f"{domain.name}/{c.name}", c) for domain in folders for c in _subfolders(domain)]
    return [(f.name, f) for f in folders]


def domain_of(class_name: str) -> str:
    """The domain of a class of a domain layout (``<domain>/<class>``); "" for a plain class folder."""
    return class_name.rpartition("/")[0]


def class_domains(names: list[str]) -> list[str] | None:
    """Each class's domain when every class has one (ClassSplit.class_groups), else None."""
    domains = [domain_of(name) for name in names]
    return domains if domains and all(domains) else None


def _plan_from_split_folders(root: Path, split_folders: dict[str, Path], config,
                             report: FolderReport) -> dict[str, list[tuple[str, list[Path]]]]:
    plan: dict[str, list[tuple[str, list[Path]]]] = {s: [] for s in SPLITS}
    if "train" not in split_folders or "test" not in split_folders:
        have = ", ".join(p.name + "/" for p in split_folders.values())
        want = [name for name in ("train", "test") if name not in split_folders]
        report.errors.append(f"{root} has {have} but no {' or '.join(w + '/' for w in want)} folder; give it "
                             "train/, val/ and test/ subfolders of class folders, or only class folders (they "
                             "are then split 60/20/20)")
        report.folder_problem = True
        return plan
    others = [p.name for p in _subfolders(root) if p not in split_folders.values()]
    if others:
        report.notes.append(f"folders beside train/val/test are ignored: {_name_list(others)}")
    owner: dict[str, str] = {}
    for split, folder in split_folders.items():
        for name, class_dir in _class_folders(folder):
            if name in owner:
                report.errors.append(
                    f"class '{name}' is in both {split_folders[owner[name]]} and {folder}; "
                    "a class may be in only one split (meta-test classes must be unseen in training)")
                report.folder_problem = True
            owner[name] = split
            files = scan_images(class_dir)
            if files:
                plan[split].append((name, files))
            else:  # reported, and takes no place in the split
                report.left_out.append((name, split, _no_image_files([class_dir])))
    in_domains = any(domain_of(name) for name in owner)
    report.layout = "train/val/test subfolders" + (" of domain folders" if in_domains else "")
    if "val" not in split_folders:
        train = dict(plan["train"])
        n_val = _ratio_counts(len(train), (0.8, 0.2))[1]
        val_names = set(_shuffled(list(train), config.split_seed)[:n_val])
        plan["val"] = [(n, f) for n, f in plan["train"] if n in val_names]
        plan["train"] = [(n, f) for n, f in plan["train"] if n not in val_names]
        report.layout = (f"train/ and test/ subfolders; {n_val} meta-validation classes taken from train/ "
                         f"(seed {config.split_seed})")
    return plan


def _plan_by_ratio(root: Path, sources: list[Path], config,
                   report: FolderReport) -> dict[str, list[tuple[str, list[Path]]]]:
    plan: dict[str, list[tuple[str, list[Path]]]] = {s: [] for s in SPLITS}
    class_files: dict[str, list[Path]] = {}
    class_dirs: dict[str, list[Path]] = {}
    for source in sources:
        for name, class_dir in _class_folders(source):
            class_files.setdefault(name, []).extend(scan_images(class_dir))
            class_dirs.setdefault(name, []).append(class_dir)
    if not class_files or not any(class_files.values()):
        report.errors.append(_no_images_message(root, class_files, class_dirs))
        report.folder_problem = True
        return plan
    # Empty class folders would take a place in the split; they are reported instead.
    report.left_out.extend((name, "", _no_image_files(class_dirs[name]))
                           for name, files in sorted(class_files.items()) if not files)
    names = [name for name, files in class_files.items() if files]
    domains = class_domains(names)
    ratios = "/".join(str(round(r * 100)) for r in RATIOS)
    in_domains = f" in {len(set(domains))} domain folders" if domains else ""
    if config.split == "domains":
        groups = _domain_groups(root, names, domains, config.split_seed, report)
        if groups is None:
            return plan
        report.layout = (f"{len(names)} class folders in {len(set(domains))} domain folders; whole domains split "
                         f"about {ratios} by class count (seed {config.split_seed})")
    else:
        order = _shuffled(names, config.split_seed)
        bounds = np.cumsum((0, *_ratio_counts(len(order), RATIOS)))
        groups = [order[bounds[i]:bounds[i + 1]] for i in range(len(SPLITS))]
        report.layout = f"{len(order)} class folders{in_domains} split {ratios} by ratio (seed {config.split_seed})"
    for split, group in zip(SPLITS, groups):
        plan[split] = [(name, class_files[name]) for name in sorted(group)]
    report.ratio_split = True
    return plan


def _domain_groups(root: Path, names: list[str], domains: list[str] | None, seed: int,
                   report: FolderReport) -> list[list[str]] | None:
    """Class names per split (train, val, test) taking whole domains; None with an error when it cannot."""
    if not domains or len(set(domains)) < len(SPLITS):
        found = (f"has {len(set(domains))} domain folder(s)" if domains else
                 "has class folders directly, not <root>/<domain>/<class>/ folders")
        report.errors.append(f"dataset.split 'domains' holds out whole domain folders, one or more per split, but "
                             f"{root} {found}; use 'ratio' to split its classes, or give it at least "
                             f"{len(SPLITS)} domain folders of class folders")
        report.folder_problem = True
        return None
    members: dict[str, list[str]] = {}
    for name, domain in zip(names, domains):
        members.setdefault(domain, []).append(name)
    order = _shuffled(list(members), seed)
    held: list[list[str]] = []
    for index, ratio in enumerate(RATIOS[1:]):
        target = max(ratio * len(names), min(MIN_HELD_OUT, len(names) // 3))
        reserve = len(RATIOS) - 1 - index  # domains left for the splits still to fill
        taken: list[str] = []
        # At least one domain, then more while that brings the class count nearer the target.
        while len(order) > reserve and (not taken or abs(len(taken) + len(members[order[0]]) - target)
                                        < abs(len(taken) - target)):
            taken += members[order.pop(0)]
        held.append(taken)
    return [[name for domain in order for name in members[domain]], *held]


def _no_image_files(folders: list[Path]) -> str:
    """Why a class folder without image files is left out: it is empty, or holds only other files."""
    others = [p.name for folder in folders for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if not others:
        return "the folder is empty"
    return (f"it holds no image file ({len(others)} other file(s), e.g. '{others[0]}'; image files end in "
            f".png, .jpg, .bmp ...)")


def _unreadable(files: list[Path], skipped: dict[str, str]) -> str:
    """Why a class folder whose image files all failed to decode is left out, with the first file's reason."""
    first = files[0]
    return (f"none of its {len(files)} image file(s) could be read, e.g. '{first.name}': "
            f"{skipped.get(str(first), 'unreadable')}")


def _no_images_message(root: Path, class_files: dict[str, list[Path]], class_dirs: dict[str, list[Path]]) -> str:
    if not class_files:
        loose = [p for p in root.iterdir() if p.is_file() and is_image_name(p)]
        hint = (f"; it holds {len(loose)} image file(s) directly: put each class's images in its own subfolder"
                if loose else "")
        return (f"{root} has no class subfolders{hint}. Expected {root}/<class name>/<images>, or train/, val/ and "
                "test/ subfolders of class folders")
    nested = any(_subfolders(d) for dirs in class_dirs.values() for d in dirs)
    hint = (" Images seem to be one folder deeper: point dataset.root at a folder whose subfolders hold the "
            "images." if nested else "")
    return (f"no image files were found in the class folders of {root} (looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}).{hint}")


def _decode(root: Path, plan, size: int, progress) -> dict[str, np.ndarray]:
    """Decode every planned file as RGB, from the disk cache when the class folders are unchanged."""
    class_dirs = sorted({str(f.parent) for classes in plan.values() for _, files in classes for f in files})
    stamp = [(d, Path(d).stat().st_mtime_ns) for d in class_dirs]
    files = [f for split in SPLITS for _, class_files in plan[split] for f in class_files]
    key = cache_key("folder", str(root.resolve()), size, stamp, [str(f) for f in files])
    cached = read_cache("folder", key, ("images", "ok", "skipped"))
    if cached is not None:
        return cached
    images, ok, skipped = load_many(files, 3, size, progress, "Reading images")
    result = {"images": images, "ok": np.array([str(p) for p in ok], dtype=str),
              "skipped": np.array([f"{p}\t{r}" for p, r in skipped], dtype=str)}
    write_cache("folder", key, result)
    return result


def _classes(count: int) -> str:
    return f"{count} class" if count == 1 else f"{count} classes"


def _check_counts(report: FolderReport, root: Path, config, ratio_layout: bool) -> None:
    ways, need = config.ways, config.shots + config.queries
    report.needed_per_class = need
    total_classes = sum(len(report.classes[s]) for s in SPLITS)
    short = [s for s in SPLITS if len(report.classes[s]) < ways]
    for split in SPLITS:
        for name, count in zip(report.classes[split], report.images_per_class[split]):
            if count < need:
                report.small_classes.append((split, name, count))
    if short and ratio_layout:
        have = " and ".join(f"the {SPLIT_TITLES[s]} split has {_classes(len(report.classes[s]))}" for s in short)
        fit = min(len(report.classes[s]) for s in SPLITS)
        fix = (f"lower n-way to at most {fit} or add class folders" if fit >= 2 else
               f"add class folders: {len(SPLITS) * ways} are needed for {ways}-way episodes")
        how = "whole domains split about 60/20/20" if config.split == "domains" else "split 60/20/20 by ratio"
        report.errors.append(f"{root} has {_classes(total_classes)}, {how}; {have}, fewer than "
                             f"n-way = {ways}. Every split needs at least n-way classes, so {fix}.")
        return
    for split in SPLITS:
        names, counts = report.classes[split], report.images_per_class[split]
        title = SPLIT_TITLES[split]
        if len(names) < ways:
            fix = (f"lower n-way to at most {len(names)} or add class folders to the {split} folder" if len(names) >= 2
                   else f"add class folders to the {split} folder")
            report.errors.append(f"The {title} split of {root} has {_classes(len(names))}, fewer than n-way = {ways}; "
                                 f"{fix}.")
            continue
        eligible = sum(1 for c in counts if c >= need)
        if eligible < ways:
            fit = sorted(counts, reverse=True)[ways - 1]
            lower_ways = f", lower n-way to {eligible}" if eligible >= 2 else ""
            report.errors.append(
                f"Only {eligible} of the {len(names)} classes of the {title} split of {root} "
                f"{'has' if eligible == 1 else 'have'} k-shot + q-query = {need} images, fewer than n-way = {ways}. "
                f"Lower k-shot + q-query to at most {fit}{lower_ways}, or add images to the small classes.")


def _validate(config, progress) -> tuple[FolderReport, np.ndarray | None, dict[str, list[list[int]]]]:
    """The report, the decoded images [N, H, W, 3] and, per split, each kept class's rows in them."""
    report = FolderReport(root=config.root)
    problem = _root_error(config.root)
    if problem:
        report.errors.append(problem)
        report.folder_problem = True
        return report, None, {}
    if config.split in ("lake", "vinyals"):
        report.errors.append(f"dataset.split '{config.split}' is for Omniglot; use 'default' (train/val/test "
                             "subfolders when present, else a 60/20/20 ratio split) or 'ratio' for an image folder")
        report.folder_problem = True
        return report, None, {}
    root = Path(config.root).expanduser()
    report.root = str(root)
    try:
        plan = _plan(root, config, report)
    except OSError as exc:
        report.errors.append(f"cannot read the folder {root}: {exc}")
        report.folder_problem = True
        return report, None, {}
    if report.errors:
        return report, None, {}
    size = config.image_size or DEFAULT_IMAGE_SIZE
    decoded = _decode(root, plan, size, progress)
    report.skipped_files = [tuple(line.split("\t", 1)) for line in decoded["skipped"].tolist()]
    per_split = _rows_per_class(report, plan, decoded)
    images = decoded["images"]
    if len(images) and all(np.array_equal(images[..., 0], images[..., c]) for c in (1, 2)):
        report.channels = 1
    _check_counts(report, root, config, ratio_layout=report.ratio_split)
    if report.errors and report.left_out:  # the counts above are short by these folders: say why
        report.errors.append(f"Note: {report.left_out_text()}.")
    return report, images, per_split


def _rows_per_class(report: FolderReport, plan, decoded) -> dict[str, list[list[int]]]:
    """Each kept class's rows in the decoded images, per split; classes with no readable image are left out."""
    row_of = {path: i for i, path in enumerate(decoded["ok"].tolist())}
    skipped = dict(report.skipped_files)
    per_split: dict[str, list[list[int]]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        for name, files in plan[split]:
            rows = [row_of[str(f)] for f in files if str(f) in row_of]
            if not rows:
                report.left_out.append((name, split, _unreadable(files, skipped)))
                continue
            per_split[split].append(rows)
            report.classes[split].append(name)
            report.images_per_class[split].append(len(rows))
    return per_split


def validate_folder(config, progress=no_progress) -> FolderReport:
    """Check an image folder for ``config`` (a DatasetConfig); every image is decoded (and cached)."""
    return _validate(config, progress)[0]


def _sample(images: torch.Tensor, limit: int = 4096) -> torch.Tensor:
    """Evenly spaced images, enough for pixel statistics without a float copy of a big dataset."""
    if len(images) <= limit:
        return images
    return images[torch.linspace(0, len(images) - 1, limit).long()]


def _foreground(images: torch.Tensor, channels: int) -> str:
    if channels == 3 or images.numel() == 0:
        return "natural"
    mean = _sample(images).float().mean().item() / 255.0
    # Mostly-white grayscale images are drawings (dark strokes); mostly-black ones are the reverse.
    return "dark" if mean > 0.7 else "light" if mean < 0.3 else "natural"


def load(config, progress=no_progress) -> FewShotDataset:
    report, decoded, per_split = _validate(config, progress)
    if report.errors:
        error = DatasetError if report.folder_problem else EpisodeError
        raise error(" ".join(report.errors))
    channels = report.channels
    splits: dict[str, ClassSplit] = {}
    for split in SPLITS:
        counts = [len(rows) for rows in per_split[split]]
        rows = np.array([r for class_rows in per_split[split] for r in class_rows], dtype=np.int64)
        # One gather per split; the channel slice and NCHW layout are folded into the same copy.
        images = torch.from_numpy(decoded[rows][..., :channels]).permute(0, 3, 1, 2).contiguous()
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
        names = list(report.classes[split])
        splits[split] = ClassSplit(images, labels, names, class_domains(names))
    try:  # <root>/descriptors.csv: class descriptors for zero-shot; a broken one only costs zero-shot
        attach_csv_descriptors(splits, report.root)
        descriptor_warnings = []
    except DatasetError as error:
        descriptor_warnings = [f"Class descriptors not used: {error}"]
    train = splits["train"].images
    if len(train):
        pixels = _sample(train).float().div(255.0).transpose(0, 1).reshape(channels, -1)
        mean = tuple(round(v, 4) for v in pixels.mean(dim=1).tolist())
        std = tuple(round(max(v, 1e-3), 4) for v in pixels.std(dim=1).tolist())
    else:
        mean, std = (0.5,) * channels, (0.25,) * channels
    spec = PreprocessSpec(int(train.shape[-1]) if len(train) else config.image_size or DEFAULT_IMAGE_SIZE,
                          channels, mean, std, _foreground(train, channels))
    description = " ".join([report.summary(), *report.warnings(), *descriptor_warnings])
    if config.rotations:
        splits["train"] = rotate_classes(splits["train"])
        description += " Meta-train classes are augmented with 90/180/270 degree rotations (x4)."
    return FewShotDataset("folder", spec, splits, description, list(report.skipped_files),
                          report.warnings(skipped=False, small=False) + descriptor_warnings)

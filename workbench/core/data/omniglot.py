"""Omniglot (Lake et al. 2015): 1,623 handwritten characters from 50 alphabets, 20 drawings each.

Reads the official layout from folders (``images_background/``, ``images_evaluation/``), from the official zip
files (``images_background.zip``, ``images_evaluation.zip``, or the small sets ``images_background_small1.zip`` /
``_small2.zip``), with ``root`` pointing at such a folder or at one zip file. Can download through torchvision.

Protocols (``dataset.split``):

* ``lake`` / ``default`` / ``domains``: meta-test = the 659 evaluation characters (20 alphabets); meta-train =
  the background characters (964, 30 alphabets) minus meta-validation; meta-validation = whole background
  alphabets taken in a seeded order (``split_seed``) while that brings their character count nearer 10% of the
  background (with seed 0: Armenian and Cyrillic, 74 characters). Validation, like testing, uses alphabets never
  trained on, and meta-train keeps ~90% of the background characters (890 with seed 0).
* ``vinyals``: all 1,623 characters pooled and shuffled with ``split_seed``; 1,028 meta-train, 172
  meta-validation (together the usual 1,200 training characters) and 423 meta-test, the counts of Vinyals et
  al. 2016 / Snell et al. 2017. Class membership is seeded, not their exact lists.

Every character's alphabet is its class group (``ClassSplit.class_groups``), so ``dataset.episode_domains =
"within"`` draws each episode from one alphabet, like Lake et al.'s one-shot runs (20 characters of one evaluation
alphabet); every evaluation alphabet has at least 20 characters.

When only part of the data is present (for example only the small background zips) ``lake`` cannot use the
evaluation set, so whole alphabets are split instead (about 20% of characters for meta-test, 10% for
meta-validation) and ``vinyals`` keeps its proportions; the dataset description says so.

Normalisation: the pixel mean and standard deviation are computed at each load from the meta-train images
of the chosen split (before rotation augmentation, which does not change them), never from meta-validation or
meta-test images, so nothing about the test characters leaks into preprocessing. They are exact (from a
histogram of the 8-bit pixels) and rounded to 4 decimals: at 28x28, 0.9218 / 0.2157 for the Lake split and
0.9200 / 0.2184 for the Vinyals split (seed 0), where all 32,460 images together give 0.9195 / 0.2190 (the
constants used before). Checkpoints store the spec they were trained with, so older runs keep theirs.

Decoded images are cached on disk (see images.cache_dir) keyed by the sources' paths, sizes and modification
times plus the image size, so a second load skips decoding. The cache holds pixels only, not the statistics, so
a cache written before this change needs no rebuild.
"""

from __future__ import annotations

import random
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from workbench.core.data.base import ClassSplit, FewShotDataset, PreprocessSpec, no_progress, rotate_classes
from workbench.core.data.images import cache_key, default_workers, load_image, read_cache, write_cache
from workbench.core.errors import DatasetError, ImageLoadError

DEFAULT_IMAGE_SIZE = 28
BACKGROUND, EVALUATION = "background", "evaluation"
# Vinyals et al. split sizes over the full 1,623 characters (train / val / test).
VINYALS_COUNTS = (1028, 172, 423)
VAL_FRACTION = 0.10
_SUBFOLDERS = ("", "omniglot-py", "omniglot")


@dataclass
class _Character:
    part: str  # background / evaluation
    alphabet: str
    character: str
    # Each file is a Path, or (zip path, member name) for files inside a zip.
    files: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.alphabet}/{self.character}"


@dataclass
class _Source:
    part: str
    path: Path  # a folder of alphabets, or a zip file
    is_zip: bool


def _part_of(top: str) -> str:
    return EVALUATION if top.startswith("images_evaluation") else BACKGROUND


def _is_alphabet_folder(path: Path) -> bool:
    return path.is_dir() and any(child.is_dir() for child in path.iterdir())


def find_sources(root: Path) -> list[_Source]:
    """The Omniglot folders or zips under ``root`` (or ``root`` itself when it is a zip); [] when none."""
    if root.is_file():
        return [_Source("", root, True)] if zipfile.is_zipfile(root) else []
    if root.is_dir() and root.name.startswith(("images_background", "images_evaluation")):
        # Pointed at one part: use its siblings too when they are there.
        siblings = find_sources(root.parent)
        if any(s.path == root for s in siblings):
            return siblings
        return [_Source(_part_of(root.name), root, False)]
    for sub in _SUBFOLDERS:
        base = root / sub if sub else root
        if not base.is_dir():
            continue
        sources: list[_Source] = []
        for part, name in ((BACKGROUND, "images_background"), (EVALUATION, "images_evaluation")):
            if _is_alphabet_folder(base / name):
                sources.append(_Source(part, base / name, False))
            elif (base / f"{name}.zip").is_file():
                sources.append(_Source(part, base / f"{name}.zip", True))
            elif part == BACKGROUND:
                # Lake's small background sets; both may be present and they share two alphabets.
                for small in ("images_background_small1", "images_background_small2"):
                    if _is_alphabet_folder(base / small):
                        sources.append(_Source(part, base / small, False))
                    elif (base / f"{small}.zip").is_file():
                        sources.append(_Source(part, base / f"{small}.zip", True))
        if sources:
            return sources
    return []


def _source_stamp(source: _Source) -> list:
    """What the cache key depends on: a change to any character folder (or the zip) invalidates the cache."""
    stat = source.path.stat()
    if source.is_zip:
        return [str(source.path.resolve()), stat.st_size, stat.st_mtime_ns]
    mtimes = [stat.st_mtime_ns]
    count = 0
    for alphabet in source.path.iterdir():
        if alphabet.is_dir():
            mtimes.append(alphabet.stat().st_mtime_ns)
            for character in alphabet.iterdir():
                if character.is_dir():
                    mtimes.append(character.stat().st_mtime_ns)
                    count += 1
    return [str(source.path.resolve()), count, max(mtimes)]


def _list_characters(sources: list[_Source]) -> list[_Character]:
    characters: dict[tuple[str, str, str], _Character] = {}
    seen_files: set[tuple[str, str, str]] = set()

    def add(part: str, alphabet: str, character: str, filename: str, ref) -> None:
        if (alphabet, character, filename) in seen_files:  # small1 and small2 share Greek and Latin
            return
        seen_files.add((alphabet, character, filename))
        key = (part, alphabet, character)
        if key not in characters:
            characters[key] = _Character(part, alphabet, character)
        characters[key].files.append(ref)

    for source in sources:
        if source.is_zip:
            try:
                with zipfile.ZipFile(source.path) as archive:
                    names = archive.namelist()
            except (zipfile.BadZipFile, OSError) as exc:
                raise DatasetError(f"cannot read the Omniglot zip file {source.path}: {exc}") from None
            for member in names:
                parts = member.split("/")
                if len(parts) < 4 or not member.lower().endswith(".png") or parts[-1].startswith("."):
                    continue
                part = source.part or _part_of(parts[-4])
                add(part, parts[-3], parts[-2], parts[-1], (source.path, member))
        else:
            for alphabet in sorted(p for p in source.path.iterdir() if p.is_dir()):
                for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
                    for file in sorted(character.glob("*.png")):
                        if not file.name.startswith("."):
                            add(source.part, alphabet.name, character.name, file.name, file)
    ordered = sorted(characters.values(), key=lambda c: (c.part != BACKGROUND, c.alphabet, c.character))
    for character in ordered:
        character.files.sort(key=lambda ref: ref[1] if isinstance(ref, tuple) else ref.name)
    return ordered


def _ref_name(ref) -> str:
    return f"{ref[0]}:{ref[1]}" if isinstance(ref, tuple) else str(ref)


def _decode_characters(characters: list[_Character], size: int, progress) -> dict[str, np.ndarray]:
    refs = [(label, ref) for label, character in enumerate(characters) for ref in character.files]
    total = len(refs)
    images = np.empty((total, size, size), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int32)
    skipped: list[str] = []
    archives: dict[Path, zipfile.ZipFile] = {}
    for ref in (r for _, r in refs if isinstance(r, tuple)):
        if ref[0] not in archives:
            archives[ref[0]] = zipfile.ZipFile(ref[0])

    def decode(item) -> np.ndarray | str:
        ref = item[1]
        try:
            if isinstance(ref, tuple):  # ZipFile reads are serialized internally, so threads may share it
                return load_image(archives[ref[0]].read(ref[1]), 1, size, name=_ref_name(ref))
            return load_image(ref, 1, size)
        except ImageLoadError as exc:
            return exc.reason
        except (zipfile.BadZipFile, OSError) as exc:
            return str(exc)

    row = 0
    step = max(1, total // 200)
    executor = ThreadPoolExecutor(default_workers(total))
    try:
        for done, ((label, ref), result) in enumerate(zip(refs, executor.map(decode, refs))):
            if done % step == 0:
                progress(done, total, "Decoding Omniglot images")
            if isinstance(result, str):
                skipped.append(f"{_ref_name(ref)}\t{result}")
                continue
            images[row] = result[:, :, 0]
            labels[row] = label
            row += 1
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        for archive in archives.values():
            archive.close()
    progress(total, total, "Decoding Omniglot images")
    return {
        "images": images[:row],
        "labels": labels[:row],
        "names": np.array([c.name for c in characters], dtype=str),
        "alphabets": np.array([c.alphabet for c in characters], dtype=str),
        "parts": np.array([c.part for c in characters], dtype=str),
        "skipped": np.array(skipped, dtype=str),
    }


def default_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("meta-learning-workbench")) / "datasets" / "omniglot"


def _not_found_message(root: Path) -> str:
    return (f"Omniglot was not found in {root}. Looked for the folders images_background/ and images_evaluation/, or "
            "the zip files images_background.zip and images_evaluation.zip (or images_background_small1.zip / "
            f"images_background_small2.zip), in {root} and its omniglot-py/ subfolder. Put the official files there "
            "(https://github.com/brendenlake/omniglot, folder 'python'), point dataset.root at them, or turn on "
            "dataset.download.")


def download(root: Path, progress=no_progress) -> None:
    """Fetch both official zips through torchvision into ``root``/omniglot-py; DatasetError when that fails."""
    try:
        from torchvision.datasets import Omniglot
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise DatasetError(f"cannot download Omniglot: torchvision is not available ({exc})") from None
    parts = ("images_background", "images_evaluation")
    for i, part in enumerate(parts):
        progress(i, len(parts), f"Downloading Omniglot {part}.zip (torchvision)")
        try:
            Omniglot(str(root), background=(part == "images_background"), download=True)
        except Exception as exc:  # network errors come as URLError, OSError, RuntimeError ...
            raise DatasetError(
                f"Downloading Omniglot failed ({type(exc).__name__}: {exc}). Without internet, download "
                f"images_background.zip and images_evaluation.zip from https://github.com/brendenlake/omniglot "
                f"(folder 'python') on another machine and put them (or their extracted folders) in {root}, "
                "then load again with download off.") from None
    progress(len(parts), len(parts), "Omniglot downloaded")


def load_pool(root: Path, size: int, progress=no_progress) -> dict[str, np.ndarray]:
    """All characters found under ``root`` decoded at ``size``, from the disk cache when it is current."""
    sources = find_sources(root)
    if not sources:
        raise DatasetError(_not_found_message(root))
    key = cache_key("omniglot", size, [[s.part, s.is_zip, *_source_stamp(s)] for s in sources])
    required = ("images", "labels", "names", "alphabets", "parts", "skipped")
    cached = read_cache("omniglot", key, required)
    if cached is not None:
        progress(1, 1, "Omniglot loaded from cache")
        return cached
    progress(0, 1, "Listing Omniglot files")
    characters = _list_characters(sources)
    if not characters:
        raise DatasetError(f"no Omniglot character images (*.png in <alphabet>/<character>/ folders) were found in "
                           f"{', '.join(str(s.path) for s in sources)}")
    pool = _decode_characters(characters, size, progress)
    if len(pool["labels"]) == 0:
        raise DatasetError(f"none of the Omniglot images under {root} could be read; first problem: "
                           f"{pool['skipped'][0].replace(chr(9), ': ')}")
    write_cache("omniglot", key, pool)
    return pool


def _split_alphabets(alphabets: list[str], counts: dict[str, int], fractions: tuple[float, ...],
                     seed: int) -> list[list[str]]:
    """Take whole alphabets, in a seeded order, until each held-out group reaches its fraction of characters."""
    order = sorted(alphabets)
    random.Random(seed).shuffle(order)
    total = sum(counts[a] for a in order)
    groups: list[list[str]] = []
    for fraction in fractions:
        target = fraction * total
        group: list[str] = []
        taken = 0
        # At least one alphabet, then more while that brings the count closer to the target.
        while len(order) > 1 and (not group or abs(taken + counts[order[0]] - target) < abs(taken - target)):
            taken += counts[order[0]]
            group.append(order.pop(0))
        groups.append(group)
    groups.append(order)  # the rest
    return groups


def _assign(pool: dict[str, np.ndarray], protocol: str, seed: int) -> tuple[dict[str, list[int]], str]:
    """Character indexes per split, plus a sentence describing how they were chosen."""
    names = pool["names"].tolist()
    alphabets = pool["alphabets"].tolist()
    parts = pool["parts"].tolist()
    n = len(names)
    has_background = BACKGROUND in parts
    has_evaluation = EVALUATION in parts
    full = has_background and has_evaluation
    if protocol == "vinyals":
        order = list(range(n))
        random.Random(seed).shuffle(order)
        if n == sum(VINYALS_COUNTS):
            n_train, n_val = VINYALS_COUNTS[0], VINYALS_COUNTS[1]
        else:  # partial data: keep the proportions
            n_train = round(n * VINYALS_COUNTS[0] / sum(VINYALS_COUNTS))
            n_val = round(n * VINYALS_COUNTS[1] / sum(VINYALS_COUNTS))
        split = {"train": sorted(order[:n_train]), "val": sorted(order[n_train:n_train + n_val]),
                 "test": sorted(order[n_train + n_val:])}
        text = (f"Vinyals split: {n} characters pooled and shuffled (seed {seed}); {len(split['train'])} "
                f"meta-train, {len(split['val'])} meta-validation, {len(split['test'])} meta-test characters.")
        return split, text
    counts: dict[str, int] = {}
    for a in alphabets:
        counts[a] = counts.get(a, 0) + 1
    if full:
        background = sorted({a for a, p in zip(alphabets, parts) if p == BACKGROUND})
        val_alphabets, _ = _split_alphabets(background, counts, (VAL_FRACTION,), seed)
        val_set = set(val_alphabets)
        split = {"train": [i for i in range(n) if parts[i] == BACKGROUND and alphabets[i] not in val_set],
                 "val": [i for i in range(n) if parts[i] == BACKGROUND and alphabets[i] in val_set],
                 "test": [i for i in range(n) if parts[i] == EVALUATION]}
        text = (f"Lake split: meta-train = {len(split['train'])} background characters, meta-validation = "
                f"{len(split['val'])} characters of the held-out background alphabets {', '.join(val_alphabets)} "
                f"(seed {seed}), meta-test = the {len(split['test'])} evaluation characters.")
        return split, text
    present = "images_background" if has_background else "images_evaluation"
    test_alphabets, val_alphabets, _ = _split_alphabets(sorted(counts), counts, (0.2, VAL_FRACTION), seed)
    test_set, val_set = set(test_alphabets), set(val_alphabets)
    split = {"train": [i for i in range(n) if alphabets[i] not in test_set | val_set],
             "val": [i for i in range(n) if alphabets[i] in val_set],
             "test": [i for i in range(n) if alphabets[i] in test_set]}
    text = (f"Only {present} was found ({len(counts)} alphabets, {n} characters), so whole alphabets were split "
            f"(seed {seed}): meta-validation {', '.join(val_alphabets)}; meta-test {', '.join(test_alphabets)}.")
    return split, text


def _make_split(pool: dict[str, np.ndarray], character_ids: list[int]) -> ClassSplit:
    labels = pool["labels"]
    remap = np.full(len(pool["names"]), -1, dtype=np.int64)
    remap[character_ids] = np.arange(len(character_ids))
    new_labels = remap[labels]
    rows = np.nonzero(new_labels >= 0)[0]
    images = torch.from_numpy(np.ascontiguousarray(pool["images"][rows])).unsqueeze(1)
    names = [str(pool["names"][i]) for i in character_ids]
    groups = [str(pool["alphabets"][i]) for i in character_ids]
    return ClassSplit(images, torch.from_numpy(new_labels[rows]), names, groups)


def pixel_stats(images: torch.Tensor) -> tuple[float, float]:
    """Exact mean and standard deviation (0..1 scale) of uint8 images, from a 256-bin histogram (no float copy)."""
    if images.numel() == 0:
        return 0.5, 0.25
    counts = torch.bincount(images.flatten(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    mean = float((counts * values).sum() / counts.sum())
    variance = float((counts * (values - mean) ** 2).sum() / max(counts.sum().item() - 1, 1))
    return round(mean, 4), round(max(variance ** 0.5, 1e-3), 4)


def load(config, progress=no_progress) -> FewShotDataset:
    protocol = config.split if config.split in ("lake", "vinyals") else "lake"
    if config.split not in ("default", "lake", "vinyals", "domains"):  # Lake's split holds out whole alphabets
        raise DatasetError(f"dataset.split '{config.split}' does not apply to Omniglot; use 'lake' (or 'default'; "
                           "it holds out whole alphabets) or 'vinyals'")
    size = config.image_size or DEFAULT_IMAGE_SIZE
    root = Path(config.root).expanduser() if config.root else default_root()
    if not find_sources(root):
        if not config.download:
            raise DatasetError(_not_found_message(root))
        if root.is_file():
            raise DatasetError(f"cannot download Omniglot into {root}: it is a file; set dataset.root to a folder")
        download(root, progress)
    pool = load_pool(root, size, progress)
    assignment, text = _assign(pool, protocol, config.split_seed)
    splits = {name: _make_split(pool, ids) for name, ids in assignment.items()}
    mean, std = pixel_stats(splits["train"].images)  # meta-train only: see the module docstring
    if config.rotations:
        splits["train"] = rotate_classes(splits["train"])
        text += " Meta-train classes are augmented with 90/180/270 degree rotations (x4)."
    skipped = [tuple(line.split("\t", 1)) for line in pool["skipped"].tolist()]
    spec = PreprocessSpec(size, 1, (mean,), (std,), "dark")
    return FewShotDataset("omniglot", spec, splits, text, skipped)

"""mini-ImageNet (Vinyals et al. 2016) with the Ravi & Larochelle split: 64 / 16 / 20 classes, 600 images each.

Two layouts are read from ``root``:

* split CSVs ``train.csv``, ``val.csv``, ``test.csv`` (columns ``filename,label``) plus an ``images/`` folder;
  images of any size are resized to 84x84; decoded arrays are cached on disk.
* the common pickle cache ``mini-imagenet-cache-{train,val,test}.pkl``: a dict with ``image_data`` (uint8
  [N, 84, 84, 3]) and ``class_dict`` ({label: [row indexes]}); pickles are read without letting them run code.
"""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import numpy as np
import torch

from workbench.core.data.base import SPLITS, ClassSplit, FewShotDataset, PreprocessSpec, no_progress, rotate_classes
from workbench.core.data.images import cache_key, load_many, load_pickle, read_cache, resize_batch, write_cache
from workbench.core.errors import DatasetError

DEFAULT_IMAGE_SIZE = 84
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PICKLE_NAME = "mini-imagenet-cache-{split}.pkl"


def _csv_paths(root: Path) -> dict[str, Path]:
    return {s: root / f"{s}.csv" for s in SPLITS}


def _pickle_paths(root: Path) -> dict[str, Path]:
    return {s: root / PICKLE_NAME.format(split=s) for s in SPLITS}


def _not_found_message(root: Path) -> str:
    csvs = [p for p in _csv_paths(root).values() if p.is_file()]
    pickles = [p for p in _pickle_paths(root).values() if p.is_file()]
    found = ""
    if csvs or pickles:
        found = f" Found only {', '.join(p.name for p in csvs + pickles)}."
    elif root.is_dir() and (root / "images").is_dir():
        found = " Found images/ but no split CSVs."
    return (f"mini-ImageNet was not found in {root}: looked for train.csv, val.csv and test.csv (columns "
            f"filename,label) together with an images/ folder, or for mini-imagenet-cache-train.pkl, "
            f"mini-imagenet-cache-val.pkl and mini-imagenet-cache-test.pkl.{found} Point dataset.root at the folder "
            "holding one of these layouts.")


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["filename", "label"]:
        raise DatasetError(f"{path} must start with the header 'filename,label'")
    entries = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DatasetError(f"{path}, line {line}: expected 'filename,label', got {','.join(row)!r}")
        entries.append((row[0].strip(), row[1].strip()))
    return entries


def _load_csv_layout(root: Path, size: int, progress) -> tuple[dict[str, tuple[np.ndarray, list[str], list[str]]],
                                                                list[tuple[str, str]]]:
    """Per split: (images [N,3,size,size], label per image, class names); plus skipped files."""
    images_dir = root / "images"
    entries = {s: _read_csv(p) for s, p in _csv_paths(root).items()}
    owner: dict[str, str] = {}
    for split, rows in entries.items():
        for _, label in rows:
            if owner.setdefault(label, split) != split:
                raise DatasetError(f"class '{label}' is listed in both {owner[label]}.csv and {split}.csv; a class "
                                   "may be in only one split")
    names = [(name, label) for s in SPLITS for name, label in entries[s]]
    stamps = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in _csv_paths(root).values()]
    key = cache_key("mini-imagenet", str(root.resolve()), size, stamps, images_dir.stat().st_mtime_ns)
    cached = read_cache("mini-imagenet", key, ("images", "ok", "skipped"))
    if cached is None:
        present, missing = [], []
        for name, label in names:
            # images/<file> as in Ravi's release, or images/<label>/<file> as some copies have it
            path = images_dir / name if (images_dir / name).is_file() else images_dir / label / name
            if path.is_file():
                present.append((name, path))
            else:
                missing.append((str(images_dir / name), f"listed in a split CSV but missing from {images_dir}"))
        images, ok, skipped = load_many([p for _, p in present], 3, size, progress, "Reading mini-ImageNet images")
        name_of = {str(path): name for name, path in present}
        cached = {"images": images, "ok": np.array([name_of[str(p)] for p in ok], dtype=str),
                  "skipped": np.array([f"{p}\t{r}" for p, r in missing + skipped], dtype=str)}
        write_cache("mini-imagenet", key, cached)
    row_of = {name: i for i, name in enumerate(cached["ok"].tolist())}
    result = {}
    for split in SPLITS:
        kept = [(row_of[name], label) for name, label in entries[split] if name in row_of]
        rows = np.array([r for r, _ in kept], dtype=np.int64)
        result[split] = (cached["images"][rows].transpose(0, 3, 1, 2), [label for _, label in kept],
                         sorted({label for _, label in entries[split]}))
    skipped = [tuple(line.split("\t", 1)) for line in cached["skipped"].tolist()]
    return result, skipped


def _load_pickle_layout(root: Path, size: int, progress) -> dict[str, tuple[np.ndarray, list[str], list[str]]]:
    result = {}
    for i, (split, path) in enumerate(_pickle_paths(root).items()):
        progress(i, len(SPLITS), f"Reading {path.name}")
        try:
            data = load_pickle(path)
            images = np.asarray(data["image_data"], dtype=np.uint8)
            class_dict = data["class_dict"]
        except (pickle.UnpicklingError, OSError, EOFError, KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{path} is not a readable mini-ImageNet pickle cache (a dict with 'image_data' and "
                               f"'class_dict'): {type(exc).__name__}: {exc}") from None
        if images.ndim != 4 or images.shape[-1] != 3:
            raise DatasetError(f"{path}: image_data has shape {images.shape}, expected [N, 84, 84, 3]")
        names = sorted(str(k) for k in class_dict)
        labels = np.full(len(images), "", dtype=object)
        for label, rows in class_dict.items():
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size and (rows.min() < 0 or rows.max() >= len(images)):
                raise DatasetError(f"{path}: class_dict['{label}'] points past the {len(images)} images")
            labels[rows] = str(label)
        keep = np.nonzero(labels != "")[0]
        chw = images[keep].transpose(0, 3, 1, 2)
        if chw.shape[-1] != size or chw.shape[-2] != size:
            chw = resize_batch(chw, size)
        result[split] = (chw, labels[keep].tolist(), names)
    progress(len(SPLITS), len(SPLITS), "mini-ImageNet read")
    return result


def load(config, progress=no_progress) -> FewShotDataset:
    if config.split != "default":
        raise DatasetError(f"dataset.split '{config.split}' does not apply to mini-ImageNet; it uses the Ravi & "
                           "Larochelle split, choose 'default'")
    if not config.root:
        raise DatasetError("dataset.root is empty; set it to the folder holding mini-ImageNet (train.csv, val.csv, "
                           "test.csv and images/, or the mini-imagenet-cache-*.pkl files)")
    root = Path(config.root).expanduser()
    size = config.image_size or DEFAULT_IMAGE_SIZE
    skipped: list[tuple[str, str]] = []
    if all(p.is_file() for p in _pickle_paths(root).values()):
        parts = _load_pickle_layout(root, size, progress)
        layout = "pickle cache"
    elif all(p.is_file() for p in _csv_paths(root).values()) and (root / "images").is_dir():
        parts, skipped = _load_csv_layout(root, size, progress)
        layout = "split CSVs and images/"
    else:
        raise DatasetError(_not_found_message(root))
    seen: dict[str, str] = {}
    splits = {}
    for split, (images, labels, names) in parts.items():
        for name in names:
            if seen.setdefault(name, split) != split:
                raise DatasetError(f"class '{name}' is in both the {seen[name]} and the {split} split of {root}")
        index = {n: i for i, n in enumerate(names)}
        label_ids = torch.tensor([index[label] for label in labels], dtype=torch.long)
        splits[split] = ClassSplit(torch.from_numpy(np.ascontiguousarray(images)), label_ids, names)
    counts = "/".join(str(splits[s].num_classes) for s in SPLITS)
    text = f"mini-ImageNet, Ravi & Larochelle split ({counts} classes) read from the {layout} in {root}."
    if skipped:
        text += f" {len(skipped)} image(s) could not be read and were skipped."
    if config.rotations:
        splits["train"] = rotate_classes(splits["train"])
        text += " Meta-train classes are augmented with 90/180/270 degree rotations (x4)."
    spec = PreprocessSpec(size, 3, IMAGENET_MEAN, IMAGENET_STD, "natural")
    return FewShotDataset("mini-imagenet", spec, splits, text, skipped)

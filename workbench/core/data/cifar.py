"""CIFAR-FS and FC100: few-shot splits of CIFAR-100 (32x32 RGB, 600 images per class).

Reads torchvision's CIFAR-100 python layout (``cifar-100-python/{train,test,meta}`` under ``root``, or ``root``
pointing at ``cifar-100-python`` itself) and pools its train and test images per class. Can download through
torchvision.

* CIFAR-FS (Bertinetto et al. 2019): 64 / 16 / 20 classes. The class lists are the published ones, as shipped
  with torchmeta (``assets/cifar100/cifar-fs``) and learn2learn; meta-train is the 64 classes not listed below.
* FC100 (Oreshkin et al. 2018): split by superclass, 12 / 4 / 4 superclasses (60 / 20 / 20 classes), the
  published superclass split (as in torchmeta ``assets/cifar100/fc100``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from workbench.core.data.base import ClassSplit, FewShotDataset, PreprocessSpec, no_progress, rotate_classes
from workbench.core.data.images import load_pickle, resize_batch
from workbench.core.errors import DatasetError

DEFAULT_IMAGE_SIZE = 32
# Per-channel statistics of the CIFAR-100 training images.
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
FOLDER = "cifar-100-python"

CIFAR_FS_VAL = ("beaver", "otter", "flatfish", "shark", "lamp", "television", "beetle", "butterfly", "sea", "camel",
                "cattle", "crab", "crocodile", "maple_tree", "motorcycle", "tractor")
CIFAR_FS_TEST = ("whale", "poppy", "rose", "sweet_pepper", "telephone", "bed", "table", "wardrobe", "leopard", "plain",
                 "chimpanzee", "fox", "snail", "worm", "baby", "man", "woman", "bicycle", "pickup_truck", "rocket")
FC100_VAL = ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals")
FC100_TEST = ("aquatic_mammals", "insects", "medium_mammals", "people")


def default_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_data_dir("meta-learning-workbench")) / "datasets" / "cifar"


def find_folder(root: Path) -> Path | None:
    for candidate in (root / FOLDER, root):
        if all((candidate / name).is_file() for name in ("train", "test", "meta")):
            return candidate
    return None


def _not_found_message(root: Path) -> str:
    return (f"CIFAR-100 was not found in {root}: looked for {FOLDER}/train, {FOLDER}/test and {FOLDER}/meta (the "
            "python version from https://www.cs.toronto.edu/~kriz/cifar.html, extracted). Extract "
            f"cifar-100-python.tar.gz into {root}, point dataset.root at the folder holding {FOLDER}, or turn on "
            "dataset.download.")


def download(root: Path, progress=no_progress) -> None:
    progress(0, 1, "Downloading CIFAR-100 (torchvision)")
    try:
        from torchvision.datasets import CIFAR100

        CIFAR100(str(root), train=True, download=True)
    except Exception as exc:  # URLError, OSError, RuntimeError (checksum) ...
        raise DatasetError(
            f"Downloading CIFAR-100 failed ({type(exc).__name__}: {exc}). Without internet, download "
            "cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html on another machine, put it (or "
            f"the extracted {FOLDER} folder) in {root}, then load again.") from None
    progress(1, 1, "CIFAR-100 downloaded")


def _field(entry: dict, name: str):
    # torchvision-style latin1 loading gives str keys; other readers give bytes keys.
    if name in entry:
        return entry[name]
    if name.encode() in entry:
        return entry[name.encode()]
    raise KeyError(name)


def _read(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Pooled images [N,3,32,32], fine labels, coarse labels, fine names and coarse names."""
    images, fine, coarse = [], [], []
    try:
        for part in ("train", "test"):
            entry = load_pickle(folder / part)
            data = np.asarray(_field(entry, "data"), dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32))
            fine.append(np.asarray(_field(entry, "fine_labels"), dtype=np.int64))
            coarse.append(np.asarray(_field(entry, "coarse_labels"), dtype=np.int64))
        meta = load_pickle(folder / "meta")
        fine_names = [n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, "fine_label_names")]
        coarse_names = [n.decode() if isinstance(n, bytes) else str(n) for n in _field(meta, "coarse_label_names")]
    except (pickle.UnpicklingError, OSError, EOFError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{folder} does not hold a readable CIFAR-100 python dataset ({type(exc).__name__}: "
                           f"{exc}); download it again or turn on dataset.download") from None
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse), fine_names, coarse_names


def class_split(name: str, fine_names: list[str], coarse_of: dict[str, str]) -> dict[str, list[str]]:
    """Fine class names per split for ``cifar-fs`` or ``fc100``."""
    if name == "fc100":
        missing = [c for c in FC100_VAL + FC100_TEST if c not in set(coarse_of.values())]
        if missing:
            raise DatasetError(f"the CIFAR-100 meta file lacks the superclasses {missing}; is this CIFAR-100?")
        val = [f for f in fine_names if coarse_of[f] in FC100_VAL]
        test = [f for f in fine_names if coarse_of[f] in FC100_TEST]
    else:
        missing = [c for c in CIFAR_FS_VAL + CIFAR_FS_TEST if c not in fine_names]
        if missing:
            raise DatasetError(f"the CIFAR-100 meta file lacks the classes {missing}; is this CIFAR-100?")
        val, test = list(CIFAR_FS_VAL), list(CIFAR_FS_TEST)
    held = set(val) | set(test)
    return {"train": [f for f in fine_names if f not in held], "val": val, "test": test}


def load(config, progress=no_progress) -> FewShotDataset:
    name = config.name if config.name in ("cifar-fs", "fc100") else "cifar-fs"
    if config.split not in ("default",):
        raise DatasetError(f"dataset.split '{config.split}' does not apply to {name}; its class split is fixed, "
                           "use 'default'")
    root = Path(config.root).expanduser() if config.root else default_root()
    folder = find_folder(root)
    if folder is None:
        if not config.download:
            raise DatasetError(_not_found_message(root))
        download(root, progress)
        folder = find_folder(root)
        if folder is None:
            raise DatasetError(_not_found_message(root))
    progress(0, 2, "Reading CIFAR-100")
    images, fine, coarse, fine_names, coarse_names = _read(folder)
    coarse_of = {}
    for f, c in zip(fine.tolist(), coarse.tolist()):
        coarse_of.setdefault(fine_names[f], coarse_names[c])
    if len(coarse_of) != len(fine_names):
        raise DatasetError(f"{folder} lacks images of some CIFAR-100 classes; download it again")
    size = config.image_size or DEFAULT_IMAGE_SIZE
    if size != 32:
        progress(1, 2, f"Resizing CIFAR-100 to {size}x{size}")
        images = resize_batch(images, size)
    index_of = {n: i for i, n in enumerate(fine_names)}
    splits = {}
    for split, names in class_split(name, fine_names, coarse_of).items():
        ids = [index_of[n] for n in names]
        remap = np.full(len(fine_names), -1, dtype=np.int64)
        remap[ids] = np.arange(len(ids))
        labels = remap[fine]
        rows = np.nonzero(labels >= 0)[0]
        splits[split] = ClassSplit(torch.from_numpy(np.ascontiguousarray(images[rows])),
                                   torch.from_numpy(labels[rows]), list(names), [coarse_of[n] for n in names])
    progress(2, 2, "CIFAR-100 ready")
    if name == "fc100":
        text = ("FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12/4/4 superclasses = 60/20/20 classes; "
                f"meta-validation {', '.join(FC100_VAL)}; meta-test {', '.join(FC100_TEST)}.")
    else:
        text = "CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 classes split 64/16/20 with the published class lists."
    text += " The CIFAR-100 train and test images are pooled per class (600 each)."
    if config.rotations:
        splits["train"] = rotate_classes(splits["train"])
        text += " Meta-train classes are augmented with 90/180/270 degree rotations (x4)."
    spec = PreprocessSpec(size, 3, MEAN, STD, "natural")
    return FewShotDataset(name, spec, splits, text)

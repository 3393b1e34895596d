"""Fabricate tiny datasets on disk in the real layouts (image folders, CIFAR-100 pickles, mini-ImageNet).

Every image encodes its class so tests can check that labels point at the right pixels.
"""

from __future__ import annotations

import csv
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# CIFAR-100 superclasses and their fine classes (the real hierarchy; names as in the dataset's meta file).
CIFAR100_HIERARCHY = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR100_FINE = sorted(f for fines in CIFAR100_HIERARCHY.values() for f in fines)
CIFAR100_COARSE = sorted(CIFAR100_HIERARCHY)


def class_color(index: int) -> tuple[int, int, int]:
    """A distinct solid colour per class index (survives resizing unchanged)."""
    return ((index * 37) % 256, (index * 91 + 40) % 256, (index * 53 + 80) % 256)


def solid_image(color, size=(24, 20), mode="RGB") -> Image.Image:
    image = Image.new("RGB", size, tuple(color))
    return image.convert(mode) if mode != "RGB" else image


def make_class_folders(root: Path, counts: dict[str, int], mode: str = "RGB", suffix: str = ".png",
                       size=(24, 20), start_index: int = 0) -> dict[str, int]:
    """root/<class>/<i>.png with a solid class colour; returns class -> colour index."""
    indexes = {}
    for offset, (name, count) in enumerate(counts.items()):
        index = start_index + offset
        indexes[name] = index
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            solid_image(class_color(index), size, mode).save(folder / f"{i:03d}{suffix}")
    return indexes


def make_split_folders(root: Path, layout: dict[str, dict[str, int]], mode: str = "RGB") -> None:
    """root/{train,val,test}/<class>/... from {"train": {"cat": 5, ...}, ...}."""
    start = 0
    for split, counts in layout.items():
        make_class_folders(root / split, counts, mode=mode, start_index=start)
        start += len(counts)


def write_corrupt_png(path: Path) -> Path:
    """A PNG whose data stops half-way."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def cifar_image_code(fine: int, serial: int) -> np.ndarray:
    """A 3x32x32 image whose first pixel holds the fine label and second the image's serial number."""
    image = np.full((3, 32, 32), (fine * 2) % 256, dtype=np.uint8)
    image[0, 0, 0] = fine
    image[0, 0, 1] = serial % 256
    return image


def make_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1, bytes_keys: bool = False) -> Path:
    """A fake torchvision CIFAR-100 python folder (root/cifar-100-python/{train,test,meta})."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = {f: CIFAR100_COARSE.index(c) for c, fines in CIFAR100_HIERARCHY.items() for f in fines}

    def key(name: str):
        return name.encode() if bytes_keys else name

    serial = 0
    for part, per_class in (("train", train_per_class), ("test", test_per_class)):
        data, fine, coarse = [], [], []
        for _ in range(per_class):
            for label, name in enumerate(CIFAR100_FINE):
                data.append(cifar_image_code(label, serial).reshape(-1))
                fine.append(label)
                coarse.append(coarse_of[name])
                serial += 1
        entry = {key("data"): np.stack(data), key("fine_labels"): fine, key("coarse_labels"): coarse,
                 key("batch_label"): part}
        with open(folder / part, "wb") as handle:
            pickle.dump(entry, handle, protocol=2)
    meta = {key("fine_label_names"): list(CIFAR100_FINE), key("coarse_label_names"): list(CIFAR100_COARSE)}
    with open(folder / "meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return folder


def mini_classes(split: str, count: int) -> list[str]:
    offset = {"train": 0, "val": 100, "test": 200}[split]
    return [f"n{offset + i:08d}" for i in range(count)]


def make_mini_imagenet_pickles(root: Path, classes=(6, 3, 3), per_class: int = 4, size: int = 84) -> dict:
    """mini-imagenet-cache-{split}.pkl files; returns {class name: colour index}."""
    root.mkdir(parents=True, exist_ok=True)
    colors = {}
    for split, count in zip(("train", "val", "test"), classes):
        images, class_dict = [], {}
        # Interleave classes so class_dict rows are not contiguous, as a careless reader would assume.
        for i in range(per_class):
            for name in mini_classes(split, count):
                colors.setdefault(name, len(colors))
                class_dict.setdefault(name, []).append(len(images))
                images.append(np.full((size, size, 3), class_color(colors[name]), dtype=np.uint8))
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as handle:
            pickle.dump({"image_data": np.stack(images), "class_dict": class_dict}, handle, protocol=4)
    return colors


def make_mini_imagenet_csv(root: Path, classes=(6, 3, 3), per_class: int = 4, size=(30, 24)) -> dict:
    """train.csv / val.csv / test.csv plus images/<file>.jpg; returns {class name: colour index}."""
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    colors = {}
    for split, count in zip(("train", "val", "test"), classes):
        with open(root / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["filename", "label"])
            for name in mini_classes(split, count):
                colors[name] = len(colors)
                for i in range(per_class):
                    filename = f"{name}{i:08d}.png"
                    solid_image(class_color(colors[name]), size).save(images / filename)
                    writer.writerow([filename, name])
    return colors

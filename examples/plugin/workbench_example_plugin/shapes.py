"""Shapes: a procedurally generated few-shot dataset of simple shapes (the example plugin's dataset).

Each class is a random polygon (3 to 8 corners at random radii) drawn filled, as an outline or as a ring; each of
its samples redraws it with a random rotation, size, position, corner jitter and stroke width. Everything follows
from seeds, so the same class and sample always give the same image, and nothing is downloaded. Classes are split
240 = 144 / 48 / 48 into meta-train, meta-validation and meta-test.

The workbench finds this dataset through the ``workbench.datasets`` entry point, whose object is :data:`INFO`;
loading imports :data:`INFO.module` (this module) and calls :func:`load`.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from workbench.core.data import DatasetInfo, FewShotDataset, PreprocessSpec
from workbench.core.data.base import ClassSplit, ProgressCallback, no_progress, rotate_classes
from workbench.core.errors import ConfigError

SEED = 20240
SPLIT_CLASSES = {"train": 144, "val": 48, "test": 48}
SAMPLES_PER_CLASS = 20
DEFAULT_IMAGE_SIZE = 28
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 84
SUPERSAMPLE = 4  # drawn at 4x the size, then box-filtered down: smooth edges
STYLES = ("filled", "outline", "ring")

INFO = DatasetInfo(
    "shapes", "Shapes (example plugin)", __name__,
    "Procedurally generated polygons (3-8 corners) drawn filled, as outlines or as rings; 240 classes x 20 "
    "samples, split 144/48/48. Generated in seconds, no download. From the example plugin.",
    needs_root=False, kinds=("classification", "noisy-labels"), test_tasks=600,
    default_image_size=DEFAULT_IMAGE_SIZE)


def class_template(class_id: int) -> dict:
    """The polygon and drawing style that make a class: corner angles and radii in shape units (|r| <= 1)."""
    rng = np.random.default_rng([SEED, class_id])
    corners = int(rng.integers(3, 9))
    step = 2 * np.pi / corners
    angles = np.arange(corners) * step + rng.uniform(-0.3, 0.3, corners) * step + rng.uniform(0, step)
    return {"angles": angles, "radii": rng.uniform(0.45, 1.0, corners), "style": STYLES[int(rng.integers(3))],
            "width": float(rng.uniform(0.1, 0.18)), "corners": corners}


def _corner_points(template: dict, rng: np.random.Generator, size: int) -> list[tuple[float, float]]:
    """The template's corners for one sample: rotated, scaled, shifted and jittered, in pixels."""
    rotation = rng.uniform(-0.35, 0.35)  # radians: about +-20 degrees keeps classes apart
    scale = rng.uniform(0.7, 0.95) * size / 2
    centre = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    radii = template["radii"] * rng.normal(1.0, 0.05, template["corners"])
    angles = template["angles"] + rotation
    return [(float(centre[0] + scale * r * np.cos(a)), float(centre[1] + scale * r * np.sin(a)))
            for r, a in zip(radii, angles)]


def render_sample(class_id: int, sample: int, size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """uint8 [size, size]: dark shape on a light background."""
    template = class_template(class_id)
    rng = np.random.default_rng([SEED, class_id, sample])
    big = size * SUPERSAMPLE
    image = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(image)
    points = _corner_points(template, rng, big)
    width = max(1, round(template["width"] * rng.uniform(0.8, 1.2) * big / 2))
    if template["style"] == "outline":
        draw.polygon(points, outline=0, width=width)
    else:
        draw.polygon(points, fill=0)
        if template["style"] == "ring":
            cx, cy = np.mean(points, axis=0)
            inner = [(cx + 0.45 * (x - cx), cy + 0.45 * (y - cy)) for x, y in points]
            draw.polygon(inner, fill=255)
    return np.asarray(image.reduce(SUPERSAMPLE), dtype=np.uint8)


def _make_split(first: int, count: int, size: int, progress: ProgressCallback, done: int, total: int) -> ClassSplit:
    images = np.empty((count * SAMPLES_PER_CLASS, 1, size, size), np.uint8)
    for offset in range(count):
        class_id = first + offset
        for sample in range(SAMPLES_PER_CLASS):
            images[offset * SAMPLES_PER_CLASS + sample, 0] = render_sample(class_id, sample, size)
        if (done + offset + 1) % 24 == 0:
            progress(done + offset + 1, total, "drawing shapes")
    labels = torch.arange(count).repeat_interleave(SAMPLES_PER_CLASS)
    names = [f"shape-{first + offset:03d}" for offset in range(count)]
    groups = [f"{class_template(first + offset)['corners']} corners" for offset in range(count)]
    return ClassSplit(torch.from_numpy(images), labels, names, groups)


def load(config, progress: ProgressCallback = no_progress) -> FewShotDataset:
    """Called by ``workbench.core.data.load_dataset`` with the run's DatasetConfig."""
    size = int(config.image_size) or DEFAULT_IMAGE_SIZE
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ConfigError("dataset.image_size", f"shapes are drawn at {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels "
                          f"(0 means {DEFAULT_IMAGE_SIZE}); {size} is outside that range")
    if config.split not in ("default",):
        raise ConfigError("dataset.split", f"shapes have one fixed class split; use 'default', not '{config.split}'")
    total = sum(SPLIT_CLASSES.values())
    splits, first = {}, 0
    for name, count in SPLIT_CLASSES.items():
        splits[name] = _make_split(first, count, size, progress, first, total)
        first += count
    if config.rotations:
        splits["train"] = rotate_classes(splits["train"])
    pixels = splits["train"].images.float().div_(255.0)
    spec = PreprocessSpec(image_size=size, channels=1, mean=(float(pixels.mean()),), std=(float(pixels.std()),),
                          foreground="dark")
    counts = "/".join(str(c) for c in SPLIT_CLASSES.values())
    return FewShotDataset("shapes", spec, splits, f"Procedurally generated polygons; {counts} train/val/test "
                          f"classes of {SAMPLES_PER_CLASS} samples at {size}x{size}.")

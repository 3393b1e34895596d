"""The built-in ``glyphs`` dataset: procedurally generated handwritten characters, Omniglot-like.

Characters are grouped in alphabets. Each alphabet owns a small vocabulary of pen strokes (splines or
polylines); its characters are compositions of 1-4 of those strokes at placements, so characters of one
alphabet resemble each other, as in Omniglot. Each of the 20 samples of a character is that character
redrawn by one of 20 "drawers" (a per-drawer style: slant, aspect, size, stroke width, sloppiness) with
motor noise (jittered control points, stroke misplacement, a small random affine transform).

Everything is fixed by seeds: the same class and sample index always give the same image. Alphabets are
split like Lake et al.'s Omniglot protocol, so no class and no alphabet is in two splits. The rendered
images are cached on disk, keyed by the generator version and its parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from workbench.core.data.base import (ClassSplit, FewShotDataset, PreprocessSpec, ProgressCallback, no_progress,
                                      rotate_classes)
from workbench.core.data.descriptors import GLYPH_FIELDS, rotate_quarter_turns, shape_descriptor
from workbench.core.errors import ConfigError
from workbench.core.fileio import atomic_write

# Bump whenever the drawing changes in any way: cached images of another version are never used.
GENERATOR_VERSION = 2
DEFAULT_IMAGE_SIZE = 28
# Conv-4 needs 16 pixels or more; 40,000 images at 128x128 already take 655 MB of memory.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 128
CACHE_ENV_VAR = "WORKBENCH_CACHE_DIR"
# Pixel statistics of the default set at 28x28 (scaled to [0, 1]); measured by bench/glyphs_calibration.py.
PIXEL_MEAN = 0.93
PIXEL_STD = 0.215

SUPERSAMPLE = 4  # drawn at 4x the image size, then box-filtered down: antialiased strokes


@dataclass(frozen=True)
class GlyphParams:
    """Everything that decides the images. Part of the cache key."""

    num_alphabets: int = 50
    characters_per_alphabet: int = 40
    samples_per_class: int = 20
    # Alphabets per split, in order: the first ones are meta-train, then meta-validation, then meta-test.
    split_alphabets: tuple[int, int, int] = (30, 10, 10)
    seed: int = 0
    # Alphabet design: each alphabet draws this many stroke primitives (inclusive range).
    primitives_min: int = 5
    primitives_max: int = 9
    # Motor noise, in character units (the character spans about [-1, 1]).
    control_jitter: float = 0.06
    stroke_shift: float = 0.05
    stroke_rotation_deg: float = 6.0
    stroke_scale: float = 0.08
    rotation_deg: float = 8.0
    shear: float = 0.12
    scale: float = 0.15
    translation: float = 0.16
    # Stroke width in pixels at 28x28 (scaled with the image size), per drawer.
    width_min: float = 0.9
    width_max: float = 1.8

    def __post_init__(self):
        if sum(self.split_alphabets) != self.num_alphabets:
            raise ValueError(f"split_alphabets {self.split_alphabets} must add up to num_alphabets "
                             f"{self.num_alphabets}")
        if min(self.split_alphabets) < 1 or self.characters_per_alphabet < 1 or self.samples_per_class < 1:
            raise ValueError("every split needs an alphabet, and alphabets need characters and samples")

    @property
    def num_classes(self) -> int:
        return self.num_alphabets * self.characters_per_alphabet

    def split_class_ranges(self) -> dict[str, range]:
        """Global class ids of each split (classes are numbered alphabet by alphabet)."""
        ranges, start = {}, 0
        for name, count in zip(("train", "val", "test"), self.split_alphabets):
            stop = start + count * self.characters_per_alphabet
            ranges[name] = range(start, stop)
            start = stop
        return ranges


DEFAULT_PARAMS = GlyphParams()
# Classes per split of the default set (alphabets x characters).
CLASSES_PER_SPLIT = {name: len(r) for name, r in DEFAULT_PARAMS.split_class_ranges().items()}


# --- geometry ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Stroke:
    points: np.ndarray  # [K, 2] control points in character units
    smooth: bool  # spline through the points; else a polyline (angular alphabets)


# Fixed first word of every seed. Not GENERATOR_VERSION: a bump that only invalidates caches keeps the images.
_SEED_NAMESPACE = 1


def _rng(params: GlyphParams, *keys: int) -> np.random.Generator:
    return np.random.default_rng([_SEED_NAMESPACE, params.seed, *keys])


def _make_primitive(rng: np.random.Generator, curviness: float, angular: float) -> Stroke:
    """A random pen stroke: a short random walk of 2-5 control points, centred, longest side 1."""
    count = int(rng.choice([2, 3, 3, 4, 4, 5]))
    smooth = bool(rng.random() >= angular)
    heading = rng.uniform(0, 2 * np.pi)
    points = [np.zeros(2)]
    for _ in range(count - 1):
        if smooth:
            heading += rng.normal(0, curviness)
        else:
            heading += rng.choice([-1, 1]) * rng.choice([np.pi / 2, 3 * np.pi / 4, np.pi / 4, 0.0])
        points.append(points[-1] + rng.uniform(0.35, 0.8) * np.array([np.cos(heading), np.sin(heading)]))
    pts = np.array(points)
    lo, hi = pts.min(0), pts.max(0)
    pts = (pts - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-6)
    return Stroke(pts, smooth)


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


# 1-4 strokes per character, mostly 2-3; strokes mostly upright; three stroke sizes.
_STROKE_COUNT_CDF = np.cumsum([0.15, 0.35, 0.3, 0.2])[:-1]
_TURN_CDF = np.cumsum([0.55, 0.15, 0.15, 0.15])[:-1]
_STROKE_SIZES = (0.5, 0.75, 1.0)
_QUARTER_TURNS = [np.round(_rotation(k * np.pi / 2)) for k in range(4)]


@dataclass(frozen=True, eq=False)
class Character:
    strokes: tuple[Stroke, ...]
    primitives: tuple[int, ...]  # which of its alphabet's primitives each stroke is


@dataclass(frozen=True, eq=False)
class Alphabet:
    primitives: tuple[Stroke, ...]  # the stroke vocabulary its characters share
    characters: tuple[Character, ...]


def _compose_character(rng: np.random.Generator, primitives: list[Stroke], weights: np.ndarray,
                       base_scale: float) -> Character:
    """1-4 primitives placed on a 3x3 grid or attached to earlier strokes, centred, with a size of its own."""
    # Draws by inverse CDF: much faster than Generator.choice(p=...) in this inner loop.
    count = 1 + int(np.searchsorted(_STROKE_COUNT_CDF, rng.random(), side="right"))
    strokes, used = [], []
    for i in range(count):
        index = min(int(np.searchsorted(weights, rng.random(), side="right")), len(primitives) - 1)
        prim = primitives[index]
        turn = int(np.searchsorted(_TURN_CDF, rng.random(), side="right"))
        size = _STROKE_SIZES[int(rng.integers(3))] * base_scale
        pts = prim.points @ _QUARTER_TURNS[turn].T * size
        if i > 0 and rng.random() < 0.6:
            # Attach: the stroke starts (or ends) at a point of an earlier stroke, as pen strokes do.
            host = strokes[int(rng.integers(len(strokes)))].points
            offset = host[int(rng.integers(len(host)))] - pts[-int(rng.integers(2))]
        else:
            offset = rng.integers(-1, 2, size=2) * 0.5
        strokes.append(Stroke(pts + offset, prim.smooth))
        used.append(index)
    # Like Omniglot's, characters are not all equally big.
    allpts = np.concatenate([s.points for s in strokes])
    lo, hi = allpts.min(0), allpts.max(0)
    centre, extent = (lo + hi) / 2, max(float((hi - lo).max()), 1e-6)
    fit = rng.uniform(1.5, 2.0) / extent
    return Character(tuple(Stroke((s.points - centre) * fit, s.smooth) for s in strokes), tuple(used))


def _footprint(character: Character, cells: int = 10) -> np.ndarray:
    """Coarse occupancy grid of the clean drawing, scaled to unit size: to spot near-duplicate characters."""
    dense = np.concatenate([_spline_matrix(len(s.points), s.smooth)[0] @ s.points for s in character.strokes])
    fine = np.concatenate([dense[:-1] + (dense[1:] - dense[:-1]) * t for t in np.linspace(0, 1, 6)])
    lo, hi = fine.min(0), fine.max(0)
    unit = (fine - (lo + hi) / 2) / max(float((hi - lo).max()), 1e-6) + 0.5
    idx = np.clip((unit * cells).astype(int), 0, cells - 1)
    grid = np.zeros((cells, cells), dtype=bool)
    grid[idx[:, 1], idx[:, 0]] = True
    return grid


@lru_cache(maxsize=128)
def alphabet(params: GlyphParams, index: int) -> Alphabet:
    """One alphabet: its stroke vocabulary and its characters (distinct compositions of that vocabulary)."""
    rng = _rng(params, 1, index)
    curviness = rng.uniform(0.3, 1.4)
    angular = float(rng.choice([0.0, 0.2, 0.5, 0.9]))
    count = int(rng.integers(params.primitives_min, params.primitives_max + 1))
    primitives = [_make_primitive(rng, curviness, angular) for _ in range(count)]
    # Zipf-like use of the vocabulary: a few strokes recur in most characters.
    weights = 1.0 / np.arange(1, count + 1) ** 0.8
    weights = np.cumsum(weights / weights.sum())[:-1]
    base_scale = rng.uniform(0.9, 1.3)
    characters, attempts = [], 0
    footprints = np.zeros((params.characters_per_alphabet, 100), dtype=bool)
    while len(characters) < params.characters_per_alphabet:
        attempts += 1
        if attempts > 100 * params.characters_per_alphabet:
            raise ValueError(f"alphabet {index}: cannot compose {params.characters_per_alphabet} distinct "
                             "characters; ask for fewer characters per alphabet")
        candidate = _compose_character(rng, primitives, weights, base_scale)
        footprint = _footprint(candidate).ravel()
        # Reject near-duplicates (same shape up to size and position): no two classes may be one character.
        done = footprints[:len(characters)]
        if ((done & footprint).sum(1) > _MAX_OVERLAP * (done | footprint).sum(1)).any():
            continue
        footprints[len(characters)] = footprint
        characters.append(candidate)
    return Alphabet(tuple(primitives), tuple(characters))


_MAX_OVERLAP = 0.75  # Jaccard overlap of footprints above which two characters count as the same


def character(params: GlyphParams, class_id: int) -> Character:
    return alphabet(params, class_alphabet(params, class_id)).characters[class_id % params.characters_per_alphabet]


def class_alphabet(params: GlyphParams, class_id: int) -> int:
    return class_id // params.characters_per_alphabet


def alphabet_name(alphabet: int) -> str:
    return f"Alphabet_{alphabet + 1:02d}"


def class_name(params: GlyphParams, class_id: int) -> str:
    alphabet = class_alphabet(params, class_id)
    return f"{alphabet_name(alphabet)}/character{class_id % params.characters_per_alphabet + 1:02d}"


@lru_cache(maxsize=32)
def _spline_matrix(count: int, smooth: bool) -> tuple[np.ndarray, np.ndarray]:
    """Linear map from K control points to the drawn polyline (Catmull-Rom through the points if smooth),
    and the polyline rows that need a round pen tip: both ends, and the corners of a polyline."""
    if not smooth or count == 2:
        return np.eye(count), np.arange(count)
    t = np.arange(_SPLINE_STEPS) / _SPLINE_STEPS
    basis = 0.5 * np.stack([-t ** 3 + 2 * t ** 2 - t, 3 * t ** 3 - 5 * t ** 2 + 2,
                            -3 * t ** 3 + 4 * t ** 2 + t, t ** 3 - t ** 2], axis=1)  # [T, 4]
    # Padded points P[-1] = 2 P0 - P1 and P[K] = 2 P[K-1] - P[K-2], written as rows over the K real points.
    pad = np.zeros((count + 2, count))
    pad[1:-1] = np.eye(count)
    pad[0, 0], pad[0, 1] = 2, -1
    pad[-1, -1], pad[-1, -2] = 2, -1
    rows = [basis @ pad[j:j + 4] for j in range(count - 1)]
    rows.append(np.eye(count)[-1:])
    return np.concatenate(rows), np.array([0, (count - 1) * _SPLINE_STEPS])


_SPLINE_STEPS = 6  # polyline pieces per spline span; spans are a few pixels long


def glyph_descriptors(params: GlyphParams, class_ids: tuple[int, ...], turns: tuple[int, ...] = ()) -> np.ndarray:
    """[classes, len(GLYPH_FIELDS)] attributes of each class's clean drawing (see workbench.core.data.descriptors),
    turned by ``turns[i]`` quarter turns counterclockwise for rotation classes; measured, never rendered."""
    rows = []
    for index, class_id in enumerate(class_ids):
        strokes = character(params, class_id).strokes
        drawn = [_spline_matrix(len(s.points), s.smooth)[0] @ s.points for s in strokes]
        drawn = rotate_quarter_turns(drawn, turns[index] if turns else 0)
        rows.append(shape_descriptor(drawn, [s.smooth for s in strokes]))
    return np.array(rows, dtype=np.float32).reshape(len(class_ids), len(GLYPH_FIELDS))


# --- drawing -------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _drawer_styles(params: GlyphParams) -> dict[str, np.ndarray]:
    """Per sample index a drawer with its own style, shared by all characters (like Omniglot's 20 drawers)."""
    rng = _rng(params, 2)
    n = params.samples_per_class
    return {
        "slant": rng.normal(0, params.shear, n),
        "aspect": np.exp(rng.normal(0, 0.08, n)),
        "size": np.exp(rng.normal(0, params.scale, n)),
        "width": rng.uniform(params.width_min, params.width_max, n),
        "sloppiness": rng.uniform(0.6, 1.4, n),
    }


def _sample_polylines(params: GlyphParams, class_id: int, strokes, indexes: np.ndarray, size: int):
    """Pixel coordinates of every stroke of every requested sample: list over strokes of [n, T, 2]."""
    styles = _drawer_styles(params)
    n = len(indexes)
    counts = [len(s.points) for s in strokes]
    # The whole class's noise is drawn, then rows picked: an image never depends on which samples are requested.
    needed = 6 + sum(4 + 2 * k for k in counts)
    z = _rng(params, 3, class_id).standard_normal((params.samples_per_class, needed))[indexes]
    sloppy = styles["sloppiness"][indexes]
    # Whole-character affine: the drawer's slant, size and aspect plus a small random rotation, scale and shift.
    angle = z[:, 0] * np.radians(params.rotation_deg)
    scale = styles["size"][indexes] * np.exp(z[:, 1] * params.scale * 0.5)
    slant = styles["slant"][indexes] + z[:, 2] * params.shear * 0.5
    shift = z[:, 3:5] * params.translation
    aspect = styles["aspect"][indexes] * np.exp(z[:, 5] * 0.04)
    sx, sy, cos, sin = scale * aspect, scale / aspect, np.cos(angle), np.sin(angle)
    affine = np.stack([np.stack([cos * sx, (cos * slant - sin) * sy], -1),
                       np.stack([sin * sx, (sin * slant + cos) * sy], -1)], 1)  # rotation @ shear @ scale
    polylines, knots, offset = [], [], 6
    for stroke, k in zip(strokes, counts):
        block = z[:, offset:offset + 4 + 2 * k]
        offset += 4 + 2 * k
        # Stroke-level motor noise: each stroke is turned, resized and misplaced a little, its points jittered.
        s_angle = block[:, 0] * np.radians(params.stroke_rotation_deg) * sloppy
        s_scale = np.exp(block[:, 1] * params.stroke_scale * sloppy)
        s_shift = block[:, 2:4] * params.stroke_shift * sloppy[:, None]
        jitter = block[:, 4:].reshape(n, k, 2) * params.control_jitter * sloppy[:, None, None]
        centre = stroke.points.mean(0)
        c, s = np.cos(s_angle) * s_scale, np.sin(s_angle) * s_scale
        rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], 1)
        pts = np.einsum("nij,nkj->nki", rot, stroke.points[None] - centre + jitter) + centre + s_shift[:, None]
        pts = np.einsum("nij,nkj->nki", affine, pts)
        matrix, rows = _spline_matrix(k, stroke.smooth)
        polylines.append(np.einsum("tk,nkd->ntd", matrix, pts))
        knots.append(rows)
    # Keep the character on the page: shrink it if too large, then shift it inside (pen widths stay clear).
    unit = _CHARACTER_SPAN * size
    width_px = styles["width"][indexes] * size / DEFAULT_IMAGE_SIZE
    limit = (size / 2 - 0.75 - width_px / 2) / unit  # [n], in character units
    allpts = np.concatenate(polylines, axis=1)
    lo, hi = allpts.min(1), allpts.max(1)
    centre, extent = (lo + hi) / 2, (hi - lo).max(1)
    fit = np.minimum(1.0, 2 * limit / np.maximum(extent, 1e-6))
    half = (hi - lo) * fit[:, None] / 2
    new_centre = np.clip(centre + shift, -limit[:, None] + half, limit[:, None] - half)
    pixels = []
    for pts in polylines:
        placed = (pts - centre[:, None]) * fit[:, None, None] + new_centre[:, None]
        # Character units to pixels; y grows downwards in images.
        pixels.append(np.stack([size / 2 + placed[..., 0] * unit, size / 2 - placed[..., 1] * unit], -1))
    return pixels, knots, width_px


# Character units [-1, 1] span this fraction of the image on each side of the centre.
_CHARACTER_SPAN = 0.36


def render_class(params: GlyphParams, class_id: int, size: int = DEFAULT_IMAGE_SIZE,
                 samples: np.ndarray | None = None) -> np.ndarray:
    """uint8 [S, size, size] images of one class (all its samples, or the given sample indexes)."""
    if not 0 <= class_id < params.num_classes:
        raise ValueError(f"class_id {class_id} is outside 0..{params.num_classes - 1}")
    strokes = character(params, class_id).strokes
    indexes = np.arange(params.samples_per_class) if samples is None else np.asarray(samples, dtype=int)
    pixels, knots, width_px = _sample_polylines(params, class_id, strokes, indexes, size)
    # All samples on one tall canvas, one tile each (characters stay inside their tile), then box-filtered down.
    n, big = len(indexes), size * SUPERSAMPLE
    canvas = Image.new("L", (big, big * n), 255)
    draw = ImageDraw.Draw(canvas)
    for k in range(n):
        width = max(1, int(round(width_px[k] * SUPERSAMPLE)))
        r = width / 2
        for pts, rows in zip(pixels, knots):
            # Coordinates on a 1/64 grid make a tile's drawing exactly the same wherever the tile lies.
            xy = np.round(pts[k] * (SUPERSAMPLE * 64)) / 64
            xy[:, 1] += k * big
            draw.line(xy.ravel().tolist(), fill=0, width=width)
            # Round pen tips and corners (PIL's own round joints are much slower).
            for x, y in xy[rows].tolist():
                draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    return np.array(canvas.reduce(SUPERSAMPLE)).reshape(n, size, size)


def render_glyph(class_id: int, sample_index: int, size: int = DEFAULT_IMAGE_SIZE,
                 params: GlyphParams = DEFAULT_PARAMS) -> np.ndarray:
    """One image, uint8 [size, size]: dark ink (about 0) on a light background (255)."""
    if not 0 <= sample_index < params.samples_per_class:
        raise ValueError(f"sample_index {sample_index} is outside 0..{params.samples_per_class - 1}")
    return render_class(params, class_id, size, np.array([sample_index]))[0]


def render_more(params: GlyphParams, class_ids: tuple[int, ...], size: int, class_index: int,
                count: int) -> torch.Tensor:
    """``count`` new drawings of the split's class ``class_index`` (global id ``class_ids[class_index]``), by
    drawers beyond the dataset's ``samples_per_class``: the same character, never one of the split's images.
    uint8 [count, 1, size, size]; the same for the same arguments (``ClassSplit.more_images``)."""
    if count <= 0:
        return torch.zeros((0, 1, size, size), dtype=torch.uint8)
    first = params.samples_per_class
    more_drawers = replace(params, samples_per_class=first + count)
    images = render_class(more_drawers, class_ids[class_index], size, np.arange(first, first + count))
    return torch.from_numpy(images).unsqueeze(1)


def render_all(params: GlyphParams, size: int = DEFAULT_IMAGE_SIZE,
               progress: ProgressCallback = no_progress) -> np.ndarray:
    """uint8 [classes, samples, size, size] for every class, reporting progress every few classes."""
    images = np.empty((params.num_classes, params.samples_per_class, size, size), dtype=np.uint8)
    total = params.num_classes
    for c in range(total):
        if c % 50 == 0:
            progress(c, total, f"Drawing glyphs: class {c} of {total}")
        images[c] = render_class(params, c, size)
    progress(total, total, "Drawing glyphs: done")
    return images


# --- cache ---------------------------------------------------------------------------------------------------------
_MAGIC = b"WBGLYPHS"


def cache_dir() -> Path:
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("meta-learning-workbench"))


def cache_key(params: GlyphParams, size: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "image_size": size, "params": asdict(params)}


def cache_path(params: GlyphParams, size: int) -> Path:
    key = json.dumps(cache_key(params, size), sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "glyphs" / f"glyphs-v{GENERATOR_VERSION}-{size}px-{digest}.bin"


def _write_cache(path: Path, key: dict, images: np.ndarray) -> None:
    data = np.ascontiguousarray(images).tobytes()
    header = json.dumps({"key": key, "shape": list(images.shape), "crc32": zlib.crc32(data)}).encode()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(_MAGIC + len(header).to_bytes(8, "little") + header)
            handle.write(data)

    atomic_write(path, write)


def _read_cache(path: Path, key: dict) -> np.ndarray | None:
    """The cached images, or None when the file is missing, from other parameters, truncated or corrupt."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(16)
            if len(start) != 16 or start[:8] != _MAGIC:
                return None
            length = int.from_bytes(start[8:], "little")
            if length > 1 << 20:
                return None
            header = json.loads(handle.read(length))
            if header["key"] != json.loads(json.dumps(key)):
                return None
            images = np.empty(tuple(int(v) for v in header["shape"]), dtype=np.uint8)
            if handle.readinto(memoryview(images).cast("B")) != images.nbytes or handle.read(1):
                return None
        if zlib.crc32(images) != header["crc32"]:
            return None
        return images
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def _remove_other_versions(folder: Path) -> None:
    """Images drawn by another generator version can never be used again; free their disk space."""
    for old in folder.glob("glyphs-v*.bin"):
        if not old.name.startswith(f"glyphs-v{GENERATOR_VERSION}-"):
            old.unlink(missing_ok=True)


def generate(params: GlyphParams = DEFAULT_PARAMS, size: int = DEFAULT_IMAGE_SIZE,
             progress: ProgressCallback = no_progress, use_cache: bool = True) -> tuple[np.ndarray, bool]:
    """All images, [classes, samples, size, size], from the disk cache when valid; returns (images, from_cache)."""
    key = cache_key(params, size)
    path = cache_path(params, size)
    if use_cache:
        images = _read_cache(path, key)
        if images is not None:
            progress(1, 1, "Glyphs loaded from cache")
            return images, True
    images = render_all(params, size, progress)
    if use_cache:
        try:
            _write_cache(path, key, images)
            _remove_other_versions(path.parent)
        except OSError:
            pass  # an unwritable cache only costs time on the next load
    return images, False


# --- dataset -------------------------------------------------------------------------------------------------------
def preprocess_spec(size: int = DEFAULT_IMAGE_SIZE) -> PreprocessSpec:
    return PreprocessSpec(image_size=size, channels=1, mean=(PIXEL_MEAN,), std=(PIXEL_STD,), foreground="dark")


def make_glyphs(params: GlyphParams = DEFAULT_PARAMS, size: int = DEFAULT_IMAGE_SIZE, rotations: bool = False,
                progress: ProgressCallback = no_progress, use_cache: bool = True) -> FewShotDataset:
    """A glyph dataset for any parameters (tests and benches use small ones)."""
    images, _ = generate(params, size, progress, use_cache)
    splits = {}
    for split_name, ids in params.split_class_ranges().items():
        block = torch.from_numpy(images[ids.start:ids.stop]).reshape(-1, 1, size, size)
        labels = torch.arange(len(ids)).repeat_interleave(params.samples_per_class)
        names = [class_name(params, c) for c in ids]
        groups = [alphabet_name(class_alphabet(params, c)) for c in ids]
        splits[split_name] = ClassSplit(block, labels, names, groups, descriptor_fields=GLYPH_FIELDS,
                                        descriptors=partial(glyph_descriptors, params, tuple(ids)),
                                        more_images=partial(render_more, params, tuple(ids), size))
    if rotations:
        splits["train"] = rotate_classes(splits["train"])
        ids = tuple(params.split_class_ranges()["train"])
        splits["train"].descriptor_fields = GLYPH_FIELDS  # rotation classes: the drawing turned as the image is
        splits["train"].descriptors = partial(glyph_descriptors, params, ids * 4,
                                              tuple(turn for turn in range(4) for _ in ids))
    counts = {s: len(r) for s, r in params.split_class_ranges().items()}
    description = (f"Procedurally generated handwritten characters (generator v{GENERATOR_VERSION}): "
                   f"{params.num_alphabets} alphabets x {params.characters_per_alphabet} characters x "
                   f"{params.samples_per_class} drawers; {counts['train']}/{counts['val']}/{counts['test']} "
                   f"train/val/test classes split by alphabet.")
    return FewShotDataset("glyphs", preprocess_spec(size), splits, description)


def load(config, progress: ProgressCallback = no_progress) -> FewShotDataset:
    """Entry point for :func:`workbench.core.data.load_dataset`; honours image_size and rotations."""
    size = int(config.image_size) or DEFAULT_IMAGE_SIZE
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        gigabytes = DEFAULT_PARAMS.num_classes * DEFAULT_PARAMS.samples_per_class * size * size / 1e9
        raise ConfigError("dataset.image_size", f"glyphs are drawn at {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels "
                          f"(0 means {DEFAULT_IMAGE_SIZE}); {size} is outside that range"
                          + (f" and would need {gigabytes:.1f} GB of memory" if size > MAX_IMAGE_SIZE else ""))
    return make_glyphs(DEFAULT_PARAMS, size, bool(config.rotations), progress)


__all__ = ["GENERATOR_VERSION", "DEFAULT_IMAGE_SIZE", "CLASSES_PER_SPLIT", "GlyphParams", "DEFAULT_PARAMS",
           "render_glyph", "render_class", "render_all", "generate", "make_glyphs", "load", "cache_dir",
           "cache_path", "preprocess_spec", "alphabet", "character"]

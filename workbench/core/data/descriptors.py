"""Class descriptors: a numeric attribute vector per class, for zero-shot classification (Snell et al. 2017, 2.7).

A descriptor is declared as data: a tuple of :class:`DescriptorField` (name, title, range, help), and a split holds
one row per class (``ClassSplit.class_descriptors`` [num_classes, len(fields)]). Two sources:

- the built-in glyphs: :func:`shape_descriptor` measures each class's clean drawing, straight from the generator's
  strokes (no rendering): how many strokes, how long and curved, corners, closed loops, crossings, free ends,
  left-right and top-bottom symmetry, aspect, where the ink sits, its main direction, coverage and size;
- an image folder: a ``descriptors.csv`` in its root, one row per class (first column the class name as the dataset
  names it, a header row naming the attributes), read by :func:`read_descriptor_csv`; ranges are the columns'
  own minimum and maximum.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from workbench.core.errors import ConfigError, DatasetError

CSV_FILE = "descriptors.csv"


@dataclass(frozen=True)
class DescriptorField:
    """One attribute of a class: what it is called, its range and what it means."""

    name: str
    title: str
    low: float
    high: float
    help: str
    integer: bool = False  # a count: sliders step by whole numbers

    def __post_init__(self):
        if not self.name or not self.high > self.low:
            raise ValueError(f"descriptor field {self.name!r}: needs a name and low < high ({self.low}, {self.high})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DescriptorField":
        return cls(str(data["name"]), str(data["title"]), float(data["low"]), float(data["high"]), str(data["help"]),
                   bool(data.get("integer", False)))


def scale(values: torch.Tensor, fields: Sequence[DescriptorField]) -> torch.Tensor:
    """Raw attribute values [..., D] -> [0, 1] by each field's declared range (the encoder's input)."""
    low = torch.tensor([f.low for f in fields], dtype=values.dtype, device=values.device)
    high = torch.tensor([f.high for f in fields], dtype=values.dtype, device=values.device)
    return (values - low) / (high - low)


def fields_to_list(fields: Sequence[DescriptorField]) -> list[dict[str, Any]]:
    return [f.to_dict() for f in fields]


def fields_from_list(items: Sequence[dict[str, Any]]) -> tuple[DescriptorField, ...]:
    return tuple(DescriptorField.from_dict(item) for item in items)


@dataclass
class DescriptorSpace:
    """What a model knows of its descriptors: the fields, a default value per field (the training classes'
    medians) and named example classes (their values), for describing a new class in "try a task"."""

    fields: tuple[DescriptorField, ...] = ()
    defaults: list[float] = field(default_factory=list)
    presets: dict[str, list[float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.fields)

    def vector(self, values: dict[str, float]) -> list[float]:
        """One class's values in field order; ConfigError naming a missing or unknown field."""
        names = [f.name for f in self.fields]
        unknown = sorted(set(values) - set(names))
        missing = [name for name in names if name not in values]
        if unknown or missing:
            raise ConfigError("descriptors", f"expected values for {', '.join(names)}"
                              + (f"; missing {', '.join(missing)}" if missing else "")
                              + (f"; unknown {', '.join(unknown)}" if unknown else ""))
        return [float(values[name]) for name in names]

    def to_state(self) -> dict[str, Any]:
        """Checkpoint form (lists, strings and tensors only: safe for ``torch.load(weights_only=True)``)."""
        return {"fields": fields_to_list(self.fields), "defaults": torch.tensor(self.defaults, dtype=torch.float32),
                "preset_names": list(self.presets), "presets": torch.tensor(
                    list(self.presets.values()), dtype=torch.float32).reshape(len(self.presets), len(self.fields))}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "DescriptorSpace":
        presets = torch.as_tensor(state["presets"]).tolist()
        return cls(fields_from_list(state["fields"]), torch.as_tensor(state["defaults"]).tolist(),
                   dict(zip(state["preset_names"], presets)))


# --- glyph attributes -----------------------------------------------------------------------------------------------
GLYPH_FIELDS = (
    DescriptorField("strokes", "Strokes", 1, 4, "How many pen strokes the character has.", integer=True),
    DescriptorField("ink_length", "Ink length", 0.5, 6.0, "Total length of its strokes, in units of the character's "
                    "largest side (1: one straight stroke across it)."),
    DescriptorField("curviness", "Curviness", 0.0, 8.0, "How much its smooth strokes bend: total turning in "
                    "radians per unit of ink length (0: straight lines only)."),
    DescriptorField("corners", "Corners", 0, 12, "Sharp turns (over 30 degrees) inside its angular strokes.",
                    integer=True),
    DescriptorField("loops", "Closed loops", 0, 5, "Enclosed holes its strokes draw around (as in 'o' or 'B').",
                    integer=True),
    DescriptorField("crossings", "Crossings", 0, 10, "Points where strokes cross each other or themselves.",
                    integer=True),
    DescriptorField("free_ends", "Free ends", 0, 8, "Stroke ends that touch no other stroke.", integer=True),
    DescriptorField("symmetry_lr", "Left-right symmetry", 0.0, 1.0, "Overlap of the character with its mirror image "
                    "(left-right); 1: perfectly symmetric."),
    DescriptorField("symmetry_tb", "Top-bottom symmetry", 0.0, 1.0, "Overlap of the character with its upside-down "
                    "mirror image; 1: perfectly symmetric."),
    DescriptorField("width_share", "Width", 0.0, 1.0, "Width / (width + height): 0.5 is as wide as tall, more is "
                    "wider."),
    DescriptorField("balance_x", "Ink to the right", -0.5, 0.5, "Where the ink's centre lies from left (-) to right "
                    "(+), in units of the largest side."),
    DescriptorField("balance_y", "Ink at the top", -0.5, 0.5, "Where the ink's centre lies from bottom (-) to top "
                    "(+), in units of the largest side."),
    DescriptorField("horizontal", "Horizontal strokes", -1.0, 1.0, "Main direction of the ink: +1 all horizontal, "
                    "-1 all vertical."),
    DescriptorField("diagonal", "Rising diagonals", -1.0, 1.0, "+1 all rising diagonals (/), -1 all falling ones "
                    "(\\)."),
    DescriptorField("coverage", "Coverage", 0.0, 1.0, "Share of an 8x8 grid over its bounding square that the ink "
                    "touches."),
    DescriptorField("size", "Size", 1.4, 2.2, "How large the character is drawn (its largest side, in the "
                    "generator's units; characters are 1.5 to 2 units)."),
)

_GRID = 26  # raster for loops and symmetry: 24 cells over the character plus an empty border
_END_TOUCH = 0.04  # a stroke end this close to another stroke (largest side = 1) touches it
_CORNER = math.radians(30)


def shape_descriptor(polylines: Sequence[np.ndarray], smooth: Sequence[bool]) -> np.ndarray:
    """The :data:`GLYPH_FIELDS` of one clean drawing: ``polylines`` are the drawn strokes [T, 2] (y up), ``smooth``
    says which are splines (their bends are curviness) and which polylines (their bends are corners)."""
    lo = np.min([p.min(0) for p in polylines], axis=0)
    hi = np.max([p.max(0) for p in polylines], axis=0)
    extent = max(float((hi - lo).max()), 1e-6)
    unit = [(p - (lo + hi) / 2) / extent for p in polylines]  # centred, largest side 1
    segments = [(u[:-1], u[1:]) for u in unit]
    starts = np.concatenate([s for s, _ in segments])
    ends = np.concatenate([e for _, e in segments])
    vectors = ends - starts
    lengths = np.linalg.norm(vectors, axis=1)
    total = max(float(lengths.sum()), 1e-9)
    angle = 2 * np.arctan2(vectors[:, 1], vectors[:, 0])
    middle = (starts + ends) / 2
    raster = _raster(starts, ends)
    width, height = (hi - lo) / extent
    return np.array([
        len(polylines), total, _curving(unit, smooth) / total, _corners(unit, smooth), _holes(raster),
        _crossings(starts, ends), _free_ends(unit),
        *_mirror_overlaps(raster), width / max(width + height, 1e-9),
        float((middle[:, 0] * lengths).sum() / total), float((middle[:, 1] * lengths).sum() / total),
        float((np.cos(angle) * lengths).sum() / total), float((np.sin(angle) * lengths).sum() / total),
        _coverage(starts, ends), extent,
    ], dtype=np.float64)


def _turns(points: np.ndarray) -> np.ndarray:
    """Absolute turning angle at each interior vertex of a polyline."""
    v = np.diff(points, axis=0)
    v = v[np.linalg.norm(v, axis=1) > 1e-9]
    if len(v) < 2:
        return np.zeros(0)
    cross = v[:-1, 0] * v[1:, 1] - v[:-1, 1] * v[1:, 0]
    dot = (v[:-1] * v[1:]).sum(1)
    return np.abs(np.arctan2(cross, dot))


def _curving(unit, smooth) -> float:
    return float(sum(_turns(u).sum() for u, s in zip(unit, smooth) if s))


def _corners(unit, smooth) -> int:
    return int(sum((_turns(u) > _CORNER).sum() for u, s in zip(unit, smooth) if not s))


def _dense(starts: np.ndarray, ends: np.ndarray, spacing: float) -> np.ndarray:
    """Points along every segment, at most ``spacing`` apart."""
    count = int(np.ceil(np.linalg.norm(ends - starts, axis=1).max() / spacing)) + 1 if len(starts) else 1
    t = np.linspace(0, 1, count)[None, :, None]
    return (starts[:, None] + (ends - starts)[:, None] * t).reshape(-1, 2)


def _raster(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean [G, G] occupancy of the ink (rows from the top), an empty cell all around."""
    inner = _GRID - 2
    points = _dense(starts, ends, 0.25 / inner)
    cells = np.clip(((points + 0.5) * inner).astype(int), 0, inner - 1) + 1
    grid = np.zeros((_GRID, _GRID), dtype=bool)
    grid[_GRID - 1 - cells[:, 1], cells[:, 0]] = True
    return grid


def _holes(raster: np.ndarray, min_cells: int = 3) -> int:
    """Background regions the ink encloses (4-connected, so a diagonal ink line is a wall)."""
    from scipy import ndimage

    labels, count = ndimage.label(~raster)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    outside = labels[0, 0]
    return int(sum(1 for k in range(1, count + 1) if k != outside and sizes[k] >= min_cells))


def _mirror_overlaps(raster: np.ndarray) -> tuple[float, float]:
    """Weighted Jaccard overlap of the (slightly blurred) ink with its left-right and its top-bottom mirror image."""
    from scipy import ndimage

    soft = ndimage.uniform_filter(raster.astype(np.float64), size=3)
    overlaps = []
    for axis in (1, 0):
        mirror = np.flip(soft, axis=axis)
        overlaps.append(float(np.clip(np.minimum(soft, mirror).sum() / max(np.maximum(soft, mirror).sum(), 1e-9),
                                      0, 1)))
    return overlaps[0], overlaps[1]


def _crossings(starts: np.ndarray, ends: np.ndarray) -> int:
    """Proper crossings between any two segments (touching at a vertex does not count)."""
    d = ends - starts
    rel = starts[None, :] - starts[:, None]  # [i, j] = start_j - start_i
    denom = d[:, None, 0] * d[None, :, 1] - d[:, None, 1] * d[None, :, 0]
    safe = np.where(np.abs(denom) < 1e-12, np.inf, denom)
    t = (rel[..., 0] * d[None, :, 1] - rel[..., 1] * d[None, :, 0]) / safe
    s = (rel[..., 0] * d[:, None, 1] - rel[..., 1] * d[:, None, 0]) / safe
    eps = 1e-6
    hit = (t > eps) & (t < 1 - eps) & (s > eps) & (s < 1 - eps)
    return int(np.triu(hit, k=1).sum())


def _free_ends(unit: Sequence[np.ndarray]) -> int:
    """Stroke ends farther than a touch from every other stroke (a closed stroke has none)."""
    starts = np.concatenate([u[:-1] for u in unit])
    d = np.concatenate([u[1:] for u in unit]) - starts
    owner = np.repeat(np.arange(len(unit)), [len(u) - 1 for u in unit])
    ends = np.array([u[k] for u in unit for k in (0, -1)])  # [2 strokes, 2]
    t = np.clip(((ends[:, None] - starts[None]) * d[None]).sum(-1) / np.maximum((d * d).sum(-1), 1e-12), 0, 1)
    distance = np.linalg.norm(starts[None] + d[None] * t[..., None] - ends[:, None], axis=-1)
    distance[owner[None, :] == np.arange(len(ends))[:, None] // 2] = np.inf  # a stroke does not touch itself
    closed = np.repeat([np.linalg.norm(u[0] - u[-1]) < _END_TOUCH for u in unit], 2)
    return int(((distance.min(1) >= _END_TOUCH) & ~closed).sum())


def _coverage(starts: np.ndarray, ends: np.ndarray, cells: int = 8) -> float:
    idx = np.clip(((_dense(starts, ends, 0.25 / cells) + 0.5) * cells).astype(int), 0, cells - 1)
    grid = np.zeros((cells, cells), dtype=bool)
    grid[idx[:, 1], idx[:, 0]] = True
    return float(grid.mean())


def rotate_quarter_turns(polylines: Sequence[np.ndarray], turns: int) -> list[np.ndarray]:
    """The drawing turned counterclockwise by ``turns`` x 90 degrees (y up), as torch.rot90 turns an image."""
    c, s = [(1, 0), (0, 1), (-1, 0), (0, -1)][turns % 4]
    matrix = np.array([[c, -s], [s, c]], dtype=np.float64)
    return [p @ matrix.T for p in polylines]


# --- a descriptors.csv of an image folder ---------------------------------------------------------------------------
@dataclass
class DescriptorTable:
    """Rows of a descriptors file: one per class name."""

    fields: tuple[DescriptorField, ...]
    names: list[str]
    values: np.ndarray  # float64 [len(names), len(fields)]
    path: Path

    def rows_for(self, class_names: Sequence[str]) -> np.ndarray:
        """The rows of these classes in order; DatasetError naming the file and the classes it lacks."""
        index = {name: row for row, name in enumerate(self.names)}
        missing = [name for name in class_names if name not in index]
        if missing:
            shown = ", ".join(f"'{n}'" for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                                                 else "")
            raise DatasetError(f"{self.path}: no row for the classes {shown}; add one row per class folder (first "
                               "column the class name)")
        return self.values[[index[name] for name in class_names]]


def read_descriptor_csv(path: str | Path) -> DescriptorTable:
    """Read a descriptors file: a header row (class column, then one name per attribute) and one row per class
    of numbers. DatasetError names the file, line and column of the first problem."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)  # line_num: the file's line, even after a quoted line break
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot be read as a CSV file ({exc})") from None
    if not rows:
        raise DatasetError(f"{path}: is empty; it needs a header row (class, then attribute names) and a row per "
                           "class")
    header_line, header = rows[0]
    attributes = [cell.strip() for cell in header[1:]]
    if not attributes:
        raise DatasetError(f"{path}, line {header_line}: the header names no attribute (expected: class, then one "
                           "column per attribute)")
    for column, name in enumerate(attributes, start=2):
        if not name:
            raise DatasetError(f"{path}, line {header_line}, column {column}: the attribute has no name")
        if attributes.index(name) != column - 2:
            raise DatasetError(f"{path}, line {header_line}, column {column}: attribute '{name}' appears twice")
    names, values = _csv_rows(path, rows[1:], attributes)
    return DescriptorTable(_csv_fields(path, attributes, values), names, values, path)


def _csv_rows(path: Path, rows, attributes: list[str]) -> tuple[list[str], np.ndarray]:
    names, values, seen = [], [], {}
    for line, row in rows:
        if len(row) != len(attributes) + 1:
            raise DatasetError(f"{path}, line {line}: {len(row)} columns, but the header has {len(attributes) + 1} "
                               "(the class name, then one value per attribute)")
        name = row[0].strip()
        if not name:
            raise DatasetError(f"{path}, line {line}, column 1: the class name is empty")
        if name in seen:
            raise DatasetError(f"{path}, line {line}, column 1: class '{name}' already has a row (line {seen[name]})")
        seen[name] = line
        numbers = []
        for column, (cell, attribute) in enumerate(zip(row[1:], attributes), start=2):
            try:
                number = float(cell)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise DatasetError(f"{path}, line {line}, column {column} ('{attribute}'): '{cell.strip()}' is not a "
                                   "finite number")
            numbers.append(number)
        names.append(name)
        values.append(numbers)
    if not names:
        raise DatasetError(f"{path}: has a header but no class rows")
    return names, np.asarray(values, dtype=np.float64)


def _csv_fields(path: Path, attributes: list[str], values: np.ndarray) -> tuple[DescriptorField, ...]:
    fields = []
    for column, name in enumerate(attributes):
        low, high = float(values[:, column].min()), float(values[:, column].max())
        if high <= low:  # a constant column still gets a usable range
            low, high = low - 0.5, high + 0.5
        integer = bool(np.all(values[:, column] == np.round(values[:, column])))
        fields.append(DescriptorField(name, name.replace("_", " ").capitalize(), low, high,
                                      f"Column {column + 2} of {path.name} ({low:g} to {high:g} over its classes).",
                                      integer))
    return tuple(fields)


def attach_csv_descriptors(splits: dict, root: str | Path) -> bool:
    """Give every split of an image folder the rows of ``<root>/descriptors.csv`` for its classes; False (nothing
    changed) when there is no such file. Call before rotation classes are added (they have no descriptors)."""
    path = Path(root) / CSV_FILE
    if not path.is_file():
        return False
    table = read_descriptor_csv(path)
    table.rows_for([name for split in splits.values() for name in split.class_names])  # names every class lacking one
    for split in splits.values():
        split.descriptor_fields = table.fields
        split.descriptors = torch.from_numpy(table.rows_for(split.class_names)).float()
    return True


# --- what an algorithm asks of a dataset ----------------------------------------------------------------------------
def require_descriptors(dataset, splits: Sequence[str] = ("train",)) -> tuple[DescriptorField, ...]:
    """The dataset's descriptor fields; ConfigError naming the dataset (and the file it can supply) when a split
    lacks descriptors."""
    for name in splits:
        split = dataset.splits[name]
        if split.num_classes and split.class_descriptors is None:
            rotated = any(c.endswith("(rot90)") for c in split.class_names)
            why = ("its rotation classes have none; turn dataset.rotations off" if rotated else
                   "the built-in glyphs have them; an image-folder dataset gets them from a "
                   f"{CSV_FILE} in its folder (a header row: class, then attribute names; one row per class folder)")
            raise ConfigError("dataset.name", f"'{dataset.name}' has no class descriptors in its {name} split: {why}")
    return dataset.descriptor_fields


def descriptor_space(dataset, presets: int = 12) -> DescriptorSpace:
    """A model's descriptor space from its training data: the fields, the meta-train classes' medians as defaults
    and, as named examples, up to ``presets`` classes spread over the meta-test split (classes it never trains on)."""
    fields = require_descriptors(dataset, [s for s in ("train", "val") if dataset.splits[s].num_classes])
    defaults = dataset.splits["train"].class_descriptors.median(dim=0).values.tolist()
    test = dataset.splits["test"]
    examples: dict[str, list[float]] = {}
    if test.num_classes and test.class_descriptors is not None:
        for index in np.linspace(0, test.num_classes - 1, min(presets, test.num_classes)).round().astype(int):
            examples[test.class_names[index]] = test.class_descriptors[index].tolist()
    return DescriptorSpace(tuple(fields), defaults, examples)


def episode_descriptors(split, class_ids: Sequence[int]) -> torch.Tensor:
    """[ways, D] descriptors of an episode's classes (indexes into the split's classes)."""
    table = split.class_descriptors
    if table is None:
        raise ConfigError("dataset.name", f"this split's classes have no descriptors (classes: "
                          f"{', '.join(split.class_names[:3])}...); a zero-shot model needs them: the built-in glyphs "
                          f"have them, an image folder gets them from a {CSV_FILE} in its folder")
    return table[torch.as_tensor(list(class_ids), dtype=torch.long)]


__all__ = ["CSV_FILE", "DescriptorField", "DescriptorSpace", "DescriptorTable", "GLYPH_FIELDS",
           "attach_csv_descriptors", "descriptor_space", "episode_descriptors", "fields_from_list", "fields_to_list",
           "read_descriptor_csv", "require_descriptors", "rotate_quarter_turns", "scale", "shape_descriptor"]

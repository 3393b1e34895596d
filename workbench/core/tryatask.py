"""Try a trained model on a few of your own images: a task of named classes, each with support images (or, for a
model that classifies from descriptors, attribute values), and queries to classify. Headless (no Qt): the "Try a
task" view and ``workbench try`` both use it, so they give the same probabilities for the same model and images.

Images are preprocessed exactly as the model's training data (its PreprocessSpec: size, channels,
normalization), and drawings are turned the right way round: a light-on-dark image is inverted when the model
was trained on dark strokes on a light background (and vice versa). A model trained on handwriting (a dataset in
STROKE_FRAMES) also gets its strokes framed as in its training images (:func:`frame_strokes`): ink found on any
background (sketch-pad drawings, photos and scans of ink on paper, either way round, any size), cleaned,
centred, scaled and drawn at the training data's stroke width.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from workbench.core import probes
from workbench.core.data.base import PreprocessSpec
from workbench.core.data.descriptors import DescriptorSpace
from workbench.core.data.images import load_image
from workbench.core.errors import ImageLoadError, WorkbenchError

def _demo_dir() -> Path:
    """resources/demo of the source checkout, a PyInstaller bundle, or the installed package data."""
    import sys

    package_dir = Path(__file__).resolve().parents[1]
    candidates = [package_dir.parent / "resources" / "demo"]
    if getattr(sys, "_MEIPASS", None):
        candidates.append(Path(sys._MEIPASS) / "resources" / "demo")
    candidates.append(package_dir / "resources" / "demo")
    return next((path for path in candidates if path.is_dir()), candidates[0])


DEMO_DIR = _demo_dir()
# Bundled models, by the name the CLI and the GUI accept (resources/demo/README.md says how each was made).
# "demo" is the default: trained on Omniglot's background alphabets, it reads real handwriting far better than
# the glyph-trained models, which stay available by name.
DEMO_MODELS = {"protonet-omniglot": "protonet-omniglot.pt", "protonet-glyphs": "protonet-glyphs.pt",
               "maml-glyphs": "maml-glyphs.pt"}
DEFAULT_DEMO = "protonet-omniglot"
DEFAULT_SEED = 0
TASK_FILE = "task.json"
TASK_FORMAT = 1


class TaskError(WorkbenchError):
    """A task cannot be classified as it is (too few classes with images, no queries ...). ``problems`` holds
    (image label, reason) for every image that could not be used; the message names the ones that caused the
    error, while ``headline`` is the message without them (for callers that list ``problems`` themselves)."""

    def __init__(self, message: str, problems: Sequence[tuple[str, str]] = (), named: Sequence = ()):
        super().__init__(message + "".join(f"; {label}: {reason}" for label, reason in named))
        self.headline = message
        self.problems = list(problems)


def bundled_models() -> dict[str, Path]:
    """The bundled demo checkpoints that exist in this installation, by name."""
    return {name: DEMO_DIR / file for name, file in DEMO_MODELS.items() if (DEMO_DIR / file).is_file()}


def resolve_model_source(source: str | Path) -> str | Path:
    """``demo`` or a bundled model's name -> its checkpoint path; anything else is returned unchanged."""
    text = str(source)
    if text == "demo":
        text = DEFAULT_DEMO
    if text in DEMO_MODELS:
        path = DEMO_DIR / DEMO_MODELS[text]
        if not path.is_file():
            raise WorkbenchError(f"the bundled model '{text}' is missing from this installation ({path})")
        return path
    return source


# --- images -------------------------------------------------------------------------------------------------

@dataclass
class TaskImage:
    """One image of a task: a file, or in-memory encoded bytes (a drawing or a pasted image)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    drawn: bool = False  # drawings get the inversion check even for "natural" specs

    @classmethod
    def from_file(cls, path: str | Path) -> "TaskImage":
        path = Path(path)
        return cls(path.name, path=path)

    @classmethod
    def from_array(cls, array: np.ndarray, name: str, drawn: bool = False) -> "TaskImage":
        """uint8 [H, W] / [H, W, 1] / [H, W, 3] / [H, W, 4] pixels, kept as PNG bytes."""
        from PIL import Image

        array = np.asarray(array, dtype=np.uint8)
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return cls(name, data=buffer.getvalue(), drawn=drawn)

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else self.name

    def raw_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def load(self, spec: PreprocessSpec, frame: "StrokeFrame | None" = None) -> np.ndarray:
        """uint8 [H, W, C] at the spec's size and channels, the right way round; ImageLoadError on failure.
        With a ``frame`` (see :func:`stroke_frame`) the strokes are found, centred and scaled like the training
        data's first."""
        source = self.data if self.data is not None else self.path
        if frame is not None and spec.channels == 1 and spec.foreground in ("dark", "light"):
            gray = load_image(source, 1, None, name=self.label)[:, :, 0]
            framed = frame_strokes(gray, frame, spec.image_size)
            if framed.min() == 255:
                raise ImageLoadError(self.label, "no strokes found: the image is blank or has too little contrast")
            return (framed if spec.foreground == "dark" else 255 - framed)[:, :, None]
        pixels = load_image(source, spec.channels, spec.image_size, name=self.label)
        return orient(pixels, spec.foreground, drawn=self.drawn)


def orient(pixels: np.ndarray, foreground: str, drawn: bool = False) -> np.ndarray:
    """Invert an image whose background disagrees with the model's: drawings are dark on light by default,
    so a light-on-dark one is inverted for a "dark"-foreground model; photos ("natural") are left alone."""
    wanted = foreground if foreground in ("dark", "light") else ("dark" if drawn else None)
    if wanted is None:
        return pixels
    gray = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    # The border is mostly background; its median says whether the background is light or dark.
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    light_background = float(np.median(border)) >= 128
    if (wanted == "dark") != light_background:
        return (255 - pixels).astype(np.uint8)
    return pixels


# --- strokes framed as in the training data ------------------------------------------------------------------

@dataclass(frozen=True)
class StrokeFrame:
    """How the strokes sit in a handwriting dataset's images, as fractions of the image side at ``resolution``
    (the side its binary drawings have before the model's resize): the median longer side of the ink's bounding
    box, and the median stroke width (:func:`stroke_width`). Measured by
    ``bench/demo_models.py frames``."""

    extent: float
    width: float
    resolution: int


# By the dataset a checkpoint was trained on (its config). Omniglot: 600 background drawings at 105 px, extent
# p10-p90 0.46-0.81, width p10-p90 4.7-5.0 px, bounding boxes centred within 2%. Glyphs (rendered at 105 px)
# fill their images.
STROKE_FRAMES = {
    "omniglot": StrokeFrame(extent=0.657, width=5.0 / 105, resolution=105),
    "glyphs": StrokeFrame(extent=0.981, width=3.47 / 105, resolution=105),
}
_WORK_SIDE = 512  # photos are cleaned at this size at most: enough for strokes, quick for big scans
_MIN_CONTRAST = 24  # grey levels between paper and ink below which an image counts as blank


def stroke_frame(model) -> StrokeFrame | None:
    """The stroke framing for a loaded model (checkpoints.LoadedModel): its training dataset's, or None when the
    model was not trained on handwriting (images are then only resized)."""
    config = getattr(model, "config", None)
    name = getattr(getattr(config, "dataset", None), "name", None)
    if model.spec.channels != 1 or model.spec.foreground not in ("dark", "light"):
        return None
    return STROKE_FRAMES.get(str(name)) if name else None


def _otsu(values: np.ndarray) -> float:
    """The grey level that best splits ``values`` (uint8-range) into two classes (Otsu's method)."""
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64).ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(hist)
    mass = np.cumsum(hist * np.arange(256))
    total, total_mass = weight[-1], mass[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * weight - mass * total) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = -1
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    return (best[0] + best[-1]) / 2 + 0.5  # the middle of a plateau (a two-tone image has a wide one)


def _contrast(image: np.ndarray) -> float:
    """Grey levels between the darkest and lightest places, lightly blurred so single noisy pixels do not count."""
    from scipy import ndimage

    blurred = ndimage.gaussian_filter(np.asarray(image, np.float64), 1.0)
    return float(blurred.max() - blurred.min())


def ink_mask(gray: np.ndarray) -> np.ndarray:
    """bool [H, W]: the strokes of a drawing, photo or scan (dark on light or light on dark), uint8 [H, W] in.

    The paper is the majority of the pixels, so the strokes are on the other side of Otsu's threshold from the
    median (a dark background is inverted). Uneven lighting is divided out by a background estimate (a
    maximum filter wider than the strokes, blurred), then the ink is thresholded again and specks are dropped.
    """
    from PIL import Image, ImageFilter
    from scipy import ndimage

    gray = np.asarray(gray, dtype=np.uint8)
    if gray.size == 0 or _contrast(gray) < _MIN_CONTRAST:
        return np.zeros(gray.shape, bool)
    if np.median(gray) < _otsu(gray):
        gray = 255 - gray  # light strokes on a dark background
    # Background: the paper's brightness everywhere, from a small copy (strokes are thinner than the filter).
    height, width = gray.shape
    scale = 64 / max(height, width)
    small = Image.fromarray(gray).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                         Image.Resampling.BILINEAR)
    background = small.filter(ImageFilter.MaxFilter(7)).filter(ImageFilter.GaussianBlur(2))
    background = np.asarray(background.resize((width, height), Image.Resampling.BILINEAR), np.float64)
    flat = np.rint(np.clip(gray / np.maximum(background, 1.0) * 255.0, 0, 255)).astype(np.uint8)
    if _contrast(flat) < _MIN_CONTRAST:  # only the lighting varied
        return np.zeros(gray.shape, bool)
    threshold = _otsu(flat)
    ink = flat < min(threshold, 255 - _MIN_CONTRAST / 2)
    if ink.mean() > 0.5:  # no clear paper: not a drawing we can read
        return np.zeros(gray.shape, bool)
    labels, count = ndimage.label(ink, structure=np.ones((3, 3)))
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        # Specks (dust, paper grain, JPEG noise) are tiny next to the strokes; dots of a character are not.
        keep = sizes >= max(4, 0.01 * sizes.max())
        ink = keep[labels - 1] & (labels > 0)
    return ink


def _bounding_crop(ink: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(ink)
    return ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def stroke_width(ink: np.ndarray) -> float:
    """The typical width of the strokes of a bool mask, in pixels: the median, along the strokes' centre lines
    (the ridges of the distance to the paper), of twice that distance less one."""
    from scipy import ndimage

    if not ink.any():
        return 0.0
    distance = ndimage.distance_transform_edt(np.pad(ink, 1))[1:-1, 1:-1]
    ridge = ink & (distance >= ndimage.maximum_filter(distance, size=3))
    return float(2 * np.median(distance[ridge]) - 1)


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return yy ** 2 + xx ** 2 <= radius ** 2


def frame_strokes(gray: np.ndarray, frame: StrokeFrame, size: int) -> np.ndarray:
    """uint8 [size, size], dark strokes on white framed as ``frame`` says: the ink of ``gray`` (any size, either
    way round, see :func:`ink_mask`) cropped to its bounding box, scaled so its longer side is the frame's
    extent, centred, thickened or thinned to the frame's stroke width at the frame's resolution, then resized
    to ``size`` with antialiasing, as the training images were. A blank image comes back white."""
    from PIL import Image
    from scipy import ndimage

    gray = np.asarray(gray, dtype=np.uint8)
    height, width = gray.shape
    if max(height, width) > _WORK_SIDE:
        scale = _WORK_SIDE / max(height, width)
        gray = np.asarray(Image.fromarray(gray).resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                                       Image.Resampling.BILINEAR, reducing_gap=3.0))
    ink = ink_mask(gray)
    side = frame.resolution
    canvas = np.zeros((side, side), bool)
    if ink.any():
        target_extent, target_width = frame.extent * side, frame.width * side
        crop = _bounding_crop(ink)
        width = stroke_width(crop)
        # The strokes' centre lines span (extent - width): scale those to the frame's, then set the width
        # where the strokes are (so thin lines do not vanish when shrunk), then fit the box to the extent.
        length = max(crop.shape) - width
        scale = (target_extent - target_width) / length if length >= 1 else target_extent / max(crop.shape)
        wanted = target_width / scale
        radius = round((wanted - width) / 2)  # a disk of radius r changes the width by 2r
        if radius > 0:
            crop = ndimage.binary_dilation(np.pad(crop, radius), structure=_disk(radius))
        elif radius < 0:
            thinner = ndimage.binary_erosion(crop, structure=_disk(-radius))
            # Thinning keeps about wanted / width of the ink; much less means it erased the thinner strokes.
            if thinner.any() and thinner.sum() >= 0.5 * crop.sum() * wanted / width:
                crop = _bounding_crop(thinner)
        scale = target_extent / max(crop.shape)
        new_h, new_w = (max(1, min(side, round(n * scale))) for n in crop.shape)
        # Scaled as grey (antialiased when shrinking), then binary again like the dataset's drawings.
        scaled = np.asarray(Image.fromarray(crop.astype(np.uint8) * 255).resize((new_w, new_h),
                                                                               Image.Resampling.BILINEAR))
        strokes = scaled >= 128
        if not strokes.any():  # a speck of a drawing: keep its darkest pixels
            strokes = scaled == scaled.max()
        # Rounding (of the disk and of the binary resize) can leave the width a pixel or two off: one more step.
        error = stroke_width(strokes) - target_width
        if error >= 1.5:
            thinner = ndimage.binary_erosion(strokes, structure=_disk(1))
            strokes = thinner if thinner.sum() >= 0.5 * strokes.sum() * target_width / (target_width + error) \
                else strokes
        elif error <= -1.5:
            strokes = ndimage.binary_dilation(strokes, structure=_disk(1))
        top, left = (side - new_h) // 2, (side - new_w) // 2
        canvas[top:top + new_h, left:left + new_w] = strokes
    pixels = np.where(canvas, 0, 255).astype(np.uint8)
    if size != side:
        pixels = np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
    return pixels


def expand_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Files as given; a folder becomes its visible files, sorted (non-images are kept so they are reported)."""
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        else:
            found.append(path)
    return found


# --- the task -----------------------------------------------------------------------------------------------

@dataclass
class TaskClass:
    name: str
    images: list[TaskImage] = field(default_factory=list)
    # Attribute values by field name, for models that classify from descriptors (zero-shot); None: images.
    descriptor: dict[str, float] | None = None


@dataclass
class Prediction:
    query: str
    predicted: str
    probabilities: dict[str, float]
    index: int = -1  # position in Task.queries

    def to_dict(self) -> dict:
        return {"query": self.query, "predicted": self.predicted, "probabilities": dict(self.probabilities)}


@dataclass
class TaskResult:
    predictions: list[Prediction]
    # (image label, reason) for every image that could not be used; the others were.
    problems: list[tuple[str, str]]
    classes: list[str]  # the classes that took part (those with support images), in order
    support_embeddings: np.ndarray | None = None
    support_labels: np.ndarray | None = None
    prototype_embeddings: np.ndarray | None = None
    query_embeddings: np.ndarray | None = None
    trace: list[dict] | None = None


def _valid_class_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise TaskError("a class needs a name")
    if name in (".", "..") or re.search(r"[/\\\x00]", name):
        raise TaskError(f"class name '{name}' cannot contain '/' or '\\' (it becomes a folder name)")
    return name


class Task:
    """Named classes with support images, plus queries. Order is kept everywhere."""

    def __init__(self) -> None:
        self.classes: list[TaskClass] = []
        self.queries: list[TaskImage] = []

    # classes
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def get_class(self, name: str) -> TaskClass:
        for task_class in self.classes:
            if task_class.name == name:
                return task_class
        raise TaskError(f"there is no class named '{name}'")

    def add_class(self, name: str) -> TaskClass:
        name = _valid_class_name(name)
        if name in self.class_names():
            raise TaskError(f"there already is a class named '{name}'")
        task_class = TaskClass(name)
        self.classes.append(task_class)
        return task_class

    def remove_class(self, name: str) -> None:
        self.classes.remove(self.get_class(name))

    def rename_class(self, old: str, new: str) -> None:
        new = _valid_class_name(new)
        if new != old and new in self.class_names():
            raise TaskError(f"there already is a class named '{new}'")
        self.get_class(old).name = new

    def snapshot(self) -> "Task":
        """A copy whose lists can be read in another thread while this task keeps changing."""
        copy = Task()
        copy.classes = [TaskClass(c.name, list(c.images), dict(c.descriptor) if c.descriptor is not None else None)
                        for c in self.classes]
        copy.queries = list(self.queries)
        return copy

    def unique_class_name(self, base: str = "class") -> str:
        taken = set(self.class_names())
        index = len(self.classes) + 1
        while f"{base} {index}" in taken:
            index += 1
        return f"{base} {index}"

    # images
    def add_support(self, name: str, images: Sequence[TaskImage]) -> None:
        self.get_class(name).images.extend(images)

    def add_support_files(self, name: str, sources: Sequence[str | Path]) -> None:
        self.add_support(name, [TaskImage.from_file(p) for p in expand_sources(sources)])

    def describe(self, name: str, values: dict[str, float] | None) -> None:
        """Set (or, with None, clear) a class's descriptor values, by field name."""
        self.get_class(name).descriptor = None if values is None else {k: float(v) for k, v in values.items()}

    def add_queries(self, images: Sequence[TaskImage]) -> None:
        self.queries.extend(images)

    def add_query_files(self, sources: Sequence[str | Path]) -> None:
        self.add_queries([TaskImage.from_file(p) for p in expand_sources(sources)])

    def correct(self, query_index: int, class_name: str) -> TaskImage:
        """"This is wrong: it is class X": the query becomes a support image of X."""
        image = self.queries.pop(query_index)
        self.get_class(class_name).images.append(image)
        return image

    # save / load / export
    def save(self, folder: str | Path) -> Path:
        """A folder with task.json, support/<class>/ and queries/; it can be loaded again or shared."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for sub in ("support", "queries"):
            if (folder / sub).exists():
                shutil.rmtree(folder / sub)
        manifest = {"format": TASK_FORMAT, "classes": [], "queries": []}
        for task_class in self.classes:
            files = _write_images(folder / "support" / task_class.name, task_class.images)
            entry = {"name": task_class.name, "images": files}
            if task_class.descriptor is not None:
                entry["descriptor"] = dict(task_class.descriptor)
            manifest["classes"].append(entry)
        manifest["queries"] = _write_images(folder / "queries", self.queries)
        from workbench.core.fileio import atomic_write_text

        atomic_write_text(folder / TASK_FILE, json.dumps(manifest, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Task":
        folder = Path(folder)
        try:
            manifest = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
            task = cls()
            for entry in manifest["classes"]:
                task.add_class(entry["name"])
                task.add_support(entry["name"], [_read_image(folder / "support" / entry["name"], item)
                                                 for item in entry["images"]])
                if entry.get("descriptor") is not None:
                    task.describe(entry["name"], dict(entry["descriptor"]))
            task.add_queries([_read_image(folder / "queries", item) for item in manifest["queries"]])
        except FileNotFoundError as exc:
            raise TaskError(f"{folder}: not a saved task ({exc.filename} is missing)") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise TaskError(f"{folder / TASK_FILE}: not a valid task file ({exc})") from None
        return task

    def export_dataset(self, folder: str | Path) -> Path:
        """The support sets as an image-folder dataset (one subfolder per class), usable with --dataset folder."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise TaskError(f"{folder}: choose an empty or new folder to export into")
        for task_class in self.classes:
            (folder / task_class.name).mkdir(parents=True, exist_ok=True)
            _write_images(folder / task_class.name, task_class.images)
        return folder


def _file_name(index: int, image: TaskImage) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image.name).stem)[:60] or "image"
    suffix = image.path.suffix.lower() if image.path is not None and image.path.suffix else ".png"
    return f"{index:03d}-{stem}{suffix}"


def _write_images(folder: Path, images: Sequence[TaskImage]) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, image in enumerate(images):
        file_name = _file_name(index, image)
        try:
            (folder / file_name).write_bytes(image.raw_bytes())
        except OSError as exc:
            raise TaskError(f"{image.label}: could not be saved ({exc.strerror or exc})") from None
        written.append({"file": file_name, "name": image.name, "drawn": image.drawn})
    return written


def _read_image(folder: Path, item: dict) -> TaskImage:
    path = folder / item["file"]
    return TaskImage(str(item.get("name", path.name)), data=path.read_bytes(), drawn=bool(item.get("drawn")))


# --- classification -----------------------------------------------------------------------------------------

def preprocess(images: Sequence[TaskImage], spec: PreprocessSpec, frame: StrokeFrame | None = None
               ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """uint8 [N, H, W, C] of the images that load, their indexes, and (label, reason) for the others."""
    arrays, kept, problems = [], [], []
    for index, image in enumerate(images):
        try:
            arrays.append(image.load(spec, frame))
            kept.append(index)
        except ImageLoadError as exc:
            problems.append((image.label, exc.reason))
        except OSError as exc:
            problems.append((image.label, exc.strerror or str(exc)))
    size = spec.image_size
    stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, spec.channels), np.uint8)
    return stacked, kept, problems


def to_model_input(pixels: np.ndarray, spec: PreprocessSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 [N, H, W, C] -> normalized float [N, C, H, W] on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).contiguous()
    return spec.normalize(tensor).to(device)


def classify(model, task: Task, seed: int = DEFAULT_SEED, *, embeddings: bool = False,
             trace_steps: int | None = None) -> TaskResult:
    """Adapt ``model`` (a checkpoints.LoadedModel) to the task's support sets and classify its queries.

    Deterministic for a seed. Unreadable images are reported in ``problems`` and left out; classes left with no
    support image are reported and left out too. Needs two classes with images and at least one query. A task
    whose classes have descriptor values is classified from them instead (:func:`classify_from_descriptors`).
    """
    if any(c.descriptor is not None for c in task.classes):
        return classify_from_descriptors(model, task, seed, embeddings=embeddings)
    algorithm, spec, frame = model.algorithm, model.spec, stroke_frame(model)
    device = getattr(algorithm, "device", torch.device("cpu"))
    problems: list[tuple[str, str]] = []
    support, labels, names = [], [], []
    for task_class in task.classes:
        pixels, _, bad = preprocess(task_class.images, spec, frame)
        problems.extend(bad)
        if len(pixels) == 0:
            why = "it has no support images" if not task_class.images else "none of its images could be read"
            problems.append((f"class '{task_class.name}'", f"{why}; it is left out"))
            continue
        support.append(pixels)
        labels.extend([len(names)] * len(pixels))
        names.append(task_class.name)
    query_pixels, kept, bad = preprocess(task.queries, spec, frame)
    problems.extend(bad)
    if len(names) < 2:
        raise TaskError(f"add support images to at least two classes before classifying (classes with images: "
                        f"{', '.join(names) or 'none'})", problems, problems)
    if len(kept) == 0:
        if not task.queries:
            raise TaskError("add a query image to classify", problems)
        raise TaskError(f"none of the {len(task.queries)} queries could be read", problems, bad)
    support_x = to_model_input(np.concatenate(support), spec, device)
    support_y = torch.tensor(labels, dtype=torch.long, device=device)
    query_x = to_model_input(query_pixels, spec, device)
    ways = len(names)
    result = TaskResult([], problems, names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        algorithm.eval()
        adapted = algorithm.adapt(support_x, support_y, ways)
        with torch.no_grad():
            probs = algorithm.predict(adapted, query_x).detach().float().cpu().numpy()
        if embeddings:
            _add_embeddings(result, algorithm, adapted, support_x, support_y, query_x, ways)
        if trace_steps is not None and algorithm.gradient_based:
            # The support loss needs no query labels; pass the support as its own "queries".
            torch.manual_seed(seed)
            result.trace = algorithm.adaptation_trace(support_x, support_y, support_x, support_y, ways,
                                                      steps=trace_steps or None)
    for row, index in zip(probs, kept):
        probabilities = {name: float(p) for name, p in zip(names, row)}
        result.predictions.append(Prediction(task.queries[index].label, names[int(np.argmax(row))], probabilities,
                                             index))
    return result


def descriptor_space_of(model) -> DescriptorSpace | None:
    """The descriptor space of a model that classifies from descriptors (fields, defaults, examples), else None."""
    algorithm = model.algorithm
    space = getattr(algorithm, "descriptor_space", None) if algorithm.has("descriptors") else None
    return space if space else None


def classify_from_descriptors(model, task: Task, seed: int = DEFAULT_SEED, *, embeddings: bool = False) -> TaskResult:
    """Classify the task's queries against classes given by descriptor values (zero-shot: support images are not
    used). Classes without values are reported and left out; needs two described classes and a query."""
    algorithm, spec = model.algorithm, model.spec
    space = descriptor_space_of(model)
    if space is None:
        raise TaskError(f"{algorithm.title} does not classify from descriptors; give each class support images")
    device = getattr(algorithm, "device", torch.device("cpu"))
    problems = [(f"class '{c.name}'", "it has no descriptor values; it is left out")
                for c in task.classes if c.descriptor is None]
    described = [c for c in task.classes if c.descriptor is not None]
    try:
        rows = [space.vector(c.descriptor) for c in described]
    except WorkbenchError as exc:
        raise TaskError(str(exc), problems) from None
    query_pixels, kept, bad = preprocess(task.queries, spec, stroke_frame(model))
    problems.extend(bad)
    names = [c.name for c in described]
    if len(names) < 2:
        raise TaskError("describe at least two classes before classifying", problems)
    if len(kept) == 0:
        raise TaskError("add a query image to classify" if not task.queries else
                        f"none of the {len(task.queries)} queries could be read", problems, bad)
    query_x = to_model_input(query_pixels, spec, device)
    result = TaskResult([], problems, names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        algorithm.eval()
        adapted = algorithm.adapt_from_descriptors(torch.tensor(rows, dtype=torch.float32, device=device))
        with torch.no_grad():
            probs = algorithm.predict(adapted, query_x).detach().float().cpu().numpy()
            if embeddings and algorithm.has("embeddings") and isinstance(adapted, dict) and "prototypes" in adapted:
                prototypes = adapted["prototypes"].flatten(1).float().cpu().numpy()
                result.query_embeddings = algorithm.embed(query_x, adapted).flatten(1).float().cpu().numpy()
                result.prototype_embeddings = prototypes
                result.support_embeddings = np.zeros((0, prototypes.shape[1]), np.float32)
                result.support_labels = np.zeros(0, np.int64)
    for row, index in zip(probs, kept):
        probabilities = {name: float(p) for name, p in zip(names, row)}
        result.predictions.append(Prediction(task.queries[index].label, names[int(np.argmax(row))], probabilities,
                                             index))
    return result


def _add_embeddings(result: TaskResult, algorithm, adapted, support_x, support_y, query_x, ways: int) -> None:
    try:
        with torch.no_grad():
            support_e = algorithm.embed(support_x, adapted).flatten(1).float().cpu()
            query_e = algorithm.embed(query_x, adapted).flatten(1).float().cpu()
    except NotImplementedError:
        return
    labels = support_y.cpu()
    prototypes = torch.stack([support_e[labels == c].mean(0) for c in range(ways)])
    result.support_embeddings = support_e.numpy()
    result.support_labels = labels.numpy()
    result.prototype_embeddings = prototypes.numpy()
    result.query_embeddings = query_e.numpy()


def pca_2d(*groups: np.ndarray) -> list[np.ndarray]:
    """Project groups of embeddings onto the first two principal components of all of them together (the one
    PCA of the core, :func:`workbench.core.probes.pca_2d`, with its deterministic signs)."""
    present = [g for g in groups if g is not None and len(g)]
    if not present:
        raise ValueError("nothing to project: every group of embeddings is empty")
    xy, _ = probes.pca_2d(np.concatenate(present))
    out, start = [], 0
    for g in groups:
        count = len(g) if g is not None else 0
        out.append(xy[start:start + count] if count else np.zeros((0, 2)))
        start += count
    return out

"""Safe image loading shared by every dataset and by "try a task", plus an on-disk cache of decoded arrays.

Every failure becomes an ImageLoadError(path, reason) with a reason a user can read; nothing here lets a
corrupt, truncated or hostile file crash a load or exhaust memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from workbench.core.errors import ImageLoadError

log = logging.getLogger(__name__)

MAX_MEGAPIXELS = 100
MAX_PIXELS = MAX_MEGAPIXELS * 1_000_000
# Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; _decode refuses anything above it.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# A truncated file must be reported, never silently padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico"})

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _square(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """size as (width, height); an int means a square."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(width), int(height))


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grayscale -> 8-bit L by scaling the range, not clipping it."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0
    elif im.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        top = float(arr.max()) if arr.size else 0.0
        scaled = arr * 255.0 if top <= 1.0 else np.clip(arr, 0, 255)
    else:  # "I": older Pillow opens 16-bit PNGs this way; values are usually 0..65535
        arr = np.clip(arr.astype(np.float64), 0, None)
        top = float(arr.max()) if arr.size else 0.0
        if top <= 255:
            scaled = arr
        elif top <= 65535:
            scaled = arr / 257.0
        else:
            scaled = arr * (255.0 / top)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _flatten(im: Image.Image) -> Image.Image:
    """Any mode -> "L" or "RGB"; transparency is composited on white (drawings on transparent canvas stay visible)."""
    mode = im.mode
    if mode in ("L", "RGB"):
        if "transparency" not in im.info:
            return im
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode == "1":
        return im.convert("L")
    if mode in _HIGH_DEPTH_MODES:
        return _to_8bit(im)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (Pillow undoes Adobe's inverted CMYK), YCbCr, LAB, HSV, RGBX ...
    return im.convert("RGB") if mode != "RGB" else im


def _open(source, name: str) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(name, "the file is empty")
        return Image.open(io.BytesIO(bytes(source)))
    path = Path(source)
    if path.is_dir():
        raise ImageLoadError(name, "this is a folder, not an image file")
    if path.exists() and path.stat().st_size == 0:
        raise ImageLoadError(name, "the file is empty")
    return Image.open(path)


def _decode(source, channels: int, size: tuple[int, int] | None, name: str) -> np.ndarray:
    # Pillow itself raises above 2 x MAX_IMAGE_PIXELS; between 1x and 2x it only warns, so check here. (No
    # warnings.catch_warnings: it is not thread-safe and load_many decodes in threads.)
    with _open(source, name) as im:
        width, height = im.size
        if width * height > MAX_PIXELS:
            raise Image.DecompressionBombError(f"Image size ({width * height} pixels) exceeds the limit")
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animated GIF / multi-page TIFF: the first frame
        if size is not None and im.format == "JPEG":
            # Let libjpeg decode at a reduced scale (still >= the target size): big photos load much faster.
            im.draft(None, (max(size), max(size)))
        im.load()
        im = ImageOps.exif_transpose(im) or im
        im = _flatten(im)
        im = im.convert("L") if channels == 1 else im.convert("RGB") if im.mode != "RGB" else im
        if size is not None and im.size != size:
            shrinking = im.size[0] > size[0] or im.size[1] > size[1]
            # PIL's bilinear filter widens with the scale factor, so shrinking is antialiased (as torchvision's
            # Resize(antialias=True)); reducing_gap first box-reduces huge photos for speed.
            im = im.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0 if shrinking else None)
        array = np.array(im, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array


def load_image(source, channels: int, size: int | tuple[int, int] | None = None,
               name: str | None = None) -> np.ndarray:
    """Decode one image file (path) or its bytes into uint8 [H, W, channels], resized with antialiasing.

    ``size`` is an int for a square or (height, width); the image is resized to exactly that (the aspect ratio
    is not kept, so nothing is cropped away). Raises ImageLoadError naming the file and the reason.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    name = name or ("<image bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    try:
        return _decode(source, channels, _square(size), name)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        detail = f"{int(found.group(1)) / 1e6:,.0f} megapixels" if found else str(exc)
        raise ImageLoadError(name, f"the image is too large ({detail}); images over {MAX_MEGAPIXELS} megapixels are "
                             "refused because they could be a decompression bomb") from None
    except FileNotFoundError:
        raise ImageLoadError(name, "the file does not exist") from None
    except IsADirectoryError:
        raise ImageLoadError(name, "this is a folder, not an image file") from None
    except PermissionError:
        raise ImageLoadError(name, "permission denied: the file cannot be read") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file, or an image format Pillow cannot read") from None
    except MemoryError:
        raise ImageLoadError(name, "not enough memory to decode this image") from None
    except (OSError, SyntaxError, ValueError, EOFError, zlib.error, IndexError, KeyError, TypeError) as exc:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, ValueError) and text.startswith("conversion from"):
            reason = f"the image's colour mode cannot be converted ({text})"
        elif "truncated" in text.lower():
            reason = "the image file is truncated: its data ends early (an incomplete download or copy?)"
        else:
            reason = f"the image data is corrupt: {text}"
        raise ImageLoadError(name, reason) from None


def is_image_name(path: Path) -> bool:
    # Hidden files include macOS "._name.jpg" resource forks, which are not images despite their suffix.
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def scan_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image-like files (by suffix) in ``folder``, sorted by path; hidden files are ignored."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if is_image_name(p) and p.is_file())


def _try_load(path, channels: int, size) -> np.ndarray | str:
    try:
        return load_image(path, channels, size)
    except ImageLoadError as exc:
        return exc.reason


def default_workers(count: int) -> int:
    # Pillow releases the GIL while decoding and resizing, so a couple of threads pay off on big loads.
    return 1 if count < 256 else max(1, min(4, os.cpu_count() or 1))


def load_many(paths: Sequence[str | Path], channels: int, size: int | tuple[int, int] | None,
              progress=None, message: str = "Loading images",
              workers: int | None = None) -> tuple[np.ndarray, list, list[tuple[str, str]]]:
    """Decode many images, skipping the bad ones.

    Returns (uint8 [N, H, W, C], the paths that loaded, [(path, reason)] for those skipped), in input order.
    Without ``size`` every image must share the first one's size; others are skipped with a reason.
    progress(done, total, message) is called now and then and may raise Cancelled.
    """
    total = len(paths)
    target = _square(size)
    workers = default_workers(total) if workers is None else max(1, workers)
    arrays: list[np.ndarray] = []
    ok: list = []
    skipped: list[tuple[str, str]] = []
    step = max(1, total // 100)
    executor = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        if executor is not None:
            results = executor.map(_try_load, paths, [channels] * total, [target] * total)
        else:
            results = (_try_load(path, channels, target) for path in paths)
        for i, (path, result) in enumerate(zip(paths, results)):
            if progress is not None and i % step == 0:
                progress(i, total, message)
            if isinstance(result, str):
                skipped.append((str(path), result))
            elif arrays and result.shape != arrays[0].shape:
                skipped.append((str(path), f"its size {result.shape[1]}x{result.shape[0]} differs from the other "
                                           f"images ({arrays[0].shape[1]}x{arrays[0].shape[0]})"))
            else:
                arrays.append(result)
                ok.append(path)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    if progress is not None:
        progress(total, total, message)
    if arrays:
        stacked = np.stack(arrays)
    else:
        h, w = (target[1], target[0]) if target else (0, 0)
        stacked = np.zeros((0, h, w, channels), dtype=np.uint8)
    return stacked, ok, skipped


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [N, C, size, size] with antialiasing, in chunks to bound memory."""
    import torch
    import torch.nn.functional as F

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = np.empty((images.shape[0], images.shape[1], size, size), dtype=np.uint8)
    for start in range(0, images.shape[0], 1024):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + 1024])).float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + 1024] = resized.round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


# --- on-disk cache of decoded arrays ------------------------------------------------------------------------

CACHE_FORMAT = 1


def cache_dir() -> Path:
    """Where decoded datasets are cached; WORKBENCH_CACHE_DIR overrides the per-user cache folder."""
    override = os.environ.get("WORKBENCH_CACHE_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_cache_dir("meta-learning-workbench"))


def cache_key(*parts) -> str:
    blob = json.dumps([CACHE_FORMAT, *parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def cache_file(kind: str, key: str) -> Path:
    return cache_dir() / "datasets" / f"{kind}-{key}.npz"


def read_cache(kind: str, key: str, required: Iterable[str]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or unreadable (a corrupt cache file is deleted and rebuilt)."""
    path = cache_file(kind, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        missing = [name for name in required if name not in arrays]
        if missing:
            raise KeyError(f"missing {missing}")
        return arrays
    except Exception as exc:  # any damage means rebuild; the cache is never the only copy
        log.warning("ignoring corrupt dataset cache %s (%s); rebuilding it", path, exc)
        try:
            path.unlink()
        except OSError:
            pass
        return None


def write_cache(kind: str, key: str, arrays: dict[str, np.ndarray]) -> Path | None:
    """Save arrays atomically; failure (read-only or full disk) only costs speed next time, so it is logged."""
    from workbench.core.fileio import atomic_write

    path = cache_file(kind, key)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file handle stops numpy from appending ".npz" to the temp name
            np.savez(handle, **arrays)

    try:
        return atomic_write(path, write)
    except OSError as exc:
        log.warning("could not write dataset cache %s: %s", path, exc)
        return None


# --- pickled arrays from the internet ----------------------------------------------------------------------

# Pickles can run arbitrary code; dataset pickles only ever need these to rebuild dicts, lists and arrays.
_PICKLE_ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"), ("collections", "OrderedDict"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("numpy.core"):  # pickles written by NumPy 1.x
            module = "numpy._core" + module[len("numpy.core"):]
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(module, name)
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: dataset pickles may only hold "
                                         "arrays, lists and dicts")
        return super().find_class(module, name)


def load_pickle(path: str | Path):
    """Read a dataset pickle (CIFAR, mini-ImageNet caches) without letting it run code.

    Raises pickle.UnpicklingError, OSError or EOFError; callers turn these into a DatasetError.
    """
    with open(path, "rb") as handle:
        return _SafeUnpickler(handle, encoding="latin1").load()

"""Inspection records: what an algorithm shows of its mechanism (learned learning rates, gates, attention,
memory, FiLM parameters, distilled images), declared as data so that a few generic views draw them all.

An algorithm with the ``inspection`` capability declares :class:`InspectionSpec` s in ``inspections`` and returns,
from ``inspect()``, one record per spec: named numpy arrays whose meaning the spec's plot type fixes
(:data:`PLOT_TYPES`). The trainer stores them at every validation in the run folder (see
``workbench.core.snapshots``); the views read them live and from saved runs, with a scrubber over the steps.
Records go through :func:`compact` first, so a per-parameter vector of 100,000 learning rates is kept as a
histogram, not as 100,000 numbers per snapshot.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Plot type -> the arrays a record of it holds.
PLOT_TYPES = {
    "layer_histograms": "one array of values per layer (any shape); kept as a histogram and summary per layer",
    "curves": "an x array (named by x_key) and one or more series of the same length, drawn as lines",
    "heatmap": "'values' [rows, columns], with optional 'rows' and 'columns' label arrays and optional "
               "'row_images' [rows, H, W(, C)] and 'column_images' [columns, H, W(, C)] in [0, 1], drawn along the "
               "axes (attention over support images, relation scores of queries x classes)",
    "image_grid": "'images' [N, H, W] or [N, H, W, C] in [0, 1], with optional 'labels' [N]",
}
HISTOGRAM_BINS = 40
MAX_GRID_IMAGES = 64


@dataclass(frozen=True)
class InspectionSpec:
    """One inspection record an algorithm declares."""

    name: str  # a key: letters, digits, '_' and '-'
    title: str  # shown in the view's record list
    plot: str  # one of PLOT_TYPES
    help: str  # what it shows and why it matters, naming the paper where it comes from
    x_label: str = ""
    y_label: str = ""
    x_key: str = "x"  # curves: the array holding the x values

    def problems(self) -> list[str]:
        """What is wrong with the declaration (empty when it is fine)."""
        found = []
        if not self.name or not all(c.isalnum() or c in "_-" for c in self.name):
            found.append(f"inspection name {self.name!r} must be letters, digits, '_' or '-'")
        if self.plot not in PLOT_TYPES:
            found.append(f"inspection '{self.name}': plot {self.plot!r} is not one of {', '.join(PLOT_TYPES)}")
        if not self.title or not self.help:
            found.append(f"inspection '{self.name}' needs a title and help text")
        return found

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def specs_to_json(specs: tuple[InspectionSpec, ...] | list[InspectionSpec]) -> str:
    return json.dumps([spec.to_dict() for spec in specs])


def specs_from_json(text: str) -> list[InspectionSpec]:
    return [InspectionSpec(**item) for item in json.loads(text)]


def check_record(spec: InspectionSpec, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """The record as float/str numpy arrays, or ValueError naming the spec and the array that does not fit."""
    if not isinstance(arrays, dict) or not arrays:
        raise ValueError(f"inspection '{spec.name}': expected a dict of named arrays, got {type(arrays).__name__}")
    out = {str(key): np.asarray(value) for key, value in arrays.items()}
    where = f"inspection '{spec.name}' ({spec.plot})"
    if spec.plot == "curves":
        if spec.x_key not in out:
            raise ValueError(f"{where}: lacks its x array '{spec.x_key}'")
        length = out[spec.x_key].shape
        for key, value in out.items():
            if value.shape != length:
                raise ValueError(f"{where}: series '{key}' has shape {value.shape}, x has {length}")
    elif spec.plot == "heatmap":
        if out.get("values") is None or out["values"].ndim != 2:
            raise ValueError(f"{where}: needs a 2-D array 'values'")
        for key, count in (("row_images", out["values"].shape[0]), ("column_images", out["values"].shape[1])):
            images = out.get(key)
            if images is not None and (images.ndim not in (3, 4) or len(images) != count):
                raise ValueError(f"{where}: '{key}' must be [{count}, H, W] or [{count}, H, W, C], "
                                 f"got shape {images.shape}")
    elif spec.plot == "image_grid":
        images = out.get("images")
        if images is None or images.ndim not in (3, 4):
            raise ValueError(f"{where}: needs 'images' [N, H, W] or [N, H, W, C]")
    return out


def compact(spec: InspectionSpec, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    """What is stored per snapshot: histograms for layer_histograms, float32 everywhere, at most
    MAX_GRID_IMAGES images."""
    record = check_record(spec, arrays)
    if spec.plot == "layer_histograms":
        return {key: array for layer, values in record.items() for key, array in _histogram(layer, values).items()}
    if spec.plot == "image_grid":
        record["images"] = record["images"][:MAX_GRID_IMAGES]
        if "labels" in record:
            record["labels"] = record["labels"][:MAX_GRID_IMAGES]
    return {key: value.astype(np.float32) if value.dtype.kind in "fiub" else value.astype(str)
            for key, value in record.items()}


def _histogram(layer: str, values: np.ndarray) -> dict[str, np.ndarray]:
    values = values.astype(np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    if values.size == 0:
        values = np.zeros(1)
    low, high = float(values.min()), float(values.max())
    if high <= low:  # all values equal: a narrow range, so later snapshots' axes are not stretched by it
        low, high = low - 0.01 * max(abs(low), 1e-4), high + 0.01 * max(abs(high), 1e-4)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    summary = np.array([values.mean(), values.std(), np.median(values), values.size])
    return {f"{layer}|counts": counts.astype(np.float32), f"{layer}|edges": edges.astype(np.float32),
            f"{layer}|summary": summary.astype(np.float32)}


def layer_histograms(stored: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """A stored layer_histograms record back as {layer: {"counts", "edges", "mean", "std", "median", "size"}}."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key, value in stored.items():
        layer, _, part = key.rpartition("|")
        entry = layers.setdefault(layer, {})
        if part == "summary":
            entry.update(mean=value[0], std=value[1], median=value[2], size=value[3])
        else:
            entry[part] = value
    return layers


def image_thumbnails(images) -> np.ndarray:
    """Model-input images [N, C, H, W] (normalized, any scale; a numpy array or a torch tensor) as thumbnails for a
    heatmap's axes or an image grid: [N, H, W] (the first channel) or [N, H, W, 3] (colour), each min-max scaled
    to [0, 1] on its own."""
    if hasattr(images, "detach"):  # a torch tensor, possibly on a device (this foundation imports no torch)
        images = images.detach().float().cpu().numpy()
    x = np.asarray(images, dtype=np.float32)
    low = x.min(axis=(1, 2, 3), keepdims=True)
    high = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - low) / np.maximum(high - low, 1e-8)
    return x.transpose(0, 2, 3, 1) if x.shape[1] == 3 else x[:, 0]

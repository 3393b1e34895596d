"""Inspection records: declarations, compaction and the run folder's history the Mechanism view reads."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.core import inspection, snapshots
from workbench.core.algorithms.base import check_declarations
from workbench.core.inspection import InspectionSpec

RATES = InspectionSpec("rates", "Learned learning rates", "layer_histograms", "alpha per layer (Li et al. 2017)")
GATES = InspectionSpec("gates", "Gates per inner step", "curves", "input and forget gates", "inner step", "gate")


class _Inspected:
    """What the recorder needs of an algorithm."""

    name = "stub"
    inspections = (RATES, GATES)

    def __init__(self):
        self.scale = 1.0

    def has(self, capability):
        return capability == "inspection"

    def inspect(self):
        return {"rates": {"conv1": np.full((8, 3), 0.01 * self.scale), "head": np.linspace(0, self.scale, 5)},
                "gates": {"x": np.arange(5), "input": np.linspace(0, 1, 5), "forget": np.ones(5) * self.scale}}


def test_layer_values_are_kept_as_histograms_with_their_summary():
    stored = inspection.compact(RATES, {"conv1": np.arange(1000.0), "flat": np.full(7, 2.0)})
    layers = inspection.layer_histograms(stored)
    assert set(layers) == {"conv1", "flat"}
    assert layers["conv1"]["counts"].sum() == 1000 and len(layers["conv1"]["edges"]) == inspection.HISTOGRAM_BINS + 1
    assert layers["conv1"]["mean"] == pytest.approx(499.5) and layers["conv1"]["size"] == 1000
    assert layers["flat"]["counts"].sum() == 7 and layers["flat"]["edges"][0] < 2.0 < layers["flat"]["edges"][-1]


@pytest.mark.parametrize("spec, arrays, message", [
    (GATES, {"input": np.ones(3)}, "lacks its x array 'x'"),
    (GATES, {"x": np.arange(3), "input": np.ones(4)}, "series 'input' has shape"),
    (InspectionSpec("map", "Attention", "heatmap", "help"), {"values": np.ones(3)}, "2-D array 'values'"),
    (InspectionSpec("map", "Attention", "heatmap", "help"), {"values": np.ones((2, 3)), "row_images": np.ones((3, 4, 4))},
     r"'row_images' must be \[2, H, W\]"),
    (InspectionSpec("map", "Attention", "heatmap", "help"), {"values": np.ones((2, 3)), "column_images": np.ones((3, 4))},
     r"'column_images' must be \[3, H, W\]"),
    (InspectionSpec("grid", "Images", "image_grid", "help"), {"images": np.ones(3)}, "needs 'images'"),
])
def test_a_record_that_does_not_fit_its_plot_is_refused_naming_it(spec, arrays, message):
    with pytest.raises(ValueError, match=f"inspection '{spec.name}'.*{message}"):
        inspection.compact(spec, arrays)


def test_the_history_grows_per_validation_replaces_later_steps_on_resume_and_thins(tmp_path, monkeypatch):
    algorithm = _Inspected()
    recorder = snapshots.InspectionSnapshots(None, None, tmp_path)
    for step in (10, 20, 30):
        algorithm.scale = step
        recorder.record(algorithm, step)
    history = snapshots.read_inspections(tmp_path / snapshots.INSPECTION_FILE)
    assert recorder.note == "" and history.steps == [10, 20, 30] and history.algorithm == "stub"
    assert [spec.name for spec in history.specs] == ["rates", "gates"] and history.specs[1].x_label == "inner step"
    assert history.records[2]["gates"]["forget"].tolist() == [30.0] * 5
    assert inspection.layer_histograms(history.records[0]["rates"])["head"]["size"] == 5
    recorder.record(algorithm, 20)  # a resumed run from step 20 drops its old later snapshots
    assert snapshots.read_inspections(tmp_path / snapshots.INSPECTION_FILE).steps == [10, 20]
    monkeypatch.setattr(snapshots, "INSPECTION_MAX_SNAPSHOTS", 4)
    for step in (40, 50, 60):
        recorder.record(algorithm, step)
    steps = snapshots.read_inspections(tmp_path / snapshots.INSPECTION_FILE).steps
    assert len(steps) <= 4 and steps[-1] == 60 and steps == sorted(steps)


def test_a_failing_inspect_never_stops_training_and_is_kept_as_a_note(tmp_path):
    algorithm = _Inspected()
    algorithm.inspect = lambda: {"rates": {"conv1": np.ones(3)}, "gates": {"input": np.ones(3)}}
    recorder = snapshots.InspectionSnapshots(None, None, tmp_path)
    recorder.record(algorithm, 5)
    assert "lacks its x array" in recorder.note
    assert snapshots.read_inspections(tmp_path / snapshots.INSPECTION_FILE).steps == []


def test_declarations_of_inspection_are_checked():
    from workbench.core.algorithms import get_algorithm

    protonet = get_algorithm("protonet")
    without_specs = type("NoSpecs", (protonet,), {"capabilities": protonet.capabilities | {"inspection"},
                                                 "inspect": lambda self: {}})
    with pytest.raises(TypeError, match="'inspection' capability and the 'inspections' declaration"):
        check_declarations(without_specs)
    bad_plot = type("BadPlot", (without_specs,), {"inspections": (InspectionSpec("x", "X", "pie", "help"),)})
    with pytest.raises(TypeError, match="plot 'pie' is not one of"):
        check_declarations(bad_plot)
    fine = type("Fine", (without_specs,), {"inspections": (RATES, GATES)})
    check_declarations(fine)


def test_thumbnails_are_min_max_scaled_per_image_grey_or_colour():
    import torch
    grey = torch.stack([torch.linspace(-3, 5, 16).reshape(1, 4, 4), torch.full((1, 4, 4), 2.0)])
    out = inspection.image_thumbnails(grey)
    assert out.shape == (2, 4, 4) and out[0].min() == 0.0 and out[0].max() == 1.0
    assert np.all(out[1] == 0.0)  # a flat image stays flat, without dividing by zero
    colour = inspection.image_thumbnails(np.random.default_rng(0).normal(size=(3, 3, 5, 4)))
    assert colour.shape == (3, 5, 4, 3) and colour.min() >= 0.0 and colour.max() <= 1.0

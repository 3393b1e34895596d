"""The "Try a task" view with a model that classifies from descriptors: each class card shows one slider per declared
field (titles, ranges and help from the model's declaration), queries are classified against prototypes made from
the sliders, exactly as the core computes them, and switching to an image model brings the image cards back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workbench.core.algorithms import ModelSpec, get_algorithm
from workbench.core.checkpoints import make_payload
from workbench.core.config import ExperimentConfig
from workbench.core.data.episodes import EpisodeSampler
from workbench.core.data.glyphs import GlyphParams, make_glyphs, render_glyph
from workbench.core.runs import load_model
from workbench.core.tryatask import TaskImage, classify
from workbench.gui.try_view import TryView

pytestmark = pytest.mark.usefixtures("one_torch_thread")
WAIT_MS = 60_000
TINY = GlyphParams(num_alphabets=3, characters_per_alphabet=4, samples_per_class=3, split_alphabets=(1, 1, 1))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small model that classifies from the glyphs' descriptors, trained a few steps on a tiny glyph set."""
    dataset = make_glyphs(TINY, 16, use_cache=False)
    config = ExperimentConfig.from_dict({"dataset": {"name": "glyphs", "image_size": 16, "ways": 3},
                                         "algorithm": {"name": "zero-shot", "hparams": {"hidden": 8}}})
    cls = get_algorithm("zero-shot")
    torch.manual_seed(0)
    algorithm = cls(cls.build_hparams(config.algorithm.hparams), ModelSpec(1, 16, 3, 4))
    algorithm.attach_training_data(dataset, config)
    algorithm.configure_optimizers(1e-2, 3)
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, 3, 1, 2, seed=0)
    for _ in range(3):
        algorithm.meta_train_step([sampler.sample()])
    path = tmp_path_factory.mktemp("model") / "described.pt"
    torch.save(make_payload(algorithm, config, dataset.spec, step=3, best_val_accuracy=None), path)
    return path


@pytest.fixture
def view(qtbot):
    widget = TryView()
    qtbot.addWidget(widget)
    widget.resize(1300, 800)
    widget.show()
    yield widget
    assert widget.shutdown(), "the prediction thread did not end"


def settle(qtbot, view: TryView) -> None:
    qtbot.waitUntil(lambda: not view.busy, timeout=WAIT_MS)


def query(view: TryView, class_id: int) -> None:
    view.add_images(None, [TaskImage.from_array(render_glyph(class_id, 1, size=56, params=TINY), f"q{class_id}.png")])


def test_sliders_describe_the_classes_and_their_prototypes_classify_the_queries(view, qtbot, checkpoint, tmp_path):
    view.set_model(str(checkpoint))
    settle(qtbot, view)
    space = load_model(checkpoint).algorithm.descriptor_space
    names = [f.name for f in space.fields]
    first, second = view.cards
    assert first.sliders is not None and list(first.sliders.sliders) == names
    assert not first.strip.isVisible() and "attributes" in view.classes_title.text()
    titles = [first.sliders.layout().itemAtPosition(row, 0).widget().text() for row in range(1, len(names) + 1)]
    assert titles == [f.title for f in space.fields]
    assert space.fields[0].help in first.sliders.sliders[names[0]].toolTip()
    # Each class starts as one of the model's example classes, so the two differ.
    examples = list(space.presets.values())
    values = view.task.classes[0].descriptor
    assert [values[n] for n in names] == pytest.approx(examples[0])
    assert view.task.classes[1].descriptor != values
    assert [view.sketch_target.itemData(i) for i in range(view.sketch_target.count())] == [""]  # queries only

    query(view, 8)
    settle(qtbot, view)
    [prediction] = view.result.predictions
    assert view.result.classes == view.task.class_names()
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert not view.query_rows[0].wrong.isVisible()  # a described class takes no images
    before = dict(prediction.probabilities)

    slider = second.sliders.sliders[names[1]]  # the user moves a slider of the second class
    slider.setValue(slider.maximum() if slider.value() != slider.maximum() else slider.minimum())
    settle(qtbot, view)
    assert view.task.classes[1].descriptor[names[1]] == pytest.approx(space.fields[1].low if slider.value() == 0
                                                                       else space.fields[1].high)
    after = view.result.predictions[0].probabilities
    assert after != pytest.approx(before)
    core = classify(load_model(checkpoint), view.task.snapshot())  # the same numbers as the core gives
    assert core.predictions[0].probabilities == pytest.approx(after, abs=1e-6)

    first.sliders.like.activated.emit(2)  # "set all like" the second example
    settle(qtbot, view)
    for spec, expected in zip(space.fields, examples[1]):  # to the sliders' resolution
        assert abs(view.task.classes[0].descriptor[spec.name] - expected) <= (spec.high - spec.low) / 200 + 1e-6
    third = view.add_class()
    settle(qtbot, view)
    assert view.card(third).sliders is not None and view.result.classes == view.task.class_names()

    assert view.grab().save(str(tmp_path / "try-descriptors.png"))

    view.set_model("protonet-glyphs")  # an image model: image cards again, descriptors dropped
    settle(qtbot, view)
    assert all(card.sliders is None and card.strip.isVisible() for card in view.cards)
    assert all(c.descriptor is None for c in view.task.classes)
    assert "support images" in view.classes_title.text()


def test_a_saved_described_task_loads_with_its_values(view, qtbot, checkpoint, tmp_path):
    view.set_model(str(checkpoint))
    settle(qtbot, view)
    name = view.task.class_names()[0]
    values = dict(view.task.classes[0].descriptor)
    values[next(iter(values))] = 3.0
    view.describe(name, values)
    view.save_task(tmp_path / "task")
    view.add_class()
    view.load_task(tmp_path / "task")
    settle(qtbot, view)
    assert view.task.classes[0].descriptor == pytest.approx(values) and len(view.cards) == 2
    assert view.cards[0].sliders.values()[next(iter(values))] == pytest.approx(3.0)

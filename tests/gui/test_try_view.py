"""The "Try a task" view: drops, pastes and drawings fill class cards and queries; predictions come from a background
thread, match `workbench try`, and follow the support set, corrections and the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from workbench.core.data.glyphs import DEFAULT_PARAMS, render_glyph
from workbench.core.tryatask import TaskImage
from workbench.gui.try_view import TryView
from workbench.tryatask.cli import main as try_main

TEST_CLASSES = DEFAULT_PARAMS.split_class_ranges()["test"]
# Test-split characters of three different alphabets (40 characters each).
CLASS_A, CLASS_B, CLASS_C = TEST_CLASSES[0], TEST_CLASSES[47], TEST_CLASSES[93]
WAIT_MS = 60_000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def view(qtbot):
    widget = TryView()
    qtbot.addWidget(widget)
    widget.resize(1300, 800)
    widget.show()
    yield widget
    assert widget.shutdown(), "the prediction thread did not end"


def settle(qtbot, view: TryView) -> None:
    """Wait until the latest change has been classified."""
    qtbot.waitUntil(lambda: not view.busy, timeout=WAIT_MS)


def write_glyph(path: Path, class_id: int, sample: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_glyph(class_id, sample, size=56)).save(path)
    return path


def file_mime(*paths: Path) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    return mime


def drop(widget, mime: QMimeData) -> None:
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)


def qimage_of(pixels: np.ndarray) -> QImage:
    height, width = pixels.shape
    return QImage(np.ascontiguousarray(pixels).data, width, height, width, QImage.Format.Format_Grayscale8).copy()


def two_class_task(view: TryView, tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Class A filled by dropping files, class B by dropping a folder; queries by dropping files."""
    name_a, name_b = view.task.class_names()
    files_a = [write_glyph(tmp_path / "a" / f"{s}.png", CLASS_A, s) for s in (0, 1, 2)]
    for s in (0, 1, 2):
        write_glyph(tmp_path / "b" / f"{s}.png", CLASS_B, s)
    drop(view.card(name_a).strip, file_mime(*files_a))
    drop(view.card(name_b), file_mime(tmp_path / "b"))  # anywhere on the card
    queries = [write_glyph(tmp_path / "q" / f"{c}.png", c, 17) for c in (CLASS_B, CLASS_A)]
    drop(view.query_drop, file_mime(*queries))
    return [*files_a], queries


def test_demo_model_is_preselected_and_waits_for_support(view, qtbot):
    assert view.model_source() == "protonet-omniglot"
    # Every bundled model is offered, the Omniglot ones first; the glyph models stay available.
    offered = [view.model_combo.itemData(i) for i in range(view.model_combo.count())]
    assert offered == ["protonet-omniglot", "protonet-glyphs", "maml-glyphs"]
    assert view.task.class_names() == ["class 1", "class 2"]
    settle(qtbot, view)
    # An empty task says what to do next, as a hint, not in the error colour.
    assert view.result is None and "at least two classes" in view.status.text()
    assert "color" not in view.status.styleSheet()


def test_drops_classify_fresh_glyphs_and_match_the_cli(view, qtbot, tmp_path, capsys):
    two_class_task(view, tmp_path)
    settle(qtbot, view)
    name_a, name_b = view.task.class_names()
    assert [len(c.images) for c in view.task.classes] == [3, 3]
    assert [p.predicted for p in view.result.predictions] == [name_b, name_a]
    row = view.query_rows[0]
    assert row.predicted.text().startswith(name_b)
    assert row.bar_widgets[name_b].value() > row.bar_widgets[name_a].value()
    # The same model and images through `workbench try` give the same probabilities.
    code = try_main(["demo", "--support", f"{name_a}={tmp_path / 'a'}", f"{name_b}={tmp_path / 'b'}",
                     "--query", *[str(image.path) for image in view.task.queries], "--json"])
    assert code == 0
    cli = json.loads(capsys.readouterr().out)["predictions"]
    for gui_prediction, cli_prediction in zip(view.result.predictions, cli):
        assert gui_prediction.query == cli_prediction["query"]
        assert gui_prediction.probabilities == pytest.approx(cli_prediction["probabilities"], abs=1e-6)
    # Hovering a thumbnail shows the image as the model sees it (28x28, one channel).
    tooltip = view.card(name_a).strip.item(0).toolTip()
    assert "28x28" in tooltip and "data:image/png;base64," in tooltip


def test_paste_image_and_copied_files(view, qtbot, tmp_path):
    name_a, name_b = view.task.class_names()
    clipboard = QApplication.clipboard()
    copied = [write_glyph(tmp_path / f"a{s}.png", CLASS_A, s) for s in (0, 1)]
    clipboard.setMimeData(file_mime(*copied))
    assert view.paste_into(name_a) == 2
    clipboard.setImage(qimage_of(render_glyph(CLASS_B, 0, size=56)))
    assert view.paste_into(name_b) == 1
    clipboard.setImage(qimage_of(render_glyph(CLASS_B, 12, size=56)))
    assert view.paste_into(None) == 1
    settle(qtbot, view)
    assert view.task.get_class(name_b).images[0].name.startswith("pasted-")
    assert [p.predicted for p in view.result.predictions] == [name_b]
    clipboard.setMimeData(QMimeData())
    try:
        assert view.paste_into(None) == 0 and "clipboard" in view.status.text()
    finally:
        # The clipboard owns the mime data; freeing it now, not in Qt's exit handlers after Python has
        # finalized, avoids a crash at interpreter exit.
        clipboard.clear()


def test_sketch_pad_strokes_become_drawings(view, qtbot, tmp_path):
    canvas = view.sketch.canvas
    assert canvas.is_empty()
    view.sketch.width_spin.setValue(16)
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(30, 112))
    for x in range(30, 200, 10):
        QTest.mouseMove(canvas, QPoint(x, 112))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(200, 112))
    pixels = canvas.to_array()
    assert not canvas.is_empty()
    assert pixels[112, 40:190].max() < 60 and pixels[20, :].min() == 255  # ink on the stroke, paper elsewhere
    assert canvas.save(str(tmp_path / "drawing.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "drawing.png").convert("L")), pixels)
    name_a = view.task.class_names()[0]
    view.sketch_target.setCurrentIndex(view.sketch_target.findData(name_a))
    image = view.add_drawing()
    assert image.drawn and view.task.get_class(name_a).images == [image]
    assert canvas.is_empty()  # cleared for the next drawing
    view.sketch.clear_button.click()
    assert view.add_drawing() is None and "draw something" in view.status.text()


def test_light_on_dark_drawing_is_classified_like_dark_on_light(view, qtbot):
    name_a, name_b = view.task.class_names()
    for name, class_id in ((name_a, CLASS_A), (name_b, CLASS_B)):
        view.add_images(name, [TaskImage.from_array(render_glyph(class_id, s, size=56), f"{s}.png") for s in (0, 1)])
    dark = render_glyph(CLASS_A, 9, size=56)
    view.add_images(None, [TaskImage.from_array(dark, "dark.png", drawn=True),
                           TaskImage.from_array(255 - dark, "light.png", drawn=True)])
    settle(qtbot, view)
    normal, inverted = view.result.predictions
    assert normal.predicted == inverted.predicted == name_a
    assert normal.probabilities == pytest.approx(inverted.probabilities, abs=0.01)  # resize rounding differs


def test_correction_moves_the_query_into_the_support_set(view, qtbot, tmp_path):
    two_class_task(view, tmp_path)
    settle(qtbot, view)
    name_a, name_b = view.task.class_names()
    query = view.task.queries[0]
    actions = view.query_rows[0].wrong.menu().actions()
    assert [a.text() for a in actions] == [f"It is {name_a}", f"It is {name_b}"]
    actions[0].trigger()  # "this is wrong: it is class A"
    settle(qtbot, view)
    assert query in view.task.get_class(name_a).images and query not in view.task.queries
    assert view.card(name_a).strip.count() == 4 and len(view.query_rows) == 1
    assert len(view.result.predictions) == 1


def test_classes_add_rename_remove_and_bad_files(view, qtbot, tmp_path):
    two_class_task(view, tmp_path)
    name_a, name_b = view.task.class_names()
    third = view.add_class()
    assert view.task.class_names() == [name_a, name_b, third] and len(view.cards) == 3
    assert not view.rename_class(third, name_a) and "already" in view.status.text()
    card = view.card(third)
    card.name_edit.setText("circle")
    card.name_edit.editingFinished.emit()
    assert view.task.class_names()[2] == "circle"
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    drop(view.card("circle").strip, file_mime(notes, write_glyph(tmp_path / "c.png", CLASS_C, 0)))
    settle(qtbot, view)
    assert "notes.png" in view.status.text() and "not an image" in view.status.text()
    assert view.result.classes == [name_a, name_b, "circle"]  # the good file of the class is still used
    view.remove_class("circle")
    settle(qtbot, view)
    assert view.result.classes == [name_a, name_b] and len(view.cards) == 2


def test_switching_to_maml_shows_the_adaptation_trace(view, qtbot, tmp_path):
    two_class_task(view, tmp_path)
    settle(qtbot, view)
    assert "Embedding" in view.plot_title.text() and not view.steps_spin.isVisible()
    protonet = [p.probabilities for p in view.result.predictions]
    view.set_model("maml-glyphs")
    settle(qtbot, view)
    assert "support loss" in view.plot_title.text() and view.steps_spin.isVisible()
    assert len(view.result.trace) == view.steps_spin.value() + 1
    losses = [row["support_loss"] for row in view.result.trace]
    assert losses[-1] < losses[0]  # adapting fits the support set
    assert [p.probabilities for p in view.result.predictions] != protonet
    view.steps_spin.setValue(3)
    settle(qtbot, view)
    assert len(view.result.trace) == 4


def test_save_load_and_export(view, qtbot, tmp_path):
    two_class_task(view, tmp_path / "images")
    settle(qtbot, view)
    before = [p.probabilities for p in view.result.predictions]
    view.save_task(tmp_path / "task")
    other = TryView()
    qtbot.addWidget(other)
    other.show()
    try:
        other.load_task(tmp_path / "task")
        settle(qtbot, other)
        assert other.task.class_names() == view.task.class_names() and len(other.query_rows) == 2
        for loaded, saved in zip(other.result.predictions, before):
            assert loaded.probabilities == pytest.approx(saved, abs=1e-6)
    finally:
        assert other.shutdown()
    exported = view.export_dataset(tmp_path / "dataset")
    assert sorted(p.name for p in exported.iterdir()) == sorted(view.task.class_names())


def test_a_bad_checkpoint_is_reported_and_the_view_recovers(view, qtbot, tmp_path):
    two_class_task(view, tmp_path)
    settle(qtbot, view)
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with qtbot.waitSignal(view.worker.failed, timeout=WAIT_MS):
        view.set_model(str(bad))
    assert str(bad) in view.status.text() and "not a workbench checkpoint" in view.status.text()
    assert view.result is None and not view.query_rows[0].bar_widgets  # no stale predictions
    view.set_model("protonet-glyphs")
    settle(qtbot, view)
    assert len(view.result.predictions) == 2 and "2 queries classified" in view.status.text()


def test_main_window_has_the_tab(make_window):
    window = make_window()
    assert isinstance(window.views().get("Try a task"), TryView)

"""First launch: on a fresh install (no runs, no data downloaded, no network), "Try a task" opens on the bundled
Omniglot demo model and classifies drawings from the sketch pad."""

from __future__ import annotations

import socket

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest

from workbench.core.data import omniglot
from workbench.core.runs import RunStore
from workbench.core.tryatask import DEFAULT_DEMO, STROKE_FRAMES, stroke_frame
from workbench.gui.try_view import TryView, _load_cached

WAIT_MS = 60_000

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to reach the network fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access on first launch: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def stroke(canvas, points) -> None:
    QTest.mousePress(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(*points[0]))
    for point in points[1:]:
        QTest.mouseMove(canvas, QPoint(*point))
    QTest.mouseRelease(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, QPoint(*points[-1]))


def draw_into(view: TryView, target: str, strokes) -> None:
    view.sketch_target.setCurrentIndex(view.sketch_target.findData(target))
    for points in strokes:
        stroke(view.sketch.canvas, points)
    assert view.add_drawing() is not None


def line(a, b, steps: int = 12):
    return [(round(a[0] + (b[0] - a[0]) * t / steps), round(a[1] + (b[1] - a[1]) * t / steps))
            for t in range(steps + 1)]


# Two characters, each drawn twice: once large, once small and off-centre (framing makes them alike).
CROSS = [line((112, 40), (112, 184)), line((40, 112), (184, 112))]
CROSS_SMALL = [line((50, 130), (50, 200)), line((15, 165), (85, 165))]
HOOK = [line((40, 40), (184, 40)) + line((184, 40), (184, 184))[1:] + line((184, 184), (90, 184))[1:]]
HOOK_SMALL = [line((130, 20), (200, 20)) + line((200, 20), (200, 90))[1:] + line((200, 90), (155, 90))[1:]]


def test_fresh_install_opens_on_the_omniglot_demo_offline(make_window, qtbot, offline):
    assert RunStore().list() == []  # no runs
    assert not omniglot.find_sources(omniglot.default_root())  # no data downloaded
    window = make_window()
    window.show_view("Try a task")
    view = window.views()["Try a task"]
    assert isinstance(view, TryView) and view.isVisible()
    assert view.model_source() == DEFAULT_DEMO == "protonet-omniglot"
    assert view.model_combo.currentText() == "Demo: protonet-omniglot (bundled)"
    model = _load_cached(view.model_source())
    assert model.config.dataset.name == "omniglot" and stroke_frame(model) == STROKE_FRAMES["omniglot"]

    cross, hook = view.task.class_names()
    draw_into(view, cross, CROSS)
    draw_into(view, hook, HOOK)
    draw_into(view, "", HOOK_SMALL)
    draw_into(view, "", CROSS_SMALL)
    qtbot.waitUntil(lambda: not view.busy and view.result is not None, timeout=WAIT_MS)
    assert not view.result.problems
    assert [p.predicted for p in view.result.predictions] == [hook, cross]

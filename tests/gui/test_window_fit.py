"""The main window fits a 1280x720 screen: its minimum size, with every tab of every kind shown, is at most
1280x720; at that size (and at the size it opens with on such a screen) no view and no setup panel scrolls
sideways, and "Try a task" shows its three columns whole. Its first size and a restored geometry follow the
screen."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QRect, QSize
from PySide6.QtWidgets import QAbstractScrollArea, QApplication, QScrollBar

from workbench.gui import main_window
from workbench.gui.main_window import default_window_size, fit_to_screen

SCREEN = QSize(1280, 720)
# (kind, algorithm): together they enable every tab (Adaptation: MAML; Fit: regression; Sample weights: MWN).
SETUPS = (("classification", "protonet"), ("classification", "maml"), ("regression", "maml"),
          ("noisy-labels", "meta-weight-net"), ("classification", "meta-sgd"))  # the last one feeds Mechanism


def settle() -> None:
    for _ in range(4):
        QApplication.processEvents()


def open_window(make_window, monkeypatch, size: QSize):
    """A window that opens at ``size``, as on a screen where that is its default size."""
    monkeypatch.setattr(main_window, "default_window_size", lambda available: size)
    window = make_window(auto_load=False)
    settle()
    assert window.size() == size
    return window


def visit_every_tab(window):
    """Each (kind, algorithm) setup, then each enabled tab: yields (setup, tab title, tab)."""
    for kind, algorithm in SETUPS:
        assert window.set_kind(kind)
        window.algorithm_panel.algorithm_combo.set_name(algorithm)
        window.revalidate()
        for index in range(window.tabs.count()):
            if not window.tabs.isTabEnabled(index):
                continue
            window.tabs.setCurrentIndex(index)
            settle()
            yield f"{kind}/{algorithm}", window.tabs.tabText(index), window.tabs.widget(index)


def sideways(area: QAbstractScrollArea) -> int:
    bar: QScrollBar = area.horizontalScrollBar()
    return bar.maximum() if bar.isVisible() else 0


def test_default_size_follows_the_screen_and_a_restored_geometry_stays_on_it():
    assert default_window_size(QSize(2560, 1440)) == main_window.PREFERRED_SIZE  # a large screen: the usual size
    small = default_window_size(SCREEN)
    assert small.width() <= 1280 and small.height() <= 720 and small.width() >= 1100
    # A geometry saved on a larger screen is shrunk and moved onto this one.
    assert fit_to_screen(QRect(900, 500, 1600, 1000), QRect(0, 0, 1280, 720)) == QRect(0, 0, 1280, 720)
    assert fit_to_screen(QRect(1000, 300, 800, 600), QRect(0, 0, 1280, 720)) == QRect(480, 120, 800, 600)
    assert fit_to_screen(QRect(10, 20, 800, 600), QRect(0, 0, 1280, 720)) == QRect(10, 20, 800, 600)


def test_minimum_size_fits_1280x720_with_every_tab_visited(qtbot, make_window, monkeypatch):
    window = open_window(make_window, monkeypatch, SCREEN)
    seen = set()
    for setup, title, _ in visit_every_tab(window):
        seen.add(title)
        hint, minimum = window.minimumSizeHint(), window.minimumSize()
        assert hint.width() <= 1280 and hint.height() <= 720, (setup, title, hint)
        assert minimum.width() <= 1280 and minimum.height() <= 720, (setup, title, minimum)
    assert seen == {window.tabs.tabText(i) for i in range(window.tabs.count())}  # every tab was shown


@pytest.mark.parametrize("size", [SCREEN, default_window_size(SCREEN)], ids=["1280x720", "default-on-1280x720"])
def test_nothing_scrolls_sideways_at_1280x720(qtbot, make_window, monkeypatch, size):
    window = open_window(make_window, monkeypatch, size)
    for dock in (window.kind_dock, window.dataset_dock, window.algorithm_dock):
        dock.raise_()
        settle()
        assert sideways(dock.widget()) == 0, dock.windowTitle()
    for setup, title, tab in visit_every_tab(window):
        assert sideways(tab) == 0, (setup, title)  # the tab's view fits beside the docks
        if title == "Runs":
            continue  # a table may scroll its columns (none do at this size with the default widths)
        inner = [type(area.parentWidget()).__name__ for area in tab.currentWidget().findChildren(QAbstractScrollArea)
                 if area.isVisible() and sideways(area)]
        assert not inner, (setup, title, inner)


def write_glyph(path, class_id: int, sample: int) -> None:
    from PIL import Image

    from workbench.core.data.glyphs import render_glyph

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render_glyph(class_id, sample, size=28)).save(path)


def test_try_a_task_shows_its_columns_whole_at_1280x720(qtbot, make_window, monkeypatch, tmp_path):
    """With four classes (one with a long name), their images and classified queries."""
    window = open_window(make_window, monkeypatch, default_window_size(SCREEN))
    window.show_view("Try a task")
    view = window.view("Try a task")
    for name in ("class 3", "a class with a rather long name"):
        view.add_class(name)
    # Drawings: the default demo model looks for strokes and leaves a blank image out.
    for index, name in enumerate(task_class.name for task_class in view.task.classes):
        paths = [tmp_path / name / f"{sample}.png" for sample in range(3)]
        for sample, path in enumerate(paths):
            write_glyph(path, index, sample)
        view.add_files(name, paths)
    write_glyph(tmp_path / "query.png", 2, 5)
    view.add_files(None, [tmp_path / "query.png"])
    qtbot.waitUntil(lambda: not view.busy and view.result is not None, timeout=60_000)
    settle()
    assert view.query_rows and view.query_rows[0].bar_widgets  # the query shows a bar per class
    tab = window.tabs.currentWidget()
    assert sideways(tab) == 0 and tab.verticalScrollBar().maximum() == 0
    for card in view.cards:
        assert card.isVisible() and card.width() >= card.minimumSizeHint().width()
    columns = [area for area in view.findChildren(QAbstractScrollArea) if type(area).__name__ == "ColumnScroll"]
    assert len(columns) == 3 and all(sideways(area) == 0 for area in columns)
    assert window.grab().save(str(tmp_path / "try-1280x720.png"))


def test_the_window_shows_before_its_contents_are_built(qtbot):
    """MainWindow(deferred=True): the frame shows at once; finish_startup builds the rest and emits ready."""
    from workbench.gui.main_window import MainWindow

    window = MainWindow(restore=False, auto_load=False, deferred=True)
    qtbot.addWidget(window)
    window.confirm_stop_on_close = lambda: True
    window.show()
    assert not window.is_ready and not window.run_action.isEnabled() and not hasattr(window, "tabs")
    with qtbot.waitSignal(window.ready, timeout=60_000):
        window.finish_startup()
    assert window.is_ready and window.tabs.count() >= 5 and window.training_view is not None
    assert window.import_action.isEnabled() and window.kind_dock.widget().isEnabled()
    assert window.shutdown()

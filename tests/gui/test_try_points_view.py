"""The regression "Try a task" page: clicks on the canvas add and remove points, typed points and table edits,
the keyboard (Delete, Ctrl+Z, Space), and a real tiny trained regression model adapting to the points in the
background, step by step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest

from test_try_points import train_tiny_regression
from workbench.core.runs import RunStore, load_model
from workbench.core.try_points import fit_points
from workbench.gui.try_points_view import TryPointsView

FIT_TIMEOUT_MS = 60_000  # the first adaptation loads the model (imports) on a shared, slow CPU


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("regression-home")
    run = train_tiny_regression(home)
    return RunStore(home), run


@pytest.fixture
def view(qtbot, trained):
    store, _run = trained
    widget = TryPointsView(store)
    qtbot.addWidget(widget)
    widget.resize(1100, 700)
    widget.show()
    qtbot.waitExposed(widget)
    yield widget
    assert widget.shutdown(), "the adaptation thread did not end"


def click(view, x: float, y: float, button=Qt.MouseButton.LeftButton) -> None:
    """A real mouse click on the canvas at data coordinates (x, y)."""
    box = view.canvas.getPlotItem().getViewBox()
    pos = view.canvas.mapFromScene(box.mapViewToScene(QPointF(x, y)))
    QTest.mouseClick(view.canvas.viewport(), button, Qt.KeyboardModifier.NoModifier, pos)


def wait_for_fit(qtbot, view):
    qtbot.waitUntil(lambda: view.fit is not None and not view.busy, timeout=FIT_TIMEOUT_MS)
    return view.fit


def test_lists_regression_runs_only(qtbot, trained, tiny_dataset_config):
    store, run = trained
    store.create(tiny_dataset_config(name="images"))  # a classification run: not a model for points
    view = TryPointsView(store)
    qtbot.addWidget(view)
    assert view.model_ids() == [run.id]
    empty = TryPointsView(RunStore())
    qtbot.addWidget(empty)
    assert empty.model_ids() == [] and "No trained regression run yet" in empty.hint.textItem.toPlainText()


def test_clicks_add_points_and_the_model_adapts(qtbot, view, trained):
    _store, run = trained
    view.animation.setInterval(5)
    for x in (-3.0, 0.0, 2.5):
        click(view, x, 2.0 * math.sin(x))
    assert len(view.xs) == 3
    np.testing.assert_allclose(view.xs, [-3.0, 0.0, 2.5], atol=0.1)  # a pixel's worth of data units
    np.testing.assert_allclose(view.ys, [2.0 * math.sin(x) for x in (-3.0, 0.0, 2.5)], atol=0.1)
    assert view.table.rowCount() == 3 and view.selected == 2
    fit = wait_for_fit(qtbot, view)
    assert fit.steps == list(range(11))
    expected = fit_points(load_model(run), view.xs, view.ys, 10)  # what the core gives for the same points
    np.testing.assert_allclose(fit.predictions, expected.predictions, rtol=1e-4, atol=1e-5)
    x, y = view.prediction()
    np.testing.assert_allclose(y, fit.prediction_at(10))
    view.step_slider.setValue(1)
    np.testing.assert_allclose(view.prediction()[1], fit.prediction_at(1))
    assert "after 1 step: support MSE" in view.step_label.text()
    assert f"{fit.support_mse[1]:.3g}" in view.step_label.text()
    view.toggle_animation()
    assert view.step_slider.value() == 0 and view.animation.isActive()
    qtbot.waitUntil(lambda: not view.animation.isActive(), timeout=5_000)
    assert view.step_slider.value() == 10 and view.animate_button.text() == "Animate"


def test_right_click_removes_the_nearest_point_and_clicks_select(qtbot, view):
    view.set_points([-4.0, 1.0, 3.0], [0.0, 1.0, -1.0])
    click(view, 1.3, 1.2, Qt.MouseButton.RightButton)
    assert view.xs == [-4.0, 3.0]
    click(view, -4.0, 0.0)  # on a point: selects it rather than adding one
    assert view.xs == [-4.0, 3.0] and view.selected == 0


def test_keyboard_delete_undo_and_space(qtbot, view):
    view.animation.setInterval(5)
    view.set_points([-2.0, 0.5, 4.0], [1.0, -1.0, 0.0])
    view.select(1)
    view.table.setFocus()
    QTest.keyClick(view.table, Qt.Key.Key_Delete)
    assert view.xs == [-2.0, 4.0]
    QTest.keyClick(view.table, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert view.xs == [-2.0, 0.5, 4.0]
    wait_for_fit(qtbot, view)
    QTest.keyClick(view.table, Qt.Key.Key_Space)
    assert view.animation.isActive() and view.step_slider.value() == 0
    qtbot.waitUntil(lambda: not view.animation.isActive(), timeout=5_000)
    assert view.step_slider.value() == view.step_slider.maximum()


def test_typed_points_and_table_edits_are_validated(qtbot, view):
    view.entry.setText("0, 1; 2.5, -1")
    QTest.keyClick(view.entry, Qt.Key.Key_Return)
    assert view.xs == [0.0, 2.5] and view.ys == [1.0, -1.0] and view.entry.text() == ""
    view.entry.setText("1, 1; 7, 0")
    QTest.keyClick(view.entry, Qt.Key.Key_Return)
    assert view.xs == [0.0, 2.5]  # nothing added
    assert "point 4: x = 7 is outside [-5, 5]" in view.status.text()  # numbered as in the table
    view.table.item(1, 1).setText("2")
    assert view.ys == [1.0, 2.0]
    view.table.item(0, 0).setText("abc")
    assert view.xs == [0.0, 2.5] and view.table.item(0, 0).text() == "0"
    assert "'abc' is not a number" in view.status.text()
    fit = wait_for_fit(qtbot, view)
    assert fit.support_x.tolist() == [0.0, 2.5] and fit.support_y.tolist() == [1.0, 2.0]
    view.clear_points()
    assert view.xs == [] and view.fit is None and view.prediction() is None

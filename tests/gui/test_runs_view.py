"""The Runs tab (RunsView) against a real RunStore in a temp folder, and the BackgroundTask helper it uses."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

import threading
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QAbstractItemView, QApplication, QLineEdit  # noqa: E402

from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.data.base import Cancelled  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.gui.evaluation import service as service_module  # noqa: E402
from workbench.gui.background import BackgroundTask  # noqa: E402
from workbench.gui.runs_view import COLUMN_INDEX, RunsView  # noqa: E402

SCREENSHOT_DIR = os.environ.get("WORKBENCH_SCREENSHOTS")  # set to keep the rendered PNGs for a look


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return RunStore(tmp_path / "home")


@pytest.fixture
def settings(tmp_path) -> QSettings:
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


class Recorder:
    """Stands in for the view's error dialog and confirmation question."""

    def __init__(self, answer: bool = True):
        self.errors: list[tuple[str, str, str | None]] = []
        self.questions: list[tuple[str, str]] = []
        self.answer = answer
        self.urls: list[QUrl] = []

    def error(self, title, message, details=None):
        self.errors.append((title, message, details))

    def confirm(self, title, text) -> bool:
        self.questions.append((title, text))
        return self.answer

    def open_url(self, url: QUrl) -> bool:
        self.urls.append(url)
        return True


@pytest.fixture
def make_view(qtbot, store):
    views = []

    def make(answer: bool = True) -> tuple[RunsView, Recorder]:
        view = RunsView(store)
        recorder = Recorder(answer)
        view.show_error = recorder.error
        view.confirm = recorder.confirm
        view.open_url = recorder.open_url
        qtbot.addWidget(view)
        view.resize(1100, 360)
        views.append(view)
        return view, recorder

    yield make
    for view in views:
        assert view.shutdown(20_000), "the evaluation thread did not end"


def add_run(store: RunStore, name: str, *, algorithm: str = "protonet", ways: int = 5, shots: int = 1,
            status: str = "finished", steps_done: int = 100, steps_total: int = 100, best: float | None = None,
            test: float | None = None, test_ci: float | None = None, checkpoints: tuple[str, ...] = ()) -> str:
    config = ExperimentConfig.from_dict({"name": name, "algorithm": {"name": algorithm},
                                         "dataset": {"name": "glyphs", "ways": ways, "shots": shots},
                                         "training": {"steps": steps_total}})
    run = store.create(config)
    store.update(run.id, status=status, steps_done=steps_done, best_val_accuracy=best,
                 best_val_ci95=None if best is None else 0.01, test_accuracy=test, test_ci95=test_ci,
                 test_ways=ways if test is not None else None, test_shots=shots if test is not None else None)
    for kind in checkpoints:  # placeholder files: enough for the view's enable/disable logic
        (run.path / "checkpoints").mkdir(exist_ok=True)
        (run.path / "checkpoints" / f"{kind}.pt").write_bytes(b"placeholder")
    return run.id


def cell(view: RunsView, row: int, column: str, role=Qt.ItemDataRole.DisplayRole):
    return view.proxy.index(row, COLUMN_INDEX[column]).data(role)


def column_values(view: RunsView, column: str) -> list:
    return [cell(view, row, column) for row in range(view.proxy.rowCount())]


def row_of_name(view: RunsView, name: str) -> int:
    names = [cell(view, row, "name", Qt.ItemDataRole.EditRole) for row in range(view.proxy.rowCount())]
    return names.index(name)


def select(view: RunsView, *run_ids: str) -> None:
    view.select_runs(list(run_ids))


def show_focused(view: RunsView, qtbot) -> None:
    """Keyboard shortcuts only fire in the active window with focus inside the view."""
    view.show()
    view.activateWindow()
    assert QTest.qWaitForWindowActive(view, 5000)
    view.table.setFocus()


def save_screenshot(widget, name: str) -> None:
    image = widget.grab()
    assert not image.isNull() and image.width() > 100
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        image.save(str(Path(SCREENSHOT_DIR) / name))


# --- listing, formatting, sorting, filtering -----------------------------------------------------
def test_lists_runs_with_readable_columns(make_view, store):
    add_run(store, "proto", best=0.968, test=0.9712, test_ci=0.0031, steps_done=2000, steps_total=2000)
    add_run(store, "maml-run", algorithm="maml", status="stopped", steps_done=800, steps_total=2000, best=0.91)
    add_run(store, "", algorithm="fomaml", ways=20, shots=5, status="diverged", steps_done=0)
    view, recorder = make_view()
    view.show()

    assert view.proxy.rowCount() == 3
    proto = row_of_name(view, "proto")
    assert cell(view, proto, "best_val") == "96.80%"
    assert cell(view, proto, "test") == "97.12% ± 0.31"
    assert cell(view, proto, "kind") == "classification"
    assert cell(view, proto, "steps") == "2,000 / 2,000"
    assert cell(view, proto, "setting") == "5-way 1-shot"
    maml = row_of_name(view, "maml-run")
    assert cell(view, maml, "status") == "stopped"
    assert cell(view, maml, "test") == "–"
    assert cell(view, maml, "steps") == "800 / 2,000"
    unnamed = row_of_name(view, "")
    assert cell(view, unnamed, "name").endswith("fomaml-" + cell(view, unnamed, "name").rsplit("-", 1)[1])
    assert cell(view, unnamed, "setting") == "20-way 5-shot"
    assert view.count_label.text() == "3 runs"
    assert not view.empty_label.isVisible()
    assert recorder.errors == []
    save_screenshot(view, "runs_view.png")


def add_regression_run(store: RunStore, name: str, *, test: float | None = None, test_ci: float | None = None,
                       best: float | None = None, test_shots: int = 10) -> str:
    config = ExperimentConfig.from_dict({"kind": "regression", "name": name, "algorithm": {"name": "maml"},
                                         "dataset": {"name": "sine", "shots": 10, "queries": 10}})
    run = store.create(config)
    store.update(run.id, status="finished", best_val_mse=best, best_val_ci95=None if best is None else 0.01,
                 test_mse=test, test_ci95=test_ci, test_shots=test_shots if test is not None else None)
    return run.id


def test_each_run_shows_its_kind_and_its_kinds_metric(make_view, store):
    from workbench.core.kinds import MSE

    add_run(store, "proto", best=0.968, test=0.9712, test_ci=0.0031)
    add_regression_run(store, "sine-maml", best=0.41, test=0.3712, test_ci=0.0423)
    add_regression_run(store, "sine-5shot", test=0.9, test_ci=0.1, test_shots=5)
    add_regression_run(store, "sine-untested")
    view, recorder = make_view()
    view.resize(1200, 260)
    view.show()
    proto, sine = row_of_name(view, "proto"), row_of_name(view, "sine-maml")
    assert cell(view, proto, "kind") == "classification" and cell(view, sine, "kind") == "regression"
    assert cell(view, proto, "setting") == "5-way 1-shot" and cell(view, sine, "setting") == "10-shot"  # no ways
    assert cell(view, proto, "test") == "97.12% ± 0.31"
    assert cell(view, sine, "test") == MSE.format(0.3712, 0.0423) == "0.3712 ± 0.042"
    assert cell(view, sine, "best_val") == "0.41"
    assert cell(view, row_of_name(view, "sine-5shot"), "test").endswith("(5-shot)")  # not the trained 10 shots
    assert cell(view, row_of_name(view, "sine-untested"), "test") == "–"
    tip = cell(view, sine, "name", Qt.ItemDataRole.ToolTipRole)
    assert "kind: regression" in tip and "best validation MSE: 0.41" in tip and "(10-shot)" in tip
    # Sorting is numeric in each run's own metric.
    view.table.sortByColumn(COLUMN_INDEX["test"], Qt.SortOrder.AscendingOrder)
    assert [cell(view, row, "name") for row in range(4)] == ["sine-untested", "sine-maml", "sine-5shot", "proto"]
    assert recorder.errors == []
    save_screenshot(view, "runs_view_kinds.png")


def test_for_window_wires_the_view_to_the_window(qtbot, store):
    from PySide6.QtCore import QObject, Signal

    from workbench.gui import theme as themes
    from workbench.gui.evaluation.service import EvaluationService

    class Window(QObject):
        training_started = Signal(int, object)
        training_finished = Signal(int, object)
        theme_changed = Signal(object)
        run_store_changed = Signal()

        def __init__(self):
            super().__init__()
            self.store, self.theme, self.calls, self.messages = store, themes.LIGHT, [], []

        def open_run(self, run_id):
            self.calls.append(("open", run_id))

        def overlay_runs(self, run_ids, baseline):
            self.calls.append(("overlay", tuple(run_ids), baseline))

        def resume_run(self, run_id):
            self.calls.append(("resume", run_id))

        def statusBar(self):  # noqa: N802 - Qt's name
            return self

        def showMessage(self, text, timeout=0):  # noqa: N802
            self.messages.append(text)

    window = Window()
    view = RunsView.for_window(window)
    qtbot.addWidget(view)
    view.show_error = lambda *args: None
    try:
        assert (RunsView.view_title, RunsView.view_capability) == ("Runs", None)
        assert view.service is window.evaluation_service and isinstance(view.service, EvaluationService)
        run_id = add_run(store, "stopped", status="stopped", checkpoints=("last",))
        window.run_store_changed.emit()  # another view changed the store: the table follows
        assert view.proxy.rowCount() == 1
        select(view, run_id)
        view.open_current()
        view.overlay_selected()
        view.resume_current()
        assert window.calls == [("open", run_id), ("overlay", (run_id,), None), ("resume", run_id)]
        changes = []
        window.run_store_changed.connect(lambda: changes.append(1))
        assert view.rename_run(run_id, "renamed") and changes and window.messages[-1].startswith("Renamed")
        window.training_started.emit(1, {"run_id": run_id})
        assert cell(view, 0, "status") == "running" and not view.resume_action.isEnabled()
        window.training_finished.emit(1, {"event": "stopped"})
        assert cell(view, 0, "status") == "stopped" and view.resume_action.isEnabled()
    finally:
        assert view.shutdown()


def test_empty_store_shows_a_hint(make_view):
    view, _ = make_view()
    view.show()
    assert view.proxy.rowCount() == 0
    assert view.empty_label.isVisible()
    assert not view.open_action.isEnabled() and not view.delete_action.isEnabled()


def test_sorting_by_accuracy_and_steps_is_numeric(make_view, store):
    # As text "10.00%" < "40.00%" < "5.00%"; as numbers 5 < 10 < 40. Runs without a value sort lowest.
    add_run(store, "ten", best=0.10, steps_done=800, steps_total=10_000)
    add_run(store, "forty", best=0.40, steps_done=10_000, steps_total=10_000)
    add_run(store, "five", best=0.05, steps_done=120, steps_total=10_000)
    add_run(store, "none", best=None, steps_done=9, steps_total=10_000)
    view, _ = make_view()

    view.table.sortByColumn(COLUMN_INDEX["best_val"], Qt.SortOrder.AscendingOrder)
    names = [cell(view, row, "name") for row in range(4)]
    assert names == ["none", "five", "ten", "forty"]
    view.table.sortByColumn(COLUMN_INDEX["best_val"], Qt.SortOrder.DescendingOrder)
    assert [cell(view, row, "name") for row in range(4)] == ["forty", "ten", "five", "none"]
    view.table.sortByColumn(COLUMN_INDEX["steps"], Qt.SortOrder.AscendingOrder)
    assert [cell(view, row, "name") for row in range(4)] == ["none", "five", "ten", "forty"]


def test_filter_matches_any_column(make_view, store, qtbot):
    add_run(store, "alpha", algorithm="protonet")
    add_run(store, "beta", algorithm="maml", status="failed")
    add_run(store, "gamma", algorithm="maml")
    view, _ = make_view()
    qtbot.keyClicks(view.filter_edit, "MAML")
    assert sorted(column_values(view, "name")) == ["beta", "gamma"]
    assert view.count_label.text() == "2 of 3 runs shown"
    view.filter_edit.setText("failed")
    assert column_values(view, "name") == ["beta"]
    view.filter_edit.clear()
    assert view.proxy.rowCount() == 3


def test_refresh_picks_up_new_runs_and_keeps_the_selection(make_view, store):
    first = add_run(store, "first")
    view, _ = make_view()
    select(view, first)
    second = add_run(store, "second")
    store.update(first, steps_done=55)
    view.refresh()
    assert sorted(column_values(view, "name")) == ["first", "second"]
    assert view.selected_run_ids() == [first]
    assert view.current_run_id() == first
    assert cell(view, view.proxy_row_of(first), "steps") == "55 / 100"
    assert view.proxy_row_of(second) >= 0


# --- rename, delete ------------------------------------------------------------------------------
def test_inline_rename_with_f2_updates_the_store(make_view, store, qtbot):
    run_id = add_run(store, "old name")
    view, recorder = make_view()
    show_focused(view, qtbot)
    select(view, run_id)
    renamed = []
    opened = []
    view.run_renamed.connect(lambda rid, name: renamed.append((rid, name)))
    view.open_run.connect(opened.append)

    view.table.setFocus()
    qtbot.keyClick(view.table, Qt.Key.Key_F2)
    assert view.table.state() == QAbstractItemView.State.EditingState
    editor = view.table.indexWidget(view.table.currentIndex())
    assert isinstance(editor, QLineEdit) and editor.text() == "old name"
    editor.selectAll()
    qtbot.keyClicks(editor, "new namex")
    qtbot.keyClick(editor, Qt.Key.Key_Left)
    qtbot.keyClick(editor, Qt.Key.Key_Delete)  # edits the text; must not ask to delete the run
    assert editor.text() == "new name" and recorder.questions == []
    qtbot.keyClick(editor, Qt.Key.Key_Return)  # commits the edit; must not also "open" the run
    qtbot.waitUntil(lambda: view.table.state() != QAbstractItemView.State.EditingState, timeout=2000)

    assert store.record(run_id).name == "new name"
    assert cell(view, view.proxy_row_of(run_id), "name") == "new name"
    assert renamed == [(run_id, "new name")]
    assert opened == []
    assert recorder.errors == []


def test_rename_to_a_taken_name_reports_the_clash(make_view, store):
    add_run(store, "taken")
    run_id = add_run(store, "mine")
    view, recorder = make_view()
    assert not view.rename_run(run_id, "taken")
    assert store.record(run_id).name == "mine"
    assert len(recorder.errors) == 1 and "taken" in recorder.errors[0][1]


def test_delete_asks_naming_the_run_and_removes_folder_and_row(make_view, store, qtbot):
    keep = add_run(store, "keeper")
    doomed = add_run(store, "doomed run")
    folder = store.run(doomed).path
    view, recorder = make_view(answer=True)
    show_focused(view, qtbot)
    select(view, doomed)
    deleted = []
    view.run_deleted.connect(deleted.append)

    qtbot.keyClick(view.table, Qt.Key.Key_Delete)

    assert len(recorder.questions) == 1
    assert "doomed run" in recorder.questions[0][1] and doomed in recorder.questions[0][1]
    assert not folder.exists()
    assert [r.id for r in store.list()] == [keep]
    assert column_values(view, "name") == ["keeper"]
    assert deleted == [doomed]


def test_declining_the_delete_keeps_the_run(make_view, store):
    run_id = add_run(store, "precious")
    view, recorder = make_view(answer=False)
    select(view, run_id)
    view.delete_action.trigger()
    assert len(recorder.questions) == 1
    assert store.run(run_id).path.is_dir()
    assert column_values(view, "name") == ["precious"]


def test_deleting_several_runs_lists_them_and_clears_a_deleted_baseline(make_view, store):
    a, b = add_run(store, "run a"), add_run(store, "run b")
    c = add_run(store, "run c")
    view, recorder = make_view()
    view.set_baseline(a)
    select(view, a, b)
    view.delete_selected()
    assert "run a" in recorder.questions[0][1] and "run b" in recorder.questions[0][1]
    assert [r.id for r in store.list()] == [c]
    assert view.baseline_id is None


def test_the_active_run_cannot_be_deleted(make_view, store):
    run_id = add_run(store, "training now", status="running", checkpoints=("last",))
    view, recorder = make_view()
    view.set_active_run(run_id)
    select(view, run_id)
    assert not view.delete_action.isEnabled()
    view.delete_selected()
    assert recorder.questions == [] and store.run(run_id).path.is_dir()


# --- signals to the main window ------------------------------------------------------------------
def test_enter_and_double_click_open_the_current_run(make_view, store, qtbot):
    run_id = add_run(store, "to open")
    add_run(store, "other")
    view, _ = make_view()
    show_focused(view, qtbot)
    select(view, run_id)
    with qtbot.waitSignal(view.open_run, timeout=2000) as blocker:
        qtbot.keyClick(view.table, Qt.Key.Key_Return)
    assert blocker.args == [run_id]
    index = view.proxy.index(view.proxy_row_of(run_id), COLUMN_INDEX["status"])
    with qtbot.waitSignal(view.open_run, timeout=2000) as blocker:
        view.table.doubleClicked.emit(index)
    assert blocker.args == [run_id]


def test_overlay_puts_the_baseline_first(make_view, store):
    base = add_run(store, "base")
    a, b = add_run(store, "a"), add_run(store, "b")
    view, _ = make_view()
    got = []
    view.overlay_runs.connect(lambda ids, baseline: got.append((ids, baseline)))

    select(view, a, b)
    view.overlay_action.trigger()
    assert got[-1][1] is None and sorted(got[-1][0]) == sorted([a, b])

    select(view, base)
    view.baseline_action.trigger()
    assert view.baseline_id == base
    row = view.proxy_row_of(base)
    assert "baseline" in cell(view, row, "name")
    assert cell(view, row, "name", Qt.ItemDataRole.FontRole).bold()
    assert cell(view, row, "name", Qt.ItemDataRole.EditRole) == "base"  # the badge is not part of the name
    assert view.baseline_action.text() == "Unpin baseline"

    select(view, a, b)
    view.overlay_selected()
    ids, baseline = got[-1]
    assert baseline == base and ids[0] == base and sorted(ids[1:]) == sorted([a, b])

    select(view, base)
    view.toggle_baseline()
    assert view.baseline_id is None
    assert "baseline" not in cell(view, view.proxy_row_of(base), "name")


@pytest.mark.parametrize("status, checkpoint, resumable", [
    ("stopped", "last", True), ("failed", "last", True), ("diverged", "last", True), ("paused", "last", True),
    ("stopped", None, False), ("finished", "last", False), ("running", "last", False)])
def test_resume_only_for_interrupted_runs_with_a_last_checkpoint(make_view, store, status, checkpoint, resumable):
    run_id = add_run(store, "r", status=status, checkpoints=(checkpoint,) if checkpoint else ())
    view, _ = make_view()
    select(view, run_id)
    assert view.resume_action.isEnabled() is resumable
    got = []
    view.resume_run.connect(got.append)
    view.resume_current()
    assert got == ([run_id] if resumable else [])


def test_open_folder_opens_the_run_folder(make_view, store):
    run_id = add_run(store, "folder")
    view, recorder = make_view()
    select(view, run_id)
    view.open_folder_action.trigger()
    assert [Path(url.toLocalFile()) for url in recorder.urls] == [store.run(run_id).path]


def test_state_survives_a_restart(make_view, store, settings):
    base = add_run(store, "base", best=0.5)
    add_run(store, "other", best=0.7)
    view, _ = make_view()
    view.table.setColumnWidth(COLUMN_INDEX["name"], 321)
    view.table.sortByColumn(COLUMN_INDEX["best_val"], Qt.SortOrder.AscendingOrder)
    view.set_baseline(base)
    view.save_state(settings)

    again, _ = make_view()
    assert again.baseline_id is None
    again.restore_state(settings)
    assert again.table.columnWidth(COLUMN_INDEX["name"]) == 321
    header = again.table.horizontalHeader()
    assert header.sortIndicatorSection() == COLUMN_INDEX["best_val"]
    assert header.sortIndicatorOrder() == Qt.SortOrder.AscendingOrder
    assert column_values(again, "name")[0] == "base  \u2605 baseline"
    assert again.baseline_id == base


def test_restoring_from_empty_settings_keeps_defaults(make_view, store, settings):
    add_run(store, "x")
    view, _ = make_view()
    width = view.table.columnWidth(COLUMN_INDEX["name"])
    view.restore_state(settings)
    assert view.table.columnWidth(COLUMN_INDEX["name"]) == width
    assert view.baseline_id is None


# --- evaluation ----------------------------------------------------------------------------------
def make_trained_run(store: RunStore, name: str = "tiny") -> str:
    """A real run: three meta-steps of a small ProtoNet on the built-in glyphs, on one CPU thread."""
    from workbench.core.training.trainer import Trainer

    config = ExperimentConfig.from_dict({
        "name": name, "algorithm": {"name": "protonet", "hparams": {"hidden": 8}},
        "dataset": {"name": "glyphs", "ways": 5, "shots": 1, "queries": 3},
        "training": {"steps": 3, "val_interval": 0, "val_episodes": 5, "checkpoint_interval": 3, "device": "cpu",
                     "threads": 1},
        "evaluation": {"episodes": 30}})
    trainer = Trainer(config, store)
    final = trainer.run_all()
    assert final.event == "finished", final.message
    return trainer.run.id


def test_evaluate_fills_test_accuracy_with_ci(make_view, store, qtbot):
    run_id = make_trained_run(store)
    view, recorder = make_view()
    view.eval_device = "cpu"
    show_focused(view, qtbot)
    select(view, run_id)
    assert view.evaluate_action.isEnabled()
    progress = []
    view.service.progress.connect(lambda job, done, total, message: progress.append((done, total)))

    with qtbot.waitSignal(view.evaluation_finished, timeout=120_000) as blocker:
        qtbot.keyClick(view.table, Qt.Key.Key_E, Qt.KeyboardModifier.ControlModifier)
        assert view.is_evaluating and view.progress_strip.isVisible()
        assert not view.evaluate_action.isEnabled()
    done_id, result = blocker.args
    assert done_id == run_id and result.episodes == 30
    assert recorder.errors == []
    assert progress and progress[-1] == (30, 30)
    assert not view.is_evaluating and not view.progress_strip.isVisible()
    record = store.record(run_id)
    assert record.test_accuracy == pytest.approx(result.accuracy) and record.test_ci95 > 0
    text = cell(view, view.proxy_row_of(run_id), "test")
    assert text == f"{100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}"
    assert 0.2 <= result.accuracy <= 1.0  # even an untrained embedding beats 5-way chance on glyphs
    assert view.service.wait(5000)


def test_evaluate_can_be_cancelled_and_saves_nothing(make_view, store, qtbot, monkeypatch):
    run_id = add_run(store, "slow", checkpoints=("best",))
    started = threading.Event()

    def slow_evaluation(run, store, request, device, progress):
        started.set()
        for step in range(1_000_000):
            progress(step, 1_000_000, "episodes")  # raises Cancelled once the user cancels
            threading.Event().wait(0.001)
        return None

    monkeypatch.setattr(service_module, "_evaluate", slow_evaluation)
    view, recorder = make_view()
    select(view, run_id)
    view.evaluate_current()
    assert started.wait(10)
    with qtbot.waitSignal(view.service.cancelled, timeout=10_000):
        view.cancel_button.click()
    assert not view.is_evaluating and not view.progress_strip.isVisible()
    assert view.evaluate_action.isEnabled()
    assert store.record(run_id).test_accuracy is None and recorder.errors == []


def test_evaluate_failure_shows_a_readable_error(make_view, store, qtbot):
    run_id = add_run(store, "broken", checkpoints=("best",))  # the placeholder is not a real checkpoint
    view, recorder = make_view()
    view.eval_device = "cpu"
    select(view, run_id)
    with qtbot.waitSignal(view.service.failed, timeout=120_000):
        view.evaluate_current()
    assert len(recorder.errors) == 1
    title, message, details = recorder.errors[0]
    assert "broken" in message and "checkpoint" in message
    assert details and "Traceback" in details
    assert not view.is_evaluating


def test_evaluate_needs_a_checkpoint(make_view, store):
    run_id = add_run(store, "fresh", status="created")
    view, recorder = make_view()
    select(view, run_id)
    assert not view.evaluate_action.isEnabled()
    view.evaluate(run_id)
    assert len(recorder.errors) == 1 and "no checkpoint" in recorder.errors[0][1]


# --- BackgroundTask ------------------------------------------------------------------------------
@pytest.fixture
def task(qtbot):
    task = BackgroundTask()
    yield task
    assert task.shutdown(10_000)


def test_background_task_reports_progress_and_result(task, qtbot):
    progress = []
    task.progress.connect(lambda done, total, message: progress.append((done, total, message)))
    caller_threads = []

    def work(report, count):
        caller_threads.append(threading.get_ident())
        for i in range(count + 1):
            report(i, count, f"item {i}")
        return count * 2

    with qtbot.waitSignal(task.finished, timeout=10_000) as blocker:
        job_id = task.start(work, 3)
        assert task.is_running and task.current_job_id == job_id
    assert blocker.args == [6]
    assert progress[0] == (0, 3, "item 0") and progress[-1] == (3, 3, "item 3")
    assert caller_threads and caller_threads[0] != threading.get_ident()
    assert not task.is_running and task._jobs == {}  # the thread was joined and released


def test_background_task_cancel(task, qtbot):
    started = threading.Event()
    finished, failed = [], []
    task.finished.connect(finished.append)
    task.failed.connect(lambda m, d: failed.append(m))

    def work(report):
        started.set()
        while True:
            report(0, 0, "waiting")
            threading.Event().wait(0.001)

    task.start(work)
    assert started.wait(10)
    with qtbot.waitSignal(task.cancelled, timeout=10_000):
        task.cancel()
    assert finished == [] and failed == [] and not task.is_running


def test_background_task_failure_has_message_and_traceback(task, qtbot):
    def work(report):
        raise ValueError("the file is empty")

    with qtbot.waitSignal(task.failed, timeout=10_000) as blocker:
        task.start(work)
    message, details = blocker.args
    assert message == "ValueError: the file is empty"
    assert "Traceback" in details and "work" in details


def test_background_task_workbench_errors_read_as_is(task, qtbot):
    from workbench.core.errors import DatasetError

    def work(report):
        raise DatasetError("/data/omniglot: no images found")

    with qtbot.waitSignal(task.failed, timeout=10_000) as blocker:
        task.start(work)
    assert blocker.args[0] == "/data/omniglot: no images found"


def test_background_task_drops_the_result_of_a_superseded_job(task, qtbot):
    release_old = threading.Event()
    old_started = threading.Event()
    results, cancelled = [], []
    task.finished.connect(results.append)
    task.cancelled.connect(lambda: cancelled.append(True))

    def old(report):
        old_started.set()
        release_old.wait(10)
        return "old"  # never calls report, so it finishes despite being superseded

    task.start(old)
    assert old_started.wait(10)
    with qtbot.waitSignal(task.finished, timeout=10_000) as blocker:
        task.start(lambda report: "new")
    assert blocker.args == ["new"]
    release_old.set()
    assert task.wait(10_000)
    qtbot.waitUntil(lambda: task._jobs == {}, timeout=5000)  # the old thread's end was handled too
    assert results == ["new"] and cancelled == []


def test_background_task_cancelled_raises_inside_the_function(task, qtbot):
    seen = []

    def work(report):
        task_started.set()
        try:
            while True:
                report(1, 2, "")
                threading.Event().wait(0.001)
        except Cancelled as exc:
            seen.append(str(exc))
            raise

    task_started = threading.Event()
    task.start(work)
    assert task_started.wait(10)
    with qtbot.waitSignal(task.cancelled, timeout=10_000):
        task.cancel()
    assert seen and "cancel" in seen[0]


def test_dark_theme_keeps_the_baseline_and_statuses_readable(make_view, store):
    from workbench.gui.theme import DARK, LIGHT

    base = add_run(store, "base", status="failed")
    view, _ = make_view()
    view.set_baseline(base)
    row = view.proxy_row_of(base)
    light_status = cell(view, row, "status", Qt.ItemDataRole.ForegroundRole).color()
    view.apply_theme(DARK)
    background = cell(view, row, "name", Qt.ItemDataRole.BackgroundRole).color()
    text = cell(view, row, "algorithm", Qt.ItemDataRole.ForegroundRole).color()
    assert background.lightness() < 128 < text.lightness()
    assert cell(view, row, "status", Qt.ItemDataRole.ForegroundRole).color().lightness() > light_status.lightness()
    view.apply_theme(LIGHT)
    assert cell(view, row, "name", Qt.ItemDataRole.BackgroundRole).color().lightness() > 200


def test_background_task_coalesces_a_flood_of_progress_reports(task, qtbot):
    progress = []
    task.progress.connect(lambda done, total, message: progress.append(done))

    def work(report):
        for i in range(1, 20_001):
            report(i, 20_000, "")
        return "done"

    with qtbot.waitSignal(task.finished, timeout=20_000):
        task.start(work)
    assert progress[0] == 1 and progress[-1] == 20_000
    assert len(progress) < 2_000  # the GUI thread is not flooded with one event per call


def test_background_task_shutdown_joins_a_running_job_and_reports_nothing(qtbot):
    task = BackgroundTask()
    started = threading.Event()
    signals = []
    for signal in (task.finished, task.failed, task.cancelled):
        signal.connect(lambda *args: signals.append(args))

    def work(report):
        started.set()
        while True:
            report(0, 0, "")
            threading.Event().wait(0.001)

    task.start(work)
    assert started.wait(10)
    assert task.shutdown(10_000)
    assert not task.is_running and task._jobs == {}
    QApplication.processEvents()  # the thread has ended, so any signal it queued is delivered now: none may be
    assert signals == []


def test_background_task_connects_the_callbacks_given_to_its_constructor(qtbot):
    seen = {"progress": [], "finished": [], "failed": []}
    task = BackgroundTask(progress=lambda *args: seen["progress"].append(args), finished=seen["finished"].append,
                          failed=lambda message, _details: seen["failed"].append(message))
    try:
        with qtbot.waitSignal(task.finished, timeout=10_000):
            task.start(lambda report: report(1, 1, "done") or "result")
        with qtbot.waitSignal(task.failed, timeout=10_000):
            task.start(lambda report: 1 / 0)
    finally:
        assert task.shutdown(10_000)
    assert seen == {"progress": [(1, 1, "done")], "finished": ["result"], "failed": ["ZeroDivisionError: division by zero"]}

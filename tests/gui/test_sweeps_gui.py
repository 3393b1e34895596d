"""The GUI of sweeps (issue 17): the Sweep dialog built from the declarations, and the Studies tab running real
studies (tiny glyph ProtoNet trials, each in a spawned process) with live updates, Cancel, and reading a finished
study back from the storage."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtWidgets import QDialog  # noqa: E402

from workbench.core.config import ExperimentConfig, with_recommended_recipe  # noqa: E402
from workbench.core.hparams import specs  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.sweeps import (SweepParameter, SweepSettings, SweepSpec, default_storage, read_study,  # noqa: E402
                                   sweepable_fields)
from workbench.gui.studies_view import StudiesView  # noqa: E402
from workbench.gui.sweep_dialog import SweepDialog  # noqa: E402

SCREENSHOT_DIR = os.environ.get("WORKBENCH_SCREENSHOTS")  # set to keep the rendered PNGs for a look
STUDY_TIMEOUT_MS = 240_000  # trials spawn processes that import torch and build glyphs on two shared cores

BASE = {"dataset": {"name": "glyphs", "image_size": 16, "ways": 5, "shots": 1, "queries": 5},
        "algorithm": {"name": "protonet", "hparams": {"hidden": 8}, "recipe": "none"},
        "training": {"steps": 30, "val_interval": 10, "val_episodes": 30, "checkpoint_interval": 10,
                     "device": "cpu", "threads": 1, "seed": 0, "lr": 1e-3},
        "evaluation": {"episodes": 5, "seed": 7}}


@pytest.fixture(scope="module")
def glyph_cache(tmp_path_factory) -> Path:
    """One glyph cache for this module's trials, drawn once here: each trial's process would otherwise draw the
    glyphs again (seconds) in the fresh cache every test gets."""
    from workbench.core.config import DatasetConfig
    from workbench.core.data import load_dataset

    folder = tmp_path_factory.mktemp("glyph-cache")
    before = os.environ.get("WORKBENCH_CACHE_DIR")
    os.environ["WORKBENCH_CACHE_DIR"] = str(folder)
    try:
        load_dataset(DatasetConfig(**{**BASE["dataset"], "shots": 1}))
    finally:
        if before is None:
            os.environ.pop("WORKBENCH_CACHE_DIR", None)
        else:
            os.environ["WORKBENCH_CACHE_DIR"] = before
    return folder


@pytest.fixture
def shared_glyphs(glyph_cache, monkeypatch) -> None:
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(glyph_cache))  # the trials' processes inherit it


def config_of(data: dict) -> ExperimentConfig:
    return ExperimentConfig.from_dict(with_recommended_recipe(data))


def save_screenshot(widget, name: str) -> None:
    image = widget.grab()
    assert not image.isNull() and image.width() > 300 and image.height() > 200
    if SCREENSHOT_DIR:
        Path(SCREENSHOT_DIR).mkdir(parents=True, exist_ok=True)
        image.save(str(Path(SCREENSHOT_DIR) / name))


@pytest.fixture
def make_view(qtbot):
    views = []

    def make(home) -> StudiesView:
        view = StudiesView(home)
        qtbot.addWidget(view)
        view.resize(1100, 760)
        view.show()
        views.append(view)
        return view

    yield make
    for view in views:
        assert view.shutdown(), "a study's thread did not end"


def grid_dialog(qtbot, parent=None, **settings) -> SweepDialog:
    dialog = SweepDialog(config_of(BASE), parent)
    qtbot.addWidget(dialog)
    dialog.settings_form.set_values({"name": "gui-grid", "sampler": "grid", "trials": 4, "workers": 2,
                                     "prune_after_trials": 1, **settings})
    return dialog


# --- the dialog ------------------------------------------------------------------------------------
def test_the_dialog_lists_the_declared_fields_of_each_algorithm(qtbot):
    rows = {}
    for algorithm in ("protonet", "maml"):
        config = config_of({**BASE, "algorithm": {"name": algorithm, "recipe": "none"}})
        dialog = SweepDialog(config)
        qtbot.addWidget(dialog)
        declared = sweepable_fields(config)
        assert list(dialog.rows) == [field.path for field in declared]
        rows[algorithm] = set(dialog.rows)
        for field in declared:  # grouped by section, help in the tooltip, nothing ticked at first
            row = dialog.row(field.path)
            assert row.field.section == field.section and field.spec.help in row.tick.toolTip()
            assert not row.ticked
        assert dialog.settings_form.names() == [spec.name for spec in specs(SweepSettings)]
        assert not dialog.is_valid() and "tick at least one parameter" in dialog.error_text
    assert {"dataset.ways", "dataset.shots"} <= rows["protonet"] & rows["maml"]
    assert "algorithm.hparams.train_inner_lr" in rows["maml"] - rows["protonet"]
    assert "algorithm.hparams.distance" in rows["protonet"] - rows["maml"]


def test_an_invalid_parameter_shows_its_error_and_blocks_running(qtbot):
    dialog = grid_dialog(qtbot, sampler="tpe")
    dialog.open()
    lr = dialog.row("training.lr")
    lr.set_range(1e-2, 1e-4, log=True)
    qtbot.waitUntil(lambda: "low < high" in dialog.error_text)
    assert "sweep.parameters.training.lr" in dialog.error_label.text()
    assert not dialog.run_button.isEnabled() and not dialog.export_button.isEnabled()
    assert lr.tick.styleSheet()  # the row the message names is marked
    dialog.accept()
    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted

    lr.low_edit.setText("1e-4")
    lr.high_edit.setText("1e-2")
    qtbot.waitUntil(dialog.is_valid)
    assert dialog.run_button.isEnabled() and not lr.tick.styleSheet()
    assert "4 trials from the tpe sampler" in dialog.plan_label.text()
    dialog.settings_form.set_value("sampler", "grid")  # a grid needs listed values
    qtbot.waitUntil(lambda: "a grid needs a list of values" in dialog.error_text)
    lr.set_values([1e-3, 3e-3])
    dialog.row("dataset.ways").set_values([])
    dialog.row("dataset.ways").values_edit.setText("5, five")
    qtbot.waitUntil(lambda: "dataset.ways: 'five' is not a number" in dialog.error_text)
    dialog.row("dataset.ways").values_edit.setText("5, 500")
    qtbot.waitUntil(lambda: "dataset.ways" in dialog.error_text and "out of range" in dialog.error_text)
    dialog.row("dataset.ways").tick.setChecked(False)
    qtbot.waitUntil(dialog.is_valid)
    dialog.settings_form.set_value("name", " ")
    qtbot.waitUntil(lambda: dialog.error_text.startswith("sweep.name"))
    assert dialog.settings_form.label("name").styleSheet()
    save_screenshot(dialog, "sweep-dialog-error.png")


def test_export_writes_the_study_file_the_cli_reads(qtbot, tmp_path):
    dialog = grid_dialog(qtbot)
    dialog.row("dataset.shots").set_values([5, 50, 4, 1])
    dialog.row("algorithm.hparams.distance").set_values(["euclidean", "cosine"])
    qtbot.waitUntil(dialog.is_valid)
    assert "4 trials from a grid of 8 combinations, 2 at a time" in dialog.plan_label.text()
    path = dialog.export(tmp_path / "study.toml")
    loaded = SweepSpec.load(path).checked()
    assert loaded.settings.to_dict() == dialog.spec().settings.to_dict()
    assert loaded.settings.parameters[0].values == [5, 50, 4, 1] and loaded.base == dialog.base
    assert config_of(loaded.base).algorithm.hparams["hidden"] == 8  # the experiment as the panels hold it
    save_screenshot(dialog, "sweep-dialog.png")


# --- the plots' axes ------------------------------------------------------------------------------
def test_axes_scale_numbers_log_spans_and_categories():
    from workbench.gui.study_plots import log_ticks, make_axis

    shots = make_axis("shots", [5, 1, 4])  # few integers: a tick at each
    assert shots.positions == [1.0, 0.0, 0.75] and [text for _, text in shots.ticks] == ["1", "4", "5"]
    lr = make_axis("lr", [1e-4, 1e-3, 1e-2])  # spans two decades: log, ends and middle labelled
    assert lr.log and lr.positions == pytest.approx([0, 0.5, 1]) and [t for _, t in lr.ticks] == ["0.0001",
                                                                                                  "0.001", "0.01"]
    assert not make_axis("x", [1e-3, 1e-2], log=False).log  # a linear range stays linear
    kinds = make_axis("d", ["b", "a", "b"], order=["a", "b", "c"])  # the listed order, unused ones dropped
    assert kinds.categories == ["a", "b"] and kinds.positions == [1.0, 0.0, 1.0]
    assert make_axis("flag", [True, False]).ticks == [(0.0, "true"), (1.0, "false")]
    assert make_axis("one", [3.0]).positions == [0.5]
    assert [text for _, text in log_ticks(3e-4, 3e-3)] == ["0.0005", "0.001", "0.002"]


# --- running studies -------------------------------------------------------------------------------
def test_a_grid_study_from_the_dialog_shows_complete_pruned_and_failed_trials(qtbot, make_view, workbench_home,
                                                                              shared_glyphs):
    """The issue's acceptance: a 4-trial grid on glyphs with 2 workers; trial 1 (50 shots) fails when its run is
    built, trial 3 (1 shot) starts after two trials ended and is pruned at its first validation, below the finished
    one (trial 2, 4-shot, may be pruned too: it is compared with trial 0 if that finished first)."""
    view = make_view(workbench_home)
    seen = []  # the trials' states at each live update of the table
    view.model.modelReset.connect(lambda: seen.append(tuple(t.state for t in view.live.trials)) if view.live else 0)
    dialog = view.sweep_dialog(config_of(BASE))
    qtbot.addWidget(dialog)
    dialog.settings_form.set_values({"name": "gui-grid", "sampler": "grid", "trials": 4, "workers": 2,
                                     "prune_after_trials": 1})
    dialog.row("dataset.shots").set_values([5, 50, 4, 1])
    dialog.accept()
    assert view.is_running
    qtbot.waitUntil(lambda: not view.is_running, timeout=STUDY_TIMEOUT_MS)
    assert view.last_error is None
    assert len(seen) >= 3 and any("running" in states for states in seen)  # live, while the trials ran

    states = {t.number: t.state for t in view.snapshot.trials}
    assert (states[0], states[1], states[3]) == ("complete", "failed", "pruned"), view.row_texts()
    assert states[2] in ("complete", "pruned")
    rows = {row[0]: row for row in view.row_texts()}
    assert "images per class" in rows["1"][-1]  # the failed trial shows the dataset's own message
    assert rows["3"][1] == "pruned" and rows["3"][-1].startswith("pruned at step 10")
    assert rows["3"][2] == "1" and rows["1"][2] == "50"  # the parameter column
    assert [axis.name for axis in view.parallel_plot.axes] == ["shots", "Accuracy"]
    complete = [t for t in view.snapshot.trials if t.state == "complete"]
    assert len(view.parallel_plot.axes[0].positions) == len(complete)  # one line per complete trial
    assert view.slice_plot.parameter_combo.currentData() == "dataset.shots"
    assert not view.resume_button.isEnabled() and not view.cancel_button.isEnabled()
    save_screenshot(view, "studies-view.png")

    # Double-clicking a trial asks for its run, which is an ordinary run of the store.
    asked = []
    view.select_run.connect(asked.append)
    qtbot.waitUntil(lambda: not view.is_reading)  # the study as stored, read once it ended
    row = next(r for r in range(view.proxy.rowCount()) if view.proxy.index(r, 0).data() == "0")
    rect = view.table.visualRect(view.proxy.index(row, 1))
    qtbot.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert asked and asked[0] in {record.id for record in RunStore(workbench_home).list()}

    # Read back from the storage, without a runner: the same trials, finished.
    stored = make_view(workbench_home)
    stored.refresh()
    qtbot.waitUntil(lambda: stored.snapshot is not None, timeout=30_000)
    assert stored.snapshot.finished and {t.number: t.state for t in stored.snapshot.trials} == states
    assert stored.row_texts() == view.row_texts()
    assert not stored.resume_button.isEnabled()


def test_cancel_stops_a_long_study_and_keeps_the_finished_trials(qtbot, make_view, workbench_home, shared_glyphs):
    view = make_view(workbench_home)
    spec = SweepSpec(BASE, SweepSettings(name="gui-cancel", sampler="grid", trials=2, workers=2, pruner="none",
                                         parameters=[SweepParameter("training.steps", [20, 100_000])]))
    assert view.start_study(spec.checked())
    assert not view.start_study(spec.checked())  # one study at a time

    def one_done_one_running() -> bool:
        states = [t.state for t in view.live.trials] if view.live else []
        return states == ["complete", "running"]

    qtbot.waitUntil(one_done_one_running, timeout=STUDY_TIMEOUT_MS)
    assert view.cancel_button.isEnabled()
    qtbot.mouseClick(view.cancel_button, Qt.MouseButton.LeftButton)
    assert not view.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not view.is_running, timeout=STUDY_TIMEOUT_MS)

    last = read_study(default_storage(workbench_home), "gui-cancel")
    assert last.cancelled and not last.finished and "resume" in last.message
    assert [t.state for t in last.trials] == ["complete", "failed"] and last.trials[1].error.startswith("cancelled")
    runs = {record.name: record.status for record in RunStore(workbench_home).list()}
    assert runs == {"gui-cancel-trial-0": "finished", "gui-cancel-trial-1": "stopped"}
    assert view.snapshot.cancelled and view.resume_button.isEnabled()  # the study has a trial left
    qtbot.waitUntil(lambda: not view.is_reading)  # then the study as stored
    assert view.snapshot.cancelled and "1 of 2 trials left" in view.message.text() and view.resume_button.isEnabled()


def test_a_study_that_cannot_start_says_why(qtbot, make_view, workbench_home):
    from workbench.core.sweeps import StudyRunner

    first = SweepSpec(BASE, SweepSettings(name="taken", sampler="grid", parameters=[
        SweepParameter("training.lr", [1e-3])]))
    StudyRunner(first, workbench_home)  # stored, never run
    view = make_view(workbench_home)
    errors = []
    view.error.connect(lambda *args: errors.append(args))
    other = SweepSpec({**BASE, "name": "another"}, first.settings)
    assert view.start_study(other.checked())
    qtbot.waitUntil(lambda: not view.is_running, timeout=60_000)
    assert errors and "exists with another experiment" in errors[0][1]
    assert view.last_error == ("The study could not run", errors[0][1])


def test_the_window_opens_the_dialog_and_closing_it_cancels_the_study(qtbot, make_window, workbench_home,
                                                                       shared_glyphs):
    window = make_window(store=RunStore(workbench_home), auto_load=False)
    qtbot.waitUntil(lambda: window.is_ready)
    assert window.sweep_action.shortcut().toString() == "Ctrl+Shift+S"
    assert window.view("Studies") is window.studies_view
    window.apply_config(config_of({**BASE, "training": {**BASE["training"], "steps": 100_000}}))
    window.sweep_action.trigger()
    dialog = window._last_dialog
    assert isinstance(dialog, SweepDialog) and dialog.isVisible()
    assert set(dialog.rows) == {field.path for field in sweepable_fields(window.current_config())}
    dialog.row("training.lr").set_values([1e-3])
    dialog.settings_form.set_values({"name": "gui-close", "sampler": "grid", "workers": 1})
    qtbot.waitUntil(dialog.is_valid)
    dialog.accept()
    view = window.studies_view
    assert view.is_running and window.tabs.tabText(window.tabs.currentIndex()) == "Studies"
    qtbot.waitUntil(lambda: bool(view.last_error) or view.live is not None and any(t.state == "running"
                                                                             for t in view.live.trials),
                    timeout=STUDY_TIMEOUT_MS)
    assert view.last_error is None, (view.last_error, view.live)
    window.close()  # cancels the study and joins its thread (the fixture checks every thread ended)
    assert not view.is_running or all(job.isFinished() for job in view._jobs)
    last = read_study(default_storage(workbench_home), "gui-close")
    assert [t.state for t in last.trials] == ["failed"] and last.trials[0].error.startswith("cancelled")

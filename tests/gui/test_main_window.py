"""The main window end to end (offscreen): train, stop, pause, close while training, validation of the
episode setting, image-folder problems, config parity with the CLI, settings that survive a restart, the
experiment kind (its datasets, algorithms, fields and config) and tabs that follow the kind, the algorithm and the
run opened."""

from __future__ import annotations

import numpy as np

from workbench.core.config import ExperimentConfig
from workbench.core.runs import RunStore


def finished_signal(qtbot, window, timeout):
    return qtbot.waitSignal(window.training_finished, timeout=timeout)


def test_glyphs_and_protonet_are_preselected_so_run_works_at_once(qtbot, make_window, gui):
    window = make_window()
    assert window.dataset_panel.dataset_name() == "glyphs"
    assert window.algorithm_panel.algorithm_name() == "protonet"
    gui.wait_until_ready(qtbot, window)
    assert window.run_action.isEnabled(), window.run_blocked_reason
    # Split summary and an episode preview with support and query rows are shown.
    assert "meta-train" in window.dataset_panel.status_label.text()
    grid = window.dataset_panel.grid
    assert len(grid.rows) == 5 and all(len(support) == 1 for _, support, _ in grid.rows)
    before = [name for name, _, _ in grid.rows]
    for _ in range(5):  # a resample draws other classes (5 tries: a repeat of all five is negligible)
        window.dataset_panel.resample_button.click()
        if [name for name, _, _ in grid.rows] != before:
            break
    assert [name for name, _, _ in grid.rows] != before


def test_train_30_steps_fills_curves_and_saves_the_run(qtbot, make_window, gui, workbench_home):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    panel = window.dataset_panel
    panel.episode_form.set_values({"ways": 5, "shots": 1, "queries": 5})
    window.algorithm_panel.algorithm_combo.set_name("protonet")
    gui.tiny_training(window, steps=30, val_interval=15, val_episodes=4)
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)
    records = []
    window.training_records.connect(lambda job_id, payload: records.append(payload))
    config = window.current_config()

    with finished_signal(qtbot, window, gui.TRAIN_TIMEOUT_MS) as blocker:
        window.run_action.trigger()
        assert not window.run_action.isEnabled() and window.stop_action.isEnabled()
    job_id, final = blocker.args
    assert final["event"] == "finished"

    view = window.training_view
    assert np.array_equal(view.loss.x.data, np.arange(1, 31, dtype=np.float64))
    assert np.isfinite(view.loss.y.data).all() and np.isfinite(view.score.y.data).all()
    assert list(view.val_steps.data) == [15.0, 30.0]
    assert np.all((view.val_score.data >= 0) & (view.val_score.data <= 1))
    # Throttled: fewer emissions than steps, yet every step arrived.
    assert 0 < len(records) and sum(len(p["steps"]) for p in records) == 30
    assert window.run_action.isEnabled()

    store = RunStore(workbench_home)
    record = store.get(final["run_id"]).record()
    assert record.status == "finished" and record.steps_done == 30
    saved = store.get(final["run_id"]).config
    assert saved.to_dict() == config.to_dict()
    assert ExperimentConfig.from_toml(saved.to_toml()).to_dict() == config.to_dict()


def test_stop_midway_saves_the_run_as_stopped(qtbot, make_window, gui, workbench_home):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=100_000, val_interval=0)
    window.start_training()
    qtbot.waitUntil(lambda: len(window.training_view.loss) >= 3, timeout=gui.TRAIN_TIMEOUT_MS)
    with finished_signal(qtbot, window, gui.TRAIN_TIMEOUT_MS) as blocker:
        window.stop_action.trigger()
    final = blocker.args[1]
    assert final["event"] == "stopped"
    record = RunStore(workbench_home).get(final["run_id"]).record()
    assert record.status == "stopped" and 3 <= record.steps_done < 100_000
    assert len(window.training_view.loss) == record.steps_done
    assert window.run_action.isEnabled() and not window.stop_action.isEnabled()


def test_pause_blocks_training_and_resume_continues(qtbot, make_window, gui, workbench_home):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=40, val_interval=0)
    window.start_training()
    qtbot.waitUntil(lambda: len(window.training_view.loss) >= 2, timeout=gui.TRAIN_TIMEOUT_MS)
    window.pause_action.trigger()
    assert window.pause_action.text().replace("&", "") == "Resume"
    store = RunStore(workbench_home)
    run_id = window.controller.last_run_id
    # The trainer marks the run paused once it is blocked between two meta-steps.
    qtbot.waitUntil(lambda: store.get(run_id).record().status == "paused", timeout=gui.TRAIN_TIMEOUT_MS)
    paused_at = store.get(run_id).record().steps_done
    assert paused_at < 40
    qtbot.waitUntil(lambda: len(window.training_view.loss) == paused_at, timeout=5_000)
    with finished_signal(qtbot, window, gui.TRAIN_TIMEOUT_MS) as blocker:
        window.pause_action.trigger()  # resume
    assert blocker.args[1]["event"] == "finished"
    assert len(window.training_view.loss) == 40
    assert store.get(run_id).record().status == "finished"


def test_a_stopped_run_resumes_from_the_runs_tab_and_continues_its_curves(qtbot, make_window, gui,
                                                                         workbench_home):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=40, val_interval=0)
    window.algorithm_panel.training_form.set_value("checkpoint_interval", 2)
    window.start_training()
    qtbot.waitUntil(lambda: len(window.training_view.loss) >= 4, timeout=gui.TRAIN_TIMEOUT_MS)
    with finished_signal(qtbot, window, gui.TRAIN_TIMEOUT_MS) as blocker:
        window.stop_training()
    run_id = blocker.args[1]["run_id"]
    stopped_at = RunStore(workbench_home).get(run_id).record().steps_done
    assert stopped_at < 40
    with finished_signal(qtbot, window, gui.TRAIN_TIMEOUT_MS) as blocker:
        window.runs_view.resume_run.emit(run_id)  # what the Runs tab's Resume action sends
    assert blocker.args[1]["event"] == "finished" and blocker.args[1]["run_id"] == run_id
    assert RunStore(workbench_home).get(run_id).record().status == "finished"
    # The earlier steps are drawn too: the curve runs from step 1 to 40 without a gap or a repeat.
    assert np.array_equal(window.training_view.loss.x.data, np.arange(1, 41))


def test_closing_while_training_asks_then_stops_and_saves(qtbot, make_window, gui, workbench_home):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=100_000, val_interval=0)
    window.start_training()
    qtbot.waitUntil(lambda: len(window.training_view.loss) >= 2, timeout=gui.TRAIN_TIMEOUT_MS)
    run_id = window.controller.last_run_id

    questions = []
    window.confirm_stop_on_close = lambda: questions.append("asked") or False
    window.close()  # answered "no": keeps training
    assert questions and window.isVisible() and window.controller.is_running

    window.confirm_stop_on_close = lambda: True
    window.close()
    assert not window.isVisible()
    assert not window.controller.has_threads and not window.controller.is_running
    record = RunStore(workbench_home).get(run_id).record()
    assert record.status == "stopped" and record.steps_done >= 2


def test_impossible_episode_setting_disables_run_with_a_message(qtbot, make_window, gui):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    panel = window.dataset_panel
    panel.episode_form.set_value("shots", 25)  # glyph classes have 20 images
    qtbot.waitUntil(lambda: not window.run_action.isEnabled(), timeout=5_000)
    assert panel.episode_problem.isVisible()
    assert "k-shot + q-query" in panel.episode_problem.text() and "Lower" in panel.episode_problem.text()
    assert window.start_training() is None
    panel.episode_form.set_value("shots", 1)
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)
    assert not panel.episode_problem.isVisible()

    # Training overrides are checked too, against meta-train.
    window.algorithm_panel.training_form.set_value("train_shots", 25)
    qtbot.waitUntil(lambda: not window.run_action.isEnabled(), timeout=5_000)
    assert panel.episode_problem_text.startswith("Training episodes") and "meta-train" in panel.episode_problem_text


def test_a_corrupt_image_in_a_folder_dataset_is_reported_not_fatal(qtbot, make_window, gui, tmp_path):
    root = tmp_path / "my-images"
    for c in range(15):
        for i in range(4):
            gui.write_png(root / f"class{c:02d}" / f"{i}.png", value=(17 * c + 3 * i) % 256)
    (root / "class00" / "broken.png").write_bytes(b"this is not a png")
    (root / "class00" / "empty.png").write_bytes(b"")
    (root / "empty-class").mkdir()
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    panel = window.dataset_panel
    panel.episode_form.set_values({"ways": 3, "shots": 1, "queries": 2})
    panel.name_combo.setCurrentIndex(panel.name_combo.findData("folder"))
    panel.options.set_value("image_size", 16)
    panel.root_edit.setText(str(root))
    qtbot.waitUntil(lambda: panel.is_ready() and not panel.is_loading, timeout=gui.LOAD_TIMEOUT_MS)
    assert panel.dataset.skipped_files and "broken.png" in panel.dataset.skipped_files[0][0]
    assert panel.skipped_label.isVisible() and "2 file(s) could not be read" in panel.skipped_label.text()
    listed = panel.skipped_list.toPlainText().splitlines()  # every file with its reason, not only a tooltip
    assert panel.skipped_list.isVisible() and len(listed) == 2
    assert any("broken.png: " in line for line in listed) and any("empty.png: the file is empty" in line
                                                                     for line in listed)
    assert panel.data_warnings_label.isVisible() and "'empty-class'" in panel.data_warnings_label.text()
    panel.grab().save("/tmp/dataset_panel_skipped.png")
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)


def test_several_datasets_load_as_one_with_their_sources_field(qtbot, make_window, gui, tmp_path):
    """The mixture's own field shows for it alone; its members load as one dataset whose domains are datasets."""
    from fixtures_data import make_split_folders

    make_split_folders(tmp_path / "photos", {"train": {f"t{i}": 4 for i in range(4)},
                                            "val": {f"v{i}": 4 for i in range(3)},
                                            "test": {f"s{i}": 4 for i in range(3)}})
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    panel = window.dataset_panel
    row = panel.options._editors["sources"]
    assert not panel.options._layout.isRowVisible(row)  # glyphs: not its field
    panel.episode_form.set_values({"ways": 3, "shots": 1, "queries": 2})
    panel.name_combo.setCurrentIndex(panel.name_combo.findData("mixture"))
    assert panel.options._layout.isRowVisible(row) and not panel.source_form.isRowVisible(panel.root_widget)
    panel.options.set_value("sources", f"glyphs; folder={tmp_path / 'photos'}")
    panel.options.set_value("episode_domains", "within")
    qtbot.waitUntil(lambda: panel.is_ready() and not panel.is_loading, timeout=gui.LOAD_TIMEOUT_MS)
    assert set(panel.dataset.split("test").class_groups) == {"glyphs", "folder"}
    assert panel.dataset.spec.channels == 3 and "meta-train" in panel.status_label.text()
    panel.grab().save("/tmp/dataset_panel_mixture.png")
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)
    assert window.current_config().dataset.sources.startswith("glyphs; folder=")


def test_a_missing_folder_is_explained_and_run_stays_disabled(qtbot, make_window, gui, tmp_path):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    panel = window.dataset_panel
    panel.name_combo.setCurrentIndex(panel.name_combo.findData("folder"))
    qtbot.waitUntil(lambda: not window.run_action.isEnabled(), timeout=5_000)
    assert "dataset.root" in window.run_blocked_reason
    panel.root_edit.setText(str(tmp_path / "does-not-exist"))
    qtbot.waitUntil(lambda: panel.load_error is not None, timeout=gui.LOAD_TIMEOUT_MS)
    assert "does-not-exist" in panel.load_error
    assert not window.run_action.isEnabled()


def test_gui_and_cli_build_the_same_config_and_toml_round_trips(qtbot, make_window, gui, tmp_path):
    from workbench.cli import build_parser, config_from_args

    window = make_window(auto_load=False)
    window.dataset_panel.episode_form.set_values({"ways": 5, "shots": 1, "queries": 10})
    window.dataset_panel.options.set_value("rotations", True)
    panel = window.algorithm_panel
    panel.algorithm_combo.set_name("protonet")
    panel.hparam_form.set_values({"hidden": 32, "distance": "cosine", "temperature": 0.1})
    panel.training_form.set_values({"steps": 500, "lr": 0.002, "val_interval": 100, "seed": 3, "train_ways": 20,
                                    "lr_schedule": "constant"})
    panel.device_combo.setCurrentIndex(panel.device_combo.findData("cpu"))
    panel.evaluation_form.set_values({"episodes": 200, "seed": 9})
    panel.name_edit.setText("parity")
    gui_config = window.current_config()

    argv = ["train", "--dataset", "glyphs", "--ways", "5", "--shots", "1", "--queries", "10", "--rotations",
            "--algorithm", "protonet", "--hparam", "hidden=32", "--hparam", "distance=cosine",
            "--hparam", "temperature=0.1", "--steps", "500", "--lr", "0.002", "--val-interval", "100",
            "--seed", "3", "--train-ways", "20", "--lr-schedule", "constant", "--device", "cpu",
            "--eval-episodes", "200", "--eval-seed", "9", "--name", "parity"]
    cli_config = config_from_args(build_parser().parse_args(argv))
    assert gui_config.to_dict() == cli_config.to_dict()

    # File > Export writes the TOML that `workbench train --config` reads to the same config ...
    path = window.export_experiment(tmp_path / "experiment.toml")
    from_file = config_from_args(build_parser().parse_args(["train", "--config", str(path)]))
    assert from_file.to_dict() == gui_config.to_dict()
    # ... and File > Import fills a fresh window's panels with it.
    other = make_window(auto_load=False)
    other.import_experiment(path)
    assert other.current_config().to_dict() == gui_config.to_dict()


def test_settings_survive_a_restart(qtbot, make_window, gui):
    window = make_window(restore=True, auto_load=False)
    window.set_theme("dark")
    window.dataset_panel.episode_form.set_values({"ways": 10, "shots": 5})
    window.algorithm_panel.training_form.set_value("steps", 1234)
    window.algorithm_dock.hide()  # the dock layout is part of the saved state
    window.resize(1200, 560)
    window.close()

    again = make_window(restore=True, auto_load=False)
    assert again.theme_preference == "dark" and again.theme.is_dark
    config = again.current_config()
    assert (config.dataset.ways, config.dataset.shots, config.training.steps) == (10, 5, 1234)
    assert again.algorithm_dock.isHidden() and not again.dataset_dock.isHidden()
    # The offscreen screen clamps the width; the height shows the geometry came back (the default is 860).
    assert again.height() == 560
    again.set_theme("light")


def test_help_dialogs_open_without_blocking(qtbot, make_window):
    window = make_window(auto_load=False)
    window.shortcuts_action.trigger()
    names = [name for name, _ in window._last_dialog.rows]
    assert {"Run", "Pause", "Stop", "Quit", "Plugins", "Choose the experiment kind"} <= set(names)
    window._last_dialog.close()
    window.about_action.trigger()
    assert "PyTorch" in window._last_dialog.text()
    window._last_dialog.close()
    window.plugins_action.trigger()  # Help > Plugins…
    assert window._last_dialog.isVisible() and "Plugins" in window._last_dialog.windowTitle()
    window._last_dialog.close()


def test_extra_views_plug_in_and_receive_records(qtbot, make_window):
    from PySide6.QtWidgets import QLabel

    window = make_window(auto_load=False)

    class ProbeView(QLabel):
        def __init__(self):
            super().__init__("probe")
            self.themes = []

        def apply_theme(self, theme):
            self.themes.append(theme.name)

    probe = ProbeView()
    index = window.add_view("Probe", probe)
    assert window.tabs.widget(index) is probe and window.view("Probe") is probe
    assert probe.themes  # themed on arrival
    window.set_theme("dark")
    assert probe.themes[-1] == "dark"
    window.set_theme("light")


def test_a_divergence_warning_is_shown_and_training_goes_on(qtbot, make_window, fake_trainer_factory):
    factory = fake_trainer_factory(total=10, warn_at=4)
    window = make_window(auto_load=False, trainer_factory=factory)
    with qtbot.waitSignal(window.training_finished, timeout=30_000) as blocker:
        window.start_training(ExperimentConfig())
    assert blocker.args[1]["event"] == "finished"
    title, message, _ = window.last_error
    assert title == "Training may be diverging" and "at step 4" in message


def test_a_diverged_run_is_reported_and_the_app_stays_usable(qtbot, make_window, fake_trainer_factory):
    factory = fake_trainer_factory(total=10, final_event="diverged",
                                   message="training diverged at step 10: the loss became nan")
    window = make_window(auto_load=False, trainer_factory=factory)
    with qtbot.waitSignal(window.training_finished, timeout=30_000) as blocker:
        window.start_training(ExperimentConfig())
    assert blocker.args[1]["event"] == "diverged"
    title, message, _ = window.last_error
    assert title == "Training diverged" and "diverged at step 10" in message
    assert "diverged" in window.statusBar().currentMessage()
    assert window.controller.state == "idle" and not window.stop_action.isEnabled()
    assert len(window.training_view.loss) == 10


def test_out_of_memory_is_reported_with_details_and_the_app_stays_usable(qtbot, make_window, fake_trainer_factory):
    factory = fake_trainer_factory(total=50, fail_at=5, error=RuntimeError("CUDA out of memory. Tried to allocate"))
    window = make_window(auto_load=False, trainer_factory=factory)
    with qtbot.waitSignal(window.training_finished, timeout=30_000) as blocker:
        window.start_training(ExperimentConfig())
    assert blocker.args[1]["event"] == "failed"
    title, message, details = window.last_error
    assert title == "Out of memory" and "meta-batch" in message
    assert "Traceback" in details and "CUDA out of memory" in details
    assert window.controller.state == "idle" and not window.controller.is_running


def test_the_kind_chooses_datasets_algorithms_fields_and_the_config(qtbot, make_window):
    from workbench.core import catalog
    from workbench.core.algorithms import get_algorithm
    from workbench.core.kinds import get_kind_class
    from workbench.core.recipes import recommended_recipe

    window = make_window(auto_load=False)
    dataset_panel, algorithm_panel = window.dataset_panel, window.algorithm_panel
    kinds = [window.kind_panel.combo.itemData(i) for i in range(window.kind_panel.combo.count())]
    assert kinds[0] == window.kind_name() == "classification" and "regression" in kinds
    changes = []
    window.kind_changed.connect(changes.append)
    for kind in kinds:
        window.set_kind(kind)
        declared = get_kind_class(kind)
        names = [dataset_panel.name_combo.itemData(i) for i in range(dataset_panel.name_combo.count())]
        assert names == [info["name"] for info in catalog.datasets_info(kind)]
        assert algorithm_panel.algorithm_combo.names() == catalog.algorithm_names_for(kind)
        # A newly chosen kind starts from its default dataset and algorithm.
        assert dataset_panel.dataset_name() == declared.default_dataset
        assert algorithm_panel.algorithm_name() == declared.default_algorithm
        # Only the dataset fields the kind declares are shown and sent.
        assert set(dataset_panel.values()) <= set(declared.dataset_fields)
        shown = {name for name in ("ways", "shots", "queries") if dataset_panel.episode_form.editor(name).isVisible()}
        assert shown == {"ways", "shots", "queries"} & set(declared.dataset_fields)
        # ... set up by the algorithm's recommended recipe for the kind and dataset (as the CLI does).
        recipe = recommended_recipe(get_algorithm(declared.default_algorithm), kind, declared.default_dataset)
        assert algorithm_panel.recipe_name() == (recipe.name if recipe else "")
        if recipe is not None:
            assert recipe.dataset.items() <= dataset_panel.values().items()
            assert recipe.training.items() <= algorithm_panel.training_values().items()
            assert recipe.hparams.items() <= algorithm_panel.hparams().items()
        config = window.current_config()
        assert (config.kind, config.dataset.name, config.algorithm.name) == (
            kind, declared.default_dataset, declared.default_algorithm)
    assert changes == kinds[1:]


def test_tabs_follow_the_kind_and_algorithm_and_say_what_feeds_them(qtbot, make_window):
    window = make_window(auto_load=False)
    assert window.algorithm_panel.algorithm_name() == "protonet"
    assert window.tab_enabled("Training") and window.tab_enabled("Embeddings")
    # Prototypical Networks feeds no sample weights: the tab is greyed (not removed) and says who feeds it.
    assert not window.tab_enabled("Sample weights") and window.view("Sample weights") is not None
    tip = window.tab_tooltip("Sample weights")
    assert "Prototypical Networks does not feed" in tip and "fed by Meta-Weight-Net" in tip
    assert "few-shot classification" in tip
    window.show_view("Sample weights")
    placeholder = window.tabs.currentWidget().placeholder
    assert window.tabs.currentWidget().currentWidget() is placeholder and "Meta-Weight-Net" in placeholder.text()

    window.algorithm_panel.algorithm_combo.set_name("meta-weight-net")
    qtbot.waitUntil(lambda: window.tab_enabled("Sample weights"), timeout=5_000)
    assert window.tab_tooltip("Sample weights") == ""
    assert window.tabs.currentWidget().currentWidget() is window.view("Sample weights")

    window.set_kind("regression")
    qtbot.waitUntil(lambda: not window.tab_enabled("Embeddings"), timeout=5_000)
    assert "Few-shot regression does not use this view" in window.tab_tooltip("Embeddings")
    assert window.tab_enabled("Training") and window.tab_enabled("Evaluation")
    if window.view("fit") is not None:
        assert window.tab_enabled("Fit")
    if window.view("try_points") is not None:  # the shared "Try a task" tab shows the page of the kind
        assert window.view("Try a task") is window.view("try_points")
    window.set_kind("classification")
    assert window.view("Try a task") is window.try_view


def test_opening_a_run_enables_the_tabs_of_its_kind_and_algorithm(qtbot, make_window, workbench_home):
    store = RunStore(workbench_home)
    config = ExperimentConfig.from_dict({"kind": "noisy-labels", "algorithm": {"name": "meta-weight-net"},
                                         "training": {"steps": 2}})
    run = store.create(config)
    run.append_metrics([{"step": 1, "total_steps": 2, "loss": 1.0, "accuracy": 0.5, "event": "step"}])
    window = make_window(auto_load=False, store=store)
    assert not window.tab_enabled("Sample weights")  # protonet in the setup
    window.open_run(run.id)
    assert window.tab_enabled("Sample weights")  # the opened run feeds it, whatever the setup says
    assert window.training_view.acc_plot.titleLabel.text == "Accuracy"
    window.algorithm_panel.algorithm_combo.set_name("nearest-neighbour")
    window.revalidate()
    assert window.tab_enabled("Sample weights")  # still the run's


def test_a_regression_experiment_round_trips_and_its_kind_survives_a_restart(qtbot, make_window, tmp_path):
    window = make_window(restore=True, auto_load=False)
    window.set_kind("regression")
    window.dataset_panel.episode_form.set_values({"shots": 10, "queries": 20})
    config = window.current_config()
    assert config.kind == "regression" and (config.dataset.shots, config.dataset.queries) == (10, 20)
    path = window.export_experiment(tmp_path / "regression.toml")
    window.close()

    again = make_window(restore=True, auto_load=False)
    assert again.kind_name() == "regression"
    assert again.current_config().to_dict() == config.to_dict()
    other = make_window(auto_load=False)
    other.import_experiment(path)
    assert other.kind_name() == "regression" and other.current_config().to_dict() == config.to_dict()


def test_a_kinds_options_form_fills_the_task_section(qtbot, make_window, monkeypatch):
    from dataclasses import dataclass

    from workbench.core.hparams import hparam
    from workbench.core.kinds import get_kind_class

    @dataclass
    class Options:
        amplitude_high: float = hparam(5.0, "Largest amplitude of a task's sine.", low=0.1, high=100.0)
        noise: bool = hparam(False, "Add noise to the targets.")

    monkeypatch.setattr(get_kind_class("regression"), "Options", Options)
    window = make_window(auto_load=False)
    assert not window.kind_panel.options_form.isVisible()  # classification has no options
    window.set_kind("regression")
    form = window.kind_panel.options_form
    assert form.isVisible() and form.names() == ["amplitude_high", "noise"]
    form.set_values({"amplitude_high": 2.5, "noise": True})
    config = window.current_config()
    assert config.task == {"amplitude_high": 2.5, "noise": True}
    assert 'amplitude_high = 2.5' in config.to_toml()
    other = make_window(auto_load=False)
    other.apply_config(config)
    assert other.kind_panel.options() == {"amplitude_high": 2.5, "noise": True}


def test_a_regression_run_trains_and_its_curves_say_mse(qtbot, make_window, gui, workbench_home):
    window = make_window()
    window.set_kind("regression")
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=6, val_interval=3, val_episodes=2)
    window.algorithm_panel.training_form.set_values({"meta_batch": 2})
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)
    with finished_signal(qtbot, window, gui.TRAIN_TIMEOUT_MS) as blocker:
        window.run_action.trigger()
    assert blocker.args[1]["event"] == "finished", blocker.args[1]
    view = window.training_view
    assert view.run_metric.key == "mse" and view.acc_plot.titleLabel.text == "MSE (lower is better)"
    assert list(view.val_steps.data) == [3.0, 6.0] and np.all(view.val_score.data >= 0)
    assert "best validation MSE" in view.summary_label.text()
    run = RunStore(workbench_home).get(blocker.args[1]["run_id"])
    assert run.config.kind == "regression" and run.read_metrics()[0]["metric"] == "mse"


def test_changing_a_field_marks_the_form_custom_from_its_recipe(qtbot, make_window):
    window = make_window(auto_load=False)
    window.set_kind("regression")  # MAML's recommended regression recipe sets hyperparameters and training
    panel = window.algorithm_panel
    recipe = panel.recipe()
    assert recipe is not None and recipe.training
    window.revalidate()
    assert not panel.recipe_is_custom() and "Custom" not in panel.recipe_help.text()
    field, value = next(iter(recipe.training.items()))
    panel.training_form.set_values({field: value * 2})
    window.revalidate()
    assert panel.recipe_is_custom()
    assert f"Custom (from recipe {recipe.name})" in panel.recipe_help.text() and f"training.{field}" in \
        panel.recipe_help.text()
    assert window.current_config().algorithm.recipe == recipe.name  # the run still says where it started
    panel.training_form.set_values({field: value})
    window.revalidate()
    assert not panel.recipe_is_custom()


def test_training_settings_an_algorithm_ignores_are_greyed_with_the_reason(qtbot, make_window):
    from workbench.core.algorithms import algorithm_names, get_algorithm

    window = make_window(auto_load=False)
    panel = window.algorithm_panel
    ignoring = next(n for n in algorithm_names() if get_algorithm(n).unused_training_fields)
    unused = get_algorithm(ignoring).unused_training_fields
    panel.algorithm_combo.set_name(ignoring)
    for name in panel.training_form.names():
        editor = panel.training_form.editor(name)
        assert editor.isEnabled() == (name not in unused), name
    assert "does not use this setting" in panel.training_form.editor(unused[0]).toolTip()
    panel.algorithm_combo.set_name("protonet")  # a method that uses them all: enabled again
    assert all(panel.training_form.editor(name).isEnabled() for name in panel.training_form.names())
    assert "does not use" not in panel.training_form.editor(unused[0]).toolTip()


def test_the_episode_preview_follows_episodes_within_one_domain(qtbot, make_window, gui):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    panel = window.dataset_panel
    split = panel.dataset.splits["train"]
    group_of = dict(zip(split.class_names, split.class_groups))
    panel.options.set_values({"episode_domains": "within"})
    for _ in range(3):  # every preview, also after a resample, draws its classes from one alphabet
        assert len({group_of[name] for name, _, _ in panel.grid.rows}) == 1
        panel.resample_button.click()
    assert window.current_config().dataset.episode_domains == "within"


def test_the_experiment_dock_grows_to_show_a_kinds_settings_whole(qtbot, make_window, tmp_path):
    window = make_window(auto_load=False)
    window.resize(1440, 900)
    qtbot.waitExposed(window)
    no_options = window.kind_dock.height()
    window.set_kind("augmentation")  # a kind with several settings of its own
    panel = window.kind_panel
    qtbot.waitUntil(lambda: window.kind_dock.height() > no_options)
    scroll = window.kind_dock.widget()
    # Taller by what the window can spare (the dataset dock below keeps its minimum): most of the form in view.
    assert scroll.verticalScrollBar().maximum() < panel.sizeHint().height() / 3
    assert panel.options_form.isVisible()
    window.grab().save(str(tmp_path / "kind-dock.png"))

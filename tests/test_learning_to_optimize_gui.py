"""The race page of "Try a task" for learning to optimize: chosen through the kind's try_task, it races a trained
run's learned optimizer against the tuned hand-made ones in a background thread and draws the curves live."""

from __future__ import annotations

import numpy as np
import pytest

KIND = "learning-to-optimize"


@pytest.fixture
def trained_run(one_torch_thread):
    from workbench.core.config import ExperimentConfig
    from workbench.core.training import Trainer

    config = ExperimentConfig.from_dict({
        "kind": KIND, "task": {"optimizee": "quadratic", "dimension": 4, "horizon": 8, "tuning_problems": 1},
        "algorithm": {"name": "lstm-optimizer", "hparams": {"hidden": 6, "unroll": 4}},
        "training": {"steps": 2, "val_interval": 0, "val_episodes": 1, "device": "cpu", "threads": 1}})
    trainer = Trainer(config)
    assert trainer.run_all().event == "finished"
    return trainer


@pytest.fixture
def race_view():
    """Builds race pages and joins their threads afterwards, whatever the test's outcome."""
    from workbench.gui.try_race_view import TryRaceView

    views = []

    def make(store):
        views.append(TryRaceView(store))
        return views[-1]

    yield make
    for view in views:
        assert view.worker.shutdown(60_000)


def test_the_race_page_serves_kinds_whose_try_task_is_a_race():
    from workbench.gui import view_registry

    assert view_registry.applies("try_race", KIND, "lstm-optimizer")
    assert not view_registry.applies("try_race", "classification", "protonet")
    assert not view_registry.applies("try_images", KIND, "lstm-optimizer")
    assert view_registry.applies("try_images", "classification", "protonet")
    assert view_registry.feeders_text("try_race") == "Shown for learning to optimize."
    assert "TryRaceView" in [cls.__name__ for cls in view_registry.view_classes()]


def test_race_page_races_a_trained_run_and_draws_every_curve(qtbot, trained_run, race_view, tmp_path):
    from workbench.core.runs import RunStore
    view = race_view(RunStore())
    qtbot.addWidget(view)
    view.resize(900, 520)
    assert view.model_combo.currentData() == trained_run.run.id
    assert view.problem_combo.currentData() == "quadratic"  # the run's own problem first
    assert view.problem_combo.count() == 3
    view.steps_box.setValue(30)
    view.seed_box.setValue(3)
    with qtbot.waitSignal(view.race_finished, timeout=120_000) as finished:
        view.start_race()
    assert view.worker.wait(10_000)
    curves = finished.args[0]
    assert list(curves) == ["learned", "adam", "sgd", "rmsprop", "nesterov"]
    for name, losses in curves.items():
        assert losses.shape == (31,)
        x, y = view.plot_curves[name].getData()
        assert len(x) == 31 and np.allclose(10 ** y[np.isfinite(y)], losses[np.isfinite(losses)])  # log axis
    assert view.status.text().startswith("Final loss:") and view.race_button.isEnabled()
    view.grab().save(str(tmp_path / "race.png"))


def test_stopping_a_race_ends_it_without_a_result(qtbot, trained_run, race_view):
    from workbench.core.runs import RunStore
    view = race_view(RunStore())
    qtbot.addWidget(view)
    view.steps_box.setValue(5000)
    with qtbot.waitSignal(view.race_finished, timeout=120_000) as finished:
        view.start_race()
        qtbot.waitUntil(lambda: bool(view.buffer.names), timeout=120_000)
        view.stop_button.click()
    assert view.worker.wait(10_000)
    assert finished.args[0] is None and view.status.text() == "Stopped."
    assert len(view.buffer.curves()["learned"]) < 5001

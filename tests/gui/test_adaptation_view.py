"""The Adaptation tab: traces for a gradient-based run (meta-learned vs random start) computed in the
background, and an explanation instead of an empty plot for other algorithms."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_dataset_config
from workbench.core.runs import RunStore
from workbench.core.training import Trainer
from workbench.gui.adaptation_view import AdaptationView

TIMEOUT_MS = 60_000


def train(store, algorithm: dict, steps: int = 6) -> str:
    trainer = Trainer(tiny_dataset_config(algorithm=algorithm, training={"steps": steps, "lr": 3e-3}), store)
    trainer.run_all()
    return trainer.run.id


@pytest.fixture
def view(qtbot, use_synthetic_data):
    widget = AdaptationView(RunStore())
    qtbot.addWidget(widget)
    widget.resize(1100, 650)
    widget.show()
    yield widget
    assert widget.shutdown()


def test_gradient_run_traces_meta_and_random_starts(qtbot, view):
    run_id = train(view.store, {"name": "maml", "hparams": {"hidden": 8, "train_inner_steps": 1,
                                                             "test_inner_steps": 3}}, steps=20)
    view.refresh_runs()
    # A shown tab traces the selected gradient-based run at once (no empty axes).
    with qtbot.waitSignal(view.trace_ready, timeout=TIMEOUT_MS) as automatic:
        view.select_run(run_id)
    assert automatic.args[0]["run"] == run_id and automatic.args[0]["steps"] > 3  # more than training uses
    assert view.pages.currentIndex() == 0 and view.compute_button.isEnabled()
    view.steps_spin.setValue(7)
    view.tasks_spin.setValue(2)
    with qtbot.waitSignal(view.trace_ready, timeout=TIMEOUT_MS) as ready:
        view.compute_button.click()
    result = ready.args[0]
    assert result["episodes"] == 2 and result["trained_steps"] == 3
    for key in ("meta", "random"):
        assert list(result[key]["step"]) == list(range(8))
        assert np.all((result[key]["query_accuracy"] >= 0) & (result[key]["query_accuracy"] <= 1))
    # Adapting lowers the support loss from either start.
    assert result["meta"]["support_loss"][-1] < result["meta"]["support_loss"][0]
    assert result["random"]["support_loss"][-1] < result["random"]["support_loss"][0]
    # The two starts differ (the random one is not the trained model).
    assert not np.allclose(result["meta"]["query_loss"], result["random"]["query_loss"])
    curves = view.accuracy_plot.getPlotItem().listDataItems()
    assert len(curves) == 2 and len(curves[0].getData()[0]) == 8
    assert "random start" in view.caption.text()


def test_metric_run_gets_an_explanation_not_an_empty_plot(qtbot, view):
    run_id = train(view.store, {"name": "protonet", "hparams": {"hidden": 8}})
    view.refresh_runs()
    view.select_run(run_id)
    assert view.pages.currentIndex() == 1
    assert not view.compute_button.isEnabled()
    text = view.explanation.text()
    assert "MAML" in text and "gradient" in text


def test_a_regression_run_is_traced_in_its_kinds_metric(qtbot, workbench_home):
    from workbench.core.config import ExperimentConfig

    store = RunStore()
    config = ExperimentConfig.from_dict({
        "kind": "regression", "algorithm": {"name": "maml", "hparams": {"hidden": 8, "test_inner_steps": 2}},
        "dataset": {"shots": 5, "queries": 10},
        "training": {"steps": 4, "val_interval": 0, "meta_batch": 2, "threads": 1}})
    trainer = Trainer(config, store)
    trainer.run_all()
    view = AdaptationView(store)
    qtbot.addWidget(view)
    view.resize(1100, 650)
    view.show()
    try:
        view.select_run(trainer.run.id)
        if not view.task.is_running:
            view.compute()
        qtbot.waitUntil(lambda: not view.task.is_running and view.status_label.text() in ("done", "")
                        or view.status_label.text().startswith("Failed"), timeout=TIMEOUT_MS)
        assert view.result is not None, view.status_label.text()
        result = view.result
        assert result["trained_steps"] == 2 and result["metric"].key == "mse"
        assert np.all(np.asarray(result["meta"]["query_mse"]) >= 0)
        assert view.accuracy_plot.getAxis("left").labelText == "query MSE"
        assert "query MSE" in view.caption.text() and "%" not in view.caption.text()
    finally:
        assert view.shutdown()

"""The training worker and its controller: throttled, complete, plain-number records; pause and stop within one
meta-step; cancelling while loading; failures with tracebacks; stale jobs dropped; threads always joined."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from workbench.core.config import ExperimentConfig
from workbench.core.runs import RunStore
from workbench.gui.worker import RecordBatch, TrainingController, describe_failure, is_out_of_memory


@pytest.fixture
def make_controller(qtbot):
    controllers = []

    def make(**kwargs) -> TrainingController:
        controller = TrainingController(**kwargs)
        controllers.append(controller)
        return controller

    yield make
    for controller in controllers:
        assert controller.shutdown(30_000), "a training thread did not end"
        assert not controller.has_threads


def collect(controller):
    payloads = []
    controller.records.connect(lambda job_id, payload: payloads.append((job_id, payload)))
    return payloads


def test_records_are_throttled_yet_complete_and_plain(qtbot, make_controller, fake_trainer_factory):
    controller = make_controller(trainer_factory=fake_trainer_factory(total=3000, val_every=1000))
    payloads = collect(controller)
    with qtbot.waitSignal(controller.job_finished, timeout=60_000) as blocker:
        job_id = controller.start(ExperimentConfig())
    assert blocker.args[0] == job_id and blocker.args[1]["event"] == "finished"
    steps = np.concatenate([payload["steps"] for _, payload in payloads])
    assert np.array_equal(steps, np.arange(1, 3001))  # nothing lost, in order
    assert len(payloads) < 300  # batched: far fewer emissions than steps
    val_steps = np.concatenate([payload["val_steps"] for _, payload in payloads])
    assert list(val_steps) == [1000, 2000, 3000]
    extras = np.concatenate([payload["extras"].get("inner_loss", []) for _, payload in payloads])
    assert extras.shape == (3000,) and np.isfinite(extras).all()
    for _, payload in payloads:
        for key in ("steps", "loss", "accuracy", "lr", "val_steps", "val_accuracy", "val_ci95"):
            assert isinstance(payload[key], np.ndarray) and payload[key].dtype == np.float64
        assert all(isinstance(v, (int, float, str)) for v in payload["last"].values())
    assert controller.state == "idle" and not controller.is_running


def test_real_trainer_pauses_and_stops_within_one_meta_step(qtbot, make_controller, use_synthetic_data,
                                                            tiny_dataset_config, workbench_home):
    controller = make_controller()
    payloads = collect(controller)
    config = tiny_dataset_config(training={"steps": 100_000, "val_interval": 0})
    controller.start(config, workbench_home)
    qtbot.waitUntil(lambda: len(payloads) >= 1, timeout=60_000)
    trainer = controller._worker._trainer
    controller.pause()
    assert controller.state == "paused"
    assert trainer.wait_until_paused(timeout=30)
    paused_step = trainer.step
    assert trainer.wait_until_paused(timeout=0) and trainer.step == paused_step  # still blocked
    with qtbot.waitSignal(controller.job_finished, timeout=60_000) as blocker:
        controller.stop()
    final = blocker.args[1]
    assert final["event"] == "stopped" and final["step"] == paused_step  # no step ran after the pause
    record = RunStore(workbench_home).get(final["run_id"]).record()
    assert record.status == "stopped" and record.steps_done == paused_step
    qtbot.waitUntil(lambda: not controller.has_threads, timeout=10_000)


def test_stop_while_loading_cancels_the_job(qtbot, make_controller):
    stop_seen = threading.Event()

    def slow_loading_factory(config, store_home, progress, resume=None):
        for done in range(1_000_000):
            progress(done, 1_000_000, "loading")  # raises Cancelled once stop() was called
            stop_seen.wait(0.001)
        raise AssertionError("loading was not cancelled")

    controller = make_controller(trainer_factory=slow_loading_factory)
    loading = []
    controller.loading.connect(lambda job_id, done, total, message: loading.append(done))
    controller.start(ExperimentConfig())
    qtbot.waitUntil(lambda: len(loading) >= 2, timeout=30_000)
    with qtbot.waitSignal(controller.job_finished, timeout=30_000) as blocker:
        controller.stop()
    assert blocker.args[1]["event"] == "cancelled"
    qtbot.waitUntil(lambda: not controller.has_threads, timeout=10_000)


def test_a_failure_reaches_the_gui_with_a_traceback(qtbot, make_controller, fake_trainer_factory):
    factory = fake_trainer_factory(total=20, fail_at=4, error=ValueError("bad things"))
    controller = make_controller(trainer_factory=factory)
    payloads = collect(controller)
    with qtbot.waitSignal(controller.job_failed, timeout=30_000) as blocker:
        job_id = controller.start(ExperimentConfig())
    failed_job, title, message, details = blocker.args
    assert failed_job == job_id and title == "Training failed"
    assert message == "ValueError: bad things" and "Traceback" in details and "bad things" in details
    assert sum(len(p["steps"]) for _, p in payloads) == 3  # steps before the failure still arrived
    assert factory.made[0].closed  # the generator was closed (the real Trainer saves the run then)
    assert controller.state == "idle"


def test_out_of_memory_gets_an_actionable_message():
    oom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(oom) and not is_out_of_memory(RuntimeError("shape mismatch"))
    title, message = describe_failure(oom)
    assert title == "Out of memory" and "meta-batch" in message and "CPU" in message


def test_signals_of_a_stale_job_are_dropped(qtbot, make_controller, fake_trainer_factory):
    controller = make_controller(trainer_factory=fake_trainer_factory(total=5))
    with qtbot.waitSignal(controller.job_finished, timeout=30_000):
        old_job = controller.start(ExperimentConfig())
    # The new job holds after its first step until stopped, so it cannot finish on its own before stop().
    factory = fake_trainer_factory(total=1_000_000, hold_at=1)
    controller.trainer_factory = factory
    new_job = controller.start(ExperimentConfig())
    qtbot.waitUntil(lambda: controller.state == "running", timeout=30_000)

    forwarded = []
    controller.records.connect(lambda job_id, payload: forwarded.append(job_id))
    controller.job_finished.connect(lambda job_id, final: forwarded.append(("finished", job_id)))
    payload = {"steps": np.array([1.0]), "loss": np.array([9.0]), "accuracy": np.array([0.1])}
    # What the old job's worker would still deliver through the event loop:
    controller._on_records(old_job, payload)
    controller._on_finished(old_job, {"event": "finished"})
    controller._on_failed(old_job, "x", "y", "z")
    assert ("finished", old_job) not in forwarded and old_job not in forwarded
    assert controller.current_job_id == new_job and controller.is_running
    with qtbot.waitSignal(controller.job_finished, timeout=30_000) as blocker:
        controller.stop()
    assert blocker.args[0] == new_job and blocker.args[1]["event"] == "stopped"


def test_shutdown_stops_joins_and_saves_the_run(qtbot, make_controller, use_synthetic_data, tiny_dataset_config,
                                                workbench_home):
    controller = make_controller()
    payloads = collect(controller)
    controller.start(tiny_dataset_config(training={"steps": 100_000, "val_interval": 0}), workbench_home)
    qtbot.waitUntil(lambda: len(payloads) >= 1, timeout=60_000)
    run_id = controller.last_run_id
    assert controller.shutdown(60_000)
    assert not controller.has_threads and controller.state == "idle"
    record = RunStore(workbench_home).get(run_id).record()
    assert record.status == "stopped" and record.steps_done >= 1


def test_record_batches_name_their_scores_after_the_metric():
    """Records of a regression run (StepRecord.to_dict) carry "metric"; old metrics.jsonl lines carry none."""
    from workbench.core.training.trainer import StepRecord

    batch = RecordBatch()
    for step in (1, 2):
        batch.add(StepRecord(step, 2, loss=1.0, score=0.5 / step, lr=1e-3, elapsed_s=0.1, steps_per_s=10.0,
                             eta_s=0.1, metric="mse").to_dict())
    batch.add(StepRecord(2, 2, loss=1.0, score=0.3, lr=1e-3, elapsed_s=0.2, steps_per_s=10.0, eta_s=0.0,
                         event="validation", val_score=0.3, val_ci95=0.05, best_val_score=0.3,
                         metric="mse").to_dict())
    payload = batch.payload()
    assert payload["metric"] == "mse" and "accuracy" not in payload
    assert list(payload["mse"]) == [0.5, 0.25] and list(payload["val_mse"]) == [0.3]
    assert payload["last"]["best_val_mse"] == 0.3

    old = RecordBatch()
    old.add({"step": 1, "loss": 2.0, "accuracy": 0.4, "event": "step"})
    old.add({"step": 1, "event": "validation", "val_accuracy": 0.5, "val_ci95": 0.1})
    payload = old.payload()
    assert payload["metric"] == "accuracy" and list(payload["accuracy"]) == [0.4]
    assert list(payload["val_accuracy"]) == [0.5]

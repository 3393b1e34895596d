"""The training loop: records, control from another thread, validation, checkpoints, divergence,
the time budget, resuming after a crash and reproducibility."""

from __future__ import annotations

import math
import shutil
import threading

import pytest
import torch

from conftest import tiny_dataset_config
from workbench.core.errors import ConfigError, WorkbenchError
from workbench.core.runs import RunStore
from workbench.core.training import StepRecord, Trainer
from workbench.core.training import trainer as trainer_module

pytestmark = pytest.mark.usefixtures("use_synthetic_data")


def _losses(records):
    return [r.loss for r in records if r.event == "step"]


def test_yields_one_record_per_step_then_a_final_record():
    trainer = Trainer(tiny_dataset_config(training={"steps": 5, "val_interval": 0}))
    records = list(trainer.steps())
    steps = [r for r in records if r.event == "step"]
    assert [r.step for r in steps] == [1, 2, 3, 4, 5]
    assert all(r.total_steps == 5 and math.isfinite(r.loss) and 0 <= r.accuracy <= 1 for r in steps)
    assert all(r.lr > 0 and r.steps_per_s > 0 and r.eta_s is not None for r in steps)
    assert steps[-1].eta_s == 0
    assert [r.elapsed_s for r in steps] == sorted(r.elapsed_s for r in steps)
    final = records[-1]
    assert final.event == "finished" and final.is_final and final.step == 5
    # val_interval 0 still validates once at the end.
    assert [r.event for r in records[-2:]] == ["validation", "finished"]
    record = trainer.run.record()
    assert (record.status, record.steps_done, record.device) == ("finished", 5, "cpu")
    assert record.best_val_accuracy == pytest.approx(final.best_val_accuracy)
    saved = trainer.run.read_metrics()
    assert [m["step"] for m in saved if m["event"] == "step"] == [1, 2, 3, 4, 5]
    assert saved[-1]["event"] == "finished"
    d = final.to_dict()
    assert isinstance(d["loss"], float) and d["event"] == "finished"


def test_validation_records_and_best_checkpoint():
    trainer = Trainer(tiny_dataset_config(training={"steps": 6, "val_interval": 2}))
    records = list(trainer.steps())
    validations = [r for r in records if r.event == "validation"]
    assert [r.step for r in validations] == [2, 4, 6]  # not repeated at the end
    assert all(0 <= r.val_accuracy <= 1 and r.val_ci95 >= 0 for r in validations)
    best = max(r.val_accuracy for r in validations)
    first_best_step = next(r.step for r in validations if r.val_accuracy == best)
    assert records[-1].best_val_accuracy == pytest.approx(best)
    payload = trainer.run.load_checkpoint("best")
    assert payload["step"] == first_best_step
    assert payload["best_val_accuracy"] == pytest.approx(best)
    assert trainer.run.load_checkpoint("last")["step"] == 6
    assert trainer.run.record().best_val_accuracy == pytest.approx(best)


def test_validation_episodes_are_fixed():
    trainer = Trainer(tiny_dataset_config())
    first = [(e.class_ids, e.query_index.tolist()) for e in trainer.val_episodes]
    list(trainer.steps())
    again = [(e.class_ids, e.query_index.tolist()) for e in trainer.val_episodes]
    assert first == again
    other = Trainer(tiny_dataset_config(training={"seed": 5}))
    assert [(e.class_ids, e.query_index.tolist()) for e in other.val_episodes] == first


def _drive_in_thread(trainer, on_record):
    records, errors = [], []

    def consume():
        try:
            for record in trainer.steps():
                records.append(record)
                on_record(record)
        except BaseException as exc:  # pragma: no cover - surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    return thread, records, errors


def test_pause_resume_and_stop_from_another_thread():
    trainer = Trainer(tiny_dataset_config(training={"steps": 1000, "val_interval": 0, "checkpoint_interval": 1000}))
    reached = {2: threading.Event(), 4: threading.Event()}

    def on_record(record):
        if record.event == "step" and record.step in reached:
            reached[record.step].set()

    thread, records, errors = _drive_in_thread(trainer, on_record)
    assert reached[2].wait(30)
    trainer.pause()
    assert trainer.is_paused
    assert trainer.wait_until_paused(30)
    paused_at = len(records)
    # Blocked inside steps(): nothing moves, and the store says so.
    assert trainer.run.record().status == "paused"
    assert len(records) == paused_at
    trainer.resume()
    assert reached[4].wait(30)
    trainer.stop()
    assert trainer.is_stopping
    thread.join(30)
    assert not thread.is_alive() and errors == []
    steps = [r.step for r in records if r.event == "step"]
    assert steps == list(range(1, len(steps) + 1))  # no step lost or repeated across the pause
    assert 4 <= steps[-1] < 1000
    assert records[-1].event == "stopped"
    record = trainer.run.record()
    assert (record.status, record.steps_done) == ("stopped", steps[-1])
    assert trainer.run.load_checkpoint("last")["step"] == steps[-1]


def test_stop_while_paused_ends_the_run():
    trainer = Trainer(tiny_dataset_config(training={"steps": 1000, "val_interval": 0}))
    trainer.pause()  # pauses before the first step
    thread, records, errors = _drive_in_thread(trainer, lambda r: None)
    assert trainer.wait_until_paused(30)
    trainer.stop()
    thread.join(30)
    assert errors == [] and [r.event for r in records] == ["stopped"]
    assert trainer.run.record().status == "stopped"


def test_closing_the_generator_saves_as_stopped():
    trainer = Trainer(tiny_dataset_config(training={"steps": 50, "val_interval": 0}))
    loop = trainer.steps()
    for record in loop:
        if record.step == 3:
            break
    loop.close()
    assert trainer.run.record().status == "stopped"
    assert trainer.run.load_checkpoint("last")["step"] == 3
    assert [m["step"] for m in trainer.run.read_metrics() if m["event"] == "step"] == [1, 2, 3]


def test_nan_loss_stops_as_diverged_and_keeps_the_last_good_checkpoint(monkeypatch):
    trainer = Trainer(tiny_dataset_config(training={"steps": 10, "val_interval": 3, "checkpoint_interval": 3}))
    real_step = trainer.algorithm.meta_train_step
    calls = {"n": 0}

    def exploding_step(batch):
        calls["n"] += 1
        out = real_step(batch)
        if calls["n"] == 5:
            with torch.no_grad():  # what a real blow-up leaves behind
                for p in trainer.algorithm.encoder.parameters():
                    p.fill_(float("nan"))
            out["loss"] = float("nan")
        return out

    monkeypatch.setattr(trainer.algorithm, "meta_train_step", exploding_step)
    records = list(trainer.steps())
    final = records[-1]
    assert final.event == "diverged"
    assert "diverged at step 5" in final.message and "nan" in final.message
    assert "last good checkpoint (step 3)" in final.message and "training.lr" in final.message
    record = trainer.run.record()
    assert record.status == "diverged" and "step 5" in record.message
    for kind in ("last", "best"):
        payload = trainer.run.load_checkpoint(kind)
        assert payload["step"] == 3
        assert all(torch.isfinite(t).all() for t in payload["state"]["encoder"].values() if t.is_floating_point())
    assert final.to_dict()["loss"] is None or math.isfinite(final.to_dict()["loss"])


def test_weights_going_nan_are_caught_at_the_checkpoint(monkeypatch):
    trainer = Trainer(tiny_dataset_config(training={"steps": 10, "val_interval": 0, "checkpoint_interval": 2}))
    real_step = trainer.algorithm.meta_train_step
    calls = {"n": 0}

    def corrupting_step(batch):
        calls["n"] += 1
        out = real_step(batch)
        if calls["n"] == 4:  # corrupted by the step that ends at a checkpoint
            with torch.no_grad():
                next(trainer.algorithm.encoder.parameters()).fill_(float("inf"))
        return out  # the loss of this step was still finite

    monkeypatch.setattr(trainer.algorithm, "meta_train_step", corrupting_step)
    final = list(trainer.steps())[-1]
    assert final.event == "diverged" and "weights became NaN or infinite" in final.message
    assert trainer.run.load_checkpoint("last")["step"] == 2


def _blow_up_loss_after(trainer, monkeypatch, step: int):
    """The loss grows huge but stays finite from ``step`` on, as MAML's does at learning rates at their caps."""
    real_step = trainer.algorithm.meta_train_step
    calls = {"n": 0}

    def blowing_up(batch):
        calls["n"] += 1
        out = real_step(batch)
        if calls["n"] >= step:
            out["loss"] = 2.4e10
        return out

    monkeypatch.setattr(trainer.algorithm, "meta_train_step", blowing_up)


def test_a_finite_loss_blow_up_stops_as_diverged_and_keeps_the_checkpoints(monkeypatch):
    trainer = Trainer(tiny_dataset_config(training={"steps": 200, "val_interval": 10, "checkpoint_interval": 10}))
    _blow_up_loss_after(trainer, monkeypatch, 25)
    records = list(trainer.steps())
    final = records[-1]
    watch = trainer_module.DivergenceWatch
    assert final.event == "diverged" and final.step == 24 + int(watch.WINDOW * watch.SHARE)
    assert f"above 10 times its starting value" in final.message and f"of the last {watch.WINDOW} steps" in final.message
    assert "last good checkpoint" in final.message and "training.lr" in final.message
    assert trainer.run.record().status == "diverged"
    assert trainer.run.load_checkpoint("best")["step"] == trainer.best_step <= final.step
    assert trainer.run.load_checkpoint("last")["start_loss"] == pytest.approx(
        trainer.divergence.reference) and trainer.divergence.reference < 100


def test_warn_on_divergence_warns_once_and_trains_on(monkeypatch):
    trainer = Trainer(tiny_dataset_config(training={"steps": 120, "val_interval": 0, "on_divergence": "warn"}))
    _blow_up_loss_after(trainer, monkeypatch, 25)
    records = list(trainer.steps())
    warnings = [r for r in records if r.event == "warning"]
    assert records[-1].event == "finished" and records[-1].step == 120
    watch = trainer_module.DivergenceWatch
    assert len(warnings) == 1 and warnings[0].step == 24 + int(watch.WINDOW * watch.SHARE)
    assert "may be diverging" in warnings[0].message and trainer.warnings == [warnings[0].message]
    assert [m["event"] for m in trainer.run.read_metrics()].count("warning") == 1


def test_the_divergence_check_can_be_turned_off(monkeypatch):
    trainer = Trainer(tiny_dataset_config(training={"steps": 90, "val_interval": 0, "divergence_factor": 0}))
    _blow_up_loss_after(trainer, monkeypatch, 25)
    assert list(trainer.steps())[-1].event == "finished"


def test_time_budget_validates_saves_and_finishes(monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(trainer_module, "clock", lambda: now["t"])
    trainer = Trainer(tiny_dataset_config(training={"steps": 100, "max_minutes": 1.0, "val_interval": 0,
                                                    "checkpoint_interval": 100}))
    real_step = trainer.algorithm.meta_train_step

    def slow_step(batch):
        now["t"] += 25.0  # each step "takes" 25 s
        return real_step(batch)

    monkeypatch.setattr(trainer.algorithm, "meta_train_step", slow_step)
    records = list(trainer.steps())
    steps = [r for r in records if r.event == "step"]
    assert len(steps) == 3  # 75 s > 60 s budget after the third step
    assert steps[0].eta_s <= 60.0  # the ETA respects the budget
    assert [r.event for r in records[-2:]] == ["validation", "budget"]
    assert "time budget of 1 min" in records[-1].message
    assert trainer.run.record().status == "finished"
    assert trainer.run.load_checkpoint("last")["step"] == 3


def test_a_budget_without_steps_trains_until_the_budget_with_the_schedule_following_time(monkeypatch):
    now = {"t": 1000.0}
    monkeypatch.setattr(trainer_module, "clock", lambda: now["t"])
    trainer = Trainer(tiny_dataset_config(training={"steps": 0, "max_minutes": 1.0, "val_interval": 0,
                                                    "checkpoint_interval": 100, "lr_schedule": "cosine"}))
    real_step = trainer.algorithm.meta_train_step

    def slow_step(batch):
        now["t"] += 10.0  # each step "takes" 10 s: the 60 s budget allows 6
        return real_step(batch)

    monkeypatch.setattr(trainer.algorithm, "meta_train_step", slow_step)
    records = list(trainer.steps())
    steps = [r for r in records if r.event == "step"]
    assert len(steps) == 6 and records[-1].event == "budget"
    lrs = [r.lr for r in steps]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > 0.9e-3
    # Cosine over the budget: after 50 of 60 s the rate is 0.05 + 0.95 * (1 + cos(pi * 5/6)) / 2 of the base.
    assert lrs[-1] == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 5 / 6))), rel=1e-6)
    assert steps[2].total_steps == 6  # planned from the pace: 3 done, 30 s left at 0.1 steps/s
    assert trainer.run.record().status == "finished"


def test_planned_steps_cap_a_budget_run_and_the_schedule_follows_whichever_is_further(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(trainer_module, "clock", lambda: now["t"])
    trainer = Trainer(tiny_dataset_config(training={"steps": 4, "max_minutes": 10.0, "val_interval": 0,
                                                    "lr_schedule": "cosine"}))
    real_step = trainer.algorithm.meta_train_step
    monkeypatch.setattr(trainer.algorithm, "meta_train_step",
                        lambda batch: (now.__setitem__("t", now["t"] + 1.0), real_step(batch))[1])
    records = list(trainer.steps())
    steps = [r for r in records if r.event == "step"]
    assert len(steps) == 4 and records[-1].event == "finished"
    # Steps are further along than time (4 s of 600): the schedule follows the steps, as without a budget.
    assert steps[2].lr == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 3 / 4))), rel=1e-6)


def test_paused_time_does_not_count_against_the_budget(monkeypatch):
    now = {"t": 0.0}
    monkeypatch.setattr(trainer_module, "clock", lambda: now["t"])
    trainer = Trainer(tiny_dataset_config(training={"steps": 4, "max_minutes": 1.0, "val_interval": 0}))
    real_wait = trainer._run_event.wait
    waits = []

    def an_hour_away(timeout=None):
        waits.append(now["t"])
        now["t"] += 3600.0  # an hour away from the keyboard, then the user resumes
        trainer.resume()
        return real_wait(timeout)

    monkeypatch.setattr(trainer._run_event, "wait", an_hour_away)
    trainer.pause()  # takes effect before the first step
    records = list(trainer.steps())
    assert len(waits) == 1
    assert records[-1].event == "finished" and records[-1].step == 4
    assert records[-1].elapsed_s < 60.0


def test_same_seed_same_losses_other_seed_other_losses():
    config = tiny_dataset_config(training={"steps": 5, "val_interval": 0})
    first = _losses(Trainer(config).steps())
    second = _losses(Trainer(config).steps())
    assert first == pytest.approx(second, rel=1e-6, abs=1e-7)
    other = _losses(Trainer(tiny_dataset_config(training={"steps": 5, "val_interval": 0, "seed": 1})).steps())
    assert other != pytest.approx(first, rel=1e-6, abs=1e-7)


def test_resume_after_a_crash_continues_from_the_checkpoint(tmp_path):
    config = tiny_dataset_config(training={"steps": 7, "val_interval": 3, "checkpoint_interval": 3})
    reference = list(Trainer(config).steps())

    store = RunStore()
    crashing = Trainer(config, store)
    loop = crashing.steps()
    for record in loop:
        if record.event == "step" and record.step == 5:
            # Freeze the folder as a killed process would leave it (checkpoint of step 3).
            shutil.copytree(crashing.run.path, tmp_path / "snapshot")
            break
    loop.close()
    shutil.rmtree(crashing.run.path)
    shutil.copytree(tmp_path / "snapshot", crashing.run.path)
    store.update(crashing.run.id, status="running")
    crashing.run.append_metrics([{"step": 4, "event": "step", "loss": 9.0}, {"step": 5, "event": "step", "loss": 9.0}])
    with open(crashing.run.metrics_path, "a") as handle:
        handle.write('{"step": 6, "ev')

    resumed = Trainer(None, store, resume=crashing.run.id)
    assert resumed.step == 3
    assert "resumed" in resumed.resume_message and "dropped" in resumed.resume_message
    records = list(resumed.steps())
    assert [r.step for r in records if r.event == "step"] == [4, 5, 6, 7]
    assert _losses(records) == pytest.approx(_losses(reference)[3:], rel=1e-5, abs=1e-6)
    assert records[-1].event == "finished"
    assert resumed.best_val_accuracy == pytest.approx(reference[-1].best_val_accuracy)
    saved = resumed.run.read_metrics()
    assert [m["step"] for m in saved if m["event"] == "step"] == [1, 2, 3, 4, 5, 6, 7]
    assert resumed.run.record().status == "finished"
    assert records[-1].elapsed_s >= records[0].elapsed_s


def test_resume_may_extend_steps_but_not_change_the_experiment():
    store = RunStore()
    trainer = Trainer(tiny_dataset_config(training={"steps": 3, "val_interval": 0}), store)
    list(trainer.steps())
    with pytest.raises(WorkbenchError, match="already trained all 3 steps"):
        Trainer(None, store, resume=trainer.run.id)
    with pytest.raises(ConfigError, match="training.lr: cannot change when resuming"):
        Trainer(trainer.run.config.replace(training={"lr": 0.1}), store, resume=trainer.run.id)
    longer = Trainer(trainer.run.config.replace(training={"steps": 5}), store, resume=trainer.run.id)
    records = list(longer.steps())
    assert [r.step for r in records if r.event == "step"] == [4, 5]
    assert store.get(trainer.run.id).config.training.steps == 5
    assert store.get(trainer.run.id).record().steps_total == 5


def test_impossible_episode_setting_fails_before_a_run_exists():
    with pytest.raises(WorkbenchError, match="n-way"):
        Trainer(tiny_dataset_config(dataset={"ways": 20}))
    assert RunStore().list() == []


def test_batch_algorithms_get_labelled_batches_from_all_train_classes(monkeypatch):
    from workbench.core.algorithms import algorithm_names, get_algorithm
    from workbench.core.algorithms.base import LabeledBatch

    batch_algorithms = [n for n in algorithm_names() if get_algorithm(n).training_input == "batches"]
    if not batch_algorithms:
        pytest.skip("no pre-training baseline is registered yet")
    name = batch_algorithms[0]
    config = tiny_dataset_config(algorithm={"name": name, "hparams": {"hidden": 8, "batch_size": 7}},
                                 training={"steps": 3, "val_interval": 0})
    trainer = Trainer(config)
    seen = []
    real_step = trainer.algorithm.meta_train_step

    def spy(batch):
        seen.append(batch)
        return real_step(batch)

    monkeypatch.setattr(trainer.algorithm, "meta_train_step", spy)
    records = list(trainer.steps())
    assert records[-1].event == "finished"
    assert len(seen) == 3 and all(isinstance(b, LabeledBatch) and b.x.shape[0] == 7 for b in seen)
    labels = torch.cat([b.y for b in seen])
    assert labels.max() < trainer.dataset.split("train").num_classes and labels.unique().numel() > 3


def test_cpu_threads_leave_a_core_for_the_gui():
    import os

    trainer = Trainer(tiny_dataset_config(training={"threads": 0}), reserve_gui_core=True)
    expected = max(1, (os.cpu_count() or 1) - 1)
    assert trainer.device.type == "cpu"
    assert trainer.threads == expected == torch.get_num_threads()
    assert Trainer(tiny_dataset_config(training={"threads": 1})).threads == 1


def test_step_record_to_dict_is_plain():
    record = StepRecord(1, 2, float("nan"), 0.5, 1e-3, 0.1, 10.0, None, extras={"inner": float("inf")})
    d = record.to_dict()
    assert d["loss"] is None and d["extras"] == {"inner": None} and d["eta_s"] is None
    assert "loss" not in record.compact() and record.compact()["step"] == 1

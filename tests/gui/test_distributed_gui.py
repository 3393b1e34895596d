"""Training a run in several processes from the window (offscreen): the Processes setting launches the ranks, the
Training view follows rank 0's records live, Stop ends every rank with the run saved as stopped, Resume continues
it in as many processes, the setting survives a restart, and a meta-batch the processes cannot split is refused
before any starts.

Starting processes is the slow part (each imports torch), so one test launches twice (train and stop, then resume
to the end) and checks everything on those two launches."""

from __future__ import annotations

import multiprocessing

import numpy as np

from workbench.core.runs import RunStore
from workbench.core.training.trainer import STOP_REQUEST

STEPS = 150


def _two_process_window(qtbot, make_window, gui):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    gui.tiny_training(window, steps=STEPS, val_interval=50, val_episodes=4)
    window.algorithm_panel.training_form.set_values({"meta_batch": 2, "checkpoint_interval": 10})
    window.algorithm_panel.set_processes(2)
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)
    return window


def test_two_processes_train_live_stop_together_and_resume_to_the_end(qtbot, make_window, gui, workbench_home):
    window = _two_process_window(qtbot, make_window, gui)
    payloads, started = [], []
    window.training_records.connect(lambda job_id, payload: payloads.append(payload))
    window.training_started.connect(lambda job_id, info: started.append(info))
    window.run_action.trigger()
    qtbot.waitUntil(lambda: len(window.training_view.loss) >= 1, timeout=gui.TRAIN_TIMEOUT_MS)
    # Live: records reach the view while the ranks train; Pause is greyed and says why.
    assert window.controller.is_running and len(multiprocessing.active_children()) >= 2
    assert not window.pause_action.isEnabled() and "not available" in window.pause_action.toolTip()
    assert started[0]["processes"] == 2 and started[0]["device"] == "cpu (2 processes)"
    with qtbot.waitSignal(window.training_finished, timeout=gui.TRAIN_TIMEOUT_MS) as blocker:
        window.stop_action.trigger()
    final = blocker.args[1]
    assert final["event"] == "stopped", final
    assert multiprocessing.active_children() == []  # both ranks ended
    qtbot.waitUntil(lambda: not window.controller.has_threads, timeout=5_000)  # the job's thread joined
    store = RunStore(workbench_home)
    records = store.list()
    assert [r.id for r in records] == [final["run_id"]] and len(list(store.runs_dir.iterdir())) == 1
    stopped_at = records[0].steps_done
    assert records[0].status == "stopped" and 1 <= stopped_at < STEPS
    assert not (store.get(final["run_id"]).path / STOP_REQUEST).exists()  # taken by rank 0 or tidied up
    assert np.array_equal(window.training_view.loss.x.data, np.arange(1, stopped_at + 1))
    assert len(payloads) >= 2 and all(p["loss"].dtype == np.float64 for p in payloads)  # throttled arrays

    # Resume from the Runs tab continues in two processes to the end: one run, its curves whole.
    payloads.clear()
    with qtbot.waitSignal(window.training_finished, timeout=gui.TRAIN_TIMEOUT_MS) as blocker:
        window.runs_view.resume_run.emit(final["run_id"])
    final = blocker.args[1]
    assert final["event"] == "finished" and final["run_id"] == records[0].id, final
    record = store.get(final["run_id"]).record()
    assert (record.status, record.steps_done) == ("finished", STEPS) and len(store.list()) == 1
    assert np.array_equal(window.training_view.loss.x.data, np.arange(1, STEPS + 1))
    assert list(window.training_view.val_steps.data) == [50.0, 100.0, 150.0]
    assert sum(len(p["steps"]) for p in payloads) == STEPS - stopped_at
    assert multiprocessing.active_children() == []
    assert window.run_action.isEnabled() and window.pause_action.toolTip().startswith("Pause or resume")


def test_the_number_of_processes_survives_a_restart(qtbot, make_window):
    window = make_window(restore=True, auto_load=False)
    spin = window.algorithm_panel.processes_spin
    assert spin.value() == 1 and spin.maximum() >= 1 and "meta-batch" in spin.toolTip()
    window.algorithm_panel.set_processes(2)
    window.close()
    again = make_window(restore=True, auto_load=False)
    assert again.algorithm_panel.processes() == min(2, spin.maximum())
    assert "processes" not in again.current_config().to_toml()  # a launch setting, not the experiment's


def test_a_meta_batch_the_processes_cannot_split_is_refused_before_any_start(qtbot, make_window, gui):
    window = make_window()
    gui.wait_until_ready(qtbot, window)
    window.algorithm_panel.training_form.set_values({"meta_batch": 3})
    window.algorithm_panel.set_processes(2)
    qtbot.waitUntil(lambda: not window.run_action.isEnabled(), timeout=5_000)
    assert "training.meta_batch" in window.run_blocked_reason and "2 processes" in window.run_blocked_reason
    assert "Cannot run" in window.run_hint.text()
    assert window.start_training(window.current_config()) is None  # a config given directly is checked too
    title, message, _ = window.last_error
    assert title == "Cannot train in several processes" and message.startswith("training.meta_batch: 3 tasks")
    assert not window.controller.is_running and multiprocessing.active_children() == []
    window.algorithm_panel.set_processes(1)  # one process takes any meta-batch
    qtbot.waitUntil(lambda: window.run_action.isEnabled(), timeout=5_000)

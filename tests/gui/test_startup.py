"""Starting and stopping the app as a process: ``workbench --startup-time`` prints how long the window took to
show, and SIGTERM closes the window as its close button does (a training stops and is saved) and exits with
143. The processes run offscreen on the test's own settings and run store."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from workbench.core.runs import RunStore

TIMEOUT_S = 120

# Started with `python -c`: the app's own main(), with a hook that says (on stdout) when it is ready, and, with
# "train", starts a small regression training (generated sine tasks: nothing to load) and says when it runs.
APP_SCRIPT = """
import sys
from workbench.gui import app

def ready(window):
    if "train" not in sys.argv:
        print("ready", flush=True)
        return
    window.set_kind("regression")
    window.algorithm_panel.training_form.set_values({"steps": 100000, "val_interval": 0, "threads": 1})
    window.algorithm_panel.device_combo.setCurrentIndex(window.algorithm_panel.device_combo.findData("cpu"))
    said = []

    def running(job_id, payload):
        if not said:
            said.append(True)
            print("training", flush=True)

    def start():
        if window.dataset_panel.is_ready() and window.revalidate() is None:
            window.training_records.connect(running)
            window.start_training()
        else:
            window.dataset_panel.changed.connect(start_once)

    def start_once():
        window.dataset_panel.changed.disconnect(start_once)
        start()

    start()

sys.exit(app.main([], on_ready=ready))
"""


def app_environment() -> dict[str, str]:
    """The test's isolated settings, run store and cache (set by the conftest fixtures), offscreen."""
    return {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONUNBUFFERED": "1"}


def read_line_until(process: subprocess.Popen, wanted: str, timeout_s: float) -> list[str]:
    """Lines of the process's stdout up to and including one starting with ``wanted`` (fails on exit or timeout)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=deadline - time.monotonic()):
                break
            line = process.stdout.readline()
            if not line:
                pytest.fail(f"the app exited ({process.wait()}) before saying '{wanted}': {lines}\n"
                            f"{process.stderr.read()}")
            lines.append(line.strip())
            if line.startswith(wanted):
                return lines
    process.kill()
    pytest.fail(f"the app did not say '{wanted}' within {timeout_s} s: {lines}")


def start_app(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", APP_SCRIPT, *args], env=app_environment(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_startup_time_prints_the_seconds_to_the_shown_window():
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "--startup-time", "--json"], env=app_environment(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert 0 < result["shown_s"] <= result["ready_s"] < TIMEOUT_S
    assert result["clock"] == "process start" and result["platform"] == "offscreen"
    text = subprocess.run([sys.executable, "-m", "workbench.cli", "--startup-time"], env=app_environment(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert text.returncode == 0, text.stderr
    shown = re.match(r"shown window in (\d+\.\d+) s \(first event-loop tick\); ready in (\d+\.\d+) s", text.stdout)
    assert shown and 0 < float(shown.group(1)) <= float(shown.group(2)), text.stdout


def test_sigterm_closes_the_idle_app_with_exit_code_143():
    process = start_app()
    try:
        read_line_until(process, "ready", TIMEOUT_S)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == 143, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_while_training_stops_and_saves_the_run(workbench_home):
    process = start_app("train")
    try:
        read_line_until(process, "training", TIMEOUT_S)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT_S) == 143, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    [record] = RunStore(workbench_home).list()
    assert record.status == "stopped" and 0 < record.steps_done < 100000, record
    assert RunStore(workbench_home).get(record.id).read_metrics()  # its steps were written


@pytest.mark.parametrize("size", [5, 3000])  # the Python loop and scipy's lfilter
def test_curve_smoothing_is_the_same_with_and_without_scipy(size, monkeypatch):
    from workbench.gui import training_view

    values = np.random.default_rng(0).normal(size=size)
    lfilter = training_view._lfilter
    monkeypatch.setattr(training_view, "_lfilter", lambda: None)
    by_loop = training_view._biased_ema(values, 0.9, 0.3)
    monkeypatch.setattr(training_view, "_lfilter", lfilter)
    monkeypatch.setattr(training_view, "LFILTER_MIN_POINTS", 0)
    by_filter = training_view._biased_ema(values, 0.9, 0.3)
    assert np.allclose(by_loop, by_filter, rtol=1e-10, atol=1e-12)


def test_a_start_up_problem_is_said_plainly_before_qt_starts(monkeypatch, capsys):
    """No display, or Qt's xcb plugin missing system libraries: the launch prints why and exits with 2."""
    from workbench.gui import app, platform_check

    monkeypatch.setattr(platform_check, "startup_problem", lambda environ=None: "no display: try QT_QPA_PLATFORM")
    monkeypatch.setattr(app, "create_application", lambda *args, **kwargs: pytest.fail("Qt must not start"))
    assert app.main([]) == 2
    assert "no display: try QT_QPA_PLATFORM" in capsys.readouterr().err


def test_startup_time_without_a_display_measures_offscreen(monkeypatch):
    from types import SimpleNamespace

    from workbench import cli

    monkeypatch.setattr(cli.sys, "platform", "linux")
    for name in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    calls = []
    fake_app = SimpleNamespace(main=lambda argv: calls.append((argv, os.environ.get("QT_QPA_PLATFORM"))) or 0)
    monkeypatch.setattr(cli, "_load_gui_app", lambda: fake_app)
    assert cli.main(["--startup-time", "--json"]) == 0
    assert calls == [(["--startup-time", "--json"], "offscreen")]

"""Fixtures for the GUI tests: offscreen Qt, isolated settings, non-blocking dialogs, and a main window whose
threads are all joined when the test ends."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before any QApplication exists

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings  # noqa: E402

# Loading the full glyphs set (first time per session) and a few training steps on a slow shared CPU.
LOAD_TIMEOUT_MS = 120_000
TRAIN_TIMEOUT_MS = 120_000


@pytest.fixture(autouse=True)
def _isolated_gui_settings(tmp_path, monkeypatch):
    """No test reads or writes the user's settings; no dialog blocks in a nested event loop."""
    folder = tmp_path / "qt-settings"
    monkeypatch.setenv("WORKBENCH_SETTINGS_DIR", str(folder))
    for fmt in (QSettings.Format.IniFormat, QSettings.Format.NativeFormat):
        QSettings.setPath(fmt, QSettings.Scope.UserScope, str(folder))
    from workbench.gui import dialogs

    monkeypatch.setattr(dialogs, "BLOCKING_DIALOGS", False)
    yield


@pytest.fixture
def make_window(qtbot):
    """Factory for MainWindow; every window is shut down (threads joined) after the test."""
    from workbench.gui.main_window import MainWindow

    windows = []

    def make(**kwargs) -> MainWindow:
        kwargs.setdefault("restore", False)
        window = MainWindow(**kwargs)
        window.confirm_stop_on_close = lambda: True
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        return window

    yield make
    for window in windows:
        assert window.shutdown(), "a background thread did not end"
        assert not window.controller.has_threads


def wait_until_ready(qtbot, window, timeout: int = LOAD_TIMEOUT_MS) -> None:
    """Wait for the dataset to load and the experiment to be checked."""
    qtbot.waitUntil(lambda: window.dataset_panel.is_ready() and not window.dataset_panel.is_loading,
                    timeout=timeout)
    qtbot.waitUntil(lambda: window.revalidate() is None or window.dataset_panel.episode_problem_text is not None,
                    timeout=5_000)


def tiny_training(window, steps: int = 30, val_interval: int = 15, val_episodes: int = 4) -> None:
    """Small, fast settings in the panels (as a user would type them)."""
    window.algorithm_panel.hparam_form.set_values({"hidden": 16})
    window.algorithm_panel.training_form.set_values({
        "steps": steps, "val_interval": val_interval, "val_episodes": val_episodes, "checkpoint_interval": 50,
        "threads": 1})
    window.algorithm_panel.device_combo.setCurrentIndex(window.algorithm_panel.device_combo.findData("cpu"))


def write_png(path: Path, value: int, size: int = 16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), color=value).save(path)


@pytest.fixture
def gui():
    """Helper functions for the GUI tests (wait_until_ready, tiny_training, write_png)."""
    from types import SimpleNamespace

    return SimpleNamespace(wait_until_ready=wait_until_ready, tiny_training=tiny_training, write_png=write_png,
                           LOAD_TIMEOUT_MS=LOAD_TIMEOUT_MS, TRAIN_TIMEOUT_MS=TRAIN_TIMEOUT_MS)


class FakeTrainer:
    """Follows the Trainer contract (steps generator, thread-safe pause/resume/stop) without learning anything."""

    def __init__(self, config, total=20, final_event="finished", message="", fail_at=None, error=None,
                 progress=None, val_every=5, hold_at=None, warn_at=None):
        import threading

        self.config = config
        self.device = "cpu"
        self.step = 0
        self.run = None
        self.total = total
        self.final_event = final_event
        self.message = message
        self.fail_at = fail_at
        self.error = error
        self.val_every = val_every
        self.hold_at = hold_at  # after this step, wait for stop() (a step that lasts until the user stops)
        self.warn_at = warn_at  # after this step, a warning record (a loss far above its start)
        self._running = threading.Event()
        self._running.set()
        self._stopping = threading.Event()
        self.closed = False

    def pause(self):
        self._running.clear()

    def resume(self):
        self._running.set()

    def stop(self):
        self._stopping.set()
        self._running.set()

    def _record(self, event, **extra):
        return {"step": self.step, "total_steps": self.total, "loss": 1.0 / max(self.step, 1), "accuracy": 0.5,
                "lr": 1e-3, "elapsed_s": 0.01 * self.step, "steps_per_s": 100.0, "eta_s": 0.0, "event": event,
                **extra}

    def steps(self):
        try:
            while self.step < self.total:
                self._running.wait()
                if self._stopping.is_set():
                    yield self._record("stopped", message="stopped by the user")
                    return
                if self.fail_at is not None and self.step + 1 == self.fail_at:
                    raise self.error
                self.step += 1
                yield self._record("step", extras={"inner_loss": 2.0 / self.step})
                if self.step == self.warn_at:
                    yield self._record("warning", message=f"warning: training may be diverging at step {self.step}")
                if self.hold_at is not None and self.step >= self.hold_at:
                    self._stopping.wait()
                if self.step % self.val_every == 0:
                    yield self._record("validation", val_accuracy=0.5 + self.step / 1000, val_ci95=0.02)
            yield self._record(self.final_event, message=self.message)
        finally:
            self.closed = True


@pytest.fixture
def fake_trainer_factory():
    """fake_trainer_factory(**options) -> a trainer_factory for TrainingController / MainWindow."""
    made: list[FakeTrainer] = []

    def factory_for(**options):
        def factory(config, store_home, progress, resume=None):
            trainer = FakeTrainer(config, progress=progress, **options)
            made.append(trainer)
            return trainer

        factory.made = made
        return factory

    return factory_for

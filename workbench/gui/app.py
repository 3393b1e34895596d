"""Start the desktop app: ``workbench`` with no arguments calls :func:`main`.

Cold start: the window shows first (its frame imports neither torch nor the plotting code), and its panels and
views are built during the first event-loop ticks. ``workbench --startup-time [--json]`` measures it: the time from
the process's start (taken from the OS, so it includes the interpreter's start-up) to the first event-loop tick
after the window is shown, and to the window being ready; then it exits.

SIGTERM (and Ctrl+C in the terminal) close the window as its close button does, without asking: training stops
after the current step, the run is saved and its thread joined; the exit code is then 143 (130 for Ctrl+C).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

STARTUP_FLAGS = ("--startup-time", "--json")
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
_IMPORTED = time.time()  # the clock's fallback where the OS does not say when the process started


def ensure_display() -> None:
    """Without a display (CI, ssh) Qt would abort; render offscreen instead (the tour and tests; the interactive
    launch says what is wrong instead, see :func:`main`)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def create_application(argv: list[str] | None = None, icon: bool = True):
    """The QApplication, named for QSettings and the desktop; ``icon=False`` leaves the icon to the window
    (importing it would slow the first show)."""
    from PySide6.QtWidgets import QApplication

    from workbench.gui.settings import APPLICATION, ORGANIZATION

    app = QApplication.instance()
    if app is None:
        ensure_display()
        app = QApplication([sys.argv[0] if sys.argv else "workbench", *(argv or [])])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("Meta-Learning Workbench")
    app.setDesktopFileName("workbench")  # matches packaging/workbench.desktop, so Wayland shows the icon
    if icon:
        set_app_icon(app)
    return app


def set_app_icon(app) -> None:
    try:
        from workbench.gui.dialogs import app_icon

        app.setWindowIcon(app_icon())
    except ImportError:  # pragma: no cover
        pass


def process_age() -> tuple[float, str]:
    """Seconds since this process started, and where that start was taken from: the OS's record of it
    (/proc/self/stat on Linux; it includes the interpreter's start-up) or, elsewhere, this module's import."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start time, in ticks since boot
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started, "process start"
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time() - _IMPORTED, "import of workbench.gui.app"


def startup_problem() -> str | None:
    """Why Qt would abort here (no display, missing xcb libraries), in plain words; None when nothing is wrong or
    the check is not installed. Cheap: no Qt import."""
    try:
        from workbench.gui.platform_check import startup_problem as check
    except ImportError:  # pragma: no cover
        return None
    return check()


class StopSignals:
    """SIGTERM and SIGINT close the window from the event loop. Python runs signal handlers only when the
    interpreter gets control, so the signal's number is written to a socket (``signal.set_wakeup_fd``) that a
    QSocketNotifier watches; the handler itself does nothing."""

    def __init__(self, app, window):
        import socket

        from PySide6.QtCore import QSocketNotifier

        self.app, self.window, self.exit_code = app, window, None
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno())
        self._previous = {signum: signal.signal(signum, lambda *_: None) for signum in EXIT_CODES}
        self._notifier = QSocketNotifier(self._reader.fileno(), QSocketNotifier.Type.Read)
        self._notifier.activated.connect(self._on_signal)

    def _on_signal(self, *_args) -> None:
        try:
            received = self._reader.recv(64)
        except BlockingIOError:
            return
        signals = [signum for signum in received if signum in EXIT_CODES]
        if not signals or self.exit_code is not None:
            return
        self.exit_code = EXIT_CODES[signals[0]]
        self.window.confirm_stop_on_close = lambda: True  # a signal does not wait for an answer
        self.window.close()  # stops training after this step, saves the run, joins its thread
        self.app.exit(self.exit_code)

    def restore(self) -> None:
        self._notifier.setEnabled(False)
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._reader.close()
        self._writer.close()


def _report_startup(window, app, as_json: bool) -> None:
    """At the first event-loop tick: note the time; when the window is ready, print both and quit."""
    shown, clock = process_age()

    def report() -> None:
        ready, _ = process_age()
        if as_json:
            print(json.dumps({"shown_s": round(shown, 3), "ready_s": round(ready, 3), "clock": clock,
                              "platform": app.platformName()}))
        else:
            print(f"shown window in {shown:.2f} s (first event-loop tick); ready in {ready:.2f} s "
                  f"(panels and views built); timed from the {clock}")
        window.shutdown()  # joins the dataset's loading thread; nothing is saved
        app.exit(0)

    window.ready.connect(report)


def main(argv: list[str] | None = None, on_ready=None) -> int:
    """Open the main window and run the event loop; returns the exit code. ``--startup-time`` (with ``--json``)
    prints how long the start took and exits. ``on_ready(window)`` is called once the window is complete."""
    argv = list(argv or [])
    timing, as_json = "--startup-time" in argv, "--json" in argv
    argv = [arg for arg in argv if arg not in STARTUP_FLAGS] if timing else argv
    problem = startup_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    app = create_application(argv, icon=False)
    from PySide6.QtCore import QTimer

    from workbench.gui.main_window import MainWindow

    window = MainWindow(deferred=True)
    window.show()
    if timing:
        QTimer.singleShot(0, lambda: _report_startup(window, app, as_json))
    if on_ready is not None:
        window.ready.connect(lambda: on_ready(window))
    window.ready.connect(lambda: set_app_icon(app))
    QTimer.singleShot(0, window.finish_startup)  # after the first tick: the window is on screen by then
    stop = StopSignals(app, window)
    try:
        code = int(app.exec())
    finally:
        stop.restore()
    return stop.exit_code if stop.exit_code is not None else code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

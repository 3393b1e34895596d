"""GUI responsiveness while meta-training, and the cost of training inside the GUI.

While ProtoNet trains on Omniglot (../shared/data/omniglot; the built-in glyphs with --dataset glyphs or when
Omniglot is absent) in the real main window, a QTimer fires every 10 ms and records how late it fires: the
99th percentile is the event loop's latency (goal <= 16 ms, one frame at 60 Hz). The same config is trained
headless with the core's Trainer, and the steps/s of both are compared (goal: GUI >= 0.95x headless).

    python bench/gui_responsiveness.py [--steps 300] [--dataset omniglot|glyphs] [--threads 1] [--repeats 2]
                                       [--tab Training | --tab Embeddings,Runs | --tab all] [--val-interval 25]

``--tab`` names the tab shown while training (chosen once training has started, as a user clicks it after
Run); ``all`` measures every tab enabled for the experiment, one after another, and prints a table tab -> p99,
max, GUI/headless ratio. Each tab's repeat runs headless, GUI without the latency probe, GUI with it; a last
headless run closes the sequence. A tab's ratio is the median, over its repeats, of its GUI steps/s without the
probe over the mean of the headless runs just before and after, so load from other processes hits both alike.
Latencies are medians over the repeats (max: the worst, often the moment training starts and every view
refreshes its list of runs). "GUI CPU" is the GUI thread's CPU time per second of training. Each line shows the
1-minute load average when it was measured: on a shared machine, latencies grow with it.

Both sides use --threads torch threads (default 1), so the ratio is the cost of the GUI itself: its thread's work
and the GIL it holds meanwhile. With --threads 0 each side chooses as the app does: headless all cores, the GUI's
trainer one fewer (reserve_gui_core), so the ratio then includes the core kept free for the GUI.
--tab all --repeats 2 trains 6 tabs x 2 x 3 + 1 runs: about 20 minutes at 300 steps on 2 cores.

Runs offscreen when there is no display. Uses temporary settings and a temporary run store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
PROBE_MS = 10
LATENCY_GOAL_MS = 16.0
RATIO_GOAL = 0.95


def make_config(args):
    from workbench.core.config import ExperimentConfig

    dataset = {"name": args.dataset, "ways": args.ways, "shots": args.shots, "queries": args.queries}
    if args.dataset == "omniglot":
        dataset["root"] = str(OMNIGLOT)
    return ExperimentConfig.from_dict({
        "name": "bench-gui-responsiveness",
        "dataset": dataset,
        "algorithm": {"name": "protonet", "hparams": {"hidden": args.hidden}},
        # By default validation (and with it the embedding snapshots) and checkpoints are skipped alike by both
        # measurements, as they would dominate a short run; --val-interval turns validation on for both.
        "training": {"steps": args.steps, "val_interval": args.val_interval, "val_episodes": args.val_episodes,
                     "checkpoint_interval": args.steps, "device": "cpu", "threads": args.threads, "seed": 0},
    })


def percentile(values, q):
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else float("nan")


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return float("nan")


def train_headless(config, home: Path) -> dict:
    from workbench.core.runs import RunStore
    from workbench.core.training.trainer import Trainer

    trainer = Trainer(config, RunStore(home), reserve_gui_core=False)
    final = trainer.run_all()
    steps_per_s = final.step / final.elapsed_s
    return {"steps_per_s": steps_per_s, "threads": trainer.threads, "elapsed_s": final.elapsed_s,
            "load": load_average()}


def open_window(config, home: Path, timeout_s: float):
    """The main window with ``config`` applied and its dataset loaded, shown at a desktop size."""
    from workbench.core.runs import RunStore
    from workbench.gui.app import create_application
    from workbench.gui.main_window import MainWindow

    create_application([])
    window = MainWindow(store=RunStore(home), restore=False)
    window.confirm_stop_on_close = lambda: True
    window.resize(1400, 900)
    window.show()
    window.apply_config(config)
    spin_until(lambda: window.dataset_panel.is_ready() and window.revalidate() is None, "the dataset", timeout_s)
    return window


def spin_until(predicate, what: str, timeout_s: float) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        loop = QEventLoop()
        QTimer.singleShot(20, loop.quit)
        loop.exec()


def tab_titles(window) -> tuple[list[str], list[str]]:
    """(every tab's title, the titles of the enabled ones) in tab order."""
    titles = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    return titles, [title for i, title in enumerate(titles) if window.tabs.isTabEnabled(i)]


def enabled_tabs(config, home: Path, timeout_s: float) -> list[str]:
    window = open_window(config, home, timeout_s)
    try:
        return tab_titles(window)[1]
    finally:
        window.close()


class LatencyProbe:
    """A PreciseTimer every PROBE_MS ms in the GUI thread; records how late each tick is, by phase."""

    def __init__(self):
        from PySide6.QtCore import QElapsedTimer, Qt, QTimer

        self.phase = "idle"
        self.lateness: dict[str, list[float]] = {"loading": [], "training": []}
        self.clock = QElapsedTimer()
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(self._tick)
        self._last = 0.0

    def _tick(self) -> None:
        now = self.clock.nsecsElapsed() / 1e6
        if self.phase in self.lateness and self._last:
            self.lateness[self.phase].append(max(0.0, now - self._last - PROBE_MS))
        self._last = now

    def start(self) -> None:
        self.clock.start()
        self.timer.start()


def train_in_gui(config, home: Path, timeout_s: float, probe_latency: bool = True, tab: str = "Training") -> dict:
    from PySide6.QtCore import QEventLoop, QTimer

    window = open_window(config, home, timeout_s)
    titles = tab_titles(window)[0]
    if tab not in titles:
        raise SystemExit(f"--tab {tab!r}: choose one of {', '.join(titles)} (or all)")
    probe = LatencyProbe()
    finals: list[dict] = []
    gui_cpu = {"start": 0.0, "end": 0.0}  # the GUI thread's CPU time (the slots run in it)
    updates = {"count": 0}
    window.training_started.connect(lambda *_: (setattr(probe, "phase", "training"),
                                                gui_cpu.update(start=time.thread_time())))
    window.training_finished.connect(lambda job_id, final: (gui_cpu.update(end=time.thread_time()),
                                                            setattr(probe, "phase", "done"), finals.append(final)))
    window.training_records.connect(lambda job_id, payload: updates.__setitem__("count", updates["count"] + 1))
    if probe_latency:  # the probe wakes the GUI thread 100 times a second, which itself costs training speed
        probe.start()
    probe.phase = "loading"
    # One event loop until training ends: polling here would wake the GUI thread and slow the worker.
    loop = QEventLoop()
    window.training_finished.connect(lambda *_: loop.quit())
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    window.start_training()  # shows the Training tab
    window.tabs.setCurrentIndex(titles.index(tab))  # then the user looks at the tab measured
    loop.exec()
    if not finals:
        raise TimeoutError("timed out waiting for the end of training")
    probe.timer.stop()
    final = finals[0]
    window.close()
    training = probe.lateness["training"]
    return {
        "tab": tab, "probe": probe_latency,
        "steps_per_s": final["step"] / final["elapsed_s"],
        "event": final["event"],
        "p50_ms": percentile(training, 50), "p99_ms": percentile(training, 99), "max_ms": max(training, default=0),
        "probes": len(training), "loading_p99_ms": percentile(probe.lateness["loading"], 99),
        "updates": updates["count"], "elapsed_s": final["elapsed_s"],
        "gui_cpu": (gui_cpu["end"] - gui_cpu["start"]) / max(final["elapsed_s"], 1e-9), "load": load_average(),
    }


def measure(config, scratch: Path, tabs: list[str], args) -> tuple[list[dict], list[dict]]:
    """Alternating runs: per repeat and tab headless, GUI without the probe, GUI with it; one headless run last.
    Returns (the GUI runs with the index of the headless run before each, the headless runs)."""
    headless: list[dict] = []
    gui: list[dict] = []

    def run_headless() -> None:
        headless.append(train_headless(config, scratch / f"home-headless{len(headless)}"))
        h = headless[-1]
        print(f"headless: {h['steps_per_s']:.2f} steps/s ({h['threads']} threads; load {h['load']:.2f})",
              flush=True)

    for repeat in range(args.repeats):
        for tab in tabs:
            run_headless()
            for probe_latency in (False, True):  # the run timed against the headless one comes right after it
                home = scratch / f"home-gui{len(gui)}"
                run = train_in_gui(config, home, args.timeout, probe_latency, tab)
                run["headless_before"] = len(headless) - 1
                gui.append(run)
                latency = (f", latency p99 {run['p99_ms']:.1f} ms, max {run['max_ms']:.1f} ms" if probe_latency
                           else " (no probe)")
                print(f"GUI [{tab}]: {run['steps_per_s']:.2f} steps/s, {run['updates']} record batches "
                      f"({run['updates'] / run['elapsed_s']:.1f}/s), GUI thread CPU {100 * run['gui_cpu']:.0f}%"
                      f"{latency} (load {run['load']:.2f})", flush=True)
    run_headless()
    return gui, headless


def summarize(tabs: list[str], gui: list[dict], headless: list[dict]) -> list[dict]:
    """Per tab: median p50/p99 of the probed runs, their worst max, and the median ratio of the runs without
    the probe to the mean of their neighbouring headless runs."""
    import numpy as np

    rows = []
    for tab in tabs:
        probed = [g for g in gui if g["tab"] == tab and g["probe"]]
        plain = [g for g in gui if g["tab"] == tab and not g["probe"]]
        ratios = []
        for g in plain:
            i = g["headless_before"]
            reference = np.mean([h["steps_per_s"] for h in headless[i:i + 2]])
            ratios.append(g["steps_per_s"] / reference)
        rows.append({
            "tab": tab,
            "p50_ms": float(np.median([g["p50_ms"] for g in probed])),
            "p99_ms": float(np.median([g["p99_ms"] for g in probed])),
            "worst_p99_ms": max(g["p99_ms"] for g in probed),
            "max_ms": max(g["max_ms"] for g in probed),
            "gui_steps_per_s": float(np.median([g["steps_per_s"] for g in plain])),
            "ratio": float(np.median(ratios)), "ratios": ratios,
            "gui_cpu": float(np.median([g["gui_cpu"] for g in probed])),
            "load": float(np.mean([g["load"] for g in probed + plain])),
        })
    return rows


def print_table(rows: list[dict], headless: list[dict]) -> None:
    import numpy as np

    reference = float(np.median([h["steps_per_s"] for h in headless]))
    print()
    print(f"headless median {reference:.2f} steps/s; latency goal p99 <= {LATENCY_GOAL_MS:g} ms, "
          f"throughput goal >= {RATIO_GOAL:g}x")
    header = (f"{'tab':<16}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'GUI steps/s':>13}{'ratio':>8}"
              f"{'GUI CPU':>9}{'load':>6}  goals")
    print(header)
    print("-" * len(header))
    for row in rows:
        met = ("p99 ok" if row["p99_ms"] <= LATENCY_GOAL_MS else "p99 MISSED") + ", " + \
              ("ratio ok" if row["ratio"] >= RATIO_GOAL else "ratio MISSED")
        print(f"{row['tab']:<16}{row['p50_ms']:>8.1f}{row['p99_ms']:>8.1f}{row['max_ms']:>8.1f}"
              f"{row['gui_steps_per_s']:>13.2f}{row['ratio']:>7.2f}x{100 * row['gui_cpu']:>8.0f}%"
              f"{row['load']:>6.2f}  {met}")
    if len(rows) > 1:
        ratios = [ratio for row in rows for ratio in row["ratios"]]
        print(f"all tabs: median GUI/headless ratio {np.median(ratios):.2f}x over {len(ratios)} runs "
              f"(range {min(ratios):.2f}-{max(ratios):.2f}x)")


def print_single(gui: list[dict], headless: list[dict]) -> None:
    """The summary lines of one tab (the worst latency of its probed runs, throughput medians)."""
    import numpy as np

    worst = max((g for g in gui if g["probe"]), key=lambda g: g["p99_ms"])
    gui_rate = float(np.median([g["steps_per_s"] for g in gui if not g["probe"]]))
    reference = float(np.median([h["steps_per_s"] for h in headless]))
    ratio = gui_rate / reference
    print()
    print(f"event-loop latency while training, worst GUI run ({worst['probes']} probes every {PROBE_MS} ms): "
          f"p50 {worst['p50_ms']:.1f} ms, p99 {worst['p99_ms']:.1f} ms, max {worst['max_ms']:.1f} ms "
          f"(goal p99 <= {LATENCY_GOAL_MS:g} ms: {'met' if worst['p99_ms'] <= LATENCY_GOAL_MS else 'NOT met'})")
    if worst["loading_p99_ms"] == worst["loading_p99_ms"]:  # not NaN: the dataset took long enough to sample
        print(f"event-loop latency while the worker builds the trainer: p99 {worst['loading_p99_ms']:.1f} ms")
    verdict = "met" if ratio >= RATIO_GOAL else "NOT met"
    print(f"throughput (medians; GUI runs without the probe): GUI {gui_rate:.2f} steps/s vs headless "
          f"{reference:.2f} steps/s = {ratio:.2f}x (goal >= {RATIO_GOAL:g}x: {verdict})")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("omniglot", "glyphs"), default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--val-episodes", type=int, default=20)
    parser.add_argument("--val-interval", type=int, default=0,
                        help="validate (and take an embedding snapshot) every N steps; 0: only at the end")
    parser.add_argument("--tab", default="Training",
                        help="the main-window tab visible while training (e.g. Embeddings), several separated by "
                             "commas, or 'all': every tab enabled for the experiment")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both runs (0 = automatic: the GUI then keeps one core free)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="per tab, triples of runs: headless, GUI without the latency probe, GUI with it")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if args.dataset is None:
        args.dataset = "omniglot" if OMNIGLOT.is_dir() else "glyphs"
    if args.dataset == "omniglot" and not OMNIGLOT.is_dir():
        parser.error(f"Omniglot is not at {OMNIGLOT}; use --dataset glyphs")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from workbench.gui.app import ensure_display

    ensure_display()
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as scratch:
        scratch = Path(scratch)
        os.environ["WORKBENCH_SETTINGS_DIR"] = str(scratch / "settings")
        config = make_config(args)
        print(f"ProtoNet on {args.dataset}, {args.ways}-way {args.shots}-shot {args.queries}-query, "
              f"{args.steps} steps, hidden {args.hidden}, threads {args.threads or 'auto'}, "
              f"val_interval {args.val_interval}", flush=True)
        from workbench.core.data import load_dataset

        started = time.perf_counter()
        load_dataset(config.dataset)  # every run then uses the in-memory copy
        print(f"dataset loaded in {time.perf_counter() - started:.1f}s", flush=True)
        if args.tab == "all":
            tabs = enabled_tabs(config, scratch / "home-tabs", args.timeout)
            print(f"tabs enabled for this experiment: {', '.join(tabs)}", flush=True)
        else:
            tabs = [tab.strip() for tab in args.tab.split(",") if tab.strip()]
        gui, headless = measure(config, scratch, tabs, args)
    rows = summarize(tabs, gui, headless)
    if len(tabs) == 1:
        print_single(gui, headless)
    print_table(rows, headless)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

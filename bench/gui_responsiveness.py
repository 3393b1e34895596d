"""GUI responsiveness while meta-training, and the cost of training inside the GUI.

While ProtoNet trains on Omniglot (../shared/data/omniglot; the built-in glyphs with --dataset glyphs or when
Omniglot is absent) in the real main window, a QTimer fires every 10 ms and records how late it fires: the
99th percentile is the event loop's latency (goal <= 50 ms). The same config is then trained headless with
the core's Trainer, and the steps/s of both are compared (goal: GUI >= 0.9x headless).

    python bench/gui_responsiveness.py [--steps 300] [--dataset omniglot|glyphs] [--threads 0]

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


def train_headless(config, home: Path) -> dict:
    from workbench.core.runs import RunStore
    from workbench.core.training.trainer import Trainer

    trainer = Trainer(config, RunStore(home), reserve_gui_core=False)
    final = trainer.run_all()
    steps_per_s = final.step / final.elapsed_s
    return {"steps_per_s": steps_per_s, "threads": trainer.threads, "elapsed_s": final.elapsed_s}


def train_in_gui(config, home: Path, timeout_s: float, probe_latency: bool = True, tab: str = "Training") -> dict:
    from PySide6.QtCore import QElapsedTimer, QEventLoop, Qt, QTimer

    from workbench.core.runs import RunStore
    from workbench.gui.app import create_application
    from workbench.gui.main_window import MainWindow

    app = create_application([])
    window = MainWindow(store=RunStore(home), restore=False)
    window.confirm_stop_on_close = lambda: True
    window.resize(1400, 900)
    window.show()
    window.apply_config(config)
    titles = [window.tabs.tabText(i) for i in range(window.tabs.count())]
    if tab not in titles:
        raise SystemExit(f"--tab {tab!r}: choose one of {', '.join(titles)}")
    window.tabs.setCurrentIndex(titles.index(tab))  # the visible tab is the one that redraws as records arrive

    def spin_until(predicate, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            loop = QEventLoop()
            QTimer.singleShot(20, loop.quit)
            loop.exec()

    spin_until(lambda: window.dataset_panel.is_ready() and window.revalidate() is None, "the dataset")

    phase = {"name": "idle"}
    lateness: dict[str, list[float]] = {"loading": [], "training": []}
    clock = QElapsedTimer()
    probe = QTimer()
    probe.setTimerType(Qt.TimerType.PreciseTimer)
    probe.setInterval(PROBE_MS)
    last = {"t": 0.0}

    def on_probe() -> None:
        now = clock.nsecsElapsed() / 1e6
        if phase["name"] in lateness and last["t"]:
            lateness[phase["name"]].append(max(0.0, now - last["t"] - PROBE_MS))
        last["t"] = now

    probe.timeout.connect(on_probe)
    finals: list[dict] = []
    window.training_started.connect(lambda job_id, info: phase.update(name="training"))
    window.training_finished.connect(lambda job_id, final: (phase.update(name="done"), finals.append(final)))
    updates = {"count": 0}
    window.training_records.connect(lambda job_id, payload: updates.__setitem__("count", updates["count"] + 1))

    clock.start()
    if probe_latency:  # the probe wakes the GUI thread 100 times a second, which itself costs training speed
        probe.start()
    phase["name"] = "loading"
    # One event loop until training ends: polling here would wake the GUI thread and slow the worker.
    loop = QEventLoop()
    window.training_finished.connect(lambda *_: loop.quit())
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    window.start_training()
    loop.exec()
    if not finals:
        raise TimeoutError("timed out waiting for the end of training")
    probe.stop()
    final = finals[0]
    window.close()
    training = lateness["training"]
    return {
        "steps_per_s": final["step"] / final["elapsed_s"],
        "event": final["event"],
        "p50_ms": percentile(training, 50), "p99_ms": percentile(training, 99), "max_ms": max(training, default=0),
        "probes": len(training), "loading_p99_ms": percentile(lateness["loading"], 99),
        "updates": updates["count"], "elapsed_s": final["elapsed_s"],
    }


def main(argv=None) -> int:
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
    parser.add_argument("--tab", default="Training", help="the main-window tab visible while training, e.g. Embeddings")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for both runs (0 = automatic: the GUI then keeps one core free)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="pairs of GUI runs (with and without the latency probe), each between headless runs")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    if args.dataset is None:
        args.dataset = "omniglot" if OMNIGLOT.is_dir() else "glyphs"
    if args.dataset == "omniglot" and not OMNIGLOT.is_dir():
        parser.error(f"Omniglot is not at {OMNIGLOT}; use --dataset glyphs")

    from workbench.gui.app import ensure_display

    ensure_display()
    with tempfile.TemporaryDirectory(prefix="workbench-bench-") as scratch:
        os.environ["WORKBENCH_SETTINGS_DIR"] = str(Path(scratch) / "settings")
        config = make_config(args)
        print(f"ProtoNet on {args.dataset}, {args.ways}-way {args.shots}-shot {args.queries}-query, "
              f"{args.steps} steps, hidden {args.hidden}, threads {args.threads or 'auto'}", flush=True)
        from workbench.core.data import load_dataset

        started = time.perf_counter()
        load_dataset(config.dataset)  # both runs then use the in-memory copy
        print(f"dataset loaded in {time.perf_counter() - started:.1f}s", flush=True)
        # Interleaved (headless, GUI with the latency probe, headless, GUI without it, ..., headless) so that load
        # from other processes hits both alike. Throughput is compared on the runs without the probe.
        headless, probed, plain = [], [], []
        for repeat in range(args.repeats):
            for probe_latency in (True, False):
                headless.append(train_headless(config, Path(scratch) / f"home-headless{repeat}{probe_latency}"))
                print(f"headless: {headless[-1]['steps_per_s']:.2f} steps/s ({headless[-1]['threads']} threads)",
                      flush=True)
                run = train_in_gui(config, Path(scratch) / f"home-gui{repeat}{probe_latency}", args.timeout,
                                   probe_latency, args.tab)
                (probed if probe_latency else plain).append(run)
                latency = f", latency p99 {run['p99_ms']:.1f} ms" if probe_latency else " (no probe)"
                print(f"GUI:      {run['steps_per_s']:.2f} steps/s, {run['updates']} record batches "
                      f"({run['updates'] / run['elapsed_s']:.1f}/s){latency}", flush=True)
        headless.append(train_headless(config, Path(scratch) / "home-headless-last"))
        print(f"headless: {headless[-1]['steps_per_s']:.2f} steps/s", flush=True)
    import numpy as np

    gui = max(probed, key=lambda g: g["p99_ms"])  # report the worst latency of the GUI runs
    gui_rate = float(np.median([g["steps_per_s"] for g in plain]))
    reference = float(np.median([h["steps_per_s"] for h in headless]))
    ratio = gui_rate / reference
    print()
    print(f"event-loop latency while training, worst GUI run ({gui['probes']} probes every {PROBE_MS} ms): "
          f"p50 {gui['p50_ms']:.1f} ms, p99 {gui['p99_ms']:.1f} ms, max {gui['max_ms']:.1f} ms "
          f"(goal p99 <= 50 ms: {'met' if gui['p99_ms'] <= 50 else 'NOT met'})")
    if gui["loading_p99_ms"] == gui["loading_p99_ms"]:  # not NaN: the dataset took long enough to sample
        print(f"event-loop latency while the worker builds the trainer: p99 {gui['loading_p99_ms']:.1f} ms")
    print(f"throughput (medians; GUI runs without the probe): GUI {gui_rate:.2f} steps/s vs headless {reference:.2f} steps/s = {ratio:.2f}x "
          f"(goal >= 0.9x: {'met' if ratio >= 0.9 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A soak of GUI training: resident memory, threads and open files over a long live run.

The real main window runs offscreen with the Embeddings tab shown, so the projector follows the live run (after
each validation it re-reads the run's probes.npz in a background thread and projects the new frames) while
ProtoNet trains on the built-in glyphs (or Omniglot), started from the window's own Run action and validating
every --val-interval steps. The run has no step limit, only a time budget past the soak's end, so one run
trains the whole time (should it end anyway, Run starts another). Every --sample-s seconds the script records
the resident memory (VmRSS), the Python and OS thread counts, the open file descriptors, the steps done and the
live Qt objects. Goals (issue 12): RSS growth <= 50 MB and no thread growth after the warm-up. At the end the
window's Stop action stops training (the time it takes to answer is reported), the window closes and every
thread must have been joined.

    python bench/gui_soak.py [--minutes 60] [--dataset glyphs|omniglot] [--sample-s 30] [--out PATH]

Growth is measured from the first sample after the warm-up (--warmup-minutes, default 5 or a fifth of a shorter
soak: allocators and caches fill first) to the last sample before Stop. Thread counts are compared as the
smallest of the three samples after the warm-up and of the last three, since a projector reload may hold a
short-lived thread at the moment of a sample. Progress lines go to stderr, so a background run can be followed:

    nohup python bench/gui_soak.py > soak.log 2>&1 &   then   tail -f soak.log

Writes the full time series as JSON (default bench/out/gui_soak-<time>.json) and exits 1 when a goal is missed.
Runs offscreen when there is no display. Uses temporary settings and a temporary run store.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import REPO_ROOT, environment, write_json  # noqa: E402

OMNIGLOT = REPO.parent / "shared" / "data" / "omniglot"
RSS_GOAL_MB = 50.0
STOP_TIMEOUT_S = 300.0
SETTLE_SAMPLES = 3  # thread counts: the smallest of this many samples (a reload's thread may be alive at one)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- process measurements (Linux /proc; elsewhere what the resource module gives) ------------------------------
def proc_status() -> dict[str, int]:
    """VmRSS (kB) and Threads from /proc/self/status; empty where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        return {}
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"])}


def rss_mb() -> float:
    status = proc_status()
    if status:
        return status["rss_kb"] / 1024
    import resource  # no /proc: the peak instead of the current size (macOS reports bytes)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def os_threads() -> int:
    return proc_status().get("threads", threading.active_count())


def open_fds() -> int:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return -1


def thread_names() -> dict[str, int]:
    """OS threads by name (Qt names its threads after the QThread's objectName), for telling leaks apart."""
    names: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return {t.name: 1 for t in threading.enumerate()}
    for tid in tids:
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        name = name.rstrip("0123456789-") or name  # "BackgroundTask-job-12" and "-13" count together
        names[name] = names.get(name, 0) + 1
    return dict(sorted(names.items()))


def malloc_heap_mb() -> dict[str, float]:
    """glibc's heap (mallinfo2, all arenas): bytes in use and bytes free but kept. RSS growth with "in use" flat is
    memory the allocator keeps (the trainer tells glibc never to trim), not a leak. Empty elsewhere."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = MallInfo2
    info = mallinfo2()
    return {"heap_in_use_mb": round((info.uordblks + info.hblkhd) / 2**20, 2),
            "heap_free_mb": round(info.fordblks / 2**20, 2)}


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# --- the window ------------------------------------------------------------------------------------------------
def make_config(args):
    from workbench.core.config import ExperimentConfig

    dataset = {"name": args.dataset, "ways": args.ways, "shots": 1, "queries": 15}
    if args.dataset == "omniglot":
        dataset["root"] = str(OMNIGLOT)
    budget = args.minutes + 10  # past the soak's end: the bench's Stop ends the run, not the budget
    return ExperimentConfig.from_dict({
        "name": "bench-gui-soak",
        "dataset": dataset,
        "algorithm": {"name": args.algorithm},
        "training": {"steps": 0, "max_minutes": budget, "val_interval": args.val_interval,
                     "val_episodes": args.val_episodes, "checkpoint_interval": 500, "device": "cpu",
                     "threads": args.threads, "seed": 0},
    })


def spin(ms: int) -> None:
    from PySide6.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def spin_until(predicate, what: str, timeout_s: float) -> float:
    """Run the event loop until ``predicate()``; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        spin(20)
    return time.monotonic() - started


def open_window(config, home: Path):
    from workbench.core.runs import RunStore
    from workbench.gui import dialogs
    from workbench.gui.app import create_application
    from workbench.gui.main_window import MainWindow

    dialogs.BLOCKING_DIALOGS = False  # an error dialog must not stop the soak in a nested event loop
    app = create_application([])
    window = MainWindow(store=RunStore(home), restore=False)
    window.confirm_stop_on_close = lambda: True
    window.resize(1400, 900)
    window.show()
    window.apply_config(config)
    spin_until(lambda: window.dataset_panel.is_ready() and window.revalidate() is None, "the dataset", 600)
    return app, window


class Soak:
    """Drives one soak: starts training from the Run action, samples on a timer, keeps training continuous."""

    def __init__(self, window, args, home: Path):
        from PySide6.QtCore import QObject

        self.window, self.args, self.home = window, args, home
        self.qobject_type = QObject
        self.samples: list[dict] = []
        self.step = 0
        self.steps_before = 0  # steps of earlier runs, should one end before the soak does
        self.runs: list[dict] = []
        self.validations = 0
        self.stopping = False
        self.started_at = 0.0
        window.training_started.connect(self._on_started)
        window.training_records.connect(self._on_records)
        window.training_finished.connect(self._on_finished)

    def projector(self):
        return self.window.view("Embeddings")

    def start_run(self) -> None:
        if not self.window.run_action.isEnabled():
            raise RuntimeError(f"the Run action is disabled: {self.window.run_blocked_reason}")
        self.window.run_action.trigger()  # the GUI's own start, with the config from its panels
        self.window.show_view("Embeddings")  # starting shows the Training tab; the soak watches the projector

    def _on_started(self, job_id: int, info: dict) -> None:
        self.runs.append({"job": job_id, "run_id": info.get("run_id"), "started_s": self.elapsed()})
        log(f"training run {info.get('run_id')} started on {info.get('device')}")

    def _on_records(self, job_id: int, payload: dict) -> None:
        self.step = self.steps_before + int((payload.get("last") or {}).get("step") or 0)
        self.validations += sum(e.get("event") == "validation" for e in payload.get("events") or [])

    def _on_finished(self, job_id: int, final: dict) -> None:
        self.steps_before = self.step
        if self.runs:
            self.runs[-1].update(event=final.get("event"), ended_s=self.elapsed())
        if not self.stopping:  # the run ended early: keep training continuous
            log(f"run ended early ({final.get('event')}: {final.get('message', '')}); starting another")
            from PySide6.QtCore import QTimer

            QTimer.singleShot(0, self.start_run)

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at if self.started_at else 0.0

    def sample(self, label: str = "") -> dict:
        view = self.projector()
        data = getattr(view, "data", None) or {}
        started = time.perf_counter()
        record = {
            "t_s": round(self.elapsed(), 2), "label": label, "rss_mb": round(rss_mb(), 2),
            "python_threads": threading.active_count(), "os_threads": os_threads(), "fds": open_fds(),
            "steps": self.step, "validations": self.validations, "frames": len(data.get("steps") or []),
            "runs": len(self.runs), "gc_objects": len(gc.get_objects()),
            "qobjects": len(self.window.findChildren(self.qobject_type)),
            "plot_items": len(view.plot.getPlotItem().items) if view is not None else -1,
            "store_mb": round(folder_mb(self.home), 2), **malloc_heap_mb(), "thread_names": thread_names(),
            "tab": self.window.tabs.tabText(self.window.tabs.currentIndex()),
        }
        record["census_ms"] = round(1000 * (time.perf_counter() - started), 1)  # what sampling costs the GUI
        self.samples.append(record)
        return record

    # --- the soak ------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Train for --minutes from the Run action, sampling every --sample-s seconds."""
        from PySide6.QtCore import QEventLoop, QTimer

        self.started_at = time.monotonic()
        self.sample("before training")
        self.start_run()
        loop = QEventLoop()
        timer = QTimer()
        timer.setInterval(int(self.args.sample_s * 1000))
        timer.timeout.connect(self._tick)
        warmup = QTimer()  # one sample exactly at the end of the warm-up: the baseline of the growth
        warmup.setSingleShot(True)
        warmup.timeout.connect(lambda: self._tick(warmup=True))
        QTimer.singleShot(int(self.args.minutes * 60_000), loop.quit)
        timer.start()
        warmup.start(int(self.args.warmup_s * 1000))
        loop.exec()  # one event loop for the whole soak: polling would wake the GUI thread needlessly
        timer.stop()
        warmup.stop()
        self._tick(label="end")

    def _tick(self, warmup: bool = False, label: str = "training") -> None:
        if warmup and self.args.tracemalloc:
            import tracemalloc

            tracemalloc.start(self.args.tracemalloc)  # traces allocations made from now on
        record = self.sample("warm-up end" if warmup else label)
        base = next((s for s in self.samples if s["label"] == "warm-up end"), None)
        growth = f" ({record['rss_mb'] - base['rss_mb']:+.1f} since warm-up)" if base else " (warming up)"
        rate = self.step / max(record["t_s"], 1e-9)
        heap = ""
        if "heap_free_mb" in record:
            heap = f"  heap {record['heap_in_use_mb']:.0f} used/{record['heap_free_mb']:.0f} free"
        log(f"t={record['t_s'] / 60:5.1f} min  step {record['steps']} ({rate:.1f}/s)  RSS {record['rss_mb']:.1f} MB"
            f"{growth}{heap}  threads {record['python_threads']} py / {record['os_threads']} os  fds {record['fds']}  "
            f"frames {record['frames']}  qobjects {record['qobjects']}  gc {record['gc_objects']}")

    def stop_and_close(self) -> dict:
        """Stop from the Stop action, timing the answer; close the window and check every thread was joined."""
        self.stopping = True
        finished: list[float] = []
        self.window.training_finished.connect(lambda *_: finished.append(time.monotonic()))
        result: dict = {"was_training": self.window.controller.is_running}
        started = time.monotonic()
        if result["was_training"]:
            self.window.stop_action.trigger()
            result["stop_answer_s"] = self._wait(lambda: finished, "training to stop after Stop", STOP_TIMEOUT_S)
        result["event"] = (self.window.last_final or {}).get("event")
        view = self.projector()  # it reads the run's last snapshots once more, then stops following
        result["projector_done_s"] = self._wait(lambda: getattr(view, "live_run_id", None) is None,
                                                "the Embeddings view to read the last snapshots", 60)
        if self.args.png:  # what the soak watched, as the user would have seen it
            self.window.grab().save(self.args.png)
        self.sample("after stop")
        tracemalloc_top = self._tracemalloc_top()
        started = time.monotonic()
        self.window.close()
        result["closed"] = not self.window.isVisible()
        result["shutdown_ok"] = bool(self.window.shutdown())  # closeEvent joined them; this confirms it
        result["close_s"] = round(time.monotonic() - started, 3)
        result["job_threads_left"] = bool(self.window.controller.has_threads)
        spin(300)  # deleteLater of the joined threads runs in the event loop
        self.sample("after close")
        if tracemalloc_top:
            result["tracemalloc_top"] = tracemalloc_top
        return result

    @staticmethod
    def _wait(predicate, what: str, timeout_s: float) -> float | None:
        """Seconds until ``predicate()``, or None (logged) when it timed out: the verdict then says so."""
        try:
            return round(spin_until(predicate, what, timeout_s), 3)
        except TimeoutError as exc:
            log(str(exc))
            return None

    def _tracemalloc_top(self, count: int = 25) -> list[dict]:
        """Where the memory allocated since the warm-up (and still alive) was allocated; --tracemalloc only."""
        import tracemalloc

        if not tracemalloc.is_tracing():
            return []
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        tracemalloc.stop()
        top = snapshot.statistics("traceback")[:count]
        return [{"kb": round(s.size / 1024, 1), "blocks": s.count, "where": [str(f) for f in s.traceback]}
                for s in top]


# --- the verdict -----------------------------------------------------------------------------------------------
def settled(samples: list[dict], key: str) -> int:
    return min(s[key] for s in samples[:SETTLE_SAMPLES])


def summarize(samples: list[dict], warmup_s: float, closing: dict) -> dict:
    import numpy as np

    training = [s for s in samples if s["label"] in ("training", "warm-up end", "end")]
    start = next((i for i, s in enumerate(training) if s["label"] == "warm-up end"), len(training) - 1)
    after = training[start:]
    base, end = after[0], after[-1]
    before = next(s for s in samples if s["label"] == "before training")
    closed = next(s for s in samples if s["label"] == "after close")
    rss = np.array([s["rss_mb"] for s in after])
    # The trend of the second half after the warm-up: a steady leak keeps it up; a plateau brings it near zero.
    late = after[len(after) // 2:]
    t = np.array([s["t_s"] for s in late]) / 3600
    slope = float(np.polyfit(t, [s["rss_mb"] for s in late], 1)[0]) if len(late) >= 3 and np.ptp(t) > 0 \
        else float("nan")
    summary = {
        "warmup_s": warmup_s, "baseline_t_s": base["t_s"], "end_t_s": end["t_s"],
        "rss_mb": {"before_training": before["rss_mb"], "after_warmup": base["rss_mb"], "end": end["rss_mb"],
                   "max": max(s["rss_mb"] for s in training), "max_after_warmup": float(rss.max()),
                   "growth": round(end["rss_mb"] - base["rss_mb"], 2),
                   "late_slope_mb_per_hour": round(slope, 2), "after_close": closed["rss_mb"]},
        "steps": end["steps"], "steps_per_s": round(end["steps"] / max(end["t_s"], 1e-9), 2),
        "validations": end["validations"], "frames_shown": end["frames"], "runs": end["runs"],
        "store_mb": end["store_mb"],
    }
    for key in ("heap_in_use_mb", "heap_free_mb"):
        if key in end:
            summary[key] = {"after_warmup": base[key], "end": end[key], "growth": round(end[key] - base[key], 2),
                            "max": max(s[key] for s in training)}
    for key in ("python_threads", "os_threads", "fds", "qobjects", "gc_objects", "plot_items"):
        first, last = settled(after, key), settled(after[::-1], key)
        summary[key] = {"before_training": before[key], "after_warmup": first, "end": last,
                        "growth": last - first, "max": max(s[key] for s in training), "after_close": closed[key]}
    summary["thread_names"] = {"after_warmup": base["thread_names"], "end": end["thread_names"],
                               "after_close": closed["thread_names"]}
    summary["closing"] = closing
    summary["checks"] = {
        f"RSS growth <= {RSS_GOAL_MB:.0f} MB": summary["rss_mb"]["growth"] <= RSS_GOAL_MB,
        "no Python thread growth": summary["python_threads"]["growth"] <= 0,
        "no OS thread growth": summary["os_threads"]["growth"] <= 0,
        "Stop answered": closing.get("stop_answer_s") is not None,
        "every thread joined at close": closing["shutdown_ok"] and not closing["job_threads_left"],
        "the Embeddings view followed the run": end["frames"] > 0 and end["tab"] == "Embeddings",
    }
    summary["passed"] = all(summary["checks"].values())
    return summary


def report(summary: dict) -> str:
    r, c = summary["rss_mb"], summary["closing"]
    lines = [
        f"RSS: {r['before_training']:.1f} MB before training, {r['after_warmup']:.1f} MB after the warm-up "
        f"(t={summary['baseline_t_s'] / 60:.1f} min), {r['end']:.1f} MB at the end (t={summary['end_t_s'] / 60:.1f} "
        f"min), max {r['max']:.1f} MB; growth {r['growth']:+.1f} MB (trend over the second half of the soak "
        f"{r['late_slope_mb_per_hour']:+.1f} MB/h)",
        f"steps: {summary['steps']} ({summary['steps_per_s']:.1f}/s), {summary['validations']} validations, "
        f"{summary['frames_shown']} embedding frames shown, {summary['runs']} run(s), "
        f"run store {summary['store_mb']:.1f} MB",
    ]
    if "heap_in_use_mb" in summary:
        used, free = summary["heap_in_use_mb"], summary["heap_free_mb"]
        lines.append(f"malloc heap: in use {used['after_warmup']:.1f} -> {used['end']:.1f} MB ({used['growth']:+.1f}), "
                     f"free but kept {free['after_warmup']:.1f} -> {free['end']:.1f} MB ({free['growth']:+.1f})")
    for key in ("python_threads", "os_threads", "fds", "qobjects", "gc_objects"):
        s = summary[key]
        lines.append(f"{key}: {s['before_training']} before training, {s['after_warmup']} after the warm-up, "
                     f"{s['end']} at the end (growth {s['growth']:+d}, max {s['max']}), {s['after_close']} after close")
    answer = c.get("stop_answer_s")
    answer = f"in {answer:.2f} s" if answer is not None else "NOT (timed out or nothing was training)"
    lines.append(f"Stop answered {answer} ({c.get('event')}); window closed "
                 f"in {c['close_s']:.2f} s; threads joined: {c['shutdown_ok'] and not c['job_threads_left']}")
    lines += [f"  [{'met' if ok else 'NOT met'}] {name}" for name, ok in summary["checks"].items()]
    lines.append("PASS" if summary["passed"] else "FAIL")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to train (default 60)")
    parser.add_argument("--dataset", choices=("glyphs", "omniglot"), default="glyphs")
    parser.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples (default 30)")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="growth is measured from here (default 5, or a fifth of a shorter soak)")
    parser.add_argument("--algorithm", default="protonet")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--val-interval", type=int, default=25,
                        help="validate, and so take an embedding snapshot, every N steps (default 25)")
    parser.add_argument("--val-episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: the GUI's automatic choice")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="trace Python allocations from the warm-up on and list the top 25 at the end (slow)")
    parser.add_argument("--out", help="JSON file (default bench/out/gui_soak-<time>.json)")
    parser.add_argument("--png", help="save a picture of the window once training has stopped")
    args = parser.parse_args(argv)
    if args.dataset == "omniglot" and not OMNIGLOT.is_dir():
        parser.error(f"Omniglot is not at {OMNIGLOT}; use --dataset glyphs")
    if args.minutes <= 0 or args.sample_s <= 0:
        parser.error("--minutes and --sample-s must be positive")
    warmup = args.warmup_minutes if args.warmup_minutes is not None else min(5.0, args.minutes / 5)
    args.warmup_s = max(0.0, min(warmup, args.minutes) * 60)
    args.out = args.out or str(REPO_ROOT / "bench" / "out" / f"gui_soak-{time.strftime('%Y%m%d-%H%M%S')}.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from workbench.gui.app import ensure_display

    ensure_display()
    with tempfile.TemporaryDirectory(prefix="workbench-soak-") as scratch:
        home = Path(scratch) / "home"
        os.environ["WORKBENCH_SETTINGS_DIR"] = str(Path(scratch) / "settings")
        os.environ["WORKBENCH_HOME"] = str(home)
        config = make_config(args)
        log(f"{args.algorithm} on {args.dataset}, {args.ways}-way 1-shot, validating every {args.val_interval} "
            f"steps, for {args.minutes:g} min (warm-up {args.warmup_s / 60:g} min), a sample every {args.sample_s:g} s")
        _app, window = open_window(config, home)
        soak = Soak(window, args, home)
        soak.run()
        closing = soak.stop_and_close()
        summary = summarize(soak.samples, args.warmup_s, closing)
    result = {"script": "bench/gui_soak.py", "args": vars(args), "environment": environment(args.threads),
              "config": config.to_dict(), "summary": summary, "samples": soak.samples}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(result, args.out)
    print(report(summary), flush=True)
    log(f"wrote {args.out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

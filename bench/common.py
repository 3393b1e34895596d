"""Helpers shared by the benchmarks: thread setup, the dataset to run on, identical episode streams,
interleaved timing of competing implementations, and printing ratio tables.

Timing on a shared machine: absolute rates move with other people's load, so competing implementations
run in alternating rounds (A B, B A, A B, ...) and the ratio of their totals is what a bench reports. The
process CPU time of each side is recorded too: it barely moves when other processes take the cores away,
so its ratio is a useful cross-check of the wall-clock ratio (with several threads it also counts
OpenMP threads spinning while they wait).
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from workbench.core.data.base import ClassSplit, FewShotDataset  # noqa: E402
from workbench.core.data.episodes import EpisodeSampler  # noqa: E402

try:
    import resource
except ImportError:  # not on Windows
    resource = None

DEFAULT_OMNIGLOT_ROOT = REPO_ROOT.parent / "shared" / "data" / "omniglot"


def set_threads(threads: int) -> int:
    """Same intra-op thread count for every side of a comparison; 0 means all cores."""
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def tune_glibc_malloc() -> bool:
    """The app's own allocator tuning (workbench.core.device.tune_cpu_allocator), applied to both sides."""
    from workbench.core.device import tune_cpu_allocator

    return tune_cpu_allocator()


def minor_page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def load_bench_dataset(name: str, root: str | Path | None = None, image_size: int = 28) -> FewShotDataset:
    """The dataset a bench runs on: real Omniglot from ``root`` or the built-in glyphs; "auto" tries Omniglot
    and falls back to glyphs (saying why on stderr)."""
    from workbench.core.config import DatasetConfig
    from workbench.core.data import load_dataset

    if name == "auto":
        try:
            return load_bench_dataset("omniglot", root, image_size)
        except Exception as error:  # missing data or loader: any reason to fall back is reported
            print(f"Omniglot unavailable ({type(error).__name__}: {error}); using the built-in glyphs",
                  file=sys.stderr)
            return load_bench_dataset("glyphs", root, image_size)
    if name == "omniglot":
        root = Path(root) if root else DEFAULT_OMNIGLOT_ROOT
        config = DatasetConfig(name="omniglot", root=str(root), image_size=image_size)
    elif name == "glyphs":
        config = DatasetConfig(name="glyphs", image_size=image_size)
    else:
        raise SystemExit(f"--dataset {name}: choose auto, omniglot or glyphs")
    return load_dataset(config, use_cache=False)


def grouped_by_class(support_index: torch.Tensor, query_index: torch.Tensor, ways: int) -> list[int]:
    """Our episode layout (all supports, then all queries, class by class) as one list per class
    [support..., query...] back to back: the layout easyfsl's TaskSampler yields."""
    support = support_index.view(ways, -1)
    query = query_index.view(ways, -1)
    return torch.cat([support, query], dim=1).flatten().tolist()


def episode_indices(split: ClassSplit, spec, ways: int, shots: int, queries: int, seed: int,
                    count: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """The first ``count`` draws of ``EpisodeSampler(..., seed)``: a sampler with the same seed draws the same
    episodes live, so a peer replaying these indexes trains on identical episodes."""
    sampler = EpisodeSampler(split, spec, ways, shots, queries, seed=seed)
    return [sampler.sample_indices() for _ in range(count)]


@dataclass
class SideTiming:
    """Wall-clock time of one implementation over the timed rounds."""

    name: str
    units: int = 0  # episodes or tasks
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    page_faults: int = 0
    round_rates: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.units / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_rate(self) -> float:
        return self.units / self.cpu_seconds if self.cpu_seconds > 0 else float("nan")


def interleaved(sides: dict[str, Callable[[], int]], rounds: int, per_round: int) -> dict[str, SideTiming]:
    """Run each side's ``step`` ``per_round`` times per round, alternating the order of sides every round.

    ``step()`` does one unit of work (a meta-step) and returns how many units (episodes/tasks) it processed.
    """
    timings = {name: SideTiming(name) for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            step = sides[name]
            units = 0
            start, cpu_start, faults_start = time.perf_counter(), time.process_time(), minor_page_faults()
            for _ in range(per_round):
                units += step()
            elapsed = time.perf_counter() - start
            timings[name].units += units
            timings[name].seconds += elapsed
            timings[name].cpu_seconds += time.process_time() - cpu_start
            timings[name].page_faults += minor_page_faults() - faults_start
            timings[name].round_rates.append(units / elapsed)
    return timings


def ratio_summary(ours: SideTiming, peer: SideTiming) -> dict[str, float]:
    """Ratio of totals, plus the median of per-round ratios (robust to a burst of load in one round)."""
    per_round = [a / b for a, b in zip(ours.round_rates, peer.round_rates)]
    return {"ratio": ours.rate / peer.rate, "cpu_time_ratio": ours.cpu_rate / peer.cpu_rate,
            "median_round_ratio": statistics.median(per_round),
            "min_round_ratio": min(per_round), "max_round_ratio": max(per_round)}


def environment(threads: int) -> dict:
    import numpy

    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
            "load_average_1m": round(load[0], 2)}


def format_table(headers: list[str], rows: list[list]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join(out)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_json(data: dict, target: str | None) -> None:
    """``target`` "-" prints to stdout; a path writes a file; None does nothing."""
    if target is None:
        return
    text = json.dumps(data, indent=2)
    if target == "-":
        print(text)
    else:
        Path(target).write_text(text + "\n")

"""The CUDA training path: meta-training tasks/s in float32 and with AMP (bfloat16 where the GPU has it, else
float16), with pinned host memory and without, and a check that a training step makes the host wait for the GPU
nowhere (``torch.cuda.set_sync_debug_mode``).

Each setting is a full Trainer (episode sampling, host-to-device copies, the meta-step, records) built from the same
config and seed; the trainers run in alternating rounds of ``--chunk`` steps and each round ends with
``torch.cuda.synchronize()``, so a round's time covers its GPU work. Then, for each algorithm, some steps of the
training loop run under ``set_sync_debug_mode("warn")``: every synchronising call (``.item()``, ``float(tensor)``,
a blocking copy, ``nonzero``) warns, and the script lists where each came from (file and line).

    python bench/gpu_training.py                        # ProtoNet and MAML on the built-in glyphs
    python bench/gpu_training.py --dataset omniglot --steps 300 --algorithms protonet

Without a CUDA GPU it says so and exits (status 1): there is nothing to measure. ``--cpu-dry-run`` runs the same
code on the CPU (float32 only, no pinning, no sync check) to check the script itself.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from workbench.core import device as device_module  # noqa: E402
from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.precision import detect_hardware  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.training.trainer import Trainer  # noqa: E402


def missing_gpu_message() -> str | None:
    """Why the bench cannot run here, or None when a CUDA GPU is present."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda
    why = (f"this torch ({torch.__version__}) was built without CUDA" if not built else
           f"torch {torch.__version__} (CUDA {built}) finds no CUDA device: torch.cuda.is_available() is False")
    return (f"bench/gpu_training.py measures the CUDA training path, but there is no CUDA GPU here: {why}. "
            "Nothing was measured; run it on a machine with an NVIDIA GPU.")


def make_config(algorithm: str, args, precision: str, device: str) -> ExperimentConfig:
    dataset = {"name": args.dataset}
    if args.dataset == "omniglot":
        dataset["root"] = str(args.data_root or common.DEFAULT_OMNIGLOT_ROOT)
    return ExperimentConfig.from_dict({
        "name": f"gpu-{algorithm}-{precision}", "dataset": dataset, "algorithm": {"name": algorithm},
        "training": {"steps": args.steps, "precision": precision, "device": device, "seed": 0,
                     "meta_batch": args.meta_batch, "val_interval": 0, "val_episodes": 10,
                     "checkpoint_interval": args.steps},
    })


class Setting:
    """One trainer and how its host memory is handled."""

    def __init__(self, name: str, trainer: Trainer, pinned: bool):
        self.name, self.trainer, self.pinned = name, trainer, pinned
        self.loop = trainer.steps()
        self.timing = common.SideTiming(name)

    def advance(self, steps: int) -> int:
        """Up to ``steps`` more meta-steps; returns how many ran."""
        original = device_module.pins_memory
        device_module.pins_memory = original if self.pinned else (lambda _device: False)
        done = 0
        try:
            while done < steps and self.trainer.step < self.trainer.config.training.steps:
                record = next(self.loop)
                if record.is_final:
                    raise SystemExit(f"{self.name}: training ended early: {record.message}")
                done += record.event == "step"
        finally:
            device_module.pins_memory = original
        return done

    def finish(self) -> None:
        for _ in self.loop:
            pass


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_settings(settings: list[Setting], chunk: int, device: torch.device) -> None:
    total = settings[0].trainer.config.training.steps
    for setting in settings:  # warm-up: first checkpoint, allocator, kernels
        setting.advance(min(chunk, 5))
    synchronise(device)
    for r in range(math.ceil(total / chunk)):
        for setting in (settings if r % 2 == 0 else settings[::-1]):
            start = time.perf_counter()
            done = setting.advance(chunk)
            synchronise(device)
            elapsed = time.perf_counter() - start
            if done:
                tasks = done * setting.trainer.config.training.meta_batch
                setting.timing.units += tasks
                setting.timing.seconds += elapsed
                setting.timing.round_rates.append(tasks / elapsed)
    for setting in settings:
        setting.finish()


def sync_check(algorithm: str, args, precision: str, store: RunStore, device: str) -> dict:
    """Train some steps with every synchronising CUDA call reported; where they came from and how often."""
    trainer = Trainer(make_config(algorithm, args, precision, device), store)
    loop = trainer.steps()
    for _ in range(3):  # warm-up (the first checkpoint synchronises once, by design)
        next(loop)
    places: Counter[str] = Counter()
    steps = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            while steps < args.sync_steps and trainer.step < trainer.config.training.steps - 1:
                steps += next(loop).event == "step"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for warning in caught:
        if "synchroniz" in str(warning.message):
            places[f"{Path(warning.filename).name}:{warning.lineno}"] += 1
    loop.close()
    return {"algorithm": algorithm, "steps": steps, "syncs": sum(places.values()), "places": dict(places)}


def bench_algorithm(algorithm: str, args, store: RunStore, device: str, amp: str) -> dict:
    first = "fp32, pinned" if device == "cuda" else "fp32"
    settings = [Setting(first, Trainer(make_config(algorithm, args, "fp32", device), store), True)]
    if device == "cuda":
        settings += [Setting(f"{amp}, pinned", Trainer(make_config(algorithm, args, amp, device), store), True),
                     Setting("fp32, not pinned", Trainer(make_config(algorithm, args, "fp32", device), store), False)]
    time_settings(settings, args.chunk, torch.device(device))
    base = settings[0].timing
    return {"algorithm": algorithm, "settings": {s.name: {"tasks_per_s": s.timing.rate,
                                                          "precision": s.trainer.precision.name,
                                                          "vs_first": s.timing.rate / base.rate}
                                                 for s in settings}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=["protonet", "maml"])
    parser.add_argument("--dataset", choices=("glyphs", "omniglot"), default="glyphs")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--steps", type=int, default=200, help="meta-steps per setting")
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=25, help="steps per timed round")
    parser.add_argument("--sync-steps", type=int, default=20, help="steps watched for synchronising calls")
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the script's code on the CPU instead")
    parser.add_argument("--json", nargs="?", const="-", default=None)
    args = parser.parse_args(argv)
    missing = missing_gpu_message()
    if missing and not args.cpu_dry_run:
        print(missing, file=sys.stderr)
        return 1
    device = "cpu" if args.cpu_dry_run else "cuda"
    hardware = detect_hardware(device)
    amp = "bf16" if hardware.bf16 else "fp16"
    rows, syncs = [], []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as home:
        store = RunStore(home)
        for algorithm in args.algorithms:
            rows.append(bench_algorithm(algorithm, args, store, device, amp))
            if device == "cuda":
                syncs.append(sync_check(algorithm, args, amp, store, device))
    print(f"\n{hardware.summary}; torch {torch.__version__}; {args.dataset}, meta-batch {args.meta_batch}, "
          f"{args.steps} steps per setting" + (" (CPU dry run)" if args.cpu_dry_run else ""))
    table = [[row["algorithm"], name, value["precision"], value["tasks_per_s"], f"{value['vs_first']:.2f}x"]
             for row in rows for name, value in row["settings"].items()]
    print(common.format_table(["algorithm", "setting", "precision", "tasks/s", "vs the first"], table))
    for check in syncs:
        where = ", ".join(f"{place} ({count}x)" for place, count in check["places"].items()) or "none"
        print(f"{check['algorithm']}: {check['syncs']} synchronising calls in {check['steps']} training steps "
              f"({amp}); at: {where}")
    common.write_json({"hardware": hardware.to_dict(), "throughput": rows, "sync": syncs}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

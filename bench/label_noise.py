"""Sample weighting under label noise: plain cross-entropy, focal loss, L2RW and Meta-Weight-Net on the same noisy
problems, under the same CPU budget per run.

Each run is a Trainer run of the noisy-labels kind (as `workbench train --kind noisy-labels` makes one), in a
temporary run store: 40 classes of the meta-train split (100 on Omniglot), labels corrupted at the setting's rate,
2 clean meta images and 4 clean test images per class, SGD with momentum 0.9 at 0.05 (every method's default), a
cosine schedule over the time budget. The score is the final classifier's accuracy on the clean test images of
its problem. All four methods see the same problem for a seed (same classes, corrupted labels, meta and test
sets). Cross-entropy is focal loss with γ = 0, which trains step for step like Meta-Weight-Net with
``weighting=false`` (tests/test_focal_loss.py checks it). Under a time budget the meta-gradient methods take
fewer steps (about a third); the table says how many. ``--steps N --minutes 0`` compares at equal steps instead.

    python bench/label_noise.py                                     # glyphs, 3 seeds, 3 minutes a run
    python bench/label_noise.py --dataset omniglot --data-root ../shared/data/omniglot
    python bench/label_noise.py --minutes 0.2 --seeds 1            # a smoke run

The mean ± 95% CI over seeds uses Student's t with seeds - 1 degrees of freedom (4.30 x the standard error for 3
seeds). JSON with every run goes to bench/out/label_noise-<time>.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OMNIGLOT_ROOT, environment, write_json  # noqa: E402  (puts the repo on the path)
from workbench.core.stats import t_two_sided_p  # noqa: E402

# Method -> (its row in the table, the algorithm, its hyperparameters).
METHODS = {
    "ce": ("cross-entropy (focal γ = 0)", "focal-loss", {"gamma": 0.0}),
    "focal": ("focal loss (γ = 2)", "focal-loss", {"gamma": 2.0}),
    "l2rw": ("L2RW", "l2rw", {}),
    "mwn": ("Meta-Weight-Net", "meta-weight-net", {}),
}
SETTINGS = {"uniform-20": ("uniform", 0.2), "uniform-40": ("uniform", 0.4), "flip-40": ("flip", 0.4)}
CLASSES = {"glyphs": 40, "omniglot": 100}


def t_quantile(p: float, df: int) -> float:
    """The two-sided critical value t with P(|T| >= t) = 1 - p, by bisection on the exact tail."""
    low, high = 0.0, 1000.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df) > 1 - p else (low, middle)
    return (low + high) / 2


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% CI over seeds (Student's t); NaN half-width for one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, t_quantile(0.95, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def run_config(args, dataset: str, method: str, setting: str, seed: int) -> dict:
    _, algorithm, hparams = METHODS[method]
    noise_kind, rate = SETTINGS[setting]
    dataset_section = {"name": dataset, "image_size": 28}
    if dataset == "omniglot":
        dataset_section["root"] = str(args.data_root)
    return {"kind": "noisy-labels", "dataset": dataset_section,
            "algorithm": {"name": algorithm, "hparams": {**hparams, "label_noise": rate, "noise_kind": noise_kind,
                                                         "num_classes": CLASSES[dataset]}},
            "training": {"steps": args.steps, "max_minutes": args.minutes, "seed": seed, "threads": args.threads,
                         "device": "cpu", "val_interval": 0, "val_episodes": 1, "checkpoint_interval": 1_000_000}}


def train_one(config_dict: dict, store) -> dict:
    """One Trainer run; the final classifier's clean test accuracy and its last snapshot's mean weights."""
    import workbench.core.training.trainer as trainer_module
    from workbench.core.config import ExperimentConfig
    from workbench.core.training.trainer import Trainer

    start = time.perf_counter()
    trainer = Trainer(ExperimentConfig.from_dict(config_dict), store)
    wall_clock = trainer_module.clock
    trainer_module.clock = time.process_time  # the budget is CPU time: other processes' load does not shorten it
    try:
        final = trainer.run_all()
    finally:
        trainer_module.clock = wall_clock
    algorithm = trainer.algorithm
    weights = algorithm.evaluation_extras(None).get("weights", {})
    return {"test_accuracy": float(algorithm.measure()["test_accuracy"]), "steps": final.step,
            "event": final.event, "train_cpu_s": final.elapsed_s, "wall_s": time.perf_counter() - start,
            "clean_weight": weights.get("clean_mean"), "noisy_weight": weights.get("noisy_mean")}


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, ci = mean_ci([100 * v for v in values])
    return f"{mean:.1f}%" + (f" ± {ci:.1f}" if math.isfinite(ci) else "")


def markdown_table(results: list[dict], datasets: list[str], methods: list[str], settings: list[str]) -> str:
    columns = [(d, s) for d in datasets for s in settings]
    lines = ["| method | " + " | ".join(f"{d}, {s.replace('-', ' ')}%" for d, s in columns) + " | steps (mean) |",
             "|---" * (len(columns) + 2) + "|"]
    for method in methods:
        mine = [r for r in results if r["method"] == method]
        cells = [cell([r["test_accuracy"] for r in mine if (r["dataset"], r["setting"]) == c]) for c in columns]
        steps = statistics.fmean(r["steps"] for r in mine) if mine else float("nan")
        lines.append(f"| {METHODS[method][0]} | " + " | ".join(cells) + f" | {steps:,.0f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("glyphs", "omniglot", "both"), default="glyphs")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_OMNIGLOT_ROOT, help="Omniglot's folder.")
    parser.add_argument("--minutes", type=float, default=3.0, help="CPU budget of each run in minutes (default 3: "
                        "about 600 steps of L2RW or Meta-Weight-Net on glyphs, Meta-Weight-Net's README setting).")
    parser.add_argument("--steps", type=int, default=0, help="Also stop each run after this many steps (0: none).")
    parser.add_argument("--seeds", type=int, default=3, help="Seeds 0..N-1 (default 3).")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated, from: " + ", ".join(METHODS))
    parser.add_argument("--settings", default=",".join(SETTINGS), help="Comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1, help="Torch threads per run (default 1).")
    parser.add_argument("--json", dest="json_path", help="Where to write the JSON (default bench/out/...).")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [m for m in args.methods if m not in METHODS] + [s for s in args.settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown method or setting {unknown[0]!r}")
    if args.minutes <= 0 and args.steps <= 0:
        parser.error("give a budget: --minutes M and/or --steps N")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from workbench.core.runs import RunStore

    datasets = ["glyphs", "omniglot"] if args.dataset == "both" else [args.dataset]
    jobs = [(d, s, seed, m) for d in datasets for s in args.settings for seed in range(args.seeds)
            for m in args.methods]
    # About 5 s a run beyond its budget: building the problem, the final validation and test measurement.
    total = f"at most about {len(jobs) * (args.minutes * 60 + 5) / 60:.0f} min in all" if args.minutes else \
        "time set by the steps"
    print(f"{len(jobs)} runs of at most {args.minutes:g} CPU min" + (f" / {args.steps} steps" if args.steps else "")
          + f" each; {total}", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory(prefix="label-noise-bench-") as home:
        store = RunStore(home)
        for dataset, setting, seed, method in jobs:
            outcome = train_one(run_config(args, dataset, method, setting, seed), store)
            results.append({"dataset": dataset, "setting": setting, "seed": seed, "method": method, **outcome})
            print(f"{dataset} {setting} seed {seed} {METHODS[method][0]}: {100 * outcome['test_accuracy']:.1f}% after "
                  f"{outcome['steps']} steps ({outcome['train_cpu_s']:.0f} CPU s, {outcome['wall_s']:.0f} s wall)",
                  file=sys.stderr)
    table = markdown_table(results, datasets, args.methods, args.settings)
    print(table)
    target = args.json_path or str(ROOT / "bench" / "out" / f"label_noise-{time.strftime('%Y%m%d-%H%M%S')}.json")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    write_json({"bench": "label_noise", "minutes_per_run": args.minutes, "steps_per_run": args.steps,
                "seeds": args.seeds, "environment": environment(args.threads), "runs": results, "table": table},
               target)
    print(f"JSON: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

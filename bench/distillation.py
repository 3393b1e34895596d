"""Dataset distillation (Wang et al. 2018) on 10 glyph classes with 1 image per class: the acceptance measurement.

For each initialisation (``--inits``: fixed, random), the Trainer runs the algorithm's glyph recipe (glyphs-fixed,
glyphs-random: 300 outer steps, or a wall-clock budget of ``--minutes``), then
``workbench.core.evaluation.evaluate_run`` trains ``--networks`` fresh networks (seeds of the evaluation) on each
training set and scores them on the held-out real test images: the distilled set (learned rates), the same number
of random real images (Adam, and also the learned rates), and all the real training images (Adam). Accuracy is
mean ± 95% CI over the networks. The acceptance asks the distilled set to beat the random real images (Adam) by at
least 10 points.

    nice -n 10 python bench/distillation.py [--inits fixed random] [--minutes 0] [--networks 10] [--threads 1]
                                            [--seed 0] [--json PATH] [--keep-runs]

Results go to bench/out/distillation-<time>.json (or ``--json PATH``). Runs are kept in a temporary store unless
``--keep-runs`` (then in the workbench's own run store, where the GUI's Mechanism view shows their images).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, environment, format_table, set_threads, write_json  # noqa: E402

from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.evaluation import evaluate_run  # noqa: E402
from workbench.core.kinds.distillation import DISTILLED, FULL_DATA, RANDOM_REAL, REAL_LEARNED_LRS  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.training import Trainer  # noqa: E402

RECIPES = {"fixed": "glyphs-fixed", "random": "glyphs-random"}
COLUMNS = (DISTILLED, RANDOM_REAL, FULL_DATA, REAL_LEARNED_LRS)
MARGIN = 0.10  # the acceptance: distilled beats random real images by at least 10 points


def train_and_evaluate(init: str, args, store: RunStore) -> dict:
    config = ExperimentConfig.from_dict({
        "kind": "distillation", "dataset": {"name": "glyphs"},
        "algorithm": {"name": "dataset-distillation", "recipe": RECIPES[init]},
        "training": {"max_minutes": args.minutes, "device": "cpu", "threads": args.threads, "seed": args.seed}})
    started, cpu_started = time.monotonic(), time.process_time()
    trainer = Trainer(config, store)
    final = trainer.run_all()
    trained_s = time.monotonic() - started
    result = evaluate_run(trainer.run, store, episodes=args.networks, device="cpu")
    print(f"{init}: {final.message or final.event}; {result.summary()}", flush=True)
    return {"init": init, "recipe": RECIPES[init], "run": trainer.run.id, "steps": trainer.step,
            "training_s": round(trained_s, 1), "evaluation_s": round(result.elapsed_s, 1),
            "cpu_s": round(time.process_time() - cpu_started, 1),
            "best_val_accuracy": trainer.best_val_score, "networks": result.episodes,
            "scores": result.scores, "intervals": result.intervals,
            "margin_over_random_real": result.scores[DISTILLED] - result.scores[RANDOM_REAL]}


def table(rows: list[dict]) -> str:
    headers = ["init", "steps", "CPU s", *COLUMNS, "distilled - random real", "accepted"]
    lines = []
    for row in rows:
        cells = [f"{100 * row['scores'][name]:.1f} ± {100 * row['intervals'][name]:.1f}" for name in COLUMNS]
        margin = row["margin_over_random_real"]
        lines.append([row["init"], row["steps"], row["cpu_s"], *cells, f"{100 * margin:+.1f} points",
                      "yes" if margin >= MARGIN else "no"])
    return format_table(headers, lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inits", nargs="+", default=["fixed", "random"], choices=sorted(RECIPES))
    parser.add_argument("--minutes", type=float, default=0.0, help="Wall-clock training budget per initialisation "
                        "(0: the recipe's 300 steps).")
    parser.add_argument("--networks", type=int, default=10, help="Fresh networks per training set.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="Where to write the results (default bench/out/distillation-<time>.json).")
    parser.add_argument("--keep-runs", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    store = RunStore() if args.keep_runs else RunStore(tempfile.mkdtemp(prefix="distillation-bench-"))
    rows = [train_and_evaluate(init, args, store) for init in args.inits]
    print(table(rows))
    target = args.json or str(REPO_ROOT / "bench" / "out" / f"distillation-{time.strftime('%Y%m%d-%H%M%S')}.json")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    write_json({"environment": environment(args.threads), "minutes": args.minutes, "rows": rows}, target)
    print(f"results: {target}")
    return 0 if all(row["margin_over_random_real"] >= MARGIN for row in rows if row["init"] == "fixed") else 1


if __name__ == "__main__":
    sys.exit(main())

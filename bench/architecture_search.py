"""Architecture search (DARTS, Liu et al. 2019) on a CPU budget: search a cell with second- and first-order DARTS
through ``workbench.core`` (the Trainer with the darts recipes "default" and "first-order", 5-way 1-shot episodes
with a ProtoNet head on the built-in glyphs), then the kind's evaluation: the derived cell, a random cell of the same
space and Conv-4 each retrained from scratch with the same budget and data, and scored on the same fixed 5-way
1-shot test episodes, as accuracy ± 95% CI.

    nice -n 10 python bench/architecture_search.py [--orders 2 1] [--search-steps 100] [--retrain-steps 300]
                                                   [--episodes 200] [--val-episodes 30] [--threads 1] [--seed 0]
                                                   [--json PATH]

Sized for about 10 CPU-minutes on one thread: the search is some 200 times shorter than the paper's (50 epochs of
CIFAR-10) and its network 3 cells of 8 channels instead of 8 of 16, so this shows the machinery and a first
comparison, not the paper's result. The CPU time of each phase is measured with the process clock (it barely moves
when other processes load the machine). Results go to bench/out/architecture_search-<time>.json with the derived
cells drawn beside it (PNG); runs live in a temporary store unless ``--keep-runs``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, environment, format_table, set_threads, write_json  # noqa: E402

from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.evaluation import evaluate_run  # noqa: E402
from workbench.core.models.darts_cell import Genotype, draw_cell  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.training import Trainer  # noqa: E402

RECIPES = {2: "default", 1: "first-order"}


def search_config(order: int, args) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": f"darts order {order}", "kind": "architecture-search",
        "task": {"retrain_steps": args.retrain_steps},
        "dataset": {"name": "glyphs", "ways": 5, "shots": 1, "queries": 15},
        "algorithm": {"name": "darts", "recipe": RECIPES[order]},
        "training": {"steps": args.search_steps, "val_interval": max(1, args.search_steps // 3),
                     "val_episodes": args.val_episodes, "checkpoint_interval": args.search_steps, "device": "cpu",
                     "threads": args.threads, "seed": args.seed},
        "evaluation": {"episodes": args.episodes, "seed": 12345}})


def run_order(order: int, args, store: RunStore, out_stem: Path) -> dict:
    started = time.process_time()
    trainer = Trainer(search_config(order, args), store)
    final = trainer.run_all()
    search_cpu = time.process_time() - started
    started = time.process_time()
    result = evaluate_run(trainer.run, store, device="cpu", checkpoint="last")
    evaluation_cpu = time.process_time() - started
    genotype = Genotype.from_dict(result.genotype)
    drawings = []
    for cell, title in ((genotype.normal, "normal"), (genotype.reduce, "reduction")):
        path = out_stem.with_name(f"{out_stem.name}-order{order}-{title}.png")
        from PIL import Image

        Image.fromarray((draw_cell(cell, f"{title} cell (order {order})", 320) * 255).astype(np.uint8)).save(path)
        drawings.append(str(path.relative_to(REPO_ROOT)))
    print(f"order {order}: {result.summary()}; search {search_cpu:.0f} CPU-s, retraining and test "
          f"{evaluation_cpu:.0f} CPU-s", flush=True)
    return {"order": order, "recipe": RECIPES[order], "run": trainer.run.id, "search_event": final.event,
            "search_steps": trainer.step, "best_val_accuracy": trainer.best_val_score,
            "search_cpu_s": round(search_cpu, 1), "evaluation_cpu_s": round(evaluation_cpu, 1),
            "derived_cell": genotype.text(), "drawings": drawings, "result": result.to_dict()}


def table(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        comparison = row["result"]["comparison"]
        lines.append([f"DARTS order {row['order']}"] + [
            f"{100 * comparison[name]['accuracy']:.2f} ± {100 * comparison[name]['ci95']:.2f}"
            for name in ("derived", "random", "conv4")] + [
            "/".join(f"{comparison[name]['parameters'] // 1000}k" for name in ("derived", "random", "conv4")),
            f"{row['search_cpu_s']:.0f}", f"{row['evaluation_cpu_s']:.0f}"])
    return format_table(["search", "derived cell %", "random cell %", "Conv-4 %", "parameters", "search CPU-s",
                         "retrain+test CPU-s"], lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 1], choices=(1, 2))
    parser.add_argument("--search-steps", type=int, default=100)
    parser.add_argument("--retrain-steps", type=int, default=300)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--val-episodes", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-runs", action="store_true")
    parser.add_argument("--json", default=None, help="Where to write the results (default bench/out/...).")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPO_ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    target = args.json or str(out / f"architecture_search-{stamp}.json")
    env = environment(threads)
    with tempfile.TemporaryDirectory() as home:
        store = RunStore() if args.keep_runs else RunStore(Path(home))
        rows = [run_order(order, args, store, out / f"architecture_search-{stamp}") for order in args.orders]
    print(table(rows))
    total = sum(row["search_cpu_s"] + row["evaluation_cpu_s"] for row in rows)
    print(f"total {total / 60:.1f} CPU-minutes")
    write_json({"bench": "architecture_search", "settings": vars(args), "environment": env,
                "load_average_1m_after": environment(threads)["load_average_1m"], "total_cpu_minutes":
                round(total / 60, 2), "rows": rows}, target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

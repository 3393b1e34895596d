"""Learning to optimize (Andrychowicz et al. 2016): the acceptance measurement of the "learning-to-optimize" kind.

For each optimizee, the LSTM optimizer is trained through ``workbench.core`` (the Trainer with the algorithm's
recipe for it: unrolls of 20 steps over a 100-step horizon) and evaluated like ``workbench eval``: on fixed test
problems for 200 steps, against Adam, SGD, RMSprop and Nesterov with learning rates tuned on training problems. The
table gives each optimizer's loss at 100 steps (the training horizon; acceptance: the learned optimizer below the best
hand-made one) and at 200 steps (generalisation beyond the horizon, reported whatever it is), mean ± 95% CI.

    nice -n 10 python bench/learning_to_optimize.py [--optimizees quadratic mlp] [--steps 300] [--problems 100]
                                                    [--lr 3e-3] [--meta-loss sum|log] [--threads 1] [--seed 0] [--json PATH]

Results go to bench/out/learning_to_optimize-<time>.json (or ``--json PATH``); runs are kept in a temporary store.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import REPO_ROOT, DEFAULT_OMNIGLOT_ROOT, environment, format_table, set_threads, write_json

RECIPES = {"quadratic": ("default", "glyphs"), "mlp": ("mlp", "glyphs"), "convnet": ("convnet", "omniglot")}


def train_and_evaluate(optimizee: str, args) -> dict:
    from workbench.core.config import ExperimentConfig
    from workbench.core.evaluation import evaluate_run
    from workbench.core.training import Trainer

    recipe, dataset = RECIPES[optimizee]
    data = {"kind": "learning-to-optimize", "task": {"optimizee": optimizee},
            "dataset": {"name": dataset, "root": str(DEFAULT_OMNIGLOT_ROOT) if dataset == "omniglot" else ""},
            "algorithm": {"name": "lstm-optimizer", "recipe": recipe,
                          "hparams": {"meta_loss": args.meta_loss} if args.meta_loss else {}},
            "training": {"threads": args.threads, "device": "cpu", "seed": args.seed,
                         **({"steps": args.steps} if args.steps else {}), **({"lr": args.lr} if args.lr else {})},
            "evaluation": {"episodes": args.problems}}
    config = ExperimentConfig.from_dict(data)
    started = time.process_time()
    trainer = Trainer(config)
    final = trainer.run_all()
    trained_cpu = time.process_time() - started
    result = evaluate_run(trainer.run, trainer.store, device="cpu", checkpoint="best")
    return {"optimizee": optimizee, "dataset": dataset, "recipe": recipe, "meta_steps": trainer.step,
            "event": final.event, "best_step": trainer.best_step, "train_cpu_s": round(trained_cpu, 1),
            "total_cpu_s": round(time.process_time() - started, 1), "lr": config.training.lr,
            "result": result.to_dict()}


def table(results: list[dict]) -> str:
    rows = []
    for entry in results:
        data = entry["result"]
        for step in sorted({data["horizon"], data["eval_steps"]}):
            means, cis = data[f"loss_at_{step}"], data[f"ci95_at_{step}"]
            for name in data["series"]:
                lr = data["rates"].get(name)
                label = name if lr is None else f"{name} (lr {lr:.3g})"
                text = "diverged" if means[name] is None else f"{means[name]:.4g} ± {cis[name]:.2g}"
                rows.append([entry["optimizee"], step, label, text])
    return format_table(["optimizee", "step", "optimizer", "loss (mean ± 95% CI)"], rows)


def verdicts(results: list[dict]) -> list[str]:
    lines = []
    for entry in results:
        data = entry["result"]
        for step in sorted({data["horizon"], data["eval_steps"]}):
            best = data[f"best_hand_made_at_{step}"]
            ours, theirs = data[f"loss_at_{step}"]["learned"], data[f"loss_at_{step}"][best]
            beats = data[f"learned_beats_best_at_{step}"]
            lines.append(f"{entry['optimizee']} at {step} steps: learned {ours if ours is None else f'{ours:.4g}'} vs "
                         f"best hand-made {best} {theirs if theirs is None else f'{theirs:.4g}'}: "
                         f"{'below' if beats else 'NOT below'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizees", nargs="+", default=["quadratic", "mlp"], choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=0, help="meta-training problems (0: the recipe's)")
    parser.add_argument("--lr", type=float, default=0.0, help="Adam rate of the LSTM (0: the recipe's)")
    parser.add_argument("--meta-loss", default="", choices=["", "sum", "log"], help="the LSTM's meta_loss "
                        "(empty: the recipe's)")
    parser.add_argument("--problems", type=int, default=100, help="fixed test problems")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["WORKBENCH_HOME"] = home
        for optimizee in args.optimizees:
            entry = train_and_evaluate(optimizee, args)
            results.append(entry)
            print(f"{optimizee}: {entry['meta_steps']} meta-steps ({entry['event']}, best at {entry['best_step']}), "
                  f"{entry['train_cpu_s']} CPU-s training, {entry['total_cpu_s']} CPU-s in all", flush=True)
    print(table(results))
    print("\n".join(verdicts(results)))
    write_json({"bench": "learning_to_optimize", "args": vars(args), "environment": environment(args.threads),
                "results": results}, args.json or str(REPO_ROOT / "bench" / "out" /
                                                      f"learning_to_optimize-{time.strftime('%Y%m%d-%H%M%S')}.json"))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())

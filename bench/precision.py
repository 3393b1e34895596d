"""Mixed precision at equal accuracy: each algorithm meta-trains twice from the same seed, in float32 and in
bfloat16 (``--precision auto`` when auto picks bfloat16 for it, else ``bf16``), on the same episodes for the same
number of steps; both then run on the same fixed test episodes.

The two trainers run side by side in one process, in alternating rounds of ``--chunk`` steps (A B, B A, ...): the
whole training loop is timed (episode sampling, records, the meta-step), and the ratio of their totals is the
speed-up, robust to the load of other processes. Validation runs once, at the end, outside the timed rounds. Each
model is then evaluated in its own precision on the same ``--episodes`` test episodes: accuracy with its 95% CI,
and the paired per-episode difference (bf16 - fp32) with its 95% CI and paired t-test.

    nice -n 5 python bench/precision.py                      # ProtoNet and MAML on Omniglot (Lake split)
    nice -n 5 python bench/precision.py --algorithms maml --steps 300
    python bench/precision.py --dataset glyphs --steps 20 --episodes 50     # a quick look

Setups (Omniglot, 28x28, 5-way 1-shot test episodes): ProtoNet with its "omniglot-10min" recipe (20-way 5-query
training episodes, rotations), MAML with its "omniglot-20min" recipe (meta-batches of 4, one inner step), each cut to
``--steps`` (the cosine schedule follows the cut). On glyphs each algorithm's "default" recipe.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from workbench.core.algorithms import get_algorithm  # noqa: E402
from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.precision import compute_in, resolve_precision  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.stats import mean_ci95, paired_test  # noqa: E402
from workbench.core.training.trainer import Trainer  # noqa: E402

RECIPES = {("protonet", "omniglot"): "omniglot-10min", ("maml", "omniglot"): "omniglot-20min"}
DEFAULT_STEPS = {"protonet": 1500, "maml": 400}
DEFAULT_CHUNK = {"protonet": 50, "maml": 10}


def reduced_request(algorithm: str) -> str:
    """``auto`` when it picks bfloat16 for the algorithm here, else an explicit ``bf16``."""
    cls = get_algorithm(algorithm)
    return "auto" if resolve_precision("auto", "cpu", cls.auto_reduced_precision).name == "bf16" else "bf16"


def make_config(algorithm: str, args, precision: str) -> ExperimentConfig:
    dataset = {"name": args.dataset}
    if args.dataset == "omniglot":
        dataset.update(root=str(args.data_root or common.DEFAULT_OMNIGLOT_ROOT), split="lake")
    steps = args.steps or DEFAULT_STEPS[algorithm]
    return ExperimentConfig.from_dict({
        "name": f"precision-{algorithm}-{precision}", "dataset": dataset,
        "algorithm": {"name": algorithm, "recipe": RECIPES.get((algorithm, args.dataset), "default")},
        "training": {"steps": steps, "precision": precision, "threads": args.threads, "seed": args.seed,
                     "device": "cpu", "val_interval": 0, "val_episodes": 50, "checkpoint_interval": steps},
    })


def train_side_by_side(trainers: dict[str, Trainer], chunk: int) -> dict[str, common.SideTiming]:
    """Advance the trainers' loops in alternating rounds of ``chunk`` steps; time only the steps."""
    loops = {name: trainer.steps() for name, trainer in trainers.items()}
    timings = {name: common.SideTiming(name) for name in trainers}
    names, total = list(trainers), next(iter(trainers.values())).config.training.steps
    for r in range(math.ceil(total / chunk)):
        for name in (names if r % 2 == 0 else names[::-1]):
            trainer, done = trainers[name], 0
            start, cpu_start = time.perf_counter(), time.process_time()
            while done < chunk and trainer.step < total:
                record = next(loops[name])
                if record.is_final:
                    raise SystemExit(f"{name}: training ended early: {record.message}")
                done += record.event == "step"
            elapsed = time.perf_counter() - start
            timing = timings[name]
            timing.units += done * trainer.config.training.meta_batch
            timing.seconds += elapsed
            timing.cpu_seconds += time.process_time() - cpu_start
            timing.round_rates.append(done * trainer.config.training.meta_batch / elapsed)
    for name, loop in loops.items():  # the numbers of the last queued steps, the final validation, the save
        final = [record for record in loop][-1]
        if final.event != "finished":
            raise SystemExit(f"{name}: training ended with '{final.event}': {final.message}")
    return timings


def evaluate(trainer: Trainer, tasks) -> tuple[object, float]:
    start = time.perf_counter()
    with compute_in(trainer.precision.dtype):
        result = trainer.kind.evaluate(trainer.algorithm, tasks, trainer.device)
    return result, len(tasks) / (time.perf_counter() - start)


def bench_algorithm(algorithm: str, args, store: RunStore) -> dict:
    requests = {"fp32": "fp32", "bf16": reduced_request(algorithm)}
    trainers = {name: Trainer(make_config(algorithm, args, request), store) for name, request in requests.items()}
    for name, trainer in trainers.items():
        if (name == "bf16") != trainer.precision.reduced:
            raise SystemExit(f"{algorithm}: the {name} side resolved to {trainer.precision.name} "
                             f"({trainer.precision.reason})")
    timings = train_side_by_side(trainers, args.chunk or DEFAULT_CHUNK[algorithm])
    reference = trainers["fp32"]
    tasks = reference.kind.fixed_tasks(reference.dataset, reference.config, "test", args.episodes,
                                       reference.config.evaluation.seed)
    results, eval_rates = {}, {}
    for name, trainer in trainers.items():
        results[name], eval_rates[name] = evaluate(trainer, tasks)
    difference, p_value = paired_test(results["bf16"].per_episode_accuracy, results["fp32"].per_episode_accuracy)
    _, difference_ci = mean_ci95(np.asarray(results["bf16"].per_episode_accuracy, np.float64)
                                 - np.asarray(results["fp32"].per_episode_accuracy, np.float64))
    config = reference.config
    return {
        "algorithm": algorithm, "recipe": config.algorithm.recipe, "steps": config.training.steps,
        "meta_batch": config.training.meta_batch, "train_ways": config.train_ways,
        "train_queries": config.train_queries, "requests": requests,
        "auto_resolves_to": resolve_precision("auto", "cpu", get_algorithm(algorithm).auto_reduced_precision).name,
        "tasks_per_s": {name: t.rate for name, t in timings.items()},
        **{f"train_{key}": value for key, value in common.ratio_summary(timings["bf16"], timings["fp32"]).items()},
        "eval_episodes_per_s": eval_rates,
        "accuracy": {name: r.accuracy for name, r in results.items()},
        "ci95": {name: r.ci95 for name, r in results.items()},
        "paired_difference": difference, "paired_difference_ci95": difference_ci, "paired_p": p_value,
        "equal_within_ci": abs(results["bf16"].accuracy - results["fp32"].accuracy)
        <= results["bf16"].ci95 + results["fp32"].ci95,
    }


def report(rows: list[dict], args, threads: int) -> None:
    env = common.environment(threads)
    hardware = resolve_precision("auto", "cpu", True).hardware
    print(f"\nMixed precision on {args.dataset} ({hardware.summary}); {threads} thread(s), torch {env['torch']}, "
          f"load average {env['load_average_1m']}; test: {args.episodes} fixed 5-way 1-shot episodes")
    headers = ["algorithm", "steps", "fp32 tasks/s", "bf16 tasks/s", "speed-up", "median round", "fp32 acc",
               "bf16 acc", "bf16 - fp32 (paired)", "p", "auto"]
    table = []
    for row in rows:
        acc, ci = row["accuracy"], row["ci95"]
        table.append([
            row["algorithm"], row["steps"], row["tasks_per_s"]["fp32"], row["tasks_per_s"]["bf16"],
            f"{row['train_ratio']:.2f}x", f"{row['train_median_round_ratio']:.2f}x",
            f"{100 * acc['fp32']:.2f} ± {100 * ci['fp32']:.2f}", f"{100 * acc['bf16']:.2f} ± {100 * ci['bf16']:.2f}",
            f"{100 * row['paired_difference']:+.2f} ± {100 * row['paired_difference_ci95']:.2f}",
            f"{row['paired_p']:.2f}", row["auto_resolves_to"]])
    print(common.format_table(headers, table))
    for row in rows:
        verdict = "equal within their 95% CIs" if row["equal_within_ci"] else "NOT equal within their 95% CIs"
        print(f"{row['algorithm']}: the bf16 side ran as --precision {row['requests']['bf16']}; accuracies "
              f"{verdict}; evaluation {row['eval_episodes_per_s']['fp32']:.1f} vs "
              f"{row['eval_episodes_per_s']['bf16']:.1f} episodes/s (fp32 vs bf16)")


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", default=["protonet", "maml"])
    parser.add_argument("--dataset", choices=("omniglot", "glyphs"), default="omniglot")
    parser.add_argument("--data-root", default=None, help="Omniglot folder (default ../shared/data/omniglot)")
    parser.add_argument("--steps", type=int, default=0, help="meta-steps per side (default: protonet 1500, "
                        "maml 400)")
    parser.add_argument("--chunk", type=int, default=0, help="steps per timed round (default: protonet 50, maml 10)")
    parser.add_argument("--episodes", type=int, default=1000, help="fixed test episodes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", nargs="?", const="-", default=None)
    args = parser.parse_args(argv)
    if not torch.amp.is_autocast_available("cpu") or not resolve_precision("bf16", "cpu", True).reduced:
        raise SystemExit("this CPU has no bfloat16 units (AVX-512 BF16 or AMX); bf16 would fall back to float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="precision-bench-") as home:
        store = RunStore(home)
        for algorithm in args.algorithms:
            rows.append(bench_algorithm(algorithm, args, store))
    threads = torch.get_num_threads()
    report(rows, args, threads)
    common.write_json({"environment": common.environment(threads), "results": rows}, args.json)
    return rows


if __name__ == "__main__":
    main()

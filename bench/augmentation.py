"""Learning to augment (DADA): accuracy of networks trained from scratch with the learned policy, without
augmentation, with RandAugment (torchvision, N = 2, M = 9) and with DADA's starting policy (uniform over the
operations, magnitudes 0.5), on small-data glyph classification and in few-shot training with ProtoNet.

Each search seed is a Trainer run of the augmentation kind (as `workbench train --kind augmentation --algorithm
dada` makes one; the default recipe, ``--search-steps`` steps); the search does not depend on the setting, so one
run serves both. The judging networks are the kind's: small-data, a Conv-4 classifier (32 filters) trained for
150 full-batch Adam steps on ``--ways`` classes x ``--shots`` images and tested on 10 other images per class;
few-shot, a Prototypical Network (Conv-4, 32 filters) trained for 300 5-way 1-shot episodes and tested on 100
5-way 1-shot test episodes. Every arm of one task starts from the same weights and sees the same data. The
baselines do not depend on the search, so they are measured once per task; the learned policy once per task and
search seed. Means are over (search seed, task) pairs for the learned policy and over tasks for the others, with
Student-t 95% CIs; the paired differences compare the learned policy with each other arm on the same tasks.

    python bench/augmentation.py                         # glyphs, both settings, 3 search seeds
    python bench/augmentation.py --dataset omniglot --data-root ../shared/data/omniglot
    python bench/augmentation.py --seeds 1 --small-tasks 2 --few-shot-tasks 1 --search-steps 20   # smoke

JSON with every number goes to bench/out/augmentation-<time>.json (or --json PATH).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_OMNIGLOT_ROOT, environment, write_json  # noqa: E402  (puts the repo on the path)
from label_noise import mean_ci  # noqa: E402
from workbench.core.stats import paired_test  # noqa: E402

ARMS = {"learned": "DADA, learned policy", "uniform": "DADA's start (uniform, magnitude 0.5)",
        "none": "no augmentation", "randaugment": "RandAugment (N 2, M 9)"}


def search_config(args, seed: int) -> dict:
    dataset = {"name": args.dataset, "ways": args.ways, "shots": args.shots, "queries": 10}
    if args.dataset != "glyphs":
        dataset["root"] = str(args.data_root)
    return {"kind": "augmentation", "dataset": dataset,
            "algorithm": {"name": "dada", "recipe": "default", "hparams": {"policy_lr": args.policy_lr}},
            "training": {"steps": args.search_steps, "seed": seed, "threads": 1, "device": "cpu",
                         "val_interval": 0, "val_episodes": 1, "checkpoint_interval": 1_000_000},
            "task": {"protocol": "small-data"}}


def setting_config(config, setting: str):
    """The run's config for judging in ``setting`` (few-shot: 5-way 1-shot episodes, 300 training episodes)."""
    if setting == "small-data":
        return config
    return config.replace(dataset={"ways": 5, "shots": 1, "queries": 15},
                          training={"train_ways": 5, "train_shots": 1, "train_queries": 5},
                          task={"protocol": "few-shot", "eval_steps": 300, "judge_episodes": 100})


def judge(algorithm, config, dataset, count: int, baselines: bool) -> dict[str, list[float]]:
    """Accuracy per task of each arm the kind measures (the learned arm is ``algorithm``'s policy)."""
    from workbench.core.kinds import get_kind

    kind = get_kind("augmentation", {**config.task, "baselines": baselines})
    tasks = kind.fixed_tasks(dataset, config, "test", count, seed=0)
    result = kind.evaluate(algorithm, tasks, "cpu")
    return {arm: result.per_seed[:, i].astype(float).tolist() for i, arm in enumerate(result.arms)}


def search(args, seed: int, store):
    import workbench.core.training.trainer as trainer_module
    from workbench.core.config import ExperimentConfig
    from workbench.core.training.trainer import Trainer

    trainer = Trainer(ExperimentConfig.from_dict(search_config(args, seed)), store)
    wall_clock = trainer_module.clock
    trainer_module.clock = time.process_time
    try:
        final = trainer.run_all()
    finally:
        trainer_module.clock = wall_clock
    return trainer, final


def starting_policy(trainer):
    """A DADA of the run's settings before any step: the uniform policy the search starts from."""
    cls = type(trainer.algorithm)
    return cls(trainer.algorithm.hparams, trainer.model_spec, "cpu")


def summarize(arms: dict[str, list[float]]) -> dict:
    out = {}
    for arm, values in arms.items():
        mean, ci = mean_ci(values)
        out[arm] = {"mean": mean, "ci95": ci, "n": len(values)}
    return out


def paired(learned: list[float], other: list[float], seeds: int) -> dict:
    """Learned minus other on the same tasks (each task's learned accuracy averaged over search seeds)."""
    per_task = np.asarray(learned).reshape(seeds, -1).mean(0)
    if len(per_task) < 2:
        return {"diff": float(per_task.mean() - np.mean(other)), "p_value": float("nan")}
    diff, p_value = paired_test(per_task, np.asarray(other))
    return {"diff": diff, "p_value": p_value}


def table(results: dict, settings: list[str]) -> str:
    lines = ["| augmentation | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
    for arm, title in ARMS.items():
        cells = []
        for setting in settings:
            s = results[setting]["summary"][arm]
            cells.append(f"{100 * s['mean']:.1f}% ± {100 * s['ci95']:.1f} (n {s['n']})")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="glyphs", help="glyphs (default) or omniglot (with --data-root).")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_OMNIGLOT_ROOT, help="Omniglot's folder.")
    parser.add_argument("--seeds", type=int, default=3, help="Search seeds 0..N-1 (default 3).")
    parser.add_argument("--search-steps", type=int, default=300, help="DADA search steps per seed (default 300, "
                        "the default recipe's).")
    parser.add_argument("--policy-lr", type=float, default=0.05, help="DADA's policy learning rate.")
    parser.add_argument("--ways", type=int, default=20, help="Small-data: classes (default 20).")
    parser.add_argument("--shots", type=int, default=2, help="Small-data: training images per class (default 2).")
    parser.add_argument("--small-tasks", type=int, default=6, help="Small-data problems (default 6).")
    parser.add_argument("--few-shot-tasks", type=int, default=3, help="Few-shot ProtoNet seeds (default 3; 0 "
                        "skips the setting).")
    parser.add_argument("--json", dest="json_path", help="Where to write the JSON (default bench/out/...).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from workbench.core import data
    from workbench.core.runs import RunStore

    args = parse_args(argv)
    torch.set_num_threads(1)
    counts = {"small-data": args.small_tasks, "few-shot": args.few_shot_tasks}
    settings = [s for s in counts if counts[s] > 0]
    started = time.process_time()
    results = {s: {"arms": {"learned": []}} for s in settings}
    policies = []
    with tempfile.TemporaryDirectory(prefix="augmentation-bench-") as home:
        store = RunStore(home)
        for seed in range(args.seeds):
            trainer, final = search(args, seed, store)
            policies.append(trainer.algorithm.policy_summary())
            print(f"search seed {seed}: {final.step} steps ({final.elapsed_s:.0f} CPU s); policy "
                  + ", ".join(f"{k} {v['probability']:.3f}" for k, v in policies[-1].items()), file=sys.stderr)
            dataset = data.load_dataset(trainer.config.dataset)
            for setting in settings:
                config = setting_config(trainer.config, setting)
                if seed == 0:  # the baselines and the starting policy do not depend on the search
                    base = judge(starting_policy(trainer), config, dataset, counts[setting], True)
                    results[setting]["arms"].update(uniform=base["learned"], none=base["none"],
                                                    randaugment=base["randaugment"])
                learned = judge(trainer.algorithm, config, dataset, counts[setting], False)["learned"]
                results[setting]["arms"]["learned"] += learned
                print(f"  {setting}: learned {np.mean(learned):.3f} ({time.process_time() - started:.0f} CPU s "
                      "so far)", file=sys.stderr)
    for setting in settings:
        arms = results[setting]["arms"]
        results[setting]["summary"] = summarize(arms)
        results[setting]["paired"] = {other: paired(arms["learned"], arms[other], args.seeds)
                                      for other in ("uniform", "none", "randaugment")}
    text = table(results, settings)
    print(text)
    for setting in settings:
        print(f"{setting}: learned minus " + ", ".join(
            f"{other} {100 * r['diff']:+.1f} points (p {r['p_value']:.3f})"
            for other, r in results[setting]["paired"].items()))
    cpu = time.process_time() - started
    print(f"CPU time: {cpu / 60:.1f} min", file=sys.stderr)
    target = args.json_path or str(ROOT / "bench" / "out" / f"augmentation-{time.strftime('%Y%m%d-%H%M%S')}.json")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    settings_used = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json({"bench": "augmentation", "args": settings_used, "environment": environment(1), "cpu_s": cpu,
                "policies": policies, "results": results, "table": text}, target)
    print(f"JSON: {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

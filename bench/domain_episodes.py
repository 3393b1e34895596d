"""Domain-level episodes on Omniglot (Lake split), 20-way 1-shot: within one alphabet against random alphabets.

Lake et al.'s one-shot runs take 20 characters of one evaluation alphabet; the usual few-shot protocol takes 20
characters from anywhere, often from 20 different alphabets, which are easier to tell apart. This bench trains
ProtoNet and MAML (``--algorithms``) with their recommended Omniglot recipes (``with_recommended_recipe``, as
``workbench train`` builds them) at 20-way 1-shot under one CPU-time budget (``--minutes``; the catalogue bench's
clock: CPU time of meta-training, validations not counted, one thread by default), and tests the best checkpoint
(chosen on the run's fixed validation episodes) on two fixed sets of test episodes of the same count and seed:

* ``within``: every episode's 20 characters come from one evaluation alphabet (``dataset.episode_domains =
  "within"``; the alphabet is chosen uniformly, every evaluation alphabet has at least 20 characters);
* ``any``: 20 characters from anywhere in the meta-test split (the default sampling).

``--train-domains any,within`` also trains each algorithm on within-alphabet episodes (its validation episodes
follow), so both models are tested both ways. With the recipes' rotation augmentation a rotated character stays in
its alphabet, so every background alphabet has enough classes for within-alphabet training.

    python bench/domain_episodes.py [--algorithms protonet,maml] [--minutes 10] [--train-domains any,within]
                                    [--test-episodes 1000] [--threads 1] [--data-root ../shared/data/omniglot]
                                    [--out bench/out/domain-episodes-<time>.json]
    python bench/domain_episodes.py --render bench/out/domain-episodes-<time>.json

Progress goes to stderr; the table (accuracy ± 95% CI over the test episodes) to stdout; everything to ``--out``,
rewritten after every run. Runs live in a temporary run store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from catalogue import CLOCKS, ValidationClock, budget_clock, write_results  # noqa: E402
from common import DEFAULT_OMNIGLOT_ROOT, REPO_ROOT, environment, format_table  # noqa: E402

from workbench.core.algorithms import algorithm_names, get_algorithm  # noqa: E402
from workbench.core.config import ExperimentConfig, with_recommended_recipe  # noqa: E402
from workbench.core.recipes import find_recipe  # noqa: E402
from workbench.core.runs import RunStore, load_model  # noqa: E402
from workbench.core.training import Trainer  # noqa: E402

KIND = "classification"
WAYS, SHOTS = 20, 1
DOMAINS = ("within", "any")  # the test sets, in table order
TITLES = {"within": "within one alphabet", "any": "random alphabets"}


def bench_config(algorithm: str, train_domains: str, args) -> ExperimentConfig:
    """``workbench train --dataset omniglot --algorithm A`` (recommended recipe) at 20-way 1-shot with the budget;
    a recipe that fixes its steps keeps them (the budget caps them), any other trains until the budget."""
    data = {"name": f"domains-{algorithm}-{train_domains}", "kind": KIND, "algorithm": {"name": algorithm},
            "dataset": {"name": "omniglot", "root": str(Path(args.data_root).expanduser().resolve()),
                        "split": "lake", "ways": WAYS, "shots": SHOTS, "episode_domains": train_domains},
            "training": {"max_minutes": args.minutes, "threads": args.threads, "device": "cpu", "seed": args.seed},
            "evaluation": {"seed": args.eval_seed}}
    data = with_recommended_recipe(data)
    recipe_name = data["algorithm"].get("recipe", "")
    recipe = find_recipe(get_algorithm(algorithm), recipe_name, KIND, "omniglot") if recipe_name else None
    if recipe is None or "steps" not in recipe.training:
        data["training"]["steps"] = 0
    config = ExperimentConfig.from_dict(data)
    return ExperimentConfig.from_dict(config.to_dict())


def test_both_ways(trainer: Trainer, store: RunStore, args) -> dict[str, dict[str, Any]]:
    """The best checkpoint on within-alphabet and on random-alphabet test episodes (same count and seed)."""
    loaded = load_model(trainer.run, "cpu", kind="best", store=store)
    results = {}
    for domains in DOMAINS:
        config = trainer.config.replace(dataset={"episode_domains": domains})
        tasks = trainer.kind.fixed_tasks(trainer.dataset, config, "test", args.test_episodes, args.eval_seed)
        cpu, wall = time.process_time(), time.perf_counter()
        result = trainer.kind.evaluate(loaded.algorithm, tasks, "cpu", split="test")
        results[domains] = {"accuracy": result.accuracy, "ci95": result.ci95, "episodes": result.episodes,
                            "queries": result.queries, "seed": result.seed, "domains": result.domains,
                            "alphabets": len(tasks.sampler.domain_names) if domains == "within" else None,
                            "cpu_minutes": (time.process_time() - cpu) / 60,
                            "wall_minutes": (time.perf_counter() - wall) / 60}
    return results


def run_one(algorithm: str, train_domains: str, args, store: RunStore) -> dict[str, Any]:
    row: dict[str, Any] = {"algorithm": algorithm, "train_domains": train_domains, "minutes": args.minutes,
                           "clock": args.clock, "threads": args.threads}
    try:
        config = bench_config(algorithm, train_domains, args)
        row.update(recipe=config.algorithm.recipe, config=config.to_dict())
        validations = ValidationClock(args.clock)
        with budget_clock(validations):
            trainer = Trainer(config, store)
            cpu0 = time.process_time()
            final = trainer.run_all(validations)
            train_cpu = time.process_time() - cpu0
        sampler = trainer.sampler
        row.update(event=final.event, steps=trainer.step, best_step=trainer.best_step,
                   best_val_accuracy=trainer.best_val_score, train_cpu_minutes=train_cpu / 60,
                   validation_cpu_minutes=validations.cpu_s / 60, train_ways=sampler.ways,
                   train_alphabets=len(sampler.domain_names) or None, skipped_alphabets=sampler.skipped_domains,
                   test=test_both_ways(trainer, store, args))
    except Exception as error:  # recorded in the table, never hidden; the other runs go on
        row["error"] = f"{type(error).__name__}: {error}"
        row["traceback"] = traceback.format_exc()
    return row


def _percent(cell: dict[str, Any] | None) -> str:
    return f"{100 * cell['accuracy']:.2f}% ± {100 * cell['ci95']:.2f}" if cell else "—"


def table_rows(data: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row in data["runs"]:
        title = get_algorithm(row["algorithm"]).title if row["algorithm"] in algorithm_names() else row["algorithm"]
        trained = f"{TITLES[row['train_domains']]} ({row.get('recipe') or 'no recipe'})"
        if "error" in row:
            rows.append([title, trained, "failed", "failed", "", "", row["error"]])
            continue
        test = row["test"]
        gap = 100 * (test["within"]["accuracy"] - test["any"]["accuracy"])
        cpu = f"{row['train_cpu_minutes'] - row['validation_cpu_minutes']:.1f} + {row['validation_cpu_minutes']:.1f}"
        steps = f"{row['steps']:,}, best at {row['best_step']:,}" if row.get("best_step") else f"{row['steps']:,}"
        rows.append([title, trained, _percent(test["within"]), _percent(test["any"]), f"{gap:+.1f}", cpu, steps])
    return rows


def render_table(data: dict[str, Any]) -> str:
    args = data["args"]
    headers = ["algorithm", "trained on (recipe)", "test: within one alphabet", "test: random alphabets",
               "within - random (points)", "CPU min (train + val.)", "steps"]
    intro = (f"Omniglot (Lake split), {WAYS}-way {SHOTS}-shot, {args['test_episodes']:,} fixed test episodes per "
             f"column (seed {args['eval_seed']}), accuracy ± 95% CI; budget {args['minutes']:g} "
             f"{CLOCKS[args['clock']]} per run, {args['threads']} thread(s); chance is {100 / WAYS:.0f}%.")
    return intro + "\n\n" + format_table(headers, table_rows(data))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", default="protonet,maml", help="names separated by commas")
    parser.add_argument("--train-domains", default="any", help="any, within or any,within: how each algorithm "
                        "trains (and validates)")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget of each run (see --clock)")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="cpu",
                        help="what the budget counts: " + "; ".join(f"{k}: {v}" for k, v in CLOCKS.items()))
    parser.add_argument("--threads", type=int, default=1, help="training.threads (torch threads)")
    parser.add_argument("--data-root", default=str(DEFAULT_OMNIGLOT_ROOT))
    parser.add_argument("--seed", type=int, default=0, help="training.seed")
    parser.add_argument("--eval-seed", type=int, default=12345, help="seed of the fixed test episodes")
    parser.add_argument("--test-episodes", type=int, default=1000, help="fixed test episodes per test set")
    parser.add_argument("--out", help="JSON results (default bench/out/domain-episodes-<time>.json)")
    parser.add_argument("--render", help="only print the table of this results JSON")
    args = parser.parse_args(argv)
    args.algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    args.train_domains = [d.strip() for d in args.train_domains.split(",") if d.strip()]
    unknown = [a for a in args.algorithms if a not in algorithm_names()]
    if unknown or not args.algorithms:
        parser.error(f"--algorithms: unknown {', '.join(unknown) or '(none given)'}; registered: "
                     f"{', '.join(algorithm_names())}")
    if not args.train_domains or any(d not in DOMAINS for d in args.train_domains):
        parser.error("--train-domains: any, within or any,within")
    if args.test_episodes < 1:
        parser.error("--test-episodes: at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render:
        print(render_table(json.loads(Path(args.render).read_text())))
        return 0
    out = Path(args.out or REPO_ROOT / "bench" / "out" / f"domain-episodes-{time.strftime('%Y%m%d-%H%M%S')}.json")
    data = {"benchmark": "domain-episodes", "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "environment": environment(args.threads),
            "args": {k: v for k, v in vars(args).items() if k != "render"}, "runs": []}
    plan = [(a, d) for d in args.train_domains for a in args.algorithms]
    with tempfile.TemporaryDirectory(prefix="wb-domains-") as home:
        store = RunStore(home)
        for index, (algorithm, domains) in enumerate(plan, 1):
            label = f"[{index}/{len(plan)}] {algorithm} trained on {TITLES[domains]}"
            print(f"{label}: training ({args.minutes:g} {args.clock} min)...", file=sys.stderr, flush=True)
            row = run_one(algorithm, domains, args, store)
            data["runs"].append(row)
            write_results(data, out)
            done = row.get("error") or " / ".join(f"{TITLES[d]} {_percent(row['test'][d])}" for d in DOMAINS)
            print(f"{label}: {done}", file=sys.stderr, flush=True)
    print(render_table(data))
    print(f"results: {out}", file=sys.stderr)
    return 1 if any("error" in r for r in data["runs"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())

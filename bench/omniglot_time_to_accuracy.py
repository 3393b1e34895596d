"""Time to accuracy on real Omniglot (Lake split, 28x28, 5-way 1-shot, 1,000 fixed test episodes), against the
reference implementations under identical choices.

Our side runs the workbench exactly as a user does: `workbench train --dataset omniglot --data-root ...
--algorithm A --max-minutes M` (through the CLI, in its own process), so it trains with the algorithm's recommended
Omniglot recipe and reports the CLI's own test evaluation, with the 20-way 1-shot test beside it (`--also-20way`).

The peer side is the algorithm's reference implementation, written here as its authors' code does it:
- ProtoNet: Snell et al.'s reference (github.com/jakesnell/prototypical-networks): Conv-4, 60-way 1-shot 5-query
  training episodes, squared Euclidean distances, Adam 1e-3 halved every 2,000 episodes.
- MAML: the PyTorch reference loop of higher's examples/maml-omniglot.py (innerloop_ctx, SGD inner optimizer,
  backward per task, Adam outer step) with Finn et al.'s Omniglot hyperparameters: meta-batches of 32 tasks, one
  inner step at 0.4 in training, 3 at test, Adam 1e-3, batch statistics in batch norm (transductive).
`--reference-recipe ours` gives the reference loop our recipe's episode shape, meta-batch and learning rate
instead, so that only the implementation differs.

Identical choices on both sides: the same rotation classes (x4) of the same training characters, the same
checkpoint selection (best accuracy on the same fixed validation episodes, as often in training tasks as our
recipe validates, the time spent validating counted in the budget), the same 1,000 test episodes scored by the same
evaluation code, the same torch thread count and the same wall-clock budget. By default the two sides run at the
same time, one process each (`--threads 1` each on this 2-core machine), so both see the same machine; with
`--sequential` they run one after the other in this process.

    python bench/omniglot_time_to_accuracy.py --algorithm protonet --budget-s 600 --also-20way
    python bench/omniglot_time_to_accuracy.py --algorithm maml --budget-s 1200 --also-20way
    python bench/omniglot_time_to_accuracy.py --algorithm protonet --budget-s 600 --no-reference --threads 0
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import cli  # noqa: E402
from workbench.core.data import EpisodeSampler, load_dataset  # noqa: E402
from workbench.core.device import tune_cpu_allocator  # noqa: E402
from workbench.core.kinds.classification import evaluate_episodes  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.stats import mean_ci95, paired_test  # noqa: E402

DEFAULT_BUDGET_S = {"protonet": 600.0, "maml": 1200.0}


# --- identical choices: the config our CLI builds, its validation and test episodes ------------------------------
def train_argv(algorithm: str, root: str, budget_s: float, threads: int, recipe: str | None,
               test_episodes: int) -> list[str]:
    """`workbench train` with nothing but the dataset, its root, the algorithm and the budget (plus --threads and
    --recipe when asked)."""
    argv = ["train", "--dataset", "omniglot", "--data-root", root, "--algorithm", algorithm, "--max-minutes",
            f"{budget_s / 60:g}"]
    if threads:
        argv += ["--threads", str(threads)]
    if recipe:
        argv += ["--recipe", recipe]
    if test_episodes:
        argv += ["--set", f"evaluation.episodes={test_episodes}"]
    return argv


def our_config(argv: list[str]):
    args = cli.build_parser().parse_args(argv)
    return cli.config_from_args(args)


def episodes_of(config, dataset, split: str, count: int, ways: int | None = None):
    from workbench.core.kinds import get_kind

    return get_kind(config.kind).fixed_tasks(dataset, config, split, count, config.evaluation.seed, ways=ways)


# --- our side -----------------------------------------------------------------------------------------------
def run_ours(argv: list[str], also_20way: bool) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv + ["--json", "--quiet"])
    if code != 0:
        raise SystemExit(f"workbench train failed with exit code {code}")
    report = json.loads(out.getvalue())
    run = RunStore().get(report["run"])
    test = report["test"]
    saved = run.load_evaluation(f"{test['ways']}w{test['shots']}s-{test['episodes']}ep-seed{test['seed']}")
    curve = [(round(r["elapsed_s"], 1), r["val_accuracy"]) for r in map(json.loads, (run.path / "metrics.jsonl")
             .read_text().splitlines()) if r.get("val_accuracy") is not None]
    result = {"train_s": report["elapsed_s"], "steps": report["steps"], "recipe": report["recipe"],
              "end": report["event"], "best_step": report["best_step"], "run": report["run"],
              "accuracy": test["accuracy"], "ci95": test["ci95"], "episodes": test["episodes"],
              "per_episode": saved.per_episode_accuracy.tolist(), "validation": curve}
    if also_20way:
        result["20way"] = evaluate_ours_20way(report["run"])
    return result


def evaluate_ours_20way(run_id: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["eval", run_id, "--ways", "20", "--json", "--quiet"])
    if code != 0:
        raise SystemExit(f"workbench eval --ways 20 failed with exit code {code}")
    data = json.loads(out.getvalue())
    return {"accuracy": data["accuracy"], "ci95": data["ci95"], "episodes": data["episodes"]}


# --- the reference implementations, written as their authors' code does it ---------------------------------
def conv4(ways: int | None = None) -> nn.Sequential:
    """The Conv-4 of both papers as a plain NCHW nn.Sequential (3x3 conv, batch norm, ReLU, 2x2 max-pool, x4)."""
    layers: list[nn.Module] = []
    for c_in in (1, 64, 64, 64):
        layers += [nn.Conv2d(c_in, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    if ways:
        layers.append(nn.Linear(64, ways))
    return nn.Sequential(*layers)


def squared_distances(queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    return (queries.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)  # as in Snell's euclidean_dist


@dataclass
class ReferenceSetting:
    ways: int
    queries: int
    meta_batch: int
    lr: float
    decay_every: int = 0  # ProtoNet: halve the rate every so many episodes
    inner_lr: float = 0.4
    train_inner_steps: int = 1
    test_inner_steps: int = 3

    @staticmethod
    def for_algorithm(algorithm: str, config, which: str) -> "ReferenceSetting":
        if which == "ours":
            t = config.training
            return ReferenceSetting(t.train_ways or config.dataset.ways, t.train_queries or config.dataset.queries,
                                    t.meta_batch, t.lr, 0, config.algorithm.hparams.get("train_inner_lr", 0.4),
                                    config.algorithm.hparams.get("train_inner_steps", 1),
                                    config.algorithm.hparams.get("test_inner_steps", 3))
        if algorithm == "protonet":  # Snell et al.: 60-way, 5 queries, Adam 1e-3 halved every 2,000 episodes
            return ReferenceSetting(60, 5, 1, 1e-3, decay_every=2000)
        return ReferenceSetting(5, 15, 32, 1e-3)  # Finn et al. (Omniglot 5-way): 32 tasks, 1 step at 0.4, 3 at test


class ReferenceBase:
    """What evaluate_episodes asks of an algorithm besides eval/adapt/predict."""

    name = "reference"

    def evaluation_extras(self, episodes) -> dict:
        return {}


class ProtoNetReference(ReferenceBase):
    """Snell et al.'s training step and prototype classifier."""

    def __init__(self, setting: ReferenceSetting):
        self.setting, self.model = setting, conv4()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=setting.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, setting.decay_every or 10**9, gamma=0.5)

    def train_step(self, episodes) -> None:
        self.model.train()
        (episode,) = episodes
        z = self.model(torch.cat([episode.support_x, episode.query_x]))
        support, query = z[: len(episode.support_x)], z[len(episode.support_x):]
        prototypes = torch.stack([support[episode.support_y == c].mean(0) for c in range(episode.ways)])
        loss = F.cross_entropy(-squared_distances(query, prototypes), episode.query_y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    # the interface evaluate_episodes scores (the same code scores our side)
    def eval(self) -> None:
        self.model.eval()

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        z = self.model(support_x)
        return torch.stack([z[support_y == c].mean(0) for c in range(ways)])

    @torch.no_grad()
    def predict(self, prototypes, query_x):
        return F.softmax(-squared_distances(self.model(query_x), prototypes), dim=-1)


class MAMLReference(ReferenceBase):
    """higher's examples/maml-omniglot.py loop: innerloop_ctx with an SGD inner optimizer, backward per task."""

    def __init__(self, setting: ReferenceSetting):
        self.setting, self.model = setting, conv4(ways=setting.ways)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=setting.lr)

    def train_step(self, episodes) -> None:
        import higher

        self.model.train()
        inner = torch.optim.SGD(self.model.parameters(), lr=self.setting.inner_lr)
        self.optimizer.zero_grad()
        for episode in episodes:
            with higher.innerloop_ctx(self.model, inner, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(self.setting.train_inner_steps):
                    diffopt.step(F.cross_entropy(fnet(episode.support_x), episode.support_y))
                loss = F.cross_entropy(fnet(episode.query_x), episode.query_y) / len(episodes)
                loss.backward()
        self.optimizer.step()

    def eval(self) -> None:
        self.model.train()  # batch statistics at test time too, as in the paper

    def adapt(self, support_x, support_y, ways):
        adapted = copy.deepcopy(self.model)
        inner = torch.optim.SGD(adapted.parameters(), lr=self.setting.inner_lr)
        with torch.enable_grad():
            for _ in range(self.setting.test_inner_steps):
                inner.zero_grad()
                F.cross_entropy(adapted(support_x), support_y).backward()
                inner.step()
        return adapted

    @torch.no_grad()
    def predict(self, adapted, query_x):
        return F.softmax(adapted(query_x), dim=-1)


def validate(reference, episodes) -> float:
    rng = torch.get_rng_state()
    accuracy = evaluate_episodes(reference, episodes).accuracy
    torch.set_rng_state(rng)
    return accuracy


def run_reference(argv: list[str], algorithm: str, which: str, budget_s: float, threads: int,
                  also_20way: bool, seed: int = 0) -> dict:
    """Train the reference under the same budget, validate on our validation episodes as often (in training
    tasks) as our recipe does, keep the best state, test it once on our test episodes."""
    tune_cpu_allocator()
    if threads:
        torch.set_num_threads(threads)
    config = our_config(argv)
    dataset = load_dataset(config.dataset)  # the same rotation classes as ours
    setting = ReferenceSetting.for_algorithm(algorithm, config, which)
    torch.manual_seed(seed)
    reference = (ProtoNetReference if algorithm == "protonet" else MAMLReference)(setting)
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, setting.ways, config.dataset.shots,
                             setting.queries, seed=seed)
    val_episodes = episodes_of(config, dataset, "val", config.training.val_episodes)
    our_tasks_between = config.training.val_interval * config.training.meta_batch
    val_every = max(1, round(our_tasks_between / setting.meta_batch))
    best, best_state, curve, steps = -1.0, None, [], 0
    start = time.perf_counter()
    while True:
        spent = time.perf_counter() - start
        if spent >= budget_s or (steps and steps % val_every == 0):
            accuracy = validate(reference, val_episodes)
            curve.append((round(time.perf_counter() - start, 1), accuracy))
            if accuracy > best:
                best, best_state = accuracy, copy.deepcopy(reference.model.state_dict())
            if spent >= budget_s:
                break
        reference.train_step([sampler.sample() for _ in range(setting.meta_batch)])
        steps += 1
    train_s = time.perf_counter() - start
    reference.model.load_state_dict(best_state)
    test_count = config.eval_episodes()  # what the CLI's test uses (the dataset's standard count unless set)
    test = evaluate_episodes(reference, episodes_of(config, dataset, "test", test_count))
    result = {"train_s": train_s, "steps": steps, "setting": setting.__dict__, "accuracy": test.accuracy,
              "ci95": test.ci95, "episodes": test.episodes, "per_episode": test.per_episode_accuracy.tolist(),
              "validation": curve, "best_val": best}
    if also_20way and algorithm == "protonet":  # the reference MAML's head has 5 outputs: no 20-way test
        test20 = evaluate_episodes(reference, episodes_of(config, dataset, "test", test_count, 20))
        result["20way"] = {"accuracy": test20.accuracy, "ci95": test20.ci95, "episodes": test20.episodes}
    return result


# --- running the two sides ---------------------------------------------------------------------------------
def _side(job: tuple) -> dict:
    name, args = job
    os.environ["WORKBENCH_HOME"] = args.pop("home")
    if name == "ours":
        return run_ours(args["argv"], args["also_20way"])
    return run_reference(**args)


def run_sides(jobs: list[tuple[str, dict]], sequential: bool) -> dict[str, dict]:
    if sequential or len(jobs) == 1:
        return {name: _side((name, dict(args))) for name, args in jobs}
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        return dict(zip([name for name, _ in jobs], pool.map(_side, jobs)))


def first_reaching(curve: list, level: float) -> float | None:
    return next((t for t, accuracy in curve if accuracy >= level), None)


def summary_lines(report: dict) -> list[str]:
    lines = []
    for side in ("ours", "reference"):
        if side not in report:
            continue
        r = report[side]
        label = (f"workbench {report['algorithm']} (recipe {r.get('recipe') or 'none'})" if side == "ours" else
                 f"reference ({report['reference_recipe']} hyperparameters)")
        extra = f"; 20-way 1-shot {r['20way']['accuracy']:.2%} ± {r['20way']['ci95']:.2%}" if "20way" in r else ""
        reached = ", ".join(f"{level:.0%} val. at {t:.0f} s" if t is not None else f"{level:.0%} val. never"
                            for level in (0.9, 0.95) for t in [first_reaching(r["validation"], level)])
        lines.append(f"{label}: {r['accuracy']:.2%} ± {r['ci95']:.2%} on {r['episodes']} test episodes after "
                     f"{r['train_s']:.0f} s ({r['steps']} steps; {reached}){extra}")
    if "paired" in report:
        p = report["paired"]
        lines.append(f"ours minus reference on the same episodes: {p['mean']:+.2%} ± {p['ci95']:.2%} "
                     f"(p = {p['p_value']:.2g})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", default="protonet", choices=("protonet", "maml"))
    parser.add_argument("--recipe", help="another of the algorithm's recipes (default: the recommended one)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--budget-s", type=float, help="training wall-clock budget of each side "
                        "(default: 600 for ProtoNet, 1,200 for MAML)")
    parser.add_argument("--reference-recipe", choices=("paper", "ours"), default="paper")
    parser.add_argument("--no-reference", action="store_true", help="only our side")
    parser.add_argument("--sequential", action="store_true", help="one side after the other, not at once")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each side (default: 1 when both run at once, else all cores)")
    parser.add_argument("--also-20way", action="store_true", help="also test both on 20-way 1-shot")
    parser.add_argument("--test-episodes", type=int, default=0, help="fewer test episodes (a quick check; "
                        "default: the CLI's 1,000)")
    parser.add_argument("--ours-from", metavar="JSON", help="take our side from an earlier report of this script "
                        "(same arguments) and run only the reference")
    parser.add_argument("--json", metavar="PATH", help="write the full report (with per-episode accuracies)")
    args = parser.parse_args(argv)
    budget = args.budget_s or DEFAULT_BUDGET_S[args.algorithm]
    together = not args.sequential and not args.no_reference
    threads = args.threads if args.threads is not None else (1 if together else 0)
    home = tempfile.mkdtemp(prefix="wb-bench-")  # keep bench runs apart from the user's
    argv_ours = train_argv(args.algorithm, args.data_root, budget, threads, args.recipe, args.test_episodes)
    jobs = [] if args.ours_from else [("ours", {"home": home, "argv": argv_ours, "also_20way": args.also_20way})]
    if not args.no_reference:
        jobs.append(("reference", {"home": home, "argv": argv_ours, "algorithm": args.algorithm,
                                   "which": args.reference_recipe, "budget_s": budget, "threads": threads,
                                   "also_20way": args.also_20way}))
    load = os.getloadavg()[0]
    sides = run_sides(jobs, not together)
    if args.ours_from:
        sides["ours"] = json.loads(Path(args.ours_from).read_text())["ours"]
    report = {"algorithm": args.algorithm, "budget_s": budget, "threads_per_side": threads or "all",
              "together": together, "reference_recipe": args.reference_recipe, "load_at_start": load,
              "torch": torch.__version__, **sides}
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    if "reference" in sides:
        ours, peer = np.asarray(sides["ours"]["per_episode"]), np.asarray(sides["reference"]["per_episode"])
        mean, ci95 = mean_ci95(ours - peer)
        report["paired"] = {"mean": mean, "ci95": ci95, "p_value": paired_test(ours, peer)[1]}
    for line in summary_lines(report):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

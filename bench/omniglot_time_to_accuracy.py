"""Time to accuracy on real Omniglot (Lake split, 28x28, 5-way 1-shot, 1,000 fixed test episodes).

Runs the workbench (through the same Trainer and evaluation the CLI uses) and, in the same process, a plain
60-line ProtoNet script (Conv-4, 20-way 1-shot episodes, Adam 1e-3, no schedule) as the peer, each for a
wall-clock budget, then evaluates both on identical test episodes and prints accuracy, training time and
their ratio.

    python bench/omniglot_time_to_accuracy.py --algorithm protonet --budget-s 600
    python bench/omniglot_time_to_accuracy.py --algorithm maml --budget-s 1200 --no-reference
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.data import FixedEpisodes, load_dataset  # noqa: E402
from workbench.core.device import tune_cpu_allocator  # noqa: E402
from workbench.core.evaluation import evaluate  # noqa: E402
from workbench.core.runs import RunStore  # noqa: E402
from workbench.core.training import Trainer  # noqa: E402

# Settings per algorithm: what a user would pick for a 10-20 minute CPU budget.
RECIPES = {
    "protonet": {"training": {"train_ways": 20, "train_queries": 5, "steps": 6000, "lr_schedule": "cosine"},
                 "dataset": {"rotations": True}},
    "maml": {"training": {"meta_batch": 4, "steps": 4000, "lr_schedule": "constant"}, "dataset": {"rotations": True}},
    "fomaml": {"training": {"meta_batch": 4, "steps": 6000, "lr_schedule": "constant"},
               "dataset": {"rotations": True}},
}


def train_workbench(algorithm: str, root: str, budget_s: float, threads: int, val_interval: int,
                    overrides: dict | None = None) -> dict:
    recipe = RECIPES[algorithm]
    config = ExperimentConfig.from_dict({
        "name": f"bench-{algorithm}",
        "dataset": {"name": "omniglot", "root": root, "split": "lake", "ways": 5, "shots": 1, "queries": 15,
                    **recipe["dataset"]},
        "algorithm": {"name": algorithm, "hparams": {**recipe.get("hparams", {}), **(overrides or {})}},
        "training": {"max_minutes": budget_s / 60, "val_interval": val_interval, "val_episodes": 200,
                     "threads": threads, "checkpoint_interval": 1000, **recipe["training"]},
    })
    store = RunStore(Path(tempfile.mkdtemp(prefix="wb-bench-")))
    trainer = Trainer(config, store)
    start = time.perf_counter()
    final = trainer.run_all()
    seconds = time.perf_counter() - start
    return {"trainer": trainer, "train_s": seconds, "steps": trainer.step, "event": final.event,
            "best_val": trainer.best_val_accuracy}


class PlainConv4(nn.Module):
    def __init__(self):
        super().__init__()
        def block(c_in):
            return nn.Sequential(nn.Conv2d(c_in, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        self.net = nn.Sequential(block(1), block(64), block(64), block(64))

    def forward(self, x):
        return self.net(x).flatten(1)


def train_reference(dataset, budget_s: float, seed: int = 0) -> tuple[nn.Module, float, int]:
    """The plain script: 20-way 1-shot 15-query episodes, Adam 1e-3, no schedule, squared Euclidean ProtoNet."""
    from workbench.core.data import EpisodeSampler

    torch.manual_seed(seed)
    model = PlainConv4()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = EpisodeSampler(dataset.split("train"), dataset.spec, 20, 1, 15, seed=seed)
    start, steps = time.perf_counter(), 0
    model.train()
    while time.perf_counter() - start < budget_s:
        ep = sampler.sample()
        z = model(torch.cat([ep.support_x, ep.query_x]))
        protos = z[: len(ep.support_x)]  # 1-shot: the support embedding is the prototype
        logits = -torch.cdist(z[len(ep.support_x):], protos).pow(2)
        loss = F.cross_entropy(logits, ep.query_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    return model, time.perf_counter() - start, steps


@torch.no_grad()
def evaluate_plain(model: nn.Module, episodes: FixedEpisodes) -> tuple[float, float]:
    model.eval()
    accs = []
    for ep in episodes:
        z_s, z_q = model(ep.support_x), model(ep.query_x)
        pred = (-torch.cdist(z_q, z_s).pow(2)).argmax(1)
        accs.append(float((pred == ep.query_y).float().mean()))
    t = torch.tensor(accs)
    return float(t.mean()), float(1.96 * t.std(unbiased=False) / len(accs) ** 0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithm", choices=sorted(RECIPES), default="protonet")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock budget of each side")
    parser.add_argument("--reference-budget-s", type=float, default=438.0,
                        help="the plain script's budget (438 s is where it reached 96.9%% here)")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-script peer")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: all cores)")
    parser.add_argument("--val-interval", type=int, default=500)
    parser.add_argument("--episodes", type=int, default=1000, help="fixed 5-way 1-shot test episodes")
    parser.add_argument("--hparam", action="append", default=[], metavar="NAME=VALUE",
                        help="override one of the algorithm's hyperparameters (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.hparam)

    tune_cpu_allocator()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    ours = train_workbench(args.algorithm, args.data_root, args.budget_s, args.threads, args.val_interval,
                           overrides)
    trainer = ours["trainer"]
    test = FixedEpisodes(trainer.dataset.split("test"), trainer.dataset.spec, 5, 1, 15, args.episodes, seed=2024)
    best = trainer.run.load_checkpoint("best")
    trainer.algorithm.load_state_dict(best["state"])
    result = evaluate(trainer.algorithm, test, trainer.device)
    report = {"algorithm": args.algorithm, "hparams": trainer.config.algorithm.hparams, "ours": {"train_s": round(ours["train_s"], 1), "steps": ours["steps"],
                                                   "accuracy": result.accuracy, "ci95": result.ci95,
                                                   "end": ours["event"]}}
    if not args.no_reference:
        plain_set = load_dataset(trainer.config.dataset.__class__(name="omniglot", root=args.data_root,
                                                                   split="lake"))
        plain_test = FixedEpisodes(plain_set.split("test"), plain_set.spec, 5, 1, 15, args.episodes, seed=2024)
        model, seconds, steps = train_reference(plain_set, args.reference_budget_s)
        acc, ci = evaluate_plain(model, plain_test)
        report["reference"] = {"train_s": round(seconds, 1), "steps": steps, "accuracy": acc, "ci95": ci}
        report["time_ratio_reference_over_ours"] = round(seconds / ours["train_s"], 2)
    if args.json:
        print(json.dumps(report))
    else:
        o = report["ours"]
        print(f"workbench {args.algorithm}: {o['accuracy']:.2%} ± {o['ci95']:.2%} after {o['train_s']:.0f} s "
              f"({o['steps']} steps, ended by {o['end']})")
        if "reference" in report:
            r = report["reference"]
            print(f"plain script:       {r['accuracy']:.2%} ± {r['ci95']:.2%} after {r['train_s']:.0f} s "
                  f"({r['steps']} steps)")
            print(f"training time, plain / workbench: {report['time_ratio_reference_over_ours']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Time to accuracy on real Omniglot (Lake split, 28x28, 5-way 1-shot, 1,000 fixed test episodes).

Runs the workbench exactly as a user does: `workbench train --dataset omniglot --data-root ... --algorithm A
--max-minutes M` (in this process, through the CLI), so it trains with the algorithm's recommended recipe for
Omniglot and reports the CLI's own test evaluation. For ProtoNet it also runs, in the same process, a plain
60-line ProtoNet script (Conv-4, 20-way 1-shot episodes, Adam 1e-3, no schedule) as the peer, and evaluates
it on the same 1,000 test episodes (the run's evaluation seed).

    python bench/omniglot_time_to_accuracy.py --algorithm protonet --budget-s 600
    python bench/omniglot_time_to_accuracy.py --algorithm maml --budget-s 1200 --no-reference
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from workbench import cli  # noqa: E402
from workbench.core.config import DatasetConfig  # noqa: E402
from workbench.core.data import FixedEpisodes, load_dataset  # noqa: E402
from workbench.core.device import tune_cpu_allocator  # noqa: E402

def train_workbench(algorithm: str, root: str, budget_s: float, threads: int, recipe: str | None) -> dict:
    """`workbench train` with nothing but the dataset, its root, the algorithm and the budget (and --threads when
    asked, --recipe when another recipe is compared); returns the CLI's JSON report."""
    argv = ["train", "--dataset", "omniglot", "--data-root", root, "--algorithm", algorithm, "--max-minutes",
            f"{budget_s / 60:g}", "--json", "--quiet"]
    if threads:
        argv += ["--threads", str(threads)]
    if recipe:
        argv += ["--recipe", recipe]
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"workbench train failed with exit code {code}")
    report = json.loads(out.getvalue())
    report["wall_s"] = time.perf_counter() - start
    return report


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
    parser.add_argument("--algorithm", default="protonet", help="any algorithm with an Omniglot recipe")
    parser.add_argument("--recipe", help="another of the algorithm's recipes (default: the recommended one)")
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--budget-s", type=float, default=600.0, help="training wall-clock budget of each side")
    parser.add_argument("--reference-budget-s", type=float, default=438.0,
                        help="the plain script's budget (438 s is where it reached 96.9%% here)")
    parser.add_argument("--no-reference", action="store_true", help="skip the plain-script peer")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0: all cores)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="wb-bench-"))  # keep bench runs apart

    ours = train_workbench(args.algorithm, args.data_root, args.budget_s, args.threads, args.recipe)
    test = ours["test"]
    report = {"algorithm": args.algorithm, "recipe": ours["recipe"], "run": ours["path"],
              "ours": {"train_s": round(ours["elapsed_s"], 1), "steps": ours["steps"], "accuracy": test["accuracy"],
                       "ci95": test["ci95"], "end": ours["event"], "episodes": test["episodes"],
                       "seed": test["seed"]}}
    if not args.no_reference and args.algorithm == "protonet":
        tune_cpu_allocator()
        torch.set_num_threads(args.threads or torch.get_num_threads())
        plain_set = load_dataset(DatasetConfig(name="omniglot", root=args.data_root, split="lake"))
        plain_test = FixedEpisodes(plain_set.split("test"), plain_set.spec, 5, 1, 15, test["episodes"],
                                   seed=test["seed"])
        model, seconds, steps = train_reference(plain_set, args.reference_budget_s)
        acc, ci = evaluate_plain(model, plain_test)
        report["reference"] = {"train_s": round(seconds, 1), "steps": steps, "accuracy": acc, "ci95": ci}
    if args.json:
        print(json.dumps(report))
    else:
        o = report["ours"]
        print(f"workbench {args.algorithm} (recipe {report['recipe'] or 'none'}): {o['accuracy']:.2%} ± "
              f"{o['ci95']:.2%} on {o['episodes']} test episodes after {o['train_s']:.0f} s of training "
              f"({o['steps']} steps, ended by {o['end']})")
        if "reference" in report:
            r = report["reference"]
            print(f"plain script:       {r['accuracy']:.2%} ± {r['ci95']:.2%} after {r['train_s']:.0f} s "
                  f"({r['steps']} steps)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

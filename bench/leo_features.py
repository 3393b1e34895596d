"""LEO against simple classifiers on the same frozen features.

LEO (Rusu et al. 2019) adapts on the features of a pre-trained backbone, so it is measured on its own terms: one
run trains LEO through the workbench (its recipe: pre-training the fine-tune baseline's Conv-4 on all meta-train
classes, then meta-training LEO on the frozen features), then on the same fixed test episodes and the same
features it reports

- LEO (latent steps, then fine-tuning steps on the decoded weights),
- a prototype classifier (ProtoNet's rule, nearest class mean; LEO's own ``protonet_same_features`` extra),
- a linear head fitted on the support features (the fine-tune baseline's adaptation, 100 Adam steps).

The paper's numbers (WRN-28-10 features, miniImageNet 5-way) are 61.76 ± 0.08% (1-shot) and 77.59 ± 0.12% (5-shot);
this script runs on Conv-4 features of the workbench's datasets, so only the comparison on the same features means
something.

    python bench/leo_features.py [--dataset glyphs|omniglot] [--data-root PATH] [--shots 1] [--minutes 3]
                                 [--pretrain-steps N] [--steps N] [--episodes 600] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_OMNIGLOT_ROOT, REPO_ROOT, environment, format_table, write_json  # noqa: E402

from workbench.core.algorithms import get_algorithm  # noqa: E402
from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.data import load_dataset  # noqa: E402
from workbench.core.evaluation import evaluate_run  # noqa: E402
from workbench.core.runs import RunStore, load_model  # noqa: E402
from workbench.core.training import Trainer  # noqa: E402


def leo_config(args) -> ExperimentConfig:
    dataset = {"name": args.dataset, "ways": args.ways, "shots": args.shots}
    if args.dataset == "omniglot":
        dataset.update(root=str(args.data_root or DEFAULT_OMNIGLOT_ROOT), rotations=True)
    training = {"threads": args.threads, "device": "cpu", "seed": args.seed}
    if args.steps:
        training["steps"] = args.steps
    if args.minutes:
        training.update(max_minutes=args.minutes, steps=args.steps or 0)
    hparams = {} if args.pretrain_steps is None else {"pretrain_steps": args.pretrain_steps}
    return ExperimentConfig.from_dict({
        "name": f"bench-leo-{args.dataset}-{args.ways}w{args.shots}s", "dataset": dataset,
        "algorithm": {"name": "leo", "recipe": "default", "hparams": hparams}, "training": training,
        "evaluation": {"episodes": args.episodes}})


def linear_head_on_features(leo, tasks) -> tuple[float, float]:
    """The fine-tune baseline's adaptation (a new linear head, 100 Adam steps) on LEO's frozen backbone."""
    cls = get_algorithm("finetune")
    head = cls(cls.build_hparams({"hidden": leo.hparams.hidden}), leo.model_spec, leo.device)
    head.encoder.load_state_dict(leo.backbone.encoder.state_dict())
    result = head.kind.evaluate(head, tasks)
    return result.accuracy, result.ci95


def run(args, store: RunStore) -> dict:
    trainer = Trainer(leo_config(args), store)
    final = trainer.run_all()
    result = evaluate_run(trainer.run, store, device="cpu")
    leo = load_model(trainer.run, kind=result.checkpoint or "best").algorithm
    config = trainer.config
    tasks = leo.kind.fixed_tasks(load_dataset(config.dataset), config, "test", result.episodes, result.seed)
    head_accuracy, head_ci95 = linear_head_on_features(leo, tasks)
    protos = result.extras["protonet_same_features"]
    return {"run": trainer.run.id, "steps": trainer.step, "pretrain_steps": leo.hparams.pretrain_steps,
            "seconds": round(final.elapsed_s, 1), "best_step": trainer.best_step, "episodes": result.episodes,
            "rows": [["LEO", result.accuracy, result.ci95],
                     ["prototype classifier (same features)", protos["accuracy"], protos["ci95"]],
                     ["linear head, 100 Adam steps (the backbone's features)", head_accuracy, head_ci95]]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="glyphs", choices=("glyphs", "omniglot"))
    parser.add_argument("--data-root", help=f"Omniglot's folder (default {DEFAULT_OMNIGLOT_ROOT}).")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--minutes", type=float, default=0.0, help="Training time budget (0: the recipe's steps).")
    parser.add_argument("--steps", type=int, default=0, help="Training steps, pre-training included (0: the "
                        "recipe's, or until the time budget).")
    parser.add_argument("--pretrain-steps", type=int, help="Backbone pre-training steps (default: LEO's).")
    parser.add_argument("--episodes", type=int, default=600, help="Fixed test episodes.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-runs", action="store_true", help="Keep the run in the workbench's run store.")
    parser.add_argument("--json", help="Where to write the results (default bench/out/leo_features-<time>.json).")
    args = parser.parse_args(argv)
    store = RunStore() if args.keep_runs else RunStore(tempfile.mkdtemp(prefix="leo-bench-"))
    load_before = os.getloadavg()[0]
    out = run(args, store)
    print(f"{args.dataset} {args.ways}-way {args.shots}-shot, {out['episodes']} test episodes; {out['steps']} steps "
          f"({out['pretrain_steps']} pre-training the backbone) in {out['seconds']} s, best step {out['best_step']}")
    print(format_table(["method", "accuracy", "± 95%"],
                       [[name, f"{100 * acc:.2f}%", f"{100 * ci:.2f}%"] for name, acc, ci in out["rows"]]))
    env = environment(args.threads)
    env["load_average_1m_before"] = round(load_before, 2)
    target = args.json or str(REPO_ROOT / "bench" / "out" / f"leo_features-{time.strftime('%Y%m%d-%H%M%S')}.json")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    write_json({"args": vars(args), "environment": env, **out}, target)
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

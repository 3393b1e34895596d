"""Data-parallel meta-training: tasks/s of the Trainer in 1 process against N processes (`workbench train --nproc N`)
on this machine.

Both sides run the same Trainer code through the same launcher (torch's elastic launcher, gloo on the CPU or NCCL
on CUDA), on the built-in glyphs, with the same config: only the number of processes differs. Each process gets an
equal share of the host's cores (1 process: all of them; 2 processes on 2 cores: one each; --threads fixes it
instead), so on the CPU the speed-up comes from the work that does not parallelize inside one process (Python
overhead, small convolutions), and a machine with 2 cores caps it at 2x at most. On a busy machine a process with
several threads suffers most (its threads wait for each other), which flatters the parallel side: compare with
--threads 1 as well. Sides alternate over rounds (1, N, N, 1, ...) so both see the same
background load; the ratio of their mean rates is the result. The rate is taken over the steps after a warm-up
(process start, data loading and the first steps are excluded).

    python bench/distributed.py                                 # MAML, 2 processes, 2 rounds
    python bench/distributed.py --algorithm protonet --steps 60 --rounds 3
    python bench/distributed.py --threads 1                      # one thread per process on both sides
    python bench/distributed.py --nproc 4 --device cuda          # on a host with 4 GPUs
    python bench/distributed.py --json                           # JSON only, on stdout
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from workbench.core.config import ExperimentConfig  # noqa: E402
from workbench.core.training.distributed import launch  # noqa: E402

HPARAMS = {"maml": {"train_inner_steps": 1}, "protonet": {}}


def bench_config(args) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "dataset": {"name": "glyphs", "ways": args.ways, "shots": 1, "queries": args.queries},
        "algorithm": {"name": args.algorithm, "hparams": HPARAMS.get(args.algorithm, {})},
        "training": {"steps": args.warmup + args.steps, "meta_batch": args.meta_batch, "val_interval": 0,
                     "val_episodes": 1, "checkpoint_interval": 10_000_000, "device": args.device,
                     "threads": args.threads,
                     "lr_schedule": "constant"},
    })


def timed_training(config: ExperimentConfig, warmup: int, home: str, result_file: str) -> int:
    """One rank: train; rank 0 writes the seconds from the end of step ``warmup`` to the last step."""
    from workbench.core.runs import RunStore
    from workbench.core.training import Trainer
    from workbench.core.training.distributed import DistributedContext

    context = DistributedContext.from_env()
    trainer = Trainer(config, RunStore(home) if context.is_leader else None, distributed=context)
    marks: dict[int, float] = {}

    def on_record(record) -> None:
        if record.event == "step":
            marks[record.step] = time.perf_counter()

    trainer.run_all(on_record)
    if context.is_leader:
        last = max(marks)
        Path(result_file).write_text(json.dumps({"seconds": marks[last] - marks[warmup], "steps": last - warmup,
                                                 "threads": trainer.threads, "device": str(trainer.device)}))
    return 0


def one_side(config: ExperimentConfig, nproc: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        result_file = str(Path(home) / "result.json")
        code = launch(timed_training, (config, warmup, home, result_file), nproc=nproc)
        if code:
            raise SystemExit(f"the {nproc}-process run failed (exit code {code})")
        result = json.loads(Path(result_file).read_text())
    result["tasks_per_s"] = result["steps"] * config.training.meta_batch / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", default="maml", choices=sorted(HPARAMS))
    parser.add_argument("--nproc", type=int, default=2, help="Processes of the parallel side (default 2).")
    parser.add_argument("--meta-batch", type=int, default=4, help="Tasks per step; divisible by --nproc.")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per run (default 20).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed first steps (default 3).")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each side, alternating (default 2).")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process).")
    parser.add_argument("--threads", type=int, default=0, help="Torch threads per process; 0 (the default) shares "
                        "the cores among the processes (1 process: all).")
    parser.add_argument("--json", action="store_true", help="Print only JSON on stdout.")
    args = parser.parse_args()
    log = (lambda text: print(text, file=sys.stderr)) if args.json else print
    config = bench_config(args)
    from workbench.core.data import load_dataset

    load_dataset(config.dataset)  # generate and cache the glyphs once, before any timed run
    sides = {1: [], args.nproc: []}
    for r in range(args.rounds):
        for nproc in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            result = one_side(config, nproc, args.warmup)
            sides[nproc].append(result)
            log(f"round {r + 1}: {nproc} process(es), {result['threads']} torch thread(s) each on "
                f"{result['device']}: {result['tasks_per_s']:.1f} tasks/s")
    rates = {nproc: statistics.mean(r["tasks_per_s"] for r in results) for nproc, results in sides.items()}
    ratio = rates[args.nproc] / rates[1]
    summary = {"algorithm": args.algorithm, "meta_batch": args.meta_batch, "ways": args.ways, "queries": args.queries,
               "steps": args.steps, "rounds": args.rounds, "device": args.device,
               "tasks_per_s": {str(n): rate for n, rate in rates.items()}, "ratio": ratio,
               "runs": {str(n): results for n, results in sides.items()}}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{args.algorithm} on glyphs, {args.ways}-way 1-shot {args.queries}-query, meta-batch {args.meta_batch}: "
              f"1 process {rates[1]:.1f} tasks/s, {args.nproc} processes {rates[args.nproc]:.1f} tasks/s, "
              f"ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()

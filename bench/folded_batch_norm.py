"""What folding the first block's batch norm into its convolution is worth to a second-order MAML task on CPU.

The same MAML model meta-trains with the fold on and off (``conv4.FOLD_MAX_PATCH_SIZE`` set to 0 turns it off)
in alternating rounds in one process, on random images of three shapes: 28x28 grey (Omniglot), 32x32 colour
(CIFAR-FS / FC100) and 84x84 colour (mini-ImageNet). 5-way 1-shot 15-query, 1 inner step, meta-batch 4 (2 for
84x84, to keep a round short). Prints tasks/s both ways and the speed-up (folded / unfolded). Both ways compute
the same function and gradients (tests/test_conv4.py).

    python bench/folded_batch_norm.py                  # all three shapes, 1 thread
    python bench/folded_batch_norm.py --shapes 1x28 --rounds 20
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from workbench.core.algorithms.base import ModelSpec  # noqa: E402
from workbench.core.algorithms.maml import MAML  # noqa: E402
from workbench.core.data.episodes import Episode  # noqa: E402
from workbench.core.models import conv4  # noqa: E402

WAYS, SHOTS, QUERIES = 5, 1, 15
FOLDED, UNFOLDED = conv4.FOLD_MAX_PATCH_SIZE, 0


def random_episode(channels: int, size: int, generator: torch.Generator) -> Episode:
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS)
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES)
    support_x = torch.randn(WAYS * SHOTS, channels, size, size, generator=generator)
    query_x = torch.randn(WAYS * QUERIES, channels, size, size, generator=generator)
    return Episode(support_x, support_y, query_x, query_y, list(range(WAYS)), [str(c) for c in range(WAYS)])


def bench_shape(channels: int, size: int, args) -> dict:
    torch.manual_seed(0)
    hparams = MAML.build_hparams({"train_inner_steps": 1, "train_inner_lr": 0.4 if channels == 1 else 0.01})
    model = MAML(hparams, ModelSpec(channels, size, WAYS, 64))
    model.configure_optimizers(1e-3, 10_000, "constant")
    generator = torch.Generator().manual_seed(1)
    meta_batch = 2 if size >= 64 else 4
    episodes = [random_episode(channels, size, generator) for _ in range(meta_batch)]

    def step_with(patch_limit: int):
        def step() -> int:
            conv4.FOLD_MAX_PATCH_SIZE = patch_limit
            model.meta_train_step(episodes)
            return meta_batch
        return step

    sides = {"folded": step_with(FOLDED), "unfolded": step_with(UNFOLDED)}
    try:
        for step in sides.values():
            step()  # warm-up: allocator and oneDNN primitive caches
        timings = common.interleaved(sides, args.rounds, args.steps_per_round)
    finally:
        conv4.FOLD_MAX_PATCH_SIZE = FOLDED
    ratios = common.ratio_summary(timings["folded"], timings["unfolded"])
    return {"shape": f"{channels}x{size}x{size}", "meta_batch": meta_batch,
            "folded_tasks_per_s": timings["folded"].rate, "unfolded_tasks_per_s": timings["unfolded"].rate,
            **ratios}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["1x28", "3x32", "3x84"], help="CHANNELSxSIZE")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=2)
    parser.add_argument("--json", nargs="?", const="-", default=None)
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    common.tune_glibc_malloc()
    results = []
    for shape in args.shapes:
        channels, size = (int(part) for part in shape.lower().split("x"))
        results.append(bench_shape(channels, size, args))
    rows = [[r["shape"], r["meta_batch"], f"{r['folded_tasks_per_s']:.2f}", f"{r['unfolded_tasks_per_s']:.2f}",
             f"{r['ratio']:.2f}x", f"{r['cpu_time_ratio']:.2f}x",
             f"{r['median_round_ratio']:.2f}x ({r['min_round_ratio']:.2f}-{r['max_round_ratio']:.2f})"]
            for r in results]
    report = {"environment": common.environment(threads), "results": results}
    out = sys.stderr if args.json == "-" else sys.stdout
    print(f"Second-order MAML, 5-way 1-shot 15-query, 1 inner step, {threads} thread(s), {args.rounds} rounds x "
          f"{args.steps_per_round} meta-steps per side", file=out)
    print(common.format_table(["images", "meta-batch", "folded tasks/s", "unfolded tasks/s", "speed-up",
                               "cpu-time speed-up", "per-round median (range)"], rows), file=out)
    if args.json is not None:
        common.write_json(report, args.json)
    return report


if __name__ == "__main__":
    main()

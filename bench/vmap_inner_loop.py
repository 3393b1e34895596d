"""Does batching MAML's tasks with torch.vmap beat a Python loop over tasks on CPU?

One meta-gradient (inner loop on each task's support set, query loss, backward to the initial weights) for
a meta-batch of 5-way 1-shot 15-query tasks at 28x28 on MAML's Conv-4 (transductive batch norm, so no
running statistics for vmap to trip over). Three ways to compute it:

- loop:       the Python loop MAML uses (maml_outer_loss per task, backward per task);
- vmap:       torch.vmap over tasks of functional_call + torch.func.grad, then an ordinary .backward();
- func.grad:  the same vmap, differentiated with torch.func.grad instead of .backward().

It checks that all three give the same gradient, then prints the median time of each and the ratios.

Measured (torch 2.14.1, 1 thread, 2-core shared machine; median of 7; ratio = vmap / loop):
second order 1 step: loop 382 ms, vmap 712 ms (1.86x slower); 5 steps: 906 vs 904-950 ms (1.00-1.05);
first order 1 step: 188 vs 395 ms (2.1x slower); 5 steps: 222 vs 516 ms (2.3x slower).
Worse, the vmapped second-order gradient is wrong under batch norm: 0.6% (1 step) to 8% (5 steps) off the
loop's, while the loop's matches finite differences to 1e-9 in float64 (tests/test_maml_gradient.py); without
batch norm the two agree to 1e-15. This matches functorch's open issue #534 (batch_norm backward batching rule
incorrect for grad_input). Decision: MAML keeps the Python loop over tasks.

    python bench/vmap_inner_loop.py [--threads 1] [--meta-batch 4] [--inner-steps 1 5] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call

from workbench.core.algorithms.functional import named_params
from workbench.core.algorithms.maml import maml_outer_loss
from workbench.core.models.conv4 import Conv4Classifier

WAYS, SHOTS, QUERIES, SIZE = 5, 1, 15, 28


def make_tasks(meta_batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(meta_batch, WAYS * SHOTS, 1, SIZE, SIZE, generator=gen)
    query_x = torch.randn(meta_batch, WAYS * QUERIES, 1, SIZE, SIZE, generator=gen)
    support_y = torch.arange(WAYS).repeat_interleave(SHOTS).expand(meta_batch, -1).contiguous()
    query_y = torch.arange(WAYS).repeat_interleave(QUERIES).expand(meta_batch, -1).contiguous()
    return support_x, support_y, query_x, query_y


def loop_gradient(model, tasks, steps, lr, first_order):
    params = named_params(model)
    grads = {name: torch.zeros_like(p) for name, p in params.items()}
    meta_batch = tasks[0].shape[0]
    for i in range(meta_batch):
        loss, _ = maml_outer_loss(model, params, *(t[i] for t in tasks), steps=steps, lr=lr, first_order=first_order)
        for name, g in zip(params, torch.autograd.grad(loss / meta_batch, list(params.values()))):
            grads[name] += g
    return grads


def vmapped_task_loss(model, steps, lr, first_order):
    def support_loss(params, x, y):
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    def task_loss(params, support_x, support_y, query_x, query_y):
        fast = params
        for _ in range(steps):
            grads = torch.func.grad(support_loss)(fast, support_x, support_y)
            if first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            fast = {name: fast[name] - lr * grads[name] for name in fast}
        return F.cross_entropy(functional_call(model, fast, (query_x,)), query_y)

    return torch.vmap(task_loss, in_dims=(None, 0, 0, 0, 0))


def vmap_backward_gradient(model, tasks, steps, lr, first_order):
    params = named_params(model)
    losses = vmapped_task_loss(model, steps, lr, first_order)(params, *tasks)
    return dict(zip(params, torch.autograd.grad(losses.mean(), list(params.values()))))


def vmap_func_grad_gradient(model, tasks, steps, lr, first_order):
    params = {name: p.detach() for name, p in model.named_parameters()}
    batched = vmapped_task_loss(model, steps, lr, first_order)
    return torch.func.grad(lambda p: batched(p, *tasks).mean())(params)


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--meta-batch", type=int, default=4)
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--lr", type=float, default=0.4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Conv4Classifier(WAYS, 1, 64, SIZE, track_running_stats=False)
    tasks = make_tasks(args.meta_batch)
    print(f"torch {torch.__version__}, {args.threads} thread(s), meta-batch {args.meta_batch}, {WAYS}-way {SHOTS}-shot "
          f"{QUERIES}-query, {SIZE}x{SIZE}, Conv-4 (64 filters); median of {args.repeats}")
    methods = {"loop": loop_gradient, "vmap+backward": vmap_backward_gradient,
               "vmap+func.grad": vmap_func_grad_gradient}
    for first_order in (False, True):
        for steps in args.inner_steps:
            reference = loop_gradient(model, tasks, steps, args.lr, first_order)
            label = f"{'first' if first_order else 'second'} order, {steps} inner step(s)"
            timings = {}
            for method, fn in methods.items():
                try:
                    grads = fn(model, tasks, steps, args.lr, first_order)
                except Exception as error:  # a transform that cannot handle this model is a result too
                    print(f"  {label}: {method} failed: {type(error).__name__}: {str(error)[:200]}")
                    continue
                # Relative to the whole gradient: conv biases before batch norm have a true gradient of zero.
                gap = (sum(float((grads[n] - reference[n]).norm() ** 2) for n in reference) ** 0.5
                       / sum(float(reference[n].norm() ** 2) for n in reference) ** 0.5)
                if gap > 1e-3:
                    print(f"  {label}: {method} gradient differs from the loop's (relative {gap:.2g})")
                timings[method] = median_seconds(lambda: fn(model, tasks, steps, args.lr, first_order), args.repeats)
            line = ", ".join(f"{m} {t * 1000:.0f} ms" for m, t in timings.items())
            ratios = ", ".join(f"{m}/loop {t / timings['loop']:.2f}" for m, t in timings.items() if m != "loop")
            print(f"{label}: {line}; {ratios}")


if __name__ == "__main__":
    main()

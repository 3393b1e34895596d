"""Meta-training throughput against peer libraries, side by side on identical episodes, with accuracy.

- ProtoNet: workbench ``ProtoNet.meta_train_step`` fed by ``EpisodeSampler`` (in-memory uint8 images)
  against easyfsl 1.5.0 ``PrototypicalNetworks`` trained as its README/notebooks do: a ``FewShotDataset`` of
  PIL images with a torchvision transform, its ``TaskSampler`` in a torch ``DataLoader`` with
  ``episodic_collate_fn``, Adam and cross-entropy, support and query forwarded separately
  (``process_support_set`` then ``forward``). Episodes/s for 5-way 1-shot 15-query and 20-way 1-shot 5-query.
- MAML (second order): workbench ``MAML.meta_train_step`` against higher 0.2.1 following its
  ``examples/maml-omniglot.py`` recipe (``innerloop_ctx`` with an SGD inner optimizer,
  ``copy_initial_weights=False``, ``track_higher_grads=True``, backward per task, Adam outer step; data as a
  pre-normalized float array sliced per batch like its ``OmniglotNShot``). Tasks/s, 5-way 1-shot 15-query.

Fairness: both sides start from the same weights (copied), see the same episodes in the same order (the
peer replays our sampler's draws; the tensors are checked to be equal), use the same backbone (Conv-4,
64 filters, 3x3 conv + batch norm + ReLU + 2x2 max-pool; the peers get it as a plain ``nn.Sequential`` a user
would write), the same ways/shots/queries, the same Adam lr and the same torch thread count. The two sides
run in alternating rounds so both see the same background load; the ratio of their totals is the result.
After the timed training, both are evaluated on the same fixed meta-test episodes.

Differences that are each library's own design, kept on purpose: easyfsl scores with the Euclidean distance
(ours: squared Euclidean, as in the paper) and normalizes support and query in separate batch-norm batches
(ours: one batched forward). easyfsl's TaskSampler draws with Python's ``random``; here it replays our draws
instead (that only removes a few microseconds of its work). The higher recipe's per-task loss is divided by
the meta-batch as ours is, so both take the same outer step.

    python bench/throughput.py                                  # Omniglot if it loads (else glyphs), all cores
    python bench/throughput.py --dataset omniglot --data-root ../shared/data/omniglot --threads 1
    python bench/throughput.py --only maml --maml-inner-steps 5 --maml-inner-lr 0.1   # higher's example setting
    python bench/throughput.py --json results.json              # also write machine-readable results
    python bench/throughput.py --json                           # JSON only, on stdout
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from workbench.core.algorithms.base import ModelSpec, accuracy  # noqa: E402
from workbench.core.data.episodes import EpisodeSampler, FixedEpisodes  # noqa: E402
from workbench.core.models.conv4 import conv4_feature_dim, to_channels_last  # noqa: E402

PROTONET_SETTINGS = ((5, 1, 15), (20, 1, 5))
MAML_SETTING = (5, 1, 15)
TEST_SEED = 12345


def log(message: str = "") -> None:
    print(message, file=sys.stderr if ARGS.json == "-" else sys.stdout, flush=True)


# --- what a peer's user writes -------------------------------------------------------------------------------
def user_conv4(in_channels: int, image_size: int, hidden: int = 64, ways: int | None = None,
               track_running_stats: bool = True, inplace_relu: bool = False) -> nn.Sequential:
    """The Conv-4 backbone as a plain NCHW ``nn.Sequential`` (what easyfsl/higher users build themselves)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(4):
        layers += [nn.Conv2d(channels, hidden, 3, padding=1),
                   nn.BatchNorm2d(hidden, track_running_stats=track_running_stats),
                   nn.ReLU(inplace=inplace_relu), nn.MaxPool2d(2)]
        channels = hidden
    layers.append(nn.Flatten())
    if ways is not None:
        layers.append(nn.Linear(conv4_feature_dim(image_size, hidden), ways))
    return nn.Sequential(*layers)


class ChannelsLastInput(nn.Module):
    """For ``--peer-channels-last``: give the peer the same memory-layout trick our Conv-4 uses."""

    def forward(self, x):
        return to_channels_last(x)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy parameters and buffers in registration order (the two networks name them differently).

    The peer's conv biases, which ours leaves out because batch norm cancels them, start at zero: both
    networks then compute the same function, and the peer's biases get a zero gradient.
    """
    values = list(source.state_dict().values())
    copied = {}
    for name, value in target.state_dict().items():
        owner = target.get_submodule(name.rpartition(".")[0])
        if isinstance(owner, nn.Conv2d) and name.endswith(".bias"):
            copied[name] = torch.zeros_like(value)
        elif values and values[0].shape == value.shape:
            copied[name] = values.pop(0)
        else:
            raise RuntimeError(f"peer network does not match ours layer for layer (at {name})")
    if values:
        raise RuntimeError("peer network does not match ours layer for layer (ours has more)")
    target.load_state_dict(copied)


def pooled_ci95(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(1.96 * array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else 0.0


# --- ProtoNet vs easyfsl ----------------------------------------------------------------------------------------
def easyfsl_dataset(split, spec):
    """An easyfsl FewShotDataset over the same images, as PIL images plus a torchvision transform."""
    from easyfsl.datasets import FewShotDataset
    from PIL import Image
    from torchvision import transforms

    class InMemoryFewShotDataset(FewShotDataset):
        def __init__(self):
            arrays = split.images.numpy()
            # Decoded once and kept in memory: friendlier to the peer than re-opening files per item.
            self.images = [Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)) for a in arrays]
            self.labels = split.labels.tolist()
            steps = [transforms.ToTensor()]
            if arrays.shape[-1] != spec.image_size:
                steps.append(transforms.Resize((spec.image_size, spec.image_size), antialias=True))
            steps.append(transforms.Normalize(spec.mean, spec.std))
            self.transform = transforms.Compose(steps)

        def __getitem__(self, item):
            return self.transform(self.images[item]), self.labels[item]

        def __len__(self):
            return len(self.labels)

        def get_labels(self):
            return self.labels

    return InMemoryFewShotDataset()


def replay_task_sampler(dataset, ways, shots, queries, tasks):
    from easyfsl.samplers import TaskSampler

    class ReplayTaskSampler(TaskSampler):
        """easyfsl's TaskSampler (its checks and episodic_collate_fn), yielding our sampler's draws."""

        def __init__(self):
            # TaskSampler.__init__ itself fails on this torch: it calls Sampler.__init__(data_source=None), an
            # argument torch's Sampler no longer takes. The rest of its __init__ is repeated here verbatim.
            self.n_way, self.n_shot, self.n_query, self.n_tasks = ways, shots, queries, len(tasks)
            self.items_per_label = {}
            for item, label in enumerate(dataset.get_labels()):
                self.items_per_label.setdefault(label, []).append(item)
            self._check_dataset_size_fits_sampler_parameters()

        def __iter__(self):
            yield from tasks

    return ReplayTaskSampler()


def bench_protonet(dataset, ways: int, shots: int, queries: int, args) -> dict:
    from easyfsl.methods import PrototypicalNetworks
    from torch.utils.data import DataLoader

    from workbench.core.algorithms.protonet import ProtoNet

    split, spec = dataset.split("train"), dataset.spec
    total = args.warmup + args.rounds * args.episodes_per_round
    torch.manual_seed(args.seed)
    ours = ProtoNet(ProtoNet.build_hparams(args.protonet_hparams),
                    ModelSpec(spec.channels, spec.image_size, ways, split.num_classes))
    ours.configure_optimizers(args.lr, total, "constant")
    sampler = EpisodeSampler(split, spec, ways, shots, queries, seed=args.seed)

    backbone = user_conv4(spec.channels, spec.image_size)
    copy_weights(ours.encoder, backbone)
    if args.peer_channels_last:
        backbone = nn.Sequential(ChannelsLastInput(), *backbone)
    peer = PrototypicalNetworks(backbone)
    peer_optimizer = torch.optim.Adam(peer.parameters(), lr=args.lr)
    criterion = nn.CrossEntropyLoss()
    draws = common.episode_indices(split, spec, ways, shots, queries, args.seed, total)
    peer_data = easyfsl_dataset(split, spec)
    check_identical_protonet(sampler, peer_data, draws[0])
    task_sampler = replay_task_sampler(peer_data, ways, shots, queries,
                                       [common.grouped_by_class(s, q, ways) for _, s, q in draws])
    loader = DataLoader(peer_data, batch_sampler=task_sampler, num_workers=args.easyfsl_workers,
                        collate_fn=task_sampler.episodic_collate_fn)
    batches = iter(loader)
    data_seconds = {"ours": 0.0, "easyfsl": 0.0}

    def our_step() -> int:
        start = time.perf_counter()
        episode = sampler.sample()
        data_seconds["ours"] += time.perf_counter() - start
        ours.meta_train_step([episode])
        return 1

    def peer_step() -> int:
        start = time.perf_counter()
        support_images, support_labels, query_images, query_labels, _ = next(batches)
        data_seconds["easyfsl"] += time.perf_counter() - start
        peer.train()
        peer_optimizer.zero_grad()
        peer.process_support_set(support_images, support_labels)
        scores = peer(query_images)
        loss = criterion(scores, query_labels)
        loss.backward()
        peer_optimizer.step()
        loss.item()  # the notebooks log the loss every episode
        return 1

    for _ in range(args.warmup):
        our_step()
        peer_step()
    data_seconds = dict.fromkeys(data_seconds, 0.0)
    timings = common.interleaved({"ours": our_step, "easyfsl": peer_step}, args.rounds, args.episodes_per_round)

    test = FixedEpisodes(dataset.split("test"), spec, ways, shots, queries, args.eval_episodes, TEST_SEED,
                         split_name="test")
    ours_acc, peer_acc = [], []
    peer.eval()
    for episode in test:
        ours_acc.append(accuracy(ours.predict(ours.adapt(episode.support_x, episode.support_y, ways),
                                              episode.query_x), episode.query_y))
        with torch.no_grad():
            peer.process_support_set(episode.support_x, episode.support_y)
            peer_acc.append(accuracy(peer(episode.query_x), episode.query_y))
    return summarize(f"{ways}-way {shots}-shot {queries}-query", "episodes", timings, "easyfsl", data_seconds,
                     ours_acc, peer_acc, trained=total)


def check_identical_protonet(sampler: EpisodeSampler, peer_data, draw) -> None:
    """Our episode tensors must equal what the peer's dataset and collate produce for the same draw."""
    class_ids, support_index, query_index = draw
    episode = sampler.build(class_ids, support_index, query_index)
    ours = torch.cat([episode.support_x, episode.query_x])
    theirs = torch.stack([peer_data[i][0] for i in torch.cat([support_index, query_index]).tolist()])
    if not torch.equal(ours, theirs):
        raise RuntimeError(f"episode tensors differ (max {float((ours - theirs).abs().max()):.3g}); "
                           "the comparison would not be on identical data")


# --- MAML vs higher ----------------------------------------------------------------------------------------------
def bench_maml(dataset, args) -> dict:
    import higher

    from workbench.core.algorithms.maml import MAML

    ways, shots, queries = MAML_SETTING
    meta_batch, inner_steps, inner_lr = args.maml_meta_batch, args.maml_inner_steps, args.maml_inner_lr
    split, spec = dataset.split("train"), dataset.spec
    total_steps = args.maml_warmup + args.maml_rounds * args.maml_steps_per_round
    torch.manual_seed(args.seed)
    hparams = MAML.build_hparams({"train_inner_steps": inner_steps, "train_inner_lr": inner_lr,
                                  "test_inner_steps": args.maml_test_steps, "test_inner_lr": inner_lr})
    ours = MAML(hparams, ModelSpec(spec.channels, spec.image_size, ways, split.num_classes))
    ours.configure_optimizers(args.lr, total_steps, "constant")
    sampler = EpisodeSampler(split, spec, ways, shots, queries, seed=args.seed)

    net = user_conv4(spec.channels, spec.image_size, ways=ways, track_running_stats=False, inplace_relu=True)
    copy_weights(ours.model, net)
    meta_opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    prepare = to_channels_last if args.peer_channels_last else (lambda x: x)

    # As OmniglotNShot: the whole split normalized once into a float array, batches sliced out of it.
    images = spec.normalize(split.images).numpy()
    draws = common.episode_indices(split, spec, ways, shots, queries, args.seed, total_steps * meta_batch)
    support_y = torch.arange(ways).repeat_interleave(shots).repeat(meta_batch, 1)
    query_y = torch.arange(ways).repeat_interleave(queries).repeat(meta_batch, 1)
    check_identical_maml(sampler, images, draws[0])

    def higher_batches():
        for i in range(total_steps):
            chunk = draws[i * meta_batch:(i + 1) * meta_batch]
            x_spt = torch.from_numpy(images[np.stack([s.numpy() for _, s, _ in chunk])])
            x_qry = torch.from_numpy(images[np.stack([q.numpy() for _, _, q in chunk])])
            yield x_spt, support_y, x_qry, query_y

    batches = higher_batches()
    data_seconds = {"ours": 0.0, "higher": 0.0}

    def our_step() -> int:
        start = time.perf_counter()
        episodes = [sampler.sample() for _ in range(meta_batch)]
        data_seconds["ours"] += time.perf_counter() - start
        ours.meta_train_step(episodes)
        return meta_batch

    def higher_step() -> int:
        start = time.perf_counter()
        x_spt, y_spt, x_qry, y_qry = next(batches)
        data_seconds["higher"] += time.perf_counter() - start
        task_num = x_spt.size(0)
        net.train()
        inner_opt = torch.optim.SGD(net.parameters(), lr=inner_lr)
        meta_opt.zero_grad()
        for i in range(task_num):
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=True) as (fnet, diffopt):
                for _ in range(inner_steps):
                    spt_loss = F.cross_entropy(fnet(prepare(x_spt[i])), y_spt[i])
                    diffopt.step(spt_loss)
                qry_logits = fnet(prepare(x_qry[i]))
                qry_loss = F.cross_entropy(qry_logits, y_qry[i])
                (qry_loss / task_num).backward()
                (qry_logits.argmax(dim=1) == y_qry[i]).sum().item()  # the example logs accuracy per task
        meta_opt.step()
        return task_num

    for _ in range(args.maml_warmup):
        our_step()
        higher_step()
    data_seconds = dict.fromkeys(data_seconds, 0.0)
    timings = common.interleaved({"ours": our_step, "higher": higher_step}, args.maml_rounds,
                                 args.maml_steps_per_round)

    test = FixedEpisodes(dataset.split("test"), spec, ways, shots, queries, args.maml_eval_episodes, TEST_SEED,
                         split_name="test")
    ours_acc, peer_acc = [], []
    inner_opt = torch.optim.SGD(net.parameters(), lr=inner_lr)
    for episode in test:
        ours_acc.append(accuracy(ours.predict(ours.adapt(episode.support_x, episode.support_y, ways),
                                              episode.query_x), episode.query_y))
        # higher's example tests in train mode (batch statistics), without higher-order tracking.
        with higher.innerloop_ctx(net, inner_opt, track_higher_grads=False) as (fnet, diffopt):
            for _ in range(args.maml_test_steps):
                diffopt.step(F.cross_entropy(fnet(prepare(episode.support_x)), episode.support_y))
            peer_acc.append(accuracy(fnet(prepare(episode.query_x)).detach(), episode.query_y))
    label = (f"{ways}-way {shots}-shot {queries}-query, meta-batch {meta_batch}, {inner_steps} inner step(s) "
             f"lr {inner_lr:g}")
    return summarize(label, "tasks", timings, "higher", data_seconds, ours_acc, peer_acc,
                     trained=total_steps * meta_batch)


def check_identical_maml(sampler: EpisodeSampler, images: np.ndarray, draw) -> None:
    class_ids, support_index, query_index = draw
    episode = sampler.build(class_ids, support_index, query_index)
    if not (torch.equal(episode.support_x, torch.from_numpy(images[support_index.numpy()]))
            and torch.equal(episode.query_x, torch.from_numpy(images[query_index.numpy()]))):
        raise RuntimeError("episode tensors differ between ours and the higher recipe's data")


# --- reporting -----------------------------------------------------------------------------------------------------
def summarize(setting, unit, timings, peer_name, data_seconds, ours_acc, peer_acc, trained) -> dict:
    ours, peer = timings["ours"], timings[peer_name]
    ours_mean, ours_ci = pooled_ci95(ours_acc)
    peer_mean, peer_ci = pooled_ci95(peer_acc)
    return {
        "setting": setting, "unit": unit, "peer": peer_name,
        "ours_per_s": ours.rate, "peer_per_s": peer.rate, **common.ratio_summary(ours, peer),
        "timed_units_per_side": ours.units,
        "data_ms_per_unit": {"ours": 1000 * data_seconds["ours"] / ours.units,
                             peer_name: 1000 * data_seconds[peer_name] / peer.units},
        "cpu_ms_per_unit": {"ours": 1000 * ours.cpu_seconds / ours.units,
                            peer_name: 1000 * peer.cpu_seconds / peer.units},
        "page_faults_per_unit": {"ours": ours.page_faults / ours.units, peer_name: peer.page_faults / peer.units},
        "trained_units": trained,
        "test_episodes": len(ours_acc),
        "ours_accuracy": ours_mean, "ours_ci95": ours_ci, "peer_accuracy": peer_mean, "peer_ci95": peer_ci,
    }


def print_section(title: str, results: list[dict]) -> None:
    if not results:
        return
    peer = results[0]["peer"]
    unit = results[0]["unit"]
    rows = [[r["setting"], r["ours_per_s"], r["peer_per_s"], f"{r['ratio']:.2f}x", f"{r['cpu_time_ratio']:.2f}x",
             f"{r['median_round_ratio']:.2f}x ({r['min_round_ratio']:.2f}-{r['max_round_ratio']:.2f})",
             f"{r['data_ms_per_unit']['ours']:.2f} / {r['data_ms_per_unit'][peer]:.2f}",
             f"{100 * r['ours_accuracy']:.1f} +- {100 * r['ours_ci95']:.1f}",
             f"{100 * r['peer_accuracy']:.1f} +- {100 * r['peer_ci95']:.1f}"] for r in results]
    log(title)
    headers = ["setting", f"ours {unit}/s", f"{peer} {unit}/s", "ratio", "cpu-time ratio",
               "per-round ratio median (range)", f"data ms/{unit[:-1]} ours/{peer}", "ours test acc %",
               f"{peer} test acc %"]
    log(common.format_table(headers, rows))
    log()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("auto", "omniglot", "glyphs"), default="auto",
                        help="auto: real Omniglot when it loads, else the built-in glyphs")
    parser.add_argument("--data-root", default=None, help="Omniglot folder (default ../shared/data/omniglot)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides; 0 = all cores")
    parser.add_argument("--only", choices=("protonet", "maml"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam (outer) learning rate, both sides")
    parser.add_argument("--protonet-hparams", type=json.loads, default={}, metavar="JSON",
                        help='our ProtoNet hyperparameters, e.g. \'{"temperature": 32}\' (speed is unaffected)')
    parser.add_argument("--warmup", type=int, default=5, help="ProtoNet untimed episodes per side")
    parser.add_argument("--rounds", type=int, default=10, help="ProtoNet interleaved rounds")
    parser.add_argument("--episodes-per-round", type=int, default=20)
    parser.add_argument("--eval-episodes", type=int, default=200, help="ProtoNet fixed meta-test episodes")
    parser.add_argument("--easyfsl-workers", type=int, default=0,
                        help="DataLoader workers for easyfsl; 0 keeps both sides on the same cores (workers would "
                             "prefetch during our rounds)")
    parser.add_argument("--maml-meta-batch", type=int, default=4)
    parser.add_argument("--maml-inner-steps", type=int, default=1)
    parser.add_argument("--maml-inner-lr", type=float, default=0.4)
    parser.add_argument("--maml-test-steps", type=int, default=3)
    parser.add_argument("--maml-warmup", type=int, default=2, help="MAML untimed meta-steps per side")
    parser.add_argument("--maml-rounds", type=int, default=8)
    parser.add_argument("--maml-steps-per-round", type=int, default=5)
    parser.add_argument("--maml-eval-episodes", type=int, default=100)
    parser.add_argument("--peer-channels-last", action="store_true",
                        help="also give the peers our channels-last input layout (isolates that optimization)")
    parser.add_argument("--no-malloc-tuning", dest="malloc_tuning", action="store_false",
                        help="leave glibc's allocator as it is; by default it keeps freed memory in the heap for the "
                             "whole process (both sides alike), otherwise page faults decide the ratio (README)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write results as JSON to PATH; without PATH print only JSON on stdout")
    return parser.parse_args(argv)


ARGS = argparse.Namespace(json=None)


def main(argv=None) -> dict:
    global ARGS
    ARGS = args = parse_args(argv)
    threads = common.set_threads(args.threads)
    malloc_tuned = args.malloc_tuning and common.tune_glibc_malloc()
    if args.malloc_tuning and not malloc_tuned:
        log("malloc tuning not available here (needs Linux with glibc); running untuned")
    start = time.perf_counter()
    dataset = common.load_bench_dataset(args.dataset, args.data_root)
    env = common.environment(threads)
    log(f"dataset {dataset.name} ({dataset.spec.image_size}x{dataset.spec.image_size}, "
        f"{dataset.split('train').num_classes} train classes), torch {env['torch']}, {threads} thread(s) of "
        f"{env['cores']} cores, load average {env['load_average_1m']}, loaded in {time.perf_counter() - start:.1f} s"
        + (", peers run channels-last too" if args.peer_channels_last else "")
        + (f", our ProtoNet hparams {args.protonet_hparams}" if args.protonet_hparams else "")
        + (", glibc malloc tuned (both sides)" if malloc_tuned else ""))
    results: dict = {"environment": env, "dataset": dataset.name, "command": " ".join(sys.argv),
                     "peer_channels_last": args.peer_channels_last, "protonet_hparams": args.protonet_hparams,
                     "malloc_tuned": malloc_tuned,
                     "protonet": [], "maml": []}
    if args.only in (None, "protonet"):
        for ways, shots, queries in PROTONET_SETTINGS:
            results["protonet"].append(bench_protonet(dataset, ways, shots, queries, args))
        print_section(f"ProtoNet meta-training vs easyfsl {_version('easyfsl')} ({args.rounds} rounds x "
                      f"{args.episodes_per_round} episodes per side, after {args.warmup} warm-up; accuracy on "
                      f"{args.eval_episodes} fixed meta-test episodes)", results["protonet"])
    if args.only in (None, "maml"):
        results["maml"].append(bench_maml(dataset, args))
        print_section(f"Second-order MAML vs higher {_version('higher')} ({args.maml_rounds} rounds x "
                      f"{args.maml_steps_per_round} meta-steps per side, after {args.maml_warmup} warm-up; accuracy "
                      f"on {args.maml_eval_episodes} fixed meta-test episodes, {args.maml_test_steps} test steps)",
                      results["maml"])
    results["environment"]["load_average_1m_end"] = common.environment(threads)["load_average_1m"]
    results["elapsed_s"] = time.perf_counter() - start
    log(f"ratio = ours/peer throughput from one interleaved run; total {results['elapsed_s']:.0f} s, "
        f"load average at end {results['environment']['load_average_1m_end']}")
    common.write_json(results, args.json)
    return results


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()

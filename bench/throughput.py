"""Meta-training throughput against peer libraries, side by side on identical episodes, with accuracy.

- ProtoNet: workbench ``ProtoNet.meta_train_step`` fed by ``EpisodeSampler`` (in-memory uint8 images)
  against easyfsl 1.5.0 ``PrototypicalNetworks`` trained as its README/notebooks do: a ``FewShotDataset`` of
  PIL images with a torchvision transform, its ``TaskSampler`` in a torch ``DataLoader`` with
  ``episodic_collate_fn``, Adam and cross-entropy, support and query forwarded separately
  (``process_support_set`` then ``forward``). Episodes/s for 5-way 1-shot 15-query and 20-way 1-shot 5-query.
- MAML (second order): workbench ``MAML.meta_train_step`` against two peers in the same run. higher 0.2.1
  following its ``examples/maml-omniglot.py`` recipe (``innerloop_ctx`` with an SGD inner optimizer,
  ``copy_initial_weights=False``, ``track_higher_grads=True``, backward per task, Adam outer step). TorchOpt
  0.7.3 following its ``examples/few-shot/maml_omniglot.py`` (``MetaSGD`` on the module, ``extract_state_dict``
  by reference and ``recover_state_dict`` after each task, one backward of the stacked query losses' mean, Adam
  outer step). Both get data as a pre-normalized float array sliced per batch like their ``OmniglotNShot``.
  Tasks/s, 5-way 1-shot 15-query; the headline ratio is against the faster peer.

Fairness: all sides start from the same weights (copied), see the same episodes in the same order (the
peers replay our sampler's draws; the tensors are checked to be equal), use the same backbone (Conv-4,
64 filters, 3x3 conv + batch norm + ReLU + 2x2 max-pool; the peers get it as a plain ``nn.Sequential`` a user
would write), the same ways/shots/queries, the same Adam lr, inner steps and inner lr, and the same torch
thread count. The sides run in alternating rounds (A B C, C B A, ...) so all see the same background load; the
ratio of their totals is the result. After the timed training, all are evaluated on the same fixed meta-test
episodes.

Differences that are each library's own design, kept on purpose: easyfsl scores with the Euclidean distance
(ours: squared Euclidean, as in the paper) and normalizes support and query in separate batch-norm batches
(ours: one batched forward). easyfsl's TaskSampler draws with Python's ``random``; here it replays our draws
instead (that only removes a few microseconds of its work). The higher recipe's per-task loss is divided by
the meta-batch as ours is, and TorchOpt's example takes the mean, so all take the same outer step.

    python bench/throughput.py                                  # Omniglot if it loads (else glyphs), all cores
    python bench/throughput.py --dataset omniglot --data-root ../shared/data/omniglot --threads 1
    python bench/throughput.py --only maml --maml-inner-steps 5 --maml-inner-lr 0.1   # higher's example setting
    python bench/throughput.py --json results.json              # also write machine-readable results
    python bench/throughput.py --json                           # JSON only, on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
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


# --- MAML vs higher and TorchOpt -----------------------------------------------------------------------------------
class MamlPeer:
    """A peer library's second-order MAML, written as the library's own Omniglot example writes it, on a plain
    Conv-4 that starts from our initial weights. Subclasses fill in the meta-step and the test-time adaptation."""

    name = ""

    def __init__(self, ours, spec, ways: int, args):
        self.lib = importlib.import_module(self.name)
        self.net = user_conv4(spec.channels, spec.image_size, ways=ways, track_running_stats=False,
                              inplace_relu=True)
        copy_weights(ours.model, self.net)
        self.meta_opt = torch.optim.Adam(self.net.parameters(), lr=args.lr)
        self.inner_steps, self.inner_lr, self.test_steps = (args.maml_inner_steps, args.maml_inner_lr,
                                                            args.maml_test_steps)
        self.prepare = to_channels_last if args.peer_channels_last else (lambda x: x)

    def meta_step(self, x_spt, y_spt, x_qry, y_qry) -> int:
        """One outer step on a batch of tasks; returns the number of tasks."""
        raise NotImplementedError

    def test_accuracy(self, episode) -> float:
        """Query accuracy after ``test_steps`` inner steps on the support set (train-mode batch norm, as both
        examples test)."""
        raise NotImplementedError


class HigherPeer(MamlPeer):
    """higher as its ``examples/maml-omniglot.py``: ``innerloop_ctx`` with an SGD inner optimizer,
    ``copy_initial_weights=False``, ``track_higher_grads=True``, backward per task, Adam outer step."""

    name = "higher"

    def meta_step(self, x_spt, y_spt, x_qry, y_qry) -> int:
        task_num = x_spt.size(0)
        self.net.train()
        inner_opt = torch.optim.SGD(self.net.parameters(), lr=self.inner_lr)
        self.meta_opt.zero_grad()
        for i in range(task_num):
            with self.lib.innerloop_ctx(self.net, inner_opt, copy_initial_weights=False,
                                        track_higher_grads=True) as (fnet, diffopt):
                for _ in range(self.inner_steps):
                    diffopt.step(F.cross_entropy(fnet(self.prepare(x_spt[i])), y_spt[i]))
                qry_logits = fnet(self.prepare(x_qry[i]))
                # Divided by the meta-batch as ours is, so both take the same outer step.
                (F.cross_entropy(qry_logits, y_qry[i]) / task_num).backward()
                (qry_logits.argmax(dim=1) == y_qry[i]).sum().item()  # the example logs accuracy per task
        self.meta_opt.step()
        return task_num

    def test_accuracy(self, episode) -> float:
        self.net.train()
        inner_opt = torch.optim.SGD(self.net.parameters(), lr=self.inner_lr)
        with self.lib.innerloop_ctx(self.net, inner_opt, track_higher_grads=False) as (fnet, diffopt):
            for _ in range(self.test_steps):
                diffopt.step(F.cross_entropy(fnet(self.prepare(episode.support_x)), episode.support_y))
            return accuracy(fnet(self.prepare(episode.query_x)).detach(), episode.query_y)


class TorchOptPeer(MamlPeer):
    """TorchOpt as its ``examples/few-shot/maml_omniglot.py``: ``MetaSGD`` steps the module's own parameters,
    whose state is extracted by reference once per batch and recovered after each task; the query losses are
    stacked and their mean takes one backward (the same outer gradient as per-task backward of loss / batch)."""

    name = "torchopt"

    def __init__(self, ours, spec, ways: int, args):
        super().__init__(ours, spec, ways, args)
        self.inner_opt = self.lib.MetaSGD(self.net, lr=self.inner_lr)  # made once, as the example does

    def meta_step(self, x_spt, y_spt, x_qry, y_qry) -> int:
        task_num = x_spt.size(0)
        self.net.train()
        self.meta_opt.zero_grad()
        net_state = self.lib.extract_state_dict(self.net, by="reference", detach_buffers=True)
        optim_state = self.lib.extract_state_dict(self.inner_opt, by="reference")
        qry_losses = []
        for i in range(task_num):
            self._adapt(self.inner_opt, x_spt[i], y_spt[i], self.inner_steps)
            qry_logits = self.net(self.prepare(x_qry[i]))
            qry_losses.append(F.cross_entropy(qry_logits, y_qry[i]))
            (qry_logits.argmax(dim=1) == y_qry[i]).float().mean().item()  # the example logs accuracy per task
            self.lib.recover_state_dict(self.net, net_state)
            self.lib.recover_state_dict(self.inner_opt, optim_state)
        loss = torch.mean(torch.stack(qry_losses))
        loss.backward()
        self.meta_opt.step()
        loss.item()  # and the mean loss per batch
        return task_num

    def test_accuracy(self, episode) -> float:
        self.net.train()
        inner_opt = self.lib.MetaSGD(self.net, lr=self.inner_lr)
        net_state = self.lib.extract_state_dict(self.net, by="reference", detach_buffers=True)
        self._adapt(inner_opt, episode.support_x, episode.support_y, self.test_steps)
        result = accuracy(self.net(self.prepare(episode.query_x)).detach(), episode.query_y)
        self.lib.recover_state_dict(self.net, net_state)
        return result

    def _adapt(self, inner_opt, x, y, steps: int) -> None:
        for _ in range(steps):
            inner_opt.step(F.cross_entropy(self.net(self.prepare(x)), y))


MAML_PEERS = (HigherPeer, TorchOptPeer)


def bench_maml(dataset, args) -> dict:
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
    peers = [peer_class(ours, spec, ways, args) for peer_class in MAML_PEERS]
    sampler = EpisodeSampler(split, spec, ways, shots, queries, seed=args.seed)

    # As OmniglotNShot, which both peers' examples use: the whole split normalized once into a float array,
    # batches sliced out of it. Each peer replays our sampler's draws from its own iterator.
    images = spec.normalize(split.images).numpy()
    draws = common.episode_indices(split, spec, ways, shots, queries, args.seed, total_steps * meta_batch)
    check_identical_maml(sampler, images, draws[0])
    data_seconds = dict.fromkeys(["ours", *(peer.name for peer in peers)], 0.0)
    sides = {"ours": data_timed(our_maml_batches(sampler, meta_batch), our_maml_step(ours), "ours", data_seconds)}
    for peer in peers:
        batches = replay_maml_batches(images, draws, meta_batch, shots, queries, ways)
        sides[peer.name] = data_timed(batches, peer.meta_step, peer.name, data_seconds)

    for _ in range(args.maml_warmup):
        for step in sides.values():
            step()
    data_seconds.update(dict.fromkeys(data_seconds, 0.0))
    timings = common.interleaved(sides, args.maml_rounds, args.maml_steps_per_round)

    test = FixedEpisodes(dataset.split("test"), spec, ways, shots, queries, args.maml_eval_episodes, TEST_SEED,
                         split_name="test")
    accuracies = {name: [] for name in sides}
    for episode in test:
        accuracies["ours"].append(accuracy(ours.predict(ours.adapt(episode.support_x, episode.support_y, ways),
                                                        episode.query_x), episode.query_y))
        for peer in peers:
            accuracies[peer.name].append(peer.test_accuracy(episode))
    label = (f"{ways}-way {shots}-shot {queries}-query, meta-batch {meta_batch}, {inner_steps} inner step(s) "
             f"lr {inner_lr:g}")
    return summarize_peers(label, "tasks", timings, data_seconds, accuracies, trained=total_steps * meta_batch)


def data_timed(batches, step, name: str, data_seconds: dict):
    """A side's step for ``common.interleaved``: fetch the next batch (timed as data) and train on it."""

    def run() -> int:
        start = time.perf_counter()
        batch = next(batches)
        data_seconds[name] += time.perf_counter() - start
        return step(*batch)

    return run


def our_maml_batches(sampler: EpisodeSampler, meta_batch: int):
    while True:
        yield ([sampler.sample() for _ in range(meta_batch)],)


def our_maml_step(ours):
    def step(episodes) -> int:
        ours.meta_train_step(episodes)
        return len(episodes)

    return step


def replay_maml_batches(images: np.ndarray, draws, meta_batch: int, shots: int, queries: int, ways: int):
    """Our draws as the peers' examples get them from OmniglotNShot: [tasks, images, C, H, W] float slices."""
    support_y = torch.arange(ways).repeat_interleave(shots).repeat(meta_batch, 1)
    query_y = torch.arange(ways).repeat_interleave(queries).repeat(meta_batch, 1)
    for start in range(0, len(draws) - meta_batch + 1, meta_batch):
        chunk = draws[start:start + meta_batch]
        x_spt = torch.from_numpy(images[np.stack([s.numpy() for _, s, _ in chunk])])
        x_qry = torch.from_numpy(images[np.stack([q.numpy() for _, _, q in chunk])])
        yield x_spt, support_y, x_qry, query_y


def check_identical_maml(sampler: EpisodeSampler, images: np.ndarray, draw) -> None:
    class_ids, support_index, query_index = draw
    episode = sampler.build(class_ids, support_index, query_index)
    if not (torch.equal(episode.support_x, torch.from_numpy(images[support_index.numpy()]))
            and torch.equal(episode.query_x, torch.from_numpy(images[query_index.numpy()]))):
        raise RuntimeError("episode tensors differ between ours and the MAML peers' data")


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


def summarize_peers(setting, unit, timings, data_seconds, accuracies, trained) -> dict:
    """``summarize`` against each peer; the top level is the one against the faster peer (by wall-clock rate),
    so ``ratio`` is ours against the faster peer, and ``peers`` holds the comparison with each."""
    by_peer = {name: summarize(setting, unit, timings, name, data_seconds, accuracies["ours"], accuracies[name],
                               trained) for name in timings if name != "ours"}
    faster = max(by_peer, key=lambda name: by_peer[name]["peer_per_s"])
    return {**by_peer[faster], "faster_peer": faster, "ratio_vs_faster_peer": by_peer[faster]["ratio"],
            "cpu_time_ratio_vs_faster_peer": by_peer[faster]["cpu_time_ratio"], "peers": by_peer}


def _comparison_cells(r: dict) -> list:
    """Ours against one peer: rates, ratios, data time and accuracies (the columns after the row label)."""
    peer = r["peer"]
    return [r["ours_per_s"], r["peer_per_s"], f"{r['ratio']:.2f}x", f"{r['cpu_time_ratio']:.2f}x",
            f"{r['median_round_ratio']:.2f}x ({r['min_round_ratio']:.2f}-{r['max_round_ratio']:.2f})",
            f"{r['data_ms_per_unit']['ours']:.2f} / {r['data_ms_per_unit'][peer]:.2f}",
            f"{100 * r['ours_accuracy']:.1f} +- {100 * r['ours_ci95']:.1f}",
            f"{100 * r['peer_accuracy']:.1f} +- {100 * r['peer_ci95']:.1f}"]


def _comparison_headers(unit: str, peer: str) -> list[str]:
    return [f"ours {unit}/s", f"{peer} {unit}/s", "ratio", "cpu-time ratio", "per-round ratio median (range)",
            f"data ms/{unit[:-1]} ours/{peer}", "ours test acc %", f"{peer} test acc %"]


def print_section(title: str, results: list[dict]) -> None:
    if not results:
        return
    rows = [[r["setting"], *_comparison_cells(r)] for r in results]
    log(title)
    log(common.format_table(["setting", *_comparison_headers(results[0]["unit"], results[0]["peer"])], rows))
    log()


def print_peers_section(title: str, result: dict) -> None:
    """One row per peer (``summarize_peers``), then ours against the faster one."""
    rows = [[name, *_comparison_cells(r)] for name, r in result["peers"].items()]
    log(f"{title}\n{result['setting']}")
    log(common.format_table(["peer", *_comparison_headers(result["unit"], "peer")], rows))
    log(f"vs the faster peer ({result['faster_peer']}, {result['peer_per_s']:.2f} {result['unit']}/s): "
        f"{result['ratio_vs_faster_peer']:.2f}x wall-clock, {result['cpu_time_ratio_vs_faster_peer']:.2f}x CPU time")
    log()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("auto", "omniglot", "glyphs"), default="auto",
                        help="auto: real Omniglot when it loads, else the built-in glyphs")
    parser.add_argument("--data-root", default=None, help="Omniglot folder (default ../shared/data/omniglot)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides; 0 = all cores")
    parser.add_argument("--only", choices=("protonet", "maml"), default=None)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="our side's precision, as `workbench train --precision` (default auto: what the app "
                        "uses for each algorithm on this machine); the peers run float32 as their examples do")
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
        with our_precision("protonet", args.precision, results):
            for ways, shots, queries in PROTONET_SETTINGS:
                results["protonet"].append(bench_protonet(dataset, ways, shots, queries, args))
        print_section(f"ProtoNet ({results['precision']['protonet']}) meta-training vs easyfsl "
                      f"{_version('easyfsl')} ({args.rounds} rounds x "
                      f"{args.episodes_per_round} episodes per side, after {args.warmup} warm-up; accuracy on "
                      f"{args.eval_episodes} fixed meta-test episodes)", results["protonet"])
    if args.only in (None, "maml"):
        with our_precision("maml", args.precision, results):
            results["maml"].append(bench_maml(dataset, args))
        print_peers_section(f"Second-order MAML ({results['precision']['maml']}) vs higher {_version('higher')} and TorchOpt {_version('torchopt')} "
                            f"({args.maml_rounds} rounds x {args.maml_steps_per_round} meta-steps per side, after "
                            f"{args.maml_warmup} warm-up; accuracy on {args.maml_eval_episodes} fixed meta-test "
                            f"episodes, {args.maml_test_steps} test steps)", results["maml"][0])
    results["environment"]["load_average_1m_end"] = common.environment(threads)["load_average_1m"]
    results["elapsed_s"] = time.perf_counter() - start
    log(f"ratio = ours/peer throughput from one interleaved run; total {results['elapsed_s']:.0f} s, "
        f"load average at end {results['environment']['load_average_1m_end']}")
    common.write_json(results, args.json)
    return results


@contextlib.contextmanager
def our_precision(algorithm: str, requested: str, results: dict):
    """Our side's backbones compute in the precision the app would use (the peers' plain modules are unaffected)."""
    from workbench.core.algorithms import get_algorithm
    from workbench.core.precision import compute_in, resolve_precision

    precision = resolve_precision(requested, "cpu", get_algorithm(algorithm).auto_reduced_precision)
    results.setdefault("precision", {})[algorithm] = precision.name
    log(f"our {algorithm}: {precision.reason}")
    with compute_in(precision.dtype):
        yield


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    main()

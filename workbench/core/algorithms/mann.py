"""Memory-augmented neural networks (Santoro, Bartunov, Botvinick, Wierstra & Lillicrap, ICML 2016, "Meta-Learning
with Memory-Augmented Neural Networks"): an LSTM controller reads and writes an external memory with least-recently-
used access (LRUA) and learns, across episodes, to bind each image to its label within an episode.

An episode is a sequence: at step t the network sees image x_t together with the label of the previous step,
y_{t-1} (one-hot; zeros at the first step), and must output x_t's label; labels are shuffled per episode, so only the
episode itself says which label goes with which class (Section 3). Sequences are built here from the shared
:class:`Episode`, so the test episodes are those of every other algorithm:

- training: the episode's support and query images together, in a random order, each shown with the previous step's
  label, with a random permutation of the labels; the loss is the cross-entropy at every step (the whole sequence,
  as in the paper). The recommended recipe trains with 1 shot and 10 queries per class, i.e. 11 presentations of each
  class, as the paper's sequences do.
- n-way k-shot evaluation: ``adapt`` runs the support (in a fixed shuffled order, each image with the previous support
  label) and keeps the controller and memory state; ``predict`` continues that state by one step for each query
  independently, the query shown with the last support label (what the sequence would show next; zeros appear only
  at the first step in training).

LRUA (Section 3.1): read weights are a softmax over the cosine similarities of a key k_t with the memory rows; write
weights are w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1} (the last read locations or the least
used ones); usage is w^u_t = gamma w^u_{t-1} + w^r_t + w^w_t; w^lu_t is 1 at the n least-used locations (n = the
number of read heads); before writing, the least-used location (argmin of w^u_{t-1}) is zeroed. The paper writes the
key itself, M_t(i) = M_{t-1}(i) + w^w_t(i) k_t; ``write_vector`` "separate" writes a second controller output
instead, as some re-implementations do. The paper's softmax has no key strength; ``key_strength`` "learned" scales
each cosine by a learned beta >= 1 as the Neural Turing Machine does, which sharpens reads over 128 slots and learns
much faster on a CPU budget.

Two departures for a CPU budget, as modern re-implementations do: images go through the project's Conv-4 encoder
(trained end to end) instead of the paper's flattened 20x20 pixels, and the optimizer is Adam with gradient-norm
clipping instead of RMSprop at 1e-4. Inputs of the controller are [encoded x_t, y_{t-1}, previous reads] (the
previous reads as in the NTM; the paper's text does not say whether it feeds them back).

Paper numbers (Table 1, Omniglot, 5 classes, one-hot labels, accuracy at the 1st, 2nd, 3rd, 4th, 5th and 10th
presentation of a class): MANN 36.4%, 82.8%, 91.0%, 92.6%, 94.9%, 98.1%; humans 34.5%, 57.3%, 70.1%, 71.8%, 81.4%,
92.4%; an LSTM 24.4%, 49.5%, 55.3%, 61.0%, 63.6%, 62.5%. Every evaluation here also reports accuracy by instance on
"instance episodes" (n ways x 11 presentations in random order, from the evaluated split, seeded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy
from workbench.core.errors import EpisodeError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails
from workbench.core.recipes import Recipe
from workbench.core.stats import mean_ci95

PAPER = "Santoro et al. 2016"
INSTANCES = (1, 2, 3, 5, 10)  # reported presentations (the paper's Table 1 has 1-5 and 10)
INSTANCE_PRESENTATIONS = 11  # images per class in an instance episode
INSTANCE_EPISODES = 200
PROBE_STEPS = 20  # time steps (rows) of the memory heatmaps (thumbnails stay legible)
MEMORY_INIT = 1e-6  # the memory starts as a small constant, so cosine similarities are defined
STRENGTH_INIT = 10.0  # a learned key strength starts here (as a cosine scale of 10-20 does in metric methods)


@dataclass
class MANNHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block of the image encoder (the paper feeds flattened 20x20 pixels; "
                         "a Conv-4 encoder trained end to end learns far faster).", low=8, high=256)
    controller_units: int = hparam(200, f"LSTM units of the controller (200 in {PAPER}, Omniglot experiments).",
                                   low=8, high=2048)
    memory_slots: int = hparam(128, f"Rows of the external memory (128 in {PAPER}).", low=4, high=1024)
    memory_width: int = hparam(40, f"Width of a memory row, and of the keys (40 in {PAPER}).", low=2, high=512)
    read_heads: int = hparam(4, f"Read heads, each with its own key and write gate (4 in {PAPER}); also the number of "
                             "least-used locations w^lu marks.", low=1, high=16)
    usage_decay: float = hparam(0.95, f"gamma, the decay of the usage weights per step. {PAPER} name gamma without "
                                "printing its value in the text as we read it; 0.95 is the value of the widely used "
                                "re-implementations (uncertain).", low=0.0, high=1.0)
    key_strength: str = hparam("none", f"none: read weights are a softmax over raw cosine similarities ({PAPER}). "
                               "learned: each head scales its cosines by a learned strength beta >= 1 (the Neural "
                               "Turing Machine's), starting at 10, which sharpens reads over many slots.", choices=("none", "learned"))
    write_vector: str = hparam("key", f"What is written: key, the read key k_t itself ({PAPER}); separate, a second "
                               "controller output per head (as the NTM's add vector).", choices=("key", "separate"))
    grad_clip: float = hparam(10.0, "Clip the gradient norm of each step to this (0: no clipping). The paper does not "
                              "state one; recurrent controllers train more steadily with it.", low=0.0, high=1e6)


# --- LRUA, written as pure functions (tested against an independent computation) ---------------------------------
def least_used(usage: torch.Tensor, count: int) -> torch.Tensor:
    """w^lu: 1 at the ``count`` locations of smallest usage [B, N] (ties: the lower index), 0 elsewhere."""
    order = torch.argsort(usage, dim=-1, stable=True)[..., :count]
    return torch.zeros_like(usage).scatter_(-1, order, 1.0)


def lrua_write_weights(prev_read: torch.Tensor, prev_least_used: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """w^w_t = sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}; prev_read [B, H, N], prev_least_used
    [B, N], gate (alpha) [B, H]."""
    mix = torch.sigmoid(gate)[..., None]
    return mix * prev_read + (1 - mix) * prev_least_used[:, None]


@dataclass
class MemoryState:
    memory: torch.Tensor  # [B, N, W]
    usage: torch.Tensor  # [B, N] w^u
    read_weights: torch.Tensor  # [B, H, N] w^r of the last step
    reads: torch.Tensor  # [B, H * W] the last read vectors
    h: torch.Tensor  # [B, units] controller
    c: torch.Tensor

    def expand(self, count: int) -> "MemoryState":
        """The state of one sequence copied ``count`` times (one per query)."""
        return MemoryState(*(t.expand(count, *t.shape[1:]) for t in
                             (self.memory, self.usage, self.read_weights, self.reads, self.h, self.c)))


def lrua_step(state: MemoryState, keys: torch.Tensor, gate: torch.Tensor, written: torch.Tensor, strength: torch.Tensor,
              gamma: float) -> tuple[MemoryState, dict[str, torch.Tensor]]:
    """One LRUA write then read. keys and written [B, H, W], gate and strength [B, H]. Returns the new state (h, c
    unchanged) and the step's weights."""
    heads = keys.shape[1]
    previous_lu = least_used(state.usage, heads)
    write = lrua_write_weights(state.read_weights, previous_lu, gate)
    emptied = F.one_hot(torch.argsort(state.usage, dim=-1, stable=True)[:, 0], state.usage.shape[-1])
    memory = state.memory * (1 - emptied.to(state.memory.dtype))[..., None]
    memory = memory + torch.einsum("bhn,bhw->bnw", write, written)
    similarity = F.normalize(keys, dim=-1, eps=1e-8) @ F.normalize(memory, dim=-1, eps=1e-8).transpose(1, 2)
    read = torch.softmax(strength[..., None] * similarity, dim=-1)  # [B, H, N]
    usage = gamma * state.usage + read.sum(1) + write.sum(1)
    reads = torch.einsum("bhn,bnw->bhw", read, memory).flatten(1)
    new = MemoryState(memory, usage, read, reads, state.h, state.c)
    return new, {"read": read, "write": write, "usage": usage, "least_used": previous_lu}


# --- the network ---------------------------------------------------------------------------------------------------
class MANNNet(nn.Module):
    def __init__(self, encoder: nn.Module, label_slots: int, hp: MANNHParams):
        super().__init__()
        self.encoder = encoder
        self.hp, self.label_slots = hp, label_slots
        heads, width = hp.read_heads, hp.memory_width
        self.controller = nn.LSTMCell(encoder.out_dim + label_slots + heads * width, hp.controller_units)
        with torch.no_grad():  # forget-gate bias 1 (Jozefowicz et al. 2015): the state is kept from the start
            self.controller.bias_ih[hp.controller_units:2 * hp.controller_units] += 1.0
        per_head = width + 2 + (width if hp.write_vector == "separate" else 0)  # key, alpha, beta[, add vector]
        self.interface = nn.Linear(hp.controller_units, heads * per_head)
        self.output = nn.Linear(hp.controller_units + heads * width, label_slots)
        if hp.key_strength == "learned":  # start sharp: a softmax of raw cosines over 128 slots is nearly uniform
            with torch.no_grad():
                self.interface.bias.view(heads, per_head)[:, width + 1] = float(STRENGTH_INIT - 1 + torch.log(
                    -torch.expm1(torch.tensor(-(STRENGTH_INIT - 1.0)))))  # softplus^-1(STRENGTH_INIT - 1)

    def initial_state(self, batch: int, device) -> MemoryState:
        hp = self.hp
        zeros = lambda *shape: torch.zeros(*shape, device=device)  # noqa: E731
        return MemoryState(torch.full((batch, hp.memory_slots, hp.memory_width), MEMORY_INIT, device=device),
                           zeros(batch, hp.memory_slots), zeros(batch, hp.read_heads, hp.memory_slots),
                           zeros(batch, hp.read_heads * hp.memory_width), zeros(batch, hp.controller_units),
                           zeros(batch, hp.controller_units))

    def step(self, state: MemoryState, features: torch.Tensor, previous_label: torch.Tensor):
        """One time step: features [B, F], previous_label [B, slots] one-hot (or zeros). Returns the new state, the
        logits [B, slots] and the step's LRUA weights."""
        hp = self.hp
        h, c = self.controller(torch.cat([features, previous_label, state.reads], dim=1), (state.h, state.c))
        heads, width = hp.read_heads, hp.memory_width
        parts = self.interface(h).view(len(h), heads, -1)
        keys = torch.tanh(parts[..., :width])
        gate = parts[..., width]
        strength = 1 + F.softplus(parts[..., width + 1]) if hp.key_strength == "learned" else torch.ones_like(gate)
        written = torch.tanh(parts[..., width + 2:]) if hp.write_vector == "separate" else keys
        state, weights = lrua_step(MemoryState(state.memory, state.usage, state.read_weights, state.reads, h, c),
                                   keys, gate, written, strength, hp.usage_decay)
        logits = self.output(torch.cat([h, state.reads], dim=1))
        return state, logits, weights

    def run(self, features: torch.Tensor, previous_labels: torch.Tensor, state: MemoryState | None = None,
            record: bool = False):
        """A whole sequence: features [B, T, F], previous_labels [B, T, slots]. Returns logits [B, T, slots], the
        final state and, when ``record``, the weights of each step."""
        state = state or self.initial_state(len(features), features.device)
        logits, trace = [], []
        for t in range(features.shape[1]):
            state, step_logits, weights = self.step(state, features[:, t], previous_labels[:, t])
            logits.append(step_logits)
            if record:
                trace.append({k: v.detach() for k, v in weights.items()})
        return torch.stack(logits, dim=1), state, trace


# --- sequences from episodes ---------------------------------------------------------------------------------------
def shuffled_sequence(labels: torch.Tensor, ways: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random order of the images and a random relabelling: (order [T], relabelled targets [T] in that order)."""
    order = torch.randperm(len(labels), generator=generator)
    relabel = torch.randperm(ways, generator=generator)
    return order, relabel[labels.cpu()[order]]


def previous_labels(targets: torch.Tensor, slots: int) -> torch.Tensor:
    """[..., T] targets -> [..., T, slots]: each step's input label, the previous step's one-hot (zeros at t=0)."""
    one_hot = F.one_hot(targets, slots).float()
    return torch.cat([torch.zeros_like(one_hot[..., :1, :]), one_hot[..., :-1, :]], dim=-2)


def instance_numbers(targets: torch.Tensor) -> torch.Tensor:
    """For each step [B, T], which presentation of its class it is (1 = the first)."""
    same = targets[..., :, None] == targets[..., None, :]  # [B, T, T]: same class
    return torch.tril(same.int()).sum(-1)


# --- declarations --------------------------------------------------------------------------------------------------
def _heatmap_spec(name: str, title: str, what: str) -> InspectionSpec:
    return InspectionSpec(
        name, title, "heatmap", f"{what} over the memory slots (columns) at each time step (rows) of a fixed training "
        f"episode shown as a sequence, with the image of each step on its row ({PAPER}, LRUA). A row names its image's "
        "class (as relabelled for the episode); the label shown with the image is the previous row's class. Summed "
        "over the read heads.", x_label="memory slot", y_label="time step · the image's class")


READ_WEIGHTS = _heatmap_spec("read_weights", "Memory reads", "Read weights w^r: where each step reads, a softmax over "
                             "the cosine similarities of its key with the memory rows,")
WRITE_WEIGHTS = _heatmap_spec("write_weights", "Memory writes", "Write weights w^w: a learned mix of the last read "
                              "locations and the least-used ones,")
USAGE = _heatmap_spec("usage", "Memory usage", "Usage w^u (decayed reads plus writes; the least used slot is "
                      "emptied before each write)")

PAPER_NUMBERS = (f"{PAPER}, Table 1 (Omniglot, 5 classes, one-hot labels): MANN 36.4% at the 1st presentation of a "
                 "class, 82.8% at the 2nd, 91.0% at the 3rd, 94.9% at the 5th and 98.1% at the 10th.")
DEFAULT = Recipe(
    "default", "Tuned here for 3 CPU-minutes on one thread: sequences of 11 presentations per class (1 shot + 10 "
    "queries, in random order), 8 episodes per step, a Conv-4 encoder of 32 filters, a controller of 100 LSTM units, "
    "learned key strengths, a separate write vector, Adam 5e-3 with gradient clipping, cosine schedule over the time "
    "budget (steps 0: until the budget). Under this budget MANN is only starting to learn within the episode (it "
    "needs tens of thousands of episodes in the paper). " + PAPER_NUMBERS,
    recommended=True, hparams={"hidden": 32, "controller_units": 100, "key_strength": "learned",
                               "write_vector": "separate"},
    training={"steps": 0, "max_minutes": 3.0, "train_shots": 1, "train_queries": 10, "meta_batch": 8, "lr": 5e-3,
              "lr_schedule": "cosine", "val_interval": 100, "val_episodes": 100})
PAPER_RECIPE = Recipe(
    "paper", f"The paper's Omniglot setup as far as it applies ({PAPER}): sequences of 5 classes with 11 "
    "presentations each, 16 episodes per step, its controller and memory sizes, no key strength, the key written "
    "to memory; Adam 1e-4 in place of the paper's RMSprop (1e-4 as we read its appendix; unsure), 100,000 steps "
    "(the paper's curves run to 100,000 episodes). "
    "Hours on a CPU. " + PAPER_NUMBERS, datasets=("omniglot",),
    dataset={"ways": 5, "shots": 1},
    training={"steps": 100_000, "train_shots": 1, "train_queries": 10, "meta_batch": 16, "lr": 1e-4,
              "lr_schedule": "constant", "val_interval": 2000, "val_episodes": 200})


@register
class MANN(Algorithm):
    name = "mann"
    title = "Memory-augmented network (MANN)"
    family = Family.MODEL
    summary = "An LSTM with an external memory learns to bind images to labels within an episode."
    description = ("Memory-augmented neural networks (Santoro et al., 2016) see an episode as a sequence: each image "
                   "comes with the previous image's label, and labels are shuffled per episode, so the network must "
                   "store each image in an external memory until its label arrives and retrieve it when the class "
                   "comes back. An LSTM controller reads memory rows by cosine similarity and writes with "
                   "least-recently-used access: to the rows it just read or to the least used one. Accuracy grows "
                   "with each presentation of a class; evaluations report it by instance, as the paper's Table 1. "
                   "The Mechanism view shows the read and write weights over memory slots along an episode.")
    HParams = MANNHParams
    kinds = ("classification",)
    recipes = (DEFAULT, PAPER_RECIPE)
    capabilities = frozenset({"embeddings", "evaluation_extras", "inspection"})
    inspections = (READ_WEIGHTS, WRITE_WEIGHTS, USAGE)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.label_slots = model_spec.ways
        encoder = self.kind.build_encoder(model_spec, hparams.hidden)
        self.net = MANNNet(encoder, self.label_slots, hparams).to(self.device)
        self.generator = torch.Generator().manual_seed(0)  # training sequences' order and relabelling
        self._probe: Any = None  # the first training episode (cpu), for the inspection

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def _check_ways(self, ways: int) -> None:
        if ways > self.label_slots:
            raise EpisodeError(f"{self.title} was trained with {self.label_slots} label slots (training n-way); an "
                               f"episode of {ways} ways needs at least that many: train with training.train_ways >= "
                               f"{ways}")

    # --- training --------------------------------------------------------------------------------------------------
    def _episode_sequence(self, episode, generator: torch.Generator):
        """Images [T, C, H, W] and targets [T] of an episode's support and queries in a random order, relabelled."""
        images = torch.cat([episode.support_x, episode.query_x])
        order, targets = shuffled_sequence(torch.cat([episode.support_y, episode.query_y]), episode.ways, generator)
        return images[order.to(images.device)], targets.to(self.device)

    def _sequence_logits(self, images: torch.Tensor, targets: torch.Tensor, record: bool = False):
        """images [B, T, C, H, W], targets [B, T] -> logits [B, T, slots], final state, trace."""
        batch, steps = targets.shape
        features = self.net.encoder(images.flatten(0, 1)).view(batch, steps, -1)
        return self.net.run(features, previous_labels(targets, self.label_slots), record=record)

    def meta_train_step(self, episodes) -> dict[str, float]:
        if self._probe is None and episodes:
            self._probe = episodes[0].to("cpu")
        self.net.train()
        for episode in episodes:
            self._check_ways(episode.ways)
        sequences = [self._episode_sequence(e.to(self.device), self.generator) for e in episodes]
        images = torch.stack([s[0] for s in sequences])
        targets = torch.stack([s[1] for s in sequences])
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        logits, _, _ = self._sequence_logits(images, targets)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        loss.backward()
        if self.hparams.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.hparams.grad_clip)
        optimizer.step()
        self.step_schedulers()
        return {"loss": float(loss.detach()), "accuracy": accuracy(logits.detach(), targets)}

    # --- n-way k-shot ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        """Run the support as a sequence (a fixed shuffled order and relabelling, so results are reproducible) and
        keep the state for the queries."""
        self._check_ways(ways)
        self.net.eval()
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        order, targets = shuffled_sequence(support_y, ways, torch.Generator().manual_seed(0))
        relabel = torch.empty(ways, dtype=torch.long)
        relabel[support_y.cpu()[order]] = targets  # episode label -> the label slot the sequence used
        targets = targets.to(self.device)
        _, state, _ = self._sequence_logits(support_x[order.to(self.device)][None], targets[None])
        last = F.one_hot(targets[-1], self.label_slots).float()
        return {"state": state, "last_label": last, "relabel": relabel.to(self.device), "ways": ways}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        """Each query continues the support sequence by one step on its own, shown with the last support label."""
        self.net.eval()
        query_x = query_x.to(self.device)
        count = len(query_x)
        _, logits, _ = self.net.step(adapted["state"].expand(count), self.net.encoder(query_x),
                                     adapted["last_label"].expand(count, -1))
        return logits[:, adapted["relabel"]].softmax(dim=-1)  # slots back in the episode's label order

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """The encoder's features, the controller's view of an image."""
        self.net.eval()
        return self.net.encoder(x.to(self.device))

    # --- reports ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def instance_accuracy(self, split, spec, ways: int, count: int, seed: int) -> dict[str, Any]:
        """Accuracy at each presentation of a class over ``count`` sequences of ``ways`` classes x 11 images in a
        random order, drawn from ``split`` with ``seed`` (the paper's Table 1 protocol)."""
        from workbench.core.data.episodes import FixedEpisodes

        self._check_ways(ways)
        self.net.eval()
        tasks = FixedEpisodes(split, spec, ways, 1, INSTANCE_PRESENTATIONS - 1, count, seed)
        generator = torch.Generator().manual_seed(seed)
        correct, numbers = [], []
        for start in range(0, count, 50):  # batches of sequences
            sequences = [self._episode_sequence(tasks[i].to(self.device), generator)
                         for i in range(start, min(start + 50, count))]
            targets = torch.stack([s[1] for s in sequences])
            logits, _, _ = self._sequence_logits(torch.stack([s[0] for s in sequences]), targets)
            correct.append((logits[..., :ways].argmax(-1) == targets).float().cpu())
            numbers.append(instance_numbers(targets).cpu())
        correct, numbers = torch.cat(correct), torch.cat(numbers)
        by_instance, ci95 = {}, {}
        for k in INSTANCES:
            per_episode = [float(row[mask].mean()) for row, mask in zip(correct, numbers == k) if bool(mask.any())]
            by_instance[str(k)], ci95[str(k)] = mean_ci95(per_episode)
        return {"accuracy_by_instance": by_instance, "ci95_by_instance": ci95, "episodes": count, "ways": ways,
                "presentations": INSTANCE_PRESENTATIONS, "seed": seed}

    def evaluation_extras(self, tasks) -> dict[str, Any]:
        """Accuracy by instance on instance episodes from the evaluated split (seeded by the evaluation's seed)."""
        split, spec = getattr(tasks, "split", None), getattr(getattr(tasks, "sampler", None), "spec", None)
        if split is None or spec is None:
            return {}
        try:
            found = self.instance_accuracy(split, spec, tasks.ways, INSTANCE_EPISODES, int(getattr(tasks, "seed", 0)))
        except EpisodeError as error:  # e.g. classes with fewer than 11 images
            return {"instance_note": f"accuracy by instance unavailable: {error}"}
        # A curve in the evaluation's extras ("<metric>_by_<x>"): the Evaluation tab plots it, the CLI lists it.
        return {"accuracy_by_instance": found["accuracy_by_instance"], "ci95_by_instance": found["ci95_by_instance"],
                "instance_note": f"The n-th presentation of a class in {found['episodes']} sequences of "
                                 f"{found['ways']} classes x {found['presentations']} images in random order (seed "
                                 f"{found['seed']}), each image shown with the previous one's label, as in Santoro "
                                 "et al. (2016), Table 1."}

    @torch.no_grad()
    def inspect(self) -> dict[str, dict[str, Any]]:
        """Read and write weights (summed over heads) and usage along the probe episode's first steps."""
        if self._probe is None:
            return {}
        self.net.eval()
        episode = self._probe.to(self.device)
        images, targets = self._episode_sequence(episode, torch.Generator().manual_seed(0))
        images, targets = images[:PROBE_STEPS], targets[:PROBE_STEPS]
        _, _, trace = self._sequence_logits(images[None], targets[None], record=True)
        rows = np.array([f"t{t + 1} · class {int(y) + 1}" for t, y in enumerate(targets)])
        columns = np.array([f"m{i}" for i in range(self.hparams.memory_slots)])
        thumbs = image_thumbnails(images)
        out = {}
        for name, key in (("read_weights", "read"), ("write_weights", "write"), ("usage", "usage")):
            values = torch.stack([step[key][0] for step in trace])
            values = values.sum(1) if values.dim() == 3 else values  # sum over heads
            out[name] = {"values": values.cpu().numpy(), "rows": rows, "columns": columns, "row_images": thumbs}
        return out


__all__ = ["MANN", "MANNNet", "MemoryState", "least_used", "lrua_write_weights", "lrua_step", "previous_labels",
           "instance_numbers", "shuffled_sequence"]

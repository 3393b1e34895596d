"""CNAPs (Requeima, Gordon, Bronskill, Nowozin & Turner, 2019, "Fast and Flexible Multi-Task Classification Using
Conditional Neural Adaptive Processes", NeurIPS): a task encoder reads the support set once and generates everything
task-specific in one forward pass, with no gradient steps at test time.

- Task encoder (the paper's set encoder): a small conv net (conv, batch norm, ReLU, max-pool blocks, then global
  average pooling) embeds each support image; the mean over the support set is the task representation z.
- FiLM generators, one per block of the shared feature extractor: z -> (γ, β) per channel, applied after the
  block's batch norm, h -> γ ⊙ h + β. As in the authors' code (cambridge-mlg/cnaps, adaptation_networks.py):
  γ = 1 + r_γ ⊙ g(z) and β = r_β ⊙ h(z), where g and h are three dense residual layers after a shared linear+ReLU
  layer and r_γ, r_β are learned per-channel scales initialised from N(0, 0.001²); the loss adds
  ``film_l2`` · Σ (r_γ² + r_β²) (0.001), which keeps the adaptation near the identity (γ = 1, β = 0 is the plain
  extractor, and the generators start within ~0.01 of it).
- Feature extractor: Conv-4 (64 filters) with global average pooling, so its features have ``hidden`` dimensions
  at any image size and channel count. DEPARTURE from the paper, which uses a ResNet-18 pretrained on ImageNet and
  frozen, adapting only through FiLM: there is no such pretrained network for 28x28 grey glyphs here, so the
  extractor is trained end-to-end with the rest (pretraining first would need a second training run that the
  3 CPU-minute budget cannot afford).
- CNAPs' classifier: the linear classifier adaptation network. For each class c the mean μ_c of its adapted support
  features gives the class's weights w_c = φ_w(μ_c) and bias b_c = φ_b(μ_c) (dense residual blocks of three linear
  layers with ELUs, a skip connection where the sizes agree); query logits are w_c · f(x) + b_c.

Simple CNAPs (``simple_cnaps.py``) shares the task encoder, the FiLM generators and the extractor and replaces the
generated head with a Mahalanobis distance.

Paper numbers: CNAPs reports no Omniglot 5-way 1-shot result in the standard protocol. On Meta-Dataset (Triantafillou
et al. 2020), whose Omniglot tasks have varying ways and shots drawn from whole alphabets, CNAPs reports 91.7 ± 0.5%
on Omniglot (Requeima et al. 2019, Table 1; as Bateni et al. 2020, Table 1 quote it): NOT the 5-way 1-shot protocol.

The Mechanism view: the FiLM γ and β of every block for a probe task (the first training episode met), as
histograms per block, and a heatmap comparing the γ − 1 and β of two probe tasks (the first two training episodes)
channel by channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails
from workbench.core.models.conv4 import (can_fold_batch_norm, conv_block, conv_with_folded_batch_norm,
                                         to_channels_last)
from workbench.core.precision import backbone_autocast
from workbench.core.recipes import Recipe

PAPER = "Requeima et al. 2019"
BLOCKS = 4  # Conv-4


# --- building blocks (the authors' dense residual layers) ----------------------------------------------------------
class DenseResidualLayer(nn.Module):
    """x + Wx + b."""

    def __init__(self, size: int):
        super().__init__()
        self.linear = nn.Linear(size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + x


class DenseResidualBlock(nn.Module):
    """Three linear layers with ELUs between, plus the input where the sizes agree (CNAPs' classifier generator)."""

    def __init__(self, in_size: int, out_size: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_size, in_size), nn.ELU(), nn.Linear(in_size, in_size), nn.ELU(),
                                 nn.Linear(in_size, out_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out + x if out.shape[-1] == x.shape[-1] else out


class TaskEncoder(nn.Module):
    """The set encoder: conv blocks, global average pooling per image, the mean over the support set."""

    def __init__(self, in_channels: int, width: int, blocks: int = BLOCKS):
        super().__init__()
        layers, channels = [], in_channels
        for _ in range(blocks):
            # Pool before ReLU (they commute, the ReLU then touches a quarter); ceil_mode: a 1x1 map stays 1x1
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.MaxPool2d(2, ceil_mode=True), nn.ReLU(inplace=True)]
            channels = width
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, support_x: torch.Tensor) -> torch.Tensor:
        if support_x.device.type == "cpu" and support_x.dtype == torch.float32:
            # channels-last even for a small support set: NCHW max-pool is slow on CPU (see conv4.py)
            support_x = torch.clone(support_x, memory_format=torch.channels_last)
        return self.net(support_x).mean(dim=(2, 3)).mean(dim=0)


class BlockFilm(nn.Module):
    """One block's FiLM generator: z -> (γ, β) per channel, γ = 1 + r_γ ⊙ g(z), β = r_β ⊙ h(z)."""

    def __init__(self, task_dim: int, channels: int):
        super().__init__()
        self.shared = nn.Sequential(nn.Linear(task_dim, channels), nn.ReLU())
        self.gamma = self._processor(channels)
        self.beta = self._processor(channels)
        self.gamma_scale = nn.Parameter(torch.randn(channels) * 0.001)
        self.beta_scale = nn.Parameter(torch.randn(channels) * 0.001)

    @staticmethod
    def _processor(size: int) -> nn.Sequential:
        return nn.Sequential(DenseResidualLayer(size), nn.ReLU(), DenseResidualLayer(size), nn.ReLU(),
                             DenseResidualLayer(size))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shared = self.shared(z)
        return 1 + self.gamma_scale * self.gamma(shared), self.beta_scale * self.beta(shared)

    def regularization(self) -> torch.Tensor:
        return self.gamma_scale.pow(2).sum() + self.beta_scale.pow(2).sum()


class FilmGenerator(nn.Module):
    """A FiLM generator per block of the feature extractor."""

    def __init__(self, task_dim: int, channels: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList(BlockFilm(task_dim, c) for c in channels)

    def forward(self, z: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [block(z) for block in self.blocks]

    def regularization(self) -> torch.Tensor:
        return sum(block.regularization() for block in self.blocks)


class FilmConv4(nn.Module):
    """Conv-4 whose blocks are conv, batch norm, FiLM, 2x2 max-pool, ReLU, then global average pooling. ``film``
    None (or every γ = 1, β = 0) gives the plain extractor.

    Batch norm followed by FiLM is batch norm with the affine map (γ·w, γ·b + β), so FiLM is folded into the batch
    norm's affine parameters and costs nothing per pixel; the block then runs as Conv-4's does (pool before ReLU,
    the first block's batch norm folded into its convolution, see conv4.py)."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.blocks = nn.ModuleList(conv_block(in_channels if i == 0 else hidden, hidden) for i in range(BLOCKS))
        self.out_dim = hidden

    def forward(self, x: torch.Tensor, film: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        with backbone_autocast(x):
            features = self._blocks(to_channels_last(x), film)
        return features.to(x.dtype)

    def _blocks(self, x: torch.Tensor, film) -> torch.Tensor:
        for index, (conv, norm, relu, pool) in enumerate(self.blocks):
            affine = norm if film is None else film_affine(norm, *film[index])
            if can_fold_batch_norm(x, conv, norm):
                features, shift = conv_with_folded_batch_norm(x, conv, affine)
                x = _pool(pool, features) + shift
            else:
                x = _pool(pool, affine_batch_norm(conv(x), affine))
            x = relu(x)
        return x.mean(dim=(2, 3))


def _pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return pool(x) if min(x.shape[-2:]) > 1 else x  # a 1x1 map is not pooled away


def film_affine(norm: nn.BatchNorm2d, gamma: torch.Tensor, beta: torch.Tensor) -> SimpleNamespace:
    """A stand-in for ``norm`` whose affine map is FiLM after it, (γ·w, γ·b + β), sharing its running statistics
    (which FiLM does not change: it acts after the normalization)."""
    return SimpleNamespace(weight=norm.weight * gamma, bias=norm.bias * gamma + beta, eps=norm.eps,
                           momentum=norm.momentum, training=norm.training, affine=True,
                           track_running_stats=norm.track_running_stats, running_mean=norm.running_mean,
                           running_var=norm.running_var, num_batches_tracked=norm.num_batches_tracked)


def affine_batch_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """What ``nn.BatchNorm2d`` computes (this module's norms track running statistics), with ``norm``'s affine."""
    if isinstance(norm, nn.BatchNorm2d):
        return norm(x)
    if norm.training:
        norm.num_batches_tracked.add_(1)
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, norm.training,
                        norm.momentum, norm.eps)


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    sums = torch.zeros(ways, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return sums / torch.bincount(labels, minlength=ways).clamp_min(1).to(features.dtype)[:, None]


# --- declarations ---------------------------------------------------------------------------------------------
@dataclass
class CNAPsHParams:
    hidden: int = hparam(64, "Filters per block of the FiLM-adapted Conv-4 feature extractor (the features have this "
                         f"many dimensions). {PAPER} adapt a pretrained ResNet-18 (512 features); here Conv-4 is "
                         "trained end-to-end.", low=8, high=256)
    task_encoder_width: int = hparam(64, f"Channels of the task (set) encoder's conv blocks, 64 in {PAPER}; the task "
                                     "representation has this many dimensions.", low=8, high=256)
    film_l2: float = hparam(0.001, "Weight of the L2 penalty on the FiLM generators' per-channel output scales "
                            "(γ = 1 + r_γ·g(z), β = r_β·h(z); penalty on r_γ² + r_β²), which keeps the adaptation "
                            f"near the identity: 0.001 in the code of {PAPER}.", low=0.0, high=1.0)


FILM_GAMMA = InspectionSpec(
    "film_gamma", "FiLM γ per block", "layer_histograms",
    f"The per-channel scales γ the FiLM generators give each block of the feature extractor for the probe task (the "
    f"first training episode met), {PAPER}. γ = 1 everywhere is the plain, unadapted extractor; spread away from 1 is "
    "how much the task reshapes that block.", x_label="γ")
FILM_BETA = InspectionSpec(
    "film_beta", "FiLM β per block", "layer_histograms",
    f"The per-channel shifts β the FiLM generators give each block for the probe task ({PAPER}); β = 0 is no shift.",
    x_label="β")
FILM_TASKS = InspectionSpec(
    "film_tasks", "FiLM of two tasks", "heatmap",
    "Two probe tasks (A: the first training episode met, B: the next one with other classes, from another "
    "dataset or alphabet when one comes soon) side by side: for each block, rows γ − 1 and β of task A and of "
    "task B, one column per channel, the row thumbnail being the task's first support image. Identical rows of A and B mean the task encoder does not tell the tasks apart; "
    "differences show which channels each task turns up, down or shifts.", x_label="channel", y_label="block, task")
FILM_DIFFERENCE = InspectionSpec(
    "film_difference", "FiLM difference of two tasks", "heatmap",
    "How the two probe tasks' FiLM parameters differ, γ_A − γ_B and β_A − β_B per block and channel, on a colour "
    "scale of their own (the parameters themselves are dominated by what every task shares). All zero: the "
    "adaptation ignores the task; tasks from different datasets should differ most.", x_label="channel",
    y_label="block")

GLYPHS_DEFAULT = Recipe(
    "default", "Tuned here for 3 CPU-minutes on one thread, any dataset: 15-way training episodes with 5 queries per "
    "class, Adam 1e-3, cosine schedule over 2,000 steps or the time budget, whichever ends first (steps 0: until the "
    "budget).", recommended=True,
    training={"train_ways": 15, "train_queries": 5, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 250,
              "val_episodes": 100})
OMNIGLOT = Recipe(
    "omniglot", "The default recipe with Omniglot's rotation classes (x4): 2,000 steps or the time budget, "
    "whichever ends first; the catalogue trains it until its 3 CPU-minute budget on one thread.", datasets=("omniglot",),
    recommended=True, dataset={"rotations": True},
    training={"train_ways": 15, "train_queries": 5, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 500,
              "val_episodes": 100})


PROBE_PATIENCE = 20


def probe_domain(episode) -> str:
    """The domain an episode's first class comes from, read from its name: a mixture's '<dataset>/...', an Omniglot
    '<alphabet>/<character>'; '' for names without one."""
    return episode.class_names[0].partition("/")[0] if "/" in episode.class_names[0] else ""


@register
class CNAPs(Algorithm):
    name = "cnaps"
    title = "CNAPs"
    family = Family.MODEL
    summary = "A task encoder generates FiLM parameters for the feature extractor and the linear classifier."
    description = ("Conditional Neural Adaptive Processes (Requeima et al., 2019) adapt to a task in one forward pass. "
                   "A task encoder reads the support set and FiLM generators turn its representation into a scale γ "
                   "and a shift β for every channel of every block of a shared feature extractor; an adaptation "
                   "network then generates each class's linear classifier weights and bias from the mean of its "
                   "adapted support features. No gradient steps at test time. It was built to train across several "
                   "datasets at once, where each task needs a differently tuned extractor. The Mechanism view shows "
                   "the FiLM parameters per block for a probe task, and two tasks' parameters side by side.")
    HParams = CNAPsHParams
    kinds = ("classification",)
    recipes = (GLYPHS_DEFAULT, OMNIGLOT)
    capabilities = frozenset({"embeddings", "inspection"})
    inspections = (FILM_GAMMA, FILM_BETA, FILM_TASKS, FILM_DIFFERENCE)
    support_dependent_embeddings = True  # the FiLM-adapted space depends on the task's support

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.extractor = FilmConv4(model_spec.in_channels, hparams.hidden).to(self.device)
        self.task_encoder = TaskEncoder(model_spec.in_channels, hparams.task_encoder_width).to(self.device)
        self.film = FilmGenerator(hparams.task_encoder_width, [hparams.hidden] * BLOCKS).to(self.device)
        self.classifier = self.build_classifier(hparams.hidden)
        self._probes: list = []  # the two probe episodes of the FiLM views (cpu copies)
        self._probe_candidates = 0  # episodes passed over while looking for a task B from another domain

    # --- the classifier (Simple CNAPs overrides these three) ------------------------------------------------------
    def build_classifier(self, dim: int) -> nn.Module | None:
        """The linear classifier adaptation network: weights and bias of a class from its mean feature."""
        return nn.ModuleDict({"weight": DenseResidualBlock(dim, dim),
                              "bias": DenseResidualBlock(dim, 1)}).to(self.device)

    def classifier_state(self, support: torch.Tensor, support_y: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        means = class_means(support, support_y, ways)
        return {"weight": self.classifier["weight"](means), "bias": self.classifier["bias"](means).squeeze(-1)}

    def classifier_logits(self, state: dict[str, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        return queries @ state["weight"].T + state["bias"]

    # --- the shared machinery -------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        parts = {"extractor": self.extractor, "task_encoder": self.task_encoder, "film": self.film}
        return parts | ({"classifier": self.classifier} if self.classifier is not None else {})

    def task_film(self, support_x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(γ, β) per block for the task whose support set this is."""
        return self.film(self.task_encoder(support_x))

    def episode_logits(self, episode) -> torch.Tensor:
        n = len(episode.support_x)
        film = self.task_film(episode.support_x)
        features = self.extractor(torch.cat([episode.support_x, episode.query_x]), film)  # one batch-norm batch
        state = self.classifier_state(features[:n], episode.support_y, episode.ways)
        return self.classifier_logits(state, features[n:])

    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        self._keep_probes(episodes)
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        total_loss, total_acc = 0.0, 0.0
        for episode in episodes:
            episode = episode.to(self.device)
            logits = self.episode_logits(episode)
            loss = F.cross_entropy(logits, episode.query_y) / len(episodes)
            loss.backward()
            total_loss += loss.item()
            total_acc += accuracy(logits, episode.query_y) / len(episodes)
        penalty = self.hparams.film_l2 * self.film.regularization()
        if self.hparams.film_l2 > 0:
            penalty.backward()
        optimizer.step()
        self.step_schedulers()
        return {"loss": total_loss + penalty.item(), "accuracy": total_acc}

    def _keep_probes(self, episodes) -> None:
        """Task A is the first training episode; task B the first with other classes from another domain (another
        dataset of a mixture, another alphabet), which shows FiLM's task dependence best, or after
        PROBE_PATIENCE episodes (at once when class names carry no domain) the next one with other classes."""
        for episode in episodes:
            if len(self._probes) == 2:
                return
            if not self._probes:
                self._probes.append(episode.to("cpu"))
                continue
            if episode.class_ids == self._probes[0].class_ids:
                continue
            self._probe_candidates += 1
            first_domain = probe_domain(self._probes[0])
            if (not first_domain or probe_domain(episode) != first_domain
                    or self._probe_candidates >= PROBE_PATIENCE):
                self._probes.append(episode.to("cpu"))

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        self.eval()
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        film = self.task_film(support_x)
        support = self.extractor(support_x, film)
        return {"film": film, "ways": ways, **self.classifier_state(support, support_y, ways)}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        queries = self.extractor(query_x.to(self.device), adapted["film"])
        return self.classifier_logits(adapted, queries).softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """The feature space the classifier works in: FiLM-adapted to the task when ``adapted`` is given, else the
        plain extractor (γ = 1, β = 0)."""
        self.eval()
        return self.extractor(x.to(self.device), adapted["film"] if adapted is not None else None)

    # --- inspection -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def inspect(self) -> dict[str, dict]:
        """γ and β per block of probe task A, and both probe tasks' γ − 1 and β per channel; nothing before
        training."""
        if not self._probes:
            return {}
        self.eval()
        films = [[(g.cpu().numpy(), b.cpu().numpy()) for g, b in self.task_film(p.support_x.to(self.device))]
                 for p in self._probes]
        gamma = {f"block {i + 1}": g for i, (g, _) in enumerate(films[0])}
        beta = {f"block {i + 1}": b for i, (_, b) in enumerate(films[0])}
        records = {"film_gamma": gamma, "film_beta": beta, "film_tasks": self._tasks_record(films)}
        if len(films) == 2:
            records["film_difference"] = difference_record(films)
        return records

    def _tasks_record(self, films) -> dict[str, np.ndarray]:
        names = "AB"[: len(films)]
        firsts = image_thumbnails(torch.stack([p.support_x[0] for p in self._probes]))
        rows, labels, images = [], [], []
        for block in range(BLOCKS):
            for what, offset in (("γ−1", 1.0), ("β", 0.0)):
                for task, film in enumerate(films):
                    rows.append(film[block][0 if what == "γ−1" else 1] - offset)
                    labels.append(f"b{block + 1} {what} {names[task]}")
                    images.append(firsts[task])
        channels = len(rows[0])
        return {"values": np.stack(rows).astype(np.float32), "rows": np.array(labels),
                "columns": np.array([str(c) for c in range(channels)]), "row_images": np.stack(images)}


def difference_record(films) -> dict[str, np.ndarray]:
    """γ_A − γ_B and β_A − β_B per block: [2 * blocks, channels]."""
    rows, labels = [], []
    for block, ((gamma_a, beta_a), (gamma_b, beta_b)) in enumerate(zip(*films)):
        rows += [gamma_a - gamma_b, beta_a - beta_b]
        labels += [f"b{block + 1} γ A−B", f"b{block + 1} β A−B"]
    return {"values": np.stack(rows).astype(np.float32), "rows": np.array(labels),
            "columns": np.array([str(c) for c in range(len(rows[0]))])}


__all__ = ["CNAPs", "CNAPsHParams", "TaskEncoder", "FilmGenerator", "FilmConv4", "BlockFilm", "DenseResidualBlock",
           "DenseResidualLayer", "class_means", "FILM_GAMMA", "FILM_BETA", "FILM_TASKS", "FILM_DIFFERENCE"]

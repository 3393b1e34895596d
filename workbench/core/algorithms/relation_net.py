"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, 2018, "Learning to Compare: Relation Network for
Few-Shot Learning", CVPR): a learned comparison instead of a fixed distance.

An embedding module f turns every image into a feature map; a relation module g scores each (class, query) pair

    r_{c,q} = g([f(class c) ; f(q)]) in [0, 1],

where [;] concatenates the two feature maps along the channels and f(class c) is the element-wise sum of the feature
maps of class c's support images (the paper, section 3.3: for K-shot the K maps are summed, so 1-shot uses the map
itself). Training regresses the scores onto the one-hot labels with a mean squared error (section 3.4: a relation
score is a similarity, not a class probability), averaged over all query x class pairs; a query goes to the class
with the highest score.

The networks follow the paper (section 3.5, figure 2) and the authors' code (github.com/floodsung/
LearningToCompare_FSL, omniglot/omniglot_train_one_shot.py): the embedding module is four blocks of 3x3 convolution
with 64 filters, batch norm and ReLU, the first two unpadded and followed by 2x2 max-pooling, the last two padded and
not pooled, so the maps stay spatial (28x28 Omniglot: 26 -> 13 -> 11 -> 5, then 5x5x64). The relation module is two
such blocks (padded, pooled: 5 -> 2 -> 1) on the 128-channel pair map, then a fully connected layer to 8 units with
ReLU and one to a single unit with a sigmoid. Other image sizes adapt: a block convolves unpadded only while its input
is at least 4 pixels wide and pools only maps at least 2 wide, so 16x16 images end in 2x2 maps and 84x84 images in
19x19 maps. Initialization as in the authors' code: convolutions normal with std sqrt(2 / (9 * out channels)),
linear layers normal with std 0.01 and bias 1. Each module's gradient norm is clipped to 0.5 (the authors' code).
Here batch norm keeps running statistics with the default momentum (the authors' code uses momentum 1, the last
batch's statistics) and the networks are evaluated in eval mode.

Cost: the first relation convolution is linear in its input, so on a concatenated pair it is the sum of one
convolution over the class map (with the weights' first half) and one over the query map (the second half). Those are
computed once per class and once per query and added for every pair, N + Q convolutions instead of N x Q; the
result is the same (tests/test_relation_net.py checks it against the concatenation).

Training as in the paper: Adam at 1e-3, halved every 100,000 episodes; each training episode of Omniglot has 19 query
images per class for 5-way 1-shot and 10 for 20-way 1-shot; Omniglot's classes are augmented with rotations by 90,
180 and 270 degrees. The paper's numbers on Omniglot (Sung et al. 2018, Table 1, 95% intervals over test episodes):
99.6 ± 0.2% (5-way 1-shot), 99.8 ± 0.1% (5-way 5-shot), 97.6 ± 0.2% (20-way 1-shot), 99.1 ± 0.1% (20-way 5-shot).

The Mechanism view shows the relation scores of a fixed probe episode (the first training episode this instance met):
probe queries in rows, the episode's classes in columns, with their images along the axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, accuracy
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails as thumbnails
from workbench.core.models.conv4 import ConvBlock, to_channels_last
from workbench.core.precision import backbone_autocast
from workbench.core.recipes import Recipe

PAPER = "Sung et al. 2018"
AUTHORS_CODE = "the authors' code, github.com/floodsung/LearningToCompare_FSL"
PROBE_ROWS, PROBE_COLUMNS = 10, 20  # the similarity view's probe queries and classes, at most


@dataclass
class RelationNetHParams:
    hidden: int = hparam(64, f"Filters per convolution block of the embedding and relation modules (64 in {PAPER}).",
                         low=4, high=256)
    relation_units: int = hparam(8, f"Units of the relation module's hidden fully connected layer, before the single "
                                 f"sigmoid output (8 in {PAPER}).", low=1, high=1024)
    grad_clip: float = hparam(0.5, f"Clip each module's gradient norm (embedding, relation) to this (0.5 in "
                              f"{AUTHORS_CODE}); 0 turns clipping off.", low=0.0, high=1e6)


# --- networks ------------------------------------------------------------------------------------------------------
def block_layout(side: int, blocks: int, pooled: int, unpadded: bool) -> tuple[list[tuple[int, bool]], int]:
    """(padding, pools) of each of ``blocks`` 3x3 convolution blocks on ``side``-pixel maps, and the final side. The
    first ``pooled`` blocks pool, only maps at least 2 wide; with ``unpadded`` those convolve without padding (the
    paper's embedding) while their input is at least 4 wide, so small images keep a spatial map."""
    layout = []
    for block in range(blocks):
        pool = block < pooled
        padding = 0 if (unpadded and pool and side >= 4) else 1
        side -= 2 * (1 - padding)
        pool = pool and side >= 2
        side = side // 2 if pool else side
        layout.append((padding, pool))
    return layout, side


def relation_block(in_channels: int, out_channels: int, padding: int, pool: bool) -> nn.Module:
    """3x3 convolution, batch norm, ReLU, and 2x2 max-pool when ``pool`` (Conv-4's block, whose pool runs first)."""
    # No conv bias: the batch norm right after cancels it.
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding, bias=False)
    if pool:
        return ConvBlock(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.MaxPool2d(2))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def authors_init(module: nn.Module) -> None:
    """The authors' initialization: convolutions N(0, 2 / (k * k * out)), linear layers N(0, 0.01^2) with bias 1."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            fan_out = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / fan_out))
        elif isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, 0.01)
            nn.init.ones_(layer.bias)


class EmbeddingModule(nn.Module):
    """Four conv blocks; the first two pool (unpadded when the maps are big enough), the last two keep the size."""

    def __init__(self, in_channels: int, filters: int, image_size: int):
        super().__init__()
        layout, self.side = block_layout(image_size, 4, 2, unpadded=True)
        self.blocks = nn.Sequential(*(relation_block(in_channels if i == 0 else filters, filters, padding, pool)
                                      for i, (padding, pool) in enumerate(layout)))
        self.channels = filters
        authors_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with backbone_autocast(x):
            maps = self.blocks(to_channels_last(x))  # [B, filters, side, side]
        return maps.to(x.dtype)


class RelationModule(nn.Module):
    """g: two conv blocks on a [class ; query] pair map, FC -> ReLU -> FC -> one logit (the score's sigmoid)."""

    def __init__(self, channels: int, filters: int, side: int, units: int):
        super().__init__()
        (first, second), out_side = block_layout(side, 2, 2, unpadded=False)
        self.channels = channels
        self.first = relation_block(2 * channels, filters, *first)
        self.second = relation_block(filters, filters, *second)
        self.fc = nn.Linear(filters * out_side * out_side, units)
        self.out = nn.Linear(units, 1)
        authors_init(self)

    def _head(self, first_conv: torch.Tensor) -> torch.Tensor:
        """Everything after the first convolution: its norm, ReLU and pool, the second block, the two layers."""
        _, norm, relu, *pool = self.first
        x = relu(pool[0](norm(first_conv)) if pool else norm(first_conv))
        x = self.second(x).flatten(1)
        return self.out(F.relu(self.fc(x))).squeeze(1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        """Logits of concatenated pair maps [P, 2C, s, s]: the paper's formulation, the reference for
        ``pair_logits``."""
        return self._head(self.first[0](pairs))

    def pair_logits(self, class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
        """Logits [Q, N] of every (query, class) pair: the first convolution of a concatenation is the sum of the
        convolutions of its halves, so it runs once per class and once per query, not once per pair."""
        conv = self.first[0]
        weight_class, weight_query = conv.weight.split(self.channels, dim=1)
        by_class = F.conv2d(class_maps, weight_class, None, conv.stride, conv.padding)
        by_query = F.conv2d(query_maps, weight_query, None, conv.stride, conv.padding)
        pairs = (by_query[:, None] + by_class[None]).flatten(0, 1)  # query-major: row q * N + c
        return self._head(pairs).view(len(query_maps), len(class_maps))


def class_feature_maps(maps: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """The element-wise sum of each class's support feature maps (the paper's K-shot class representation)."""
    sums = torch.zeros(ways, *maps.shape[1:], dtype=maps.dtype, device=maps.device)
    return sums.index_add(0, labels, maps)


def relation_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's objective: mean squared error of the scores [Q, N] against the one-hot labels."""
    return F.mse_loss(scores, F.one_hot(labels, scores.shape[1]).to(scores.dtype))




# --- declarations ------------------------------------------------------------------------------------------------
RELATION_SCORES = InspectionSpec(
    "relation_scores", "Relation scores", "heatmap",
    f"The relation module's score in [0, 1] for each probe query (rows, labelled with its true class) and each class "
    f"of the probe episode (columns, shown by a support image): how similar the learned comparison finds them "
    f"({PAPER}, section 3). Training regresses the scores onto the one-hot labels, so a trained network lights up "
    f"one cell per row, in its class's column. The probe is the first training episode this run met.",
    x_label="class (a support image)", y_label="query (its true class)")

DEFAULT = Recipe(
    "default", "Tuned here for a few CPU minutes on any dataset: the paper's networks, loss, Adam 1e-3 and gradient "
    "clipping, with 5 training queries per class instead of the paper's 19 (a step is then 2.6x faster; glyphs 5-way "
    "1-shot after 1 CPU-minute: 92.4% vs 88.8%, 500 test episodes), one episode per step, cosine schedule over 2,000 "
    "steps (about a CPU-minute) or a time budget, whichever ends first (steps 0: until the budget). Training with 10 "
    "ways or at lr 3e-3 did no better (92.6%, 92.6%).", recommended=True,
    training={"train_queries": 5, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 250, "val_episodes": 100})
OMNIGLOT = Recipe(
    "omniglot", f"The default recipe with Omniglot's rotation classes (x4), as in {PAPER}: 93.7% ± 0.5 (5-way 1-shot, "
    "Lake split, 500 test episodes) after 1.5 CPU-minutes on one thread (3,621 steps). The paper reports 99.6 ± 0.2% "
    "(5-way 1-shot) and 97.6 ± 0.2% (20-way 1-shot) after far longer training (Table 1).",
    datasets=("omniglot",), recommended=True, dataset={"rotations": True},
    training={"train_queries": 5, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 250, "val_episodes": 100})
PAPER_5WAY = Recipe(
    "paper", f"The paper's Omniglot 5-way 1-shot setup ({PAPER}; {AUTHORS_CODE}): 19 query images per class, one "
    "episode per step, rotation classes, Adam 1e-3 halved every 100,000 episodes (the step schedule over 400,000 "
    "episodes; the authors' code runs 1,000,000), gradient norms clipped to 0.5. The paper reports 99.6 ± 0.2% "
    "(Table 1). About 9 hours on one CPU thread (0.08 s a step).", datasets=("omniglot",),
    dataset={"ways": 5, "shots": 1, "rotations": True},
    training={"train_queries": 19, "meta_batch": 1, "lr": 1e-3, "lr_schedule": "step", "steps": 400_000,
              "val_interval": 5000, "val_episodes": 200})
PAPER_20WAY = Recipe(
    "paper-20way", f"The paper's Omniglot 20-way 1-shot setup ({PAPER}; {AUTHORS_CODE}): 10 query images per class, "
    "otherwise as the 5-way 'paper' recipe. The paper reports 97.6 ± 0.2% (Table 1). About a day on a CPU.",
    datasets=("omniglot",), dataset={"ways": 20, "shots": 1, "rotations": True},
    training={"train_queries": 10, "meta_batch": 1, "lr": 1e-3, "lr_schedule": "step", "steps": 400_000,
              "val_interval": 5000, "val_episodes": 200})


@register
class RelationNet(Algorithm):
    name = "relation-net"
    title = "Relation Networks"
    family = Family.METRIC
    summary = "A learned network scores how related a query is to each class; the highest score wins."
    description = ("Relation Networks (Sung et al., 2018) learn the comparison itself. An embedding network turns "
                   "each image into a feature map; a class is represented by the sum of its support images' maps. A "
                   "second, relation network reads a class map and a query map side by side and outputs a relation "
                   "score between 0 and 1. Training regresses the scores onto 1 for the query's own class and 0 for "
                   "the others (mean squared error), episode by episode, with no inner loop. The Mechanism view shows "
                   "the scores of probe queries against each class. The paper reports 99.6% (5-way 1-shot) and 97.6% "
                   "(20-way 1-shot) on Omniglot.")
    HParams = RelationNetHParams
    recipes = (DEFAULT, OMNIGLOT, PAPER_5WAY, PAPER_20WAY)
    capabilities = frozenset({"embeddings", "inspection"})
    inspections = (RELATION_SCORES,)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.embedding = EmbeddingModule(model_spec.in_channels, hparams.hidden, model_spec.image_size)
        self.relation = RelationModule(hparams.hidden, hparams.hidden, self.embedding.side, hparams.relation_units)
        self.embedding.to(self.device)
        self.relation.to(self.device)
        self._probe: tuple[torch.Tensor, ...] | None = None  # the similarity view's fixed episode (cpu copies)

    def modules(self) -> dict[str, nn.Module]:
        return {"embedding": self.embedding, "relation": self.relation}

    def _logits(self, support_x, support_y, query_x, ways: int) -> torch.Tensor:
        maps = self.embedding(torch.cat([support_x, query_x]))
        classes = class_feature_maps(maps[: len(support_x)], support_y, ways)
        return self.relation.pair_logits(classes, maps[len(support_x):])

    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        if self._probe is None:
            first = episodes[0]
            self._probe = tuple(t.detach().cpu() for t in (first.support_x, first.support_y, first.query_x,
                                                            first.query_y)) + (first.ways,)
        total_loss, total_acc = 0.0, 0.0
        for episode in episodes:
            episode = episode.to(self.device)
            scores = torch.sigmoid(self._logits(episode.support_x, episode.support_y, episode.query_x, episode.ways))
            loss = relation_loss(scores, episode.query_y) / len(episodes)
            loss.backward()
            total_loss += loss.item()
            total_acc += accuracy(scores.detach(), episode.query_y) / len(episodes)
        if self.hparams.grad_clip > 0:  # per module, as the authors' code clips
            for module in self.modules().values():
                nn.utils.clip_grad_norm_(module.parameters(), self.hparams.grad_clip)
        optimizer.step()
        self.step_schedulers()
        return {"loss": total_loss, "accuracy": total_acc}

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        self.eval()
        maps = self.embedding(support_x.to(self.device))
        return {"class_maps": class_feature_maps(maps, support_y.to(self.device), ways), "ways": ways}

    @torch.no_grad()
    def relation_scores(self, adapted, query_x) -> torch.Tensor:
        """Scores [Q, N] in [0, 1] of each query against each class of an adapted task."""
        self.eval()
        return torch.sigmoid(self.relation.pair_logits(adapted["class_maps"], self.embedding(query_x.to(self.device))))

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        logits = self.relation.pair_logits(adapted["class_maps"], self.embedding(query_x.to(self.device)))
        # Scores normalised to sum 1 per query: softmax(log sigmoid(z)) = sigmoid(z) / sum sigmoid(z), computed in
        # log space so that scores all rounding to 0 still give a distribution; the argmax is the scores' argmax.
        return F.logsigmoid(logits).softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """The embedding module's feature maps, flattened: the space the relation module compares in."""
        self.eval()
        return self.embedding(x.to(self.device)).flatten(1)

    def inspect(self) -> dict[str, dict]:
        """Relation scores of up to 10 probe queries (spread over the classes) x up to 20 classes; nothing before
        training has met an episode."""
        if self._probe is None:
            return {}
        support_x, support_y, query_x, query_y, ways = self._probe
        columns = min(ways, PROBE_COLUMNS)
        rows = probe_rows(query_y, columns)
        kept = support_y < columns
        adapted = self.adapt(support_x[kept], support_y[kept], columns)
        scores = self.relation_scores(adapted, query_x[rows]).cpu().numpy()
        first_support = [int(torch.nonzero(support_y == c)[0]) for c in range(columns)]
        return {RELATION_SCORES.name: {
            "values": scores, "rows": np.array([f"class {int(query_y[i]) + 1}" for i in rows]),
            "columns": np.array([f"class {c + 1}" for c in range(columns)]),
            "row_images": thumbnails(query_x[rows]), "column_images": thumbnails(support_x[first_support])}}


def probe_rows(query_y: torch.Tensor, classes: int, count: int = PROBE_ROWS) -> torch.Tensor:
    """Indexes of up to ``count`` queries of classes below ``classes``, taken in turn from each class (its first
    query, then its second, ...), ordered by class so that matching scores form a block diagonal."""
    eligible = torch.nonzero(query_y < classes).flatten()
    ranks = torch.zeros(len(eligible), dtype=torch.long)
    for c in range(classes):
        same = query_y[eligible] == c
        ranks[same] = torch.arange(int(same.sum()))
    chosen = eligible[torch.argsort(ranks * classes + query_y[eligible], stable=True)[:count]]
    return chosen[torch.argsort(query_y[chosen], stable=True)]


__all__ = ["RelationNet", "EmbeddingModule", "RelationModule", "block_layout", "class_feature_maps", "relation_loss",
           "thumbnails", "probe_rows"]

"""SNAIL (Mishra, Rohaninejad, Chen & Abbeel, 2018, "A Simple Neural Attentive Meta-Learner", ICLR): a sequence model
that learns to classify from the episode it reads, with temporal convolutions and causal soft attention.

An N-way K-shot episode becomes a sequence of T = N·K + 1 steps: the support's (embedding, one-hot label) pairs in
the episode sampler's order, then the unlabelled query (label slot zeros). The network reads the sequence causally
and its output at the last step is the query's class logits; training is cross-entropy on that last step. Each query
gets its own sequence (the support, then that query), so a query's prediction never depends on the other queries.

The network is the paper's few-shot architecture (appendix, Omniglot N-way K-shot): a Conv-4 embedding (4 blocks of
64 filters, 64-d on 28x28), then AttentionBlock(64, 32), TCBlock(T, 128), AttentionBlock(256, 128), TCBlock(T, 128),
AttentionBlock(512, 256) and a 1x1 convolution (a linear map per step) to N logits.

- DenseBlock(R, D): a causal convolution of kernel 2 and dilation R with D filters, twice (xf, xg), gated as
  tanh(xf) · sigmoid(xg), concatenated to its input (channels grow by D).
- TCBlock(T, D): DenseBlocks of dilations 2, 4, ..., 2^⌈log2 T⌉ (the paper's pseudo-code: 2^i for i = 1..⌈log2 T⌉).
- AttentionBlock(K, V): keys and queries are affine maps of the input to K dimensions, values to V; each step reads
  softmax(q·kᵀ / √K) over itself and the steps before it (causal mask) and the read (V channels) is concatenated.

Cost: the network is causal, so the support steps' activations are the same in every query's sequence. They are
computed once per episode, and each query's last step is computed against them (the support's keys, values and
convolution taps), which is exactly the full sequence's last step (tests/test_snail.py checks both against each
other) and N·K + 1 times cheaper than running every query's whole sequence.

Paper numbers (Mishra et al. 2018, Table 1, Omniglot): 99.07% (5-way 1-shot) and 97.64% (20-way 1-shot); the
table's ± intervals, its 5-shot numbers and the paper's training split and length are not re-checked here.

The Mechanism view shows, for each attention block, the attention of a fixed probe episode's queries (rows) over
their sequence (columns: the support images in order, then the query itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.algorithms.matching import probe_subset
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails as thumbnails
from workbench.core.models.conv4 import Conv4
from workbench.core.recipes import Recipe

PAPER = "Mishra et al. 2018"
ATTENTION_SIZES = ((64, 32), (256, 128), (512, 256))  # (key, value) sizes of the paper's three attention blocks


# --- the blocks: a full causal pass over [B, T, C], and the last step against a shared prefix ------------------------
class DenseBlock(nn.Module):
    """A gated causal dilated convolution (kernel 2), its D outputs concatenated to its input."""

    def __init__(self, in_channels: int, dilation: int, filters: int):
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(in_channels, 2 * filters, kernel_size=2, dilation=dilation)  # xf and xg together

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, C + D]; step t sees steps t and t - dilation (zeros before the start)."""
        padded = F.pad(x.transpose(1, 2), (self.dilation, 0))
        return torch.cat([x, gate(self.conv(padded).transpose(1, 2))], dim=-1)

    def extend(self, prefix: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix [P, C] shared by every sequence and the next step [B, C] of each: their outputs."""
        weight, bias = self.conv.weight, self.conv.bias  # weight [2D, C, 2]: tap 0 at t - dilation, tap 1 at t
        pre = last @ weight[:, :, 1].T + bias
        if len(prefix) >= self.dilation:
            pre = pre + prefix[len(prefix) - self.dilation] @ weight[:, :, 0].T
        return self(prefix[None])[0], torch.cat([last, gate(pre)], dim=-1)


def gate(pre: torch.Tensor) -> torch.Tensor:
    """tanh(xf) · sigmoid(xg) of the two halves of the last dimension."""
    xf, xg = pre.chunk(2, dim=-1)
    return torch.tanh(xf) * torch.sigmoid(xg)


class TCBlock(nn.Module):
    """DenseBlocks of dilations 2, 4, ..., 2^layers."""

    def __init__(self, in_channels: int, layers: int, filters: int):
        super().__init__()
        self.dense = nn.ModuleList(DenseBlock(in_channels + i * filters, 2 ** (i + 1), filters) for i in range(layers))
        self.out_channels = in_channels + layers * filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.dense:
            x = block(x)
        return x

    def extend(self, prefix, last):
        for block in self.dense:
            prefix, last = block.extend(prefix, last)
        return prefix, last


class AttentionBlock(nn.Module):
    """Causal single-head soft attention (key size K, value size V), its read concatenated to its input."""

    def __init__(self, in_channels: int, key_size: int, value_size: int):
        super().__init__()
        self.query, self.key = nn.Linear(in_channels, key_size), nn.Linear(in_channels, key_size)
        self.value = nn.Linear(in_channels, value_size)
        self.scale = 1.0 / math.sqrt(key_size)
        self.out_channels = in_channels + value_size
        self.last_weights: torch.Tensor | None = None  # extend()'s attention [B, P + 1], for the view

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B, T, T]: step t's attention over steps 0..t (later steps masked out)."""
        logits = self.query(x) @ self.key(x).transpose(1, 2) * self.scale
        future = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).triu(1)
        return logits.masked_fill(future, float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.weights(x) @ self.value(x)], dim=-1)

    def extend(self, prefix, last):
        """The last step attends to the prefix's steps and to itself."""
        query, own_key = self.query(last), self.key(last)
        logits = torch.cat([query @ self.key(prefix).T, (query * own_key).sum(-1, keepdim=True)], dim=-1)
        weights = (logits * self.scale).softmax(dim=-1)  # [B, P + 1]
        self.last_weights = weights.detach()
        read = weights[:, :-1] @ self.value(prefix) + weights[:, -1:] * self.value(last)
        return self(prefix[None])[0], torch.cat([last, read], dim=-1)


class SnailNetwork(nn.Module):
    """The paper's few-shot architecture over (embedding, one-hot label) steps: [B, T, D + N] -> logits [B, T, N]."""

    def __init__(self, in_channels: int, ways: int, tc_layers: int, tc_filters: int):
        super().__init__()
        blocks, channels = [], in_channels
        for i, (key_size, value_size) in enumerate(ATTENTION_SIZES):
            blocks.append(AttentionBlock(channels, key_size, value_size))
            channels = blocks[-1].out_channels
            if i < len(ATTENTION_SIZES) - 1:
                blocks.append(TCBlock(channels, tc_layers, tc_filters))
                channels = blocks[-1].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(channels, ways)  # the paper's 1x1 convolution to N

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def last_step(self, prefix: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Logits [B, N] of the last step of B sequences that share the prefix [P, C] and end in last [B, C]: the
        same as ``self(torch.cat([prefix expanded, last[:, None]], 1))[:, -1]``, with the prefix computed once."""
        for block in self.blocks:
            prefix, last = block.extend(prefix, last)
        return self.head(last)

    def attention_blocks(self) -> list[AttentionBlock]:
        return [block for block in self.blocks if isinstance(block, AttentionBlock)]


def default_tc_layers(ways: int) -> int:
    """⌈log2 T⌉ for 1-shot sequences of ``ways`` classes, T = N + 1."""
    return max(1, math.ceil(math.log2(ways + 1)))


# --- declarations --------------------------------------------------------------------------------------------------
@dataclass
class SnailHParams:
    hidden: int = hparam(64, f"Filters per Conv-4 block of the image embedding (64 in {PAPER}'s Omniglot embedding).",
                         low=8, high=256)
    tc_filters: int = hparam(128, f"Filters D of each dense layer of the two TC blocks (TCBlock(T, 128) in {PAPER}, "
                             "appendix).", low=4, high=512)
    tc_layers: int = hparam(0, f"Dense layers per TC block; {PAPER} use ⌈log2 T⌉ for sequences of T = N·K + 1 steps "
                            "(dilations 2, 4, ...). 0 takes ⌈log2 (N + 1)⌉ for the training ways N (1-shot); set it "
                            "for longer (K-shot) sequences.", low=0, high=12)
    shuffle_support: bool = hparam(True, "Shuffle each training episode's support steps, so the network does not "
                                   "learn the sampler's class-sorted order (evaluation and 'try a task' keep their "
                                   f"order). {PAPER} do not say how the support is ordered.")


def attention_spec(index: int) -> InspectionSpec:
    key_size, value_size = ATTENTION_SIZES[index]
    return InspectionSpec(
        f"attention-{index + 1}", f"Attention block {index + 1} (keys {key_size}, values {value_size})", "heatmap",
        f"The causal attention of attention block {index + 1} of {len(ATTENTION_SIZES)} ({PAPER}: AttentionBlock("
        f"{key_size}, {value_size})) at each probe query's step (rows) over its sequence (columns): the support images "
        "in the order the network reads them, then the query itself; each row sums to one. A fixed probe episode (the "
        "first training episode met) at each validation; trained, the last block's query attends to the support "
        "images of its own class.", x_label="sequence step", y_label="query")


CLASSIFICATION_DEFAULT = Recipe(
    "default", f"Designed for a 3 CPU-minute, one-thread budget: the paper's network ({PAPER}), Adam 1e-3 with a "
    "cosine schedule over 2,000 steps or the time budget, whichever ends first (steps 0: until the budget), one "
    "episode per step with 5 query sequences per class (about 0.08 CPU-seconds a 5-way 1-shot step, so about 2,300 "
    "steps in 3 CPU-minutes). Not yet measured to the end here: SNAIL sits near chance for its first few hundred "
    "steps (glyphs 5-way 1-shot: 23.5% validation accuracy at step 250, 32% mean training accuracy over steps "
    "400-484; at Adam 3e-3 still 20% over steps 175-225).",
    recommended=True,
    training={"train_queries": 5, "meta_batch": 1, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 250,
              "val_episodes": 100})
OMNIGLOT = Recipe(
    "omniglot", "The default recipe with Omniglot's rotation classes (x4), the usual augmentation of Omniglot "
    f"few-shot training. {PAPER} report 99.07% (5-way 1-shot) and 97.64% (20-way 1-shot), Table 1, after far longer "
    "training. Not yet measured here.",
    datasets=("omniglot",), recommended=True, dataset={"rotations": True},
    training={"train_queries": 5, "meta_batch": 1, "lr": 1e-3, "lr_schedule": "cosine", "val_interval": 250,
              "val_episodes": 100})


@register
class Snail(Algorithm):
    name = "snail"
    title = "SNAIL"
    family = Family.MODEL
    summary = "Temporal convolutions and causal attention read the support as a sequence, then the query."
    description = ("SNAIL (Mishra et al., 2018), a Simple Neural AttentIve Learner, treats an episode as a sequence: "
                   "each support image's embedding with its one-hot label, then the query with no label. Temporal "
                   "convolution blocks (dilated causal convolutions with gated activations, densely concatenated) "
                   "gather context from the steps before, and causal soft-attention blocks let each step pick out "
                   "specific earlier steps. The output at the query's step is its class; nothing is adapted by "
                   "gradient at test time, the network learns to learn inside its forward pass. The Mechanism view "
                   "shows where the query's step attends in each attention block.")
    HParams = SnailHParams
    kinds = ("classification",)
    recipes = (CLASSIFICATION_DEFAULT, OMNIGLOT)
    capabilities = frozenset({"embeddings", "inspection"})
    inspections = tuple(attention_spec(i) for i in range(len(ATTENTION_SIZES)))

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)
        self.max_ways = model_spec.ways  # the label slot and the output have the training ways
        layers = hparams.tc_layers or default_tc_layers(self.max_ways)
        self.snail = SnailNetwork(self.encoder.out_dim + self.max_ways, self.max_ways, layers,
                                  hparams.tc_filters).to(self.device)
        self._probe = None  # the attention view's fixed episode (cpu copies)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "snail": self.snail}

    # --- sequences -----------------------------------------------------------------------------------------------
    def check_ways(self, ways: int) -> None:
        if ways > self.max_ways:
            raise ValueError(f"snail: a task of {ways} classes, but the network's label slot and output have the "
                             f"training ways, {self.max_ways}; train with training.train_ways >= {ways}")

    def support_steps(self, support_features: torch.Tensor, support_y: torch.Tensor) -> torch.Tensor:
        """The support sequence [P, D + N]: each embedding with its one-hot label."""
        return torch.cat([support_features, F.one_hot(support_y, self.max_ways).to(support_features.dtype)], dim=-1)

    def query_steps(self, query_features: torch.Tensor) -> torch.Tensor:
        """Each query's last step [Q, D + N]: its embedding, the label slot zeros."""
        return F.pad(query_features, (0, self.max_ways))

    def query_logits(self, prefix: torch.Tensor, query_features: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits [Q, ways] of each query's own sequence (the support prefix, then that query)."""
        return self.snail.last_step(prefix, self.query_steps(query_features))[:, :ways]

    # --- learning ------------------------------------------------------------------------------------------------
    def meta_train_step(self, episodes) -> dict[str, float]:
        self.train()
        if self._probe is None:
            self._probe = episodes[0].to("cpu")
        return self.cross_entropy_step(episodes, self._training_logits)

    def _training_logits(self, episode) -> torch.Tensor:
        """The queries' last-step logits, the support (shuffled when asked) in one batch-norm batch with them."""
        self.check_ways(episode.ways)
        n = len(episode.support_x)
        features = self.encoder(torch.cat([episode.support_x, episode.query_x]))
        order = (torch.randperm(n).to(self.device) if self.hparams.shuffle_support
                 else torch.arange(n, device=self.device))
        prefix = self.support_steps(features[:n][order], episode.support_y[order])
        return self.query_logits(prefix, features[n:], episode.ways)

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        """The encoded support sequence, in the given order."""
        self.eval()
        self.check_ways(ways)
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        return {"prefix": self.support_steps(self.encoder(support_x), support_y), "ways": ways}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.eval()
        features = self.encoder(query_x.to(self.device))
        return self.query_logits(adapted["prefix"], features, adapted["ways"]).softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        """The Conv-4 embedding of each image, the part of a step the network reads besides the label."""
        self.eval()
        return self.encoder(x.to(self.device))

    # --- inspection ----------------------------------------------------------------------------------------------
    def inspect(self) -> dict[str, dict]:
        """Each attention block's attention at the probe queries' steps; nothing before training."""
        if self._probe is None:
            return {}
        support_x, support_y, query_x, query_y = probe_subset(self._probe)
        self.predict(self.adapt(support_x, support_y, int(support_y.max()) + 1), query_x)  # records the weights
        names = self._probe.class_names
        # The query's own step has no one image (each row's is its query): a blank thumbnail.
        column_images = np.concatenate([thumbnails(support_x), np.ones_like(thumbnails(support_x[:1]))])
        columns = np.array([f"{i + 1}: class {int(y) + 1} ({names[int(y)]})" for i, y in enumerate(support_y)]
                           + ["the query itself"])
        rows = np.array([f"query {i + 1}: class {int(y) + 1} ({names[int(y)]})" for i, y in enumerate(query_y)])
        return {spec.name: {"values": block.last_weights.cpu().numpy(), "rows": rows, "columns": columns,
                            "row_images": thumbnails(query_x), "column_images": column_images}
                for spec, block in zip(self.inspections, self.snail.attention_blocks())}


__all__ = ["Snail", "SnailNetwork", "AttentionBlock", "TCBlock", "DenseBlock", "default_tc_layers"]

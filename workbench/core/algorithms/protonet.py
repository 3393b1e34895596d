"""Prototypical Networks (Snell et al., 2017): classify queries by distance to class-mean embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe
from workbench.core.models.conv4 import Conv4


@dataclass
class ProtoNetHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block.", low=8, high=256)
    distance: str = hparam("euclidean", "Distance between query embeddings and prototypes.",
                           choices=("euclidean", "cosine"))
    temperature: float = hparam(32.0, "Logits are divided by this. Squared Euclidean distances of Conv-4 features are "
                                "large, so 32 keeps early softmaxes from saturating (94.3% vs 91.9% on Omniglot after "
                                "1,000 episodes); cosine distance wants about 0.1.",
                                low=1e-3, high=100.0, log_scale=True)


def pairwise_logits(queries: torch.Tensor, prototypes: torch.Tensor, distance: str, temperature: float) -> torch.Tensor:
    if distance == "cosine":
        logits = F.normalize(queries, dim=-1) @ F.normalize(prototypes, dim=-1).T
    else:
        logits = -torch.cdist(queries, prototypes).pow(2)
    return logits / temperature


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    sums = torch.zeros(ways, embeddings.shape[1], dtype=embeddings.dtype, device=embeddings.device)
    sums.index_add_(0, labels, embeddings)
    counts = torch.bincount(labels, minlength=ways).clamp_min(1).to(embeddings.dtype)
    return sums / counts[:, None]


@register
class ProtoNet(Algorithm):
    name = "protonet"
    title = "Prototypical Networks"
    family = Family.METRIC
    summary = "Nearest class mean in a learned embedding space."
    description = ("Prototypical Networks (Snell, Swersky & Zemel, 2017) learn an embedding in which each class is "
                   "represented by the mean of its support embeddings, its prototype. A query is classified by a "
                   "softmax over negative squared distances to the prototypes. Training is episodic and needs no "
                   "inner loop, so it is fast and a strong baseline; training with more ways than testing helps.")
    HParams = ProtoNetHParams
    recipes = (
        Recipe("default", "The declared defaults: 5-way training episodes, 2,000 steps, cosine schedule. On the "
               "built-in glyphs this reaches 95.3% (5-way 1-shot) in about a minute on two CPU cores.",
               recommended=True),
        Recipe("omniglot-10min", "Tuned here for 10 CPU minutes on Omniglot: 20-way training episodes with 5 "
               "queries per class, rotation classes (x4), cosine schedule over 6,000 steps or the time budget. "
               "97.5% (5-way 1-shot, Lake split) after 6,000 steps (382 s) on the reference machine.",
               datasets=("omniglot",), recommended=True, dataset={"rotations": True},
               training={"train_ways": 20, "train_queries": 5, "steps": 6000, "lr_schedule": "cosine",
                         "val_interval": 500, "val_episodes": 200}),
        Recipe("paper", "The paper's Omniglot setup (Snell et al. 2017): 60-way training episodes with 5 queries, "
               "rotation classes, Adam 1e-3 halved every 2,000 episodes (here 8,000 steps; the paper stops on "
               "validation loss). The paper reports 98.8% (5-way 1-shot, Vinyals split); about an hour on a CPU.",
               datasets=("omniglot",), dataset={"rotations": True},
               training={"train_ways": 60, "train_queries": 5, "steps": 8000, "lr_schedule": "step",
                         "val_interval": 500, "val_episodes": 200}),
    )
    capabilities = frozenset({"embeddings"})
    auto_reduced_precision = True  # bf16 keeps its accuracy (bench/precision.py)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    def _logits(self, support_x, support_y, query_x, ways):
        embeddings = self.encoder(torch.cat([support_x, query_x]))
        support, queries = embeddings[: len(support_x)], embeddings[len(support_x):]
        prototypes = class_means(support, support_y, ways)
        return pairwise_logits(queries, prototypes, self.hparams.distance, self.hparams.temperature)

    def meta_train_step(self, episodes) -> dict[str, float]:
        self.encoder.train()
        return self.cross_entropy_step(
            episodes, lambda episode: self._logits(episode.support_x, episode.support_y, episode.query_x, episode.ways))

    @torch.no_grad()
    def adapt(self, support_x, support_y, ways):
        self.encoder.eval()
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        support = self.encoder(support_x)
        return {"prototypes": class_means(support, support_y, ways), "support_embeddings": support}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        self.encoder.eval()
        logits = pairwise_logits(self.encoder(query_x.to(self.device)), adapted["prototypes"], self.hparams.distance,
                                 self.hparams.temperature)
        return logits.softmax(dim=-1)

    @torch.no_grad()
    def embed(self, x, adapted=None):
        self.encoder.eval()
        return self.encoder(x.to(self.device))

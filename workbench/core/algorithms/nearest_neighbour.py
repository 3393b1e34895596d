"""Nearest-neighbour baseline: pre-train a Conv-4 on all meta-train classes, then label each query like its
single most similar support image (1-NN) in the frozen feature space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.pretrain import PretrainBaseline, PretrainHParams
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe


@dataclass
class NearestNeighbourHParams(PretrainHParams):
    metric: str = hparam("cosine", "Similarity between query and support features. Cosine ignores feature "
                         "magnitude, which usually helps with pre-trained features.", choices=("cosine", "euclidean"))
    temperature: float = hparam(0.1, "Turns each class's best similarity into a probability (softmax of similarity "
                                "/ temperature). Only the confidence changes; the predicted class is always the "
                                "nearest neighbour's.", low=1e-3, high=100.0, log_scale=True)


def similarities(queries: torch.Tensor, support: torch.Tensor, metric: str) -> torch.Tensor:
    """[Q, S] similarity: cosine, or negative Euclidean distance."""
    if metric == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(support, dim=-1).T
    return -torch.cdist(queries, support)


def best_per_class(scores: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """[Q, ways]: each class's highest score among its support images; the argmax is the 1-NN label."""
    out = scores.new_full((scores.shape[0], ways), float("-inf"))
    return out.scatter_reduce(1, labels.expand_as(scores), scores, reduce="amax", include_self=True)


@register
class NearestNeighbour(PretrainBaseline):
    name = "nearest-neighbour"
    title = "Nearest neighbour (pre-trained)"
    family = Family.BASELINE
    summary = "Pre-train on all training classes; label a query like its most similar support image."
    description = ("A baseline without meta-learning. A Conv-4 is trained as an ordinary classifier over all "
                   "meta-train classes with cross-entropy (no episodes). At test time its classifier is dropped and "
                   "each query takes the label of the single most similar support image (1-nearest neighbour, "
                   "cosine similarity by default) in the frozen feature space. Nothing is fitted per task, so it is "
                   "instant; it shows how much of few-shot accuracy comes from a good embedding alone.")
    HParams = NearestNeighbourHParams
    recipes = (Recipe("default", "The declared defaults: pre-training batches of 128 images over all training classes, "
                      "2,000 steps, cosine schedule.", recommended=True),)
    capabilities = frozenset({"embeddings"})

    def adapt(self, support_x, support_y, ways):
        return {"support_features": self.features(support_x), "support_y": support_y.to(self.device), "ways": ways}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        scores = similarities(self.features(query_x), adapted["support_features"], self.hparams.metric)
        best = best_per_class(scores, adapted["support_y"], adapted["ways"])
        return (best / self.hparams.temperature).softmax(dim=-1)

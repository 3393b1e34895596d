"""Shared by the pre-training baselines (nearest neighbour, fine-tune): a Conv-4 trained with plain
cross-entropy over all meta-train classes at once, then frozen as a feature extractor at test time.

This is the "Baseline" of Chen et al. (2019, A Closer Look at Few-shot Classification): no episodes, no
meta-learning, just a good embedding learned from many classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms.base import Algorithm, LabeledBatch, accuracy
from workbench.core.hparams import hparam
from workbench.core.models.conv4 import Conv4


@dataclass
class PretrainHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block.", low=8, high=256)
    batch_size: int = hparam(128, "Images per pre-training batch, drawn from all meta-train classes.", low=2,
                             high=4096)


def episodes_to_batch(episodes) -> LabeledBatch:
    """Support and query images of episodes, labelled with their meta-train class ids."""
    xs, ys = [], []
    for episode in episodes:
        class_ids = torch.as_tensor(episode.class_ids, device=episode.support_y.device)
        xs += [episode.support_x, episode.query_x]
        ys += [class_ids[episode.support_y], class_ids[episode.query_y]]
    return LabeledBatch(torch.cat(xs), torch.cat(ys))


class PretrainBaseline(Algorithm):
    """Pre-trains ``encoder`` + ``classifier`` on all meta-train classes; subclasses decide how to use the
    frozen encoder on a few-shot task."""

    training_input = "batches"

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        # Same encoder as ProtoNet's (running batch-norm statistics): test features do not depend on the batch.
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)
        self.classifier = nn.Linear(self.encoder.out_dim, model_spec.num_train_classes).to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "classifier": self.classifier}

    def meta_train_step(self, batch) -> dict[str, float]:
        """One cross-entropy step on a LabeledBatch (a list of episodes also works: their images are used with
        their meta-train class ids)."""
        if not isinstance(batch, LabeledBatch):
            batch = episodes_to_batch(batch)
        batch = batch.to(self.device)
        classes = self.model_spec.num_train_classes
        if batch.y.numel() and (int(batch.y.min()) < 0 or int(batch.y.max()) >= classes):
            raise ValueError(f"{self.name}: a training label is {int(batch.y.max())} but the pre-training head has "
                             f"{classes} classes (model_spec.num_train_classes); labels must be meta-train class "
                             "ids 0..num_train_classes-1")
        self.encoder.train()
        self.classifier.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        logits = self.classifier(self.encoder(batch.x))
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
        optimizer.step()
        self.step_schedulers()
        return {"loss": float(loss.detach()), "accuracy": accuracy(logits.detach(), batch.y)}

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        return self.encoder(x.to(self.device))

    def embed(self, x, adapted=None):
        return self.features(x)

"""Shared by the pre-training baselines (nearest neighbour, fine-tune): a Conv-4 trained with plain
cross-entropy over all meta-train classes at once, then frozen as a feature extractor at test time.

This is the "Baseline" of Chen et al. (2019, A Closer Look at Few-shot Classification): no episodes, no
meta-learning, just a good embedding learned from many classes. For regression (which has no classes) it is the
"pretrained" baseline of Finn et al. (2017): one regressor trained on points pooled from all training tasks, with
the kind's loss (MSE); its head is the task head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from workbench.core.algorithms.base import Algorithm, LabeledBatch
from workbench.core.hparams import hparam


@dataclass
class PretrainHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block (images), or units per hidden layer of the MLP "
                         "(regression).", low=8, high=256)
    batch_size: int = hparam(128, "Images per pre-training batch, drawn from all meta-train classes (regression: "
                             "points, each from its own random training task).", low=2, high=4096)


def episodes_to_batch(episodes) -> LabeledBatch:
    """Support and query images of episodes, labelled with their meta-train class ids (regression tasks, which
    have no classes, keep their targets)."""
    xs, ys = [], []
    for episode in episodes:
        xs += [episode.support_x, episode.query_x]
        if getattr(episode, "class_ids", None) is None:
            ys += [episode.support_y, episode.query_y]
            continue
        class_ids = torch.as_tensor(episode.class_ids, device=episode.support_y.device)
        ys += [class_ids[episode.support_y], class_ids[episode.query_y]]
    return LabeledBatch(torch.cat(xs), torch.cat(ys))


class PretrainBaseline(Algorithm):
    """Pre-trains ``encoder`` + ``classifier`` on all meta-train classes; subclasses decide how to use the
    frozen encoder on a few-shot task. Without classes (regression) ``classifier`` is the regression head."""

    training_input = "batches"

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        # Same encoder as ProtoNet's (running batch-norm statistics): test features do not depend on the batch.
        self.encoder = self.kind.build_encoder(model_spec, hparams.hidden).to(self.device)
        outputs = model_spec.num_train_classes or self.kind.output_size(model_spec.ways)
        self.classifier = nn.Linear(self.encoder.out_dim, outputs).to(self.device)

    @property
    def has_classes(self) -> bool:
        """Pre-trained over classes (a head to replace per task), or on tasks without classes (regression)."""
        return self.model_spec.num_train_classes > 0

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "classifier": self.classifier}

    def meta_train_step(self, batch) -> dict[str, float]:
        """One step of the kind's loss on a LabeledBatch (a list of episodes also works: their images are used
        with their meta-train class ids)."""
        if not isinstance(batch, LabeledBatch):
            batch = episodes_to_batch(batch)
        batch = batch.to(self.device)
        classes = self.model_spec.num_train_classes
        if classes and batch.y.numel() and (int(batch.y.min()) < 0 or int(batch.y.max()) >= classes):
            raise ValueError(f"{self.name}: a training label is {int(batch.y.max())} but the pre-training head has "
                             f"{classes} classes (model_spec.num_train_classes); labels must be meta-train class "
                             "ids 0..num_train_classes-1")
        self.encoder.train()
        self.classifier.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        outputs = self.classifier(self.encoder(batch.x))
        loss = self.kind.loss(outputs, batch.y)
        loss.backward()
        optimizer.step()
        self.step_schedulers()
        return {"loss": float(loss.detach()), self.kind.metric.key: self.kind.score(outputs.detach(), batch.y)}

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.encoder.eval()
        return self.encoder(x.to(self.device))

    def embed(self, x, adapted=None):
        return self.features(x)

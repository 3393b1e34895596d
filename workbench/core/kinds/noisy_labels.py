"""Classification under label noise: train a classifier on labelled batches whose labels are partly corrupted
(or whose classes are imbalanced), with a small clean meta set; the methods learn to weight the samples
(Meta-Weight-Net, and later L2RW and the focal loss beside it)."""

from __future__ import annotations

from workbench.core.kinds import register
from workbench.core.kinds.classification import ImageKind


@register
class NoisyLabelClassification(ImageKind):
    name = "noisy-labels"
    title = "Classification under label noise"
    description = ("A classifier learns a fixed set of training classes from labelled batches whose labels are "
                   "partly corrupted (uniform or flip noise) or whose classes are imbalanced; a small clean meta "
                   "set guides methods that learn to weight samples. Reported as accuracy on fixed few-shot test "
                   "episodes (with the learned weights of clean and noisy samples).")
    trains_on = "labelled batches"
    views = ("curves", "embeddings", "sample_weights", "evaluation", "try_images", "inspection")
    try_task = "images"
    try_task_help = "Drop, paste, pick or draw a few images per class, then classify new images."
    default_algorithm = "meta-weight-net"

    def train_sampler(self, dataset, config):
        # The methods draw their own batches from the noisy problem; the trainer's batches stay small.
        return self.batch_sampler(dataset, config, 8)

"""Classification under label noise: train a classifier on labelled batches whose labels are partly corrupted
(or whose classes are imbalanced), with a small clean meta set; the methods learn to weight the samples
(Meta-Weight-Net, and later L2RW and the focal loss beside it)."""

from __future__ import annotations

import numpy as np

from workbench.core.data.base import ProgressCallback, no_progress
from workbench.core.kinds import register
from workbench.core.kinds.classification import EvalResult, ImageKind
from workbench.core.stats import mean_ci95


@register
class NoisyLabelClassification(ImageKind):
    name = "noisy-labels"
    title = "Classification under label noise"
    description = ("A classifier learns a fixed set of training classes from labelled batches whose labels are "
                   "partly corrupted (uniform or flip noise) or whose classes are imbalanced; a small clean meta "
                   "set guides methods that learn to weight samples, and clean held-out images pick the best "
                   "checkpoint. Reported as accuracy on fixed few-shot test episodes, with the clean test "
                   "accuracy of the classifier and the learned weights of clean and noisy samples.")
    trains_on = "labelled batches"
    views = ("curves", "embeddings", "sample_weights", "evaluation", "try_images", "inspection")
    try_task = "images"
    try_task_help = "Drop, paste, pick or draw a few images per class, then classify new images."
    default_algorithm = "meta-weight-net"

    def train_sampler(self, dataset, config):
        # The methods draw their own batches from the noisy problem; the trainer's batches stay small.
        return self.batch_sampler(dataset, config, 8)

    def evaluate(self, algorithm, tasks, device="cpu", progress: ProgressCallback = no_progress, split="test"):
        """Validation scores the algorithm's own clean held-out images when it has them (capability
        "own_validation"), so the best checkpoint is the one that classifies clean images best; otherwise, and
        for tests, the few-shot episodes."""
        if split == "val" and algorithm.has("own_validation"):
            correct = algorithm.validation_correct()
            if correct is not None and len(correct):
                accuracy, ci95 = mean_ci95(correct)
                classes = int(getattr(algorithm.hparams, "num_classes", 0))
                return EvalResult(float(accuracy), float(ci95), episodes=1, ways=classes, shots=0,
                                  queries=len(correct), seed=0, split="val", kind=self.name,
                                  per_episode_accuracy=np.asarray([accuracy], np.float32))
        return super().evaluate(algorithm, tasks, device, progress, split)

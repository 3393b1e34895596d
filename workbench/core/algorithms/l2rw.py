"""Learning to reweight (L2RW; Ren, Zeng, Yang and Urtasun, "Learning to Reweight Examples for Robust Deep
Learning", ICML 2018) on the noisy-labels kind: online per-example weights from a meta-gradient, nothing learned
across steps.

Each step (the paper's Algorithm 1): give every example of the batch a weight ε_i (all 0), take a look-ahead SGD
step θ' = θ - α ∇_θ Σ ε_i ℓ_i(θ), and differentiate the loss of a clean meta batch at θ' with respect to ε at 0.
An example whose gradient agrees with the clean loss's has a negative derivative; the weights are that derivative
negated, clipped at 0 and normalized over the batch (all zero when none is positive). The classifier then steps
on Σ w_i ℓ_i. At ε = 0 the derivative is -α ∇ℓ_i(θ)·∇L_meta(θ), so the look-ahead step size α cancels in the
normalization: it has no hyperparameter (the current learning rate is used). The look-ahead runs on copies of the
batch-norm buffers, as the authors' code runs it on a copy of the network, so only the real step moves them.

There is no weight function of the loss: the Sample weights view gets per-sample (loss, weight, noisy) records of
the training batches since the previous snapshot. Its curve is their mean weight per loss bin (gaps where no
sample had that loss), its means are theirs, and up to 256 of them per snapshot are kept as ``sample_losses``,
``sample_weights`` and ``sample_noisy`` for a scatter. The thumbnails' weights are those they get as one batch,
rescaled to a batch of ``batch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.meta_weight_net import LOSS_GRID
from workbench.core.algorithms.noisy_classifier import HISTOGRAM_EDGES, NoisyClassifier, NoisyClassifierHParams
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe

SAMPLES_PER_SNAPSHOT = 256  # (loss, weight) records kept per snapshot for a scatter


def meta_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, meta_x: torch.Tensor, meta_y: torch.Tensor,
                  lr: float) -> torch.Tensor:
    """d L_meta(θ - lr ∇_θ Σ_i ε_i ℓ_i(θ)) / d ε_i at ε = 0, one value per example of (x, y) (Ren et al. 2018,
    eq. 7-8), by differentiating through the look-ahead step as the paper does. Batch-norm buffers are copied,
    so the model's running statistics stay as they are."""
    params = dict(model.named_parameters())
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    eps = torch.zeros(len(y), dtype=x.dtype, device=x.device, requires_grad=True)
    losses = F.cross_entropy(functional_call(model, {**params, **buffers}, (x,)), y, reduction="none")
    grads = torch.autograd.grad((eps * losses).sum(), list(params.values()), create_graph=True)
    virtual = {name: p - lr * g for (name, p), g in zip(params.items(), grads)}
    meta_loss = F.cross_entropy(functional_call(model, {**virtual, **buffers}, (meta_x,)), meta_y)
    return torch.autograd.grad(meta_loss, eps)[0].detach()


def example_weights(meta_grad: torch.Tensor) -> torch.Tensor:
    """w_i = max(-g_i, 0) / Σ_j max(-g_j, 0), or all 0 when no example has a positive weight (eq. 9-10)."""
    weights = (-meta_grad).clamp_min(0)
    total = weights.sum()
    return weights / total if total > 0 else weights


def binned_mean(losses: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean weight of the samples in each histogram bin of the loss, on LOSS_GRID (NaN where a bin is empty)."""
    clipped = np.clip(losses, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1])
    counts = np.histogram(clipped, HISTOGRAM_EDGES)[0]
    sums = np.histogram(clipped, HISTOGRAM_EDGES, weights=weights)[0]
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    bins = np.clip(np.searchsorted(HISTOGRAM_EDGES, LOSS_GRID, side="right") - 1, 0, len(means) - 1)
    return means[bins]


@dataclass
class L2RWHParams(NoisyClassifierHParams):
    meta_batch_size: int = hparam(100, "Clean meta-set images per step whose loss gives the weights (the paper's "
                                  "validation mini-batch, 100 in its experiments; the whole meta set if "
                                  "smaller).", low=1, high=4096)


@register
class LearningToReweight(NoisyClassifier):
    name = "l2rw"
    title = "Learning to reweight (L2RW)"
    family = Family.OPTIMIZATION
    summary = "Per-example weights each step from a meta-gradient of a clean meta loss (Ren et al. 2018)."
    description = ("Learning to reweight (Ren et al., ICML 2018) weights every training example anew at each step: "
                   "a look-ahead SGD step on the batch's loss, with a weight ε_i on each example, is differentiated "
                   "through to see how each ε_i would change the loss on a small clean meta batch. Examples whose "
                   "gradient agrees with the clean data get positive weights; the others are clipped to 0; the "
                   "weights are normalized over the batch, and the classifier steps on the weighted loss. Nothing "
                   "is learned across steps (unlike Meta-Weight-Net's weight(loss) net), so the Sample weights view "
                   "shows the weights the training samples actually got against their loss. Same noisy problem, "
                   "batches and classifier as Meta-Weight-Net; few-shot evaluation uses nearest class means.")
    HParams = L2RWHParams
    extra_snapshot_keys = ("sample_losses", "sample_weights", "sample_noisy")
    recipes = (
        Recipe("default", "40 glyph classes with 40% uniform label noise, 600 steps of SGD (momentum 0.9) at 0.05, "
               "a clean meta batch of 100 (the paper's size; here the whole 80-image meta set): Meta-Weight-Net's "
               "noisy-40 setting, for the comparison table.", kind="noisy-labels", datasets=("glyphs",),
               recommended=True, training={"steps": 600}, hparams={"label_noise": 0.4}),
        Recipe("omniglot", "100 Omniglot background characters (14 training images each after the clean meta and "
               "test images) with 40% uniform label noise, 1,000 steps; not tuned here.", kind="noisy-labels",
               datasets=("omniglot",), recommended=True, training={"steps": 1000},
               hparams={"label_noise": 0.4, "num_classes": 100}),
    )

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.window: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # since the last snapshot

    def weight_function(self, losses: torch.Tensor) -> torch.Tensor | None:
        """No function of the loss: the mean weight that training samples of each loss got at the last snapshot
        (NaN where none had it), or None before the first snapshot."""
        curves = self.history["curves"]
        if curves.size == 0:
            return None
        index = np.clip(np.searchsorted(LOSS_GRID, losses.detach().cpu().numpy(), side="right") - 1, 0,
                        len(LOSS_GRID) - 1)
        return torch.from_numpy(curves[-1].astype(np.float32)[index])

    def meta_train_step(self, batch) -> dict[str, float]:
        """One L2RW step. ``batch`` is ignored: batches come from the noisy problem, whose corrupted labels only
        this algorithm knows."""
        x, y, noisy = self.draw_batch()
        meta_x, meta_y = self.draw_meta_batch(self.hparams.meta_batch_size)
        optimizer = self.optimizers[0]
        self.classifier.train()
        meta_grad = meta_gradient(self.classifier, x, y, meta_x, meta_y, optimizer.param_groups[0]["lr"])
        weights = example_weights(meta_grad)
        logits = self.classifier(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        loss = (weights * losses).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        weights = weights.cpu()
        self.window.append((losses.detach().cpu(), weights, noisy))
        out = {"loss": float(losses.detach().mean()), "weighted_loss": float(loss.detach()),
               "weight_mean": float(weights.mean()), "zero_weights": float((weights == 0).float().mean())}
        if noisy.any():
            out["weight_noisy"] = float(weights[noisy].mean())
        if (~noisy).any():
            out["weight_clean"] = float(weights[~noisy].mean())
        return self.finish_step(out, logits, y)

    def snapshot_weights(self, measured: dict[str, Any]) -> dict[str, Any]:
        if self.window:
            losses, weights, noisy = (torch.cat(parts).numpy() for parts in zip(*self.window))
        else:  # a snapshot without a step since the last one
            losses, weights, noisy = np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, bool)
        self.window = []
        picked = np.unique(np.linspace(0, len(losses) - 1, min(len(losses), SAMPLES_PER_SNAPSHOT)).round().astype(
            int)) if len(losses) else np.zeros(0, int)
        pad = SAMPLES_PER_SNAPSHOT - len(picked)
        return {"curves": binned_mean(losses, weights),
                "clean_mean": float(weights[~noisy].mean()) if (~noisy).any() else np.nan,
                "noisy_mean": float(weights[noisy].mean()) if noisy.any() else np.nan,
                "thumb_weights": self.thumbnail_weights(),
                "sample_losses": np.pad(losses[picked], (0, pad), constant_values=np.nan).astype(np.float16),
                "sample_weights": np.pad(weights[picked], (0, pad), constant_values=np.nan).astype(np.float16),
                "sample_noisy": np.pad(noisy[picked], (0, pad), constant_values=False)}

    def thumbnail_weights(self) -> np.ndarray:
        """The L2RW weights of the thumbnails taken as one batch (train mode, a fixed meta batch), rescaled to
        the share of a batch of ``batch_size``."""
        problem = self.require_problem()
        rows = torch.randperm(len(problem.meta_labels), generator=torch.Generator().manual_seed(0))
        rows = rows[:self.hparams.meta_batch_size]
        was_training = self.classifier.training
        self.classifier.train()
        try:
            grad = meta_gradient(self.classifier, self.images(problem.train_images[self.thumb_rows]),
                                 problem.train_labels[self.thumb_rows].to(self.device),
                                 self.images(problem.meta_images[rows]), problem.meta_labels[rows].to(self.device),
                                 1.0)
        finally:
            self.classifier.train(was_training)
        return (example_weights(grad) * len(self.thumb_rows) / self.hparams.batch_size).cpu().numpy()

    def weight_label(self) -> str:
        return "weight in its batch"

    def caption(self) -> str:
        size = self.hparams.batch_size
        return (f"{100 * self.hparams.label_noise:g}% {self.hparams.noise_kind} label noise, learning to reweight: "
                f"weights of samples in their batch (sum 1 over {size}; the plain mean gives {1 / size:.3f}); "
                "curve: their mean by loss since the previous snapshot")

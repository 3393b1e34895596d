"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) on the noisy-labels kind: a fixed,
not learned, weighting of each sample's cross-entropy by its own confidence.

With p the probability of a sample's label and CE = -log p, FL = -α (1 - p)^γ log p = α (1 - e^(-CE))^γ CE: the
factor (1 - e^(-loss))^γ is a fixed weight(loss) curve that falls to 0 for well-classified samples, so it
*raises* the relative weight of high-loss samples, which under label noise are mostly the noisy ones (the
opposite of what Meta-Weight-Net learns). γ = 0 is plain cross-entropy: the table's unweighted baseline, and
step for step the same training as Meta-Weight-Net with ``weighting=false`` (same problem, batches and optimizer).
The gradient flows through the factor too (the loss is FL itself, not a reweighted cross-entropy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.meta_weight_net import LOSS_GRID
from workbench.core.algorithms.noisy_classifier import NoisyClassifier, NoisyClassifierHParams
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe

ALPHA_CHOICES = ("none", "inverse-frequency")
# Keeps (1 - p)^γ differentiable when p rounds to 1 and γ < 1 (its derivative would be infinite there).
_FLOOR = 1e-12


def modulating_factor(log_p: torch.Tensor, gamma: float) -> torch.Tensor:
    """(1 - p)^γ from log p, accurately for p near 1 (1 - p = -expm1(log p))."""
    if gamma == 0:
        return torch.ones_like(log_p)
    return (-torch.expm1(log_p)).clamp_min(_FLOOR) ** gamma


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float,
               alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample focal loss -α_y (1 - p_y)^γ log p_y (Lin et al. 2017, eq. 5, with one α per class)."""
    log_p = F.log_softmax(logits, dim=-1).gather(1, targets.long()[:, None]).squeeze(1)
    losses = -modulating_factor(log_p, gamma) * log_p
    return losses if alpha is None else alpha[targets] * losses


def balanced_alpha(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """α_c ∝ 1 / n_c: inverse class frequency (the paper's suggestion), scaled so the weights of the N training
    samples sum to N (the loss keeps its scale; with every class present, α_c = N / (C n_c))."""
    inverse = 1.0 / torch.bincount(labels.long(), minlength=num_classes).clamp_min(1).float()
    return inverse * len(labels) / inverse[labels.long()].sum()


@dataclass
class FocalLossHParams(NoisyClassifierHParams):
    gamma: float = hparam(2.0, "Focusing parameter γ of (1 - p)^γ; 2 is the paper's choice (Lin et al. 2017). 0 is "
                          "plain cross-entropy (the unweighted baseline).", low=0.0, high=10.0)
    alpha: str = hparam("none", "α-balancing (Lin et al. 2017): none, or α per class from its inverse frequency "
                        "among the training labels (the paper's suggestion; matters with imbalance > 1).",
                        choices=ALPHA_CHOICES)


@register
class FocalLoss(NoisyClassifier):
    name = "focal-loss"
    title = "Focal loss"
    family = Family.BASELINE
    summary = "Cross-entropy scaled by (1 - p)^γ: a fixed weighting by loss (γ = 0 is plain cross-entropy)."
    description = ("Focal loss (Lin et al., ICCV 2017) multiplies each sample's cross-entropy by (1 - p)^γ, p being "
                   "the probability of its label: well-classified samples (low loss) count less, hard ones more. "
                   "As a function of the loss this is the fixed curve weight(loss) = (1 - e^(-loss))^γ, which the "
                   "Sample weights view shows beside the histograms of clean and noisy samples. It learns nothing "
                   "about the weighting and uses no clean meta set: a baseline for Meta-Weight-Net and L2RW on the "
                   "same noisy problem (same classes, corrupted labels, batches and classifier). γ = 0 is plain "
                   "cross-entropy. Few-shot evaluation uses nearest class means of its features.")
    HParams = FocalLossHParams
    recipes = (
        Recipe("default", "40 glyph classes with 40% uniform label noise, 600 steps of SGD (momentum 0.9) at 0.05 and "
               "γ = 2 (the paper's): Meta-Weight-Net's noisy-40 setting, for the comparison table.",
               kind="noisy-labels", datasets=("glyphs",), recommended=True, training={"steps": 600},
               hparams={"label_noise": 0.4}),
        Recipe("cross-entropy", "The unweighted baseline: γ = 0 (plain cross-entropy) on the same problem, 600 steps.",
               kind="noisy-labels", training={"steps": 600}, hparams={"label_noise": 0.4, "gamma": 0.0}),
        Recipe("omniglot", "100 Omniglot background characters (14 training images each after the clean meta and "
               "test images) with 40% uniform label noise, γ = 2, 1,000 steps; not tuned here.",
               kind="noisy-labels", datasets=("omniglot",), recommended=True, training={"steps": 1000},
               hparams={"label_noise": 0.4, "num_classes": 100}),
    )

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.alpha: torch.Tensor | None = None

    def attach_training_data(self, dataset, config) -> None:
        super().attach_training_data(dataset, config)
        if self.hparams.alpha == "inverse-frequency":
            self.alpha = balanced_alpha(self.problem.train_labels, self.hparams.num_classes).to(self.device)

    def weight_function(self, losses: torch.Tensor) -> torch.Tensor:
        """The fixed factor (1 - e^(-loss))^γ that multiplies a sample's cross-entropy (α aside)."""
        with torch.no_grad():
            return modulating_factor(-losses.detach().cpu().double(), self.hparams.gamma).float()

    def meta_train_step(self, batch) -> dict[str, float]:
        """One SGD step on the batch's mean focal loss. ``batch`` is ignored: batches come from the noisy
        problem, whose corrupted labels only this algorithm knows."""
        x, y, noisy = self.draw_batch()
        self.classifier.train()
        logits = self.classifier(x)
        loss = focal_loss(logits, y, self.hparams.gamma, self.alpha).mean()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ce = F.cross_entropy(logits.detach(), y, reduction="none")
        weights = self.weight_function(ce)
        out = {"loss": float(loss.detach()), "ce_loss": float(ce.mean()), "weight_mean": float(weights.mean())}
        if noisy.any():
            out["weight_noisy"] = float(weights[noisy].mean())
        if (~noisy).any():
            out["weight_clean"] = float(weights[~noisy].mean())
        return self.finish_step(out, logits, y)

    def snapshot_weights(self, measured: dict[str, Any]) -> dict[str, Any]:
        weights = self.weight_function(measured["losses"])
        if self.alpha is not None:
            weights = weights * self.alpha.cpu()[measured["labels"]]
        noisy = measured["noisy"]
        return {"curves": self.weight_function(torch.from_numpy(LOSS_GRID)).numpy(),
                "clean_mean": float(weights[~noisy].mean()) if (~noisy).any() else np.nan,
                "noisy_mean": float(weights[noisy].mean()) if noisy.any() else np.nan,
                "thumb_weights": weights[measured["thumb_index"]].numpy()}

    def weight_label(self) -> str:
        return "fixed weight (1 − e^(−loss))^γ"

    def caption(self) -> str:
        noise = f"{100 * self.hparams.label_noise:g}% {self.hparams.noise_kind} label noise"
        if self.hparams.gamma == 0:
            return f"{noise}, plain cross-entropy (focal loss with γ = 0: every sample weighs 1)"
        alpha = ", times α of the label (inverse class frequency)" if self.hparams.alpha != "none" else ""
        return (f"{noise}, focal loss γ = {self.hparams.gamma:g}: the fixed weight (1 − e^(−loss))^γ of each "
                f"sample's loss{alpha}")

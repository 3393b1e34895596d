"""Fine-tune baseline ("Baseline" of Chen et al., 2019): pre-train a Conv-4 on all meta-train classes, then
fit a new linear classifier on each task's support features (optionally fine-tuning the encoder too).

For regression it is the "pretrained" baseline of Finn et al. (2017): one regressor pre-trained on points pooled
from all training tasks, then fine-tuned by gradient descent on each task's K points. Regression has no per-class
head to replace, so the pre-trained head is kept and fine-tuned."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Family
from workbench.core.algorithms.pretrain import PretrainBaseline, PretrainHParams
from workbench.core.hparams import hparam
from workbench.core.recipes import Recipe


@dataclass
class FinetuneHParams(PretrainHParams):
    finetune_steps: int = hparam(100, "Steps fitting the new classifier on the support set (full batch).",
                                 low=1, high=5000)
    finetune_lr: float = hparam(0.01, "Learning rate of the new classifier.", low=1e-5, high=10.0, log_scale=True)
    finetune_optimizer: str = hparam("adam", "Optimizer of the fit on the support set: Adam, or plain gradient "
                                     "descent (sgd: the paper's fine-tuning for regression).",
                                     choices=("adam", "sgd"))
    weight_decay: float = hparam(1e-3, "L2 penalty on the new classifier; keeps one-shot fits from growing "
                                 "overconfident.", low=0.0, high=1.0)
    finetune_layers: str = hparam("head", "What adapts to a task. head: only the new linear classifier, on frozen "
                                  "features (fast). all: the encoder as well, starting from the pre-trained weights "
                                  "(slower; batch-norm statistics stay frozen).", choices=("head", "all"))
    encoder_lr: float = hparam(1e-4, "Learning rate of the encoder when finetune_layers is 'all'.", low=1e-7,
                               high=1.0, log_scale=True)


# The "pretrained" baseline of Finn et al. (2017, section 5.1): the same MLP as MAML's, fine-tuned with plain
# gradient descent at MAML's inner rate, so the comparison at 1 and 10 steps is like for like.
SINE_PRETRAINED = Recipe(
    "paper", "The paper's pretrained baseline for sine regression (Finn et al. 2017, section 5.1): an MLP 1-40-40-1 "
    "trained on points pooled from all training tasks (250 per batch, as many as MAML's 25 tasks of 10), then "
    "fine-tuned on each task's K = 10 points with 10 steps of gradient descent at lr 0.01 (the whole network). "
    "One CPU thread: a network this small only loses time to more.",
    kind="regression", datasets=("sine",), recommended=True, dataset={"shots": 10, "queries": 100},
    training={"lr": 1e-3, "lr_schedule": "constant", "steps": 70_000, "threads": 1, "val_interval": 5000,
              "val_episodes": 100, "checkpoint_interval": 5000},
    hparams={"hidden": 40, "batch_size": 250, "finetune_steps": 10, "finetune_lr": 0.01,
             "finetune_optimizer": "sgd", "weight_decay": 0.0, "finetune_layers": "all", "encoder_lr": 0.01})


@register
class Finetune(PretrainBaseline):
    name = "finetune"
    title = "Fine-tune (pre-trained)"
    family = Family.BASELINE
    summary = "Pre-train on all training classes; fit a new classifier on each task's support set."
    description = ("A baseline without meta-learning (the 'Baseline' of Chen et al., 2019). A Conv-4 is trained as "
                   "an ordinary classifier over all meta-train classes with cross-entropy. For a new task its "
                   "classifier is replaced by a fresh linear layer with one output per class, fitted with Adam on "
                   "the support images' features; optionally the encoder is fine-tuned too. Simple and often "
                   "surprisingly competitive with meta-learning, especially with more shots. For regression (the "
                   "'pretrained' baseline of Finn et al., 2017) an MLP regressor is trained on points pooled from "
                   "all training tasks, then fine-tuned by gradient descent on each task's K points.")
    HParams = FinetuneHParams
    kinds = ("classification", "regression")
    recipes = (Recipe("default", "The declared defaults: pre-training batches of 128 images over all training classes, "
                      "2,000 steps, cosine schedule; a new head fitted per task for 100 Adam steps.", recommended=True),
               SINE_PRETRAINED)
    capabilities = frozenset({"embeddings", "adaptation"})
    adaptation_steps_hparam = "finetune_steps"
    gradient_based = True  # fitting the new head is an inner loop, so adaptation_trace is meaningful

    def _task_head(self, ways: int) -> nn.Linear:
        """The head a task starts from: a new zero one with one output per class, or, without classes
        (regression), a copy of the pre-trained head, which already is the task's."""
        if not self.has_classes:
            return copy.deepcopy(self.classifier)
        head = nn.Linear(self.encoder.out_dim, self.kind.output_size(ways)).to(self.device)
        # Logistic regression is convex: a zero start makes the fit deterministic without hurting it.
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return head

    def _fit(self, support_x, support_y, ways, steps: int,
             on_step: Callable[[int, nn.Module, nn.Module | None, torch.Tensor], None] | None = None):
        """Fit the task's head (and the encoder, if asked) on the support set with the kind's loss.

        ``on_step(step, head, encoder_or_none, support_loss)`` is called before each step and after the last.
        """
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        head = self._task_head(ways)
        groups = [{"params": head.parameters(), "lr": self.hparams.finetune_lr,
                   "weight_decay": self.hparams.weight_decay}]
        encoder = None
        frozen_features = None
        if self.hparams.finetune_layers == "all":
            encoder = copy.deepcopy(self.encoder).eval()  # eval: five images are no batch-norm statistics
            groups.append({"params": encoder.parameters(), "lr": self.hparams.encoder_lr, "weight_decay": 0.0})
        else:
            frozen_features = self.features(support_x)
        optimizer = (torch.optim.SGD if self.hparams.finetune_optimizer == "sgd" else torch.optim.Adam)(groups)
        with torch.enable_grad():
            for step in range(steps + 1):
                features = frozen_features if encoder is None else encoder(support_x)
                loss = self.kind.loss(head(features), support_y)
                if on_step is not None:
                    on_step(step, head, encoder, loss.detach())
                if step == steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        head.requires_grad_(False)
        if encoder is not None:
            encoder.requires_grad_(False)
        return head, encoder

    def adapt(self, support_x, support_y, ways, steps: int | None = None):
        steps = self.hparams.finetune_steps if steps is None else steps
        head, encoder = self._fit(support_x, support_y, ways, steps)
        return {"head": head, "encoder": encoder, "ways": ways}

    @torch.no_grad()
    def _features_with(self, encoder: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        return self.features(x) if encoder is None else encoder(x.to(self.device))

    @torch.no_grad()
    def predict(self, adapted, query_x):
        return self.kind.predictions(adapted["head"](self._features_with(adapted["encoder"], query_x)))

    def embed(self, x, adapted=None):
        """Encoder features; with ``adapted`` from an all-layer fine-tune, the fine-tuned encoder's."""
        return self._features_with(adapted["encoder"] if adapted else None, x)

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None):
        steps = self.hparams.finetune_steps if steps is None else steps
        kind = self.kind
        metric = f"query_{kind.metric.key}"
        query_y = query_y.to(self.device)
        frozen_query = self.features(query_x) if self.hparams.finetune_layers == "head" else None
        trace = []

        @torch.no_grad()
        def record(step, head, encoder, support_loss):
            features = frozen_query if encoder is None else encoder(query_x.to(self.device))
            outputs = head(features)
            trace.append({"step": step, "support_loss": float(support_loss),
                          "query_loss": float(kind.loss(outputs, query_y)), metric: kind.score(outputs, query_y)})

        self._fit(support_x, support_y, ways, steps, on_step=record)
        return trace

"""DADA: Differentiable Automatic Data Augmentation (Li et al., ECCV 2020).

The policy is a relaxed categorical over augmentation operations (identity, rotate, shear, translate, scale,
contrast, brightness, cutout, elastic; :mod:`workbench.core.models.augment_ops`), each with a learnable magnitude.
Each image draws one operation by Gumbel-softmax with the straight-through estimator (a hard choice forward, the
softmax's gradient backward), so the probabilities get gradients; the operations are differentiable in their
magnitude, so the magnitudes get gradients too.

A meta-step, as in DARTS (Liu et al. 2019) on which DADA builds: the network (a Conv-4 Prototypical Network
encoder) takes a virtual SGD step on an augmented training episode, ``w' = w - xi * grad_w L_train(w, policy)``;
the loss of a clean validation episode under ``w'`` is differentiated through that step to the policy's
parameters (second order, exactly, by autograd), which Adam updates; the network then takes its real step on the
same augmented loss. The learned policy is judged by the kind (networks trained from scratch with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, make_scheduler
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.kinds.augmentation import fit_classifier, prototype_loss
from workbench.core.models.augment_ops import OPERATIONS, Draws, apply
from workbench.core.models.conv4 import Conv4
from workbench.core.recipes import Recipe

DEFAULT_OPERATIONS = ",".join(OPERATIONS[1:])
MAX_HISTORY = 500  # snapshots of the policy kept (every other one dropped beyond)
PROBES = 8  # training images whose augmentations the strip shows
SAMPLES_PER_PROBE = 5


@dataclass
class DADAHParams:
    hidden: int = hparam(32, "Filters per Conv-4 block of the network trained during the search.", low=4, high=256)
    operations: str = hparam(DEFAULT_OPERATIONS, "Comma-separated operations the policy chooses among, besides "
                             "identity (always there, so the policy can choose not to augment): "
                             f"{DEFAULT_OPERATIONS}.")
    inner_lr: float = hparam(0.1, "Learning rate xi of the virtual SGD step the meta-gradient flows through "
                             "(DARTS/DADA's one-step unrolled approximation).", low=1e-4, high=10.0, log_scale=True)
    policy_lr: float = hparam(0.05, "Adam learning rate (beta1 0.5, as DARTS's architecture weights) of the "
                              "policy's probabilities and magnitudes. On glyphs 5e-3 barely moved the policy in 600 "
                              "steps (no probability left 0.10-0.13); 0.05 separates the operations within 150.",
                              low=1e-5, high=1.0, log_scale=True)
    temperature: float = hparam(0.5, "Temperature of the Gumbel-softmax relaxation of the operation choice.",
                                low=0.05, high=10.0, log_scale=True)
    history_interval: int = hparam(10, "Steps between snapshots of the policy for the probability curves.", low=1,
                                   high=100_000)


def parse_operations(text: str) -> tuple[str, ...]:
    """("identity", *the named operations), or ConfigError naming the unknown ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(names) - set(OPERATIONS))
    if unknown or not names:
        raise ConfigError("algorithm.hparams.operations", f"unknown operations {unknown or '(none given)'}; "
                          f"choose among {DEFAULT_OPERATIONS}")
    return ("identity", *dict.fromkeys(n for n in names if n != "identity"))


class AugmentPolicy(nn.Module):
    """Logits of the operation probabilities and, through a sigmoid, magnitudes in (0, 1); both start uniform and
    at 0.5, as in DADA."""

    def __init__(self, operations: tuple[str, ...]):
        super().__init__()
        self.operations = operations
        self.logits = nn.Parameter(torch.zeros(len(operations)))
        self.magnitude_logits = nn.Parameter(torch.zeros(len(operations)))

    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    def magnitudes(self) -> torch.Tensor:
        return torch.sigmoid(self.magnitude_logits)

    def choice_weights(self, n: int, temperature: float, generator: torch.Generator | None = None,
                       gumbel: torch.Tensor | None = None) -> torch.Tensor:
        """[n, operations]: one-hot forward (a sample of the policy), the Gumbel-softmax's gradient backward."""
        if gumbel is None:
            uniform = torch.rand(n, len(self.operations), generator=generator).clamp(1e-10, 1 - 1e-10)
            gumbel = -torch.log(-torch.log(uniform))
        soft = ((self.logits + gumbel.to(self.logits)) / temperature).softmax(-1)
        hard = F.one_hot(soft.argmax(-1), len(self.operations)).to(soft)
        return hard - soft.detach() + soft

    def forward(self, x: torch.Tensor, temperature: float = 0.5, generator: torch.Generator | None = None,
                draws: Draws | None = None, gumbel: torch.Tensor | None = None) -> torch.Tensor:
        """Each image augmented by one sampled operation, differentiably in the policy's parameters."""
        draws = draws if draws is not None else Draws.sample(x, generator)
        weights = self.choice_weights(len(x), temperature, generator, gumbel).to(x.dtype)
        magnitudes = self.magnitudes().to(x.dtype)
        outputs = torch.stack([apply(name, x, magnitudes[k], draws) for k, name in enumerate(self.operations)])
        return torch.einsum("nk,knchw->nchw", weights, outputs)


def meta_gradient(params: dict[str, torch.Tensor], train_loss: Callable[[dict], torch.Tensor],
                  val_loss: Callable[[dict], torch.Tensor], inner_lr: float,
                  wrt: list[torch.Tensor]) -> dict[str, Any]:
    """One unrolled step: the gradient of ``val_loss(w - inner_lr * grad_w train_loss(w))`` with respect to
    ``wrt`` (the policy's parameters, on which ``train_loss`` depends), plus the network's own gradient."""
    loss = train_loss(params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {name: p - inner_lr * g for (name, p), g in zip(params.items(), grads)}
    validation = val_loss(fast)
    policy_grads = torch.autograd.grad(validation, wrt, allow_unused=True)
    return {"train_loss": loss.detach(), "val_loss": validation.detach(),
            "network_grads": [g.detach() for g in grads],
            "policy_grads": [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, policy_grads)]}


OPERATION_PROBABILITIES = InspectionSpec(
    "operation_probabilities", "Operation probabilities", "curves",
    "The policy's probability of each augmentation operation over training (DADA, Li et al. 2020): the meta-gradient "
    "of the validation loss raises the operations that help the network generalize and lowers the others. All "
    "start equal; identity is the probability of leaving an image as it is.",
    x_label="step", y_label="probability", x_key="step")
MAGNITUDES = InspectionSpec(
    "magnitudes", "Operation magnitudes", "curves",
    "The learned magnitude of each operation over training, from 0 (none) to 1 (its largest: rotate 30 degrees, "
    "shear 0.3, translate 20%, scale 30%, contrast 80%, brightness 30% of the range, cutout half the side, elastic "
    "3 pixels). All start at 0.5, as in DADA.", x_label="step", y_label="magnitude", x_key="step")
AUGMENTED_SAMPLES = InspectionSpec(
    "augmented_samples", "Augmented samples", "image_grid",
    "A few training images, each followed by five draws of the current policy (the operation drawn under each): "
    "what the network trained with the policy sees.")


@register
class DADA(Algorithm):
    name = "dada"
    title = "DADA"
    family = Family.OPTIMIZATION
    summary = "Learns an augmentation policy by the meta-gradient of the validation loss."
    description = ("DADA (Li et al., ECCV 2020) makes augmentation policy search differentiable: each image gets one "
                   "operation drawn from a learned categorical (Gumbel-softmax, straight-through), applied at a "
                   "learned magnitude by differentiable operations (affine warps through grid_sample, contrast and "
                   "brightness arithmetic, a soft cutout mask, smoothed elastic fields). As in DARTS, a network "
                   "takes a virtual step on augmented training data and the loss of clean validation data after "
                   "that step is differentiated to the policy. Here the network is a Prototypical Network on "
                   "meta-train episodes; the kind judges the policy by training networks from scratch with it.")
    HParams = DADAHParams
    kinds = ("augmentation",)
    capabilities = frozenset({"inspection"})
    inspections = (OPERATION_PROBABILITIES, MAGNITUDES, AUGMENTED_SAMPLES)
    recipes = (
        Recipe("default", "Small-data glyph classification: the policy is searched on pairs of 5-way 5-shot "
               "meta-train episodes for 300 steps, then judged by Conv-4 classifiers trained from scratch on 2 "
               "images of each of 20 new classes and tested on 10 others per class (5 seeds).",
               kind="augmentation", recommended=True, dataset={"ways": 20, "shots": 2, "queries": 10},
               training={"steps": 300, "val_interval": 100, "val_episodes": 3, "train_ways": 5, "train_shots": 5,
                         "train_queries": 5},
               evaluation={"episodes": 5}, task={"protocol": "small-data"}),
        Recipe("few-shot", "Few-shot training with ProtoNet: the same search, then Prototypical Networks trained "
               "from scratch for 300 augmented 5-way 1-shot episodes with each augmentation and tested on 100 "
               "5-way 1-shot test episodes per seed (5 seeds).", kind="augmentation",
               dataset={"ways": 5, "shots": 1, "queries": 15},
               training={"steps": 300, "val_interval": 100, "val_episodes": 2, "train_ways": 5, "train_shots": 1,
                         "train_queries": 5},
               evaluation={"episodes": 5}, task={"protocol": "few-shot", "eval_steps": 300}),
    )

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        self.encoder = Conv4(model_spec.in_channels, hparams.hidden, model_spec.image_size).to(self.device)
        self.policy = AugmentPolicy(parse_operations(hparams.operations)).to(self.device)
        self.generator = torch.Generator().manual_seed(0)
        self.history: dict[str, np.ndarray] = _empty_history(len(self.policy.operations))
        self.probes = torch.zeros(0)
        self.steps_done = 0

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "policy": self.policy}

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        network = torch.optim.Adam(self.encoder.parameters(), lr=lr)
        # DARTS's optimizer of the architecture weights (beta1 0.5), which DADA follows for the policy.
        policy = torch.optim.Adam(self.policy.parameters(), lr=self.hparams.policy_lr, betas=(0.5, 0.999))
        self.optimizers = [network, policy]
        self.schedulers = [make_scheduler(network, total_steps, schedule, self.schedule_clock), None]

    # --- the search -------------------------------------------------------------------------------------------------
    def relaxed(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.policy(x, self.hparams.temperature, generator)

    def meta_train_step(self, batch) -> dict[str, float]:
        self.train()
        if self.steps_done == 0:
            self.record_policy()  # the start, where every operation is equally likely
        network_opt, policy_opt = self.optimizers
        network_opt.zero_grad(set_to_none=True)
        policy_opt.zero_grad(set_to_none=True)
        params = dict(self.encoder.named_parameters())
        policy_params = list(self.policy.parameters())
        totals = {"loss": 0.0, "accuracy": 0.0, "val_loss": 0.0}
        for task in batch:
            task = task.to(self.device)
            if self.probes.numel() == 0:
                rows = _one_per_class_first(task.train.support_y.cpu(), PROBES)
                self.probes = task.train.support_x[rows.to(task.train.support_x.device)].detach().cpu().clone()
            accuracy = []

            def train_loss(weights):
                loss, acc = prototype_loss(lambda x: functional_call(self.encoder, weights, (x,)), task.train,
                                           self.relaxed, self.generator)
                accuracy.append(acc)
                return loss

            def val_loss(weights):
                return prototype_loss(lambda x: functional_call(self.encoder, weights, (x,)), task.val)[0]

            out = meta_gradient(params, train_loss, val_loss, self.hparams.inner_lr, policy_params)
            for p, g in zip([*params.values(), *policy_params], [*out["network_grads"], *out["policy_grads"]]):
                p.grad = g / len(batch) if p.grad is None else p.grad + g / len(batch)
            totals["loss"] += float(out["train_loss"]) / len(batch)
            totals["val_loss"] += float(out["val_loss"]) / len(batch)
            totals["accuracy"] += accuracy[0] / len(batch)
        network_opt.step()
        policy_opt.step()
        self.step_schedulers()
        self.steps_done += 1
        if self.steps_done == 1 or self.steps_done % self.hparams.history_interval == 0:
            self.record_policy()
        return {**totals, "policy_entropy": float(_entropy(self.policy.probabilities().detach()))}

    # --- the policy, for the kind and the views ------------------------------------------------------------------
    @torch.no_grad()
    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample of the current policy applied to normalized images [N, C, H, W]."""
        return self.relaxed(x, generator)

    def policy_summary(self) -> dict[str, dict[str, float]]:
        probabilities = self.policy.probabilities().detach().cpu().tolist()
        magnitudes = self.policy.magnitudes().detach().cpu().tolist()
        return {name: {"probability": p, **({"magnitude": m} if name != "identity" else {})}
                for name, p, m in zip(self.policy.operations, probabilities, magnitudes)}

    def record_policy(self) -> None:
        history = self.history
        if history["steps"].size and history["steps"][-1] == self.steps_done:
            return
        history["steps"] = np.append(history["steps"], self.steps_done)
        history["probabilities"] = np.vstack([history["probabilities"],
                                              self.policy.probabilities().detach().cpu().numpy()[None]])
        history["magnitudes"] = np.vstack([history["magnitudes"],
                                           self.policy.magnitudes().detach().cpu().numpy()[None]])
        if len(history["steps"]) > MAX_HISTORY:
            keep = np.r_[np.arange(0, len(history["steps"]) - 1, 2), len(history["steps"]) - 1]
            for key in history:
                history[key] = history[key][keep]

    def inspect(self) -> dict[str, dict[str, Any]]:
        self.record_policy()
        history, operations = self.history, self.policy.operations
        steps = history["steps"].astype(np.float32)
        records = {
            "operation_probabilities": {"step": steps, **{name: history["probabilities"][:, k]
                                                          for k, name in enumerate(operations)}},
            "magnitudes": {"step": steps, **{name: history["magnitudes"][:, k] for k, name in enumerate(operations)
                                             if name != "identity"}}}
        if self.probes.numel():
            records["augmented_samples"] = self.sample_strip()
        return records

    @torch.no_grad()
    def sample_strip(self) -> dict[str, np.ndarray]:
        """Each probe image, then SAMPLES_PER_PROBE draws of the policy, on the originals' common grey scale."""
        probes = self.probes.to(self.device)
        generator = torch.Generator().manual_seed(self.steps_done)
        images, labels = [], []
        for index, image in enumerate(probes):
            batch = image.unsqueeze(0).expand(SAMPLES_PER_PROBE, *image.shape)
            weights = self.policy.choice_weights(SAMPLES_PER_PROBE, self.hparams.temperature, generator)
            chosen = [self.policy.operations[k] for k in weights.argmax(-1).tolist()]
            draws = Draws.sample(batch, generator)
            magnitudes = self.policy.magnitudes()
            out = torch.cat([apply(name, batch[i:i + 1], magnitudes[self.policy.operations.index(name)],
                                   _row(draws, i)) for i, name in enumerate(chosen)])
            images += [image.unsqueeze(0), out]
            labels += [f"#{index + 1} original"] + [f"#{index + 1} {name}" for name in chosen]
        x = torch.cat(images)
        low, high = probes.amin(), probes.amax()
        grey = ((x - low) / (high - low).clamp_min(1e-8)).clamp(0, 1).cpu().numpy()
        grey = grey[:, 0] if grey.shape[1] == 1 else grey.transpose(0, 2, 3, 1)
        return {"images": grey.astype(np.float32), "labels": np.asarray(labels)}

    # --- try a task: a classifier trained from scratch on the support with the learned policy --------------------
    def adapt(self, support_x, support_y, ways):
        support_x, support_y = support_x.to(self.device), support_y.to(self.device)
        return fit_classifier(self.kind.options, support_x, support_y, ways, self.augment, seed=0)

    @torch.no_grad()
    def predict(self, adapted, query_x):
        return adapted(query_x.to(self.device)).softmax(-1)

    # --- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["policy_history"] = {key: torch.from_numpy(np.ascontiguousarray(value))
                                   for key, value in self.history.items()}
        state["progress"] = {"steps_done": torch.tensor(self.steps_done), "probes": self.probes,
                             "generator": self.generator.get_state()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("policy_history"):
            self.history = {key: value.numpy() for key, value in state["policy_history"].items()}
        progress = state.get("progress")
        if progress:
            self.steps_done = int(progress["steps_done"])
            self.probes = progress["probes"].cpu()
            self.generator.set_state(progress["generator"])


def _empty_history(operations: int) -> dict[str, np.ndarray]:
    return {"steps": np.zeros(0, np.int64), "probabilities": np.zeros((0, operations), np.float32),
            "magnitudes": np.zeros((0, operations), np.float32)}


def _one_per_class_first(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Up to ``count`` row indexes: each class's first image, then each class's second, and so on."""
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        where = labels == label
        rank[where] = torch.arange(int(where.sum()))
    return torch.argsort(rank * (int(labels.max()) + 1) + labels, stable=True)[:count]


def _row(draws: Draws, i: int) -> Draws:
    return Draws(draws.sign[i:i + 1], draws.direction[i:i + 1], draws.centre[i:i + 1], draws.field[i:i + 1])


def _entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum()

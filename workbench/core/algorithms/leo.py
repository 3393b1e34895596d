"""Latent Embedding Optimization (Rusu et al., ICLR 2019): adapt a classifier in a low-dimensional latent space
instead of in the space of its weights.

LEO works on the features of a frozen, pre-trained backbone. An encoder and a relation network map a task's
support features to one Gaussian latent code per class; a decoder maps a code to a Gaussian over that class's
linear-classifier weights. Adaptation takes gradient steps on the latent codes (learned per-latent rates), then a
few fine-tuning steps on the decoded weights (learned per-feature rates). The outer loss is the query loss plus a
KL penalty on the codes, an encoder penalty (codes close to their adapted values), L2 and a decoder-orthogonality
penalty. This follows the reference code (github.com/deepmind/leo, model.py and data.py): features scaled to unit
length, bias-free layers with Glorot initialization, a three-layer relation network of width 2 x latent over all
pairs of support codes, standard deviations ``exp(raw) - 1 + offset``, one latent and weight sample per support
example of a class in training and the means at test time, inner gradients of the support loss summed over
examples, dropout on the features, and meta-gradients clipped by value and then by norm per tensor.

The backbone: the paper's features come from a WRN-28-10 pre-trained on the meta-train classes. Here it is the
fine-tune baseline's Conv-4 trained the fine-tune baseline's way (its own code, :class:`Finetune`): the first
``pretrain_steps`` training steps pre-train it on labelled batches over all meta-train classes (drawn from the
dataset the trainer attaches, the same batches the fine-tune baseline sees with the same seed), after which it is
frozen (eval mode, no gradients, not in LEO's optimizer) and the remaining steps meta-train LEO on episodes. The
backbone is part of the checkpoint, so evaluation and "try a task" need nothing else. A backbone trained elsewhere
can be copied in with :meth:`LEO.use_backbone`.

Measured on its own terms: every evaluation also reports, under ``protonet_same_features``, the accuracy of a
prototype classifier (nearest class mean, as ProtoNet classifies) on the same features and episodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms import register
from workbench.core.algorithms.base import Algorithm, Family, make_scheduler
from workbench.core.algorithms.finetune import Finetune, FinetuneHParams
from workbench.core.algorithms.protonet import class_means, pairwise_logits
from workbench.core.errors import ConfigError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec
from workbench.core.recipes import Recipe
from workbench.core.stats import mean_ci95

PAPER = "Rusu et al. 2019; github.com/deepmind/leo config.py"


@dataclass
class LEOHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block of the backbone whose frozen features LEO works on (the "
                         "fine-tune baseline's network).", low=8, high=256)
    pretrain_steps: int = hparam(
        2000, "The first training steps pre-train the backbone as the fine-tune baseline does (cross-entropy over "
        "all meta-train classes, cosine schedule); the remaining training.steps meta-train LEO on frozen features. "
        "0: no pre-training (random features, only as a comparison).", low=0, high=1_000_000)
    pretrain_batch_size: int = hparam(128, "Images per pre-training batch, drawn from all meta-train classes (the "
                                      "fine-tune baseline's default).", low=2, high=4096)
    pretrain_lr: float = hparam(1e-3, "Adam learning rate of the backbone's pre-training (the fine-tune baseline's "
                                "default training.lr); training.lr is LEO's outer rate.", low=1e-6, high=1.0,
                                log_scale=True)
    latent_dim: int = hparam(64, f"Size of the latent code of each class (64 in {PAPER}).", low=1, high=1024)
    latent_steps: int = hparam(5, f"Gradient steps on the latent codes when adapting (5 in {PAPER}).", low=0,
                              high=100)
    finetune_steps: int = hparam(5, f"Gradient steps on the decoded classifier weights after the latent steps (5 in "
                                 f"{PAPER}).", low=0, high=100)
    inner_lr: float = hparam(1.0, f"Starting value of the learned per-latent inner learning rate (1.0 in {PAPER}).",
                             low=1e-5, high=100.0, log_scale=True)
    finetune_lr: float = hparam(1e-3, f"Starting value of the learned per-feature fine-tuning rate (0.001 in "
                                f"{PAPER}).", low=1e-6, high=10.0, log_scale=True)
    dropout: float = hparam(0.5, f"Dropout on the features during meta-training (0.5 in {PAPER}; 0.31 tuned for "
                            "miniImageNet 1-shot).", low=0.0, high=0.95)
    kl_weight: float = hparam(1e-3, f"Weight β of the KL penalty on the latent codes (0.001 in {PAPER}; 0.76 tuned "
                              "for miniImageNet 1-shot).", low=0.0, high=100.0)
    encoder_penalty: float = hparam(1e-9, f"Weight γ of the penalty pulling the encoder's codes towards the adapted "
                                    f"ones (1e-9 in {PAPER}).", low=0.0, high=100.0)
    l2_penalty: float = hparam(1e-8, f"Weight λ1 of the L2 penalty on LEO's layers (1e-8 in {PAPER}).", low=0.0,
                               high=1.0)
    orthogonality_penalty: float = hparam(1e-3, f"Weight λ2 of the decoder-orthogonality penalty (0.001 in {PAPER}; "
                                          "0.19 tuned for miniImageNet 1-shot).", low=0.0, high=100.0)
    gradient_clip: float = hparam(0.1, f"Meta-gradients are clipped to ±this per value (0.1 in {PAPER}); 0: off.",
                                  low=0.0, high=1e6)
    gradient_norm_clip: float = hparam(0.1, f"Then each tensor's meta-gradient to this norm (0.1 in {PAPER}); 0: "
                                       "off.", low=0.0, high=1e6)
    stochastic: bool = hparam(True, "Sample the latent codes and the decoded weights during meta-training (the "
                              "paper); off: use their means, a deterministic LEO. Tests always use the means.")


class LEONet(nn.Module):
    """Encoder, relation network, decoder and the learned inner and fine-tuning rates."""

    def __init__(self, feature_dim: int, latent_dim: int, inner_lr: float, finetune_lr: float):
        super().__init__()
        pair = 2 * latent_dim
        self.encoder = nn.Linear(feature_dim, latent_dim, bias=False)
        self.relation = nn.Sequential(nn.Linear(2 * latent_dim, pair, bias=False), nn.ReLU(),
                                      nn.Linear(pair, pair, bias=False), nn.ReLU(), nn.Linear(pair, pair, bias=False))
        self.decoder = nn.Linear(latent_dim, 2 * feature_dim, bias=False)  # means and raw deviations of the weights
        self.inner_lr = nn.Parameter(torch.full((latent_dim,), float(inner_lr)))
        self.finetune_lr = nn.Parameter(torch.full((feature_dim,), float(finetune_lr)))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)

    def layer_weights(self) -> list[torch.Tensor]:
        return [m.weight for m in self.modules() if isinstance(m, nn.Linear)]


class Phase(nn.Module):
    """Pre-training progress, kept in the checkpoint so a resumed run continues in the right phase."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pretrain_done", torch.zeros((), dtype=torch.long))


@dataclass
class Noise:
    """What makes a pass stochastic: dropout on the features and sampling of codes and weights (training only)."""

    dropout: float = 0.0
    sample: bool = False


# --- the LEO computation, on features ----------------------------------------------------------------------
def gaussian(params: torch.Tensor, offset: float, sample: bool,
             with_kl: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Means or a reparameterized sample of the Gaussian whose means and raw deviations are the two halves of
    ``params``, and (``with_kl``) the one-sample KL to N(0, 1), zero for the means. Deviation: exp(raw) - 1 +
    offset (reference code), at least 1e-10."""
    means, raw = params.chunk(2, dim=-1)
    if not sample:
        return means, means.new_zeros(())
    std = (raw.exp() - (1.0 - offset)).clamp_min(1e-10)
    values = means + std * torch.randn_like(means)
    if not with_kl:
        return values, means.new_zeros(())
    posterior = torch.distributions.Normal(means, std, validate_args=False)
    prior = torch.distributions.Normal(torch.zeros_like(means), torch.ones_like(means), validate_args=False)
    return values, (posterior.log_prob(values) - prior.log_prob(values)).mean()


def latent_codes(net: LEONet, support: torch.Tensor, labels: torch.Tensor, ways: int, samples: int,
                 noise: Noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes [ways, samples, latent] from support features: encoder, relation network over every pair of support
    codes (mean over partners), mean per class, then a Gaussian; and its KL."""
    codes = net.encoder(F.dropout(support, noise.dropout, training=noise.dropout > 0))
    count = len(codes)
    pairs = torch.cat([codes[:, None].expand(count, count, -1), codes[None].expand(count, count, -1)], dim=-1)
    per_class = class_means(net.relation(pairs).mean(1), labels, ways)
    return gaussian(per_class[:, None].expand(-1, samples, -1), 0.0, noise.sample, with_kl=True)


def decode(net: LEONet, latents: torch.Tensor, noise: Noise) -> torch.Tensor:
    """Classifier weights [ways, samples, features] from codes; the sample's offset is Glorot's deviation."""
    ways, features = latents.shape[0], net.finetune_lr.numel()
    weights, _ = gaussian(net.decoder(latents), math.sqrt(2.0 / (ways + features)), noise.sample)
    return weights


def logits(features: torch.Tensor, weights: torch.Tensor, noise: Noise) -> torch.Tensor:
    """Class scores: each class's weight samples score a feature vector, averaged (the reference's einsum)."""
    features = F.dropout(features, noise.dropout, training=noise.dropout > 0)
    return features @ weights.mean(1).T


def summed_loss(features, labels, weights, noise: Noise) -> torch.Tensor:
    """The inner loops' loss: cross-entropy summed over the support examples, as in the reference code."""
    return F.cross_entropy(logits(features, weights, noise), labels, reduction="sum")


StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, latents, decoded weights)


def latent_steps(net: LEONet, latents: torch.Tensor, support, labels, steps: int, noise: Noise,
                 create_graph: bool, on_step: StepHook | None = None):
    """``steps`` gradient steps on the codes, z <- z - lr * dL/dz (lr learned per latent), each through a fresh
    decode. Returns the codes, the last support loss and its weights. Without ``create_graph`` each step starts
    from detached codes (adaptation at test time)."""
    weights = decode(net, latents, noise)
    loss = summed_loss(support, labels, weights, noise)
    for step in range(steps):
        if on_step is not None:
            on_step(step, latents, weights)
        grad, = torch.autograd.grad(loss, latents, create_graph=create_graph)
        latents = latents - net.inner_lr * grad
        if not create_graph:
            latents = latents.detach().requires_grad_(True)
        weights = decode(net, latents, noise)
        loss = summed_loss(support, labels, weights, noise)
    if on_step is not None:
        on_step(steps, latents, weights)
    return latents, loss, weights


def finetune_weights(net: LEONet, weights: torch.Tensor, loss: torch.Tensor, support, labels, steps: int,
                     noise: Noise, create_graph: bool) -> torch.Tensor:
    """``steps`` gradient steps on the decoded weights (lr learned per feature), from the latent loop's loss."""
    for _ in range(steps):
        grad, = torch.autograd.grad(loss, weights, create_graph=create_graph)
        weights = weights - net.finetune_lr * grad
        if not create_graph:
            weights = weights.detach().requires_grad_(True)
        loss = summed_loss(support, labels, weights, noise)
    return weights


def leo_task_loss(net: LEONet, hp, support, support_y, query, query_y, ways: int,
                  noise: Noise) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One task's meta-training loss (query cross-entropy + β KL + γ encoder penalty), differentiable through both
    inner loops; also the query logits and the KL."""
    samples = max(1, len(support) // ways) if noise.sample else 1
    start, kl = latent_codes(net, support, support_y, ways, samples, noise)
    latents, loss, weights = latent_steps(net, start, support, support_y, hp.latent_steps, noise, True)
    weights = finetune_weights(net, weights, loss, support, support_y, hp.finetune_steps, noise, True)
    query_logits = logits(query, weights, noise)
    encoder_penalty = F.mse_loss(start, latents.detach())
    total = F.cross_entropy(query_logits, query_y) + hp.kl_weight * kl + hp.encoder_penalty * encoder_penalty
    return total, query_logits, kl


def decoder_correlation(decoder_weight: torch.Tensor) -> torch.Tensor:
    """[latent, latent] cosine similarities of the decoder's latent directions (the weights each latent adds)."""
    rows = decoder_weight.T  # one row per latent dimension
    norms = rows.norm(dim=1, keepdim=True) + 1e-32
    return (rows @ rows.T) / (norms @ norms.T)


def orthogonality(decoder_weight: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of the decoder's latent-direction correlations from the identity."""
    correlation = decoder_correlation(decoder_weight)
    return (correlation - torch.eye(len(correlation), dtype=correlation.dtype,
                                    device=correlation.device)).pow(2).mean()


def regularization(net: LEONet, hp) -> torch.Tensor:
    l2 = sum(w.pow(2).sum() / 2 for w in net.layer_weights())
    return hp.l2_penalty * l2 + hp.orthogonality_penalty * orthogonality(net.decoder.weight)


def clip_gradients(parameters, value: float, norm: float) -> None:
    """Clip each gradient by value, then each tensor by its norm (the reference code's order)."""
    for parameter in parameters:
        grad = parameter.grad
        if grad is None:
            continue
        if value > 0:
            grad.clamp_(-value, value)
        if norm > 0:
            size = grad.norm()
            if size > norm:
                grad.mul_(norm / size)


# --- declarations ----------------------------------------------------------------------------------------
LEARNED_RATES = InspectionSpec(
    "rates", "Learned inner and fine-tuning rates", "layer_histograms",
    "LEO's learned step sizes (Rusu et al. 2019): one rate per latent dimension for the gradient steps on the codes "
    "(they start at inner_lr) and one per feature for the fine-tuning steps on the decoded weights (they start at "
    "finetune_lr).", x_label="rate", y_label="dimensions")
DECODER_CORRELATION = InspectionSpec(
    "decoder_correlation", "Decoder correlation", "heatmap",
    "Correlation between the decoder's latent directions (the weight vectors each latent dimension adds). The "
    "orthogonality penalty (Rusu et al. 2019) pushes it towards the identity, so each latent dimension changes "
    "the classifier in its own way.", x_label="latent", y_label="latent")

DEFAULT = Recipe(
    "default", "The reference code's defaults (Rusu et al. 2019, github.com/deepmind/leo) on Conv-4 features: "
    "2,000 steps pre-training the backbone as the fine-tune baseline does, then 2,000 steps of LEO over "
    "meta-batches of 4 tasks (the paper: 12) at Adam 1e-3, cosine schedule. Every evaluation also reports a "
    "prototype classifier on the same features.", recommended=True,
    training={"steps": 4000, "meta_batch": 4, "lr": 1e-3, "lr_schedule": "cosine"})


@register
class LEO(Algorithm):
    name = "leo"
    title = "LEO (latent embedding optimization)"
    family = Family.OPTIMIZATION
    summary = "Adapt in a learned latent space that decodes to classifier weights, on pre-trained features."
    description = ("Latent Embedding Optimization (Rusu et al., 2019) works on the frozen features of a pre-trained "
                   "backbone; here the fine-tune baseline's Conv-4, pre-trained in the first training steps on all "
                   "meta-train classes. An encoder and a relation network turn a task's support features into one "
                   "low-dimensional Gaussian code per class, and a decoder turns a code into that class's linear "
                   "classifier weights. Adaptation takes a few gradient steps on the codes (learned rates per latent "
                   "dimension), then a few on the decoded weights. Meta-training learns encoder, relation network, "
                   "decoder and rates through both loops, with a KL penalty on the codes and an orthogonal decoder. "
                   "Each evaluation also reports a prototype classifier on the same features, the fair comparison.")
    HParams = LEOHParams
    kinds = ("classification",)
    recipes = (DEFAULT,)
    capabilities = frozenset({"embeddings", "adaptation", "evaluation_extras", "training_data", "inspection"})
    inspections = (LEARNED_RATES, DECODER_CORRELATION)
    adaptation_steps_hparam = "latent_steps"
    gradient_based = True

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        if not model_spec.num_train_classes:
            raise ConfigError("algorithm.name", "LEO pre-trains its backbone over the meta-train classes, and this "
                              "dataset's meta-train split has none")
        backbone_hparams = FinetuneHParams(hidden=hparams.hidden, batch_size=hparams.pretrain_batch_size)
        self.backbone = Finetune(backbone_hparams, model_spec, device)  # the fine-tune baseline's pre-training
        self.net = LEONet(self.backbone.encoder.out_dim, hparams.latent_dim, hparams.inner_lr,
                          hparams.finetune_lr).to(self.device)
        self.phase = Phase().to(self.device)
        self._pretrain_batches = None  # the fine-tune baseline's batch sampler, once the trainer attaches data

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.backbone.encoder, "classifier": self.backbone.classifier, "leo": self.net,
                "phase": self.phase}

    @property
    def pretraining(self) -> bool:
        return int(self.phase.pretrain_done) < self.hparams.pretrain_steps

    def configure_optimizers(self, lr: float, total_steps: int, schedule: str = "cosine") -> None:
        """Adam over LEO's networks with the run's rate and schedule (spread over the meta-training steps), and the
        fine-tune baseline's own optimizer and cosine schedule for the backbone's pre-training."""
        optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        meta_steps = max(1, total_steps - self.hparams.pretrain_steps) if total_steps else 0
        self.backbone.configure_optimizers(self.hparams.pretrain_lr, self.hparams.pretrain_steps or 1, "cosine")
        self.optimizers = [optimizer, *self.backbone.optimizers]
        self.schedulers = [make_scheduler(optimizer, meta_steps, schedule, self.schedule_clock),
                           *self.backbone.schedulers]

    def attach_training_data(self, dataset, config) -> None:
        """Pre-training draws the fine-tune baseline's batches (same sampler, same seed) from the meta-train split."""
        steps, pretrain = config.training.steps, self.hparams.pretrain_steps
        if steps and steps <= pretrain:
            raise ConfigError("training.steps", f"{steps} steps leave none for LEO: the first "
                              f"{pretrain} (algorithm.hparams.pretrain_steps) pre-train the backbone; raise "
                              f"training.steps above {pretrain} or lower pretrain_steps")
        self._pretrain_batches = self.kind.batch_sampler(dataset, config, self.hparams.pretrain_batch_size)

    def use_backbone(self, source: Algorithm) -> None:
        """Take the frozen features from another model's encoder (e.g. a trained fine-tune run) instead of
        pre-training: copies its weights and marks pre-training done."""
        encoder = source.modules().get("encoder")
        if encoder is None:
            raise ConfigError("backbone", f"'{source.name}' has no network named 'encoder' to take features from; use "
                              "a fine-tune, nearest-neighbour or ProtoNet model")
        try:
            self.backbone.encoder.load_state_dict(encoder.state_dict())
        except RuntimeError as error:
            raise ConfigError("algorithm.hparams.hidden", f"the backbone's encoder does not fit a Conv-4 of width "
                              f"{self.hparams.hidden}: {' '.join(str(error).split())[:200]}") from None
        self.phase.pretrain_done.fill_(self.hparams.pretrain_steps)

    # --- training ----------------------------------------------------------------------------------------
    def meta_train_step(self, batch) -> dict[str, float]:
        """A pre-training step of the backbone while pre-training lasts, else one LEO meta-update on episodes."""
        if self.pretraining:
            return self._pretrain_step(batch)
        return self._meta_step(batch)

    def _pretrain_step(self, episodes) -> dict[str, float]:
        # Without attached data (a caller outside the trainer) the episodes' images, labelled with their class ids.
        batch = self._pretrain_batches.sample() if self._pretrain_batches is not None else episodes
        out = self.backbone.meta_train_step(batch)
        self.phase.pretrain_done += 1
        return {"loss": out["loss"], "accuracy": out["accuracy"], "pretraining": 1.0}

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What LEO sees: the frozen backbone's features (eval mode: running batch-norm statistics), scaled to unit
        length as the reference code does with its embeddings (without it the default inner rate of 1 overshoots)."""
        return F.normalize(self.backbone.features(x), dim=-1)

    def training_noise(self) -> Noise:
        return Noise(self.hparams.dropout, self.hparams.stochastic)

    def _freeze_backbone(self) -> None:
        """Once pre-training is over the backbone takes no gradients (its features are computed without any)."""
        for module in (self.backbone.encoder, self.backbone.classifier):
            for parameter in module.parameters():
                parameter.requires_grad_(False)
                parameter.grad = None

    def _meta_step(self, episodes) -> dict[str, float]:
        hp, optimizer = self.hparams, self.optimizers[0]
        if any(p.requires_grad for p in self.backbone.encoder.parameters()):
            self._freeze_backbone()
        self.net.train()
        optimizer.zero_grad(set_to_none=True)
        losses, correct, kls = [], [], []
        for episode in episodes:
            episode = episode.to(self.device)
            features = self.features(torch.cat([episode.support_x, episode.query_x]))
            support, query = features[:len(episode.support_x)], features[len(episode.support_x):]
            loss, query_logits, kl = leo_task_loss(self.net, hp, support, episode.support_y, query, episode.query_y,
                                                   episode.ways, self.training_noise())
            (loss / len(episodes)).backward()
            losses.append(float(loss.detach()))
            kls.append(float(kl.detach()))
            correct.append(self.kind.score(query_logits.detach(), episode.query_y))
        regularization(self.net, hp).backward()
        clip_gradients(self.net.parameters(), hp.gradient_clip, hp.gradient_norm_clip)
        optimizer.step()
        if self.schedulers[0] is not None:
            self.schedulers[0].step()  # the backbone's schedule only moves while it pre-trains
        return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(correct)), "kl": float(np.mean(kls)),
                "pretraining": 0.0}

    # --- adaptation --------------------------------------------------------------------------------------
    def _start(self, support_x, support_y, ways: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Support features, labels and the encoder's codes (means; no graph back into the encoder)."""
        self.net.eval()
        support_y = support_y.to(self.device)
        support = self.features(support_x)
        with torch.no_grad():
            start, _ = latent_codes(self.net, support, support_y, ways, 1, Noise())
        return support, support_y, start.requires_grad_(True)

    def adapt(self, support_x, support_y, ways, steps: int | None = None):
        steps = self.hparams.latent_steps if steps is None else steps
        support, support_y, start = self._start(support_x, support_y, ways)
        with torch.enable_grad():
            latents, loss, weights = latent_steps(self.net, start, support, support_y, steps, Noise(), False)
            weights = finetune_weights(self.net, weights, loss, support, support_y, self.hparams.finetune_steps,
                                       Noise(), False)
        return {"weights": weights.detach().mean(1), "latents": latents.detach()[:, 0], "ways": ways}

    @torch.no_grad()
    def predict(self, adapted, query_x):
        return self.kind.predictions(self.features(query_x) @ adapted["weights"].T)

    def embed(self, x, adapted=None):
        """The features LEO classifies (adaptation changes the classifier, not the features)."""
        return self.features(x)

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways, steps=None):
        """Per latent step (0 = the encoder's codes): support and query loss and query accuracy of the decoded
        weights. The fine-tuning steps that follow in :meth:`adapt` are not traced."""
        steps = self.hparams.latent_steps if steps is None else steps
        support, support_y, start = self._start(support_x, support_y, ways)
        query, query_y = self.features(query_x), query_y.to(self.device)
        kind, trace = self.kind, []

        def record(step, _latents, weights):
            with torch.no_grad():
                outputs = logits(query, weights, Noise())
                trace.append({"step": step, "support_loss": float(kind.loss(logits(support, weights, Noise()),
                                                                                support_y)),
                              "query_loss": float(kind.loss(outputs, query_y)),
                              f"query_{kind.metric.key}": kind.score(outputs, query_y)})

        with torch.enable_grad():
            latent_steps(self.net, start, support, support_y, steps, Noise(), False, on_step=record)
        return trace

    # --- reports -------------------------------------------------------------------------------------------
    def evaluation_extras(self, tasks) -> dict[str, Any]:
        """A prototype classifier (ProtoNet's rule: nearest class mean, Euclidean) on the features LEO sees (the
        frozen backbone's, unit length) and the same episodes, so each evaluation of LEO carries its fair
        comparison."""
        accuracies = []
        for index in range(len(tasks)):
            episode = tasks[index].to(self.device)
            prototypes = class_means(self.features(episode.support_x), episode.support_y, episode.ways)
            scores = pairwise_logits(self.features(episode.query_x), prototypes, "euclidean", 1.0)
            accuracies.append(self.kind.score(scores, episode.query_y))
        accuracy, ci95 = mean_ci95(accuracies)
        return {"protonet_same_features": {"accuracy": accuracy, "ci95": ci95, "episodes": len(accuracies)}}

    def inspect(self) -> dict[str, dict[str, Any]]:
        net = self.net
        return {"rates": {"latent inner rate": net.inner_lr.detach().cpu().numpy(),
                          "fine-tuning rate": net.finetune_lr.detach().cpu().numpy()},
                "decoder_correlation": {"values": decoder_correlation(net.decoder.weight.detach()).cpu().numpy()}}


__all__ = ["LEO", "LEONet", "Noise", "latent_codes", "decode", "latent_steps", "finetune_weights", "leo_task_loss",
           "decoder_correlation", "orthogonality", "regularization", "clip_gradients"]

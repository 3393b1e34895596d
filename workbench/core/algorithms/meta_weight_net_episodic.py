"""The episodic setting of Meta-Weight-Net: MAML whose inner loop weights the support samples by the learned
weight(loss) function, while the support labels are corrupted (helpers of
:class:`workbench.core.algorithms.meta_weight_net.MetaWeightNet`, which registers the one algorithm).

Meta-training: each training episode's support labels are corrupted at ``label_noise`` (seeded; uniform: any
other class of the episode, flip: each class of the episode to one fixed other class). Every inner SGD step
minimizes the weighted support loss, with weights = weight_net(per-sample loss) at the current fast weights;
the outer loss is the clean query loss of the adapted network. Differentiating through the inner steps
(second order) gives the meta-gradient of both the initialization (MAML's Conv-4) and the weight net: the
bi-level update of the paper, with the clean queries as the meta set. The first inner step sees the losses of
the task-agnostic start, which cannot tell a wrong label from a right one (labels are assigned per episode), so
the weighting acts from the second inner step on: use at least 2 inner steps. Two choices make the weighting
work on 5-shot supports (glyphs, 40% uniform noise): the task's head starts at zero (hparam ``head``), so every
loss of the first step is log(ways) and the losses after it reflect how well a sample agrees with the others of
its label; and the weights are normalized within each labelled class (``normalize_weights``), so the weights
only shift a class's share of the step between its samples. Normalized over the whole support, the net learned
to favour high losses (faster fitting of the few steps), which noisy samples have too.

Testing: ``adapt`` fine-tunes on the support set it is given, weighted the same way (in "Try a task" the labels
are the user's own, never corrupted). The standard evaluation thus measures clean supports, comparable with
every other algorithm on the same fixed episodes. When the run's ``label_noise`` is above 0, ``workbench eval``
also corrupts the supports of the same fixed episodes at that rate (seeded by the evaluation seed, so a weighted
run and its unweighted baseline see identical corrupted labels) and reports that accuracy ("noisy_supports")
and the mean weight of the clean and the corrupted support samples ("weights").

Which weights count: those of inner steps 1 and later (step 0 weighs the start's uninformative losses), each
support sample's weight averaged over those steps; its loss is averaged the same way for the histograms of the
Sample weights view.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms.base import ModelSpec, accuracy
from workbench.core.algorithms.functional import forward_with, sgd_inner_loop
from workbench.core.algorithms.maml import MAML, MAMLHParams
from workbench.core.data.base import ClassSplit, PreprocessSpec
from workbench.core.data.episodes import Episode, EpisodeSampler
from workbench.core.noise import corrupt_labels

PROBE_EPISODES = 12  # fixed meta-train tasks (noisy supports) that each history snapshot adapts to
WeightRecord = list[tuple[torch.Tensor, torch.Tensor]]  # per inner step: (losses, raw weights) of the support


def normalized(weights: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Per-sample factors of a loss sum: weights over their sum, or weights over the count."""
    if normalize:
        return weights / weights.sum().clamp_min(1e-8)
    return weights / len(weights)


def normalized_per_class(weights: torch.Tensor, labels: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Per-sample factors of a loss sum: each labelled class's weights over their sum, divided by the number of
    classes present (the factors sum to 1); or weights over the count when not normalizing."""
    if not normalize:
        return weights / len(weights)
    sums = torch.zeros(int(labels.max()) + 1, dtype=weights.dtype, device=weights.device).index_add(0, labels,
                                                                                                    weights)
    classes = len(labels.unique())
    return weights / (sums[labels].clamp_min(1e-8) * classes)


def corrupt_support(labels: torch.Tensor, ways: int, rate: float, kind: str, seed: int) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
    """An episode's corrupted support labels (on the labels' device) and the bool mask of corrupted ones."""
    noisy, mask = corrupt_labels(labels.cpu(), ways, rate, kind, seed)
    return noisy.to(labels.device), mask


def seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


def sample_summary(record: WeightRecord, support_count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each support sample's loss and weight averaged over inner steps 1.. (step 0 alone if there is no other)."""
    used = record[1:] or record[:1]
    if not used:
        return torch.full((support_count,), float("nan")), torch.full((support_count,), float("nan"))
    losses = torch.stack([loss for loss, _ in used]).mean(0).cpu()
    weights = torch.stack([weight for _, weight in used]).mean(0).cpu()
    return losses, weights


class EpisodicLearner:
    """MAML's Conv-4 and inner loop (reused, not copied), with support losses weighted by ``weight_net``."""

    def __init__(self, hparams, model_spec: ModelSpec, device: torch.device, weight_net: nn.Module):
        self.hparams = hparams
        self.device = device
        self.weight_net = weight_net
        self.maml = MAML(MAMLHParams(hidden=hparams.hidden, train_inner_steps=hparams.train_inner_steps,
                                     train_inner_lr=hparams.train_inner_lr, test_inner_steps=hparams.test_inner_steps,
                                     test_inner_lr=hparams.test_inner_lr, head=hparams.head, first_order=False),
                         model_spec, device)
        self.model = self.maml.model
        self.split: ClassSplit | None = None
        self.spec: PreprocessSpec | None = None
        self.seed = 0
        self.probes: list[tuple[Episode, int]] = []  # fixed meta-train tasks and their corruption seeds

    # --- the weighted support loss ----------------------------------------------------------------------
    def support_loss(self, record: WeightRecord | None = None) -> Callable[[torch.Tensor, torch.Tensor],
                                                                            torch.Tensor]:
        """The inner loop's loss: weights from the weight net (constants of its input loss, differentiable in
        its own parameters), or the plain mean when weighting is off. ``record`` collects (losses, weights)."""
        hp = self.hparams

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            losses = F.cross_entropy(logits, targets, reduction="none")
            weights = self.weight_net(losses.detach()) if hp.weighting else torch.ones_like(losses)
            if record is not None:
                record.append((losses.detach(), weights.detach()))
            if not hp.weighting:
                return losses.mean()  # plain MAML: the baseline
            return (losses * normalized_per_class(weights, targets, hp.normalize_weights)).sum()

        return loss_fn

    def adapt_fast(self, support_x, support_y, ways: int, steps: int, lr: float, create_graph: bool,
                   record: WeightRecord | None = None) -> dict[str, torch.Tensor]:
        params = self.maml.task_params(ways, detach=not create_graph)
        return sgd_inner_loop(self.model, params, support_x, support_y, steps, lr, create_graph,
                              self.support_loss(record))

    # --- meta-training ------------------------------------------------------------------------------------
    def meta_train_step(self, episodes: list[Episode], generator: torch.Generator) -> dict[str, float]:
        hp = self.hparams
        self.model.train()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        total_loss, total_acc = 0.0, 0.0
        clean_weights, noisy_weights = [], []
        for episode in episodes:
            episode = episode.to(self.device)
            noisy_y, mask = corrupt_support(episode.support_y, episode.ways, hp.label_noise, hp.noise_kind,
                                            seed_from(generator))
            record: WeightRecord = []
            fast = self.adapt_fast(episode.support_x, noisy_y, episode.ways, hp.train_inner_steps,
                                   hp.train_inner_lr, create_graph=True, record=record)
            logits = forward_with(self.model, fast, episode.query_x)
            loss = F.cross_entropy(logits, episode.query_y)
            # Backward per task keeps only one task's inner-loop graph in memory (as MAML).
            (loss / len(episodes)).backward()
            total_loss += float(loss.detach()) / len(episodes)
            total_acc += accuracy(logits.detach(), episode.query_y) / len(episodes)
            _, weights = sample_summary(record, len(noisy_y))
            clean_weights.append(weights[~mask])
            noisy_weights.append(weights[mask])
        out = {"loss": total_loss, "accuracy": total_acc}
        if hp.weighting:
            grads = [p.grad for p in self.weight_net.parameters() if p.grad is not None]
            out["meta_grad_norm"] = float(torch.sqrt(sum((g * g).sum() for g in grads))) if grads else 0.0
        for optimizer in self.optimizers:
            optimizer.step()
        clean, noisy = torch.cat(clean_weights), torch.cat(noisy_weights)
        out["weight_mean"] = float(torch.cat([clean, noisy]).mean())
        if len(clean):
            out["weight_clean"] = float(clean.mean())
        if len(noisy):
            out["weight_noisy"] = float(noisy.mean())
        return out

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._optimizers

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Weight decay as in the paper keeps the MLP smooth.
        self._optimizers = [torch.optim.Adam(params, lr=lr),
                            torch.optim.Adam(self.weight_net.parameters(), lr=self.hparams.weight_net_lr,
                                             weight_decay=1e-4)]
        return self._optimizers

    # --- adaptation at test time --------------------------------------------------------------------------
    def adapt(self, support_x, support_y, ways: int, steps: int | None = None,
              record: WeightRecord | None = None) -> dict[str, Any]:
        """Weighted fine-tuning from the learned start on the given support set; fast weights detached."""
        return self.maml.adapt(support_x, support_y, ways, steps, loss_fn=self.support_loss(record))

    def predict(self, adapted, query_x) -> torch.Tensor:
        return self.maml.predict(adapted, query_x)

    def embed(self, x, adapted=None) -> torch.Tensor:
        return self.maml.embed(x, adapted)

    def adaptation_trace(self, support_x, support_y, query_x, query_y, ways: int, steps: int | None = None):
        """As MAML's, with the weighted support loss."""
        return self.maml.adaptation_trace(support_x, support_y, query_x, query_y, ways, steps,
                                          loss_fn=self.support_loss())

    # --- measuring the weighting ---------------------------------------------------------------------------
    def noisy_support_run(self, episodes, seed_of: Callable[[int], int]) -> dict[str, Any]:
        """Adapt to each episode with corrupted support labels: per-episode query accuracy, and each support
        sample's (averaged) loss and weight with its corruption mask, concatenated over the episodes."""
        hp = self.hparams
        accuracies, losses, weights, masks = [], [], [], []
        for index in range(len(episodes)):
            episode = episodes[index].to(self.device)
            noisy_y, mask = corrupt_support(episode.support_y, episode.ways, hp.label_noise, hp.noise_kind,
                                            seed_of(index))
            record: WeightRecord = []
            adapted = self.adapt(episode.support_x, noisy_y, episode.ways, record=record)
            probs = self.predict(adapted, episode.query_x)
            accuracies.append(accuracy(probs, episode.query_y))
            loss, weight = sample_summary(record, len(noisy_y))
            losses.append(loss)
            weights.append(weight)
            masks.append(mask)
        return {"accuracies": np.asarray(accuracies, np.float32), "losses": torch.cat(losses),
                "weights": torch.cat(weights), "noisy": torch.cat(masks)}

    def attach(self, split: ClassSplit, spec: PreprocessSpec, seed: int) -> None:
        self.split, self.spec, self.seed = split, spec, seed
        self.probes = []

    def ensure_probes(self, like: Episode) -> None:
        """Fixed probe tasks from the meta-train split, shaped like the training episodes (known once the first
        batch arrives) and fixed by the seed with their corruption seeds, so a resumed run measures the same."""
        if self.probes or self.split is None:
            return
        ways = like.ways
        shots, queries = len(like.support_y) // ways, len(like.query_y) // ways
        sampler = EpisodeSampler(self.split, self.spec, ways, shots, queries, seed=self.seed + 3)
        generator = torch.Generator().manual_seed(self.seed + 4)
        self.probes = [(sampler.sample(), seed_from(generator)) for _ in range(PROBE_EPISODES)]

    def probe_run(self) -> dict[str, Any]:
        episodes = [episode for episode, _ in self.probes]
        return self.noisy_support_run(episodes, lambda index: self.probes[index][1])

    def thumbnails(self, count: int) -> dict[str, Any]:
        """Support images of the probe tasks for the view's strip, as many corrupted as clean ones where
        possible, with their positions among the concatenated probe supports (as probe_run orders them)."""
        labels, masks = zip(*(corrupt_support(episode.support_y, episode.ways, self.hparams.label_noise,
                                              self.hparams.noise_kind, seed) for episode, seed in self.probes))
        masks, labels = torch.cat(masks), torch.cat([label.cpu() for label in labels])
        true_labels = torch.cat([episode.support_y.cpu() for episode, _ in self.probes])
        rows = torch.cat([episode.support_index for episode, _ in self.probes])
        positions = torch.arange(len(masks))
        half = count // 2
        picked = torch.cat([positions[masks][:half], positions[~masks][:count - min(half, int(masks.sum()))]])
        picked = picked[:count]
        return {"images": self.split.images[rows[picked]], "noisy": masks[picked].numpy(),
                "labels": labels[picked].numpy(), "true_labels": true_labels[picked].numpy(), "positions": picked}

"""Siamese networks (Koch, Zemel & Salakhutdinov, ICML Deep Learning Workshop 2015, "Siamese Neural Networks for
One-shot Image Recognition"): learn to verify whether two images show the same class, then classify one-shot by the
most similar support image.

Training is plain verification on pairs, half of the same class and half of different classes, drawn from all
meta-train classes (the training data the trainer attaches; without it, from the training episodes' images). Both
images go through the same twin network (shared weights), the twin features h1, h2 meet in the paper's learned
component-wise L1 distance, and a sigmoid gives P(same) = sigmoid(sum_j alpha_j |h1_j - h2_j| + b), trained with
binary cross-entropy. Each training image gets its own random affine distortion as in the paper (Section 3.2:
rotation in [-10, 10] degrees, shears rho_x, rho_y in [-0.3, 0.3], scale in [0.8, 1.2], translation in [-2, 2] pixels,
each component included with probability 0.5), done with torchvision.transforms.v2 on tensors. Two differences:
torchvision's affine has one scale for both axes (the paper draws s_x and s_y), and the translation is in pixels of the
model's images (28x28 here, the paper's were 105x105), so ``distortion_translate_px`` sets it.

How pairs are drawn (``pair_sampling``): "independent" is the paper's, each pair its own two images; "all_in_batch"
takes two images of each of ``step_classes`` classes and scores every pair among them, with the same-class and the
different-class pairs weighted equally, so the loss is still the balanced verification loss but one pass of the twin
over 64 images gives 2,016 pairs instead of 32. On the built-in glyphs this learns much faster for the same CPU time
(5-way 1-shot on 300 test episodes after 60 CPU-seconds on 1 thread, with distortions and Adam 1e-3: 82.5% against
67.4% for independent pairs of 128), so the recommended recipe uses it.

One-shot classification (Section 4.3): a query's class is that of the support image with the highest P(same).
``predict`` returns, per class, the probability that it is the query's class given that exactly one class matches and
the verifications are independent: proportional to p/(1 - p) of the class's most similar support, i.e. a softmax over
those verification logits. Its argmax is the most similar support's class.

The twin: the paper's network for 105x105 Omniglot images (four convolutions of 64-128-128-256 filters of 10x10 to
4x4, then a 4096-unit sigmoid layer; about 38M weights) is far too big for a few CPU minutes, so each twin is the
kind's Conv-4 sized to the dataset's images (28x28 here), optionally followed by a sigmoid fully-connected layer as
the paper's (``twin_features``). The optimizer is Adam at training.lr instead of the paper's per-layer SGD with
momentum and L2 penalties found by Bayesian optimization.

Paper numbers: Koch et al. (2015), Table 2: 92.0% on Lake's 20-way within-alphabet one-shot task (Omniglot evaluation
alphabets, 400 trials). Vinyals et al. (2016, "Matching Networks for One Shot Learning"), Table 1, list a convolutional
Siamese net on Omniglot at 96.7% (5-way 1-shot), 98.4% (5-way 5-shot), 88.0% (20-way 1-shot) and 96.5% (20-way
5-shot); 97.3 / 98.4 / 88.1 / 97.0 with fine-tuning.

Every evaluation also reports ``verification_accuracy``: P(same) > 0.5 on held-out pairs from the evaluated episodes
(each query with a random support of its class and one of another class), the task the network was trained on.
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
from workbench.core.algorithms.base import Algorithm, Family
from workbench.core.errors import DatasetError
from workbench.core.hparams import hparam
from workbench.core.inspection import InspectionSpec, image_thumbnails as thumbnails
from workbench.core.recipes import Recipe
from workbench.core.stats import mean_ci95

PAPER = "Koch et al. 2015"
# The paper's distortion ranges (Section 3.2), which do not depend on the image size.
ROTATION_DEGREES = 10.0
SHEAR = 0.3  # shear factor (the matrix entry); torchvision takes its angle, atan(0.3) = 16.7 degrees
SCALE = (0.8, 1.2)
PROBE_ROWS, PROBE_COLUMNS = 10, 20


@dataclass
class SiameseHParams:
    hidden: int = hparam(64, "Filters per Conv-4 block of each twin (the paper's 105x105 network, 64-128-128-256 "
                         "filters and 4096 sigmoid units, is too big for a CPU budget).", low=8, high=256)
    twin_features: int = hparam(0, f"Units of a sigmoid fully-connected layer on top of each twin's Conv-4, as in "
                                f"{PAPER} (4096 there); the L1 distance compares its outputs. 0: no such layer, the "
                                "Conv-4 features are compared directly.", low=0, high=8192)
    pair_sampling: str = hparam(
        "independent", f"How a training step draws its pairs. independent: pairs_per_step pairs of their own images, "
        f"half same and half different ({PAPER}). all_in_batch: step_classes classes with two images each, and every "
        "pair among those images scored, the same-class and the different-class pairs weighted equally (the same "
        "balanced loss from one pass over far fewer images: several times faster to learn on a CPU).",
        choices=("independent", "all_in_batch"))
    pairs_per_step: int = hparam(128, f"Image pairs per training step when pair_sampling is independent, half of the "
                                 f"same class and half of different classes (minibatches of 128 in {PAPER}).",
                                 low=2, high=4096)
    step_classes: int = hparam(32, "Classes per training step when pair_sampling is all_in_batch, two images each.",
                               low=2, high=2048)
    affine_distortions: bool = hparam(True, f"Distort each training image by a random affine transform ({PAPER}: "
                                      "rotation ±10°, shear ±0.3, scale 0.8-1.2, translation ±2 px).")
    distortion_probability: float = hparam(0.5, f"Probability that each component of a distortion (rotation, "
                                           f"shear, scale, translation) is applied (0.5 in {PAPER}).",
                                           low=0.0, high=1.0)
    distortion_translate_px: float = hparam(2.0, f"Largest translation in pixels of the model's images (±2 in "
                                            f"{PAPER}, on 105x105 images).", low=0.0, high=32.0)


# --- the network -------------------------------------------------------------------------------------------------
class SiameseNet(nn.Module):
    """Twin encoder (shared by both images) and the learned weighted L1 distance with a sigmoid."""

    def __init__(self, encoder: nn.Module, twin_features: int):
        super().__init__()
        self.encoder = encoder
        width = encoder.out_dim
        self.top = nn.Sequential(nn.Linear(width, twin_features), nn.Sigmoid()) if twin_features else nn.Identity()
        self.distance = nn.Linear(twin_features or width, 1)  # the alpha_j and a bias

    def twin(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(self.encoder(x))

    def logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit of P(same) for feature pairs a[i], b[i] (any matching leading shape)."""
        return self.distance((a - b).abs()).squeeze(-1)

    def pairwise_logits(self, queries: torch.Tensor, supports: torch.Tensor) -> torch.Tensor:
        """[Q, S] logits of P(same) for every query-support pair of features."""
        return self.logits(queries[:, None], supports[None])

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Logits of P(same) for image pairs; both halves in one batch (the same batch-norm statistics)."""
        features = self.twin(torch.cat([x1, x2]))
        return self.logits(features[: len(x1)], features[len(x1):])


# --- pairs -------------------------------------------------------------------------------------------------------
class PairSampler:
    """Same/different pairs of images: independent pairs (the first half of a draw from one class each, the second
    half from two different classes), or two images of each of several classes (for scoring every pair among them).

    ``labels`` are the class of each image; ``fetch(rows)`` returns the (normalized) images of those rows."""

    def __init__(self, labels: torch.Tensor, fetch: Callable[[torch.Tensor], torch.Tensor],
                 generator: torch.Generator, where: str = "the training data"):
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        self.fetch = fetch
        self.generator = generator
        classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        self.order = torch.argsort(inverse, stable=True)  # rows grouped by class
        self.starts = torch.cumsum(counts, 0) - counts
        self.classes, self.counts = classes, counts
        self.repeated = torch.nonzero(counts >= 2).flatten()  # classes that can give a same-class pair
        if len(classes) < 2 or len(self.repeated) == 0:
            raise DatasetError(f"{where} needs at least two classes, one of them with two images, to draw "
                               f"same/different pairs (it has {len(classes)} classes, {len(self.repeated)} with two "
                               "or more images)")

    def _rows(self, classes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.order[self.starts[classes] + offsets]

    def _uniform(self, high: torch.Tensor) -> torch.Tensor:
        """One integer in [0, high) per entry."""
        return torch.minimum((torch.rand(high.shape, generator=self.generator) * high).long(), high - 1)

    def indices(self, pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rows of the first and second images and the targets (1.0 same, 0.0 different)."""
        same, different = pairs // 2, pairs - pairs // 2
        chosen = self.repeated[torch.randint(len(self.repeated), (same,), generator=self.generator)]
        count = self.counts[chosen]
        first = self._uniform(count)
        second = (first + 1 + self._uniform(count - 1)) % count  # another image of the class
        classes = len(self.counts)
        a = torch.randint(classes, (different,), generator=self.generator)
        b = (a + 1 + torch.randint(classes - 1, (different,), generator=self.generator)) % classes  # another class
        rows1 = torch.cat([self._rows(chosen, first), self._rows(a, self._uniform(self.counts[a]))])
        rows2 = torch.cat([self._rows(chosen, second), self._rows(b, self._uniform(self.counts[b]))])
        return rows1, rows2, torch.cat([torch.ones(same), torch.zeros(different)])

    def sample(self, pairs: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows1, rows2, same = self.indices(pairs)
        return self.fetch(rows1), self.fetch(rows2), same

    def class_pairs(self, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of two different images from each of ``classes`` classes (distinct while there are enough; the first
        images, then the second ones) and their class labels."""
        available = len(self.repeated)
        if classes <= available:
            chosen = self.repeated[torch.randperm(available, generator=self.generator)[:classes]]
        else:
            chosen = self.repeated[torch.randint(available, (classes,), generator=self.generator)]
        count = self.counts[chosen]
        first = self._uniform(count)
        second = (first + 1 + self._uniform(count - 1)) % count
        labels = self.classes[chosen]
        return torch.cat([self._rows(chosen, first), self._rows(chosen, second)]), torch.cat([labels, labels])


def balanced_loss(logits: torch.Tensor, same: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Binary cross-entropy with the same-class and the different-class pairs weighted equally, and the balanced
    accuracy (P(same) > 0.5)."""
    losses = F.binary_cross_entropy_with_logits(logits, same, reduction="none")
    correct = ((logits.detach() > 0).float() == same).float()
    halves = [mask for mask in (same == 1, same == 0) if bool(mask.any())]
    loss = sum(losses[mask].mean() for mask in halves) / len(halves)
    return loss, float(sum(correct[mask].mean() for mask in halves) / len(halves))


def held_out_pairs(query_y: torch.Tensor, support_y: torch.Tensor,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, a random support of its own class and one of another class: [Q] indexes into the supports."""
    matches = (query_y[:, None] == support_y[None]).float()
    noise = torch.rand(matches.shape, generator=generator)
    return (noise + 2 * matches).argmax(1), (noise + 2 * (1 - matches)).argmax(1)


# --- affine distortions ------------------------------------------------------------------------------------------
def background(foreground: str, mean, std) -> list[float]:
    """The normalized value of an empty pixel, per channel, which distortions fill in: white behind dark strokes,
    black behind light ones, the mean (0) for photos."""
    if foreground == "natural":
        return [0.0] * len(mean)
    blank = 1.0 if foreground == "dark" else 0.0
    return [(blank - m) / s for m, s in zip(mean, std)]


def distort(images: torch.Tensor, generator: torch.Generator, probability: float, translate_px: float,
            fill: list[float]) -> torch.Tensor:
    """Each image [N, C, H, W] through its own random affine transform (the paper's ranges; each component with
    ``probability``), bilinear, empty pixels filled with ``fill``. The images are shifted so that ``fill`` is 0
    first: torchvision blends a non-zero fill into bilinear edges too darkly, zero padding blends exactly."""
    from torchvision.transforms.v2 import functional as TF  # here: importing it costs seconds at app start

    count = len(images)
    shift_to_zero = torch.tensor(fill, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    images = images - shift_to_zero
    draws = torch.rand(count, 6, generator=generator)
    use = torch.rand(count, 4, generator=generator) < probability  # rotation, shear, scale, translation
    angle = torch.where(use[:, 0], (2 * draws[:, 0] - 1) * ROTATION_DEGREES, 0.0)
    shear = torch.where(use[:, 1:2], torch.rad2deg(torch.atan((2 * draws[:, 1:3] - 1) * SHEAR)), 0.0)
    scale = torch.where(use[:, 2], SCALE[0] + draws[:, 3] * (SCALE[1] - SCALE[0]), 1.0)
    shift = torch.where(use[:, 3:4], (2 * draws[:, 4:6] - 1) * translate_px, 0.0)
    out = [TF.affine(image, angle=float(angle[i]), translate=shift[i].tolist(), scale=float(scale[i]),
                     shear=shear[i].tolist(), interpolation=TF.InterpolationMode.BILINEAR)
           for i, image in enumerate(images)]
    return (torch.stack(out) if out else images) + shift_to_zero


# --- declarations --------------------------------------------------------------------------------------------------
PAIR_SIMILARITY = InspectionSpec(
    "pair_similarity", "Pair similarity", "heatmap",
    f"P(same class) of the twin network ({PAPER}) for probe queries (rows) against the support images (columns) of "
    "a fixed training episode. A query is classified as the class of its most similar support; a good network is "
    "bright only where the row's and the column's classes agree.", x_label="support image (its class)",
    y_label="query image (its class)")

PAPER_NUMBERS = ("Koch et al. (2015, Table 2) report 92.0% on Lake's 20-way within-alphabet one-shot task; Vinyals "
                 "et al. (2016, Table 1) list a convolutional Siamese net at 96.7% (5-way 1-shot) and 88.0% (20-way "
                 "1-shot) on Omniglot, 97.3% and 88.1% with fine-tuning.")
DEFAULT = Recipe(
    "default", "Tuned here for 3 CPU-minutes: every pair among two images of each of 32 training classes per step "
    "(balanced same/different loss), the paper's affine distortions, Conv-4 twins, Adam 1e-2 with a cosine schedule. "
    "5-way 1-shot after 180 CPU-seconds on 1 thread (300 test episodes): glyphs 93.7% ± 0.7 (2,450 steps), "
    "Omniglot (Lake split) 95.1% ± 0.6 (3,300 steps). "
    + PAPER_NUMBERS, recommended=True,
    hparams={"pair_sampling": "all_in_batch", "step_classes": 32, "affine_distortions": True},
    training={"lr": 1e-2, "lr_schedule": "cosine", "val_interval": 250, "val_episodes": 100})


@register
class Siamese(Algorithm):
    name = "siamese"
    title = "Siamese networks"
    family = Family.METRIC
    summary = "Learn to verify same/different pairs; classify by the most similar support image."
    description = ("Siamese networks (Koch, Zemel & Salakhutdinov, 2015) learn verification: two images pass through "
                   "the same twin network, a learned weighted L1 distance between their features and a sigmoid give "
                   "the probability that they show the same class, trained with cross-entropy on same and different "
                   "pairs drawn from all training classes, each image randomly distorted by small affine transforms. "
                   "Training is not episodic: one-shot classification reuses the verifier, assigning a query the "
                   "class of its most similar support image. The training accuracy shown is on the verification "
                   "pairs; each evaluation also reports verification accuracy on held-out pairs. The Mechanism view "
                   "shows P(same) of probe queries against support images.")
    HParams = SiameseHParams
    kinds = ("classification",)
    recipes = (DEFAULT,)
    capabilities = frozenset({"embeddings", "training_data", "evaluation_extras", "inspection"})
    inspections = (PAIR_SIMILARITY,)

    def __init__(self, hparams, model_spec, device="cpu"):
        super().__init__(hparams, model_spec, device)
        encoder = self.kind.build_encoder(model_spec, hparams.hidden)
        self.net = SiameseNet(encoder, hparams.twin_features).to(self.device)
        self.generator = torch.Generator().manual_seed(0)  # pairs and distortions
        self._pairs: PairSampler | None = None
        self._fill: list[float] | None = None  # background of distorted images (from the data's preprocessing)
        self._probe: Any = None  # the first training episode (cpu), for the inspection

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.net.encoder, "twin_top": self.net.top, "distance": self.net.distance}

    def attach_training_data(self, dataset, config) -> None:
        """Pairs come from every meta-train class (not only an episode's), with their own seeded generator."""
        split, spec = dataset.split("train"), dataset.spec
        self.generator = torch.Generator().manual_seed(config.training.seed)
        self._fill = background(spec.foreground, spec.mean, spec.std)
        self._pairs = PairSampler(split.labels, lambda rows: spec.normalize(split.images[rows]), self.generator,
                                  f"the meta-train split of {dataset.name}")

    # --- training ------------------------------------------------------------------------------------------------
    def _sampler(self, episodes) -> PairSampler:
        if self._pairs is not None:
            return self._pairs
        # Without attached data (a caller outside the trainer): the episodes' images with their class ids.
        images = torch.cat([torch.cat([e.support_x, e.query_x]).cpu() for e in episodes])
        labels = torch.cat([torch.as_tensor(e.class_ids)[torch.cat([e.support_y, e.query_y]).cpu()]
                            for e in episodes])
        return PairSampler(labels, lambda rows: images[rows], self.generator, "the training episodes")

    def _pair_logits(self, sampler: PairSampler) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of P(same) of the step's pairs and their targets (1.0 same, 0.0 different)."""
        hp = self.hparams
        if hp.pair_sampling == "independent":
            x1, x2, same = sampler.sample(hp.pairs_per_step)
            x1, x2 = self._distorted(x1.to(self.device)), self._distorted(x2.to(self.device))
            return self.net(x1, x2), same.to(self.device)
        rows, labels = sampler.class_pairs(hp.step_classes)
        features = self.net.twin(self._distorted(sampler.fetch(rows).to(self.device)))
        first, second = torch.triu_indices(len(rows), len(rows), 1)  # every pair once
        same = (labels[first] == labels[second]).float().to(self.device)
        first, second = first.to(self.device), second.to(self.device)
        return self.net.logits(features[first], features[second]), same

    def _distorted(self, images: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        if not hp.affine_distortions:
            return images
        # Without the data's preprocessing: the brightest value per channel (glyph-like data: light background).
        fill = self._fill if self._fill is not None else images.amax(dim=(0, 2, 3)).tolist()
        return distort(images, self.generator, hp.distortion_probability, hp.distortion_translate_px, fill)

    def meta_train_step(self, episodes) -> dict[str, float]:
        if self._probe is None and episodes:
            self._probe = episodes[0].to("cpu")
        sampler = self._sampler(episodes)
        self.net.train()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        loss, accuracy = balanced_loss(*self._pair_logits(sampler))
        loss.backward()
        optimizer.step()
        self.step_schedulers()
        return {"loss": float(loss.detach()), "accuracy": accuracy}

    # --- one-shot classification ---------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return self.net.twin(x.to(self.device))

    def adapt(self, support_x, support_y, ways):
        return {"support": self.features(support_x), "labels": support_y.to(self.device), "ways": ways}

    @torch.no_grad()
    def class_logits(self, adapted, query_x) -> torch.Tensor:
        """[Q, ways] the verification logit of each class's most similar support."""
        logits = self.net.pairwise_logits(self.features(query_x), adapted["support"])
        ways = adapted["ways"]
        best = logits.new_full((len(logits), ways), -math.inf)
        index = adapted["labels"][None].expand_as(logits)
        return best.scatter_reduce(1, index, logits, reduce="amax")

    def predict(self, adapted, query_x):
        """P(class c) proportional to p/(1 - p) of its most similar support: a softmax over the logits."""
        return self.class_logits(adapted, query_x).softmax(dim=-1)

    def embed(self, x, adapted=None):
        """The twin's features, which the learned weighted L1 distance compares."""
        return self.features(x)

    # --- reports -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluation_extras(self, tasks) -> dict[str, Any]:
        """Verification accuracy (P(same) > 0.5) on held-out pairs of the evaluated episodes: each query with a
        random support of its class and one of another class (seeded by the episode's index)."""
        per_episode, same_correct, different_correct = [], [], []
        for index in range(len(tasks)):
            episode = tasks[index].to(self.device)
            support, query = self.features(episode.support_x), self.features(episode.query_x)
            generator = torch.Generator().manual_seed(index)
            same, other = held_out_pairs(episode.query_y.cpu(), episode.support_y.cpu(), generator)
            same_ok = (self.net.logits(query, support[same.to(self.device)]) > 0).float()
            other_ok = (self.net.logits(query, support[other.to(self.device)]) <= 0).float()
            same_correct.append(float(same_ok.mean()))
            different_correct.append(float(other_ok.mean()))
            per_episode.append(float(torch.cat([same_ok, other_ok]).mean()))
        accuracy, ci95 = mean_ci95(per_episode)
        return {"verification_accuracy": {"accuracy": accuracy, "ci95": ci95, "episodes": len(per_episode),
                                          "same_pairs": float(np.mean(same_correct)),
                                          "different_pairs": float(np.mean(different_correct))}}

    def inspect(self) -> dict[str, dict[str, Any]]:
        """P(same) of up to 10 probe queries (two per class first) against up to 20 supports of the probe episode."""
        if self._probe is None:
            return {}
        episode = self._probe
        rows = probe_rows(episode.query_y, PROBE_ROWS)
        columns = torch.arange(min(PROBE_COLUMNS, len(episode.support_y)))
        query_x, support_x = episode.query_x[rows], episode.support_x[columns]
        with torch.no_grad():
            values = torch.sigmoid(self.net.pairwise_logits(self.features(query_x), self.features(support_x)))
        return {"pair_similarity": {  # episode-local class numbers: dataset class names are too long for ticks
            "values": values.cpu().numpy(),
            "rows": np.array([f"q{i + 1}: class {int(episode.query_y[r]) + 1}" for i, r in enumerate(rows)]),
            "columns": np.array([f"class {int(episode.support_y[c]) + 1}" for c in columns]),
            "row_images": thumbnails(query_x), "column_images": thumbnails(support_x)}}


def probe_rows(query_y: torch.Tensor, count: int) -> torch.Tensor:
    """Query indexes taking classes in turn (the first query of each class, then the second, ...), at most count."""
    rank = torch.zeros_like(query_y)
    for label in query_y.unique():
        members = torch.nonzero(query_y == label).flatten()
        rank[members] = torch.arange(len(members))
    order = sorted(range(len(query_y)), key=lambda i: (int(rank[i]), int(query_y[i])))
    return torch.tensor(order[:count], dtype=torch.long)




__all__ = ["Siamese", "SiameseNet", "PairSampler", "balanced_loss", "held_out_pairs", "distort", "background",
           "probe_rows", "thumbnails"]

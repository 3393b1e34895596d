"""Optimizee problems for learning to optimize (Andrychowicz et al. 2016, "Learning to learn by gradient descent by
gradient descent", section 3): each problem is a loss f(θ) over a flat parameter vector θ with a seeded start θ_0.

- quadratic: f(θ) = ‖Wθ − y‖² with W [d, d], y [d] and θ_0 [d] drawn i.i.d. from N(0, 1) (the paper's 10-d
  quadratics, section 3.1); deterministic.
- mlp: a one-hidden-layer MLP (20 sigmoid units, the paper's MNIST network of section 3.2) classifying the images
  of ``ways`` classes drawn from one split of an image dataset (glyphs by default), cross-entropy on a minibatch
  of ``batch_size`` images per step.
- convnet: a small convnet (two stride-2 3x3 convolutions of 8 filters with ReLU, then a linear layer) on the same
  kind of problem, e.g. Omniglot characters.

Problems are seeded by (seed, split): training problems draw classes from the dataset's train split and test
problems from its test split, so the learned optimizer is tested on unseen classes. The minibatch of step t is a
function of (problem seed, t), so every optimizer racing on one problem sees the same batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from workbench.core.errors import ConfigError

OPTIMIZEES = ("quadratic", "mlp", "convnet")
# One seed stream per split, so val and test problems drawn with the same seed differ.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2, "probe": 3}
MLP_HIDDEN = 20  # Andrychowicz et al. (2016), section 3.2
CONV_FILTERS = 8


def stream_seed(seed: int, split: str) -> int:
    """A 62-bit seed for (seed, split), well mixed, so nearby seeds give unrelated problems."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r} for optimizee problems; use one of {', '.join(SPLIT_STREAMS)}")
    state = np.random.SeedSequence([int(seed), SPLIT_STREAMS[split]]).generate_state(2, np.uint32)
    return (int(state[0]) << 30) ^ int(state[1])


@dataclass(frozen=True)
class OptimizeeSettings:
    """What a problem is: the kind's options that shape it."""

    optimizee: str = "quadratic"
    dimension: int = 10  # quadratic: size of θ
    ways: int = 10  # mlp/convnet: classes per problem
    batch_size: int = 128  # mlp/convnet: images per step
    horizon: int = 100  # steps a training problem is optimized for

    def check(self) -> None:
        if self.optimizee not in OPTIMIZEES:
            raise ConfigError("task.optimizee", f"unknown optimizee {self.optimizee!r}; use one of "
                              f"{', '.join(OPTIMIZEES)}")


class QuadraticProblem:
    """f(θ) = ‖Wθ − y‖² (sum of squares, as in the paper)."""

    def __init__(self, W: torch.Tensor, y: torch.Tensor, theta0: torch.Tensor, seed: int, horizon: int):
        self.W, self.y, self.theta0, self.seed, self.horizon = W, y, theta0, seed, horizon
        self.title = f"quadratic, {len(y)}-d"

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        residual = self.W @ theta - self.y
        return (residual * residual).sum()

    def to(self, device) -> "QuadraticProblem":
        if self.W.device == torch.device(device):
            return self
        return QuadraticProblem(self.W.to(device), self.y.to(device), self.theta0.to(device), self.seed, self.horizon)


def mlp_layout(in_features: int, ways: int) -> list[tuple[str, tuple[int, ...]]]:
    return [("w1", (MLP_HIDDEN, in_features)), ("b1", (MLP_HIDDEN,)), ("w2", (ways, MLP_HIDDEN)), ("b2", (ways,))]


def conv_layout(channels: int, size: int, ways: int) -> list[tuple[str, tuple[int, ...]]]:
    side = math.ceil(math.ceil(size / 2) / 2)  # two stride-2 convolutions with padding 1
    return [("c1", (CONV_FILTERS, channels, 3, 3)), ("cb1", (CONV_FILTERS,)),
            ("c2", (CONV_FILTERS, CONV_FILTERS, 3, 3)), ("cb2", (CONV_FILTERS,)),
            ("w", (ways, CONV_FILTERS * side * side)), ("b", (ways,))]


def unflatten(theta: torch.Tensor, layout) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for name, shape in layout:
        count = math.prod(shape)
        out[name] = theta[start:start + count].view(shape)
        start += count
    return out


def mlp_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    hidden = torch.sigmoid(F.linear(x.flatten(1), p["w1"], p["b1"]))
    return F.linear(hidden, p["w2"], p["b2"])


def conv_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    x = F.relu(F.conv2d(x, p["c1"], p["cb1"], stride=2, padding=1))
    x = F.relu(F.conv2d(x, p["c2"], p["cb2"], stride=2, padding=1))
    return F.linear(x.flatten(1), p["w"], p["b"])


def initial_weights(layout, generator: torch.Generator) -> torch.Tensor:
    """Weights uniform in ±1/sqrt(fan-in), biases zero (each problem its own random start, as in the paper)."""
    parts = []
    for name, shape in layout:
        if len(shape) == 1:
            parts.append(torch.zeros(shape))
        else:
            bound = 1.0 / math.sqrt(math.prod(shape[1:]))
            parts.append(torch.rand(shape, generator=generator).mul_(2 * bound).sub_(bound).reshape(-1))
    return torch.cat(parts)


class ImageProblem:
    """A small network classifying ``ways`` classes of images; cross-entropy on one seeded minibatch per step."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, network: str, theta0: torch.Tensor, seed: int,
                 horizon: int, batch_size: int, title: str):
        self.images, self.labels, self.network, self.theta0 = images, labels, network, theta0
        self.seed, self.horizon, self.batch_size, self.title = seed, horizon, batch_size, title
        channels, size = images.shape[1], images.shape[-1]
        ways = int(labels.max()) + 1
        self.layout = mlp_layout(channels * size * size, ways) if network == "mlp" else conv_layout(channels, size,
                                                                                                     ways)
        self.forward = mlp_forward if network == "mlp" else conv_forward

    def batch_index(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + step) % (2**62))
        return torch.randint(len(self.labels), (min(self.batch_size, len(self.labels)),), generator=generator)

    def loss(self, theta: torch.Tensor, step: int) -> torch.Tensor:
        index = self.batch_index(step).to(self.images.device)
        logits = self.forward(unflatten(theta, self.layout), self.images[index])
        return F.cross_entropy(logits, self.labels[index])

    def to(self, device) -> "ImageProblem":
        if self.images.device == torch.device(device):
            return self
        return ImageProblem(self.images.to(device), self.labels.to(device), self.network, self.theta0.to(device),
                            self.seed, self.horizon, self.batch_size, self.title)


class ProblemSource:
    """Makes the seeded problems of one optimizee; image optimizees take their images from ``dataset`` (a loaded
    image dataset with train/val/test class splits)."""

    def __init__(self, settings: OptimizeeSettings, dataset: Any = None):
        settings.check()
        if settings.optimizee != "quadratic" and not hasattr(dataset, "splits"):
            raise ConfigError("dataset.name", f"the {settings.optimizee} optimizee classifies images; choose an "
                              "image dataset such as glyphs or omniglot")
        self.settings, self.dataset = settings, dataset

    @property
    def key(self) -> tuple:
        """Identifies the problems it makes (for caches of tuned learning rates)."""
        name = getattr(self.dataset, "name", "") if self.settings.optimizee != "quadratic" else ""
        return (self.settings, name, id(self.dataset) if name else 0)

    def make(self, split: str, seed: int):
        generator = torch.Generator().manual_seed(seed)
        settings = self.settings
        if settings.optimizee == "quadratic":
            d = settings.dimension
            W, y, theta0 = (torch.randn(shape, generator=generator) for shape in ((d, d), (d,), (d,)))
            return QuadraticProblem(W, y, theta0, seed, settings.horizon)
        return self._image_problem(split, seed, generator)

    def _image_problem(self, split: str, seed: int, generator: torch.Generator) -> ImageProblem:
        settings = self.settings
        data_split = self.dataset.split("val" if split == "probe" else split)
        if data_split.num_classes < settings.ways:
            raise ConfigError("task.classes", f"{settings.ways} classes per problem, but the {split} split of "
                              f"{self.dataset.name} has {data_split.num_classes}")
        chosen = torch.randperm(data_split.num_classes, generator=generator)[: settings.ways].tolist()
        by_class = data_split.indices_by_class()
        rows = torch.cat([by_class[c] for c in chosen])
        labels = torch.cat([torch.full((by_class[c].numel(),), i, dtype=torch.long) for i, c in enumerate(chosen)])
        images = self.dataset.spec.normalize(data_split.images[rows])
        channels, size = images.shape[1], images.shape[-1]
        layout = (mlp_layout(channels * size * size, settings.ways) if settings.optimizee == "mlp"
                  else conv_layout(channels, size, settings.ways))
        title = f"{settings.optimizee} on {settings.ways} {self.dataset.name} classes ({split} split)"
        return ImageProblem(images, labels, settings.optimizee, initial_weights(layout, generator), seed,
                            settings.horizon, settings.batch_size, title)


class ProblemSampler:
    """Training problems (``.sample()``), each from its own seed drawn from a seeded generator (checkpointed)."""

    def __init__(self, source: ProblemSource, seed: int):
        self.source = source
        self.generator = torch.Generator().manual_seed(stream_seed(seed, "train"))

    def sample(self):
        seed = int(torch.randint(2**62, (1,), generator=self.generator))
        return self.source.make("train", seed)


class FixedProblems:
    """Problems fixed by (split, seed): every optimizer evaluated with them sees identical problems."""

    def __init__(self, source: ProblemSource, split: str, count: int, seed: int):
        self.source, self.split_name, self.seed = source, split, int(seed)
        generator = torch.Generator().manual_seed(stream_seed(seed, split))
        seeds = torch.randint(2**62, (count,), generator=generator).tolist()
        self._problems = [source.make(split, s) for s in seeds]

    def training_problems(self, count: int, seed: int = 0) -> "FixedProblems":
        """Fixed training problems of the same optimizee (where hand-made optimizers are tuned)."""
        return FixedProblems(self.source, "train", count, seed)

    def __len__(self) -> int:
        return len(self._problems)

    def __getitem__(self, i: int):
        return self._problems[i]

    def __iter__(self):
        return iter(self._problems)

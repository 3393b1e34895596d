"""The sine-wave regression toy of Finn, Abbeel & Levine (2017, section 5.1): each task is
``y = amplitude * sin(x - phase)`` with the amplitude uniform in [0.1, 5], the phase uniform in [0, pi] and x
uniform in [-5, 5]. Generated on the fly: there are no files, no classes and no class splits; tasks of different
splits differ by their seed streams (:data:`SPLIT_STREAMS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from workbench.core.data.base import PreprocessSpec, ProgressCallback, no_progress
from workbench.core.data.episodes import LabeledBatch

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)
# One seed stream per split, so val and test tasks drawn with the same seed differ.
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2, "probe": 3}


def stream_seed(seed: int, split: str) -> int:
    """A 63-bit seed for (seed, split), well mixed, so nearby seeds give unrelated tasks."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"unknown split {split!r} for sine tasks; use one of {', '.join(SPLIT_STREAMS)}")
    state = np.random.SeedSequence([int(seed), SPLIT_STREAMS[split]]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@dataclass
class SineTask:
    """One regression task: K support and Q query points (x and y are float [n, 1])."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    amplitude: float
    phase: float

    ways = 1  # one regression output (the interface algorithms share with classification episodes)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The task's true function at ``x``."""
        return sine(self.amplitude, self.phase, x)

    def to(self, device) -> "SineTask":
        if self.support_x.device == torch.device(device):
            return self
        return SineTask(self.support_x.to(device), self.support_y.to(device), self.query_x.to(device),
                        self.query_y.to(device), self.amplitude, self.phase)


def sine(amplitude, phase, x: torch.Tensor) -> torch.Tensor:
    return amplitude * torch.sin(x - phase)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float) -> torch.Tensor:
    return torch.rand(shape, generator=generator).mul_(high - low).add_(low)


class SineTasks:
    """The "dataset" of the sine toy: a task generator (what :func:`load` returns)."""

    name = "sine"
    description = "Sine waves y = A sin(x - phase), A in [0.1, 5], phase in [0, pi], x in [-5, 5]."
    # Checkpoints record how inputs are preprocessed; the inputs here are raw x values.
    spec = PreprocessSpec(image_size=0, channels=1, mean=(0.0,), std=(1.0,), foreground="natural")
    x_range = X_RANGE

    def sample(self, generator: torch.Generator, shots: int, queries: int) -> SineTask:
        return self.sample_many(generator, 1, shots, queries)[0]

    def sample_many(self, generator: torch.Generator, count: int, shots: int, queries: int) -> list[SineTask]:
        """``count`` tasks drawn together: a few tensor operations for all of them (the trainer draws 25 per
        meta-step of a network so small that drawing them one by one cost a tenth of a step)."""
        units = torch.rand(count, 2, generator=generator)
        amplitude = units[:, 0].mul(AMPLITUDE[1] - AMPLITUDE[0]).add_(AMPLITUDE[0])
        phase = units[:, 1].mul(PHASE[1] - PHASE[0]).add_(PHASE[0])
        x = _uniform(generator, (count, shots + queries, 1), *X_RANGE)
        y = torch.sub(x, phase.view(-1, 1, 1)).sin_().mul_(amplitude.view(-1, 1, 1))
        parts = (x[:, :shots].unbind(), y[:, :shots].unbind(), x[:, shots:].unbind(), y[:, shots:].unbind())
        return [SineTask(*views, a, p) for *views, a, p in zip(*parts, amplitude.tolist(), phase.tolist())]

    def batch(self, generator: torch.Generator, size: int) -> LabeledBatch:
        """Points pooled over tasks: each point from its own random sine (for pre-training baselines)."""
        amplitude = _uniform(generator, (size, 1), *AMPLITUDE)
        phase = _uniform(generator, (size, 1), *PHASE)
        x = _uniform(generator, (size, 1), *X_RANGE)
        return LabeledBatch(x, sine(amplitude, phase, x))

    def summary(self) -> dict:
        return {"name": self.name, "description": self.description, "amplitude": list(AMPLITUDE),
                "phase": list(PHASE), "x_range": list(X_RANGE)}


class SineSampler:
    """Training tasks (``.sample()``) from a seeded generator, which checkpoints save and restore.

    Tasks are drawn ``block`` at a time. With a block of one meta-batch, no drawn task is left over between
    meta-steps, where checkpoints save the generator, so a resumed run draws the same tasks."""

    def __init__(self, dataset: SineTasks, shots: int, queries: int, seed: int, block: int = 1):
        self.dataset, self.shots, self.queries, self.block = dataset, shots, queries, max(1, block)
        self.generator = torch.Generator().manual_seed(stream_seed(seed, "train"))
        self._drawn: list[SineTask] = []

    def sample(self) -> SineTask:
        if not self._drawn:
            self._drawn = self.dataset.sample_many(self.generator, self.block, self.shots, self.queries)[::-1]
        return self._drawn.pop()


class SineBatchSampler:
    """Pooled points of random tasks (``.sample()`` -> LabeledBatch), for pre-training baselines."""

    def __init__(self, dataset: SineTasks, batch_size: int, seed: int):
        self.dataset, self.batch_size = dataset, batch_size
        self.generator = torch.Generator().manual_seed(stream_seed(seed, "train"))

    def sample(self) -> LabeledBatch:
        return self.dataset.batch(self.generator, self.batch_size)


class FixedSineTasks:
    """Tasks fixed by (split, seed): every algorithm evaluated with them sees identical tasks."""

    def __init__(self, dataset: SineTasks, shots: int, queries: int, count: int, seed: int, split: str = "test"):
        self.dataset, self.shots, self.queries, self.seed, self.split_name = dataset, shots, queries, seed, split
        generator = torch.Generator().manual_seed(stream_seed(seed, split))
        self._tasks = dataset.sample_many(generator, count, shots, queries)

    ways = 1

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, i: int) -> SineTask:
        return self._tasks[i]

    def __iter__(self):
        return iter(self._tasks)


def load(config, progress: ProgressCallback = no_progress) -> SineTasks:
    progress(1, 1, "sine tasks are generated, nothing to load")
    return SineTasks()

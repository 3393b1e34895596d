"""Conv-4: four blocks of 3x3 conv (64 filters), batch norm, ReLU and 2x2 max-pool.

28x28 inputs give a 64-d embedding (28 -> 14 -> 7 -> 3 -> 1); 84x84 inputs give 1600-d (5x5x64).
"""

from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(2),
    )


def conv4_feature_dim(image_size: int, hidden: int = 64) -> int:
    side = image_size
    for _ in range(4):
        side //= 2
    return hidden * max(side, 1) ** 2


class Conv4(nn.Module):
    """The standard few-shot backbone. ``track_running_stats=False`` gives MAML's transductive batch norm."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 track_running_stats: bool = True):
        super().__init__()
        self.encoder = nn.Sequential(
            conv_block(in_channels, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
        )
        self.out_dim = conv4_feature_dim(image_size, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).flatten(1)


class Conv4Classifier(nn.Module):
    """Conv-4 with a linear head: the network MAML-style methods adapt."""

    def __init__(self, ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 track_running_stats: bool = False):
        super().__init__()
        self.features = Conv4(in_channels, hidden, image_size, track_running_stats)
        self.head = nn.Linear(self.features.out_dim, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

"""A small MLP for vector inputs: the 1-40-40-1 ReLU network of the sine-regression toy (Finn et al., 2017).

Laid out like :class:`~workbench.core.models.conv4.Conv4Classifier` (``features`` with ``out_dim``, then a linear
``head``), so functional inner loops address its weights by the same "features.*" / "head.*" names.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.core.precision import backbone_autocast


class MLP(nn.Sequential):
    """``depth`` hidden layers of ``hidden`` ReLU units; ``out_dim`` is the feature size."""

    def __init__(self, in_features: int = 1, hidden: int = 40, depth: int = 2):
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        super().__init__(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with backbone_autocast(x):  # reduced precision inside a precision scope (workbench.core.precision)
            features = super().forward(x)
        return features if features.dtype == x.dtype else features.to(x.dtype)


class MLPRegressor(nn.Module):
    """MLP features with a linear head of ``outputs`` values."""

    def __init__(self, outputs: int = 1, in_features: int = 1, hidden: int = 40, depth: int = 2):
        super().__init__()
        self.features = MLP(in_features, hidden, depth)
        self.head = nn.Linear(self.features.out_dim, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

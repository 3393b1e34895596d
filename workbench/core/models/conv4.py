"""Conv-4: four blocks of 3x3 conv (64 filters), batch norm, ReLU and 2x2 max-pool.

28x28 inputs give a 64-d embedding (28 -> 14 -> 7 -> 3 -> 1); 84x84 inputs give 1600-d (5x5x64).

Speed (bench/throughput.py), without changing the math: on CPU, batches of 16+ images run in channels-last
memory layout, where oneDNN's convolutions and especially PyTorch's max-pool are much faster (NCHW max-pool with
indices costs more than the convolutions on this network); each block pools before its ReLU; and the
convolutions have no bias, which the batch norm after them would cancel anyway (its gradient is zero), so
computing it only costs time: MAML meta-steps are about 10% faster without it. Weights keep their ordinary layout
and names, so ``torch.func.functional_call`` is unaffected; checkpoints saved with conv biases still load (see
:func:`fold_legacy_conv_biases`).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Sequential):
    """3x3 conv, batch norm, ReLU, 2x2 max-pool (children 0-3, in that order).

    Runs the pool before the ReLU: max-pool commutes with ReLU (a monotonic function), values and gradients
    are identical (checked bit for bit), and the ReLU then touches a quarter of the elements, in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, relu, pool = self
        return relu(pool(norm(conv(x))))


def conv_block(in_channels: int, out_channels: int, track_running_stats: bool = True) -> nn.Sequential:
    return ConvBlock(
        # No bias: batch norm subtracts the per-channel mean right after, so a bias could not change the output.
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats),
        # In place is safe in either order: batch norm's backward needs its input, max-pool's its indices.
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def conv4_feature_dim(image_size: int, hidden: int = 64) -> int:
    side = image_size
    for _ in range(4):
        side //= 2
    return hidden * max(side, 1) ** 2


# Below this many images NCHW is as fast, and MAML's second-order pass over its small support batch is ~5%
# faster per task in NCHW (batch-norm's double-backward reductions are slower channels-last).
CHANNELS_LAST_MIN_BATCH = 16


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when that is the fast path (a float32 batch on CPU), else unchanged.

    ``contiguous(memory_format=...)`` is a no-op for one-channel images (both layouts look contiguous), and
    the convolution would then keep NCHW, so those are cloned explicitly.
    """
    if (x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4
            or x.shape[0] < CHANNELS_LAST_MIN_BATCH):
        return x
    try:
        if x.shape[1] == 1:
            return torch.clone(x, memory_format=torch.channels_last)
        return x.contiguous(memory_format=torch.channels_last)
    except RuntimeError:
        # torch.vmap supports no channels-last clone; batched calls keep the default layout.
        return x


def fold_legacy_conv_biases(_module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """Load-state-dict pre-hook: a checkpoint from before the convolutions lost their bias still loads, exactly.

    Under batch statistics a conv bias cancels; under running statistics (evaluation mode) it only shifts the
    running mean, so subtracting it from ``running_mean`` gives the same outputs.
    """
    for block in range(4):
        bias = state_dict.pop(f"{prefix}encoder.{block}.0.bias", None)
        running_mean_key = f"{prefix}encoder.{block}.1.running_mean"
        if bias is not None and running_mean_key in state_dict:
            state_dict[running_mean_key] = state_dict[running_mean_key] - bias


class Conv4(nn.Module):
    """The standard few-shot backbone. ``track_running_stats=False`` gives MAML's transductive batch norm."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 track_running_stats: bool = True):
        super().__init__()
        self.register_load_state_dict_pre_hook(fold_legacy_conv_biases)
        self.encoder = nn.Sequential(
            conv_block(in_channels, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
            conv_block(hidden, hidden, track_running_stats),
        )
        self.out_dim = conv4_feature_dim(image_size, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(to_channels_last(x)).flatten(1)


class Conv4Classifier(nn.Module):
    """Conv-4 with a linear head: the network MAML-style methods adapt."""

    def __init__(self, ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 track_running_stats: bool = False):
        super().__init__()
        self.features = Conv4(in_channels, hidden, image_size, track_running_stats)
        self.head = nn.Linear(self.features.out_dim, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

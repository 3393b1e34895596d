"""Conv-4: four blocks of 3x3 conv (64 filters), batch norm, ReLU and 2x2 max-pool.

28x28 inputs give a 64-d embedding (28 -> 14 -> 7 -> 3 -> 1); 84x84 inputs give 1600-d (5x5x64).

Speed (bench/throughput.py), without changing the math: on CPU, batches of 16+ images run in channels-last
memory layout, where oneDNN's convolutions and especially PyTorch's max-pool are much faster (NCHW max-pool with
indices costs more than the convolutions on this network); each block pools before its ReLU; and the
convolutions have no bias, which the batch norm after them would cancel anyway (its gradient is zero), so
computing it only costs time: MAML meta-steps are about 10% faster without it. Weights keep their ordinary layout
and names, so ``torch.func.functional_call`` is unaffected; checkpoints saved with conv biases still load (see
:func:`fold_legacy_conv_biases`). The first block's batch norm, when it uses batch statistics on CPU, is folded into
its convolution (:func:`conv_with_folded_batch_norm`): the statistics of the first convolution's output follow
exactly from the 9x9 (grey) or 27x27 (colour) covariance of its input patches, so the full-size normalization and
its backward (and, for MAML, its double backward) are never computed.

Mixed precision (:mod:`workbench.core.precision`): inside a ``compute_in(dtype)`` scope the four blocks run under
autocast and the features come back in the input's dtype; the folded batch norm's statistics (the covariance) stay
float32, as do the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.precision import backbone_autocast, full_precision


class ConvBlock(nn.Sequential):
    """3x3 conv, batch norm, ReLU, 2x2 max-pool (children 0-3, in that order).

    Runs the pool before the ReLU: max-pool commutes with ReLU (a monotonic function), values and gradients
    are identical (checked bit for bit), and the ReLU then touches a quarter of the elements, in place. When batch
    norm uses batch statistics and the patches are small (the first block), it is folded into the convolution.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, relu, pool = self
        if can_fold_batch_norm(x, conv, norm):
            features, shift = conv_with_folded_batch_norm(x, conv, norm)
            # A per-channel shift commutes with max-pool, so it is added to the quarter-size pooled map.
            return relu(pool(features) + shift)
        return relu(pool(norm(conv(x))))


# Folding pays while the input patches are small: the covariance costs (patch size)^2 per position. The first
# Conv-4 block has 9 (grey) or 27 (colour) numbers per patch; a MAML task runs 1.11x as fast on 28x28 grey images,
# 1.12x on 32x32 colour and 1.15x on 84x84 colour (bench/folded_batch_norm.py, 1 thread). Later blocks, at 576
# numbers per patch, would cost far more than they save.
FOLD_MAX_PATCH_SIZE = 27


def can_fold_batch_norm(x: torch.Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> bool:
    """Whether ``norm(conv(x))`` may be computed by :func:`conv_with_folded_batch_norm`: batch statistics (training,
    or no running statistics), a plain stride-1 convolution with small patches (the first block), on CPU (where it
    was measured; on a GPU the library's fused batch norm is used as it is)."""
    uses_batch_statistics = norm.training or not norm.track_running_stats
    patch_size = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return (uses_batch_statistics and norm.affine and x.device.type == "cpu" and x.dim() == 4
            and x.shape[1] == conv.in_channels and x.dtype in (torch.float32, torch.float64)
            and patch_size <= FOLD_MAX_PATCH_SIZE
            and conv.groups == 1 and conv.stride == (1, 1) and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple))


def patch_moments(x: torch.Tensor, kernel_size: tuple[int, int],
                  padding: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Mean and covariance of an image batch's zero-padded convolution patches over every output position (in
    the order of a flattened conv weight: channel, row, column), and the number of positions. Each channel is
    centred on its mean first, which leaves the covariance unchanged and keeps float32 sums from cancelling."""
    (kh, kw), (ph, pw) = kernel_size, padding
    centre = x.mean((0, 2, 3), keepdim=True)
    # Padding before subtracting gives the padded zeros the same shift as the pixels.
    padded = F.pad(x, (pw, pw, ph, ph)) - centre
    out_h, out_w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    # Shifted slices stacked row by row: already the [patch, position] matrix the Gram product wants, about
    # 4x faster than F.unfold plus the transposing copy it needs.
    patches = torch.stack([padded[:, c, i:i + out_h, j:j + out_w]
                           for c in range(x.shape[1]) for i in range(kh) for j in range(kw)])
    patches = patches.view(len(patches), -1)
    count = patches.shape[1]
    mean = patches.sum(1) / count
    covariance = patches @ patches.t() / count - torch.outer(mean, mean)
    return mean + centre.view(-1).repeat_interleave(kh * kw), covariance, count


def conv_with_folded_batch_norm(x: torch.Tensor, conv: nn.Conv2d,
                                norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(conv(x))`` with batch statistics, returned as ``(conv(x, w * scale), shift)`` where the second
    is a per-channel [1, C, 1, 1] term to add.

    Each output channel is a linear map ``w_c . u`` of the input patch ``u``, so its batch mean is ``w_c . mean(u)``
    and its (biased) batch variance ``w_c^T cov(u) w_c``; batch norm is then the per-channel affine map
    ``scale * (y - mean) + beta`` with ``scale = gamma / sqrt(var + eps)``, whose scale folds into the weights.
    Gradients, second order included, flow through these small expressions to the weight, gamma and beta as they
    would through batch norm. Running statistics are updated as ``nn.BatchNorm2d`` updates them.
    """
    with full_precision(x):  # under autocast the statistics stay float32; only the convolution is reduced
        patch_mean, patch_covariance, count = patch_moments(x, conv.kernel_size, conv.padding)
        weight = conv.weight.reshape(conv.out_channels, -1)
        mean = weight @ patch_mean
        var = ((weight @ patch_covariance) * weight).sum(1).clamp_min(0)
        scale = norm.weight * torch.rsqrt(var + norm.eps)
        shift = norm.bias - mean * scale
    if norm.training and norm.track_running_stats:
        _update_running_statistics(norm, mean.detach(), var.detach(), count)
    if torch.is_autocast_enabled(x.device.type):
        features, shift = _centred_reduced_conv(x, conv, weight, scale, patch_mean, norm.bias)
    else:
        features = F.conv2d(x, conv.weight * scale.view(-1, 1, 1, 1), None, conv.stride, conv.padding)
    # In the features' dtype, so a float32 shift does not promote the reduced-precision map back to float32.
    return features, shift.view(1, -1, 1, 1).to(features.dtype)


def _centred_reduced_conv(x: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, scale: torch.Tensor,
                          patch_mean: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The folded convolution under autocast, of the image centred on its channel means (padding included), and
    the shift that gives the same function. Uncentred, the map holds each channel's mean plus small deviations,
    and rounding it to bfloat16 blurs the deviations; centred, it is about zero-mean, as batch norm's own output
    is. A ProtoNet step at initialization (Conv-4, 5 episodes) had a bf16 gradient error of 0.143 of the float32
    gradient's norm uncentred, 0.122 centred, 0.114 with batch norm unfolded."""
    (kh, kw), (ph, pw) = conv.kernel_size, conv.padding
    centre = x.mean((0, 2, 3), keepdim=True)
    features = F.conv2d(F.pad(x, (pw, pw, ph, ph)) - centre, conv.weight * scale.view(-1, 1, 1, 1), None,
                        conv.stride, 0)
    with full_precision(x):
        shift = bias - scale * (weight @ (patch_mean - centre.view(-1).repeat_interleave(kh * kw)))
    return features, shift


@torch.no_grad()
def _update_running_statistics(norm: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does in training: a moving (or, with ``momentum=None``, cumulative) average of the
    batch mean and the unbiased batch variance."""
    norm.num_batches_tracked.add_(1)
    momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    norm.running_mean.lerp_(mean, momentum)
    norm.running_var.lerp_(var * (count / max(count - 1, 1)), momentum)


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
# faster per task in NCHW (batch-norm's double-backward reductions are slower channels-last). With the first
# block's batch norm folded, channels-last for the support set is break-even (0.99x, 30 rounds). In bfloat16 it
# pays at any size: a MAML meta-step (5-image support sets) ran 1.09x as fast with the support set channels-last
# too (20 alternating rounds, 1 thread).
CHANNELS_LAST_MIN_BATCH = 16


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last layout when that is the fast path (a float32 batch on CPU: of 16 or more images, or
    of any size when autocast computes in reduced precision), else unchanged.

    ``contiguous(memory_format=...)`` is a no-op for one-channel images (both layouts look contiguous), and
    the convolution would then keep NCHW, so those are cloned explicitly.
    """
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 4:
        return x
    if x.shape[0] < CHANNELS_LAST_MIN_BATCH and not torch.is_autocast_enabled("cpu"):
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
        with backbone_autocast(x):
            features = self.encoder(to_channels_last(x)).flatten(1)
        return features if features.dtype == x.dtype else features.to(x.dtype)


class Conv4Classifier(nn.Module):
    """Conv-4 with a linear head: the network MAML-style methods adapt."""

    def __init__(self, ways: int, in_channels: int = 1, hidden: int = 64, image_size: int = 28,
                 track_running_stats: bool = False):
        super().__init__()
        self.features = Conv4(in_channels, hidden, image_size, track_running_stats)
        self.head = nn.Linear(self.features.out_dim, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

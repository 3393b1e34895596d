"""Conv-4 has no conv biases (batch norm cancels them); checkpoints saved with them still load exactly. The first
block's batch norm, folded into its convolution, computes what batch norm computes, to every order of derivative
that MAML takes, and keeps the same running statistics."""

import pytest
import torch
import torch.nn.functional as F

from workbench.core.models import conv4
from workbench.core.models.conv4 import Conv4, can_fold_batch_norm, conv_block


def legacy_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The old Conv-4 (conv with bias, batch norm with running statistics) in evaluation mode."""
    for block in range(4):
        p = f"encoder.{block}."
        x = F.conv2d(x, state[p + "0.weight"], state[p + "0.bias"], padding=1)
        x = F.batch_norm(x, state[p + "1.running_mean"], state[p + "1.running_var"], state[p + "1.weight"],
                         state[p + "1.bias"], training=False)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1)


def test_convolutions_have_no_bias():
    model = Conv4()
    assert all(block[0].bias is None for block in model.encoder)


def test_a_checkpoint_with_conv_biases_loads_and_computes_the_same_function():
    torch.manual_seed(0)
    legacy = {name: value.clone() for name, value in Conv4().state_dict().items()}
    for block in range(4):
        legacy[f"encoder.{block}.0.bias"] = torch.randn(64)
        legacy[f"encoder.{block}.1.running_mean"] = torch.randn(64)
        legacy[f"encoder.{block}.1.running_var"] = torch.rand(64) + 0.5
    x = torch.randn(20, 1, 28, 28)
    expected = legacy_forward(legacy, x)

    model = Conv4()
    model.load_state_dict(dict(legacy))  # strict: the bias keys are consumed, none left unexpected
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
    # The caller's dict is not what changed: the hook works on the copy load_state_dict hands it.
    assert "encoder.0.0.bias" in legacy


def test_transductive_batch_norm_ignores_legacy_biases():
    torch.manual_seed(1)
    model = Conv4(track_running_stats=False)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    x = torch.randn(8, 1, 28, 28)
    before = model(x)
    state.update({f"encoder.{block}.0.bias": torch.randn(64) for block in range(4)})
    model.load_state_dict(state)
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)


# --- the first block's batch norm folded into its convolution ---------------------------------------------------
def first_block(seed: int, track_running_stats: bool, dtype=torch.float64, momentum=0.1, in_channels=1):
    torch.manual_seed(seed)
    block = conv_block(in_channels, 8, track_running_stats).to(dtype)
    block[1].momentum = momentum
    with torch.no_grad():  # negative scales too: the fold must not rely on gamma > 0
        block[1].weight.copy_(torch.randn(8))
        block[1].bias.copy_(torch.randn(8))
    return block


def stroke_images(n: int, size: int = 12, seed: int = 0, dtype=torch.float64, channels: int = 1) -> torch.Tensor:
    """Mostly blank images with a few dark pixels, normalized like the datasets: large constant regions give
    equal values in a pooling window, and their mean is far from zero. Colour channels get different offsets."""
    gen = torch.Generator().manual_seed(seed)
    ink = (torch.rand(n, channels, size, size, generator=gen) < 0.15).to(dtype)
    offsets = torch.arange(channels, dtype=dtype).view(1, -1, 1, 1)
    return (1.0 - ink - 0.9) / 0.3 + offsets


def outputs_and_derivatives(block, x, probe):
    """The block's output, the gradient of a probe loss, and a Hessian-vector product (what second-order MAML
    differentiates): everything a training step or a meta-gradient can read."""
    params = [block[0].weight, block[1].weight, block[1].bias]
    out = block(x)
    loss = (out * probe).sum()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(7)
    directions = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    hessian_vector = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, directions)), params)
    return [out.detach(), *[g.detach() for g in grads], *hessian_vector]


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("track_running_stats", [False, True])
def test_folded_batch_norm_matches_batch_norm_with_first_and_second_derivatives(track_running_stats, in_channels,
                                                                                monkeypatch):
    x = stroke_images(6, channels=in_channels)
    block = first_block(0, track_running_stats, in_channels=in_channels)
    probe = torch.randn(6, 8, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert can_fold_batch_norm(x, block[0], block[1])

    calls = []
    real_batch_norm = F.batch_norm
    monkeypatch.setattr(F, "batch_norm", lambda *a, **k: calls.append(1) or real_batch_norm(*a, **k))
    folded = outputs_and_derivatives(block, x, probe)
    assert calls == []  # the fold really ran: batch norm was never called
    monkeypatch.setattr(conv4, "FOLD_MAX_PATCH_SIZE", 0)
    reference = outputs_and_derivatives(block, x, probe)
    assert len(calls) == 1
    for name, ours, expected in zip(("output", "d conv", "d gamma", "d beta", "Hv conv", "Hv gamma", "Hv beta"),
                                    folded, reference):
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_folded_batch_norm_in_float32_agrees_with_batch_norm(in_channels, monkeypatch):
    torch.manual_seed(2)
    model = Conv4(in_channels, track_running_stats=False)
    x = stroke_images(20, size=28, seed=3, dtype=torch.float32, channels=in_channels) + 2.0  # tests the centring
    folded = model(x)
    monkeypatch.setattr(conv4, "FOLD_MAX_PATCH_SIZE", 0)
    torch.testing.assert_close(folded, model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_folded_batch_norm_keeps_the_same_running_statistics(momentum, monkeypatch):
    folded_block, reference_block = first_block(4, True, momentum=momentum), first_block(4, True, momentum=momentum)
    for seed in range(3):
        x = stroke_images(5, seed=seed) * (1 + seed)
        folded_block(x)
        with monkeypatch.context() as patch:
            patch.setattr(conv4, "FOLD_MAX_PATCH_SIZE", 0)
            reference_block(x)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(folded_block[1], name), getattr(reference_block[1], name),
                                   rtol=1e-10, atol=1e-12, msg=name)
    # In evaluation those statistics are used as they are, by the ordinary batch norm.
    folded_block.eval()
    assert not can_fold_batch_norm(x, folded_block[0], folded_block[1])


@pytest.mark.parametrize("in_channels", [1, 3])
def test_only_the_first_block_folds(in_channels):
    model = Conv4(in_channels, track_running_stats=False)
    x = torch.randn(4, in_channels, 28, 28)
    first, second = model.encoder[0], model.encoder[1]
    assert can_fold_batch_norm(x, first[0], first[1])
    assert not can_fold_batch_norm(first(x), second[0], second[1])  # 576 numbers a patch: not worth it

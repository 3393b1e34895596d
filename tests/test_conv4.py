"""Conv-4 has no conv biases (batch norm cancels them); checkpoints saved with them still load exactly."""

import torch
import torch.nn.functional as F

from workbench.core.models.conv4 import Conv4


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

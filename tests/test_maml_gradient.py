"""MAML's meta-gradient checked against independent computations in float64.

The reference inner loop is written by hand (analytic gradients of a tanh MLP, no autograd and no
functional_call); central finite differences of that reference give the true meta-gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workbench.core.algorithms.functional import named_params
from workbench.core.algorithms.maml import maml_outer_loss
from workbench.core.models.conv4 import Conv4Classifier

IN, HIDDEN, WAYS = 3, 4, 3
INNER_LR = 0.5


def tiny_task(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    support_x = torch.randn(2 * WAYS, IN, generator=gen, dtype=torch.float64)
    support_y = torch.arange(WAYS).repeat(2)
    query_x = torch.randn(4 * WAYS, IN, generator=gen, dtype=torch.float64)
    query_y = torch.arange(WAYS).repeat(4)
    return support_x, support_y, query_x, query_y


def tiny_mlp(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, WAYS)).double()


# --- the independent reference: forward, loss and gradients written out by hand ----------------------------------
def mlp_forward(w: dict, x):
    hidden = torch.tanh(x @ w["0.weight"].T + w["0.bias"])
    return hidden, hidden @ w["2.weight"].T + w["2.bias"]


def cross_entropy_by_hand(logits, y):
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs[torch.arange(len(y)), y].mean()


def mlp_gradient_by_hand(w: dict, x, y) -> dict:
    hidden, logits = mlp_forward(w, x)
    dlogits = (logits.softmax(dim=1) - F.one_hot(y, WAYS).double()) / len(y)
    dhidden = dlogits @ w["2.weight"]
    dpre = dhidden * (1 - hidden ** 2)
    return {"2.weight": dlogits.T @ hidden, "2.bias": dlogits.sum(0), "0.weight": dpre.T @ x, "0.bias": dpre.sum(0)}


def outer_loss_by_hand(w: dict, task, steps: int) -> float:
    support_x, support_y, query_x, query_y = task
    for _ in range(steps):
        grads = mlp_gradient_by_hand(w, support_x, support_y)
        w = {name: value - INNER_LR * grads[name] for name, value in w.items()}
    return float(cross_entropy_by_hand(mlp_forward(w, query_x)[1], query_y))


def finite_difference_meta_gradient(w: dict, task, steps: int, eps: float = 1e-6) -> dict:
    grads = {}
    for name, value in w.items():
        grad = torch.zeros_like(value)
        for i in range(value.numel()):
            plus = {k: v.clone() for k, v in w.items()}
            minus = {k: v.clone() for k, v in w.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            difference = outer_loss_by_hand(plus, task, steps) - outer_loss_by_hand(minus, task, steps)
            grad.view(-1)[i] = difference / (2 * eps)
        grads[name] = grad
    return grads


def maml_meta_gradient(model: nn.Module, task, steps: int, first_order: bool) -> dict:
    params = named_params(model)
    loss, _ = maml_outer_loss(model, params, *task, steps=steps, lr=INNER_LR, first_order=first_order)
    grads = torch.autograd.grad(loss, list(params.values()))
    return dict(zip(params, grads))


def test_reference_gradient_matches_autograd():
    # Guards the hand-written reference itself, so the comparisons below test MAML, not the reference.
    model, task = tiny_mlp(), tiny_task()
    w = {k: v.detach() for k, v in model.named_parameters()}
    loss = F.cross_entropy(model(task[0]), task[1])
    auto = dict(zip(w, torch.autograd.grad(loss, list(model.parameters()))))
    by_hand = mlp_gradient_by_hand(w, task[0], task[1])
    for name in w:
        assert torch.allclose(auto[name], by_hand[name], rtol=1e-10, atol=1e-12), name


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    model, task = tiny_mlp(), tiny_task()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    reference = finite_difference_meta_gradient(w, task, steps)
    maml = maml_meta_gradient(model, task, steps, first_order=False)
    # The loss as MAML computes it agrees with the reference too.
    loss, _ = maml_outer_loss(model, named_params(model), *task, steps=steps, lr=INNER_LR, first_order=False)
    assert abs(float(loss.detach()) - outer_loss_by_hand(w, task, steps)) < 1e-12
    for name in w:
        assert torch.allclose(maml[name], reference[name], rtol=1e-6, atol=1e-8), (
            f"{name}: max error {float((maml[name] - reference[name]).abs().max()):.3g}")


def test_first_order_gradient_differs_from_second_order_and_is_the_query_gradient_at_adapted_weights():
    steps = 2
    model, task = tiny_mlp(), tiny_task()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    reference = finite_difference_meta_gradient(w, task, steps)
    first = maml_meta_gradient(model, task, steps, first_order=True)
    total_gap = sum(float((first[n] - reference[n]).norm()) for n in w)
    scale = sum(float(reference[n].norm()) for n in w)
    # Dropping second order is not a rounding error: if MAML silently went first order, this and the test
    # above would disagree.
    assert total_gap > 1e-3 * scale
    # What first order should be: the plain query-loss gradient at the (hand-)adapted weights.
    support_x, support_y, query_x, query_y = task
    adapted = dict(w)
    for _ in range(steps):
        grads = mlp_gradient_by_hand(adapted, support_x, support_y)
        adapted = {n: v - INNER_LR * grads[n] for n, v in adapted.items()}
    expected = mlp_gradient_by_hand(adapted, query_x, query_y)
    for name in w:
        assert torch.allclose(first[name], expected[name], rtol=1e-10, atol=1e-12), name


def test_second_order_on_conv4_with_transductive_batch_norm_matches_a_directional_finite_difference():
    # The real network (batch norm on batch statistics, max-pool): the outer loss along a random direction,
    # computed with an ordinary module and plain autograd steps (no functional_call), against MAML's gradient.
    torch.manual_seed(0)
    model = Conv4Classifier(ways=2, in_channels=1, hidden=4, image_size=16, track_running_stats=False).double()
    gen = torch.Generator().manual_seed(3)
    support_x, query_x = (torch.randn(n, 1, 16, 16, generator=gen, dtype=torch.float64) for n in (4, 6))
    support_y, query_y = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1, 0, 1])
    steps, lr = 2, 0.1

    def outer_loss_with_module(start: nn.Module) -> float:
        net = copy.deepcopy(start)
        for _ in range(steps):
            grads = torch.autograd.grad(F.cross_entropy(net(support_x), support_y), list(net.parameters()))
            with torch.no_grad():
                for p, g in zip(net.parameters(), grads):
                    p -= lr * g
        with torch.no_grad():
            return float(F.cross_entropy(net(query_x), query_y))

    params = named_params(model)
    loss, _ = maml_outer_loss(model, params, support_x, support_y, query_x, query_y, steps, lr, first_order=False)
    grads = torch.autograd.grad(loss, list(params.values()))
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params.values()]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))

    # Small: ReLU and max-pool kinks lie within 1e-5 of these weights along some directions, where a central
    # difference measures a different slope (checked over 4 seeds: 1e-6 and 1e-7 agree to 1e-8).
    eps = 1e-7
    shifted = []
    for sign in (1, -1):
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(moved.parameters(), direction):
                p += sign * eps * d
        shifted.append(outer_loss_with_module(moved))
    numeric = (shifted[0] - shifted[1]) / (2 * eps)
    assert abs(float(loss.detach()) - outer_loss_with_module(model)) < 1e-10
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (analytic, numeric)

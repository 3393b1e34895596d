"""Functional inner loops: a network evaluated with an explicit dict of weights, so gradient steps on a
support set give "fast weights" without touching the module's own parameters.

Everything here works through ``torch.func.functional_call`` and ``torch.autograd.grad``; with
``create_graph=True`` the returned fast weights stay differentiable with respect to the starting weights,
which is what second-order MAML needs.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def named_params(module: nn.Module, detach: bool = False) -> Params:
    """The module's trainable weights as a dict; ``detach=True`` gives fresh leaves that require grad
    (adaptation at test time must not build a graph back into the meta-learned weights)."""
    if detach:
        return {name: p.detach().requires_grad_(True) for name, p in module.named_parameters()}
    return dict(module.named_parameters())


def forward_with(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(model, params, (x,))


def sub_params(params: Params, prefix: str) -> Params:
    """Weights of a submodule, e.g. ``sub_params(params, "features")`` for ``model.features``."""
    start = prefix + "."
    return {name[len(start):]: value for name, value in params.items() if name.startswith(start)}


def sgd_step(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, lr: float,
             create_graph: bool, loss_fn: LossFn = F.cross_entropy) -> tuple[Params, torch.Tensor, torch.Tensor]:
    """One gradient step on (x, y). Returns the new weights, the loss before the step and its logits.

    Without ``create_graph`` the gradient is a constant, so the new weights depend on the old ones only through
    the identity: exactly the first-order approximation.
    """
    logits = forward_with(model, params, x)
    loss = loss_fn(logits, y)
    names = [name for name, value in params.items() if value.requires_grad]
    grads = torch.autograd.grad(loss, [params[name] for name in names], create_graph=create_graph)
    updated = dict(params)
    for name, grad in zip(names, grads):
        updated[name] = params[name] - lr * grad
    return updated, loss, logits


def sgd_inner_loop(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
                   create_graph: bool, loss_fn: LossFn = F.cross_entropy) -> Params:
    """``steps`` plain gradient steps on (x, y) starting from ``params``."""
    for _ in range(steps):
        params, _, _ = sgd_step(model, params, x, y, lr, create_graph, loss_fn)
    return params


def detached(params: Params) -> Params:
    return {name: value.detach() for name, value in params.items()}

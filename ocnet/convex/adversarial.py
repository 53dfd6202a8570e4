"""Adversarial attacks and adversarial training of a scalar-output network, by gradient steps:
the baselines the robust convex program is measured against.

For labels ``y ∈ {−1, +1}`` and a network ``f`` with one output, the margin loss of a sample
is ``ℓ(f(x), y)`` (:func:`~.program.data_loss`, logistic or squared).  An attack of radius
``ε`` in ℓ∞ looks for ``δ`` with ``‖δ‖∞ ≤ ε`` that raises the loss:

* FGSM (Goodfellow, Shlens & Szegedy 2015): one step ``δ = ε · sign(∇_x ℓ)``;
* PGD (Madry et al. 2018): ``steps`` steps ``δ ← clip_ε(δ + a · sign(∇_x ℓ))`` of size
  ``a = 2.5 ε / steps`` from ``δ = 0`` (no random start, so an attack is a function of its
  inputs).

Adversarial training minimises the loss at the attacked inputs, each step attacking the
current network (:func:`train`).  :func:`attacked_accuracy` scores a network against an
attack: the share of samples whose sign of ``f(x + δ)`` is still ``y``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .program import data_loss

#: ``attack(net, x, y, eps, loss=…) ↦ attacked inputs``: :func:`fgsm`, :func:`pgd` or one's own.
Attack = Callable[..., torch.Tensor]


def _input_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """``∇_x`` of the summed loss at ``x`` ``(n, d)`` (the network's parameters untouched)."""
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(data_loss(net(x)[:, 0], y, loss), x)
    return g


def fgsm(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "logistic") -> torch.Tensor:
    """The inputs ``x + ε sign(∇_x ℓ)`` ``(n, d)``: one signed gradient step of size ``ε``."""
    _check(eps)
    return (x + eps * _input_gradient(net, x, y, loss).sign()).detach()


def pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "logistic",
        steps: int = 10) -> torch.Tensor:
    """The inputs ``x + δ`` ``(n, d)`` after ``steps`` projected signed gradient steps of size
    ``2.5 ε / steps`` in the ℓ∞ ball of radius ``ε`` around ``x``."""
    _check(eps)
    if steps < 1:
        raise ValueError(f"PGD takes at least one step, got {steps}")
    size, delta = 2.5 * eps / steps, torch.zeros_like(x)
    for _ in range(steps):
        delta = (delta + size * _input_gradient(net, x + delta, y, loss).sign()).clamp(-eps, eps)
    return (x + delta).detach()


def attacked_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, attack: Attack = pgd,
                      loss: str = "logistic") -> float:
    """The share of samples classified right (``sign f = y``) at the inputs ``attack`` finds
    against ``loss``; ``ε = 0`` is the clean accuracy."""
    inputs = x if eps == 0 else attack(net, x, y, eps, loss=loss)
    with torch.no_grad():
        return float((torch.sign(net(inputs)[:, 0]) == y).double().mean())


def train(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, attack: Attack = pgd,
          loss: str = "logistic", beta: float = 0.0, lr: float = 1e-2, steps: int = 500) -> list[float]:
    """Adversarial training by full-batch Adam: ``steps`` steps on ``ℓ(f(x + δ), y) + β ·
    weight_decay`` with ``δ`` the attack on the current network (``ε = 0``: plain training).
    Returns the objective per step."""
    _check(eps)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    decay = getattr(net, "weight_decay", None)
    history = []
    for _ in range(steps):
        inputs = x if eps == 0 else attack(net, x, y, eps, loss=loss)
        opt.zero_grad()
        objective = data_loss(net(inputs)[:, 0], y, loss)
        if beta and decay is not None:
            objective = objective + beta * decay()
        objective.backward()
        opt.step()
        history.append(float(objective.detach()))
    return history


def _check(eps: float) -> None:
    if eps < 0:
        raise ValueError(f"an attack's radius ε must be at least 0, got {eps}")

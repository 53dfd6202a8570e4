"""Model propagators to prototype with: the scalar test equation and the heat equation.

Both are forward Euler, ``Φ(u) = u + H f(u)`` with ``H = c^ℓ h`` on level ℓ, which is
what a residual network is too; both are linear, so ``vjp`` is the transposed step.
"""
from __future__ import annotations

import torch


class LinearODE:
    """``u' = λ u`` by forward Euler: ``Φ^ℓ(u) = (1 + λ c^ℓ h) u`` for states of any shape.

    Forward Euler is stable on level ℓ only while ``|1 + λ c^ℓ h| ≤ 1``; for ``λ < 0`` that
    is ``c^ℓ h ≤ 2 / |λ|``.

    Parameters
    ----------
    lam : float
        The rate ``λ``.
    h : float
        The fine step.
    c : int
        The coarsening factor (coarse steps are ``c^ℓ h``).
    """

    def __init__(self, lam: float, h: float, c: int) -> None:
        self.lam, self.h, self.c = lam, h, c

    def factor(self, level: int) -> float:
        return 1.0 + self.lam * self.c ** level * self.h

    def step(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor:
        return self.factor(level) * u

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self.factor(level) * lam


class Heat1D:
    """``u_t = κ u_xx`` on ``(0, 1)`` with zero boundary values, ``m`` interior points.

    ``Φ^ℓ(u) = u + c^ℓ h κ D u`` with the second-difference matrix ``D``; states have shape
    ``(m,)`` or ``(batch, m)``.  Explicit Euler needs ``c^ℓ h κ / Δx² ≤ 1/2`` on every level,
    which confines it to few levels — the textbook case of an unstable coarse step.
    """

    def __init__(self, m: int, kappa: float, h: float, c: int) -> None:
        self.m, self.kappa, self.h, self.c = m, kappa, h, c
        self.dx = 1.0 / (m + 1)

    def laplacian(self, u: torch.Tensor) -> torch.Tensor:
        pad = torch.nn.functional.pad(u, (1, 1))
        return (pad[..., :-2] - 2 * u + pad[..., 2:]) / self.dx ** 2

    def step(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor:
        return u + self.c ** level * self.h * self.kappa * self.laplacian(u)

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return self.step(level, i, lam)  # D is symmetric

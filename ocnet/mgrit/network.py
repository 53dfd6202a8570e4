"""A residual network as an MGRIT propagator, and the gradient assembled from the adjoint.

Fine step ``i`` is layer ``i``: ``Φ_i(u) = u + h F(u; θ_i)``.  The coarse step on level ℓ
from fine point ``i`` is the same layer with step ``c^ℓ h`` — the controls of the fine point
the coarse point sits on (injection).  With ``substeps = s > 1`` it is ``s`` Euler steps of
``c^ℓ h / s`` with those controls: the remedy when ``c^ℓ h`` is too large a step (see
docs/mgrit.rst, "Unstable coarse steps").
"""
from __future__ import annotations

import torch

from ..problem import LocalNetwork
from ..steps import Residual
from .layout import Layout


class NetworkPropagator:
    """The residual layers one rank holds, as a :class:`~ocnet.mgrit.levels.Propagator`.

    Parameters
    ----------
    network : LocalNetwork
        A single-stage network: every layer a :class:`~ocnet.steps.Residual` of one shape.
    c : int
        Coarsening factor (coarse step ``c^ℓ h``), the one :func:`~ocnet.mgrit.core.solve`
        coarsens by.
    substeps : int
        Euler sub-steps per coarse step.

    Raises
    ------
    ValueError
        For a network with several stages or a transition layer.
    """

    def __init__(self, network: LocalNetwork, c: int, substeps: int = 1) -> None:
        if len(network.stages) != 1 or not all(isinstance(layer, Residual) for layer in network.layers):
            raise ValueError(
                f"mgrit needs a single-stage network (every layer a residual step of one shape); this one "
                f"has {len(network.stages)} stages — use one channels entry (e.g. --channels 16) or a "
                f"dense net, or another solver")
        if substeps < 1:
            raise ValueError(f"substeps must be at least 1, got {substeps}")
        self.layers: dict[int, Residual] = {network.start + k: layer for k, layer in enumerate(network.layers)
                                            if isinstance(layer, Residual)}
        self.N = network.stages[0].N
        self.c, self.substeps = c, substeps

    def _layer(self, i: int) -> Residual:
        try:
            return self.layers[i]
        except KeyError:
            raise RuntimeError(f"layer {i} is not held by this rank (layers {min(self.layers)}…"
                               f"{max(self.layers)}); see check_layout") from None

    def _apply(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor:
        layer = self._layer(i)
        H = self.c ** level * layer.h
        if level == 0 or self.substeps == 1:
            return layer(u, h=H)
        for _ in range(self.substeps):
            u = layer(u, h=H / self.substeps)
        return u

    def step(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor:
        """``Φ^ℓ_i(u)`` for a state ``(batch, …)``, without building a graph."""
        with torch.no_grad():
            return self._apply(level, i, u)

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``(∂Φ^ℓ_i/∂u)(u)^T lam``; the parameters' gradients are left alone."""
        with torch.enable_grad():
            x = u.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self._apply(level, i, x), x, lam)
        return g


def check_layout(network: LocalNetwork, layout: Layout, c: int, levels: int) -> None:
    """Check that every coarse step this rank computes uses a layer it holds.

    The coarse step into level-ℓ point ``j`` is computed by the point's owner and uses layer
    ``(j-1) c^ℓ``; that is local when each rank's first layer is a multiple of ``c^(L-1)``.

    Raises
    ------
    ValueError
        Naming a layer count, rank count or number of levels that works.
    """
    held = range(network.start, network.stop)
    for level in range(1, levels):
        a, b = layout.local(network.rank, level, c)
        for j in range(max(a, 1), b + 1):
            k = (j - 1) * c ** level
            if k not in held:
                raise ValueError(
                    f"mgrit: with coarsening {c} and {levels} levels, rank {network.rank} (layers "
                    f"{network.start}…{network.stop - 1}) would need layer {k} of its neighbour for a "
                    f"coarse step. Every rank's first layer must be a multiple of c^(levels-1) = "
                    f"{c ** (levels - 1)}: use fewer levels, a smaller coarsening, or a layer count "
                    f"such as {c ** (levels - 1) * network.size} (a multiple of {c ** (levels - 1)} × ranks)")


def accumulate_gradients(network: LocalNetwork, states: dict[int, torch.Tensor],
                         lam: dict[int, torch.Tensor]) -> None:
    """Add ``∂J/∂θ_k = h (∂F/∂θ)(u_k; θ_k)^T λ_{k+1}`` to the ``.grad`` of every layer ``k`` this
    rank holds, from the states ``u_k`` at the layers' inputs and the adjoints ``λ_{k+1}``."""
    with torch.enable_grad():
        for k, layer in enumerate(network.layers, start=network.start):
            out = layer(states[k].detach())
            out.backward(lam[k + 1])

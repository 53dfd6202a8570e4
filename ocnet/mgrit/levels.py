"""The pieces every MGRIT operation shares: a rank's part of one level, the propagator
protocol, and the context (communicator, layout, counters) an operation runs in.

The equation on level ℓ, with ``N_ℓ + 1`` points, is the FAS system

    u_0 = g_0,    u_j = Φ^ℓ_{j-1}(u_{j-1}) + g_j,    j = 1 … N_ℓ,

where ``Φ^ℓ_j`` steps from level point ``j`` (fine point ``j c^ℓ``) with step ``c^ℓ h``.  On
the fine level ``g`` is zero but for ``g_0 = u_0``; coarser levels get ``g`` from the FAS
restriction (:mod:`.fas`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..comm import Comm, Request
from .layout import Layout

# Message tags: one block of ten per level (kinds below), so that no two kinds of message
# between the same pair of ranks can be confused.
TAG_BASE = 1000
RELAX, PREV_FINE, PREV_COARSE, COARSEST, GHOST, GHOST_ADJOINT = 1, 2, 3, 4, 5, 6


def tag(level: int, kind: int) -> int:
    return TAG_BASE + 10 * level + kind


class Propagator(Protocol):
    """A time-stepping scheme, one step at a time.

    ``step(level, i, u)`` takes the state ``u`` at fine point ``i`` one step of size
    ``c^level · h`` forward (to fine point ``i + c^level``).  Coarse steps use whatever the
    propagator holds at fine index ``i`` (for a network: layer ``i``'s controls, injection).
    For the adjoint, ``vjp(level, i, u, lam)`` returns ``(∂ step(level, i, u) / ∂u)^T lam``.
    States are tensors of any shape, e.g. ``(batch, width)``; a step keeps the shape.
    """

    def step(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor: ...

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Level:
    """One rank's part of level ``index``: values ``u`` and right-hand sides ``g`` (``None``
    for zero) at the level points ``a … b`` it owns (empty when ``a > b``); ``n`` is the
    last point of the level, ``N_ℓ``."""

    index: int
    a: int
    b: int
    n: int
    u: list[torch.Tensor] = field(default_factory=list)
    g: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.a > self.b

    def points(self) -> range:
        return range(self.a, self.b + 1)

    def get(self, j: int) -> torch.Tensor:
        return self.u[j - self.a]

    def set(self, j: int, value: torch.Tensor) -> None:
        self.u[j - self.a] = value

    def rhs(self, j: int) -> torch.Tensor | None:
        return self.g[j - self.a]


class Context:
    """What an MGRIT operation needs besides the level it works on.

    Counts the propagator's step evaluations (``steps``) so that the history can report
    work, and wraps ``Φ^ℓ_j`` in level indices.
    """

    def __init__(self, propagator: Propagator, comm: Comm, layout: Layout, c: int,
                 device: torch.device) -> None:
        self.propagator = propagator
        self.comm = comm
        self.layout = layout
        self.c = c
        self.device = device
        self.steps = 0

    def phi(self, level: int, j: int, u: torch.Tensor) -> torch.Tensor:
        """``Φ^ℓ_j(u)``: from level point ``j`` to ``j + 1`` on level ``level``."""
        self.steps += 1
        return self.propagator.step(level, j * self.c ** level, u)

    def level(self, index: int) -> Level:
        """An empty container for this rank's points of level ``index``."""
        a, b = self.layout.local(self.comm.rank, index, self.c)
        return Level(index, a, b, self.layout.n_points(index, self.c))

    def owner(self, level: int, j: int) -> int:
        return self.layout.owner(level, j, self.c)

    # -- the one kind of message MGRIT sends: a point value to the owner of the next point --
    def send_last(self, lvl: Level, value: torch.Tensor, kind: int) -> Request:
        """Start sending ``value`` (this rank's last point's) to the owner of point ``b + 1``."""
        return self.comm.isend(value, self.owner(lvl.index, lvl.b + 1), tag(lvl.index, kind))

    def recv_prev(self, lvl: Level, kind: int) -> torch.Tensor:
        """Receive the value of point ``a - 1`` from its owner."""
        return self.comm.recv(self.owner(lvl.index, lvl.a - 1), tag(lvl.index, kind), self.device)

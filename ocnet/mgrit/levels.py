"""The pieces every MGRIT operation shares: a rank's part of one level, the propagator
protocol, and the context (communicator, layout, counters) an operation runs in.

The equation on level ℓ, with ``N_ℓ + 1`` points, is the FAS system

    u_0 = g_0,    u_j = Φ^ℓ_{j-1}(u_{j-1}) + g_j,    j = 1 … N_ℓ,

where ``Φ^ℓ_j`` steps from level point ``j`` (fine point ``j c^ℓ``) with step ``c^ℓ h``.  On
the fine level ``g`` is zero but for ``g_0 = u_0``; coarser levels get ``g`` from the FAS
restriction (:mod:`.fas`).
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from ..ranks import tags as tag_blocks
from ..ranks.comm import Comm, Request
from .layout import Layout

# Message tags: one block of ten per level (kinds below), so that no two kinds of message
# between the same pair of ranks can be confused; the block of tags comes from the caller
# (a solver's own, or :data:`ocnet.ranks.tags.MGRIT`).
RELAX, PREV_FINE, PREV_COARSE, COARSEST, GHOST, GHOST_ADJOINT = 1, 2, 3, 4, 5, 6

# What :func:`~ocnet.mgrit.core.solve` tells a propagator's optional ``fine_pass(last)`` before
# each pass over the fine level (relaxation and restriction, or the sequential sweep of one
# level), so that it can keep what only the final evaluation of a step needs (an autograd
# graph) and nothing else:
NOT_LAST = "not_last"  #: the solve goes on after this pass: its fine evaluations are not the final ones
MAY_BE_LAST = "may_be_last"  #: the solve may end after this pass (it stops on a tolerance)
LAST = "last"  #: the solve ends after this pass, which evaluates every fine step exactly once
DONE = "done"  #: the solve has ended


def tag(level: int, kind: int, tags: range = tag_blocks.MGRIT) -> int:
    """The tag of messages of ``kind`` on ``level``, from the block ``tags``."""
    if 10 * level + kind >= len(tags):
        raise ValueError(f"{len(tags)} message tags are too few for {level + 1} MGRIT levels")
    return tags.start + 10 * level + kind


class Propagator(Protocol):
    """A time-stepping scheme, one step at a time.

    ``step(level, i, u)`` takes the state ``u`` at fine point ``i`` one step of size
    ``c^level · h`` forward (to fine point ``i + c^level``).  Coarse steps use whatever the
    propagator holds at fine index ``i`` (for a network: layer ``i``'s controls, injection).
    States are tensors of any shape, e.g. ``(batch, width)``; a step keeps the shape.

    The coarsening factor ``c`` is the propagator's: its coarse steps are built for it, so
    the solvers read it here (:func:`coarsening`) rather than take it a second time.
    """

    c: int

    def step(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor: ...


class Announced(Propagator, Protocol):
    """A propagator that wants to know which fine passes can be the last (optional).

    ``fine_pass(last)`` is called by :func:`~ocnet.mgrit.core.solve` before each pass over the
    fine level with :data:`NOT_LAST`, :data:`MAY_BE_LAST` or :data:`LAST`, and with
    :data:`DONE` when the solve ends (also on an error).  The final evaluation of every fine
    step falls into the last pass and is made from the final states, so a propagator that
    keeps something per step (the network's autograd graphs) keeps it only where it can be
    the final one, and the latest kept per step is then at the solution.
    """

    def fine_pass(self, last: str) -> None: ...


class Differentiable(Propagator, Protocol):
    """A propagator whose adjoint MGRIT can solve (:func:`~ocnet.mgrit.solve_adjoint`):
    ``vjp(level, i, u, lam)`` returns ``(∂ step(level, i, u) / ∂u)^T lam``."""

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor: ...


def square_norm(v: torch.Tensor) -> torch.Tensor:
    """``‖v‖²`` as MGRIT measures its residuals: the sum of squares in ``v``'s dtype (a cascade
    sum: float32 to about 1e-7 relative, with no float64 copy of the state), as a float64
    scalar, so that the sums over points and ranks are taken in float64."""
    return torch.sum(v * v).double()


def coarsening(propagator: Propagator) -> int:
    """The propagator's coarsening factor ``c`` (an integer of at least 2).

    Raises
    ------
    TypeError
        Without an integer attribute ``c``.
    ValueError
        For ``c < 2``.
    """
    c = getattr(propagator, "c", None)
    if isinstance(c, bool) or not isinstance(c, numbers.Integral):
        raise TypeError(f"the propagator {type(propagator).__name__} has no integer coarsening factor c "
                        f"(got {c!r}): give it an attribute c, the factor its coarse steps c^level h are "
                        "built for (see ocnet.mgrit.Propagator)")
    if c < 2:
        raise ValueError(f"the coarsening factor must be at least 2, got {c}")
    return int(c)


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
    work, wraps ``Φ^ℓ_j`` in level indices, and keeps ``nonfinite``: the first level on
    which a sum of squares (a residual's, or the coarsest level's values') was nan or inf
    since the solver last reset it to -1, once per iteration — where a divergence began.

    With ``reuse`` a coarse step (ℓ ≥ 1) whose input is the very tensor it was last
    evaluated from is not evaluated again: :meth:`phi` returns the value it gave then, and
    :meth:`advance` the whole update ``Φ(u_{j-1}) + g_j`` when ``g_j`` is the same tensor too.
    The values are those a new evaluation would give, bit for bit (a step is a function of
    its input and MGRIT never changes a state in place); ``steps`` counts evaluations only.
    Fine steps are always evaluated: a propagator may keep something from them (a graph).
    """

    def __init__(self, propagator: Propagator, comm: Comm, layout: Layout, c: int,
                 device: torch.device, tags: range = tag_blocks.MGRIT, reuse: bool = False) -> None:
        self.propagator = propagator
        self.comm = comm
        self.layout = layout
        self.tags = tags
        self.c = c
        self.device = device
        self.steps = 0
        self.nonfinite = -1
        self.reuse = reuse
        # (ℓ, j) ↦ the latest (u, Φ^ℓ_j(u)), and (ℓ, j) ↦ the latest (u_{j-1}, g_j, u_j) of an update
        self._phi: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._update: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = {}

    def note_nonfinite(self, level: int, sum_sq: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Note ``level`` unless a level was noted already or ``sum_sq`` is finite.

        ``sum_sq`` is a sum of squares, or states whose squares are summed as the residual's
        are (:func:`square_norm`): a value that overflows the residual's measure counts as
        non-finite like a nan or an inf.
        """
        if self.nonfinite >= 0:
            return
        if not isinstance(sum_sq, torch.Tensor):
            if not sum_sq:
                return
            sum_sq = torch.stack([square_norm(v) for v in sum_sq]).sum()
        if not bool(torch.isfinite(sum_sq)):
            self.nonfinite = level

    def phi(self, level: int, j: int, u: torch.Tensor) -> torch.Tensor:
        """``Φ^ℓ_j(u)``: from level point ``j`` to ``j + 1`` on level ``level``."""
        memo = self.reuse and level > 0
        if memo:
            seen = self._phi.get((level, j))
            if seen is not None and seen[0] is u:
                return seen[1]
        self.steps += 1
        value = self.propagator.step(level, j * self.c ** level, u)
        if memo:
            self._phi[level, j] = (u, value)
        return value

    def advance(self, lvl: Level, j: int, prev: torch.Tensor) -> torch.Tensor:
        """``Φ^ℓ_{j-1}(u_{j-1}) + g_j`` on ``lvl`` for ``prev = u_{j-1}`` (a relaxation's update,
        or the restriction's ``τ_j``)."""
        g = lvl.rhs(j)
        memo = self.reuse and lvl.index > 0
        if memo:
            seen = self._update.get((lvl.index, j))
            if seen is not None and seen[0] is prev and seen[1] is g:
                return seen[2]
        value = self.phi(lvl.index, j - 1, prev)
        value = value if g is None else value + g
        if memo:
            self._update[lvl.index, j] = (prev, g, value)
        return value

    def level(self, index: int) -> Level:
        """An empty container for this rank's points of level ``index``."""
        a, b = self.layout.local(self.comm.rank, index, self.c)
        return Level(index, a, b, self.layout.n_points(index, self.c))

    def owner(self, level: int, j: int) -> int:
        return self.layout.owner(level, j, self.c)

    # -- the one kind of message MGRIT sends: a point value to the owner of the next point --
    def send_last(self, lvl: Level, value: torch.Tensor, kind: int) -> Request:
        """Start sending ``value`` (this rank's last point's) to the owner of point ``b + 1``."""
        return self.comm.isend(value, self.owner(lvl.index, lvl.b + 1), tag(lvl.index, kind, self.tags))

    def recv_prev(self, lvl: Level, kind: int) -> torch.Tensor:
        """Receive the value of point ``a - 1`` from its owner."""
        return self.comm.recv(self.owner(lvl.index, lvl.a - 1), tag(lvl.index, kind, self.tags), self.device)

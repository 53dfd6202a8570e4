"""The adjoint equation, solved by the same MGRIT backward in time.

Given the states ``u_0 … u_N`` of ``u_{n+1} = Φ_n(u_n)`` and ``λ_N``, the adjoint is

    λ_n = (∂Φ_n/∂u)(u_n)^T λ_{n+1},    n = N-1 … 0.

In reversed time ``m = N − n`` this is a forward recursion ``μ_{m+1} = Ψ_m(μ_m)`` with
``Ψ_m(μ) = vjp(n-1 …)`` — a propagator like any other, which :func:`~ocnet.mgrit.core.solve`
solves on the mirrored layout (:meth:`Layout.mirror`).  Its coarse step on level ℓ is the
transpose of the forward coarse step: ``Φ'`` of the step from ``n − c^ℓ`` with ``c^ℓ h``,
linearised at the fine state ``u_{n − c^ℓ}``.

Each rank computes the adjoint steps of the forward steps it owns, so it needs the states at
those steps' inputs (one from its left neighbour) and returns the adjoints at their inputs
and outputs (one from its right neighbour): exactly what assembling its gradients needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..ranks import tags as tag_blocks
from ..ranks.comm import Comm, SelfComm
from .core import MGRITDivergence, MGRITResult, solve
from .layout import Layout
from .levels import GHOST, GHOST_ADJOINT, Differentiable, coarsening, tag


class Reversed:
    """The adjoint of ``forward`` as a propagator in reversed time ``m = N − n``.

    Parameters
    ----------
    forward : Differentiable
        Must provide ``vjp``; its coarsening factor is this propagator's ``c`` too (the
        reversed coarse step is the transpose of the forward one).
    N : int
        Steps.
    states : dict of int to Tensor
        ``n ↦ u_n`` for the inputs of the forward steps this rank computes.
    """

    def __init__(self, forward: Differentiable, N: int, states: dict[int, torch.Tensor]) -> None:
        self.forward, self.N, self.c, self.states = forward, N, coarsening(forward), states

    def step(self, level: int, m: int, mu: torch.Tensor) -> torch.Tensor:
        n = self.N - m - self.c ** level  # the forward step n → n + c^ℓ, transposed
        return self.forward.vjp(level, n, self.states[n], mu)

    def fine_pass(self, last: str) -> None:
        """Pass the adjoint solve's announcement on to ``forward.adjoint_pass`` (if any): a
        propagator can fuse its parameter gradients into a last pass that takes every adjoint
        step once (see :class:`~ocnet.mgrit.levels.Announced`)."""
        hook = getattr(self.forward, "adjoint_pass", None)
        if hook is not None:
            hook(last)


@dataclass
class AdjointResult:
    """What :func:`solve_adjoint` returns on each rank.

    Attributes
    ----------
    lam : dict of int to Tensor
        ``n ↦ λ_n`` for the inputs and outputs of this rank's forward steps.
    mgrit : MGRITResult
        The reversed-time solve: its history, and its states (``mgrit.u``, reversed order)
        to warm-start the next adjoint solve with.
    states : dict of int to Tensor
        ``n ↦ u_n`` at the inputs of this rank's forward steps (the linearisation points).
    """

    lam: dict[int, torch.Tensor]
    mgrit: MGRITResult
    states: dict[int, torch.Tensor]


def _shift_right(comm: Comm, layout: Layout, lo: int, hi: int, value: torch.Tensor | None,
                 kind_tag: int, device: torch.device) -> torch.Tensor | None:
    """Send ``value`` (at the last point ``hi``) to the owner of ``hi + 1`` in time, receive
    the value at ``lo − 1`` from its owner; returns the received value (or ``None``)."""
    send = None
    if value is not None and lo <= hi and hi < layout.N:
        send = comm.isend(value, layout.owner(0, hi + 1, 2), kind_tag)
    got = comm.recv(layout.owner(0, lo - 1, 2), kind_tag, device) if lo <= hi and lo > 0 else None
    if send is not None:
        send.wait()
    return got


def solve_adjoint(propagator: Differentiable, states: Sequence[torch.Tensor], lam_N: torch.Tensor | None,
                  N: int, comm: Comm | None = None, *, layout: Layout | None = None,
                  guess: Sequence[torch.Tensor] | None = None, **options: Any) -> AdjointResult:
    """Solve the adjoint equation backward in time by MGRIT.

    Parameters
    ----------
    propagator : Differentiable
        The forward propagator, with ``vjp``; its ``c`` is the coarsening factor.
    states : sequence of Tensor
        This rank's forward states at its points of ``layout`` (``MGRITResult.u``).
    lam_N : Tensor or None
        ``λ_N`` (same shape as the states), read on the rank that owns point ``N``.
    N : int
        Number of steps.
    layout : Layout, optional
        The *forward* layout (default :meth:`Layout.balanced`).
    guess : sequence of Tensor, optional
        Warm start in reversed time, e.g. the previous ``AdjointResult.mgrit.u``.
    **options
        Passed to :func:`~ocnet.mgrit.core.solve` (``levels``, ``relaxation``, ``tol``, …).

    Returns
    -------
    AdjointResult

    Raises
    ------
    MGRITDivergence
        With ``adjoint=True``, on every rank, when the adjoint's residual is nan or inf.
    """
    if "c" in options:
        raise TypeError("solve_adjoint() takes no c: the coarsening factor is the propagator's c")
    comm = comm if comm is not None else SelfComm()
    layout = layout if layout is not None else Layout.balanced(N, comm.size)
    lo, hi = layout.bounds[comm.rank]
    device = options.pop("device", None)
    if device is None:
        ref = states[0] if len(states) else lam_N
        device = ref.device if ref is not None else torch.device("cpu")
    device = torch.device(device)
    tags = options.get("tags", tag_blocks.MGRIT)

    # the input of this rank's first step is its left neighbour's last state
    u = {n: states[n - lo] for n in range(lo, hi + 1)}
    ghost = _shift_right(comm, layout, lo, hi, states[-1] if len(states) else None, tag(0, GHOST, tags), device)
    if ghost is not None:
        u[lo - 1] = ghost
    inputs = {n: v for n, v in u.items() if n < N}

    mirror = layout.mirror()
    first = comm.rank == mirror.first_rank
    try:
        res = solve(Reversed(propagator, N, inputs), lam_N if first else None, N, comm, layout=mirror,
                    guess=guess, device=device, **options)
    except MGRITDivergence as err:  # raised on every rank alike: say which solve diverged
        raise MGRITDivergence(err.iteration, err.level, err.residual, adjoint=True) from None

    lam = {N - m: v for m, v in zip(res.points, res.u)}
    # λ at the output of this rank's last step lives with the right neighbour (reversed time:
    # the point before this rank's first)
    mlo, mhi = mirror.bounds[comm.rank]
    got = _shift_right(comm, mirror, mlo, mhi, res.u[-1] if res.u else None, tag(0, GHOST_ADJOINT, tags), device)
    if got is not None:
        lam[N - (mlo - 1)] = got
    return AdjointResult(lam=lam, mgrit=res, states=inputs)

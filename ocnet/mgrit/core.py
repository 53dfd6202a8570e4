"""MGRIT on a propagator: the cycles and the iteration (:func:`solve`).

An iteration on the fine level: relax; restrict, which also measures the residual; stop if
it is below ``tol``; otherwise solve the coarse FAS problem approximately by a V- or F-cycle
and correct the C-points.  The last of ``max_iter`` iterations relaxes with F only: it is
the interpolation of the last correction to the F-points, not a smoother.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..comm import Comm, SelfComm
from .fas import correct, restrict
from .layout import Layout
from .levels import Context, Level, Propagator
from .relax import RELAXATIONS, coarsest, relax

CYCLES = ("V", "F")


@dataclass
class MGRITResult:
    """What :func:`solve` returns on each rank.

    Attributes
    ----------
    u : list of Tensor
        The fine-level states at the points this rank owns, ``points``, in time order.
    points : range
        Those points (fine indices; empty on a rank that owns none).
    residual : list of float
        ``r_k``: 2-norm of the residual over the fine C-points after ``k`` iterations (the
        same on every rank); ``r_0`` is that of the relaxed initial guess.
    wall_time : list of float
        Seconds since the start of the solve when ``r_k`` was known.
    bytes_sent : list of int
        Bytes sent by all ranks together up to ``r_k``.
    step_evals : list of int
        Propagator steps evaluated by all ranks together up to ``r_k``.
    local_steps : int
        Propagator steps this rank evaluated (the critical path is the largest of these).
    levels : int
        The levels used (``levels`` asked for, capped where the grid runs out of points).
    converged : bool
        Whether the last residual is at most ``tol``.
    """

    u: list[torch.Tensor]
    points: range
    residual: list[float] = field(default_factory=list)
    wall_time: list[float] = field(default_factory=list)
    bytes_sent: list[int] = field(default_factory=list)
    step_evals: list[int] = field(default_factory=list)
    local_steps: int = 0
    levels: int = 1
    converged: bool = False

    @property
    def iterations(self) -> int:
        """Number of completed iterations (coarse-grid corrections)."""
        return len(self.residual) - 1

    @property
    def conv_factor(self) -> float:
        """Mean convergence factor ``(r_K / r_0)^(1/K)`` (nan without an iteration)."""
        K = self.iterations
        if K < 1 or not self.residual[0] > 0:
            return math.nan
        return (self.residual[-1] / self.residual[0]) ** (1.0 / K)

    def at(self, n: int) -> torch.Tensor:
        """The state at fine point ``n`` (owned by this rank)."""
        return self.u[n - self.points.start]


def n_levels(N: int, c: int, levels: int) -> int:
    """The levels a grid of ``N`` steps affords: at most ``levels``, and each coarse level
    must keep at least one step (``c^(L-1) ≤ N``)."""
    L = 1
    while L < levels and c ** L <= N:
        L += 1
    return L


def solve(propagator: Propagator, u0: torch.Tensor | None, N: int, comm: Comm | None = None, *,
          c: int = 2, levels: int = 2, relaxation: str = "FCF", cf_sweeps: int = 1, cycle: str = "V",
          tol: float = 1e-10, max_iter: int = 100, layout: Layout | None = None,
          guess: Sequence[torch.Tensor] | None = None, device: torch.device | str | None = None) -> MGRITResult:
    """Solve ``u_{i+1} = Φ_i(u_i)``, ``i = 0 … N-1``, from ``u0`` by MGRIT.

    Parameters
    ----------
    propagator : Propagator
        ``step(level, i, u)`` (see :class:`~ocnet.mgrit.levels.Propagator`).
    u0 : Tensor or None
        The initial state, any shape (e.g. ``(batch, width)``); read on the rank that owns
        point 0 (``None`` elsewhere is fine).
    N : int
        Number of fine steps.
    comm : Comm, optional
        The ranks that share the time points (default: one process).
    c : int
        Coarsening factor.
    levels : int
        Number of levels (1: a plain sequential sweep); capped so each level keeps a step.
    relaxation : {"F", "FCF"}
        F-relaxation, or F followed by ``cf_sweeps`` rounds of C- and F-relaxation.
    cycle : {"V", "F"}
        The multigrid cycle.
    tol : float
        Stop when the residual norm (absolute, over fine C-points) is at most ``tol``.
    max_iter : int
        Most iterations (coarse-grid corrections); 0 relaxes the guess once and measures it.
    layout : Layout, optional
        Who owns which points (default :meth:`Layout.balanced`).
    guess : sequence of Tensor, optional
        Warm start: this rank's states at its points in time order (point 0 is taken from
        ``u0``).  Default: ``u0`` at point 0, zero elsewhere.  Give it on all ranks or none.
    device : device, optional
        Where received states go (default: that of ``u0`` or ``guess``, else cpu).

    Returns
    -------
    MGRITResult
    """
    comm = comm if comm is not None else SelfComm()
    layout = layout if layout is not None else Layout.balanced(N, comm.size)
    if layout.N != N or layout.size != comm.size:
        raise ValueError(f"layout for N = {layout.N} on {layout.size} ranks, solving N = {N} on {comm.size}")
    if relaxation not in RELAXATIONS:
        raise ValueError(f"unknown relaxation {relaxation!r}; choose from {', '.join(RELAXATIONS)}")
    if cycle not in CYCLES:
        raise ValueError(f"unknown cycle {cycle!r}; choose from {', '.join(CYCLES)}")
    if c < 2:
        raise ValueError(f"the coarsening factor must be at least 2, got {c}")
    first = comm.rank == layout.first_rank
    if first and u0 is None:
        raise ValueError("u0 is needed on the rank that owns point 0")
    if device is None:
        ref = u0 if u0 is not None else (guess[0] if guess else None)
        device = ref.device if ref is not None else torch.device("cpu")
    L = n_levels(N, c, levels)

    t0 = time.perf_counter()
    bytes0 = comm.bytes_sent
    ctx = Context(propagator, comm, layout, c, torch.device(device))
    fine = _initial_level(ctx, u0 if first else None, guess)
    res = MGRITResult(u=fine.u, points=fine.points() if not fine.empty else range(0), levels=L)
    if L == 1:
        coarsest(ctx, fine)
        _record(ctx, res, torch.zeros((), dtype=torch.float64), t0, bytes0)
        res.converged = True
        return res

    for k in range(max_iter + 1):
        last = k == max_iter
        relax(ctx, fine, "F" if last and k > 0 else relaxation, cf_sweeps)
        coarse, res_sq = restrict(ctx, fine, build_coarse=not last)
        r = _record(ctx, res, res_sq, t0, bytes0)
        if r <= tol or last:
            break
        _cycle(ctx, coarse, L, cycle, relaxation, cf_sweeps)
        correct(ctx, fine, coarse)
    res.converged = res.residual[-1] <= tol
    res.u = fine.u
    return res


def _initial_level(ctx: Context, u0: torch.Tensor | None, guess: Sequence[torch.Tensor] | None) -> Level:
    fine = ctx.level(0)
    if guess is None:
        # ranks away from point 0 learn the state's shape from the rank that has it
        meta = ctx.comm.bcast(None if u0 is None else (tuple(u0.shape), u0.dtype), root=ctx.layout.first_rank)
        zero = torch.zeros(meta[0], dtype=meta[1], device=ctx.device)
        fine.u = [zero] * (fine.b - fine.a + 1) if not fine.empty else []
    else:
        if len(guess) != max(0, fine.b - fine.a + 1):
            raise ValueError(f"the guess has {len(guess)} states, this rank owns {fine.b - fine.a + 1} points")
        fine.u = list(guess)
    fine.g = [None] * len(fine.u)
    if u0 is not None and fine.a == 0 and not fine.empty:
        fine.u[0] = u0
        fine.g[0] = u0
    return fine


def _cycle(ctx: Context, lvl: Level, L: int, cycle: str, relaxation: str, sweeps: int) -> None:
    """Approximately solve level ``lvl``'s FAS problem: exactly on the coarsest level, else
    relax, restrict, recurse, correct (V); the F-cycle recurses as F, then once more as V."""
    if lvl.index == L - 1:
        coarsest(ctx, lvl)
        return
    relax(ctx, lvl, relaxation, sweeps)
    coarse, _ = restrict(ctx, lvl)
    _cycle(ctx, coarse, L, cycle, relaxation, sweeps)
    correct(ctx, lvl, coarse)
    if cycle == "F" and coarse.index < L - 1:
        relax(ctx, lvl, relaxation, sweeps)
        coarse, _ = restrict(ctx, lvl)
        _cycle(ctx, coarse, L, "V", relaxation, sweeps)
        correct(ctx, lvl, coarse)


def _record(ctx: Context, res: MGRITResult, res_sq: torch.Tensor, t0: float, bytes0: int) -> float:
    """Append this iteration's residual norm, time, bytes and steps (one allreduce)."""
    local = torch.tensor([float(res_sq), float(ctx.comm.bytes_sent - bytes0), float(ctx.steps)],
                         dtype=torch.float64)
    total = ctx.comm.allreduce(local)
    r = math.sqrt(float(total[0]))
    res.residual.append(r)
    res.bytes_sent.append(int(total[1]))
    res.step_evals.append(int(total[2]))
    res.wall_time.append(time.perf_counter() - t0)
    res.local_steps = ctx.steps
    return r

"""MGRIT on a propagator: the cycles and the iteration (:func:`solve`).

An iteration on the fine level: relax; restrict, which also measures the residual; stop if
it is below ``tol``; otherwise solve the coarse FAS problem approximately by a V- or F-cycle
and correct the C-points.  With ``skip`` a cycle without a down-cycle comes first: the guess
is injected on every level, the coarsest level solved and the correction carried up.  The
last of ``max_iter`` iterations relaxes with F only: it is the interpolation of the last
correction to the F-points, not a smoother.  A residual that is nan or inf ends the solve
with :class:`MGRITDivergence` on every rank.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..ranks import tags as tag_blocks
from ..ranks.comm import Comm, SelfComm
from .fas import correct, inject, restrict
from .layout import Layout
from .levels import DONE, LAST, MAY_BE_LAST, NOT_LAST, Context, Level, Propagator, coarsening
from .relax import RELAXATIONS, coarsest, relax

CYCLES = ("V", "F")


class MGRITDivergence(ArithmeticError):
    """The residual of an MGRIT solve became nan or inf.

    :func:`solve` raises it on every rank at the same iteration (the residual is the same
    everywhere), so no rank is left waiting for another.

    Attributes
    ----------
    iteration : int
        The iteration ``k`` whose residual ``r_k`` is not finite.
    level : int
        The level on which a non-finite value (or one whose square overflows) turned up first
        during the iteration that produced ``r_k``: 0 for a nan initial value; the coarsest
        level when unstable coarse steps overflow within one cycle; after a slow divergence
        often 0 too, the fine residual summing the most squares.
    residual : list of float
        ``r_0 … r_k``.
    adjoint : bool
        Whether it was the adjoint solve (:func:`~ocnet.mgrit.adjoint.solve_adjoint`).
    """

    def __init__(self, iteration: int, level: int, residual: Sequence[float], adjoint: bool = False) -> None:
        self.iteration, self.level, self.residual, self.adjoint = iteration, level, list(residual), adjoint
        if iteration == 0 and level == 0:
            hint = "the initial value, the guess or a fine step is not finite"
        else:
            hint = ("coarse steps c^l h may be unstable; try fewer levels, a smaller coarsening or more "
                    "coarse substeps")
        super().__init__(f"MGRIT{' (adjoint)' if adjoint else ''}: the residual is {self.residual[-1]} at "
                         f"iteration {iteration} (first non-finite on level {level}): {hint}")

    def __reduce__(self):  # pickle by the constructor's arguments, not by the message
        return type(self), (self.iteration, self.level, self.residual, self.adjoint)


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
          levels: int = 2, relaxation: str = "FCF", cf_sweeps: int = 1, cycle: str = "V",
          fine_relaxation: str | None = None, tol: float = 1e-10, max_iter: int = 100, skip: bool = False,
          final_fc: bool = False, layout: Layout | None = None, guess: Sequence[torch.Tensor] | None = None,
          device: torch.device | str | None = None, tags: range = tag_blocks.MGRIT, reuse: bool = False
          ) -> MGRITResult:
    """Solve ``u_{i+1} = Φ_i(u_i)``, ``i = 0 … N-1``, from ``u0`` by MGRIT.

    Parameters
    ----------
    propagator : Propagator
        ``step(level, i, u)`` and the coarsening factor ``c`` that its coarse steps are built
        for (see :class:`~ocnet.mgrit.levels.Propagator`): level ℓ keeps every ``c^ℓ``-th point.
    u0 : Tensor or None
        The initial state, any shape (e.g. ``(batch, width)``); read on the rank that owns
        point 0 (``None`` elsewhere is fine).
    N : int
        Number of fine steps.
    comm : Comm, optional
        The ranks that share the time points (default: one process).
    levels : int
        Number of levels (1: a plain sequential sweep); capped so each level keeps a step.
    relaxation : {"F", "FCF"}
        F-relaxation, or F followed by ``cf_sweeps`` rounds of C- and F-relaxation.
    cycle : {"V", "F"}
        The multigrid cycle on the coarse levels (see :func:`_cycle`).
    fine_relaxation : {"F", "FCF"}, optional
        The relaxation on the fine level (default: ``relaxation``).  ``"F"`` with ``"FCF"``
        on the coarse levels is torchbraid's default (XBraid's ``nrelax`` 0 on level 0).
    tol : float
        Stop when the residual norm (absolute, over fine C-points) is at most ``tol``.
    max_iter : int
        Most iterations (coarse-grid corrections); 0 relaxes the guess once and measures it.
    skip : bool
        XBraid's ``skip``: before the first iteration, a cycle without a down-cycle — the
        guess injected on every level, the coarsest level solved, the correction carried up
        with F-relaxations — so that the first relaxation starts from the coarse solution.
        No residual is measured in it: ``r_0`` is that of the improved guess.
    final_fc : bool
        XBraid's final FC-relaxation: after the F-relaxation of the ``max_iter``-th
        iteration each fine C-point takes the step its residual evaluated from the F-point
        before it, so ``u_N = Φ_{N-1}(u_{N-1})`` at no extra step evaluation (the residual
        reported is that before the C-relaxation; a solve that stops on ``tol`` keeps its
        C-points, which are then within the tolerance).
    layout : Layout, optional
        Who owns which points (default :meth:`Layout.balanced`).
    guess : sequence of Tensor, optional
        Warm start: this rank's states at its points in time order (point 0 is taken from
        ``u0``).  Default: ``u0`` at point 0, zero elsewhere.  Give it on all ranks or none.
    device : device, optional
        Where received states go (default: that of ``u0`` or ``guess``, else cpu).
    tags : range
        The message tags the solve may use, ten per level (default :data:`ocnet.ranks.tags.MGRIT`;
        a solver passes a block of its own, see :class:`ocnet.ranks.tags.Tags`).
    reuse : bool
        Evaluate no coarse step twice from the same input tensor (see
        :class:`~ocnet.mgrit.levels.Context`): the same states bit for bit with fewer step
        evaluations (``step_evals`` counts those made), at the memory of one kept input and
        output per coarse point.

    Returns
    -------
    MGRITResult

    Raises
    ------
    MGRITDivergence
        On every rank, at the first iteration whose residual is nan or inf.
    TypeError
        For a propagator without an integer coarsening factor ``c``.
    """
    c = coarsening(propagator)
    comm = comm if comm is not None else SelfComm()
    layout = layout if layout is not None else Layout.balanced(N, comm.size)
    if layout.N != N or layout.size != comm.size:
        raise ValueError(f"layout for N = {layout.N} on {layout.size} ranks, solving N = {N} on {comm.size}")
    fine_relaxation = relaxation if fine_relaxation is None else fine_relaxation
    for kind in (relaxation, fine_relaxation):
        if kind not in RELAXATIONS:
            raise ValueError(f"unknown relaxation {kind!r}; choose from {', '.join(RELAXATIONS)}")
    if cycle not in CYCLES:
        raise ValueError(f"unknown cycle {cycle!r}; choose from {', '.join(CYCLES)}")
    first = comm.rank == layout.first_rank
    if first and u0 is None:
        raise ValueError("u0 is needed on the rank that owns point 0")
    if device is None:
        ref = u0 if u0 is not None else (guess[0] if guess else None)
        device = ref.device if ref is not None else torch.device("cpu")
    L = n_levels(N, c, levels)

    t0 = time.perf_counter()
    bytes0 = comm.bytes_sent
    ctx = Context(propagator, comm, layout, c, torch.device(device), tags, reuse)
    fine = _initial_level(ctx, u0 if first else None, guess)
    res = MGRITResult(u=fine.u, points=fine.points() if not fine.empty else range(0), levels=L)
    announce = getattr(propagator, "fine_pass", None)
    try:
        if L == 1:
            if announce is not None:
                announce(LAST)  # one sweep: every fine step once, from its final input
            coarsest(ctx, fine)
            _record(ctx, res, torch.zeros((), dtype=torch.float64), t0, bytes0)
            res.converged = True
            return res
        if skip:
            _skip_cycle(ctx, fine, L)
        _iterate(ctx, res, fine, announce, L, relaxation, fine_relaxation, cf_sweeps, cycle, tol, max_iter,
                 final_fc, t0, bytes0)
    finally:
        if announce is not None:
            announce(DONE)
    res.converged = res.residual[-1] <= tol
    res.u = fine.u
    return res


def _iterate(ctx: Context, res: MGRITResult, fine: Level, announce: Callable[[str], None] | None, L: int,
             relaxation: str, fine_relaxation: str, cf_sweeps: int, cycle: str, tol: float, max_iter: int,
             final_fc: bool, t0: float, bytes0: int) -> None:
    """The iterations of :func:`solve` on ``L ≥ 2`` levels, until ``r ≤ tol`` or ``max_iter``.

    Before each fine pass (relaxation and restriction) the propagator's ``fine_pass`` hears
    whether the solve may end after it (:data:`~ocnet.mgrit.levels.MAY_BE_LAST`: when it
    stops on a tolerance, any pass may be the last), surely ends after it and evaluates
    every fine step exactly once (``LAST``: the F-relaxation and the restriction of the last
    iteration), or cannot end after it (``NOT_LAST``).  The last pass evaluates every fine
    step from the final states: its F-relaxation the steps out of C-points and F-points
    (F-points from the final C-points), its restriction the steps into C-points.  With
    ``final_fc`` the C-points then move to those steps' values; the steps out of them stay
    the relaxation's.
    """
    for k in range(max_iter + 1):
        last = k == max_iter
        kind = "F" if last and k > 0 else fine_relaxation
        if announce is not None:
            announce(LAST if last and kind == "F" else MAY_BE_LAST if last or tol > 0 else NOT_LAST)
        relax(ctx, fine, kind, cf_sweeps)
        coarse, res_sq = restrict(ctx, fine, build_coarse=not last, c_relax=final_fc and last)
        r = _record(ctx, res, res_sq, t0, bytes0)
        if not math.isfinite(r):
            # Every rank has the same r and raises here, after this one collective more.  The
            # coarsest of the ranks' first levels: a rank without coarse points meets the blow-up
            # only on the fine level.  -1 everywhere: only the sum over the ranks overflowed.
            level = int(ctx.comm.allreduce(float(ctx.nonfinite), op="max"))
            raise MGRITDivergence(k, max(level, 0), res.residual)
        ctx.nonfinite = -1  # the next residual's window: this iteration's cycle, the next restriction
        if r <= tol or last:
            break
        coarse = _coarse(coarse)
        _cycle(ctx, coarse, L, cycle, relaxation, cf_sweeps)
        correct(ctx, fine, coarse)


def _skip_cycle(ctx: Context, fine: Level, L: int) -> None:
    """XBraid's skipped first down-cycle: every level takes the guess by injection (its
    right-hand side zero but for ``u_0``: no residual is restricted), the coarsest level is
    solved, and the corrections go up as in a V-cycle — ``N_{L-1}`` coarsest steps and an
    F-relaxation on each intermediate level, nothing on the fine level."""
    hierarchy = [fine]
    for _ in range(1, L):
        hierarchy.append(inject(ctx, hierarchy[-1]))
    coarsest(ctx, hierarchy[-1])
    ctx.note_nonfinite(L - 1, hierarchy[-1].u)
    for lvl, coarse in zip(reversed(hierarchy[:-1]), reversed(hierarchy[1:])):
        correct(ctx, lvl, coarse)


def _coarse(level: Level | None) -> Level:
    """The coarse level :func:`~.fas.restrict` built (it builds one unless told not to)."""
    assert level is not None
    return level


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
    """Approximately solve the FAS problem of level ``lvl`` (ℓ ≥ 1) by a V- or F-cycle.

    On the coarsest level both are the exact sequential solve.  Otherwise

    * V(ℓ): relax, restrict, V(ℓ+1), correct;
    * F(ℓ): relax, restrict, F(ℓ+1), correct; then relax, restrict, V(ℓ+1), correct —
      also when ℓ+1 is the coarsest level, where the second half is one more exact solve.

    This is the textbook F-cycle of XBraid (``braid_SetFMG``) and PyMGRIT (``cycle_type="F"``):
    each coarse level ℓ is visited ℓ times per iteration, the coarsest ``L - 1`` times.  As
    in both, the fine level takes no second half: :func:`solve`'s iteration (relax, restrict,
    cycle from level 1, correct) is the F-cycle's first half there, and the next iteration
    starts with the relaxation that the second half would begin with.  The second half
    skips the leading F-relaxation: :func:`~ocnet.mgrit.fas.correct` has just done it.
    """
    if lvl.index == L - 1:
        coarsest(ctx, lvl)
        ctx.note_nonfinite(lvl.index, lvl.u)  # unstable coarse steps blow up here first
        return
    relax(ctx, lvl, relaxation, sweeps)
    coarse = _coarse(restrict(ctx, lvl)[0])
    _cycle(ctx, coarse, L, cycle, relaxation, sweeps)
    correct(ctx, lvl, coarse)
    if cycle == "F":
        relax(ctx, lvl, relaxation, sweeps, first_f=False)
        coarse = _coarse(restrict(ctx, lvl)[0])
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

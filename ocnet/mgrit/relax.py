"""Relaxation on one level, and the sequential solve of the coarsest level.

A relaxation sweep recomputes a set of points from their predecessors,
``u_j ← Φ(u_{j-1}) + g_j``: F-relaxation the F-points (interval after interval, each starting
from its C-point), C-relaxation the C-points (from the F-point before each).  Points whose
predecessor lives on the rank to the left wait for it; every rank therefore computes first
the run of points that ends at its last point (and sends that value on at once), then its
interior runs, and last the run that needs the value from the left — so neighbours overlap
instead of waiting for each other in turn.
"""
from __future__ import annotations

from typing import Callable

import torch

from .levels import COARSEST, RELAX, Context, Level

RELAXATIONS = ("F", "FCF")


def update(ctx: Context, lvl: Level, which: Callable[[int], bool], kind: int = RELAX) -> None:
    """``u_j ← Φ^ℓ_{j-1}(u_{j-1}) + g_j`` for every owned ``j ≥ 1`` with ``which(j)``, in time
    order along each run of consecutive such points; the new values are used at once.
    ``kind`` tags the messages (:data:`~ocnet.mgrit.levels.RELAX` or ``COARSEST``)."""
    if lvl.empty:
        return  # owners of the neighbouring points skip this rank
    runs: list[list[int]] = []
    for j in range(max(lvl.a, 1), lvl.b + 1):
        if which(j):
            if runs and runs[-1][-1] == j - 1:
                runs[-1].append(j)
            else:
                runs.append([j])
    head = runs[0] if runs and runs[0][0] == lvl.a else None  # needs the left neighbour's value
    tail = runs[-1] if runs and runs[-1][-1] == lvl.b else None  # its value is sent right
    to_send = lvl.b + 1 <= lvl.n and which(lvl.b + 1)
    sends = []

    def send() -> None:
        if to_send:
            sends.append(ctx.send_last(lvl, lvl.get(lvl.b), kind))

    def run(points: list[int], prev: torch.Tensor) -> None:
        for j in points:
            prev = ctx.advance(lvl, j, prev)
            lvl.set(j, prev)

    if tail is None:
        send()
    elif tail is not head:
        run(tail, lvl.get(tail[0] - 1))
        send()
    for points in runs:
        if points is not head and points is not tail:
            run(points, lvl.get(points[0] - 1))
    if head is not None:
        run(head, ctx.recv_prev(lvl, kind))
        if head is tail:
            send()
    for s in sends:
        s.wait()


def f_relax(ctx: Context, lvl: Level) -> None:
    """F-relaxation: recompute every F-point (``j mod c ≠ 0``) from the C-point before it."""
    c = ctx.c
    update(ctx, lvl, lambda j: j % c != 0)


def c_relax(ctx: Context, lvl: Level) -> None:
    """C-relaxation: recompute every C-point but the first from the F-point before it."""
    c = ctx.c
    update(ctx, lvl, lambda j: j % c == 0)


def relax(ctx: Context, lvl: Level, kind: str = "FCF", sweeps: int = 1, first_f: bool = True) -> None:
    """``"F"``: F-relaxation; ``"FCF"``: F, then ``sweeps`` times C and F.

    ``first_f=False`` leaves out the leading F-relaxation, for a level whose F-points are
    already relaxed from its current C-points (it would recompute the same values).
    """
    if kind not in RELAXATIONS:
        raise ValueError(f"unknown relaxation {kind!r}; choose from {', '.join(RELAXATIONS)}")
    if first_f:
        f_relax(ctx, lvl)
    if kind == "FCF":
        for _ in range(sweeps):
            c_relax(ctx, lvl)
            f_relax(ctx, lvl)


def coarsest(ctx: Context, lvl: Level) -> None:
    """Solve the level exactly by one sequential sweep in time across the ranks.

    Each rank waits for the value before its first point, steps through its points and
    sends its last value to the owner of the next point, in the layout's time order (either
    direction); a rank that owns no point of the level takes no part, wherever it sits.
    """
    update(ctx, lvl, lambda j: True, COARSEST)

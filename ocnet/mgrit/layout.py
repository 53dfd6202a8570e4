"""Which rank owns which time points, on every level of the MGRIT hierarchy.

The fine grid has points ``0 … N``; level ``ℓ`` keeps the fine points that are multiples of
``c^ℓ`` (level index ``j`` is fine point ``j c^ℓ``) and steps between them with ``c^ℓ h``.
Each rank owns one contiguous slice of the fine points, possibly empty; on a coarse level it
owns the coarse points that fall into its slice, so a rank may own no point of a level (it
then sits that level out, as in XBraid).

The default slices follow the layers (:class:`ocnet.model.grid.Partition`): the rank holding
steps ``start … stop-1`` owns the points *after* them, ``start+1 … stop``, and rank 0 also
owns point 0.  So the step into a point is always computed by the point's owner, the rank
that holds the step's controls.

A layout runs forward in time along ascending ranks, or — for the adjoint, which runs
backward — along descending ranks (``reverse=True``, see :meth:`Layout.mirror`).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass

from ..model.grid import Partition


@dataclass(frozen=True)
class Layout:
    """Contiguous slices of the fine points ``0 … N`` over ranks.

    Parameters
    ----------
    N : int
        Number of fine steps (points ``0 … N``).
    bounds : tuple of (int, int)
        ``bounds[r] = (lo, hi)``: rank ``r`` owns fine points ``lo … hi`` (inclusive; empty
        when ``lo > hi``).  The slices follow each other in time along ascending ranks, or
        descending ranks when ``reverse``; the first rank in time that owns any point owns
        point 0 (ranks before it, like any empty rank, own nothing).
    reverse : bool
        Time runs from the last rank to the first (the adjoint's layout).
    """

    N: int
    bounds: tuple[tuple[int, int], ...]
    reverse: bool = False

    def __post_init__(self) -> None:
        # in time order, the first non-empty slice starts at point 0 and each next one where
        # the previous ends; empty slices may come anywhere, first and last included
        nxt = 0
        for r in self.time_order():
            lo, hi = self.bounds[r]
            if lo > hi:
                continue
            if lo != nxt:
                raise ValueError(f"rank {r} owns points {lo}…{hi}, expected its slice to start at {nxt}: "
                                 "slices must be contiguous and follow the ranks' time order")
            nxt = hi + 1
        if nxt != self.N + 1:
            raise ValueError(f"the slices cover points 0…{nxt - 1}, not 0…{self.N}")
        starts = [(self.bounds[r][0], r) for r in range(self.size) if self.bounds[r][0] <= self.bounds[r][1]]
        object.__setattr__(self, "_starts", sorted(starts))

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_partition(cls, partition: Partition) -> "Layout":
        """Rank ``r`` with steps ``start … stop-1`` owns points ``start+1 … stop`` (rank 0
        also point 0): each point lives with the step that computes it."""
        bounds = []
        for r in range(partition.n_ranks):
            start, stop = partition.bounds(r)
            bounds.append((0 if r == 0 else start + 1, stop))
        return cls(partition.n_layers, tuple(bounds))

    @classmethod
    def balanced(cls, N: int, n_ranks: int) -> "Layout":
        """The layout of ``N`` steps balanced over ``n_ranks`` ranks (:meth:`from_partition`)."""
        return cls.from_partition(Partition(N, n_ranks))

    def mirror(self) -> "Layout":
        """The layout of the time-reversed problem ``m = N - n`` (the adjoint).

        Reversed point ``m ≥ 1`` goes to the owner of forward point ``N - m + 1``, the rank
        holding step ``N - m``, whose Jacobian the reversed step into ``m`` applies; reversed
        point 0 (the terminal condition) stays with the owner of forward point ``N``.
        """
        out = []
        for lo, hi in self.bounds:
            if lo > hi:
                out.append((1, 0))
                continue
            out.append((0 if hi == self.N else self.N + 1 - hi, self.N if lo == 0 else self.N + 1 - lo))
        return Layout(self.N, tuple(out), not self.reverse)

    # -- queries -----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.bounds)

    def time_order(self) -> list[int]:
        ranks = list(range(self.size))
        return ranks[::-1] if self.reverse else ranks

    @property
    def first_rank(self) -> int:
        """The rank that owns point 0 (the initial condition): the first in time order that
        owns any point, not necessarily the first in time order."""
        return self.owner(0, 0, 2)

    def n_points(self, level: int, c: int) -> int:
        """The last index ``N_ℓ = ⌊N / c^ℓ⌋`` of level ``level`` (points ``0 … N_ℓ``)."""
        return self.N // c ** level

    def local(self, rank: int, level: int, c: int) -> tuple[int, int]:
        """``(a, b)``: the level indices ``a … b`` that ``rank`` owns on ``level`` (empty if
        ``a > b``)."""
        lo, hi = self.bounds[rank]
        s = c ** level
        if lo > hi:
            return 1, 0
        return -(-lo // s), hi // s

    def owner(self, level: int, j: int, c: int) -> int:
        """The rank that owns level index ``j`` of ``level`` (fine point ``j c^ℓ``)."""
        n = j * c ** level
        if not 0 <= n <= self.N:
            raise IndexError(f"point {n} outside 0…{self.N}")
        starts = self._starts  # type: ignore[attr-defined]
        return starts[bisect.bisect_right(starts, (n, self.size)) - 1][1]

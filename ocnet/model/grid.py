"""Layer-time grids and the partition of layers over ranks.

A residual network with N blocks of one shape is forward Euler on ``t_n = n h``,
``h = T / N``.  :class:`TimeGrid` is that grid with its multigrid hierarchy (C-points every
``c`` steps); :class:`Partition` assigns contiguous, balanced slices of layers to ranks, or
several slices each (virtual pipeline stages, :meth:`Partition.virtual`).
"""
from __future__ import annotations

from dataclasses import dataclass

#: How virtual pipeline stages are dealt to ranks (:meth:`Partition.virtual`).
SHAPES = ("interleaved", "v")


@dataclass(frozen=True)
class TimeGrid:
    """``N`` steps of size ``h = T / N`` on ``[0, T]``; points ``0 … N``."""

    N: int
    T: float = 1.0

    def __post_init__(self) -> None:
        if self.N < 1:
            raise ValueError(f"a time grid needs at least one step, got N = {self.N}")
        if not self.T > 0:
            raise ValueError(f"final time T must be positive, got {self.T}")

    @property
    def h(self) -> float:
        return self.T / self.N

    def t(self, n: int) -> float:
        return n * self.h

    def c_points(self, c: int) -> list[int]:
        """Indices of the C-points for coarsening factor ``c`` (0, c, 2c, …, ≤ N)."""
        return list(range(0, self.N + 1, c))

    def f_points(self, c: int) -> list[int]:
        return [n for n in range(self.N + 1) if n % c]

    def coarsen(self, c: int) -> "TimeGrid":
        """The grid of the C-points: ``N / c`` steps of size ``c h``."""
        if c < 2 or self.N % c:
            raise ValueError(f"cannot coarsen N = {self.N} steps by a factor c = {c}")
        return TimeGrid(self.N // c, self.T)

    def levels(self, c: int, max_levels: int, min_steps: int = 2) -> list["TimeGrid"]:
        """The multigrid hierarchy: this grid, then coarser ones while they divide evenly
        and keep at least ``min_steps`` steps, at most ``max_levels`` grids in all."""
        grids = [self]
        while len(grids) < max_levels and grids[-1].N % c == 0 and grids[-1].N // c >= min_steps:
            grids.append(grids[-1].coarsen(c))
        return grids


def stage_layers(n_layers: int, n_stages: int) -> list[int]:
    """The residual steps of each of ``n_stages`` stages when ``n_layers`` are shared evenly
    among them (the first ``n_layers % n_stages`` stages one more)."""
    if n_layers < n_stages:
        raise ValueError(f"{n_layers} layers cannot fill {n_stages} stages")
    return [n_layers // n_stages + (s < n_layers % n_stages) for s in range(n_stages)]


@dataclass(frozen=True)
class Partition:
    """Contiguous slices of ``n_layers`` layers over ``n_ranks`` ranks.

    By default the slices are balanced: the first ``n_layers % n_ranks`` ranks hold one layer
    more than the others.  ``starts`` gives them explicitly instead: rank ``r`` holds layers
    ``starts[r] … starts[r+1]-1`` (a solver that needs its cuts at particular layers, see
    :meth:`aligned`).

    With ``chunks > 1`` (:meth:`virtual`) the layers are cut into ``chunks · n_ranks``
    balanced stages and every rank holds ``chunks`` of them, not one slice: :meth:`chunks`
    says which, and :meth:`bounds` refuses, so that code written for one slice per rank
    fails loudly on such a partition.
    """

    n_layers: int
    n_ranks: int
    starts: tuple[int, ...] = ()
    chunks_per_rank: int = 1
    shape: str = "interleaved"

    def __post_init__(self) -> None:
        if self.n_ranks < 1:
            raise ValueError(f"need at least one rank, got {self.n_ranks}")
        if self.chunks_per_rank > 1:
            if self.starts:
                raise ValueError("a partition into virtual stages cuts the layers evenly: give no starts")
            if self.shape not in SHAPES:
                raise ValueError(f"virtual stages are dealt {' or '.join(SHAPES)}, not {self.shape!r}")
            if self.shape == "v" and self.chunks_per_rank != 2:
                raise ValueError(f"the V shape holds 2 stages per rank, not {self.chunks_per_rank}")
            if self.n_stages > self.n_layers:
                raise ValueError(
                    f"{self.n_stages} virtual stages ({self.chunks_per_rank} per rank on {self.n_ranks} "
                    f"ranks) but only {self.n_layers} layers: every stage needs at least one layer")
        if self.n_ranks > self.n_layers:
            raise ValueError(
                f"{self.n_ranks} ranks but only {self.n_layers} layers: every rank needs at "
                f"least one layer; use at most {self.n_layers} ranks or more layers")
        if self.starts:
            s = (*self.starts, self.n_layers)
            if len(self.starts) != self.n_ranks or s[0] != 0 or any(a >= b for a, b in zip(s, s[1:])):
                raise ValueError(f"starts {self.starts} do not cut {self.n_layers} layers into "
                                 f"{self.n_ranks} non-empty slices")

    @classmethod
    def aligned(cls, cuts: list[int], n_ranks: int) -> "Partition":
        """Slices that start only at ``cuts`` (``0 = cuts[0] < … < cuts[-1] = n_layers``): the
        ``len(cuts) - 1`` pieces between them are dealt to the ranks as evenly as
        :class:`Partition` deals layers, e.g. the blocks of the penalty methods."""
        pieces = cls(len(cuts) - 1, n_ranks)
        return cls(cuts[-1], n_ranks, tuple(cuts[pieces.bounds(r)[0]] for r in range(n_ranks)))

    @classmethod
    def virtual(cls, n_layers: int, n_ranks: int, chunks: int, shape: str = "interleaved") -> "Partition":
        """``chunks · n_ranks`` balanced stages of consecutive layers, ``chunks`` per rank.

        ``shape="interleaved"``: rank ``r`` holds stages ``r, r + P, …, r + (chunks - 1) P``
        (Narayanan et al. 2021, §2.2.2).  ``shape="v"`` (two chunks): rank ``r`` holds stages
        ``r`` and ``2P - 1 - r``, so the first rank holds the first and the last stage (Qi et
        al. 2024, ZB-V)."""
        if chunks < 1:
            raise ValueError(f"need at least one chunk per rank, got {chunks}")
        return cls(n_layers, n_ranks, chunks_per_rank=chunks, shape=shape)

    @property
    def n_stages(self) -> int:
        """How many pipeline stages: one per rank, or ``chunks`` per rank when virtual."""
        return self.n_ranks * self.chunks_per_rank

    @property
    def is_virtual(self) -> bool:
        return self.chunks_per_rank > 1

    def stage_rank(self, stage: int) -> tuple[int, int]:
        """``(rank, chunk)``: where pipeline stage ``stage`` lives, and the position of that
        stage among the rank's chunks (chunks in the order of their layers)."""
        if not 0 <= stage < self.n_stages:
            raise IndexError(f"stage {stage} out of range 0 … {self.n_stages - 1}")
        P = self.n_ranks
        if self.shape == "v" and self.is_virtual:
            return (stage, 0) if stage < P else (2 * P - 1 - stage, 1)
        return stage % P, stage // P

    def stages(self, rank: int) -> list[int]:
        """The pipeline stages of ``rank``, one per chunk, in the order of their layers."""
        return [s for s in range(self.n_stages) if self.stage_rank(s)[0] == rank]

    def stage_bounds(self, stage: int) -> tuple[int, int]:
        """``(start, stop)``: stage ``stage`` holds layers ``start … stop-1``."""
        if not self.is_virtual:
            return self.bounds(stage)
        return Partition(self.n_layers, self.n_stages).bounds(stage)

    def chunks(self, rank: int) -> list[tuple[int, int]]:
        """``[(start, stop), …]``: the slices of layers that ``rank`` holds, one per chunk, in
        the order of their layers (one slice, :meth:`bounds`, unless virtual)."""
        return [self.stage_bounds(s) for s in self.stages(rank)]

    def bounds(self, rank: int) -> tuple[int, int]:
        """``(start, stop)``: rank ``rank`` holds layers ``start … stop-1``.

        Raises
        ------
        ValueError
            For a partition into virtual stages, where a rank holds several slices
            (:meth:`chunks`)."""
        if self.is_virtual:
            raise ValueError(f"rank {rank} holds {self.chunks_per_rank} slices of layers (virtual pipeline "
                             "stages), not one: use chunks(rank)")
        if self.starts:
            return self.starts[rank], (self.starts[rank + 1] if rank + 1 < self.n_ranks else self.n_layers)
        q, r = divmod(self.n_layers, self.n_ranks)
        start = rank * q + min(rank, r)
        return start, start + q + (rank < r)

    def cuts(self) -> list[int]:
        """The first layer of each rank's slice, and ``n_layers``: ``[0, …, n_layers]``."""
        return [self.bounds(r)[0] for r in range(self.n_ranks)] + [self.n_layers]

    def owner(self, layer: int) -> int:
        """The rank that holds ``layer``."""
        for stage in range(self.n_stages):
            if layer < self.stage_bounds(stage)[1]:
                return self.stage_rank(stage)[0]
        raise IndexError(f"layer {layer} out of range 0 … {self.n_layers - 1}")

    def sizes(self) -> list[int]:
        """How many layers each rank holds."""
        return [sum(b - a for a, b in self.chunks(r)) for r in range(self.n_ranks)]

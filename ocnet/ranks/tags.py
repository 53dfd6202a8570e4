"""Message tags: who may use which.

MPI matches a message by its source and tag, so two pieces of code that talk between the
same pair of ranks must never share a tag.  This module is the one owner of tags: the
library's building blocks have fixed ranges here, and everything a solver sends is tagged
from a :class:`Tags` block that the solver is given (``self.tags``) — solvers never invent
tag numbers.
"""
from __future__ import annotations

UPPER = 32767  # the largest tag every MPI library must accept (MPI_TAG_UB ≥ 32767)

SWEEP_FORWARD = 11  # :mod:`ocnet.ranks.sweep`'s defaults, for sweeps outside a solver
SWEEP_BACKWARD = 12
#: :func:`ocnet.ranks.sweep.train`'s defaults on virtual stages: the messages into chunk
#: ``c`` take ``SWEEP_STAGES[c]`` forward and ``SWEEP_STAGES[MAX_CHUNKS + c]`` backward
SWEEP_STAGES = range(100, 200)
MAX_CHUNKS = 50
MGRIT = range(1000, 2000)  # :func:`ocnet.mgrit.solve`'s default block: 10 tags per level
SOLVERS = range(2000, 32000)  # handed out to solvers by :class:`Tags`
GATHER = 32000  # :meth:`ocnet.ranks.comm.Comm.gather`


class Tags:
    """Hands out disjoint blocks of tags from ``pool``.

    Every rank builds its solvers in the same order and so draws the same tags: a block
    taken on one rank matches the block its neighbour took for the same purpose.

    Parameters
    ----------
    pool : range
        The tags to hand out (default: :data:`SOLVERS`).
    """

    def __init__(self, pool: range = SOLVERS) -> None:
        self.pool = pool
        self.next = pool.start

    def take(self, n: int) -> range:
        """``n`` tags that nobody else has been given."""
        if n < 0 or self.next + n > self.pool.stop:
            raise RuntimeError(f"no {n} message tags left in {self.pool}")
        block = range(self.next, self.next + n)
        self.next += n
        return block

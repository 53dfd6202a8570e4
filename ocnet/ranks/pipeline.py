"""Pipeline schedules: the order in which one rank runs its micro-batches' passes.

A schedule is a list of operations ``(kind, m)`` on micro-batch ``m``:

``"F"``
    the forward pass of this rank's block (its input comes from rank ``r - 1``);
``"B"``
    the backward pass.  It computes the adjoint of the block's input (sent on to rank
    ``r - 1`` at once) and, unless the schedule holds a ``"W"`` for the same micro-batch,
    the parameter gradients too;
``"W"``
    the parameter gradients of a micro-batch whose ``"B"`` computed the input adjoint only:
    deferred work that fills the time the rank would otherwise spend waiting.

Generators are pure functions ``(rank, size, micro_batches) -> list[(kind, m)]`` (the
:data:`SCHEDULES`), and :func:`simulate` plays the ranks' lists against each other under a
cost model: the makespan, and a deadlock if the lists do not fit together.

With virtual stages (:meth:`ocnet.model.grid.Partition.virtual`) a rank holds several
chunks of layers, and an operation names its chunk: ``(kind, m, c)``.  Chunk ``c`` of rank
``r`` is pipeline stage ``s``; its ``"F"`` takes its input from stage ``s - 1`` wherever that
lives, its ``"B"`` the adjoint from stage ``s + 1``.  The :data:`VIRTUAL` generators
``(rank, size, micro_batches, chunks) -> list[(kind, m, c)]`` make such lists: interleaved
1F1B (:func:`interleaved`) and the V-shaped schedule (:func:`v_shape`).

Splitting a backward costs extra on a CPU (the convolution's input and weight gradients,
computed apart, share less work: measured 1.2x the fused backward), so
:func:`zero_bubble` splits only the backward passes whose deferred ``"W"`` shortens the
simulated makespan, unlike the all-split zero-bubble schedules (Qi et al., "Zero Bubble
Pipeline Parallelism", ICLR 2024) designed for GPUs.
"""
from __future__ import annotations

from functools import lru_cache
from math import inf
from typing import Callable, NamedTuple, Sequence

from ..model.grid import Partition

Op = tuple[str, int]
Schedule = Callable[[int, int, int], list[Op]]
#: ``(kind, m, c)``: a pass of micro-batch ``m`` through this rank's chunk ``c``
ChunkOp = tuple[str, int, int]
VirtualSchedule = Callable[[int, int, int, int], list[ChunkOp]]


class Costs(NamedTuple):
    """Relative durations of one micro-batch's passes through one rank's block.

    The defaults are measured for residual convolution blocks on a CPU (one thread, 16
    channels, 32×32, 16 samples): forward 1, fused backward 1.38, input adjoint 0.86 and
    parameter gradients 0.79 when split.
    """

    forward: float = 1.0
    backward: float = 1.38
    input_grad: float = 0.86
    weight_grad: float = 0.79


COSTS = Costs()


def one_f_one_b(rank: int, size: int, micro_batches: int) -> list[Op]:
    """The 1F1B pipeline schedule of one rank: ``[("F", m) | ("B", m), …]``.

    Rank ``r`` runs ``P - 1 - r`` forwards ahead, then alternates forward and backward, so at
    most ``P - r`` micro-batches hold activations at once (GPipe holds all of them) while
    the pipeline bubble stays the same.
    """
    warm = min(size - 1 - rank, micro_batches)
    ops = [("F", m) for m in range(warm)]
    for i in range(micro_batches - warm):
        ops += [("F", warm + i), ("B", i)]
    ops += [("B", m) for m in range(micro_batches - warm, micro_batches)]
    return ops


def zero_bubble(rank: int, size: int, micro_batches: int) -> list[Op]:
    """A zero-bubble schedule (ZB-H1-like): 1F1B's order of forwards and backwards, with the
    backward of some micro-batches split into ``"B"`` and a deferred ``"W"``.

    A rank runs a deferred ``"W"`` whenever its next pass would otherwise wait for a
    neighbour, and the rest after its last backward.  Which backwards are split is chosen
    per rank (the last ``s_r`` of its micro-batches) to minimise the makespan that
    :func:`simulate` predicts under :data:`COSTS`; a split that does not pay is not made.
    """
    return list(_zero_bubble(size, micro_batches, COSTS)[rank])


SCHEDULES: dict[str, Schedule] = {"1f1b": one_f_one_b, "zb": zero_bubble}

#: How many candidate schedules :func:`zero_bubble`'s search simulates at most; it visits the
#: last ranks first, where deferral pays most.
_BUDGET = 200


@lru_cache(maxsize=64)
def _zero_bubble(size: int, micro_batches: int, costs: Costs) -> tuple[tuple[Op, ...], ...]:
    base = [one_f_one_b(r, size, micro_batches) for r in range(size)]
    split: list[frozenset[int]] = [frozenset()] * size
    best, schedules = _place(base, split, costs)
    # Idle time arises while the pipeline fills and drains: only the first and last ``P``
    # backwards of a rank are candidates (the steady state in between has none to fill).
    candidates = sorted(set(range(min(size, micro_batches))) | set(range(max(0, micro_batches - size), micro_batches)))
    budget = _BUDGET  # simulations: the search stays well under a second at any size
    improved = True
    while improved and budget > 0:  # local search: split or unsplit one backward while it pays
        improved = False
        for r in reversed(range(size)):
            for m in candidates:
                budget -= 1
                if budget < 0:
                    break
                trial = split[:r] + [split[r] ^ {m}] + split[r + 1:]
                span, ops = _place(base, trial, costs)
                if span < best - 1e-9:
                    best, schedules, split, improved = span, ops, trial, True
    return tuple(tuple(ops) for ops in schedules)


def _place(base: list[list[Op]], split: list[frozenset[int]], costs: Costs) -> tuple[float, list[list[Op]]]:
    """Split the backwards of the micro-batches ``split[r]`` on each rank, place each deferred ``"W"`` in a
    wait it fits into (or after the rank's last pass), and return the simulated makespan with
    the schedules.  Ranks are advanced in the order of their clocks, so that when a rank
    decides, every pass that could end before its clock has been placed."""
    size = len(base)
    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * size
    position = [0] * size
    pending: list[list[int]] = [[] for _ in range(size)]
    out: list[list[Op]] = [[] for _ in range(size)]

    def cost(r: int, op: Op) -> float:
        return _cost(costs, op[0], op[1] in split[r])

    def fill(r: int) -> None:
        _run(("W", pending[r].pop(0)), r, split[r], costs, free, done, out)

    while True:
        active = [r for r in range(size) if position[r] < len(base[r]) or pending[r]]
        if not active:
            return max(free), out
        decided = False
        for r in sorted(active, key=lambda q: free[q]):
            if position[r] == len(base[r]):  # only deferred work left
                fill(r)
                decided = True
                break
            op = base[r][position[r]]
            ready = _ready(op[0], op[1], r, size - 1, done)
            if ready is None:  # nothing that ends before the others' next passes can feed it
                others = [free[q] + cost(q, base[q][position[q]]) for q in active
                          if q != r and position[q] < len(base[q])]
                ready_at_least = min(others, default=free[r])
                if pending[r] and ready_at_least - free[r] >= costs.weight_grad:
                    fill(r)
                    decided = True
                    break
                continue
            if pending[r] and ready - free[r] >= costs.weight_grad:
                fill(r)
            else:
                _run(op, r, split[r], costs, free, done, out, ready)
                position[r] += 1
                if op[0] == "B" and op[1] in split[r]:
                    pending[r].append(op[1])
            decided = True
            break
        if not decided:
            waiting = [r for r in active if pending[r]]
            if not waiting:
                raise RuntimeError("the schedules deadlock")
            fill(min(waiting, key=lambda q: free[q]))


def _run(op: Op, r: int, split: frozenset[int] | set[int], costs: Costs, free: list[float],
         done: dict[tuple[str, int, int], float], out: list[list[Op]], ready: float = 0.0) -> None:
    kind, m = op
    free[r] = max(free[r], ready) + _cost(costs, kind, m in split)
    done[(kind, m, r)] = free[r]
    out[r].append(op)


def _cost(costs: Costs, kind: str, split: bool) -> float:
    """What one pass of ``kind`` costs (a ``"B"`` that is ``split`` computes the input adjoint only)."""
    return {"F": costs.forward, "W": costs.weight_grad, "B": costs.input_grad if split else costs.backward}[kind]


def _ready(kind: str, m: int, s: int, last: int, done: dict[tuple[str, int, int], float]) -> float | None:
    """When the inputs of the pass ``kind`` of micro-batch ``m`` on pipeline stage ``s`` (of
    stages ``0 … last``) are there, from ``done``: ``(kind, m, stage) ↦ when it ended``
    (``None``: not computed yet).  The schedules' searches call this most of their time."""
    if kind == "F":
        at = done.get(("F", m, s - 1), inf) if s > 0 else 0.0
    elif kind == "B":
        at = max(done.get(("F", m, s), inf), done.get(("B", m, s + 1), inf) if s < last else 0.0)
    else:
        at = done.get(("B", m, s), inf)
    return None if at == inf else at


def interleaved(rank: int, size: int, micro_batches: int, chunks: int = 2) -> list[ChunkOp]:
    """Interleaved 1F1B (Narayanan et al. 2021, §2.2.2) on ``chunks`` virtual stages per
    rank, rank ``r`` holding stages ``r, r + P, …``: ``[("F", m, c) | ("B", m, c), …]``.

    The micro-batches go in groups of ``P``: a group's forwards run through chunk 0, then
    chunk 1, …, its backwards through the chunks in reverse.  Rank ``r`` runs
    ``2 (P - 1 - r) + (chunks - 1) P`` forwards ahead (Megatron-LM's warm-up), then alternates
    forward and backward, then drains.  The bubble shrinks ``chunks``-fold against 1F1B,
    ``(P - 1) / (chunks · M)`` of the ideal time, for ``chunks``-fold more messages.  ``M``
    need not be a multiple of ``P``: the last group is cut short (a bubble like 1F1B's
    remains then).  Every chunk's backwards run in the order of the micro-batches, as
    1F1B's do.
    """
    P, M, V = size, micro_batches, chunks
    # Megatron-LM's order for whole groups; the passes of the micro-batches ``M … `` that
    # complete the last group are then left out, which keeps the lists deadlock-free (a
    # pass depends only on passes of its own micro-batch).
    whole = -(-M // P) * P
    groups = [range(g, g + P) for g in range(0, whole, P)]
    forwards = [(m, c) for group in groups for c in range(V) for m in group]
    backwards = [(m, c) for group in groups for c in reversed(range(V)) for m in group]
    total = whole * V
    warm = min(P - 1 - rank if V == 1 else 2 * (P - 1 - rank) + (V - 1) * P, total)
    ops: list[ChunkOp] = [("F", m, c) for m, c in forwards[:warm]]
    for i in range(total - warm):
        ops += [("F", *forwards[warm + i]), ("B", *backwards[i])]
    ops += [("B", m, c) for m, c in backwards[total - warm:]]
    return [op for op in ops if op[1] < M]


def v_shape(rank: int, size: int, micro_batches: int, chunks: int = 2) -> list[ChunkOp]:
    """The V-shaped zero-bubble schedule (the placement of ZB-V, Qi et al., "Zero Bubble
    (Almost) Pipeline Parallelism", arXiv:2401.10241) on two chunks per rank, rank ``r``
    holding stages ``r`` and ``2P - 1 - r``: the first rank runs the opening *and* the
    classifier.

    The order is made by list scheduling under :data:`COSTS`: a rank that is free runs the
    first pass that is ready in the order of ``_V_PRIORITY``, a new micro-batch entering its
    first chunk only while fewer than ``2P`` are in flight on the rank, and, when none is
    ready, a deferred ``"W"`` if it has one.  Which backwards are split into ``"B"`` and
    ``"W"`` is searched as :func:`zero_bubble` does: from the shorter of every backward split
    (ZB-V's) and none, one backward of a chunk's first or last ``P`` micro-batches is split
    or joined while the simulated makespan shortens.  A split backward costs 1.2x a whole
    one on a CPU, which pays only where its ``"W"`` fills idle time: nearly everywhere with
    few micro-batches per rank, while the pipeline drains with many.  Each chunk's backwards
    run in the order of the micro-batches, and so do the passes that add into its parameter
    gradients (whole backwards and ``"W"``).  A rank holds at most ``3P`` chunk activations
    with whole backwards (1.5 P micro-batches through its layers, against 1F1B's ``P - r``),
    balanced over the ranks; deferred ``"W"`` keep theirs longer.
    """
    if chunks != 2:
        raise ValueError(f"the V-shaped schedule holds 2 chunks per rank, not {chunks}")
    return list(_v_shape(size, micro_batches, COSTS)[rank])


#: Schedules on virtual stages: name ↦ (how stages are dealt, :meth:`Partition.virtual`'s
#: ``shape``; the generator)
VIRTUAL: dict[str, tuple[str, VirtualSchedule]] = {"interleaved": ("interleaved", interleaved),
                                                   "v": ("v", v_shape)}


#: The order in which a free rank of the V looks for a pass that is ready: the backward of
#: the later stage (it frees the most), the forward of the later stage (it finishes a
#: micro-batch), a new micro-batch, the backward of the earlier stage.  Of the 24 orders, with
#: whole backwards, this one gave the shortest makespan with the least memory under
#: :data:`COSTS` at (P, m) = (2, 4), (3, 6), (4, 8), (8, 16); at (4, 16) others were 3 %
#: shorter, holding a third more.
_V_PRIORITY = (("B", 1), ("F", 1), ("F", 0), ("B", 0))


#: What :func:`v_shape`'s search may spend: simulations times ``P · m`` (one simulation costs
#: 10–18 µs per rank and micro-batch, so the search stays under a second or so at any size).
_V_WORK = 30_000


@lru_cache(maxsize=64)
def _v_shape(size: int, micro_batches: int, costs: Costs) -> tuple[tuple[ChunkOp, ...], ...]:
    P, M = size, micro_batches
    split, (best, lists) = _v_all_or_none(P, M, costs)
    # Local search, as zero_bubble's: split or unsplit one backward while the step shortens.
    # Idle time arises while the pipeline fills and drains, so only the first and last P
    # micro-batches of a chunk are candidates; the last ranks, where deferral pays most, first.
    ms = sorted(set(range(min(P, M))) | set(range(max(0, M - P), M)))
    candidates = [(r, m, c) for r in reversed(range(P)) for m in ms for c in range(2)]
    budget = _V_WORK // (P * M)
    improved = True
    while improved and budget > 0:
        improved = False
        for op in candidates[:budget]:
            budget -= 1
            span, trial = _v_lists(P, M, costs, split ^ {op})
            if span < best - 1e-9:
                best, lists, split, improved = span, trial, split ^ {op}, True
    return lists


def _all_backwards(size: int, micro_batches: int) -> frozenset[tuple[int, int, int]]:
    """Every backward of the V, ``(rank, micro-batch, chunk)``: the set that splits them all."""
    return frozenset((r, m, c) for r in range(size) for m in range(micro_batches) for c in range(2))


def _v_all_or_none(size: int, micro_batches: int, costs: Costs
                   ) -> tuple[frozenset[tuple[int, int, int]], tuple[float, tuple[tuple[ChunkOp, ...], ...]]]:
    """The V with every backward split (ZB-V's) or none, whichever is predicted shorter: its
    split set, makespan and lists (where :func:`v_shape`'s search starts)."""
    none: frozenset[tuple[int, int, int]] = frozenset()
    every = _all_backwards(size, micro_batches)
    return min(((s, _v_lists(size, micro_batches, costs, s)) for s in (none, every)), key=lambda found: found[1][0])


def _v_lists(size: int, micro_batches: int, costs: Costs, split: frozenset[tuple[int, int, int]]
             ) -> tuple[float, tuple[tuple[ChunkOp, ...], ...]]:
    """The V's lists by list scheduling, the backward of micro-batch ``m`` through chunk ``c``
    of rank ``r`` split for each ``(r, m, c)`` in ``split``; and their makespan.  A whole
    backward of a chunk runs after the chunk's deferred ``"W"`` (the earliest first, in its
    place), so that each parameter's gradient is summed in the order of the micro-batches."""
    P, M, V = size, micro_batches, 2
    where = _placement(P, V, "v")
    stage = {(r, c): s for s, (r, c) in enumerate(where)}
    last = V * P - 1
    done: dict[tuple[str, int, int], float] = {}  # (kind, m, stage) ↦ when it ended
    next_f = [[0] * V for _ in range(P)]
    next_b = [[0] * V for _ in range(P)]
    deferred: list[list[tuple[int, int]]] = [[] for _ in range(P)]  # (m, c) whose W is to come
    freed = [0] * P  # micro-batches whose first chunk's activations are freed
    free = [0.0] * P
    out: list[list[ChunkOp]] = [[] for _ in range(P)]
    t = 0.0

    def ready_now(kind: str, m: int, s: int) -> bool:
        at = _ready(kind, m, s, last, done)
        return at is not None and at <= t + 1e-12

    left = 2 * P * M + len(split)  # the backwards and the W still to run
    while left:
        for r in range(P):
            if free[r] > t:
                continue
            in_flight = next_f[r][0] - freed[r]  # micro-batches that hold the first chunk
            ready = None
            for kind, c in _V_PRIORITY:
                m = (next_b if kind == "B" else next_f)[r][c]
                if m < M and (kind == "B" or c > 0 or in_flight < 2 * P) and ready_now(kind, m, stage[(r, c)]):
                    ready = kind, m, c
                    break
            deferring = False
            if ready:
                kind, m, c = ready
                deferring = kind == "B" and (r, m, c) in split
                owed = [d for d in deferred[r] if d[1] == c] if kind == "B" and not deferring else []
                if owed:  # the chunk's earlier W goes first
                    deferred[r].remove(owed[0])
                    kind, (m, c) = "W", owed[0]
                    freed[r] += c == 0
                else:
                    (next_b if kind == "B" else next_f)[r][c] += 1
                    if deferring:
                        deferred[r].append((m, c))
                    elif kind == "B" and c == 0:
                        freed[r] += 1
            elif deferred[r]:  # idle time: a deferred parameter-gradient pass fills it
                kind, (m, c) = "W", deferred[r].pop(0)
                freed[r] += c == 0
            else:
                continue
            free[r] = t + _cost(costs, kind, deferring) / V
            done[(kind, m, stage[(r, c)])] = free[r]
            out[r].append((kind, m, c))
            left -= kind != "F"
        later = [f for f in free if f > t]
        if not later:  # not reached: some pass is always ready when no rank is busy
            raise RuntimeError("the V-shaped schedule deadlocks")
        t = min(later)
    return max(free), tuple(tuple(ops) for ops in out)


def _placement(size: int, chunks: int, shape: str) -> list[tuple[int, int]]:
    """``(rank, chunk)`` of every pipeline stage, in stage order."""
    grid = Partition.virtual(size * chunks, size, chunks, shape)
    return [grid.stage_rank(s) for s in range(grid.n_stages)]


def simulate(schedules: Sequence[Sequence[Op] | Sequence[ChunkOp]], costs: Costs = COSTS,
             shape: str = "interleaved") -> list[float]:
    """Play the ranks' schedules against each other; return when each rank finishes.

    Rank ``r``'s ``("F", m)`` needs ``("F", m)`` on rank ``r - 1``; its ``("B", m)`` needs its
    own ``("F", m)`` and ``("B", m)`` on rank ``r + 1``; its ``("W", m)`` its own ``("B", m)``.
    Each rank runs its list in order, waiting for what it needs (messages take no time).

    Operations ``(kind, m, c)`` on chunks are placed on the pipeline stages as ``shape``
    deals them (:meth:`ocnet.model.grid.Partition.virtual`); the neighbours above are then
    stages ``s ± 1``, and one chunk's pass costs ``1 / chunks`` of a rank's.

    Raises
    ------
    RuntimeError
        If the ranks deadlock: every unfinished rank waits for a pass that never comes.
    """
    size = len(schedules)
    chunks = 1 + max((op[2] for ops in schedules for op in ops if len(op) == 3), default=0)
    stage = {rc: s for s, rc in enumerate(_placement(size, chunks, shape))}
    last = size * chunks - 1
    split = [{(op[1], _chunk(op)) for op in ops if op[0] == "W"} for ops in schedules]
    done: dict[tuple[str, int, int], float] = {}  # (kind, m, stage) ↦ when it ended
    free = [0.0] * size
    position = [0] * size

    while any(position[r] < len(schedules[r]) for r in range(size)):
        progressed = False
        for r in range(size):
            while position[r] < len(schedules[r]):
                op = schedules[r][position[r]]
                kind, m, c = op[0], op[1], _chunk(op)
                at = _ready(kind, m, stage[(r, c)], last, done)
                if at is None:
                    break
                free[r] = max(free[r], at) + _cost(costs, kind, (m, c) in split[r]) / chunks
                done[(kind, m, stage[(r, c)])] = free[r]
                position[r] += 1
                progressed = True
        if not progressed:
            stuck = {r: schedules[r][position[r]] for r in range(size) if position[r] < len(schedules[r])}
            raise RuntimeError(f"the schedules deadlock: ranks wait at {stuck}")
    return free


def _chunk(op: Op | ChunkOp) -> int:
    return op[2] if len(op) == 3 else 0


def live(ops: Sequence[Op] | Sequence[ChunkOp]) -> int:
    """The most micro-batches whose activations one rank holds at once under ``ops``: from
    a micro-batch's ``"F"`` until its parameter gradients are done (its ``"W"``, or its
    ``"B"`` when there is no ``"W"``).  With chunks, a micro-batch's activations in one
    chunk count one: ``chunks`` of them weigh what a micro-batch of a whole rank's layers
    does under an unchunked schedule."""
    split = {(op[1], _chunk(op)) for op in ops if op[0] == "W"}
    held = peak = 0
    for op in ops:
        kind, m, c = op[0], op[1], _chunk(op)
        if kind == "F":
            held += 1
            peak = max(peak, held)
        elif kind == "W" or (kind == "B" and (m, c) not in split):
            held -= 1
    return peak

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

Splitting a backward costs extra on a CPU (the convolution's input and weight gradients,
computed apart, share less work: measured 1.2x the fused backward), so
:func:`zero_bubble` splits only the backward passes whose deferred ``"W"`` shortens the
simulated makespan, unlike the all-split zero-bubble schedules (Qi et al., "Zero Bubble
Pipeline Parallelism", ICLR 2024) designed for GPUs.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple, Sequence

Op = tuple[str, int]
Schedule = Callable[[int, int, int], list[Op]]


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
        kind, m = op
        return {"F": costs.forward, "W": costs.weight_grad,
                "B": costs.input_grad if m in split[r] else costs.backward}[kind]

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
            ready = _ready(op, r, size, done)
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
    cost = {"F": costs.forward, "W": costs.weight_grad,
            "B": costs.input_grad if m in split else costs.backward}[kind]
    free[r] = max(free[r], ready) + cost
    done[(kind, m, r)] = free[r]
    out[r].append(op)


def _ready(op: Op, r: int, size: int, done: dict[tuple[str, int, int], float]) -> float | None:
    """When the inputs of ``op`` on rank ``r`` are there (``None``: not computed yet)."""
    kind, m = op
    needs = []
    if kind == "F" and r > 0:
        needs.append(("F", m, r - 1))
    if kind == "B":
        needs.append(("F", m, r))
        if r < size - 1:
            needs.append(("B", m, r + 1))
    if kind == "W":
        needs.append(("B", m, r))
    if any(n not in done for n in needs):
        return None
    return max((done[n] for n in needs), default=0.0)


def simulate(schedules: Sequence[Sequence[Op]], costs: Costs = COSTS) -> list[float]:
    """Play the ranks' schedules against each other; return when each rank finishes.

    Rank ``r``'s ``("F", m)`` needs ``("F", m)`` on rank ``r - 1``; its ``("B", m)`` needs its
    own ``("F", m)`` and ``("B", m)`` on rank ``r + 1``; its ``("W", m)`` its own ``("B", m)``.
    Each rank runs its list in order, waiting for what it needs (messages take no time).

    Raises
    ------
    RuntimeError
        If the ranks deadlock: every unfinished rank waits for a pass that never comes.
    """
    size = len(schedules)
    split = [{m for kind, m in ops if kind == "W"} for ops in schedules]
    done: dict[tuple[str, int, int], float] = {}
    free = [0.0] * size
    position = [0] * size
    out: list[list[Op]] = [[] for _ in range(size)]
    while any(position[r] < len(schedules[r]) for r in range(size)):
        progressed = False
        for r in range(size):
            while position[r] < len(schedules[r]):
                op = schedules[r][position[r]]
                ready = _ready(op, r, size, done)
                if ready is None:
                    break
                _run(op, r, split[r], costs, free, done, out, ready)
                position[r] += 1
                progressed = True
        if not progressed:
            stuck = {r: schedules[r][position[r]] for r in range(size) if position[r] < len(schedules[r])}
            raise RuntimeError(f"the schedules deadlock: ranks wait at {stuck}")
    return free


def live(ops: Sequence[Op]) -> int:
    """The most micro-batches whose activations one rank holds at once under ``ops``: from
    a micro-batch's ``"F"`` until its parameter gradients are done (its ``"W"``, or its
    ``"B"`` when there is no ``"W"``)."""
    split = {m for kind, m in ops if kind == "W"}
    held = peak = 0
    for kind, m in ops:
        if kind == "F":
            held += 1
            peak = max(peak, held)
        elif kind == "W" or (kind == "B" and m not in split):
            held -= 1
    return peak

"""The virtual-clock communicator: delivery, clock order, collectives, deadlocks."""
from __future__ import annotations

import math

import pytest
import torch

from ocnet.perf.replay import Deadlock, Link, make_comms, run
from ocnet.ranks import timeline

FREE = Link(latency=0.0, bandwidth=math.inf, reduction=0.0)


def one_f_one_b(rank: int, size: int, micro_batches: int) -> list[tuple[str, int]]:
    """Rank ``rank``'s 1F1B order: ``P - 1 - rank`` forwards ahead, then alternate."""
    warm = min(size - 1 - rank, micro_batches)
    ops = [("F", m) for m in range(warm)]
    for i in range(micro_batches - warm):
        ops += [("F", warm + i), ("B", i)]
    return ops + [("B", m) for m in range(micro_batches - warm, micro_batches)]


def pipeline(micro_batches: int):
    """A toy 1F1B pipeline in the style of :func:`ocnet.ranks.sweep.train`: spans and a Comm."""

    def rank_fn(comm):
        first, last = comm.rank == 0, comm.rank == comm.size - 1
        sends = []
        for op, m in one_f_one_b(comm.rank, comm.size, micro_batches):
            if op == "F":
                u = torch.full((2,), float(m)) if first else comm.recv(comm.rank - 1, 1)
                with timeline.span("forward_graph", steps=1, micro_batch=m):
                    u = u + 1
                if not last:
                    sends.append(comm.isend(u, comm.rank + 1, 1))
            else:
                g = torch.ones(2) if last else comm.recv(comm.rank + 1, 2)
                with timeline.span("backward", steps=1, micro_batch=m):
                    g = g * 2
                if not first:
                    sends.append(comm.isend(g, comm.rank - 1, 2))
        for s in sends:
            s.wait()
        return float(u.sum())

    return rank_fn


@pytest.mark.parametrize("P,n", [(1, 1), (2, 3), (4, 8), (5, 2)])
def test_one_f_one_b_critical_path(P, n):
    """P ranks × n micro-batches, forward f and backward b per stage: (n + P − 1)(f + b)."""
    f, b = 0.003, 0.005
    replay = run(P, pipeline(n), {"forward_graph": f, "backward": b}, link=FREE)
    assert replay.time == pytest.approx((n + P - 1) * (f + b), rel=1e-12)
    # the data went through: the last rank saw micro-batch n-1's value plus P steps
    assert replay.results[-1] == pytest.approx(2 * (n - 1 + P))


def test_message_arrival_and_receive_clock():
    """Arrival = send clock + latency + bytes/bandwidth; a receive takes max(own, arrival);
    the sender is busy for the transfer only."""
    link = Link(latency=1e-3, bandwidth=1e6, reduction=0.0)
    t = torch.zeros(250)  # 1000 bytes: 1 ms on the wire

    def rank_fn(comm):
        if comm.rank == 0:
            with timeline.span("forward", steps=2):
                pass
            comm.send(t, 1, 7)
            return comm.clock
        with timeline.span("forward", steps=1):
            pass
        early = comm.clock
        comm.recv(0, 7)
        return early, comm.clock

    replay = run(2, rank_fn, {"forward": 0.01}, link=link)
    assert replay.results[0] == pytest.approx(0.02 + 1e-3)
    assert replay.results[1] == (pytest.approx(0.01), pytest.approx(0.02 + 1e-3 + 1e-3))
    # a receiver that is later than the message keeps its own clock
    replay = run(2, rank_fn, {"forward": 0.01}, link=Link(latency=0.0, bandwidth=math.inf))
    assert replay.clocks == [pytest.approx(0.02), pytest.approx(0.02)]


def test_messages_match_in_posting_order():
    def rank_fn(comm):
        if comm.rank == 0:
            for k in range(3):
                comm.isend(torch.tensor([float(k)]), 1, 5)
            comm.isend(torch.tensor([9.0]), 1, 6)
            return None
        later = comm.irecv(0, 6)
        reqs = [comm.irecv(0, 5) for _ in range(3)]
        return [float(r.wait()) for r in reversed(reqs)] + [float(later.wait())]

    assert run(2, rank_fn, {}, link=FREE).results[1] == [2.0, 1.0, 0.0, 9.0]


def test_collectives_take_the_latest_clock_plus_rounds():
    link = Link(latency=0.0, bandwidth=math.inf, reduction=1e-3)

    def rank_fn(comm):
        with timeline.span("update", steps=comm.rank + 1):
            pass
        s = comm.allreduce(float(comm.rank))
        m = comm.allreduce(torch.tensor([comm.rank, -comm.rank]), op="max")
        pending = comm.iallreduce(torch.ones(3))
        b = comm.bcast({"from": comm.rank}, root=2)
        g = comm.gather(comm.rank, root=1)
        comm.barrier()
        return s, m.tolist(), pending.wait().tolist(), b, g, comm.clock

    P = 5
    replay = run(P, rank_fn, {"update": 0.01}, link=link)
    rounds = math.ceil(math.log2(P))
    for r, (s, m, total, b, g, clock) in enumerate(replay.results):
        assert s == sum(range(P)) and isinstance(s, float)
        assert m == [P - 1, 0]
        assert total == [float(P)] * 3
        assert b == {"from": 2}
        assert g == (list(range(P)) if r == 1 else None)
        # the latest rank enters at P × 0.01; then five collectives of `rounds` rounds each
        # in sequence (the nonblocking one overlaps those after it)
        assert clock == pytest.approx(P * 0.01 + 5 * rounds * 1e-3)


def test_exchange_and_irecv_before_isend_do_not_deadlock():
    """Every rank posts receives from both neighbours, then sends: a ring exchange."""

    def rank_fn(comm):
        left, right = (comm.rank - 1) % comm.size, (comm.rank + 1) % comm.size
        got = comm.exchange({left: torch.tensor([comm.rank]), right: torch.tensor([comm.rank])}, [left, right], tag=3)
        return sorted(int(v) for v in got.values())

    replay = run(4, rank_fn, {}, link=FREE)
    assert replay.results[0] == [1, 3]
    assert replay.results[2] == [1, 3]


def test_a_hanging_schedule_raises_deadlock():
    def rank_fn(comm):
        return comm.recv((comm.rank + 1) % comm.size, 1)  # everybody receives, nobody sends

    with pytest.raises(Deadlock):
        run(3, rank_fn, {}, link=FREE)


def test_an_error_on_one_rank_ends_the_replay():
    def rank_fn(comm):
        if comm.rank == 1:
            raise ValueError("boom")
        return comm.recv(1, 1)

    with pytest.raises(ValueError, match="boom"):
        run(3, rank_fn, {}, link=FREE)


def test_clocks_continue_on_the_same_communicators():
    comms = make_comms(2, FREE)

    def rank_fn(comm):
        with timeline.span("head", steps=1):
            pass
        comm.barrier()

    first = run(2, rank_fn, {"head": 0.5}, comms=comms)
    second = run(2, rank_fn, {"head": 0.5}, comms=comms)
    assert first.time == pytest.approx(0.5) and second.time == pytest.approx(1.0)
    assert [e[0] for e in second.events[0]] == ["head"]


@pytest.mark.parametrize("sender_lags", [False, True])
def test_a_test_answers_by_the_virtual_clocks_not_the_threads(sender_lags):
    """Rank 1 sends at virtual time 5 ms.  Rank 0 asks at 3 ms (not there) and at 6 ms
    (there), and gets the same answers whether rank 1's thread runs late or early; a
    receive that can only come after the asking rank acts is answered at once ("not there")."""
    import time

    def rank_fn(comm):
        if comm.rank == 1:
            if sender_lags:
                time.sleep(0.05)
            with timeline.span("forward", steps=5):
                pass
            comm.isend(torch.ones(1), 0, 7).wait()
            comm.recv(0, 8)  # waits on rank 0: its own message can come only after that
            return None
        early = comm.irecv(1, 7)
        with timeline.span("forward", steps=3):
            pass
        answers = [early.test()]
        with timeline.span("forward", steps=3):
            pass
        answers.append(early.test())
        late = comm.irecv(1, 9)  # never sent before rank 0 sends tag 8
        answers.append(late.test())
        comm.isend(torch.ones(1), 1, 8).wait()
        return answers

    replay = run(2, rank_fn, {"forward": 1e-3}, link=FREE)
    assert replay.results[0] == [False, True, False]


@pytest.mark.parametrize("P,n", [(1, 2), (3, 4)])
def test_time_outside_spans_lengthens_each_span_on_the_critical_path(P, n):
    """``costs["outside"]`` is charged once per compute span: the 1F1B path becomes
    (n + P − 1)(f + b + 2 o)."""
    f, b, o = 0.003, 0.005, 0.0007
    replay = run(P, pipeline(n), {"forward_graph": f, "backward": b, "outside": o}, link=FREE)
    assert replay.time == pytest.approx((n + P - 1) * (f + b + 2 * o), rel=1e-12)

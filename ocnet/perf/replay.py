"""Replaying P ranks in one process against virtual clocks.

Each virtual rank is a Python thread with a :class:`VirtualComm`: the communicator every
solver talks through, except that the tensors pass between threads and each rank keeps a
clock of its own in seconds.  Nothing is timed: a compute span of the solver's own code
(:func:`ocnet.ranks.timeline.span`) advances its rank's clock by a calibrated cost
(:class:`ChargingRecorder`), and the communicator advances clocks by the link model
(:class:`Link`):

* a message sent at clock ``t`` arrives at ``t + latency + bytes / bandwidth``; the sender is
  busy for ``bytes / bandwidth`` (the copy into the transport);
* a receive sets the receiver's clock to ``max(clock, arrival)``;
* a collective sets every participant's clock to the latest of their clocks plus
  ``ceil(log2 P) × (reduction + bytes / bandwidth)`` (a tree of rounds).

The largest clock after a step is the step's time; the critical path is whatever the
solver's own schedule makes it.  Messages match like MPI's: by source, destination and tag,
in the order posted.  A schedule that would hang (every rank waiting, nothing deliverable)
raises :class:`Deadlock` instead.
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..ranks import timeline
from ..ranks.comm import Comm, Request
from ..ranks.watchdog import Progress

#: The compute kinds of :data:`ocnet.ranks.timeline.KINDS` (the others are the communicator's).
COMPUTE = ("forward", "forward_graph", "backward", "vjp", "vjp_recompute", "weight_grad", "head", "update")


class Deadlock(RuntimeError):
    """Every virtual rank waits and no message or collective can complete."""


@dataclass(frozen=True)
class Link:
    """The cost model of communication.

    Attributes
    ----------
    latency : float
        Seconds from the end of a send to the message's arrival, beyond the transfer.
    bandwidth : float
        Bytes per second of one transfer.
    reduction : float
        Seconds per round of a collective (its latency and the arithmetic on a few numbers).
    """

    latency: float = 20e-6
    bandwidth: float = 2e9
    reduction: float = 30e-6

    def transfer(self, nbytes: float) -> float:
        return nbytes / self.bandwidth if math.isfinite(self.bandwidth) else 0.0

    def collective(self, size: int, nbytes: float) -> float:
        """Seconds one collective of ``size`` ranks over ``nbytes`` payload takes."""
        rounds = math.ceil(math.log2(size)) if size > 1 else 0
        return rounds * (self.reduction + self.transfer(nbytes))

    def allgather(self, size: int, nbytes: float) -> float:
        """Seconds an allgather of ``nbytes`` from each of ``size`` ranks takes: the rounds of
        recursive doubling, in which every rank receives the other ``size - 1`` messages."""
        rounds = math.ceil(math.log2(size)) if size > 1 else 0
        return rounds * self.reduction + self.transfer((size - 1) * nbytes)


#: The key of ``costs`` for the seconds a real step spends outside its compute spans, per
#: span (the solver's bookkeeping between them: residual norms, levels, warm starts, Python).
OUTSIDE = "outside"


class ChargingRecorder(timeline.Recorder):
    """A :class:`~ocnet.ranks.timeline.Recorder` on a virtual clock: a compute span advances the
    clock by its cost (:meth:`charge`) and records the event.  A kind without a cost is
    charged nothing but still recorded, and counted in :attr:`uncharged`."""

    def __init__(self, comm: "VirtualComm", costs: Mapping[str, float]) -> None:
        self.comm, self.costs = comm, dict(costs)
        super().__init__(clock=lambda: comm.clock)
        self.origin = 0.0
        self.uncharged: dict[str, int] = {}  # kinds met without a cost: reported, not guessed

    def span(self, kind: str, info: dict[str, Any]) -> Any:
        return _Charge(self, kind, info)

    def charge(self, kind: str, info: dict[str, Any]) -> float:
        """Seconds a span costs: ``costs[kind] × steps`` (``steps`` absent: 1); a ``head``
        span, which covers no layer step, costs ``costs["head"]`` per span.  Every compute
        span adds ``costs["outside"]`` (:data:`OUTSIDE`; 0 when absent): the work a real step
        does between its spans, counted per span."""
        cost = self.costs.get(kind)
        between = self.costs.get(OUTSIDE, 0.0)
        if cost is None:
            self.uncharged[kind] = self.uncharged.get(kind, 0) + 1
            return between
        return between + (cost if kind == "head" else cost * float(info.get("steps", 1)))


class _Charge:
    __slots__ = ("rec", "kind", "info", "t0")

    def __init__(self, rec: ChargingRecorder, kind: str, info: dict[str, Any]) -> None:
        self.rec, self.kind, self.info = rec, kind, info

    def __enter__(self) -> None:
        self.t0 = self.rec.comm.clock

    def __exit__(self, *exc: object) -> None:
        rec = self.rec
        if self.kind in COMPUTE:
            rec.comm.clock += rec.charge(self.kind, self.info)
        rec.events.append((self.kind, self.t0, rec.comm.clock, self.info))


class _Slot:
    """One collective in progress: contributions by rank, then the result."""

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}
        self.clocks: dict[int, float] = {}
        self.result: Any = None
        self.finish = 0.0
        self.done = False
        self.read = 0


class Fabric:
    """What the virtual ranks of one replay share: mailboxes, collectives, the link.

    Parameters
    ----------
    size : int
        Number of virtual ranks P.
    link : Link
        The cost model.
    message_bytes : callable, optional
        ``tensor ↦`` the bytes a message of it stands for (default: its own size); a replay
        on a miniature network scales them to the real network's states.
    """

    def __init__(self, size: int, link: Link = Link(),
                 message_bytes: Callable[[torch.Tensor], float] | None = None) -> None:
        self.size, self.link = size, link
        self.message_bytes = message_bytes or (lambda t: float(t.numel() * t.element_size()))
        lock = threading.RLock()
        self.cond = threading.Condition(lock)
        # one condition per rank on the same lock: a message wakes its receiver only (with
        # a thousand ranks, waking every waiter for every message dominates the replay)
        self.rank_cond = [threading.Condition(lock) for _ in range(size)]
        self.messages: dict[tuple[int, int, int], deque] = {}
        self.receives: dict[tuple[int, int, int], deque] = {}
        self.slots: dict[int, _Slot] = {}
        self.waiting: dict[int, Callable[[], bool]] = {}
        self.testing: dict[int, float] = {}  # waiting ranks that test a request, and their clocks
        self.released: set[int] = set()  # testing ranks told: nothing can arrive before your clock
        self.finished: set[int] = set()
        self.failed: BaseException | None = None

    def block(self, rank: int, ready: Callable[[], bool], what: str, clock: float | None = None) -> None:
        """Wait (really) until ``ready()``; called with :attr:`cond` held.

        With ``clock`` the wait is a test (may a message be there by that virtual time?) and
        also ends, ``ready()`` still false, once every rank waits and this one's clock is the
        least of the testing ranks': every message still to come then follows some testing
        rank's next pass, so none can arrive before that least clock."""
        try:
            while not ready():
                if self.failed is not None:
                    raise _Aborted from None
                if rank in self.released:
                    return
                self.waiting[rank] = ready
                if clock is not None:
                    self.testing[rank] = clock
                try:
                    if self._stalled():
                        if not self.testing:
                            self.failed = Deadlock(f"every rank waits and nothing can arrive (rank {rank}: {what})")
                            self.wake_all()
                            raise self.failed
                        first = min(self.testing, key=lambda q: (self.testing[q], q))
                        self.released.add(first)
                        if first == rank:
                            continue
                        self.rank_cond[first].notify()
                    self.rank_cond[rank].wait(timeout=1.0)
                finally:
                    del self.waiting[rank]
                    self.testing.pop(rank, None)
        finally:
            self.released.discard(rank)

    def _stalled(self) -> bool:
        """Every rank waits or has finished, and no wait can end."""
        return len(self.waiting) + len(self.finished) == self.size and not any(p() for p in self.waiting.values())

    def wake_all(self) -> None:
        """Wake every waiting rank (a collective completed, a rank failed or finished)."""
        for r in list(self.waiting):
            self.rank_cond[r].notify()


class _Aborted(Exception):
    """Another virtual rank failed: this one stops too."""


class VirtualRequest(Request):
    """A receive (or a nonblocking collective) on a virtual clock: :meth:`wait` moves the
    owner's clock to the completion time."""

    def __init__(self, comm: "VirtualComm", what: str, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.comm, self.what, self.device = comm, what, device
        self.arrival = 0.0
        self.finish: Callable[[Any], Any] = lambda v: v

    def test(self) -> bool:
        """Whether the message is there by the owner's clock.  The answer waits until it is
        certain (:meth:`Fabric.block`), so that a replay decides as the virtual ranks'
        clocks say and not as the threads happen to run."""
        comm = self.comm
        with comm.fabric.cond:
            comm.fabric.block(comm.rank, _posted(self), self.what, clock=comm.clock)
            return self._done and self.arrival <= comm.clock

    def wait(self) -> Any:
        comm = self.comm
        with comm.fabric.cond:
            comm.fabric.block(comm.rank, _posted(self), self.what)
        if self.arrival > comm.clock:
            t0 = comm.clock
            comm.clock = self.arrival
            comm.recorder_event("wait", t0, {"for": self.what})
        value = self.finish(self._value)
        return value.to(self.device) if isinstance(value, torch.Tensor) else value


def _posted(request: Request) -> Callable[[], bool]:
    """Whether the message of a request has been sent (whatever its virtual arrival)."""
    return lambda: request._done


class _Done(Request):
    def __init__(self) -> None:
        super().__init__()
        self._done = True


class VirtualComm(Comm):
    """A :class:`~ocnet.ranks.comm.Comm` between threads of one process, on a virtual clock.

    Attributes
    ----------
    clock : float
        This rank's virtual time in seconds.
    recorder : ChargingRecorder or None
        Where communication events go (set by :func:`run`).
    """

    def __init__(self, fabric: Fabric, rank: int) -> None:  # noqa: D401 - no MPI underneath
        self.mpi = None
        self.fabric, self.rank, self.size = fabric, rank, fabric.size
        self.bytes_sent = 0
        self.cuda_aware = False
        self.progress = Progress()
        self._watchdog = None
        self.clock = 0.0
        self.recorder: ChargingRecorder | None = None
        self._seq = 0

    def recorder_event(self, kind: str, t0: float, info: dict[str, Any]) -> None:
        if self.recorder is not None:
            self.recorder.events.append((kind, t0, self.clock, info))

    # -- point to point ---------------------------------------------------------------------
    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> Request:
        if not 0 <= dest < self.size or dest == self.rank:
            raise ValueError(f"rank {self.rank} cannot send to rank {dest} of {self.size}")
        fab = self.fabric
        nbytes = fab.message_bytes(tensor)
        self.bytes_sent += tensor.numel() * tensor.element_size()
        t0 = self.clock
        self.clock += fab.link.transfer(nbytes)
        self.recorder_event("send", t0, {"peer": dest, "bytes": nbytes})
        arrival = self.clock + fab.link.latency
        value = tensor.detach().clone()
        key = (self.rank, dest, tag)
        with fab.cond:
            pending = fab.receives.get(key)
            if pending:
                req = pending.popleft()
                req._value, req.arrival, req._done = value, arrival, True
            else:
                fab.messages.setdefault(key, deque()).append((value, arrival))
            fab.rank_cond[dest].notify()
        return _Done()

    def irecv(self, source: int, tag: int = 0, device: torch.device | str = "cpu") -> Request:
        if not 0 <= source < self.size or source == self.rank:
            raise ValueError(f"rank {self.rank} cannot receive from rank {source} of {self.size}")
        fab = self.fabric
        req = VirtualRequest(self, f"recv from {source}, tag {tag}", device)
        key = (source, self.rank, tag)
        with fab.cond:
            queued = fab.messages.get(key)
            if queued:
                req._value, req.arrival = queued.popleft()
                req._done = True
            else:
                fab.receives.setdefault(key, deque()).append(req)
        return req

    def wait_any(self, requests: Sequence[Request]) -> None:
        """Move the clock to the earliest arrival among ``requests``.  The first must be
        certain to come; another counts where it is certain to arrive before the first."""
        fab = self.fabric
        with fab.cond:
            first = requests[0]
            fab.block(self.rank, _posted(first), "any request")
            t = getattr(first, "arrival", 0.0)
            for r in requests[1:]:
                fab.block(self.rank, _posted(r), "any request", clock=t)
                if r._done:
                    t = min(t, getattr(r, "arrival", 0.0))
        if t > self.clock:
            t0, self.clock = self.clock, t
            self.recorder_event("wait", t0, {"for": "any request"})

    # -- collectives ------------------------------------------------------------------------
    def _collective(self, value: Any, combine: Callable[[list[Any]], Any], nbytes: float, what: str,
                    seconds: Callable[[list[Any]], float] | None = None) -> VirtualRequest:
        """Post this rank's part of its next collective; the request completes when all have,
        the link's collective over ``nbytes`` (or ``seconds`` of every rank's part) later."""
        fab, seq = self.fabric, self._seq
        self._seq += 1
        req = VirtualRequest(self, what)
        with fab.cond:
            slot = fab.slots.setdefault(seq, _Slot())
            slot.values[self.rank], slot.clocks[self.rank] = value, self.clock
            if len(slot.values) == self.size:
                slot.result = combine([slot.values[r] for r in range(self.size)])
                values = [slot.values[r] for r in range(self.size)]
                cost = fab.link.collective(self.size, nbytes) if seconds is None else seconds(values)
                slot.finish = max(slot.clocks.values()) + cost
                slot.done = True
                fab.wake_all()

        def ready() -> bool:
            return slot.done

        def finish(_: Any) -> Any:
            with fab.cond:
                fab.block(self.rank, ready, what)
                slot.read += 1
                if slot.read == self.size:
                    del fab.slots[seq]
                req.arrival = slot.finish
                return slot.result

        req.finish = finish
        req._done = True  # the wait itself blocks in finish, once the owner asks
        req.arrival = 0.0
        return req

    def _complete(self, req: VirtualRequest) -> Any:
        value = req.finish(None)
        if req.arrival > self.clock:
            t0 = self.clock
            self.clock = req.arrival
            self.recorder_event("reduce", t0, {"what": req.what})
        return value

    def allreduce(self, value: torch.Tensor | float, op: str = "sum") -> Any:
        return self._complete(self._reduce(value, op))

    def iallreduce(self, value: torch.Tensor, op: str = "sum") -> Request:
        req = self._reduce(value.detach().to("cpu", copy=True), op)
        comm = self

        class _Pending(Request):
            def test(self) -> bool:
                return False

            def wait(self) -> Any:
                return comm._complete(req)

        return _Pending()

    def _reduce(self, value: Any, op: str) -> VirtualRequest:
        if op not in ("sum", "max", "min"):
            raise ValueError(f"unknown reduction {op!r}")
        if isinstance(value, torch.Tensor):
            t = value.detach().clone()
            nbytes = float(t.numel() * t.element_size())

            def combine(vs: list[Any]) -> Any:
                stacked = torch.stack([v.to(t.device) for v in vs])
                out = {"sum": stacked.sum(0), "max": stacked.amax(0), "min": stacked.amin(0)}[op]
                return out.to(t.dtype)
            return self._collective(t, combine, nbytes, "allreduce")
        kind: Any = type(value)
        fn: Any = {"sum": sum, "max": max, "min": min}[op]
        return self._collective(value, lambda vs: kind(fn(vs)), 8.0, "allreduce")

    def allgather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        t = tensor.detach().to("cpu", copy=True).flatten()
        self.bytes_sent += t.numel() * t.element_size()
        link = self.fabric.link

        def seconds(parts: list[torch.Tensor]) -> float:  # the largest part sets the pace
            return link.allgather(self.size, max(float(p.numel() * p.element_size()) for p in parts))
        return self._complete(self._collective(t, list, 0.0, "allgather", seconds))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self._complete(self._collective(obj, lambda vs: vs[root], 64.0, "bcast"))

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        out = self._complete(self._collective(obj, list, 64.0, "gather"))
        return out if self.rank == root else None

    def barrier(self) -> None:
        self._complete(self._collective(None, lambda vs: None, 0.0, "barrier"))

    def abort(self, code: int = 1) -> None:
        raise RuntimeError(f"virtual rank {self.rank} aborted with code {code}")

    def start_watchdog(self, timeout: float) -> None:
        """A replay does not stall unnoticed: :class:`Deadlock` says so at once."""

    def stop_watchdog(self) -> None:
        pass


@dataclass
class Replay:
    """What a replay yields.

    Attributes
    ----------
    clocks : list of float
        Each rank's virtual clock at the end, seconds.
    events : list of list of Event
        Each rank's timeline ``(kind, start, end, info)`` on its virtual clock.
    results : list
        What each rank's function returned.
    uncharged : dict of str to int
        Compute kinds met without a calibrated cost, with how often.
    """

    clocks: list[float]
    events: list[list[timeline.Event]]
    results: list[Any]
    uncharged: dict[str, int] = field(default_factory=dict)

    @property
    def time(self) -> float:
        """The makespan: the largest clock."""
        return max(self.clocks)


def run(size: int, rank_fn: Callable[[VirtualComm], Any], costs: Mapping[str, float], *,
        link: Link = Link(), message_bytes: Callable[[torch.Tensor], float] | None = None,
        comms: Sequence[VirtualComm] | None = None) -> Replay:
    """Run ``rank_fn(comm)`` for ``size`` virtual ranks, one thread each, and read the clocks.

    Parameters
    ----------
    rank_fn : callable
        ``VirtualComm ↦ result``: one rank's part (builds or takes its solver, steps it).
    costs : mapping
        Seconds per layer step of each compute kind (:data:`COMPUTE`).
    comms : sequence of VirtualComm, optional
        Communicators of an earlier :func:`run` to continue on (their clocks go on from where
        they stopped; pass :func:`make_comms`'s to set up first, then reset the clocks).

    Raises
    ------
    Deadlock
        When the schedule hangs; any exception of a rank is raised again here.
    """
    comms = list(comms) if comms is not None else make_comms(size, link, message_bytes)
    fab = comms[0].fabric
    fab.failed = None
    fab.finished.clear()
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size
    recorders = [ChargingRecorder(c, costs) for c in comms]

    def body(r: int) -> None:
        comm = comms[r]
        comm.recorder = recorders[r]
        try:
            with timeline.recording(recorders[r], thread=True):
                results[r] = rank_fn(comm)
        except _Aborted:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            errors[r] = e
            with fab.cond:
                if fab.failed is None:
                    fab.failed = e
                fab.wake_all()
        finally:
            with fab.cond:
                fab.finished.add(r)
                fab.wake_all()

    threads = [threading.Thread(target=body, args=(r,), name=f"virtual-rank-{r}", daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = fab.failed if fab.failed is not None else next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    uncharged: dict[str, int] = {}
    for rec in recorders:
        for k, n in rec.uncharged.items():
            uncharged[k] = uncharged.get(k, 0) + n
    return Replay([c.clock for c in comms], [rec.events for rec in recorders], results, uncharged)


class VirtualReplicas(Comm):
    """The data communicator of a virtual rank whose group is one of ``size`` identical data
    groups (:mod:`ocnet.ranks.replicas`): only this group is replayed, so every group sends
    what this rank sends.  A reduction returns ``size`` × the rank's value, an allgather
    ``size`` copies of its tensor, and each advances the rank's clock by the link's
    collective over ``size`` ranks; a tensor's bytes count ``scale`` times (the configured
    network's gradient over the miniature's), a number's as 8 bytes of bookkeeping."""

    def __init__(self, comm: VirtualComm, size: int, scale: float) -> None:  # noqa: D401 - no MPI underneath
        self.mpi = None
        self.comm, self.rank, self.size, self.scale = comm, 0, size, scale
        self.bytes_sent = 0
        self.progress = comm.progress

    def _charge(self, seconds: float, what: str, nbytes: float) -> None:
        comm = self.comm
        t0 = comm.clock
        comm.clock += seconds
        comm.recorder_event("reduce", t0, {"what": what, "bytes": nbytes})

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        nbytes = value.numel() * value.element_size() * self.scale if isinstance(value, torch.Tensor) else 8.0
        self._charge(self.comm.fabric.link.collective(self.size, nbytes), "gradient average", nbytes)
        return value * self.size if op == "sum" else value

    def allgather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        nbytes = tensor.numel() * tensor.element_size() * self.scale
        self._charge(self.comm.fabric.link.allgather(self.size, nbytes), "compressed gradients", nbytes)
        return [tensor.detach().flatten()] * self.size


def make_comms(size: int, link: Link = Link(),
               message_bytes: Callable[[torch.Tensor], float] | None = None) -> list[VirtualComm]:
    """``size`` virtual communicators on one new :class:`Fabric`."""
    fab = Fabric(size, link, message_bytes)
    return [VirtualComm(fab, r) for r in range(size)]

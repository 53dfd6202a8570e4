"""Communication between ranks: the only module that imports mpi4py.

Every solver talks to its neighbours through a :class:`Comm`, so every byte is counted
and every wait is *polite*: requests are nonblocking and polled with a short sleep, which
yields the core to ranks that compute.  On a machine with fewer cores than ranks, blocking
MPI waits spin and starve those ranks (measured 4x slower with 8 ranks on 2 cores).

:class:`SelfComm` is the single-process stand-in (P = 1, no ``mpirun`` needed) with the same
interface.  Tensors on a GPU travel through reused pinned host buffers unless the MPI
library is CUDA-aware, so no CUDA-aware MPI build is needed.

Every wait records what it waits for in the communicator's :class:`~ocnet.ranks.watchdog.Progress`
(in its slow path only: a wait that completes while spinning just counts), so that the stall
watchdog (:meth:`Comm.start_watchdog`) can say who waits for whom.  While a timeline records
(:mod:`ocnet.ranks.timeline`), posting a message is a ``"send"`` event, every wait a ``"wait"``
event (a collective's a ``"reduce"`` event), fast path included.
"""
from __future__ import annotations

import contextlib
import faulthandler
import os
import pickle
import socket
import sys
import time
import traceback
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from . import supervisor, tags, timeline
from .watchdog import Progress, Watchdog, say

# Polling: spin briefly (a message that is already there costs no sleep), then sleep in
# steps that grow to ``_MAX_SLEEP``.
_SPIN = 50
_MIN_SLEEP = 2e-5
_MAX_SLEEP = 2e-4

_HEADER_LEN = 10  # [dtype code, ndim, dims...]: tensors of up to 8 dimensions
_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64,
           torch.int32, torch.uint8, torch.bool]
_CODE = {dt: i for i, dt in enumerate(_DTYPES)}


def _wait(test: Callable[[], bool], progress: Progress, what: tuple) -> None:
    """Wait until ``test()`` is true, sleeping between polls; ``what`` says what for.

    Its duration adds to ``progress.waited``.  While a timeline records
    (:mod:`ocnet.ranks.timeline`), the wait becomes a ``"wait"`` event (``"reduce"`` for a
    collective) naming ``what``; otherwise it costs one lookup more."""
    rec = timeline.current()
    t0 = rec.clock() if rec is not None else 0.0
    start = time.perf_counter()
    for _ in range(_SPIN):
        if test():
            break
    else:
        progress.waiting = what
        try:
            sleep = _MIN_SLEEP
            while not test():
                time.sleep(sleep)
                sleep = min(2 * sleep, _MAX_SLEEP)
        finally:
            progress.waiting = None
    progress.ticks += 1
    progress.waited[what[0] not in _POINT_TO_POINT] += time.perf_counter() - start
    if rec is not None:
        _record(rec, t0, what)


_POINT_TO_POINT = ("send", "recv", "request")


def _record(rec: timeline.Recorder, t0: float, what: tuple) -> None:
    """A wait that began at ``t0`` and ends now, as an event: ``what`` is ``("send" | "recv",
    peer, tag)`` for a point-to-point request, the collective's name (and root) otherwise."""
    if what[0] in ("send", "recv"):
        kind, info = "wait", {"on": what[0], "peer": what[1], "tag": what[2]}
    elif what[0] == "request":
        kind, info = "wait", {"on": "request"}
    else:
        kind, info = "reduce", {"op": what[0]} if len(what) == 1 else {"op": what[0], "root": what[1]}
    rec.events.append((kind, t0 - rec.origin, rec.clock() - rec.origin, info))


_NOBODY = Progress()  # for requests that belong to no communicator


class Request:
    """A pending send or receive; :meth:`wait` polls politely and returns the tensor."""

    def __init__(self, mpi_requests: Sequence[Any] = (), finish: Callable[[], Any] | None = None,
                 keep: Any = None, release: Callable[[], None] | None = None,
                 progress: Progress = _NOBODY, what: tuple = ("request",)) -> None:
        self._reqs = list(mpi_requests)
        self._progress, self._what = progress, what  # for the watchdog
        self._finish = finish  # computes the value; may return the next phase's Request
        self._keep = keep  # buffers that must outlive the transfer
        self._release = release  # hands a staging buffer back once the transfer is over
        self._done = False
        self._value = None

    def test(self) -> bool:
        if not self._done:
            self._reqs = [r for r in self._reqs if not r.Test()]
            if self._reqs:
                return False
            if self._finish is not None:
                self._value = self._finish()
                self._finish = None
                if isinstance(self._value, Request):  # a two-phase receive: header, then payload
                    nxt, self._value = self._value, None
                    self._reqs, self._finish, self._keep = nxt._reqs, nxt._finish, nxt._keep
                    self._release = nxt._release
                    return self.test()
            if self._release is not None:
                self._release()
            self._done, self._keep, self._release = True, None, None
        return True

    def wait(self) -> Any:
        _wait(self.test, self._progress, self._what)
        return self._value


class Comm:
    """Tensor communication over an mpi4py communicator.

    Parameters
    ----------
    mpi_comm : mpi4py.MPI.Comm
        The communicator; library code receives it, only the entry point
        (:mod:`ocnet.runs.job`, through :func:`world`) picks ``COMM_WORLD``.
    cuda_aware : bool or None
        Whether the MPI library takes device pointers.  ``None`` detects it (MPICH and
        Open MPI report it); otherwise GPU tensors are staged through pinned host buffers.
    """

    #: The ranks that hold the same layers in the other data groups (:mod:`ocnet.ranks.replicas`
    #: sets it on a grid's layer communicators).
    replicas: "Comm | None" = None

    def __init__(self, mpi_comm: Any, cuda_aware: bool | None = None) -> None:
        self.mpi = mpi_comm
        self.rank: int = mpi_comm.Get_rank()
        self.size: int = mpi_comm.Get_size()
        self.bytes_sent = 0  # payload bytes this rank has sent, cumulative
        self.cuda_aware = _detect_cuda_aware() if cuda_aware is None else cuda_aware
        self._pinned: dict[tuple, list[torch.Tensor]] = {}  # free staging buffers
        self.progress = Progress()
        self._watchdog: Watchdog | None = None

    # -- point to point -------------------------------------------------------------------
    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> Request:
        """Start sending ``tensor`` (any shape, dtype and device) to ``dest``."""
        n = tensor.numel() * tensor.element_size()
        self.bytes_sent += n
        rec = timeline.current()
        if rec is None:
            return self._isend(tensor, dest, tag)
        t0 = rec.clock()
        request = self._isend(tensor, dest, tag)
        rec.events.append(("send", t0 - rec.origin, rec.clock() - rec.origin, {"peer": dest, "tag": tag, "bytes": n}))
        return request

    def _isend(self, tensor: torch.Tensor, dest: int, tag: int) -> Request:
        from mpi4py import MPI
        t = tensor.detach()
        if t.dim() > _HEADER_LEN - 2:
            raise ValueError(f"cannot send a tensor of {t.dim()} dimensions")
        header = np.zeros(_HEADER_LEN, dtype=np.int64)
        header[0], header[1] = _CODE[t.dtype], t.dim()
        header[2:2 + t.dim()] = t.shape
        if t.device.type == "cpu" or self.cuda_aware:
            buf, release = t.contiguous(), None
        else:
            buf, release = self._staging(t.dtype, t.shape)
            buf.copy_(t)
        reqs = [self.mpi.Isend([header, MPI.INT64_T], dest=dest, tag=tag),
                self.mpi.Isend(_as_mpi(buf), dest=dest, tag=tag)]
        return Request(reqs, keep=(header, buf), release=release, progress=self.progress,
                       what=("send", dest, tag))

    def irecv(self, source: int, tag: int = 0, device: torch.device | str = "cpu") -> Request:
        """Start receiving a tensor from ``source``; ``wait()`` returns it on ``device``."""
        from mpi4py import MPI
        header = np.zeros(_HEADER_LEN, dtype=np.int64)
        req = self.mpi.Irecv([header, MPI.INT64_T], source=source, tag=tag)
        device = torch.device(device)

        def payload() -> Request:
            dtype = _DTYPES[int(header[0])]
            shape = tuple(int(s) for s in header[2:2 + int(header[1])])
            if device.type == "cpu" or self.cuda_aware:
                buf = torch.empty(shape, dtype=dtype, device=device)
                return Request([self.mpi.Irecv(_as_mpi(buf), source=source, tag=tag)],
                               finish=lambda: buf, keep=buf)
            buf, release = self._staging(dtype, shape)
            return Request([self.mpi.Irecv(_as_mpi(buf), source=source, tag=tag)],
                           finish=lambda: buf.to(device), keep=buf, release=release)

        return Request([req], finish=payload, keep=header, progress=self.progress, what=("recv", source, tag))

    def send(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> None:
        self.isend(tensor, dest, tag).wait()

    def recv(self, source: int, tag: int = 0, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.irecv(source, tag, device).wait()

    def wait_any(self, requests: Sequence[Request]) -> None:
        """Wait until one of ``requests`` is complete (its :meth:`Request.test` is true).  The
        timeline and the stall watchdog see it as a wait for the first request: put first the
        one that is sure to come."""
        _wait(lambda: any(r.test() for r in requests), self.progress, requests[0]._what)

    def exchange(self, sends: dict[int, torch.Tensor], sources: Sequence[int], tag: int = 0,
                 device: torch.device | str = "cpu") -> dict[int, torch.Tensor]:
        """Neighbour exchange: send ``sends[dest]`` to each dest, receive from each source."""
        recvs = {s: self.irecv(s, tag, device) for s in sources}
        out = [self.isend(t, d, tag) for d, t in sends.items()]
        result = {s: r.wait() for s, r in recvs.items()}
        for r in out:
            r.wait()
        return result

    # -- collectives ------------------------------------------------------------------------
    def allreduce(self, value: torch.Tensor | float, op: str = "sum") -> Any:
        """Reduce over all ranks (``op`` in sum, max, min); tensors keep device and dtype."""
        from mpi4py import MPI
        mpi_op = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
        if isinstance(value, torch.Tensor):
            # numpy arrays carry their MPI datatype, which the reduction needs
            send = value.detach().to("cpu", copy=True).contiguous().numpy()
            recv = np.empty_like(send)
            _wait(self.mpi.Iallreduce(send, recv, op=mpi_op).Test, self.progress, ("allreduce",))
            return torch.from_numpy(recv).to(value.device)
        send = np.array([value], dtype=np.float64)
        recv = np.empty_like(send)
        _wait(self.mpi.Iallreduce(send, recv, op=mpi_op).Test, self.progress, ("allreduce",))
        return float(recv[0]) if isinstance(value, float) else type(value)(recv[0])

    def iallreduce(self, value: torch.Tensor, op: str = "sum") -> Request:
        """Start :meth:`allreduce` of a tensor; ``wait()`` returns the result on the CPU.  It
        progresses while this rank waits for anything else, so a check that can lag one step
        costs no synchronisation of its own."""
        from mpi4py import MPI
        send = value.detach().to("cpu", copy=True).contiguous().numpy()
        recv = np.empty_like(send)
        req = self.mpi.Iallreduce(send, recv, op={"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op])
        return Request([req], finish=lambda: torch.from_numpy(recv), keep=(send, recv), progress=self.progress,
                       what=("allreduce",))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Broadcast a picklable object from ``root``."""
        data = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if self.rank == root else None
        n = np.array([0 if data is None else data.size], dtype=np.int64)
        _wait(self.mpi.Ibcast(n, root=root).Test, self.progress, ("bcast", root))
        buf = data.copy() if data is not None else np.empty(int(n[0]), dtype=np.uint8)
        _wait(self.mpi.Ibcast(buf, root=root).Test, self.progress, ("bcast", root))
        return obj if self.rank == root else pickle.loads(buf.tobytes())

    def allgather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's 1-D ``tensor`` (lengths may differ; one dtype everywhere), by rank,
        on the CPU.  The tensor's bytes count in :attr:`bytes_sent` (what this rank sends;
        the 8 bytes of its length are bookkeeping)."""
        from mpi4py import MPI
        send = tensor.detach().to("cpu", copy=True).contiguous().flatten()
        raw = send.view(torch.uint8).numpy() if send.numel() else np.empty(0, dtype=np.uint8)
        sizes = np.empty(self.size, dtype=np.int64)
        _wait(self.mpi.Iallgather(np.array([raw.size], dtype=np.int64), sizes).Test, self.progress, ("allgather",))
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        recv = np.empty(int(sizes.sum()), dtype=np.uint8)
        _wait(self.mpi.Iallgatherv(raw, [recv, sizes, offsets, MPI.BYTE]).Test, self.progress, ("allgather",))
        self.bytes_sent += int(raw.size)
        whole = torch.from_numpy(recv)
        return [whole[o:o + n].clone().view(send.dtype) for o, n in zip(offsets.tolist(), sizes.tolist())]

    def gather(self, obj: Any, root: int = 0) -> list[Any] | None:
        """Gather picklable objects to ``root`` (a list there, ``None`` elsewhere).

        Bookkeeping traffic: not counted in :attr:`bytes_sent`.
        """
        if self.rank != root:
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
            req = self._isend(data, root, _GATHER_TAG)
            req._what = ("gather", root)
            req.wait()
            return None
        reqs = {r: self.irecv(r, _GATHER_TAG) for r in range(self.size) if r != root}
        out = [obj if r == root else None for r in range(self.size)]
        for r, req in reqs.items():
            req._what = ("gather", root)
            out[r] = pickle.loads(req.wait().numpy().tobytes())
        return out

    def barrier(self) -> None:
        _wait(self.mpi.Ibarrier().Test, self.progress, ("barrier",))

    def split(self, color: int, key: int) -> "Comm":
        """The communicator of the ranks that pass the same ``color``, ordered by ``key`` (a
        collective).  It shares this one's :class:`~ocnet.ranks.watchdog.Progress`, so the stall
        watchdog sees its waits; one of a single rank is a :class:`SelfComm`."""
        mpi = self.mpi.Split(color, key)
        sub: Comm = Comm(mpi, self.cuda_aware) if mpi.Get_size() > 1 else SelfComm()
        sub.progress = self.progress
        return sub

    def common_moment(self, clock: Callable[[], float]) -> float:
        """A reading of ``clock`` that marks the same moment on every rank (a collective).

        ``clock`` must be monotonic and shared by the processes of a node, as
        ``time.perf_counter`` is on Linux: after a barrier the first rank of each node reads
        it for the whole node, so ranks on one node agree exactly, and nodes agree up to the
        spread with which they leave the barrier.
        """
        self.barrier()
        readings = self.bcast(self.gather((socket.gethostname(), clock())))
        host = socket.gethostname()
        return next(t for h, t in readings if h == host)

    def abort(self, code: int = 1) -> None:
        """End the whole job with exit status ``code``, once this rank has said why."""
        supervisor.reported()
        self.mpi.Abort(code)

    # -- watchdog -----------------------------------------------------------------------------
    def where(self, label: str) -> None:
        """Say what this rank does now (``"epoch 0, step 3"``), for the stall watchdog's
        message and the supervisor's (:mod:`ocnet.ranks.supervisor`); counts as progress.
        Costs two attribute writes, and a copy of the label where a supervisor runs."""
        self.progress.where = label
        self.progress.ticks += 1
        supervisor.note(f"in {label}")

    def start_watchdog(self, timeout: float) -> None:
        """End the job with one line when a rank makes no progress for ``timeout`` seconds.

        Progress is a completed wait or a :meth:`where`; the line names the ranks that are
        stuck outside any wait, and what the others wait for.  A peer on the same node that
        dies while this rank waits for it is reported at once (launchers that do not clean
        up a job after one of its processes dies would leave it hanging).  A collective:
        every rank calls it, at the same point.  ``timeout <= 0`` does nothing.
        """
        if timeout <= 0 or self._watchdog is not None:
            return
        from mpi4py import MPI
        peers = self.bcast(self.gather((socket.gethostname(), os.getpid())))
        # the watchdog's thread talks MPI only where the library allows it from any thread
        channel = _Channel(self.mpi) if MPI.Query_thread() == MPI.THREAD_MULTIPLE else None
        self._watchdog = Watchdog(self.progress, timeout, self.rank, self.size, channel, self.abort, peers)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        """Stop the watchdog (no collective; it also stops by itself when Python exits)."""
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None

    # -- host staging -------------------------------------------------------------------------
    def _staging(self, dtype: torch.dtype, shape: tuple) -> tuple[torch.Tensor, Callable[[], None]]:
        """A pinned host buffer for a device tensor, reused once its transfer is over."""
        key = (dtype, tuple(shape))
        free = self._pinned.setdefault(key, [])
        buf = free.pop() if free else torch.empty(shape, dtype=dtype, pin_memory=True)
        return buf, lambda: free.append(buf)


_GATHER_TAG = tags.GATHER


class _Channel:
    """The watchdog's messages, on a duplicate of the run's communicator, so that they never
    match a receive of the run (and the run's never match the watchdog's)."""

    def __init__(self, mpi_comm: Any) -> None:
        self.mpi = mpi_comm.Dup()
        self._sends: list[Any] = []

    def send(self, obj: Any, dest: int, tag: int) -> None:
        self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.mpi.isend(obj, dest=dest, tag=tag))

    def received(self, tag: int) -> list[tuple[int, Any]]:
        from mpi4py import MPI
        out = []
        status = MPI.Status()
        while (message := self.mpi.improbe(source=MPI.ANY_SOURCE, tag=tag, status=status)) is not None:
            out.append((status.Get_source(), message.recv()))
        return out


class _SelfRequest(Request):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self._value, self._done = value, True


class SelfComm(Comm):
    """The single-process stand-in: one rank, no MPI; messages to oneself are queued."""

    def __init__(self) -> None:  # noqa: D401 - no MPI communicator underneath
        self.mpi = None
        self.rank, self.size = 0, 1
        self.bytes_sent = 0
        self.cuda_aware = False
        self._queue: dict[int, list[torch.Tensor]] = {}
        self.progress = Progress()
        self._watchdog = None

    def isend(self, tensor: torch.Tensor, dest: int, tag: int = 0) -> Request:
        if dest != 0:
            raise ValueError(f"rank {dest} does not exist in a single-process run")
        self._queue.setdefault(tag, []).append(tensor.detach().clone())
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return _SelfRequest(None)

    def irecv(self, source: int, tag: int = 0, device: torch.device | str = "cpu") -> Request:
        if not self._queue.get(tag):
            raise RuntimeError(f"receive with tag {tag} from rank {source} would never complete")
        return _SelfRequest(self._queue[tag].pop(0).to(device))

    def allreduce(self, value: Any, op: str = "sum") -> Any:
        return value.clone() if isinstance(value, torch.Tensor) else value

    def iallreduce(self, value: torch.Tensor, op: str = "sum") -> Request:
        return _SelfRequest(value.detach().to("cpu", copy=True))

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]

    def allgather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return [tensor.detach().to("cpu", copy=True).flatten()]

    def barrier(self) -> None:
        pass

    def split(self, color: int, key: int) -> Comm:
        sub = SelfComm()
        sub.progress = self.progress
        return sub

    def abort(self, code: int = 1) -> None:
        supervisor.reported()
        os._exit(code)

    def start_watchdog(self, timeout: float) -> None:
        """One process cannot wait for another: a stall is a step that computes for ever."""
        if timeout > 0 and self._watchdog is None:
            self._watchdog = Watchdog(self.progress, timeout, 0, 1, None, self.abort)
            self._watchdog.start()


def _as_mpi(t: torch.Tensor | np.ndarray) -> Any:
    """An mpi4py buffer spec for a contiguous tensor (bytes, so any dtype travels)."""
    from mpi4py import MPI
    if isinstance(t, np.ndarray):
        return t
    if t.device.type != "cpu":  # CUDA-aware MPI: mpi4py reads __cuda_array_interface__
        return [t.view(torch.uint8) if t.dtype != torch.bool else t, MPI.BYTE]
    return [t.view(-1).view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8), MPI.BYTE]


def _detect_cuda_aware() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from mpi4py import MPI
        query = getattr(MPI, "Query_cuda_support", None)
        return bool(query()) if query is not None else False
    except Exception:  # pragma: no cover - depends on the MPI build
        return False


# -- the edge of the program: only run.py and tests call these --------------------------------
def world(cuda_aware: bool | None = None) -> Comm:
    """The communicator of all processes: a :class:`Comm` on ``COMM_WORLD``, or
    :class:`SelfComm` when mpi4py is missing or the job has one process."""
    try:
        from mpi4py import MPI
    except ImportError:
        return SelfComm()
    if MPI.COMM_WORLD.Get_size() == 1:
        return SelfComm()
    return Comm(MPI.COMM_WORLD, cuda_aware)


def world_rank() -> int:
    """This process's rank in ``COMM_WORLD``."""
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_rank()


@contextlib.contextmanager
def world_of_first(n: int, tag: int) -> Iterator[Callable[[int], None]]:
    """For the block, ``COMM_WORLD`` is a communicator of the world's ranks ``0 … n-1`` (this
    rank must be one of them, and all of them enter together), so that a job started inside
    sees just those ranks: a pool of warm ranks (:mod:`ocnet.runs.pool`) lends them so.
    Yields ``abort(code)``, which ends the whole world's job, not only the lent ranks'."""
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    lent = world.Create_group(world.Get_group().Incl(list(range(n))), tag)
    MPI.COMM_WORLD = lent  # type: ignore[misc]
    try:
        yield world.Abort
    finally:
        MPI.COMM_WORLD = world  # type: ignore[misc]
        if lent != MPI.COMM_NULL:
            lent.Free()


def node_rank_and_size(comm: Comm) -> tuple[int, int]:
    """This rank's index among the ranks of ``comm`` on its node, and their number (for
    sharing the node's cores and GPUs)."""
    if comm.mpi is None:
        return 0, 1
    from mpi4py import MPI
    node = comm.mpi.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


def abort_on_exception(comm: Comm) -> None:
    """Make an uncaught exception on any rank end the whole job within seconds, and a fatal
    signal (a segmentation fault, say) print the rank's Python stack before it dies.

    Without this an exception on one rank leaves its neighbours waiting forever.
    """
    if comm.size == 1:
        return
    faulthandler.enable(all_threads=False)

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt) and comm.rank != 0:
            time.sleep(2.0)  # a signal that reached every rank: rank 0's line (and abort) suffices
        try:
            # The one line first, past Python's buffers: whatever the traceback or a broken
            # sys.stderr does next, the cause has reached mpiexec's pipe.
            say(f"ocnet: rank {comm.rank} failed: {_exception_text(kind, value)}\n")
            traceback.print_exception(kind, value, tb)
            sys.stderr.flush()
        except BaseException:
            pass
        finally:  # the abort must happen, or the other ranks wait for ever
            time.sleep(0.5)  # let mpiexec forward the output before the abort tears the job down
            comm.abort(1)

    sys.excepthook = hook


def _exception_text(kind: type, value: BaseException) -> str:
    """``"Type: message"`` (``"Type"`` when there is no message, or it cannot be had)."""
    try:
        text = str(value)
    except Exception:
        text = ""
    return f"{kind.__name__}: {text}" if text else kind.__name__

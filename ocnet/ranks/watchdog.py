"""How a job that stops making progress or loses a rank ends: with one line that says why.

A :class:`Watchdog` thread on every rank watches the rank's :class:`Progress`, which the
rank's communicator updates whenever a wait completes and the training loop updates with
:meth:`~ocnet.ranks.comm.Comm.where`.  When a rank has made no progress for ``timeout`` seconds,
or the peer it waits for has died on its node, its watchdog reports to rank 0's, which asks
every rank what it is doing, prints one line naming the stuck (or dead) ranks and what the
others wait for, and aborts the job.  Should rank 0 not manage (it is frozen, or holds the
interpreter in a long C call), rank 1 takes over after :data:`GRACE` seconds, and any other
rank that reported after twice that, so the job always ends.

The watchdog talks over a channel of its own (a duplicate of the run's communicator, see
:mod:`ocnet.ranks.comm`), so its messages never mix with the run's.  Without a channel (one
process, or an MPI library without thread support) a stalled rank prints its own status.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Protocol, Sequence

REPORT, QUERY = 1, 2  # message tags on the watchdog's own channel
COLLECT = 1.5  # how long a coordinator waits for the other ranks' answers
GRACE = 3.0  # how long a rank that reported waits for the coordinator before it takes over
_PEER_CHECK = 1.0  # a wait this old (s) makes the watchdog look whether the peer still lives


class Progress:
    """What one rank's main thread is doing: written by that thread, read by its watchdog.

    Attributes
    ----------
    ticks : int
        Grows with every completed wait and every :meth:`~ocnet.ranks.comm.Comm.where`; any
        change is progress.
    waiting : tuple or None
        What the current wait is for, while the rank is inside one: ``("recv", source,
        tag)``, ``("send", dest, tag)``, ``("allreduce",)``, ``("barrier",)``,
        ``("bcast", root)`` or ``("gather", root)``.
    where : str or None
        The training loop's last label, e.g. ``"epoch 0, step 3"``.
    waited : list of float
        Seconds spent in completed waits so far: ``[messages, collectives]`` (a rank's
        time not spent waiting is its compute).
    """

    __slots__ = ("ticks", "waiting", "where", "waited")

    def __init__(self) -> None:
        self.ticks = 0
        self.waiting: tuple | None = None
        self.where: str | None = None
        self.waited = [0.0, 0.0]


class Channel(Protocol):
    """The watchdog's messages to other ranks' watchdogs (picklable objects)."""

    def send(self, obj: Any, dest: int, tag: int) -> None: ...

    def received(self, tag: int) -> list[tuple[int, Any]]:
        """``(source, obj)`` of every message with ``tag`` that has arrived (never blocks)."""
        ...


def say(text: str) -> None:
    """Write to the terminal now, past Python's buffers (the job may be torn down next)."""
    data = text.encode(errors="replace")
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass


def ranks_text(ranks: Sequence[int]) -> str:
    """``[1]`` ↦ ``"rank 1"``, ``[0, 2, 3, 4, 6]`` ↦ ``"ranks 0, 2-4, 6"``."""
    ranks = sorted(ranks)
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    parts, start = [], 0
    for i in range(1, len(ranks) + 1):
        if i == len(ranks) or ranks[i] != ranks[i - 1] + 1:
            run = ranks[start:i]
            parts += [f"{run[0]}-{run[-1]}"] if len(run) > 2 else [str(r) for r in run]
            start = i
    return "ranks " + ", ".join(parts)


def wait_text(waiting: tuple) -> str:
    """What a wait is for, as the end of "rank R waits …"."""
    kind = waiting[0]
    if kind == "recv":
        return f"for a message from rank {waiting[1]} (tag {waiting[2]})"
    if kind == "send":
        return f"for rank {waiting[1]} to receive a message (tag {waiting[2]})"
    if kind in ("bcast", "gather"):
        return f"in {kind} {'from' if kind == 'bcast' else 'to'} rank {waiting[1]}"
    return f"in {kind}"


def _peers_of(waiting: tuple, size: int) -> list[int]:
    return [waiting[1]] if waiting[0] in ("recv", "send") else list(range(size))


def process_end(pid: int) -> str | None:
    """How process ``pid`` on this node ended (``"died (killed by SIGKILL)"``, ``"exited
    (status 3)"``, ``"ended"``), or ``None`` while it lives."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        stat = ""
    except OSError:
        return None
    if stat:
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] not in ("Z", "X"):
            return None
        # a zombie keeps its wait status until its parent collects it (Linux >= 3.5)
        code = int(fields[49]) if len(fields) >= 50 else None
        if code is None:
            return "ended"
        if code & 0x7F:
            return f"died (killed by {_signal_name(code & 0x7F)})"
        return f"exited (status {code >> 8})"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "ended"
    except OSError:
        pass
    return None


def _main_line() -> str | None:
    """Where the main thread is, ``"ocnet/runs/faults.py:79 in inject"`` (its innermost frame)."""
    frame = sys._current_frames().get(threading.main_thread().ident or 0)
    if frame is None:
        return None
    path = frame.f_code.co_filename.replace(os.sep, "/").split("/")
    return f"{'/'.join(path[-2:])}:{frame.f_lineno} in {frame.f_code.co_name}"


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def summary(statuses: dict[int, dict[str, Any]], size: int, timeout: float,
            peers: Sequence[tuple[str, int]] | None = None) -> str:
    """The one line that says why the job ends.

    Parameters
    ----------
    statuses : dict
        rank ↦ its watchdog's status (``where``, ``waiting``, ``idle`` seconds since its
        last progress, ``line`` of code it runs outside a wait, ``dead``: ``(peer, how)``
        when the peer it waits for has ended), for the ranks that answered.
    peers : sequence of (host, pid), optional
        Every rank's host and process id.
    """
    labels = {s["where"] for s in statuses.values()}
    common = labels.pop() if len(labels) == 1 and None not in labels else None

    def at(s: dict[str, Any]) -> str:
        return "" if common is not None or s["where"] is None else f" in {s['where']}"

    dead: dict[int, tuple[str, list[int]]] = {}  # dead rank ↦ (how it ended, ranks that waited)
    groups: dict[tuple[int, str, str], list[int]] = {}  # (order, verb, rest of the clause) ↦ ranks
    for r, s in sorted(statuses.items()):
        if s.get("dead") is not None:
            peer, how = s["dead"]
            dead.setdefault(peer, (how, []))[1].append(r)
        elif s["waiting"] is not None:
            groups.setdefault((1, "wait", wait_text(s["waiting"]) + at(s)), []).append(r)
        else:
            line = f", at {s['line']}" if s.get("line") else ""
            if s["idle"] >= timeout:
                groups.setdefault((0, "is", f"stuck{at(s)} (not communicating{line})"), []).append(r)
            else:
                groups.setdefault((0, "is", f"computing{at(s)} (last progress {s['idle']:.0f} s ago{line})"),
                                  []).append(r)

    parts = []
    for peer, (how, waiters) in sorted(dead.items()):
        pid = f" (pid {peers[peer][1]})" if peers else ""
        parts.append(f"rank {peer}{pid} {how} while {ranks_text(waiters)} waited for it")
    silent = [r for r in range(size) if r not in statuses and r not in dead]
    if silent:
        groups[0, "did", "not answer (frozen, or in a call that holds the interpreter)"] = silent
    # the ranks outside waits first: they are the cause, the waiting ones the effect
    for (_, verb, rest), ranks in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0])):
        plural = len(ranks) > 1
        verb = {"wait": "wait" if plural else "waits", "is": "are" if plural else "is"}.get(verb, verb)
        parts.append(f"{ranks_text(ranks)} {verb} {rest}")
    head = "" if dead else f"no progress for {timeout:g} s{f' in {common}' if common else ''}: "
    return f"ocnet: error: {head}{'; '.join(parts)}"


class Watchdog:
    """A daemon thread that ends the job with one line when this rank stops making progress.

    Parameters
    ----------
    progress : Progress
        This rank's, as its communicator keeps it.
    timeout : float
        Seconds without progress that count as a stall.
    rank, size : int
        This rank and the number of ranks.
    channel : Channel or None
        Messages to the other ranks' watchdogs; ``None`` makes each rank report alone.
    abort : callable
        Ends the whole job with the given exit status (``MPI_Abort``, or ``os._exit``).
    peers : sequence of (host, pid), optional
        Every rank's host and process id: a peer on this host that has ended is noticed
        without waiting for the timeout.
    """

    def __init__(self, progress: Progress, timeout: float, rank: int, size: int, channel: Channel | None,
                 abort: Callable[[int], Any], peers: Sequence[tuple[str, int]] | None = None) -> None:
        self.progress, self.timeout, self.rank, self.size = progress, timeout, rank, size
        self.channel, self.abort, self.peers = channel, abort, peers
        self.poll = min(0.25, max(0.02, timeout / 20))
        # When a rank that reported takes over from a coordinator that did not end the job;
        # staggered so that, usually, only one of them speaks.
        if channel is None:
            self.fallback = 0.25 * min(rank, 16)
        else:
            self.fallback = 0.0 if rank == 0 else GRACE if rank == 1 else 2 * GRACE + 0.25 * min(rank - 2, 8)
        self.host = socket.gethostname()
        self._idle = 0.0
        self._reports: dict[int, dict[str, Any]] = {}
        self._reported: float | None = None  # when this rank reported its stall
        self._collecting: float | None = None  # when this rank began to collect as coordinator
        self._dead: tuple[int, str] | None = None
        self._checked = 0.0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ocnet-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # Stop before the interpreter finalises MPI, so that a rank that has finished and
        # waits in MPI_Finalize for the others is never taken for a stalled one.
        atexit.register(self.stop)

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        atexit.unregister(self.stop)

    def _run(self) -> None:
        ticks, changed = self.progress.ticks, time.monotonic()
        try:
            while not self._halt.wait(self.poll):
                now = time.monotonic()
                if self.progress.ticks != ticks:
                    ticks, changed = self.progress.ticks, now
                self._idle = now - changed
                self._check(now)
        except Exception as e:  # a broken watchdog must not pass unnoticed, nor kill a healthy run
            say(f"ocnet: warning: the watchdog of rank {self.rank} stopped: {type(e).__name__}: {e}\n")

    def _check(self, now: float) -> None:
        if self.channel is not None:
            for source, _ in self.channel.received(QUERY):
                self.channel.send(self.status(now), source, REPORT)
            for source, status in self.channel.received(REPORT):
                self._reports[source] = status
                if self._collecting is None:
                    self._collect(now)
        if self._reported is None:
            status = self.status(now)
            if status["dead"] is not None or self._idle >= self.timeout:
                self._reported = now
                # rank 1 coordinates when rank 0 is the one that died
                coordinator = 1 if status["dead"] is not None and status["dead"][0] == 0 else 0
                if self.channel is not None and coordinator != self.rank:
                    self.channel.send(status, coordinator, REPORT)
                if coordinator == self.rank or (self.channel is None and self.fallback == 0):
                    self._collect(now)
        elif self._collecting is None and now - self._reported >= self.fallback:
            self._collect(now)
        if self._collecting is not None and (self._answered() or now - self._collecting >= COLLECT):
            self._finish(now)

    def _answered(self) -> bool:
        """Whether every other rank that is not known to be dead has answered."""
        dead = {s["dead"][0] for s in self._reports.values() if s.get("dead") is not None}
        return all(r in self._reports or r in dead for r in range(self.size) if r != self.rank)

    def _collect(self, now: float) -> None:
        """Become the coordinator: ask every rank that has not reported what it does."""
        self._collecting = now
        if self.channel is None:
            self._collecting -= COLLECT  # nobody to ask
            return
        for r in range(self.size):
            if r != self.rank and r not in self._reports:
                self.channel.send(None, r, QUERY)

    def _finish(self, now: float) -> None:
        statuses = {r: s for r, s in self._reports.items() if r != self.rank}
        statuses[self.rank] = self.status(now)
        # Straight to the file descriptor: sys.stderr's lock may be held by the stuck thread.
        say(summary(statuses, self.size, self.timeout, self.peers) + "\n")
        time.sleep(0.5)  # let mpiexec forward the line before the abort tears the job down
        self.abort(1)
        self._halt.set()

    def status(self, now: float) -> dict[str, Any]:
        """What this rank does, for the coordinator (small and picklable)."""
        waiting = self.progress.waiting
        return {"where": self.progress.where, "waiting": waiting, "idle": self._idle,
                "line": None if waiting is not None else _main_line(), "dead": self._dead_peer(waiting, now)}

    def _dead_peer(self, waiting: tuple | None, now: float) -> tuple[int, str] | None:
        """``(peer, how it ended)`` when a peer on this host that the current wait needs has ended."""
        if self._dead is not None:
            return self._dead
        if waiting is None or self.peers is None or self._idle < _PEER_CHECK or now - self._checked < _PEER_CHECK:
            return None
        self._checked = now
        for peer in _peers_of(waiting, self.size):
            host, pid = self.peers[peer]
            if peer != self.rank and host == self.host:
                how = process_end(pid)
                if how is not None:
                    self._dead = (peer, how)
                    return self._dead
        return None

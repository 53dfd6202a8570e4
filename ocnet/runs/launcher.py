"""Child processes and ``mpiexec`` jobs under a deadline that only a hang can miss.

A timeout around a job is there to turn a deadlock into a failure, not to measure speed. On a
busy machine a job that is computing simply gets less of the cores, so a deadline in wall-clock
seconds fails jobs that are merely slow. :class:`QuietClock` counts the seconds the job would
have had on a quiet machine instead: wall time, slowed by the share of the cores that other
processes take while it runs (read from ``/proc``: the runnable processes inside the job's
process tree and outside it). A job that still runs after ``timeout`` such seconds is hung: every
Python process of it is sent ``SIGABRT``, so that Python's fault handler
(``PYTHONFAULTHANDLER``, set for the job) prints each rank's stack into the error, and then every
process of the job is killed.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol, Sequence

_POLL = 0.25  # seconds between looks at the job and the load


def mpiexec() -> str | None:
    """The mpiexec beside this Python (e.g. the ``mpich`` wheel's in a venv), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


def _processes() -> dict[int, tuple[int, bool]]:
    """``{pid: (parent, runnable)}`` of every process, from ``/proc`` (empty where there is none)."""
    found: dict[int, tuple[int, bool]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # the process ended meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses: count from the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        found[int(name)] = (int(fields[1]), fields[0] == b"R")
    return found


def _tree(root: int, processes: dict[int, tuple[int, bool]]) -> set[int]:
    """``root`` and its descendants (mpiexec's ranks run in sessions of their own, so a session
    or process group would miss them)."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


class QuietClock:
    """Seconds that the job of process ``root`` would have run on a quiet machine.

    Between two calls of :meth:`tick`, wall time counts at the rate
    ``max(C, J) / max(C, J + E)``: ``C`` cores, ``J`` runnable processes of the job (``root``
    and its descendants), ``E`` runnable processes elsewhere (this one not counted). With nothing else running the
    clock is the wall clock; with as many busy processes as the job beside it on C cores, it
    runs at about half speed. Without ``/proc`` it is the wall clock.
    """

    def __init__(self, root: int, cores: int | None = None) -> None:
        self.root = root
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.cores = cores
        self.elapsed = 0.0
        self._last = time.monotonic()

    def tick(self) -> float:
        """Advance by the wall time since the last tick at the current rate; returns :attr:`elapsed`."""
        now = time.monotonic()
        processes = _processes()
        tree, me = _tree(self.root, processes), os.getpid()
        job = others = 0
        for pid, (_, runnable) in processes.items():
            if pid in tree:
                job += runnable
            elif pid != me:
                others += runnable
        rate = max(self.cores, job) / max(self.cores, job + others)
        self.elapsed += (now - self._last) * rate
        self._last = now
        return self.elapsed


class Stopwatch:
    """A :class:`QuietClock` of this process and its children, ticking in a thread::

        watch = Stopwatch().start()
        ...
        assert watch.stop() < 30   # seconds on a quiet machine

    or ``with Stopwatch() as watch: ...`` and then :attr:`elapsed`.
    """

    def start(self) -> "Stopwatch":
        self.clock = QuietClock(os.getpid())
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._done.wait(_POLL):
            self.clock.tick()

    def stop(self) -> float:
        """Stop the clock; returns :attr:`elapsed`."""
        self._done.set()
        self._thread.join()
        return self.clock.tick()

    @property
    def elapsed(self) -> float:
        """Quiet-machine seconds counted so far."""
        return self.clock.elapsed

    def __enter__(self) -> "Stopwatch":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _dump_stacks(root: int) -> None:
    """``SIGABRT`` to each Python process of ``root``'s tree, whose fault handler prints its stack.

    The launchers in the tree (mpiexec and its proxies) are stopped meanwhile: on seeing one
    rank die they would kill the others before those had printed theirs."""
    tree = _tree(root, _processes())
    ranks = {pid for pid in tree if b"python" in os.path.basename(_program(pid))}
    for pids, sig in ((tree - ranks, signal.SIGSTOP), (ranks, signal.SIGABRT)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    time.sleep(1.0)  # the handlers write into the pipes while nobody reads them
    for pid in tree - ranks:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass


def kill(pids: set[int]) -> None:
    """``SIGKILL`` to each of ``pids`` that still runs (e.g. ``_tree(root, _processes())``)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _program(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0]
    except OSError:
        return b""


def run(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, cwd: str | Path | None = None,
        input: str | None = None) -> subprocess.CompletedProcess:
    """``cmd`` in a session of its own, with text output captured, like :func:`subprocess.run`.

    Raises ``TimeoutError`` when it has not finished after ``timeout`` seconds of a
    :class:`QuietClock`, with each Python process's stack and the output so far."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, text=True, cwd=cwd, start_new_session=True,
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                env={**os.environ, "PYTHONFAULTHANDLER": "1", **(env or {})})
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input)
            proc.stdin.close()
        clock, hung, start = QuietClock(proc.pid), False, time.monotonic()
        while True:
            try:
                proc.wait(_POLL)
                break
            except subprocess.TimeoutExpired:
                if clock.tick() > timeout:
                    hung = True
                    ranks = _tree(proc.pid, _processes())
                    _dump_stacks(proc.pid)
                    try:
                        proc.wait(5)  # the stacks reach the output, mpiexec forwards them
                    except subprocess.TimeoutExpired:
                        pass
                    kill(ranks)  # whatever is left of the job
                    proc.wait()
                    break
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if hung:
        raise TimeoutError(f"{' '.join(cmd)} did not finish within {timeout:g} s of a quiet machine's time "
                           f"({time.monotonic() - start:.0f} s of wall time): hung\n"
                           f"stdout: {stdout}\nstderr (with each Python process's stack): {stderr}")
    return subprocess.CompletedProcess(list(cmd), proc.returncode, stdout, stderr)


class _Pool(Protocol):
    def task(self, n: int, cmd: Sequence[str], env: dict[str, str] | None,
             cwd: str | Path | None) -> dict | None: ...

    def launch(self, task: dict, timeout: float) -> subprocess.CompletedProcess: ...


_pool: _Pool | None = None


def use_pool(pool: _Pool | None) -> _Pool | None:
    """From now on :func:`launch` sends the jobs that ``pool`` (an :class:`ocnet.runs.pool.Pool`)
    can run to it; ``None``: every job under a ``mpiexec`` of its own. Returns the previous pool."""
    global _pool
    previous, _pool = _pool, pool
    return previous


def launch(n: int, args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
           cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """``mpiexec -n n ARGS`` under :func:`run`'s deadline (a session of its own, so that a hang
    kills every rank), or in the pool of warm ranks of :func:`use_pool` where it can run there."""
    if _pool is not None:
        task = _pool.task(n, args, env, cwd)
        if task is not None:
            return _pool.launch(task, timeout)
    exe = mpiexec()
    if exe is None:
        raise FileNotFoundError("no mpiexec found beside this Python or on PATH")
    return run([exe, "-n", str(n), *args], timeout=timeout, env=env, cwd=cwd)

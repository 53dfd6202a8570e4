"""A pool of warm MPI ranks that runs many short jobs, each as if under its own ``mpiexec``.

A test suite of a layer-parallel code launches hundreds of small jobs, and on a small machine
most of each one's time is its ranks starting: every rank imports torch (and, at the first
optimiser, ``torch._dynamo``), seconds of CPU per rank. A :class:`Pool` starts ``size`` ranks
once (``mpiexec -n size python -m ocnet.runs.pool DIR``) and hands them jobs::

    pool = Pool(4)
    launcher.use_pool(pool)   # launcher.launch sends the jobs the pool can run to it
    ...
    pool.close()

A job ``mpiexec -n n python [-m mpi4py] (SCRIPT | -m MODULE) ARGS`` runs on ranks ``0 … n-1``
of the pool, whose ``MPI.COMM_WORLD`` is for its duration a communicator of just those ranks,
with the job's arguments, working directory and environment, its output captured per rank,
and afterwards the process state it may have changed put back (environment, working
directory, ``sys.path``, signal handlers, exception hook, warnings filters, torch's default
dtype and threads, the module-level names and registries of ``ocnet``, the modules it imported
from outside the installed packages). The ranks run without ``python -m ocnet.run``'s per-rank
supervisor (``OCNET_SUPERVISOR=0``).

The result is what :func:`ocnet.runs.launcher.launch` returns: the exit status (the largest of
the ranks'), the ranks' output in rank order. What cannot be undone ends the pool and the next
job starts a new one: an exception that leaves a rank (as ``python -m mpi4py`` does, it ends
the whole job: the pool's ranks are aborted), ``MPI_Abort``, a rank that exits, a thread left
running, a job that hangs (its ranks' stacks are in the error, as with :func:`launcher.run`).
Jobs with other environment variables than ``OMP_NUM_THREADS``, ``PYTHONPATH`` and
``OCNET_FAULT`` (read at each fault point, so each job plans its own), on more ranks than the
pool has, or of another program, go to ``mpiexec``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..ranks import comm as comm_mod
from . import launcher

#: The environment variables a pooled job may set (others change what happens at import).
POOLED_ENV = frozenset({"OMP_NUM_THREADS", "PYTHONPATH", "PYTHONFAULTHANDLER", "OCNET_FAULT"})
_IDLE = 0.01  # seconds between an idle rank's looks for the next job


class Pool:
    """``size`` warm ranks under one ``mpiexec``, started at the first job (see the module).

    ``env`` is added to each rank's environment when the pool starts; each rank imports the
    modules ``warm`` before it takes jobs."""

    def __init__(self, size: int = 4, env: dict[str, str] | None = None,
                 warm: Sequence[str] = ("ocnet.run", "ocnet.results.plot")) -> None:
        self.size = size
        self.env = dict(env or {})
        self.warm = list(warm)
        self.jobs = self.starts = 0
        self._ready = False
        self._proc: subprocess.Popen | None = None
        self._dir: Path | None = None
        self._next = 0
        self._broken = False

    # -- the jobs it takes ------------------------------------------------------------------------
    def task(self, n: int, cmd: Sequence[str], env: dict[str, str] | None = None,
             cwd: str | Path | None = None) -> dict[str, Any] | None:
        """The job ``mpiexec -n n CMD`` as the pool runs it, or ``None`` when it must have
        processes of its own."""
        cmd = [str(c) for c in cmd]
        if self._broken or not 1 <= n <= self.size or not cmd or cmd[0] != sys.executable:
            return None
        if any(k not in POOLED_ENV for k in (env or {})):
            return None
        argv = cmd[1:]
        if argv[:2] == ["-m", "mpi4py"]:
            argv = argv[2:]
        if not argv or argv[0].startswith("-") and argv[0] != "-m" or argv[0] == "-m" and len(argv) < 2:
            return None  # interpreter options, or no program
        if argv[0] != "-m" and not argv[0].endswith(".py"):
            return None
        return {"n": n, "argv": argv, "env": dict(env or {}), "cwd": str(Path(cwd or os.getcwd()).resolve())}

    def launch(self, task: dict[str, Any], timeout: float) -> subprocess.CompletedProcess:
        """Run ``task`` (from :meth:`task`); like :func:`launcher.launch`, raises
        ``TimeoutError`` with the ranks' stacks when it does not finish within ``timeout``
        seconds of a quiet machine."""
        self._start()
        assert self._proc is not None and self._dir is not None
        k, d, n = self._next, self._dir, task["n"]
        self._next += 1
        self.jobs += 1
        offset = len(_read(d / "pool.err"))
        _write_atomically(d / f"task-{k}.json", json.dumps(task))
        results = [d / f"result-{k}-{r}.json" for r in range(n)]
        clock, hung, looked = launcher.QuietClock(self._proc.pid), False, time.monotonic()
        while not all(p.exists() for p in results):
            if self._proc.poll() is not None:
                break
            if time.monotonic() - looked >= launcher._POLL:  # a tick reads all of /proc: a millisecond
                looked = time.monotonic()
                if clock.tick() > timeout:
                    hung = True
                    launcher._dump_stacks(self._proc.pid)
                    time.sleep(1.0)
                    break
            time.sleep(_IDLE)
        done = [json.loads(p.read_text()) for p in results if p.exists()]
        stdout = "".join(_read(d / f"out-{k}-{r}") for r in range(n))
        stderr = "".join(_read(d / f"err-{k}-{r}") for r in range(n))
        cmd = ["mpiexec", "-n", str(n), sys.executable, *task["argv"]]
        whole = len(done) == n  # every rank finished the job
        code = max((r["code"] for r in done), default=1)
        if not whole or not all(r["clean"] for r in done):
            ended, said = self._end(kill=hung, since=offset)  # what a job left behind cannot be trusted
            stderr += said
            self.start()  # new ranks get ready while the caller goes on
            if hung:
                raise TimeoutError(f"{' '.join(cmd)} (in a pool of warm ranks) did not finish within {timeout:g} s "
                                   f"of a quiet machine's time: hung\nstdout: {stdout}\n"
                                   f"stderr (with each rank's stack): {stderr}")
            if not whole and ended is not None:
                code = ended
        return subprocess.CompletedProcess(cmd, code, stdout, stderr)

    # -- its ranks --------------------------------------------------------------------------------
    def start(self) -> "Pool":
        """Start the ranks, unless they run; they get ready while the caller goes on, and the
        next job waits for them."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        self._end()
        exe = launcher.mpiexec()
        if exe is None:
            raise FileNotFoundError("no mpiexec found beside this Python or on PATH")
        self._dir = Path(tempfile.mkdtemp(prefix="ocnet-pool-"))
        self._next, self._ready = 0, False
        with open(self._dir / "pool.out", "w") as out, open(self._dir / "pool.err", "w") as err:
            self._proc = subprocess.Popen(
                [exe, "-n", str(self.size), sys.executable, "-m", "ocnet.runs.pool", str(self._dir), str(os.getpid()),
                 ",".join(self.warm)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                # A job is the pool rank's own process: no supervisor (ocnet.ranks.supervisor) of its own.
                env={**os.environ, "PYTHONFAULTHANDLER": "1", "OCNET_SUPERVISOR": "0", **self.env})
        self._clock = launcher.QuietClock(self._proc.pid)
        self.starts += 1
        return self

    def _start(self) -> None:
        """Start the ranks if need be, and wait until each is ready."""
        self.start()
        assert self._proc is not None and self._dir is not None
        while not self._ready:
            self._ready = all((self._dir / f"ready-{r}").exists() for r in range(self.size))
            if not self._ready and (self._proc.poll() is not None or self._clock.tick() > 300):
                said = _read(self._dir / "pool.err")
                self._broken = True  # every later job gets processes of its own
                self._end()
                raise RuntimeError(f"the pool of {self.size} ranks did not start:\n{said}")
            time.sleep(0.05)

    def _end(self, kill: bool = False, since: int = 0) -> tuple[int | None, str]:
        """End the ranks (if any); returns their mpiexec's exit status and what it wrote to
        its error stream after byte ``since``."""
        proc, d, self._proc = self._proc, self._dir, None
        code, said = None, ""
        if proc is not None:
            # ranks still starting would read the stop only once ready (seconds of imports): end them now
            ready = d is not None and all((d / f"ready-{r}").exists() for r in range(self.size))
            if proc.poll() is None and d is not None and not kill and ready:
                _write_atomically(d / f"task-{self._next}.json", json.dumps({"stop": True}))
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                launcher.kill(launcher._tree(proc.pid, launcher._processes()))
            code = proc.wait()
        if d is not None:
            said = _read(d / "pool.err")[since:]
            shutil.rmtree(d, ignore_errors=True)
            self._dir = None
        return code, said

    def close(self) -> None:
        """End the ranks."""
        self._end()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- a rank of the pool --------------------------------------------------------------------------
def _serve(directory: Path, client: int, warm: list[str]) -> None:
    """Rank loop: run each job ``task-K.json`` this rank takes part in; leave at ``stop`` or
    when the client process has gone."""
    rank = comm_mod.world_rank()
    _warm(warm)
    (directory / f"ready-{rank}").touch()
    k = 0
    while True:
        path = directory / f"task-{k}.json"
        while not path.exists():
            time.sleep(_IDLE)
            if not _alive(client):
                return
        task = json.loads(path.read_text())
        if task.get("stop"):
            return
        if rank < task["n"]:
            with comm_mod.world_of_first(task["n"], k % 32768) as abort:
                code, clean = _execute(task, abort, directory / f"out-{k}-{rank}", directory / f"err-{k}-{rank}")
            _write_atomically(directory / f"result-{k}-{rank}.json", json.dumps({"code": code, "clean": clean}))
        k += 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _warm(modules: list[str]) -> None:
    """What the jobs import, imported once (an optimiser pulls in ``torch._dynamo``)."""
    import importlib

    import torch
    for name in modules:
        importlib.import_module(name)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)


def _execute(task: dict[str, Any], abort: Callable[[int], None], out: Path, err: Path) -> tuple[int, bool]:
    """Run one job on this rank (inside :func:`~ocnet.ranks.comm.world_of_first`, so that its
    ``COMM_WORLD`` holds the job's ranks alone); returns its exit status and whether the
    process is as it was before. ``abort`` ends the whole pool, as an uncaught exception must."""
    import runpy

    state = _State()
    os.environ.update(task["env"])
    sys.path[:0] = [p for p in task["env"].get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    os.chdir(task["cwd"])
    threads = set(threading.enumerate())
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    argv, code = task["argv"], 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            imported = sys.modules.pop(argv[1], None)  # run afresh as __main__, as `python -m` does
            try:
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            finally:
                if imported is not None:
                    sys.modules[argv[1]] = imported
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        code = _exit_status(e.code)
    except BaseException:
        # As under ``python -m mpi4py``: an exception ends the whole job (the job's own hook,
        # where it installed one, says which rank failed and aborts).
        sys.excepthook(*sys.exc_info())
        sys.stderr.flush()
        abort(1)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        state.restore()
    left = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
    return code, not left


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


class _State:
    """What a job may change in the process, taken before it and put back after it."""

    def __init__(self) -> None:
        import warnings

        import torch
        self.environ = dict(os.environ)
        self.cwd = os.getcwd()
        self.argv, self.path = list(sys.argv), list(sys.path)
        self.streams = sys.stdout, sys.stderr
        self.excepthook = sys.excepthook
        self.modules = set(sys.modules)
        self.signals = {s: signal.getsignal(s) for s in _signals()}
        self.warnings = list(warnings.filters)
        self.dtype, self.threads = torch.get_default_dtype(), torch.get_num_threads()
        # ocnet's module-level names (a data group's sample numbering, say) and the contents of
        # its registries (solvers, fields, filters, …), which plug-ins extend.
        self.names = [(m, {k: v for k, v in vars(m).items() if not k.startswith("__")})
                      for name, m in list(sys.modules.items()) if name == "ocnet" or name.startswith("ocnet.")]
        self.registries = [(d, dict(d)) for _, names in self.names for d in names.values() if type(d) is dict]

    def restore(self) -> None:
        import warnings

        import torch
        os.environ.clear()
        os.environ.update(self.environ)
        os.chdir(self.cwd)
        sys.argv[:], sys.path[:] = self.argv, self.path
        sys.stdout, sys.stderr = self.streams
        sys.excepthook = self.excepthook
        for s, handler in self.signals.items():
            if handler is not None:
                signal.signal(s, handler)
        warnings.filters[:] = self.warnings  # type: ignore[index]
        torch.set_default_dtype(self.dtype)
        torch.set_num_threads(self.threads)
        for m, names in self.names:
            for k, v in names.items():
                if getattr(m, k, None) is not v:
                    setattr(m, k, v)
        for d, before in self.registries:
            d.clear()
            d.update(before)
        prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
        for name in set(sys.modules) - self.modules:  # a job's own modules (plug-ins) load afresh
            file = getattr(sys.modules[name], "__file__", None)
            if file and name.split(".")[0] != "ocnet" and not file.startswith(prefixes):
                del sys.modules[name]


def _signals() -> list[signal.Signals]:
    return [s for s in signal.valid_signals() if isinstance(s, signal.Signals)
            and s not in (signal.SIGKILL, signal.SIGSTOP)]


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]), [m for m in sys.argv[3].split(",") if m])

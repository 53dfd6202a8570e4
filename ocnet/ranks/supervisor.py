"""A supervisor per rank, so that however a rank ends, the job says so in one line.

A launcher sees how each process it started ends, but says little about it: MPICH's
``mpiexec`` ends the whole job at once when one rank leaves, silently and with status 0 when
that rank called ``os._exit(0)`` (a plug-in, say), with a banner that names a process id
when it was killed by a signal; and nothing inside a killed rank can speak.  So
``python -m ocnet.run`` runs each rank as two processes (:func:`start`, before MPI is
initialised): the process the launcher started becomes the *supervisor*, a fresh Python that
runs this file and imports nothing else of ocnet, and its child, the *worker*, runs the job.

The worker keeps a page of shared memory up to date (:func:`note`, :func:`reported`,
:func:`finished`): where the rank is (``in epoch 0, step 3``), whether it has said how the
job ends (every abort prints its cause first), and the exit status the job came to.  When
the worker ends as the job came to, or after saying why, the supervisor passes its status
on; any other end (an exit of any status before the job finished, a signal) is one line::

    ocnet: error: rank 1 (pid 4242) was killed by SIGKILL in epoch 0, step 3

and the supervisor exits with the worker's status (128 + the signal's number; 1 for an exit
with status 0), which the launcher makes the job's as it ends the other ranks (MPICH's
``mpiexec`` now and then reports instead, with status 9, a rank it killed itself: a race in
its clean-up that plain MPI programs meet too).  The
supervisor passes the signals the launcher sends (Ctrl-C at ``mpiexec``, a scheduler's
SIGTERM) on to the worker, and the worker's output on to the launcher, less MPICH's notes
about pending references at ``MPI_Finalize``.  Under a launcher the worker writes only into
those pipes, so that the launcher's own end with the supervisor; and a worker dies with its
supervisor (``PR_SET_PDEATHSIG``), so a launcher that ends the job still ends every process.
Killing the supervisor itself is the one end the job cannot report: kill the worker (the
process that computes), not the supervisor (``ocnet/ranks/supervisor.py`` in its command
line).

Linux only (``prctl``, ``/proc``).  ``OCNET_SUPERVISOR=0`` turns it off, and a job that has
initialised MPI before :func:`start` (``python -m mpi4py -m ocnet.run``) runs unsupervised.
"""
from __future__ import annotations

import mmap
import os
import re
import select
import signal
import struct
import sys
import threading

#: Where launchers put a process's rank before MPI is initialised (MPICH's Hydra and Slurm's
#: PMI-2, Open MPI, PMIx, srun).
RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID")

# The worker's page: state, the exit status it came to, the length of the place, the place.
_STARTING, _RUNNING, _REPORTED, _FINISHED = 0, 1, 2, 3
_HEADER = struct.Struct("<iiH")
_PLACE = 16
_PAGE = 4096
#: What the supervisor passes on to the worker: what launchers and schedulers send.
_FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
            signal.SIGCONT, signal.SIGTSTP)
_SI_KERNEL = 0x80  # si_code of a signal the terminal sent: the worker, in the same group, has it too
_PR_SET_PDEATHSIG = 1
#: The lines MPI_Finalize prints for requests still pending on MPI_COMM_WORLD (MPICH).
_NOISE = re.compile(rb"MPICH: (Builtin communicator \w+ has pending \d+ references|"
                    rb"polling progress until all references clears)\.\r?\n")
_NOISE_START = b"MPICH: "

_page: mmap.mmap | None = None  # the worker's, while supervised


# -- the worker's side --------------------------------------------------------------------------
def start() -> bool:
    """Split this process into a supervisor and a worker; returns ``True`` in the worker (the
    supervisor never returns), ``False`` where nothing was split (see the module docstring)."""
    if (os.environ.get("OCNET_SUPERVISOR", "1").strip() == "0" or not sys.platform.startswith("linux")
            or "mpi4py.MPI" in sys.modules or _page is not None):
        return False
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        page = os.memfd_create("ocnet-rank", 0)
        os.ftruncate(page, _PAGE)
        relay = (os.pipe(), os.pipe()) if launched_rank() is not None else None
    except (OSError, AttributeError):  # no prctl, no memfd: run unsupervised
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    # no signal between the split and the supervisor's first wait may kill it
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, (*_FORWARD, signal.SIGCHLD))
    parent = os.getpid()
    try:
        worker = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for fd in [page, *(fd for pair in relay or () for fd in pair)]:
            os.close(fd)
        return False
    if worker == 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the supervisor is gone already
            os._exit(1)
        _become_worker(page, relay)
        return True
    args = [str(worker), str(page)]
    if relay is not None:
        (out, out_w), (err, err_w) = relay
        os.close(out_w)
        os.close(err_w)
        args += [str(out), str(err)]
    try:
        for arg in args[1:]:
            os.set_inheritable(int(arg), True)
        os.execv(sys.executable, [sys.executable, "-I", "-S", os.path.abspath(__file__), *args])
    except OSError:  # supervise from this process instead
        pass
    os._exit(_main(args))


def _become_worker(page: int, relay: tuple[tuple[int, int], tuple[int, int]] | None) -> None:
    global _page
    _page = mmap.mmap(page, _PAGE)
    os.close(page)
    if relay is None:
        return
    (out, out_w), (err, err_w) = relay
    # The launcher's output pipes close only once no process holds them: only the supervisor
    # may, so that they close when it ends (a launcher that sees a process end with its output
    # still open takes the process for one that died: MPICH's mpiexec then prints its banner).
    launcher = {_identity(1), _identity(2)} - {None}
    for fd in _open_fds():
        if fd > 2 and fd not in (out, out_w, err, err_w) and _identity(fd) in launcher:
            os.close(fd)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (out, out_w, err, err_w):
        os.close(fd)


def _identity(fd: int) -> tuple[int, int] | None:
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return []


def supervised() -> bool:
    """Whether this process is a supervised worker."""
    return _page is not None


def note(place: str) -> None:
    """Where this rank is, for the line should it end unannounced (``"in epoch 0, step 3"``,
    ``"during set-up"``).  A copy into shared memory; nothing without a supervisor."""
    if _page is None:
        return
    data = place.encode(errors="replace")[:_PAGE - _PLACE]
    state, code, _ = _HEADER.unpack(_page[:_HEADER.size])
    _page[_PLACE:_PLACE + len(data)] = data
    _page[:_HEADER.size] = _HEADER.pack(max(state, _RUNNING), code, len(data))


def reported() -> None:
    """This rank has printed the line that says how the job ends (it aborts the job next)."""
    if _page is not None:
        _set_state(_REPORTED)


def finished(code: int) -> int:
    """The job came to exit status ``code`` on this rank; returns ``code``."""
    if _page is not None:
        _, _, n = _HEADER.unpack(_page[:_HEADER.size])
        _page[:_HEADER.size] = _HEADER.pack(_FINISHED, code, n)
    return code


def _set_state(state: int) -> None:
    assert _page is not None
    _, code, n = _HEADER.unpack(_page[:_HEADER.size])
    _page[:_HEADER.size] = _HEADER.pack(state, code, n)


def launched_rank() -> int | None:
    """This process's rank as its launcher says it, ``None`` when no launcher started it."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


# -- the supervisor's side ----------------------------------------------------------------------
def verdict(status: int, state: int, code: int, place: str, rank: int, pid: int) -> tuple[str | None, int]:
    """``(line, exit status)`` of a rank whose worker ended with wait status ``status`` after
    leaving its page at ``state``, ``code`` and ``place``: no line for an end the job came
    to or announced."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        how, exit_status, exited = f"was killed by {_signal_name(signum)}", 128 + signum, None
    else:
        exited = os.WEXITSTATUS(status)
        how, exit_status = f"exited with status {exited}", exited or 1
    if state == _FINISHED and exited == code:
        return None, code
    if state == _REPORTED:
        return None, exit_status
    if state == _FINISHED:
        where = "after the job had finished on it"
    else:
        where = place or "while starting"
        if exited is not None:
            where += ", before the job finished"
    return f"ocnet: error: rank {rank} (pid {pid}) {how} {where}", exit_status


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _main(args: list[str]) -> int:
    """The supervisor: ``WORKER PAGE [OUT ERR]`` (process id and file descriptors)."""
    worker, page = int(args[0]), int(args[1])
    waiting = {*_FORWARD, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waiting)
    relay = None
    if len(args) == 4:
        relay = threading.Thread(target=_relay, args=({int(args[2]): 1, int(args[3]): 2},), daemon=True)
        relay.start()
    status = None
    while status is None:
        info = signal.sigtimedwait(waiting, 1.0)  # the timeout: a SIGCHLD that came unblocked
        if info is not None and info.si_signo != signal.SIGCHLD and info.si_code != _SI_KERNEL:
            try:
                os.kill(worker, info.si_signo)
            except ProcessLookupError:
                pass
        try:
            pid, wait_status = os.waitpid(worker, os.WNOHANG)
        except ChildProcessError:  # cannot be: the worker is this process's child
            return 1
        if pid == worker:
            status = wait_status
    if relay is not None:
        relay.join(2.0)  # what the worker wrote before it ended, unless others hold its pipes
    try:
        state, code, n = _HEADER.unpack(os.pread(page, _HEADER.size, 0))
        place = os.pread(page, min(n, _PAGE - _PLACE), _PLACE).decode(errors="replace")
    except (OSError, struct.error):
        state, code, place = _STARTING, 0, ""
    rank = launched_rank()
    line, exit_status = verdict(status, state, code, place, 0 if rank is None else rank, worker)
    if line is not None:
        _write(2, (line + "\n").encode(errors="replace"))
    return exit_status


def _relay(streams: dict[int, int]) -> None:
    """Copy each pipe of ``streams`` (read end ↦ where to) until every one is closed, leaving
    out the lines of :data:`_NOISE`."""
    held = {fd: b"" for fd in streams}  # the start of a line that may be noise
    start = {fd: True for fd in streams}  # whether the next byte starts a line
    while streams:
        ready, _, _ = select.select(list(streams), [], [])
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                _write(streams[fd], held[fd])
                os.close(fd)
                del streams[fd]
                continue
            out, held[fd], start[fd] = clean(held[fd] + data, start[fd])
            _write(streams[fd], out)


def clean(data: bytes, at_start: bool) -> tuple[bytes, bytes, bool]:
    """``(what to write now, what to hold back, whether what follows starts a line)`` of
    ``data`` (which starts a line when ``at_start``): the complete lines of :data:`_NOISE`
    are left out, and a last line that may become one is held back."""
    out: list[bytes] = []
    i = 0
    while i < len(data):
        end = data.find(b"\n", i)
        line = data[i:] if end < 0 else data[i:end + 1]
        if at_start and end < 0 and len(line) < 200 and (_NOISE_START.startswith(line)
                                                         or line.startswith(_NOISE_START)):
            return b"".join(out), line, True
        if not (at_start and _NOISE.fullmatch(line)):
            out.append(line)
        at_start = end >= 0
        i += len(line)
    return b"".join(out), b"", at_start


def _write(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # nobody reads any more: the rest is lost, the worker goes on
        pass


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

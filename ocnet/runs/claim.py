"""One job per run directory: the claim that rank 0 takes before set-up and holds until the job ends.

The claim is the file ``DIR/.ocnet-claim``, which names its job: host, pid and start time.  It
is made whole before it has its name: the contents go to a temporary file, which is locked
(``flock``) and then hard-linked to the name.  ``link`` fails when the name exists — on local
file systems and over NFS alike — so of two jobs that claim one directory at the same moment
exactly one gets it, and nobody ever reads a claim half written.  The job keeps the file open
and locked, and :meth:`Claim.release` removes it when the job ends.

A job killed with SIGKILL (or with its node) leaves its file behind.  Such a claim is *stale*,
and the next job takes it over:

* the kernel drops a dead process's ``flock``, so a claim from this host whose lock can be
  taken has no live holder;
* where the file system does not support ``flock``, a claim from this host is stale when its
  pid no longer runs, or runs a process that started later (a reused pid).

A claim from another host is always honoured.  On a shared file system the lock may be kept
by each node for itself (NFS mounted with ``local_lock``, a Lustre client without ``-o
flock``), so a lock taken here proves nothing about a holder there, and its pid cannot be
checked from here.  When that job is known to be over, remove ``DIR/.ocnet-claim`` by hand.

Taking over a stale claim is done under its lock, so that two jobs that find it together do
not both take it; without ``flock`` that race remains, and needs two jobs started into one
directory in the same moment just after a third was killed there.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

NAME = ".ocnet-claim"
#: Files of the claim's machinery start so, and do not make a directory a used one.
PREFIX = ".ocnet-"


@dataclass(frozen=True)
class Holder:
    """The job a claim names."""

    host: str
    pid: int
    started: str  # local time, ISO 8601, to the second
    ticks: int | None = None  # the process's start in clock ticks since boot (Linux): tells a reused pid

    @classmethod
    def me(cls) -> "Holder":
        started = datetime.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), started, _start_ticks(os.getpid()))

    @classmethod
    def parse(cls, raw: bytes) -> "Holder | None":
        """The holder a claim file's bytes name, or ``None`` when they name none."""
        try:
            fields = json.loads(raw.decode())
            holder = cls(str(fields["host"]), int(fields["pid"]), str(fields["started"]), fields.get("ticks"))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return holder if holder.ticks is None or isinstance(holder.ticks, int) else None

    def __str__(self) -> str:
        return f"the job on host {self.host}, pid {self.pid}, started at {self.started}"

    @property
    def here(self) -> bool:
        """Whether the holder runs on this host (where its pid can be checked)."""
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """On this host: whether the holder's process still runs (not a later one with its pid)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it runs
            pass
        ticks = _start_ticks(self.pid)
        return self.ticks is None or ticks is None or ticks == self.ticks


class Held(Exception):
    """The directory is claimed by a live job (or one on another host, which is honoured)."""

    def __init__(self, directory: Path, holder: Holder | None) -> None:
        self.directory, self.holder = directory, holder
        who = str(holder) if holder is not None else f"another job ({directory / NAME} does not say which)"
        hint = "" if holder is not None and holder.here else \
            f"; if that job is over, remove {directory / NAME} and start again"
        super().__init__(f"run directory {directory} is in use by {who}{hint}")


class Claim:
    """A claim this process holds on ``directory``; :meth:`release` gives it up.

    ``created``: the directories made for the job (the run directory, parents first), which
    :meth:`release` removes again, if still empty, for a job that did not start."""

    def __init__(self, directory: Path, fd: int, holder: Holder, created: tuple[Path, ...] = ()) -> None:
        self.directory, self.holder, self.created = directory, holder, created
        self._fd: int | None = fd

    def release(self, *, started: bool = True) -> None:
        """Remove the claim file (if it is still this claim's) and close it; with
        ``started=False`` also the directories made for the job, where empty."""
        if self._fd is None:
            return
        try:
            if _same_file(self.directory / NAME, self._fd):
                os.unlink(self.directory / NAME)
        except OSError:
            pass  # a claim that cannot be removed is stale once the lock is dropped
        finally:
            os.close(self._fd)
            self._fd = None
        if not started:
            for d in reversed(self.created):
                try:
                    d.rmdir()
                except OSError:
                    break  # not empty: somebody else's now


def take(directory: Path, created: tuple[Path, ...] = ()) -> Claim:
    """Claim the existing ``directory`` for this process.

    Raises
    ------
    Held
        When a live job holds it, or a job on another host.
    OSError
        When the directory cannot be written.
    """
    holder = Holder.me()
    record = (json.dumps(asdict(holder)) + "\n").encode()
    tmp = directory / f"{NAME}.{secrets.token_hex(6)}.new"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, record)
        _lock(fd)  # a fresh file nobody else has open: never busy
        linked = _link(tmp, directory)
    except BaseException:
        os.close(fd)
        raise
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    if linked:
        return Claim(directory, fd, holder, created)
    os.close(fd)
    return _take_without_link(directory, record, holder, created)


def _link(tmp: Path, directory: Path) -> bool:
    """Give the claim ``tmp`` its name: ``True`` done, ``False`` where the file system has no
    hard links.  Raises :class:`Held` while a live job holds the name."""
    for _ in range(8):  # each round removes a stale claim, or finds a live one and raises
        try:
            os.link(tmp, directory / NAME)
            return True
        except FileExistsError:
            _remove_if_stale(directory)
        except OSError as e:
            if e.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                return False
            raise
    raise Held(directory, holder_of(directory))


def holder_of(directory: Path) -> Holder | None:
    """The job that holds ``directory``'s claim, as far as a reader can tell without taking
    it: ``None`` when there is no claim, or one from this host whose process is gone."""
    try:
        holder = Holder.parse((directory / NAME).read_bytes())
    except OSError:
        return None
    return None if holder is not None and holder.here and not holder.alive() else holder


def _take_without_link(directory: Path, record: bytes, holder: Holder, created: tuple[Path, ...]) -> Claim:
    """:func:`take` where hard links are refused: the name is created exclusively and
    written at once (a reader that comes in between finds it empty, and honours it)."""
    for _ in range(8):
        try:
            fd = os.open(directory / NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            _remove_if_stale(directory)
            continue
        try:
            _lock(fd)
            os.write(fd, record)
        except BaseException:
            os.close(fd)
            raise
        return Claim(directory, fd, holder, created)
    raise Held(directory, holder_of(directory))


def _remove_if_stale(directory: Path) -> None:
    """Remove the claim of ``directory`` if its job is dead; raise :class:`Held` if it lives
    (or is on another host).  Returns also when the claim went away meanwhile."""
    path = directory / NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # released meanwhile: try again
    try:
        locked = _lock(fd)
        if locked is False:
            raise Held(directory, _read(fd))
        holder = _read(fd)
        if holder is None:  # no holder named: stale only if its lock says so
            if locked is None:
                raise Held(directory, None)
        elif not holder.here or (locked is None and holder.alive()):
            raise Held(directory, holder)
        if _same_file(path, fd):  # still the claim examined, not a newer one
            os.unlink(path)
    finally:
        os.close(fd)


def _lock(fd: int) -> bool | None:
    """Try ``flock(LOCK_EX)`` without waiting: ``True`` taken, ``False`` held by another
    open file (a live process), ``None`` where the file system does not support it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, EINVAL: no flock here
        return None


def _read(fd: int) -> Holder | None:
    return Holder.parse(os.pread(fd, 4096, 0))


def _same_file(path: Path, fd: int) -> bool:
    try:
        a, b = os.stat(path), os.fstat(fd)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (``None`` without /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, counted after the name
    except (OSError, ValueError, IndexError):
        return None

"""The run directory a job writes: checked, chosen and claimed before set-up.

A run directory belongs to one job at a time (:mod:`ocnet.runs.claim`) and to one run: a new
run starts only into a new or empty ``--out`` (or replaces a run's files with
``--overwrite``), and ``--resume D`` continues in ``D`` itself.  Rank 0 checks the path,
makes the directory and claims it before any set-up step, so that a second job into it stops
at once; every rank then checks that it can write there (:func:`probe`).

Only ocnet's own files count as a run's: ``--overwrite`` removes those (:data:`RUN_FILES`,
the figures of :data:`FIGURES`) and leaves the user's files beside them.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from . import claim
from .config import ConfigError, differences, read_toml

#: What a run writes into its directory (besides its figures).
RUN_FILES = ("config.toml", "history.jsonl", "summary.json", "model.pt", "best.pt", "checkpoints", "timeline")
#: The figures ``python -m ocnet.plot`` draws of one run, each ``NAME.png``.
FIGURES = ("convergence", "mgrit_residuals", "mgrit_convergence", "mgrit_accuracy", "constraints", "bytes",
           "speedup", "timeline")


def claim_for(config: dict[str, Any], ranks: int) -> tuple[claim.Claim, bool]:
    """Rank 0, before set-up: ``(claim, resuming)`` on the directory the run writes.

    A resumed run continues in its own directory, with the configuration it started with but
    for the keys that may change; a new run starts only into an empty or new ``--out`` (or
    replaces a run's files with ``--overwrite``).  Without ``--out`` a new run takes
    ``runs/<problem>-<solver>-P<ranks>``, numbered ``-2``, ``-3``, … past those in use; of
    two jobs started together, each gets its own.

    Raises
    ------
    ConfigError
        For a directory that cannot be made or written, is in use by a live job, holds
        another run (a new run), or is not a run of this configuration (a resume).
    """
    if config["resume"] or config["out"]:
        try:
            return (_resume(config), True) if config["resume"] else (_new(config), False)
        except claim.Held as e:
            raise ConfigError(str(e)) from None
    base = Path("runs") / f"{config['problem']}-{config['solver']}-P{ranks}"
    for n in range(1, 10_000):
        out = base if n == 1 else base.with_name(f"{base.name}-{n}")
        if in_use(out):
            continue
        try:
            held = _take(out, "run directory")
        except claim.Held:  # another job took it first: the next name
            continue
        if not in_use(out):
            return held, False
        held.release()  # filled while we looked
    raise ConfigError(f"no free run directory {base}-N: choose --out")


def _new(config: dict[str, Any]) -> claim.Claim:
    out = Path(config["out"])
    held = _take(out, "--out")
    if in_use(out) and not config["overwrite"]:
        held.release(started=False)
        raise ConfigError(f"run directory {out} is not empty: choose another --out, continue it with "
                          f"--resume {out}, or replace its run with --overwrite")
    return held


def _resume(config: dict[str, Any]) -> claim.Claim:
    out = Path(config["resume"])
    if config["out"] and Path(config["out"]).resolve() != out.resolve():
        raise ConfigError(f"--resume continues in its run directory {out}; --out {config['out']} names another")
    if not (out / "config.toml").is_file():
        raise ConfigError(f"cannot resume {out}: it is not a run directory (no config.toml)")
    held = _take(out, "--resume")
    try:
        changed = differences(read_toml(out / "config.toml"), config)
    except BaseException:
        held.release(started=False)
        raise
    if changed:
        held.release(started=False)
        raise ConfigError(f"cannot resume {out} with another configuration: {'; '.join(changed)}")
    return held


def _take(out: Path, label: str) -> claim.Claim:
    """Check ``out``, make it (and its missing parents) and claim it (:class:`claim.Held`
    when a live job holds it)."""
    check(out, label)
    created = []
    try:
        for d in reversed([out, *out.parents]):
            if not os.path.lexists(d):
                try:
                    d.mkdir()
                    created.append(d)
                except FileExistsError:  # another job made it this moment
                    pass
        return claim.take(out, tuple(created))
    except claim.Held:
        _remove(created)
        raise
    except OSError as e:
        _remove(created)
        raise ConfigError(f"cannot create {label} {out}: {e.strerror or e}") from None


def _remove(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            return


def check(path: Path, label: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a directory this process can write in, or
    one it can make: the nearest existing ancestor is a directory it can write to, and no
    part of the path is a file or a dangling symbolic link.  Writes nothing."""
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{label} {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{label} {path} is a file, not a directory")
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor != path:
        if ancestor.is_symlink() and not ancestor.exists():
            raise ConfigError(f"cannot create {label} {path}: {ancestor} is a symbolic link to "
                              f"{os.readlink(ancestor)}, which does not exist")
        if not ancestor.is_dir():
            raise ConfigError(f"cannot create {label} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(ancestor) else "is not writable (permission denied)"
        raise ConfigError(f"cannot {'write in' if ancestor == path else 'create'} {label} {path}: {ancestor} {why}")


def probe(path: Path) -> None:
    """Every rank, once rank 0 has made the directory: create and remove a file in it (a rank
    on another node finds out here whether it sees the directory and can write there)."""
    check(path, "run directory")
    name = path / f"{claim.PREFIX}probe.{socket.gethostname()}.{os.getpid()}"
    try:
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(name)
    except OSError as e:
        raise ConfigError(f"cannot write in run directory {path}: {e.strerror or e}") from None


def in_use(path: Path) -> bool:
    """Whether ``path`` is taken: a file, or a directory that holds anything but claims."""
    if not os.path.lexists(path):
        return False
    if not path.is_dir():
        return True
    return any(not p.name.startswith(claim.PREFIX) for p in path.iterdir())


def remove_run_files(out: Path) -> None:
    """What ``--overwrite`` removes: the files a run writes (and their temporary files), none
    of the user's."""
    for name in RUN_FILES + tuple(f"{f}.png" for f in FIGURES):
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
        for tmp in out.glob(f".{glob.escape(name)}.*.tmp"):  # an interrupted atomic write's
            tmp.unlink()


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False

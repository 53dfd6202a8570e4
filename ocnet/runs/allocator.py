"""glibc's allocator thresholds for a rank's process (``--malloc``, ``OCNET_MALLOC``).

PyTorch on the CPU takes each activation from ``malloc`` and frees it once used.  glibc maps
a large block of its own (``mmap``) and unmaps it when freed, and gives the free top of its
heap back to the kernel past a threshold, so the next step's activations page-fault again.
:func:`tune` raises the mmap threshold to 256 MiB and the trim threshold to 1 GiB
(``mallopt``): freed memory stays with the process and is reused.  ``docs/performance.rst``
("The allocator") has the measurements behind the default.

Settings, as ``--malloc`` takes them:

``auto`` (the default)
    ``OCNET_MALLOC`` where it is set (``tuned`` or ``glibc``; ``default`` means ``glibc``);
    else ``glibc`` where ``GLIBC_TUNABLES`` sets any ``glibc.malloc`` tunable (the user's
    own choice stands); else :data:`DEFAULT`.
``tuned``
    :func:`tune`.
``glibc``
    Leave the allocator as it is (glibc's dynamic thresholds, or ``GLIBC_TUNABLES``'s).  It
    does not undo an earlier :func:`tune` in the same process.

Only glibc has ``mallopt``'s thresholds: elsewhere (musl, macOS, Windows) ``tuned`` changes
nothing and is never an error; :func:`apply` then says ``unchanged``.
"""
from __future__ import annotations

import ctypes
import os
from typing import Mapping

#: What ``--malloc`` takes.
CHOICES = ("auto", "tuned", "glibc")
#: What ``auto`` becomes where neither ``OCNET_MALLOC`` nor ``GLIBC_TUNABLES`` says otherwise.
DEFAULT = "tuned"
#: The environment variable ``auto`` follows (benchmarks and users' own scripts share it).
ENV = "OCNET_MALLOC"
#: The thresholds :func:`tune` sets, in bytes.
MMAP_THRESHOLD = 256 * 2**20
TRIM_THRESHOLD = 2**30
#: The same thresholds as ``GLIBC_TUNABLES`` takes them (before the process starts).
TUNABLES = f"glibc.malloc.mmap_threshold={MMAP_THRESHOLD}:glibc.malloc.trim_threshold={TRIM_THRESHOLD}"

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h


def setting(malloc: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """``"tuned"`` or ``"glibc"``: what ``--malloc malloc`` means in the environment
    ``environ`` (default ``os.environ``).

    Raises
    ------
    ValueError
        For a ``malloc`` outside :data:`CHOICES`, or an ``OCNET_MALLOC`` that ``auto`` cannot
        follow.
    """
    if malloc not in CHOICES:
        raise ValueError(f"malloc must be one of {', '.join(CHOICES)}; got {malloc!r}")
    if malloc != "auto":
        return malloc
    env = os.environ if environ is None else environ
    given = env.get(ENV, "").strip()
    if given:
        if given not in ("tuned", "glibc", "default"):
            raise ValueError(f"{ENV} must be tuned or glibc (default means glibc); got {given!r}")
        return "glibc" if given == "default" else given
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "glibc"
    return DEFAULT


def is_glibc() -> bool:
    """Whether this process's C library is glibc (the one whose thresholds :func:`tune` sets)."""
    try:
        return hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        return False


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds in this process; returns whether they took
    effect (``False`` without glibc)."""
    if not is_glibc():
        return False
    libc = ctypes.CDLL(None)
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD,
                                                                                       TRIM_THRESHOLD))


def apply(malloc: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """Put :func:`setting` into effect in this process, before it allocates its tensors;
    returns what the process runs under, for the run's records: ``"tuned"``, ``"glibc"``, or
    ``"unchanged"`` where ``tuned`` was asked for without glibc."""
    chosen = setting(malloc, environ)
    if chosen == "tuned" and not tune():
        return "unchanged"
    return chosen

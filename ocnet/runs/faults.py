"""Injected faults, for testing how a job fails: raise, hang, die or produce NaN on a
chosen rank at a chosen point.

Faults are named in the environment variable ``OCNET_FAULT`` as comma-separated
``POINT:RANK:ACTION[:COUNT]`` items: at the COUNT-th time (default 1) rank RANK reaches
POINT, ACTION happens.  The points ocnet reaches are

* ``setup`` — each set-up step (configuration, device, data, network, solver),
* ``step`` — each training step, after the solver's step,
* ``evaluate`` — each evaluation,
* ``checkpoint`` — each checkpoint shard, after its bytes are written, before its rename,
* ``finish`` — once training is over, before rank 0 writes the model, summary and figures;

and the actions are

* ``raise`` (``RuntimeError``), ``memory`` (``MemoryError``),
* ``hang`` (sleep for ever), ``kill`` (``SIGKILL`` to oneself), ``term`` / ``int``
  (``SIGTERM`` / ``SIGINT`` to oneself),
* ``nan`` — :func:`inject` returns ``"nan"`` and the caller poisons its own values,
* ``nospace`` — ``OSError`` ENOSPC, as a full disk gives a write (at ``checkpoint``: the shard
  that was to be renamed into place).

The variable is read at each visit, so that one process can run many jobs (a pool of warm
ranks, :mod:`ocnet.runs.pool`) each with its own faults; without it :func:`inject` costs two
dictionary look-ups.
"""
from __future__ import annotations

import errno
import os
import signal
import time

ACTIONS = ("raise", "memory", "hang", "kill", "term", "int", "nan", "nospace")
POINTS = ("setup", "step", "evaluate", "checkpoint", "finish")


class InjectedFault(RuntimeError):
    """The exception the ``raise`` action raises."""


def parse(spec: str) -> dict[tuple[str, int], tuple[str, int]]:
    """``"step:1:hang:3"`` ↦ ``{("step", 1): ("hang", 3)}``.

    Raises
    ------
    ValueError
        For an unknown point or action, or a malformed item.
    """
    faults = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        parts = item.split(":")
        try:
            point, rank, action = parts[0], int(parts[1]), parts[2]
            count = int(parts[3]) if len(parts) > 3 else 1
        except (IndexError, ValueError):
            raise ValueError(f"OCNET_FAULT item {item!r} is not POINT:RANK:ACTION[:COUNT]") from None
        if point not in POINTS or action not in ACTIONS or len(parts) > 4:
            raise ValueError(f"OCNET_FAULT item {item!r}: points {POINTS}, actions {ACTIONS}")
        faults[point, rank] = (action, count)
    return faults


_plans: dict[str, dict[tuple[str, int], tuple[str, int]]] = {"": {}}  # OCNET_FAULT's values, parsed
_reached: dict[tuple[str, int], int] = {}


def _planned() -> dict[tuple[str, int], tuple[str, int]]:
    spec = os.environ.get("OCNET_FAULT", "")
    if spec not in _plans:
        _plans[spec] = parse(spec)
    return _plans[spec]


def inject(point: str, rank: int) -> str | None:
    """Carry out the fault planned for this visit of ``point`` on ``rank``, if any.

    Returns ``"nan"`` when the caller is to poison its values, else ``None`` (or does not
    return at all)."""
    planned = _planned().get((point, rank))
    if planned is None:
        return None
    _reached[point, rank] = visits = _reached.get((point, rank), 0) + 1
    action, count = planned
    if visits != count:
        return None
    where = f"{point} #{count} on rank {rank}"
    if action == "raise":
        raise InjectedFault(f"injected fault at {where}")
    if action == "memory":
        raise MemoryError(f"injected out-of-memory at {where}")
    if action == "nospace":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "hang":
        while True:
            time.sleep(3600)
    if action in ("kill", "term", "int"):
        os.kill(os.getpid(), {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}[action])
        time.sleep(0.1)  # a handled signal is delivered between bytecodes: let it arrive here
        return None
    return action

"""Per-rank timelines: when a rank computes, waits and sends.

Work is recorded where it happens, by :func:`span`::

    with timeline.span("forward", steps=4):
        u = block(u)

The kind names what the rank does (:data:`KINDS`); ``steps`` says how many layer steps of
that kind the span covers, and any further keyword (``level``, ``peer``, ``micro_batch``)
says which.  A process records into one :class:`Recorder` (:func:`recording`); while none is
installed, :func:`span` returns a shared no-op context, so instrumented code costs one
lookup.  A replay of many ranks in one process (:mod:`ocnet.speedup`) gives each of its
threads a recorder of its own (``thread=True``) whose clock is virtual: its spans advance
the clock by a modelled cost instead of reading the time.
"""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .atomic import atomic_write

#: The kinds of span, and what one of them covers.  Compute kinds count ``steps`` (layer
#: steps of one state each); communication kinds are recorded by :mod:`ocnet.ranks.comm`.
KINDS = {
    "forward": "layer steps evaluated without an autograd graph (MGRIT relaxation, prediction)",
    "forward_graph": "layer steps evaluated while recording their autograd graph (training forward)",
    "backward": "input and parameter gradients through layer steps (back-propagation)",
    "vjp": "input gradients only, from a stored graph (an adjoint step)",
    "vjp_recompute": "input gradients with the layer's forward run again (an adjoint step without a graph)",
    "weight_grad": "parameter gradients only, from a stored graph",
    "head": "the opening or the classifier and loss, forward and backward",
    "update": "optimiser steps and auxiliary-variable updates",
    "send": "posting a message (the copy into the send buffer)",
    "wait": "waiting for a message or a request to complete",
    "reduce": "a collective (allreduce, broadcast, barrier)",
}

Event = tuple[str, float, float, dict[str, Any]]


class _Null:
    """The context :func:`span` returns while nothing records."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NULL = _Null()


class _Span:
    __slots__ = ("recorder", "kind", "info", "t0")

    def __init__(self, recorder: "Recorder", kind: str, info: dict[str, Any]) -> None:
        self.recorder, self.kind, self.info = recorder, kind, info

    def __enter__(self) -> None:
        self.t0 = self.recorder.clock()

    def __exit__(self, *exc: object) -> None:
        rec = self.recorder
        rec.events.append((self.kind, self.t0 - rec.origin, rec.clock() - rec.origin, self.info))


class Recorder:
    """The events of one rank: ``(kind, start, end, info)`` in seconds since ``origin``.

    Parameters
    ----------
    clock : callable
        Returns the time in seconds (default :func:`time.perf_counter`).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.origin = clock()
        self.events: list[Event] = []

    def span(self, kind: str, info: dict[str, Any]) -> Any:
        """A context manager that records one event of ``kind`` around its body."""
        return _Span(self, kind, info)

    def steps(self) -> dict[str, int]:
        """The layer steps the recorded spans covered, by kind: ``{kind: Σ steps}``."""
        out: dict[str, int] = {}
        for kind, _, _, info in self.events:
            out[kind] = out.get(kind, 0) + info.get("steps", 0)
        return out

    def restart(self, origin: float | None = None) -> None:
        """Drop the events so far and count time from ``origin`` (a reading of the clock;
        now when ``None``)."""
        self.events.clear()
        self.origin = self.clock() if origin is None else origin


_process: Recorder | None = None
_thread = threading.local()


def current() -> Recorder | None:
    """The recorder that :func:`span` writes to in this thread, if any."""
    return getattr(_thread, "recorder", None) or _process


def span(kind: str, **info: Any) -> Any:
    """Record the body of a ``with`` block as an event of ``kind`` (:data:`KINDS`) on this
    rank's timeline; ``info`` (``steps``, ``level``, …) travels with it.  A no-op while
    nothing records."""
    rec = getattr(_thread, "recorder", None) or _process
    return _NULL if rec is None else rec.span(kind, info)


@contextmanager
def recording(recorder: Recorder, thread: bool = False) -> Iterator[Recorder]:
    """Install ``recorder`` for this process (or, with ``thread=True``, for the calling
    thread only) while the block runs."""
    global _process
    if thread:
        before = getattr(_thread, "recorder", None)
        _thread.recorder = recorder
        try:
            yield recorder
        finally:
            _thread.recorder = before
    else:
        before_p = _process
        _process = recorder
        try:
            yield recorder
        finally:
            _process = before_p


# -- the run directory's timelines ------------------------------------------------------------
#: A rank's file holds at most this many events; recording stops there (about 4 MB of JSON).
MAX_EVENTS = 50_000


@dataclass
class Window:
    """The events of one optimiser step on one rank.

    Attributes
    ----------
    epoch, step : int
        The epoch, and the step's number in the run (as in ``history.jsonl``).
    start, end : float
        When the step began and ended, in seconds since the epoch's aligned origin (every
        rank's origin is the moment it left a barrier at the start of the epoch).
    events : list of Event
        ``(kind, start, end, info)`` in the same seconds, in the order they ended.
    job : float
        When the job that recorded it started (Unix time, rank 0's).
    ranks : int
        The number of ranks of that job.
    since : int
        The step that job resumed after (0 for the job that started the run): an earlier
        job's steps past it were lost with that job, and :func:`load` leaves them out.
    """

    epoch: int
    step: int
    start: float
    end: float
    events: list[Event]
    job: float = 0.0
    ranks: int = 1
    since: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "start": round(self.start, 7), "end": round(self.end, 7),
                "job": self.job, "ranks": self.ranks, "since": self.since,
                "events": [[k, round(a, 7), round(b, 7), info] for k, a, b, info in self.events]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Window":
        return cls(int(d["epoch"]), int(d["step"]), float(d["start"]), float(d["end"]),
                   [(str(k), float(a), float(b), dict(info)) for k, a, b, info in d["events"]],
                   float(d.get("job", 0.0)), int(d.get("ranks", 1)), int(d.get("since", 0)))


def path_of(run_dir: str | Path, rank: int) -> Path:
    """``<run_dir>/timeline/rank<rank>.json``: the file of one rank."""
    return Path(run_dir) / "timeline" / f"rank{rank}.json"


class Log:
    """The windows one rank records during a run, bounded, kept in ``<run>/timeline/``.

    A step is recorded when it is among ``steps_per_epoch`` steps of its epoch, from the
    epoch's second on (:meth:`records`); recording stops for good once the rank's file would
    hold more than :data:`MAX_EVENTS` events, so memory and file size stay bounded.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    rank, ranks : int
        This rank and the number of ranks of the job.
    steps_per_epoch : int
        The window's length; 0 records nothing.
    job : float
        The job's start (Unix time), the same on every rank.
    after_step : int
        A resumed job: the step of the checkpoint it continues from.  What this rank's file
        holds past it (steps an earlier job recorded and lost) is dropped.
    """

    def __init__(self, run_dir: str | Path, rank: int, ranks: int, steps_per_epoch: int, job: float,
                 after_step: int = 0) -> None:
        self.path = path_of(run_dir, rank)
        self.rank, self.ranks, self.steps_per_epoch, self.job = rank, ranks, steps_per_epoch, job
        self.since = after_step
        self.windows = [w for w in _read(self.path) if w.step <= after_step] if after_step else []
        self.n_events = sum(len(w.events) for w in self.windows)
        self.recorder = Recorder()
        self._dirty = False

    def records(self, batch: int) -> bool:
        """Whether the step of the epoch's ``batch``-th batch (from 0) is recorded."""
        return 1 <= batch <= self.steps_per_epoch and self.n_events < MAX_EVENTS

    def epoch_records(self, n_batches: int, skip: int = 0) -> bool:
        """Whether an epoch of ``n_batches`` batches, the first ``skip`` done, has steps in
        the window (the same answer on every rank, full or not: it decides a barrier)."""
        return self.steps_per_epoch > 0 and max(skip, 1) < min(n_batches, self.steps_per_epoch + 1)

    def align(self, moment: Callable[[Callable[[], float]], float]) -> None:
        """Count time from ``moment(clock)``, a collective that returns a reading of the
        clock marking the same moment on every rank (:meth:`ocnet.ranks.comm.Comm.common_moment`)."""
        self.recorder.restart(moment(self.recorder.clock))

    def step(self, epoch: int, step: int) -> "_Step":
        """A context that records the body as step ``step`` of ``epoch``."""
        return _Step(self, epoch, step)

    def write(self) -> None:
        """Replace this rank's file atomically with every window so far (when there is news)."""
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps({"format": 1, "rank": self.rank,
                                            "windows": [w.to_json() for w in self.windows]}))
        self._dirty = False


class _Step:
    __slots__ = ("log", "epoch", "step", "t0", "context")

    def __init__(self, log: Log, epoch: int, step: int) -> None:
        self.log, self.epoch, self.step = log, epoch, step

    def __enter__(self) -> None:
        rec = self.log.recorder
        rec.events = []
        self.context = recording(rec)
        self.context.__enter__()
        self.t0 = rec.clock() - rec.origin

    def __exit__(self, *exc: object) -> None:
        rec, log = self.log.recorder, self.log
        t1 = rec.clock() - rec.origin
        self.context.__exit__(None, None, None)
        log.windows.append(Window(self.epoch, self.step, self.t0, t1, rec.events, log.job, log.ranks, log.since))
        log.n_events += len(rec.events)
        rec.events = []
        log._dirty = True


def _read(path: Path) -> list[Window]:
    """The windows of one rank's file; none when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
        return [Window.from_json(w) for w in data["windows"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def load(run_dir: str | Path) -> dict[int, list[Window]]:
    """Every rank's recorded steps: ``{rank: [Window, …]}`` in step order.

    A step that a job recorded past the checkpoint a later job resumed from is left out
    (that job's training after its checkpoint was lost; the later job's steps replace it),
    as are the files of ranks beyond a job's rank count; a rank's file that cannot be read
    counts as empty.
    """
    ranks: dict[int, list[Window]] = {}
    for path in sorted((Path(run_dir) / "timeline").glob("rank*.json")):
        try:
            rank = int(path.stem[4:])
        except ValueError:
            continue
        ranks[rank] = _read(path)
    since = {w.job: w.since for ws in ranks.values() for w in ws}

    def lost(w: Window) -> bool:
        return any(job > w.job and step < w.step for job, step in since.items())

    return {r: sorted((w for w in ws if not lost(w) and r < w.ranks), key=lambda w: w.step)
            for r, ws in sorted(ranks.items())}

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

import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

#: The kinds of span, and what one of them covers.  Compute kinds count ``steps`` (layer
#: steps of one state each); communication kinds are recorded by :mod:`ocnet.comm`.
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

    def restart(self) -> None:
        """Drop the events so far and count time from now."""
        self.events.clear()
        self.origin = self.clock()


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

"""Ctrl-C while a job starts: one line for the job, not a traceback from every rank.

``mpiexec`` forwards the terminal's Ctrl-C to every rank.  Most of a job's start-up is each
rank importing torch, before any of the job's own handling is in place (the abort of
:func:`ocnet.ranks.comm.abort_on_exception`, set-up's agreement, the training loop's stop at
a step boundary); there each rank would print the ``KeyboardInterrupt``'s traceback.
:func:`install`, the first thing ``python -m ocnet.…`` runs, makes that one line from the
first rank and exit status 130 on every rank (a rank that died of the signal instead would
make ``mpiexec`` print a banner of its own).  The job hands over with :func:`uninstall`.
"""
from __future__ import annotations

import os
import sys
from typing import Any

# The supervisor's module imports nothing beyond the standard library: cheap this early.
from ..ranks.supervisor import launched_rank

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a program Ctrl-C ended

_previous: Any = None  # the excepthook before install(), while ours is in place


def install() -> None:
    """While ``python -m`` is starting one of ocnet's entry points (the package is imported
    as the ``-m`` module's parent, when ``sys.argv[0]`` is ``"-m"``): an uncaught Ctrl-C
    prints ``ocnet: interrupted while starting`` on the first rank and exits 130.  Elsewhere
    (``import ocnet`` in a program or a notebook) nothing changes."""
    global _previous
    if sys.argv[:1] != ["-m"] or _previous is not None:
        return
    _previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not issubclass(kind, KeyboardInterrupt):
            return _previous(kind, value, tb)
        try:
            if launched_rank() in (0, None):  # the first rank, or a process started alone
                sys.stderr.write("ocnet: interrupted while starting\n")
            sys.stderr.flush()
            sys.stdout.flush()
        finally:
            os._exit(EXIT_INTERRUPTED)

    sys.excepthook = hook


def uninstall() -> None:
    """The job's own handling takes over: the excepthook before :func:`install` again."""
    global _previous
    if _previous is not None:
        sys.excepthook, _previous = _previous, None

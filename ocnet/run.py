"""``[mpirun -n P] python -m ocnet.run [--config FILE.toml] [--key value …]``

Trains as the configuration says and writes the run directory: the job is
:func:`ocnet.runs.job.main`; this entry point adds the figures that :mod:`ocnet.results`
draws of the finished run, and runs each rank under a supervisor that reports however the
rank's process ends (:mod:`ocnet.ranks.supervisor`).
"""
from __future__ import annotations

import sys
from pathlib import Path

from .ranks import supervisor
from .runs import job


def draw(out: Path) -> None:
    """The run directory's figures (imported here: plotting loads matplotlib, which training
    does not need)."""
    from .results.plot import plot_runs
    plot_runs([out])


def main(argv: list[str] | None = None) -> int:
    """Train; returns the exit status (see :mod:`ocnet.runs.job`)."""
    return job.main(argv, draw=draw)


if __name__ == "__main__":
    supervisor.start()  # each rank a supervisor and the worker that returns here
    sys.exit(supervisor.finished(main()))

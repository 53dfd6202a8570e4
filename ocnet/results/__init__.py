"""Results: run directories read back — records, summary, configuration and the trained
network (:func:`load_run`, finished runs or runs still going) — the series derived from them,
and the figures (convergence plots, comparisons, Gantt charts of the timelines).

May use: :mod:`ocnet.runs` and every part below it.
"""
from .rundir import Run, load_run, load_runs

__all__ = ["Run", "load_run", "load_runs"]

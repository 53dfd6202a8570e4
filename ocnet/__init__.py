"""ocnet: layer-parallel training of residual networks, posed as an optimal-control problem.

The names a solver author needs::

    from ocnet import Option, Solver, ParallelSolver, register, sweep, check_solver

and a finished run as a plain module: ``ocnet.load_run(RUN_DIR).model``.
"""
# ruff: noqa: E402
# The first thing `python -m ocnet.run` runs: a Ctrl-C during the imports below (most of a
# job's start-up) then ends the job with one line, not a traceback from every rank.
from .runs import startup as _startup

_startup.install()

from .mgrit import solve
from .model.options import ConfigError, Option
from .model.problem import LocalNetwork, Problem
from .ranks import sweep
from .results import load_run
from .runs.testing import check_solver
from .solvers import ParallelSolver, Solver, SolverError, register
from .solvers.records import Field

__all__ = ["ConfigError", "Field", "LocalNetwork", "Option", "ParallelSolver", "Problem", "Solver",
           "SolverError", "check_solver", "load_run", "register", "solve", "sweep"]

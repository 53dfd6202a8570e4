"""ocnet: layer-parallel training of residual networks, posed as an optimal-control problem.

The names a solver author needs::

    from ocnet import Option, Solver, ParallelSolver, register, sweep, check_solver

a step kind's (``register_step``, ``check_step``), a training loop of one's own
(``Training``), and a finished run as a plain module: ``ocnet.load_run(RUN_DIR).model``.
"""
# ruff: noqa: E402
# The first thing `python -m ocnet.run` runs: a Ctrl-C during the imports below (most of a
# job's start-up) then ends the job with one line, not a traceback from every rank.
from .runs import startup as _startup

_startup.install()

from .mgrit import solve
from .model.kinds import register_step
from .model.options import ConfigError, Option
from .model.problem import LocalNetwork, Problem
from .ranks import sweep
from .results import load_run
from .runs.loop import Training
from .runs.testing import check_solver, check_step
from .solvers import ParallelSolver, Solver, SolverError, register
from .solvers.records import Field

__all__ = ["ConfigError", "Field", "LocalNetwork", "Option", "ParallelSolver", "Problem", "Solver",
           "SolverError", "Training", "check_solver", "check_step", "load_run", "register", "register_step", "solve",
           "sweep"]

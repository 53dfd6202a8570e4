"""ocnet: layer-parallel training of residual networks, posed as an optimal-control problem.

The names a solver author needs::

    from ocnet import Option, Solver, ParallelSolver, register, sweep, check_solver

and a finished run as a plain module: ``ocnet.load_run(RUN_DIR).model``.
"""
from . import sweep
from .mgrit import solve
from .options import ConfigError, Option
from .problem import LocalNetwork, Problem
from .records import Field
from .results import load_run
from .solvers import ParallelSolver, Solver, SolverError, register
from .testing import check_solver

__all__ = ["ConfigError", "Field", "LocalNetwork", "Option", "ParallelSolver", "Problem", "Solver",
           "SolverError", "check_solver", "load_run", "register", "solve", "sweep"]

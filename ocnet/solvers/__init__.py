"""The solver registry: ``--solver NAME`` picks a class from :data:`SOLVERS`.

Register your own without editing ocnet::

    from ocnet import Solver, register

    @register
    class Mine(Solver):
        name = "mine"
        def step(self, x, y, index): ...

and make it reachable from the command line by ``--plugin my_module`` (or a ``.py`` path), or
by an entry point of your package in the group ``ocnet.solvers``
(``mine = "my_package.solvers:Mine"``), which :func:`available` loads.

The solvers part also holds the record fields they report (:mod:`ocnet.solvers.records`).
May use: :mod:`ocnet.mgrit`, :mod:`ocnet.ranks`, :mod:`ocnet.model`.
"""
from __future__ import annotations

from .al import AugmentedLagrangian
from .amp import AMP
from .base import OptimizerFactory, ParallelSolver, Solver, SolverError
from .hybrid import Hybrid
from .local import Local
from .mgopt import MGOpt
from .mgrit import MGRIT
from .penalty import Penalty
from .registry import ENTRY_POINTS, SOLVERS, available, get, register
from .serial import Serial

for _cls in (Serial, Penalty, AugmentedLagrangian, Hybrid, MGRIT, Local, AMP, MGOpt):
    register(_cls)

__all__ = ["ENTRY_POINTS", "SOLVERS", "OptimizerFactory", "ParallelSolver", "Solver", "SolverError",
           "available", "get", "register"]

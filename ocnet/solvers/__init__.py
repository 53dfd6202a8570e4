"""The solver registry: ``--solver NAME`` picks a class from :data:`SOLVERS`.

Register your own without editing ocnet::

    from ocnet.solvers import Solver, register

    @register
    class Mine(Solver):
        name = "mine"
        def step(self, x, y, index): ...
"""
from __future__ import annotations

from .base import Solver
from .serial import Serial
from .penalty import Penalty
from .al import AugmentedLagrangian
from .hybrid import Hybrid
from .mgrit import MGRIT

SOLVERS: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Add a solver class to the registry under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    SOLVERS[cls.name] = cls
    return cls


def get(name: str) -> type[Solver]:
    try:
        return SOLVERS[name]
    except KeyError:
        raise KeyError(f"unknown solver {name!r}; registered: {', '.join(sorted(SOLVERS))}") from None


register(Serial)
register(Penalty)
register(AugmentedLagrangian)
register(Hybrid)
register(MGRIT)

__all__ = ["SOLVERS", "Solver", "get", "register"]

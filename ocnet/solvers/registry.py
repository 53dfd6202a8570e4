"""The registry of solvers by name, built-in and plug-in (entry points of ``ocnet.solvers``)."""
from __future__ import annotations

from ..model import plugins
from .base import Solver

ENTRY_POINTS = "ocnet.solvers"
SOLVERS: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Add a solver class to the registry under ``cls.name`` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    SOLVERS[cls.name] = cls
    return cls


def available() -> dict[str, type[Solver]]:
    """The registry, after loading the solvers that installed packages declare as entry points
    of the group ``ocnet.solvers`` (once)."""
    for entry in plugins.entry_points(ENTRY_POINTS):
        cls = entry.load()
        if entry.name not in SOLVERS:
            register(cls)
    return SOLVERS


def get(name: str) -> type[Solver]:
    """The solver registered as ``name``."""
    try:
        return available()[name]
    except KeyError:
        raise KeyError(f"unknown solver {name!r}; registered: {', '.join(sorted(SOLVERS))}") from None

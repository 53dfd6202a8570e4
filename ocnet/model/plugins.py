"""What installed packages declare for ocnet as entry points (solvers, data sets, step
kinds), each group loaded once per process."""
from __future__ import annotations

from importlib import metadata

_loaded: dict[str, bool] = {}  # a dict: a pool of warm ranks puts its contents back after each job


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The entry points of ``group`` the first time it is asked for, none afterwards: each
    registry adds them at its first look."""
    if _loaded.get(group):
        return []
    _loaded[group] = True
    return list(metadata.entry_points(group=group))

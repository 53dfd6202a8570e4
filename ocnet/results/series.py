"""The series the figures draw from a run's records.

The functions below turn the records of a :class:`~ocnet.results.rundir.Run` into arrays —
values that are missing, None, NaN or inf are left out — and into derived series
(convergence factors, phases of the hybrid, bytes, time per epoch, speedups).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .rundir import Run, num

#: Bytes in a megabyte: the decimal megabyte the console's summary prints ("48.38 MB sent"), on
#: every axis that counts bytes.
MB = 1e6


def with_key(run: Run, key: str) -> list:
    """The iteration records holding a value for ``key``, else the epoch records that do."""
    for recs in (run.iters, run.epochs):
        hits = [rec for rec in recs if rec.get(key) is not None]
        if hits:
            return hits
    return []


def xy(records: Sequence[dict], xkey: str, ykey: str, scale: float = 1.0):
    """Arrays ``(x, y)`` of the records where both keys hold finite numbers."""
    pts = [(num(r.get(xkey)), num(r.get(ykey))) for r in records]
    pts = [(x, y * scale) for x, y in pts if x is not None and y is not None]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def per_epoch(records: Sequence[dict], key: str, scale: float = 1.0):
    """Arrays ``(epoch, y)`` of the records with a finite ``key``, the epochs counted from 1 as
    the console counts them (``epoch 1/10``); the records count them from 0."""
    x, y = xy(records, "epoch", key, scale)
    return x + 1, y


def phases(value: Any) -> dict:
    """A value that may be given per phase, as ``{phase: value}`` (``{"": value}`` if not)."""
    return value if isinstance(value, dict) else {"": value}


def factor(res: Any) -> float | None:
    """Mean convergence factor ``(r_K / r_0) ** (1 / K)`` of a residual history ``r_0..r_K``."""
    vals = enumerate(map(num, res)) if isinstance(res, list) else ()
    r = [(k, x) for k, x in vals if x is not None]
    if len(r) < 2 or r[0][0] != 0 or r[0][1] <= 0 or r[-1][1] < 0:
        return None
    return (r[-1][1] / r[0][1]) ** (1.0 / r[-1][0])


def factors(run: Run) -> dict:
    """``{phase: (steps, factors)}``: recorded ``conv_factor``, else derived from ``residual``."""
    out: dict = {}
    recs = with_key(run, "conv_factor")
    derived = not recs
    for rec in recs or with_key(run, "residual"):
        step = num(rec.get("step"))
        value = rec.get("residual" if derived else "conv_factor")
        for phase, v in phases(value).items():
            f = factor(v) if derived else num(v)
            if step is not None and f is not None:
                out.setdefault(phase, ([], []))
                out[phase][0].append(step)
                out[phase][1].append(f)
    return out


def gapped(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` with a NaN wherever the steps ``x`` skip some, so that no line is drawn
    across steps without a value (the hybrid's serial phases)."""
    if x.size < 2:
        return x, y
    breaks = np.nonzero(np.diff(x) > 1)[0] + 1
    return np.insert(x.astype(float), breaks, np.nan), np.insert(y.astype(float), breaks, np.nan)


def phase_spans(run: Run) -> list[tuple[float, float, str]]:
    """``(first step, last step, phase)`` of each stretch of steps in one phase."""
    spans: list[list] = []
    for rec in run.iters:
        step, phase = num(rec.get("step")), rec.get("phase")
        if step is None or not isinstance(phase, str):
            continue
        if spans and spans[-1][2] == phase:
            spans[-1][1] = step
        else:
            spans.append([step, step, phase])
    return [(a, b, p) for a, b, p in spans]


def level_changes(run: Run) -> list[tuple[float, int]]:
    """``(first step, layers)`` of each level of nested iteration after the first: where the
    records' ``level`` changes (none for a run without levels)."""
    changes, current = [], None
    for rec in run.iters:
        step, level = num(rec.get("step")), rec.get("level")
        if step is None or not isinstance(level, int):
            continue
        if current is not None and level != current:
            changes.append((step, level))
        current = level
    return changes


def against_bytes(run: Run, key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(MB sent by the end of the epoch, value)`` of each epoch record with a finite ``key``."""
    total, pts = 0.0, []
    for rec in run.epochs:
        total += num(rec.get("bytes_sent")) or 0.0
        if num(rec.get(key)) is not None:
            pts.append((total / MB, rec[key] * scale))
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def positive(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``(x, y)`` that a log axis can show, ``y > 0``."""
    keep = y > 0
    return x[keep], y[keep]


def bytes_per_epoch(run: Run):
    """``(epochs, bytes)``, the epochs counted from 1 (:func:`per_epoch`): from epoch records,
    else the iteration records summed per epoch."""
    x, y = per_epoch(run.epochs, "bytes_sent")
    if x.size:
        return x, y
    total: dict = {}
    for e, b in zip(*per_epoch(run.iters, "bytes_sent")):
        total[e] = total.get(e, 0.0) + b
    return np.array(sorted(total)), np.array([total[e] for e in sorted(total)])


def epoch_time(run: Run) -> float | None:
    """The median wall time of an epoch (from the epoch records' clocks)."""
    t = [v for v in (num(r.get("wall_time")) for r in run.epochs) if v is not None]
    d = np.diff([0.0, *t])
    return float(np.median(d)) if d.size else None


def speedups(runs: list[Run]) -> dict[str, tuple[list[int], list[float]]]:
    """Per solver (and number of data groups, ``"serial D=2"``) with runs at two or more rank
    counts: ``(P, T(P_min) / T(P))`` from the median time per epoch (the first run at each P)."""
    by: dict[str, dict[int, float]] = {}
    for run in runs:
        solver, P, t = run.summary.get("solver") or run.config.get("solver"), run.summary.get("ranks"), epoch_time(run)
        if solver and isinstance(P, int) and t:
            by.setdefault(f"{solver} D={run.groups}" if run.groups > 1 else str(solver), {}).setdefault(P, t)
    return {s: (sorted(ts), [ts[min(ts)] / ts[P] for P in sorted(ts)]) for s, ts in by.items() if len(ts) > 1}

"""Run directories read for plotting, and the series the figures draw from them.

:func:`load_run` reads ``history.jsonl`` (skipping a torn last line: a run still writing),
``summary.json`` and ``config.toml``; the functions below turn its records into arrays —
values that are missing, None, NaN or inf are left out — and into derived series
(convergence factors, phases of the hybrid, bytes, time per epoch, speedups).
"""
from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

try:  # Python >= 3.11; the config is read only for labels and layer counts
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None


@dataclass
class Run:
    """One run directory, loaded.

    Attributes
    ----------
    path : Path
        The run directory.
    summary : dict
        ``summary.json``, or ``{}`` when it is missing or unreadable (a run still going).
    iters, epochs : list of dict
        The ``kind == "iter"`` and ``kind == "epoch"`` records of ``history.jsonl``, in file order.
    config : dict
        ``config.toml``, or ``{}``.
    suffix : str
        Appended to :attr:`label` to tell apart runs whose labels would collide
        (set by :func:`load_runs`).
    """

    path: Path
    summary: dict = field(default_factory=dict)
    iters: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    suffix: str = ""

    @property
    def base_label(self) -> str:
        """``"{solver} P={ranks}"`` (and ``" D={groups}"`` with several data groups), from the
        summary (else the config, else the directory name)."""
        solver = self.summary.get("solver") or self.config.get("solver")
        ranks = self.summary.get("ranks", self.config.get("ranks"))
        if not solver:
            return self.path.resolve().name  # resolve: Path(".").name is empty
        groups = f" D={self.groups}" if self.groups > 1 else ""
        return f"{solver} P={ranks}{groups}" if ranks is not None else str(solver)

    @property
    def groups(self) -> int:
        """The run's data groups (``--data-parallel``; 1 for runs before there were any)."""
        return int(self.summary.get("data_parallel", self.config.get("data_parallel", 1)))

    @property
    def label(self) -> str:
        """Legend label: :attr:`base_label`, plus the directory name when labels collide."""
        return f"{self.base_label} ({self.suffix})" if self.suffix else self.base_label

    @property
    def n_layers(self) -> int | None:
        """Number of layers N: from the records, else the summary, else the config."""
        for rec in reversed(self.iters + self.epochs):
            if num(rec.get("n_layers")) is not None:
                return int(rec["n_layers"])
        for src in (self.summary, self.config):
            for key in ("n_layers", "layers"):
                if num(src.get(key)) is not None:
                    return int(src[key])
        return None


def num(v: Any) -> float | None:
    """``v`` as a finite float, or None (for None, NaN, inf, bools, strings, lists)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory.

    Parameters
    ----------
    run_dir : str or Path
        Directory holding ``history.jsonl`` (required), ``summary.json``, ``config.toml``.

    Raises
    ------
    FileNotFoundError
        If ``run_dir/history.jsonl`` does not exist.
    """
    path = Path(run_dir)
    hist = path / "history.jsonl"
    if not hist.is_file():
        raise FileNotFoundError(f"{path} is not a run directory (no history.jsonl)")
    run = Run(path=path)
    lines = [ln for ln in hist.read_text(encoding="utf-8", errors="replace").splitlines()
             if ln.strip()]
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:  # a torn last line is a run still writing; anything else is not
                warnings.warn(f"{hist}: skipping unparsable line {i + 1}", stacklevel=2)
            continue
        kind = rec.get("kind") if isinstance(rec, dict) else None
        {"iter": run.iters, "epoch": run.epochs}.get(str(kind), []).append(rec)
    try:
        summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        run.summary = summary if isinstance(summary, dict) else {}
    except (OSError, ValueError):
        pass
    if tomllib is not None:
        try:
            run.config = tomllib.loads((path / "config.toml").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    return run


def load_runs(run_dirs: Iterable[str | Path | Run]) -> list[Run]:
    """Load several run directories and make their labels distinct.

    Runs whose ``"{solver} P={ranks}"`` labels collide get the directory name appended (or the
    whole path, where directory names collide too).
    """
    runs = [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
    base = Counter(r.base_label for r in runs)
    names = Counter(r.path.resolve().name for r in runs)
    for r in runs:
        name = r.path.resolve().name
        if base[r.base_label] > 1:
            r.suffix = name if names[name] == 1 else str(r.path)
    return runs


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


def against_bytes(run: Run, key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``(MB sent by the end of the epoch, value)`` of each epoch record with a finite ``key``."""
    total, pts = 0.0, []
    for rec in run.epochs:
        total += num(rec.get("bytes_sent")) or 0.0
        if num(rec.get(key)) is not None:
            pts.append((total / 1e6, rec[key] * scale))
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def positive(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = y > 0
    return x[keep], y[keep]


def bytes_per_epoch(run: Run):
    """``(epochs, bytes)``: from epoch records, else the iteration records summed per epoch."""
    x, y = xy(run.epochs, "epoch", "bytes_sent")
    if x.size:
        return x, y
    total: dict = {}
    for e, b in zip(*xy(run.iters, "epoch", "bytes_sent")):
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

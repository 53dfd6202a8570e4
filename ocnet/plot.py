"""Convergence plots drawn from run directories.

Usage::

    python -m ocnet.plot RUN_DIR [RUN_DIR ...] [--out DIR]

A run directory holds ``history.jsonl`` (one JSON record per line), ``summary.json`` and
``config.toml`` (see docs/guide.rst). Where the figures go:

* one run directory and no ``--out``: into that run directory, named ``convergence.png``,
  ``mgrit_residuals.png``, ``mgrit_convergence.png``, ``constraints.png``, ``bytes.png``, and
  ``timeline.png`` (a Gantt chart, :mod:`ocnet.gantt`; ``--steps FIRST:LAST`` picks its steps)
  when the run recorded timelines;
* one run directory and ``--out DIR``: the same names, in ``DIR``;
* several run directories: one comparison figure per kind, in ``--out`` (default: the current
  directory), named ``comparison.png`` (the convergence figure), ``comparison_mgrit_residuals.png``,
  ``comparison_mgrit_convergence.png``, ``comparison_constraints.png``, ``comparison_bytes.png``.

A figure other than the convergence one is drawn only when some run recorded its keys:
``residual`` / ``conv_factor`` (MGRIT), ``constraint_violation`` (penalty, augmented Lagrangian),
``bytes_sent`` > 0. Values that are missing, None or NaN are skipped, and an unparsable last line
of ``history.jsonl`` (a run still writing) is ignored.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from . import gantt
from .records import FIELDS

try:  # Python >= 3.11; the config is read only for labels and layer counts
    import tomllib
except ImportError:  # pragma: no cover
    tomllib = None

__all__ = ["Run", "load_run", "load_runs", "plot_runs", "main"]

PHASE_STYLES = {"forward": "-", "adjoint": "--"}


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
        """``"{solver} P={ranks}"``, from the summary (else the config, else the directory name)."""
        solver = self.summary.get("solver") or self.config.get("solver")
        ranks = self.summary.get("ranks", self.config.get("ranks"))
        if not solver:
            return self.path.resolve().name  # resolve: Path(".").name is empty
        return f"{solver} P={ranks}" if ranks is not None else str(solver)

    @property
    def label(self) -> str:
        """Legend label: :attr:`base_label`, plus the directory name when labels collide."""
        return f"{self.base_label} ({self.suffix})" if self.suffix else self.base_label

    @property
    def n_layers(self) -> int | None:
        """Number of layers N: from the records, else the summary, else the config."""
        for rec in reversed(self.iters + self.epochs):
            if _num(rec.get("n_layers")) is not None:
                return int(rec["n_layers"])
        for src in (self.summary, self.config):
            for key in ("n_layers", "layers"):
                if _num(src.get(key)) is not None:
                    return int(src[key])
        return None


def _num(v: Any) -> float | None:
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


def _with_key(run: Run, key: str) -> list:
    """The iteration records holding a value for ``key``, else the epoch records that do."""
    for recs in (run.iters, run.epochs):
        hits = [rec for rec in recs if rec.get(key) is not None]
        if hits:
            return hits
    return []


def _xy(records: Sequence[dict], xkey: str, ykey: str, scale: float = 1.0):
    """Arrays ``(x, y)`` of the records where both keys hold finite numbers."""
    pts = [(_num(r.get(xkey)), _num(r.get(ykey))) for r in records]
    pts = [(x, y * scale) for x, y in pts if x is not None and y is not None]
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def _phases(value: Any) -> dict:
    """A value that may be given per phase, as ``{phase: value}`` (``{"": value}`` if not)."""
    return value if isinstance(value, dict) else {"": value}


def _factor(res: Any) -> float | None:
    """Mean convergence factor ``(r_K / r_0) ** (1 / K)`` of a residual history ``r_0..r_K``."""
    vals = enumerate(map(_num, res)) if isinstance(res, list) else ()
    r = [(k, x) for k, x in vals if x is not None]
    if len(r) < 2 or r[0][0] != 0 or r[0][1] <= 0 or r[-1][1] < 0:
        return None
    return (r[-1][1] / r[0][1]) ** (1.0 / r[-1][0])


def _factors(run: Run) -> dict:
    """``{phase: (steps, factors)}``: recorded ``conv_factor``, else derived from ``residual``."""
    out: dict = {}
    recs = _with_key(run, "conv_factor")
    derived = not recs
    for rec in recs or _with_key(run, "residual"):
        step = _num(rec.get("step"))
        value = rec.get("residual" if derived else "conv_factor")
        for phase, v in _phases(value).items():
            f = _factor(v) if derived else _num(v)
            if step is not None and f is not None:
                out.setdefault(phase, ([], []))
                out[phase][0].append(step)
                out[phase][1].append(f)
    return out


def _new_figure(n: int, ncols: int, w: float = 5.0, h: float = 3.6):
    """A figure of ``n`` panels in ``ncols`` columns; returns it and the flat list of panels."""
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot and its global figure registry
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def _finish(ax, xlabel: str, ylabel: str, legend: bool = True, logy: bool = False) -> None:
    """Label a panel; log y when asked and all its values are positive; "no data" if empty."""
    ys = [y for ln in ax.lines for y in ln.get_ydata()]
    if logy and ys and min(ys) > 0:
        ax.set_yscale("log")
    if xlabel in ("epoch", "MGRIT iteration"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if any(len(ln.get_xdata()) for ln in ax.lines) or ax.collections:
        if legend and any(not ln.get_label().startswith("_") for ln in ax.lines):
            ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                color="grey")


def _plot_convergence(runs: list[Run], path: Path) -> Path:
    fig, axes = _new_figure(4, 2)
    for i, run in enumerate(runs):
        kw = dict(color=f"C{i % 10}", label=run.label)
        loss_recs = [r for r in run.epochs if _num(r.get("loss")) is not None]
        mark = "o" if loss_recs or len(run.iters) < 30 else None
        loss_recs = loss_recs or run.iters  # a run still in its first epoch has only iterations
        for ax, recs, x, y, scale, m in (
                (axes[0], loss_recs, "epoch", "loss", 1.0, mark),
                (axes[2], loss_recs, "wall_time", "loss", 1.0, mark),
                (axes[1], run.epochs, "epoch", "test_acc", 100.0, "o"),
                (axes[3], run.epochs, "wall_time", "test_acc", 100.0, "o"),
                (axes[1], run.epochs, "epoch", "val_acc", 100.0, "s"),
                (axes[3], run.epochs, "wall_time", "val_acc", 100.0, "s")):
            xs, ys = _xy(recs, x, y, scale)
            if xs.size:  # a run without this series gets no legend entry here
                style = dict(kw, ls="--", label=f"{run.label} (validation)") if y == "val_acc" else kw
                ax.plot(xs, ys, marker=m, ms=3, **style)
    loss = FIELDS["loss"]
    _finish(axes[0], "epoch", loss.label, logy=loss.log)
    _finish(axes[1], "epoch", "test accuracy (%), validation dashed")
    _finish(axes[2], "wall time (s)", loss.label, logy=loss.log)
    _finish(axes[3], "wall time (s)", "test accuracy (%), validation dashed")
    fig.suptitle("convergence")
    return _save(fig, path)


def _plot_residuals(runs: list[Run], path: Path) -> Path:
    rows = []  # (run, phase, [(step, residual array)])
    for run in runs:
        per_phase: dict = {}
        for rec in _with_key(run, "residual"):
            step = _num(rec.get("step"))
            for phase, res in _phases(rec["residual"]).items():
                r = np.array([_num(v) for v in res] if isinstance(res, list) else [], float)
                if step is not None and r.size:
                    per_phase.setdefault(phase, []).append((step, r))
        rows += [(run, phase, lines) for phase, lines in per_phase.items()]
    fig, axes = _new_figure(len(rows), max(1, min(len(rows), 2)))
    for ax, (run, phase, lines) in zip(axes, rows):
        segs, steps = [], []
        for step, r in lines:
            k = np.arange(r.size)
            ok = np.isfinite(r) & (r > 0)  # None became NaN; log scale needs r > 0
            if ok.any():
                segs.append(np.column_stack([k[ok], r[ok]]))
                steps.append(step)
        ax.set_yscale("log")
        if segs:
            lc = LineCollection(segs, cmap="viridis", alpha=0.5, linewidths=0.8,
                                norm=Normalize(min(steps), max(steps) + 1e-12))
            lc.set_array(np.array(steps))
            ax.add_collection(lc)
            ax.autoscale_view()
            fig.colorbar(lc, ax=ax, label="optimiser step")
        ax.set_title(f"{run.label} {phase}".strip(), fontsize="medium")
        _finish(ax, "MGRIT iteration", FIELDS["residual"].label, legend=False)
    fig.suptitle("MGRIT residual per optimiser step")
    return _save(fig, path)


def _plot_mgrit_convergence(runs: list[Run], path: Path) -> Path:
    factors = [(run, _factors(run)) for run in runs]
    by_n = [(run.n_layers, f) for run, f in factors if f and run.n_layers]
    vs_n = len({n for n, _ in by_n}) > 1
    fig, axes = _new_figure(2 if vs_n else 1, 2 if vs_n else 1)
    ax = axes[0]
    for i, (run, per_phase) in enumerate(factors):
        for phase, (steps, f) in per_phase.items():
            ax.plot(steps, f, PHASE_STYLES.get(phase, "-"), color=f"C{i % 10}", lw=1,
                    label=f"{run.label} {phase}".strip())
    _finish(ax, "optimiser step", "MGRIT convergence factor")
    if vs_n:
        ax = axes[1]
        phases = sorted({p for _, f in by_n for p in f})
        for j, phase in enumerate(phases):
            pts = sorted((n, float(np.mean(f[phase][1]))) for n, f in by_n if phase in f)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], PHASE_STYLES.get(phase, "-"),
                    marker="o", color=f"C{j % 10}", label=phase or "mean factor")
        ax.set_xscale("log", base=2)
        _finish(ax, "layers N", "mean convergence factor")
    fig.suptitle("MGRIT convergence factor")
    return _save(fig, path)


def _plot_constraints(runs: list[Run], path: Path) -> Path:
    keys = [k for k in ("constraint_violation", "rho", "mu_norm", "penalized_objective")
            if any(_with_key(r, k) for r in runs)]
    fig, axes = _new_figure(len(keys), min(len(keys), 2))
    for ax, key in zip(axes, keys):
        for i, run in enumerate(runs):
            x, y = _xy(_with_key(run, key), "step", key)
            if x.size:
                ax.plot(x, y, color=f"C{i % 10}", label=run.label, ms=3,
                        marker="o" if x.size < 30 else None)
        _finish(ax, "optimiser step", FIELDS[key].label, logy=FIELDS[key].log)
    fig.suptitle("constraints")
    return _save(fig, path)


def _bytes_per_epoch(run: Run):
    """``(epochs, bytes)``: from epoch records, else the iteration records summed per epoch."""
    x, y = _xy(run.epochs, "epoch", "bytes_sent")
    if x.size:
        return x, y
    total: dict = {}
    for e, b in zip(*_xy(run.iters, "epoch", "bytes_sent")):
        total[e] = total.get(e, 0.0) + b
    return np.array(sorted(total)), np.array([total[e] for e in sorted(total)])


def _plot_bytes(runs: list[Run], path: Path) -> Path:
    series = [_bytes_per_epoch(r) for r in runs]
    peak = max((float(y.max()) for _, y in series if y.size), default=1.0)
    unit, scale = next(((u, s) for u, s in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))
                        if peak >= s), ("B", 1))
    fig, (ax,) = _new_figure(1, 1)
    for i, (run, (x, y)) in enumerate(zip(runs, series)):
        if x.size:
            ax.plot(x, y / scale, marker="o", ms=3, color=f"C{i % 10}", label=run.label)
    ax.set_ylim(bottom=0)
    _finish(ax, "epoch", f"{unit} sent per epoch (all ranks)")
    fig.suptitle("communication")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_runs(run_dirs: Sequence[str | Path | Run], out_dir: str | Path | None = None,
              steps: tuple[int, int] | None = None) -> list[Path]:
    """Draw every figure that the runs' records support and write them as PNG files.

    Parameters
    ----------
    run_dirs : sequence of str, Path or Run
        Run directories (or runs already loaded), at least one.
    out_dir : str or Path, optional
        Where to write. Default: the run directory for one run, the current directory for
        several. Several runs give ``comparison*.png`` names (see the module docstring).
    steps : (int, int), optional
        The first and last step of the timeline chart (one run that recorded timelines);
        default: a few steps of its last recorded epoch.

    Returns
    -------
    list of Path
        The files written, convergence figure first.
    """
    runs = load_runs(run_dirs)
    if not runs:
        raise ValueError("plot_runs needs at least one run directory")
    single = len(runs) == 1
    out = Path(out_dir) if out_dir is not None else runs[0].path if single else Path.cwd()

    def target(kind: str) -> Path:
        if single:
            return out / f"{kind}.png"
        return out / ("comparison.png" if kind == "convergence" else f"comparison_{kind}.png")

    def has(key: str) -> bool:
        return any(_with_key(r, key) for r in runs)

    written = [_plot_convergence(runs, target("convergence"))]
    if has("residual"):
        written.append(_plot_residuals(runs, target("mgrit_residuals")))
    if has("residual") or has("conv_factor"):
        written.append(_plot_mgrit_convergence(runs, target("mgrit_convergence")))
    if has("constraint_violation"):
        written.append(_plot_constraints(runs, target("constraints")))
    if any(_bytes_per_epoch(r)[1].sum() > 0 for r in runs):
        written.append(_plot_bytes(runs, target("bytes")))
    if single and (runs[0].path / "timeline").is_dir():
        chart = gantt.draw(runs[0].path, out / "timeline.png", steps)
        written += [chart] if chart is not None else []
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status.

    0 on success (the paths written are printed, one a line), 1 when a file cannot be read or
    written, 2 when an argument is not a run directory (nothing is drawn then).
    """
    parser = argparse.ArgumentParser(
        prog="python -m ocnet.plot",
        description="Draw convergence plots from ocnet run directories.",
        epilog="One RUN_DIR without --out: the PNGs go into RUN_DIR (convergence.png, ...). "
               "Several RUN_DIRs: comparison figures (comparison.png, comparison_*.png) go "
               "into --out, default the current directory. Figures for MGRIT residuals, "
               "constraints and bytes sent are drawn only when some run recorded them; the "
               "Gantt chart timeline.png when one run recorded timelines.")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: see below)")
    parser.add_argument("--steps", metavar="FIRST[:LAST]", default=None, type=_steps,
                        help="the steps of the timeline chart (timeline.png; default: a few of the last "
                             "recorded epoch)")
    args = parser.parse_args(argv)
    for d in args.run_dirs:
        if not (Path(d) / "history.jsonl").is_file():
            print(f"ocnet.plot: error: {d} is not a run directory (no history.jsonl)",
                  file=sys.stderr)
            return 2
    try:
        written = plot_runs(args.run_dirs, args.out, args.steps)
    except OSError as e:
        print(f"ocnet.plot: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _steps(text: str) -> tuple[int, int]:
    try:
        return gantt.parse_steps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())

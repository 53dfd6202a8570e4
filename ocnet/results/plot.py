"""Convergence plots drawn from run directories.

Usage::

    python -m ocnet.plot RUN_DIR [RUN_DIR ...] [--out DIR]

A run directory holds ``history.jsonl`` (one JSON record per line), ``summary.json`` and
``config.toml`` (see docs/guide.rst). Where the figures go:

* one run directory and no ``--out``: into that run directory, named ``convergence.png``,
  ``mgrit_residuals.png``, ``mgrit_convergence.png``, ``constraints.png``, ``bytes.png``, and
  ``timeline.png`` (a Gantt chart, :mod:`ocnet.results.gantt`; ``--steps FIRST:LAST`` picks its steps)
  when the run recorded timelines;
* one run directory and ``--out DIR``: the same names, in ``DIR``;
* several run directories: one comparison figure per kind, in ``--out`` (default: the current
  directory), named ``comparison.png`` (the convergence figure), ``comparison_mgrit_residuals.png``,
  ``comparison_mgrit_convergence.png``, ``comparison_constraints.png``, ``comparison_bytes.png``,
  and ``comparison_speedup.png`` when runs of one solver differ in their rank count.

:func:`figures` returns the figures themselves (matplotlib ``Figure`` objects, by kind).

A figure other than the convergence one is drawn only when some run recorded its keys:
``residual`` / ``conv_factor`` (MGRIT), ``constraint_violation`` (penalty, augmented Lagrangian),
``bytes_sent`` > 0. Values that are missing, None or NaN are skipped, and an unparsable last line
of ``history.jsonl`` (a run still writing) is ignored.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..runs import claim
from ..solvers.records import FIELDS
from . import gantt
from .rundir import Run, load_run, load_runs, num
from .series import (
    against_bytes,
    bytes_per_epoch,
    factors,
    gapped,
    phase_spans,
    phases,
    positive,
    speedups,
    with_key,
    xy,
)

__all__ = ["Run", "figures", "load_run", "load_runs", "plot_runs", "main"]

PHASE_STYLES = {"forward": "-", "adjoint": "--"}


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
    ys = [y for ln in ax.lines for y in np.asarray(ln.get_ydata(), float) if np.isfinite(y)]  # gaps are NaN
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


def _plot_convergence(runs: list[Run]) -> Figure:
    """Loss against step (each step thin, epoch means marked) and wall time; accuracy (test
    solid, train dotted, validation dashed) against epoch, bytes sent and wall time; test
    and validation loss against epoch."""
    fig, axes = _new_figure(6, 3)
    for i, run in enumerate(runs):
        st = _style(i)
        kw = dict(color=st["color"], label=run.label)
        xs, ys = xy(run.iters, "step", "loss")
        if xs.size:
            axes[0].plot(*gapped(xs, ys), lw=0.7, alpha=0.45, color=st["color"], ls=st["ls"])
        means = [r for r in run.epochs if num(r.get("loss")) is not None]
        for ax, x in ((axes[0], "step"), (axes[1], "wall_time")):
            mx, my = xy(means or run.iters, x, "loss")
            if mx.size:
                ax.plot(mx, my, marker=st["marker"], ms=4, ls=st["ls"] if means else "none", **kw)
        for key, ls, suffix in (("test_acc", st["ls"], ""), ("train_acc", ":", " (train)"),
                                ("val_acc", "--", " (validation)")):
            ex, ey = xy(run.epochs, "epoch", key, 100.0)
            if not ex.size:
                continue
            style = dict(color=st["color"], marker=st["marker"], ms=4, ls=ls, label=run.label + suffix)
            axes[2].plot(ex + 1, ey, **style)
            if key != "train_acc":
                tx, ty = xy(run.epochs, "wall_time", key, 100.0)
                axes[5].plot(tx, ty, **style)
                axes[4].plot(*against_bytes(run, key, 100.0), **style)
        for key, ls, suffix in (("test_loss", st["ls"], ""), ("val_loss", "--", " (validation)")):
            ex, ey = xy(run.epochs, "epoch", key)
            if ex.size:
                axes[3].plot(ex + 1, ey, color=st["color"], marker=st["marker"], ms=4, ls=ls, label=run.label + suffix)
    _shade_phases(axes[0], runs)
    label = _objective_label(runs)
    _finish(axes[0], "optimiser step", label, logy=True)
    _finish(axes[1], "wall time (s)", label, logy=True)
    _finish(axes[2], "epoch", "accuracy (%)")
    _finish(axes[3], "epoch", "test loss", logy=True)
    _finish(axes[4], "MB sent (all ranks, cumulative)", "accuracy (%)")
    _finish(axes[5], "wall time (s)", "accuracy (%)")
    for ax in (axes[2], axes[3]):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("convergence")
    return fig


#: A run's marker and line style, so that curves that coincide stay distinguishable.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def _style(i: int) -> dict:
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ls": LINESTYLES[i % len(LINESTYLES)]}


def _objective_label(runs: list[Run]) -> str:
    """What ``loss`` means: for the penalty methods the last block's loss from its auxiliary
    input ``z_{K-1}``, not the network's forward pass."""
    solvers = {r.summary.get("solver") or r.config.get("solver") for r in runs}
    if solvers & {"penalty", "al", "hybrid"}:
        return "loss (penalty, al: last block, from its auxiliary input)"
    return FIELDS["loss"].label


def _shade_phases(ax, runs: list[Run]) -> None:
    """Shade the serial phases of the first run that has phases (the hybrid's)."""
    spans = next((sp for sp in map(phase_spans, runs) if len({p for _, _, p in sp}) > 1), [])
    labelled = False
    for a, b, phase in spans:
        if phase == "serial":
            ax.axvspan(a - 0.5, b + 0.5, color="0.85", zorder=0, label=None if labelled else "serial phase")
            labelled = True


def _plot_residuals(runs: list[Run]) -> Figure:
    rows = []  # (run, phase, [(step, residual array)])
    for run in runs:
        per_phase: dict = {}
        for rec in with_key(run, "residual"):
            step = num(rec.get("step"))
            for phase, res in phases(rec["residual"]).items():
                r = np.array([num(v) for v in res] if isinstance(res, list) else [], float)
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
        tol = [t for rec in with_key(run, "tolerance")
               if (t := num(phases(rec["tolerance"]).get(phase))) is not None and t > 0]
        if tol:  # exact mode: the absolute tolerance of each solve; the median of them
            ax.axhline(float(np.median(tol)), color="C3", ls=":", lw=1, label="tolerance (median)")
        ax.set_title(f"{run.label} {phase}".strip(), fontsize="medium")
        _finish(ax, "MGRIT iteration", FIELDS["residual"].label, legend=bool(tol), logy=True)
    fig.suptitle("MGRIT residual per optimiser step")
    return fig


def _plot_mgrit_convergence(runs: list[Run]) -> Figure:
    per_run = [(run, factors(run)) for run in runs]
    by_n = [(run.n_layers, f) for run, f in per_run if f and run.n_layers]
    vs_n = len({n for n, _ in by_n}) > 1
    fig, axes = _new_figure(2 if vs_n else 1, 2 if vs_n else 1)
    ax = axes[0]
    for i, (run, per_phase) in enumerate(per_run):
        for phase, (steps, f) in per_phase.items():
            x, y = positive(np.array(steps, float), np.array(f, float))
            ax.plot(*gapped(x, y), PHASE_STYLES.get(phase, "-"), color=f"C{i % 10}", lw=1,
                    marker=_style(i)["marker"] if x.size < 30 else None, ms=3,
                    label=f"{run.label} {phase}".strip())
    _shade_phases(ax, runs)
    ax.axhline(1.0, color="0.4", ls=":", lw=1, label="1: no convergence")
    _finish(ax, "optimiser step", "MGRIT convergence factor", logy=True)
    if vs_n:
        ax = axes[1]
        names = sorted({p for _, f in by_n for p in f})
        for j, phase in enumerate(names):
            pts = sorted((n, float(np.mean(f[phase][1]))) for n, f in by_n if phase in f)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], PHASE_STYLES.get(phase, "-"),
                    marker="o", color=f"C{j % 10}", label=phase or "mean factor")
        ax.set_xscale("log", base=2)
        _finish(ax, "layers N", "mean convergence factor", logy=True)
    fig.suptitle("MGRIT convergence factor")
    return fig


def _plot_constraints(runs: list[Run]) -> Figure:
    """The penalty methods' fields against the step, on log axes where the schema says so
    (values that are exactly 0 — a first epoch without constraints — are left out there),
    broken where steps have none (the hybrid's serial phases, shaded)."""
    keys = [k for k in ("constraint_violation", "rho", "mu_norm", "penalized_objective")
            if any(with_key(r, k) for r in runs)]
    fig, axes = _new_figure(len(keys), min(len(keys), 2))
    for ax, key in zip(axes, keys):
        _against_step(ax, runs, key)
    fig.suptitle("constraints")
    return fig


def _against_step(ax, runs: list[Run], key: str, **style) -> None:
    """Field ``key`` of each run against the optimiser step, on a log axis where the schema
    says so (exact zeros left out), broken and shaded where steps have none (the hybrid's
    serial phases); ``style`` goes to ``plot``."""
    for i, run in enumerate(runs):
        x, y = xy(with_key(run, key), "step", key)
        if FIELDS[key].log:
            x, y = positive(x, y)
        if x.size:
            st = _style(i)
            ax.plot(*gapped(x, y), color=st["color"], ls=st["ls"], label=run.label, ms=3,
                    marker=st["marker"] if x.size < 30 else None, **style)
    _shade_phases(ax, runs)
    _finish(ax, "optimiser step", FIELDS[key].label, logy=FIELDS[key].log)


def _plot_accuracy(runs: list[Run]) -> Figure:
    """MGRIT's gradient inexactness per step with the tolerance its control acts on (dotted,
    where the run set one), and the iterations per solve when one-shot runs record them."""
    keys = [k for k in ("inexactness", "mgrit_iters") if any(with_key(r, k) for r in runs)]
    fig, axes = _new_figure(len(keys), len(keys))
    for ax, key in zip(axes, keys):
        if key == "inexactness":
            for i, run in enumerate(runs):
                tol = run.config.get("mgrit_control_tol") if run.config.get("mgrit_control", "off") != "off" else \
                    run.config.get("inexact_tol") if run.config.get("switch") == "adaptive" else None
                if tol:
                    ax.axhline(tol, color=_style(i)["color"], ls=":", lw=1, label=f"{run.label}: tolerance {tol:g}")
            _against_step(ax, runs, key)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            _against_step(ax, runs, key, drawstyle="steps-post")
    fig.suptitle("MGRIT accuracy control")
    return fig


def _plot_bytes(runs: list[Run]) -> Figure:
    series = [bytes_per_epoch(r) for r in runs]
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
    return fig


def _plot_speedup(runs: list[Run]) -> Figure:
    """Speedup against the rank count, per solver, relative to its fewest ranks."""
    fig, (ax,) = _new_figure(1, 1)
    for i, (solver, (P, speedup)) in enumerate(speedups(runs).items()):
        st = _style(i)
        ax.plot(P, speedup, color=st["color"], marker=st["marker"], ls=st["ls"], label=solver)
        ax.plot(P, [p / P[0] for p in P], color=st["color"], lw=0.8, alpha=0.5, ls=":")
    ax.set_xscale("log", base=2)
    _finish(ax, "ranks P", "speedup per epoch (dotted: ideal)")
    fig.suptitle("speedup")
    return fig


def figures(runs: Sequence[str | Path | Run]) -> dict[str, Figure]:
    """Every figure the runs' records support, by kind: ``convergence`` always,
    ``mgrit_residuals``, ``mgrit_convergence`` and ``mgrit_accuracy`` (MGRIT), ``constraints``
    (penalty, AL),
    ``bytes`` (when bytes were sent), ``speedup`` (runs of one solver at several rank
    counts)."""
    loaded = load_runs(runs)
    if not loaded:
        raise ValueError("figures need at least one run directory")

    def has(key: str) -> bool:
        return any(with_key(r, key) for r in loaded)

    out = {"convergence": _plot_convergence(loaded)}
    if has("residual"):
        out["mgrit_residuals"] = _plot_residuals(loaded)
    if has("residual") or has("conv_factor"):
        out["mgrit_convergence"] = _plot_mgrit_convergence(loaded)
    if has("constraint_violation"):
        out["constraints"] = _plot_constraints(loaded)
    if has("inexactness"):
        out["mgrit_accuracy"] = _plot_accuracy(loaded)
    if any(bytes_per_epoch(r)[1].sum() > 0 for r in loaded):
        out["bytes"] = _plot_bytes(loaded)
    if speedups(loaded):
        out["speedup"] = _plot_speedup(loaded)
    return out


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

    written = [_save(fig, target(kind)) for kind, fig in figures(runs).items()]
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
            print(f"ocnet.plot: error: {_nothing_to_draw(Path(d))}", file=sys.stderr)
            return 2
    try:
        written = plot_runs(args.run_dirs, args.out, args.steps)
    except OSError as e:
        print(f"ocnet.plot: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


def _nothing_to_draw(run_dir: Path) -> str:
    """Why ``run_dir``, which has no history yet, cannot be drawn: a run is written there
    (its claim names the job), a run stopped there before its first epoch ended, or it is
    not a run directory at all."""
    holder = claim.holder_of(run_dir) if run_dir.is_dir() else None
    if holder is not None:
        return (f"{run_dir}: the run is in progress and has not finished an epoch yet ({holder}); "
                "its figures can be drawn once its first epoch ends")
    if (run_dir / "config.toml").is_file():
        return f"{run_dir}: the run has no finished epoch (it stopped before its first epoch ended)"
    return f"{run_dir} is not a run directory (no history.jsonl)"


def _steps(text: str) -> tuple[int, int]:
    try:
        return gantt.parse_steps(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None

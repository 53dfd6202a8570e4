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

Every figure reads the same way: epochs are counted from 1, as the console's ``epoch 1/10``
lines count them; bytes are decimal megabytes (MB), as in the console's summary; log axes are
labelled with plain numbers (0.6, 2, 30); a value of exactly 0 on a log axis is marked at the
axis floor, not left out; every line is in the legend, and a curve drawn over an earlier one
with the same points says so there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..runs import claim
from ..solvers.records import FIELDS
from . import blockwise, gantt, panels
from .rundir import Run, load_run, load_runs, num
from .series import (
    MB,
    against_bytes,
    bytes_per_epoch,
    factors,
    gapped,
    level_changes,
    per_epoch,
    phase_spans,
    phases,
    positive,
    speedups,
    with_key,
    xy,
)

__all__ = ["Run", "figures", "load_run", "load_runs", "plot_runs", "main"]

PHASE_STYLES = {"forward": "-", "adjoint": "--"}

#: The solvers whose recorded ``loss`` is the last block's, computed from its auxiliary input.
PENALTY_SOLVERS = {"penalty", "al", "hybrid"}

#: A y axis takes ticks at the values themselves (:func:`panels.ticks_at`) up to this many values.
FEW_VALUES = 8

# -- the figures --------------------------------------------------------------------------------
def _plot_convergence(runs: list[Run]) -> Figure:
    """Loss against step (each step thin, epoch means marked) and wall time; accuracy (test
    solid, train dotted, validation dashed) against epoch, MB sent and wall time; test
    and validation loss against epoch."""
    fig, axes = panels.new_figure(6, 3)
    held_out: set[str] = set()  # which held-out losses panel 3 draws, for its label
    any_means = False
    for i, run in enumerate(runs):
        st, marked = panels.style(i), panels.marked(i)
        xs, ys = xy(run.iters, "step", "loss")
        if xs.size:  # unlabelled: one key entry says what the thin lines are, for every run
            axes[0].plot(*gapped(xs, ys), lw=0.7, alpha=0.45, color=st["color"], ls=st["ls"])
        means = [r for r in run.epochs if num(r.get("loss")) is not None]
        any_means |= bool(means)
        for ax, x in ((axes[0], "step"), (axes[1], "wall_time")):
            mx, my = xy(means or run.iters, x, "loss")
            if mx.size:
                ax.plot(mx, my, ls=st["ls"] if means else "none", label=run.label, **marked)
        for key, ls, what in (("test_acc", st["ls"], "test"), ("train_acc", ":", "train"),
                              ("val_acc", "--", "validation")):
            ex, ey = per_epoch(run.epochs, key, 100.0)
            if not ex.size:
                continue
            style = dict(ls=ls, label=f"{run.label}: {what}", **marked)
            axes[2].plot(ex, ey, **style)
            if key != "train_acc":
                tx, ty = xy(run.epochs, "wall_time", key, 100.0)
                axes[5].plot(tx, ty, **style)
                axes[4].plot(*against_bytes(run, key, 100.0), **style)
        for key, ls, what in (("test_loss", st["ls"], "test"), ("val_loss", "--", "validation")):
            ex, ey = per_epoch(run.epochs, key)
            if ex.size:
                axes[3].plot(ex, ey, ls=ls, label=f"{run.label}: {what}", **marked)
                held_out.add(what)
    _shade_phases(axes[0], runs)
    _mark_levels(axes[0], runs)
    label = _loss_label(runs)
    step_key = [panels.style_key("thin: each step", lw=0.7)]
    if any_means:
        step_key.append(panels.style_key("markers: epoch mean", marker="o", mfc="none", ms=4))
    panels.finish(axes[0], "optimiser step", label, logy=True, key=step_key)
    panels.finish(axes[1], "wall time (s)", label, logy=True, key=step_key[1:])
    panels.finish(axes[2], "epoch", "accuracy (%)")
    held = [w for w in ("test", "validation") if w in held_out] or ["test"]
    panels.finish(axes[3], "epoch", " and ".join(held) + " loss", logy=True)
    panels.finish(axes[4], "MB sent, cumulative (all ranks)", "accuracy (%)")
    panels.finish(axes[5], "wall time (s)", "accuracy (%)")
    fig.suptitle("convergence")
    return fig


def _loss_label(runs: list[Run]) -> str:
    """The loss axis's label. For the penalty methods ``loss`` is the last block's loss from
    its auxiliary input ``z_{K-1}``, not the network's forward pass (docs/plots.rst says so at
    length; the label only names it)."""
    penalty = [(r.summary.get("solver") or r.config.get("solver")) in PENALTY_SOLVERS for r in runs]
    if all(penalty):
        return "last-block loss"
    if any(penalty):
        return "loss (penalty methods: last block)"
    return FIELDS["loss"].label


def _shade_phases(ax, runs: list[Run]) -> None:
    """Shade the serial phases of the first run that has phases (the hybrid's)."""
    spans = next((sp for sp in map(phase_spans, runs) if len({p for _, _, p in sp}) > 1), [])
    labelled = False
    for a, b, phase in spans:
        if phase == "serial":
            ax.axvspan(a - 0.5, b + 0.5, color="0.85", zorder=0, label=None if labelled else "serial phase")
            labelled = True


def _mark_levels(ax, runs: list[Run]) -> None:
    """A vertical line where the first run with levels of nested iteration changes level,
    labelled with the new level's layer count."""
    changes = next((c for c in map(level_changes, runs) if c), [])
    for i, (step, layers) in enumerate(changes):
        ax.axvline(step - 0.5, color="0.4", lw=0.8, ls="--", zorder=0, label=None if i else "level change")
        ax.annotate(f"N={layers}", (step - 0.5, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                    textcoords="offset points", ha="left", va="top", fontsize=7, color="0.3")


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
    fig, axes = panels.new_figure(len(rows), max(1, min(len(rows), 2)))
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
        panels.finish(ax, "MGRIT iteration", FIELDS["residual"].label, legend=bool(tol), logy=True)
    fig.suptitle("MGRIT residual per optimiser step")
    return fig


def _plot_mgrit_convergence(runs: list[Run]) -> Figure:
    per_run = [(run, factors(run)) for run in runs]
    by_n = [(run.n_layers, f) for run, f in per_run if f and run.n_layers]
    vs_n = len({n for n, _ in by_n}) > 1
    fig, axes = panels.new_figure(2 if vs_n else 1, 2 if vs_n else 1)
    ax = axes[0]
    for i, (run, per_phase) in enumerate(per_run):
        for phase, (steps, f) in per_phase.items():
            x, y = positive(np.array(steps, float), np.array(f, float))
            marked = panels.marked(i) if x.size < 30 else {"color": panels.style(i)["color"]}
            ax.plot(*gapped(x, y), PHASE_STYLES.get(phase, "-"), lw=1, label=f"{run.label} {phase}".strip(),
                    **marked)
    _shade_phases(ax, runs)
    ax.axhline(1.0, color="0.4", ls=":", lw=1, label="1: no convergence")
    panels.finish(ax, "optimiser step", "MGRIT convergence factor", logy=True)
    if vs_n:
        ax = axes[1]
        names = sorted({p for _, f in by_n for p in f})
        for j, phase in enumerate(names):
            pts = sorted((n, float(np.mean(f[phase][1]))) for n, f in by_n if phase in f)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], PHASE_STYLES.get(phase, "-"),
                    marker="o", mfc="none", color=f"C{j % 10}", label=phase or "mean factor")
        ax.set_xscale("log", base=2)
        panels.ticks_at(ax.xaxis, (n for n, _ in by_n))
        panels.finish(ax, "layers N", "mean convergence factor", logy=True)
    fig.suptitle("MGRIT convergence factor")
    return fig


def _plot_constraints(runs: list[Run]) -> Figure:
    """The penalty methods' fields against the step (:func:`_against_step`); ρ, which takes a
    few values (1, 3, 9), ticked at them."""
    keys = [k for k in ("constraint_violation", "rho", "mu_norm", "penalized_objective")
            if any(with_key(r, k) for r in runs)]
    fig, axes = panels.new_figure(len(keys), min(len(keys), 2))
    for ax, key in zip(axes, keys):
        _against_step(ax, runs, key, ticks_at_values=key == "rho")
    fig.suptitle("constraints")
    return fig


def _against_step(ax, runs: list[Run], key: str, ticks_at_values: bool = False, **style) -> None:
    """Field ``key`` of each run against the optimiser step, broken and shaded where steps have
    none (the hybrid's serial phases). On a log axis where the schema says so and some value
    is positive; values of exactly 0 there are marked at the axis floor (:func:`panels.mark_zeros`).
    ``ticks_at_values``: tick y at the values taken, when they are few (:func:`panels.ticks_at`).
    ``style`` goes to ``plot``."""
    series = [xy(with_key(run, key), "step", key) for run in runs]
    log = FIELDS[key].log and any((y > 0).any() for _, y in series)
    for i, (run, (x, y)) in enumerate(zip(runs, series)):
        if log:
            panels.mark_zeros(ax, x[y == 0], i, run.label)
            x, y = positive(x, y)
        if x.size:
            marked = panels.marked(i) if x.size < 30 else {"color": panels.style(i)["color"]}
            ax.plot(*gapped(x, y), ls=panels.style(i)["ls"], label=run.label, **{**marked, **style})
    _shade_phases(ax, runs)
    panels.finish(ax, "optimiser step", FIELDS[key].label, logy=log)
    values = set(panels.data_values(ax))
    if ticks_at_values and 0 < len(values) <= FEW_VALUES:
        panels.ticks_at(ax.yaxis, values)


def _plot_accuracy(runs: list[Run]) -> Figure:
    """MGRIT's gradient inexactness per step with the tolerance its control acts on (dotted,
    where the run set one), and the iterations per solve when one-shot runs record them."""
    keys = [k for k in ("inexactness", "mgrit_iters") if any(with_key(r, k) for r in runs)]
    fig, axes = panels.new_figure(len(keys), len(keys))
    for ax, key in zip(axes, keys):
        if key == "inexactness":
            for i, run in enumerate(runs):
                tol = run.config.get("mgrit_control_tol") if run.config.get("mgrit_control", "off") != "off" else \
                    run.config.get("inexact_tol") if run.config.get("switch") == "adaptive" else None
                if tol:
                    ax.axhline(tol, color=panels.style(i)["color"], ls=":", lw=1,
                               label=f"{run.label}: tolerance {tol:g}")
            _against_step(ax, runs, key)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            _against_step(ax, runs, key, drawstyle="steps-post")
    fig.suptitle("MGRIT accuracy control")
    return fig


def _plot_bytes(runs: list[Run]) -> Figure:
    """The MB all ranks sent in each epoch, the epochs counted from 1 (the units and numbering of
    the console and of the convergence figure)."""
    fig, (ax,) = panels.new_figure(1, 1)
    for i, run in enumerate(runs):
        x, y = bytes_per_epoch(run)
        if x.size:
            ax.plot(x, y / MB, ls=panels.style(i)["ls"], label=run.label, **panels.marked(i))
    ax.set_ylim(bottom=0)
    panels.finish(ax, "epoch", "MB sent per epoch (all ranks)")
    fig.suptitle("communication")
    return fig


def _plot_speedup(runs: list[Run]) -> Figure:
    """Speedup against the rank count, per solver, relative to its fewest ranks."""
    fig, (ax,) = panels.new_figure(1, 1)
    ranks: set[int] = set()
    for i, (solver, (P, speedup)) in enumerate(speedups(runs).items()):
        ax.plot(P, speedup, ls=panels.style(i)["ls"], label=solver, **panels.marked(i))
        ax.plot(P, [p / P[0] for p in P], color=panels.style(i)["color"], lw=0.8, alpha=0.5, ls=":")
        ranks.update(P)
    ax.set_xscale("log", base=2)
    panels.ticks_at(ax.xaxis, ranks)
    panels.finish(ax, "ranks P", "speedup per epoch", key=[panels.style_key("dotted: ideal", ls=":", lw=0.8)])
    fig.suptitle("speedup")
    return fig


def figures(runs: Sequence[str | Path | Run]) -> dict[str, Figure]:
    """Every figure the runs' records support, by kind: ``convergence`` always,
    ``mgrit_residuals``, ``mgrit_convergence`` and ``mgrit_accuracy`` (MGRIT), ``constraints``
    (penalty, AL),
    ``bytes`` (when bytes were sent), ``speedup`` (runs of one solver at several rank
    counts), ``auxiliary_losses`` (local parallelism) and ``staleness`` (AMP)."""
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
    if blockwise.has_auxiliary_losses(loaded):
        out["auxiliary_losses"] = blockwise.auxiliary_losses(loaded)
    if blockwise.has_staleness(loaded):
        out["staleness"] = blockwise.staleness(loaded)
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

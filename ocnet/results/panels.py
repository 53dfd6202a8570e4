"""How a panel of ocnet's figures reads: the figure and its panels, log axes labelled with
plain numbers, ticks at the values themselves, a legend that lists every line (and says which
one hides another), a run's colour, marker and line style, and zeros on a log axis marked
rather than dropped. :mod:`ocnet.results.plot` draws the figures with them."""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import CARETDOWNBASE
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, MaxNLocator, NullLocator, StrMethodFormatter

#: Points that agree to this relative tolerance are drawn on top of one another.
COINCIDE_RTOL = 1e-3

#: A log axis of several decades within this range is labelled with plain numbers (0.001, 100);
#: one beyond it, with powers of ten (:class:`PlainLogFormatter`).
PLAIN_RANGE = (1e-4, 1e5)


# -- the figure and its panels ------------------------------------------------------------------
def new_figure(n: int, ncols: int, w: float = 5.0, h: float = 3.6):
    """A figure of ``n`` panels in ``ncols`` columns; returns it and the flat list of panels."""
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot and its global figure registry
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def finish(ax, xlabel: str, ylabel: str, legend: bool = True, logy: bool = False,
           key: Iterable[Line2D] = ()) -> None:
    """Label a panel: log y when asked and all its values are positive, with plain tick labels;
    "no data" if empty; a legend of its labelled lines (each curve that hides an earlier one
    says so) followed by ``key``, entries that say what a line style means."""
    ys = data_values(ax)
    if logy and ys.size and ys.min() > 0:
        ax.set_yscale("log")
    if ax.get_yscale() == "log":
        plain_log_ticks(ax.yaxis)
    if xlabel in ("epoch", "MGRIT iteration"):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if any(len(ln.get_xdata()) for ln in ax.lines) or ax.collections:
        if legend:
            note_coincident(ax)
            handles = ax.get_legend_handles_labels()[0] + list(key)
            if handles:  # smaller type where a comparison lists many curves
                ax.legend(handles=handles, fontsize="small" if len(handles) < 6 else "x-small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                color="grey")


def data_values(ax) -> np.ndarray:
    """The finite y values of the panel's lines whose y is data (not the axes fraction of a
    marker at the floor, :func:`mark_zeros`); the NaN that break lines are left out."""
    ys = [np.asarray(ln.get_ydata(), float) for ln in ax.lines
          if ln.get_transform().contains_branch_seperately(ax.transData)[1]]
    y = np.concatenate(ys) if ys else np.array([])
    return y[np.isfinite(y)]


class PlainLogFormatter(LogFormatterSciNotation):
    """Matplotlib's choice of which log ticks to label — the decades, and on an axis that spans
    about a decade or less some or all of the ticks between them — written as plain numbers
    (0.6, 2, 30): ``6×10^-1`` and ``2×10^0`` must be decoded before they can be read. An axis
    of several decades beyond 10^-4 or 10^5 keeps matplotlib's powers of ten, which read
    better there than 1e-06 beside 0.0001."""

    def __call__(self, x, pos=None):
        label = super().__call__(x, pos)  # "" for a tick that matplotlib leaves unlabelled
        if not label or self.axis is None:
            return label
        lo, hi = sorted(self.axis.get_view_interval())
        plain = hi <= 10 * lo or (PLAIN_RANGE[0] <= lo and hi < PLAIN_RANGE[1])
        return f"{x:g}" if plain else label


def plain_log_ticks(axis) -> None:
    """Label ``axis``, a log axis, with plain numbers (:class:`PlainLogFormatter`)."""
    axis.set_major_formatter(PlainLogFormatter())
    axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))


def ticks_at(axis, values: Iterable[float]) -> None:
    """Tick ``axis`` at ``values`` themselves, written plainly: ρ's 1, 3, 9 or the ranks 1, 2,
    4, which a log axis would label only by the decades (powers of 2) around them."""
    axis.set_major_locator(FixedLocator(sorted(set(values))))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_locator(NullLocator())


def note_coincident(ax) -> None:
    """Add ", same as B" to the legend label of each curve drawn with the points of an earlier
    curve B (serial and exact MGRIT train alike): the later one hides it, and the legend would
    otherwise list a curve that cannot be seen."""
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for ln in ax.lines:
        label = ln.get_label()
        x, y = (np.asarray(v, float) for v in ln.get_data())
        if label.startswith("_") or not x.size:
            continue
        same = next((other for other, x0, y0 in drawn if x0.shape == x.shape
                     and np.allclose(x0, x, rtol=COINCIDE_RTOL, equal_nan=True)
                     and np.allclose(y0, y, rtol=COINCIDE_RTOL, equal_nan=True)), None)
        drawn.append((label, x, y))
        if same is not None:
            # "mgrit P=1: test, same as serial P=1", not "..., same as serial P=1: test"
            what = label[label.find(": "):] if ": " in label else None
            ln.set_label(f"{label}, same as {same.removesuffix(what) if what else same}")


# -- a run's style ------------------------------------------------------------------------------
#: A run's marker and line style, so that curves that coincide stay distinguishable.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def style(i: int) -> dict:
    """The colour, marker and line style of the ``i``-th run. Markers are hollow, so that one
    drawn over another's leaves it visible."""
    return {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)], "ls": LINESTYLES[i % len(LINESTYLES)],
            "mfc": "none", "ms": 4}


def marked(i: int) -> dict:
    """``plot`` arguments for the ``i``-th run's markers, in its colour (line style apart)."""
    st = style(i)
    return {"color": st["color"], "marker": st["marker"], "mfc": st["mfc"], "ms": st["ms"]}


def style_key(label: str, **style) -> Line2D:
    """A legend entry for a line style rather than a run (grey, so no run's colour is implied)."""
    return Line2D([], [], color="0.45", label=label, **style)


def mark_zeros(ax, steps: np.ndarray, i: int, label: str) -> None:
    """Mark the ``steps`` where the ``i``-th run's value is exactly 0 just below the floor of
    the log axis ``ax``, with a legend entry that says so: a log axis cannot show 0, but a
    constraint violation of 0 (a first epoch before any constraint is violated) is a result,
    not a gap."""
    if steps.size:
        # x in data, y in axes coordinates: at the floor whatever the limits, and out of the y
        # autoscaling (and of data_values). A caret hanging from the spine, so that no marker
        # sits inside the axes, at a value it does not have.
        ax.plot(steps, np.zeros(steps.size), transform=ax.get_xaxis_transform(), ls="none",
                marker=CARETDOWNBASE, ms=5, color=style(i)["color"], clip_on=False,
                label=f"{label}: 0 (below the axis)")

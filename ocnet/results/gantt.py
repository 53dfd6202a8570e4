"""The Gantt chart of a run's timelines: one row per rank, one bar per recorded event.

``python -m ocnet.plot RUN_DIR`` draws it as ``timeline.png`` when the run recorded
timelines (``--timeline-steps``, :mod:`ocnet.ranks.timeline`); ``--steps A:B`` chooses the steps
shown.  Compute is drawn in a colour per kind, labelled with its MGRIT level (``L1``) or
micro-batch (``m3``) where the bar is wide enough, coarser levels in lighter shades;
waiting and collectives are hatched bars drawn over whatever they fall in, so that
waiting always shows as waiting; posting a message is a black tick at the top of the row.
A thin line marks where each rank's step begins.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..ranks.timeline import KINDS, Window, load

__all__ = ["choose", "draw", "parse_steps"]

#: At most this many steps are drawn when none are asked for.
DEFAULT_STEPS = 3

COLORS = {"forward": "#4c72b0", "forward_graph": "#55a868", "backward": "#c44e52", "vjp": "#dd8452",
          "vjp_recompute": "#937860", "weight_grad": "#8172b3", "head": "#da8bc3", "update": "#ccb974",
          "send": "#000000", "wait": "#ffffff", "reduce": "#e6e0f0"}
COMM = ("wait", "reduce")  # drawn hatched, over compute
HATCH = {"wait": "////", "reduce": "xxxx"}
EDGE = {"wait": "#b22222", "reduce": "#6a3d9a"}


def parse_steps(text: str) -> tuple[int, int]:
    """``"25:28"`` ↦ ``(25, 28)``, ``"25"`` ↦ ``(25, 25)``: the steps to draw, inclusive.

    Raises
    ------
    ValueError
        For anything else, or a range that ends before it begins.
    """
    first, _, last = text.partition(":")
    try:
        a, b = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"--steps takes STEP or FIRST:LAST (step numbers), got {text!r}") from None
    if b < a or a < 0:
        raise ValueError(f"--steps {text}: the range is empty")
    return a, b


def choose(windows: dict[int, list[Window]], steps: tuple[int, int] | None = None) -> dict[int, list[Window]]:
    """The windows to draw, per rank.

    ``steps=(first, last)`` keeps the steps in that range.  Without it: the first
    :data:`DEFAULT_STEPS` steps of the last epoch that the latest job recorded on every one
    of its ranks (training has warmed up by then, and every row has something to show).
    """
    if steps is not None:
        return {r: [w for w in ws if steps[0] <= w.step <= steps[1]] for r, ws in windows.items()}
    every = [w for ws in windows.values() for w in ws]
    if not every:
        return {r: [] for r in windows}
    job = max(w.job for w in every)
    ranks = max(w.ranks for w in every if w.job == job)
    by_rank = [{w.step for w in windows.get(r, []) if w.job == job} for r in range(ranks)]
    shared = set.intersection(*by_rank) if by_rank else set()
    epoch_of = {w.step: w.epoch for w in every if w.job == job}
    if not shared:
        shared = set(epoch_of)
    last_epoch = max(epoch_of[s] for s in shared)
    keep = sorted(s for s in shared if epoch_of[s] == last_epoch)[:DEFAULT_STEPS]
    return {r: [w for w in ws if w.step in keep and w.job == job] for r, ws in windows.items()}


def _offsets(chosen: dict[int, list[Window]]) -> dict[int, float]:
    """epoch ↦ the shift that puts its windows on one axis: times count from the first
    chosen step's start; another epoch (its own clock origin) follows after a small gap."""
    spans: dict[int, tuple[float, float]] = {}
    for ws in chosen.values():
        for w in ws:
            a, b = spans.get(w.epoch, (w.start, w.end))
            spans[w.epoch] = (min(a, w.start), max(b, w.end))
    shift, at = {}, 0.0
    for epoch in sorted(spans):
        a, b = spans[epoch]
        shift[epoch] = at - a
        at += (b - a) * 1.03
    return shift


def _label(info: dict[str, Any]) -> str:
    if "level" in info:
        return f"L{info['level']}"
    for key in ("micro_batch", "micro"):
        if key in info:
            return f"m{info[key]}"
    return ""


def draw(run_dir: str | Path, path: str | Path | None = None, steps: tuple[int, int] | None = None,
         windows: dict[int, list[Window]] | None = None) -> Path | None:
    """Draw the Gantt chart of ``run_dir``'s timelines into ``path`` (default
    ``<run_dir>/timeline.png``); returns the path, or ``None`` when there is nothing to draw
    (no timelines, or none among ``steps``).

    Parameters
    ----------
    steps : (int, int), optional
        The first and last step to draw (:func:`choose`).
    windows : dict, optional
        The timelines, when already loaded (:func:`ocnet.ranks.timeline.load`).
    """
    chosen = choose(load(run_dir) if windows is None else windows, steps)
    chosen = {r: ws for r, ws in chosen.items() if ws}
    if not chosen:
        return None
    shift = _offsets(chosen)
    end = max(w.end + shift[w.epoch] for ws in chosen.values() for w in ws)
    rows = max(chosen) + 1
    height = 1.5 + 0.45 * rows
    fig = Figure(figsize=(11, height))
    ax = fig.add_subplot(1, 1, 1)
    scale = 1e3  # milliseconds
    seen: set[str] = set()
    # The bars of one row, kind and shade go in one collection: thousands of one-bar
    # collections took seconds to draw.
    bars: dict[tuple[int, str, float], list[tuple[float, float]]] = {}
    for r, ws in chosen.items():
        y = rows - 1 - r
        for w in ws:
            s = shift[w.epoch]
            ax.plot([(w.start + s) * scale] * 2, [y - 0.45, y + 0.45], color="0.3", lw=0.8, zorder=4)
            if r == min(chosen):
                ax.text((w.start + s) * scale, rows - 0.45, f" step {w.step}", fontsize=7, va="bottom",
                        color="0.3")
            for kind, a, b, info in w.events:
                seen.add(kind)
                if kind == "send":
                    ax.plot([(a + s) * scale] * 2, [y + 0.25, y + 0.45], color="k", lw=1.0, zorder=3)
                    continue
                level = info.get("level", 0)
                shade = 1.0 if kind in COMM or not isinstance(level, int) else max(0.35, 1.0 - 0.2 * level)
                bars.setdefault((y, kind, shade), []).append(((a + s) * scale, (b - a) * scale))
                text = _label(info)
                if kind not in COMM and text and (b - a) > 0.025 * end:
                    ax.text((a + b) / 2 * scale + s * scale, y, text, ha="center", va="center", fontsize=7,
                            zorder=5)
    for (y, kind, shade), spans in bars.items():
        if kind in COMM:
            ax.broken_barh(spans, (y - 0.38, 0.76), zorder=2, facecolors=COLORS[kind], edgecolor=EDGE[kind],
                           hatch=HATCH[kind], lw=0.5)
        else:
            ax.broken_barh(spans, (y - 0.38, 0.76), zorder=1, facecolors=COLORS.get(kind, "0.6"), alpha=shade,
                           edgecolor="none")
    ax.set_yticks(range(rows))
    ax.set_yticklabels([f"rank {rows - 1 - y}" for y in range(rows)])
    ax.set_ylim(-0.6, rows - 0.1)
    ax.set_xlim(0, end * scale)
    ax.set_xlabel("time (ms) since the first step shown began")
    handles = [Patch(facecolor=COLORS.get(k, "0.6"), edgecolor=EDGE.get(k, "none"), hatch=HATCH.get(k), label=k)
               for k in KINDS if k in seen]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    shown = sorted({w.step for ws in chosen.values() for w in ws})
    span = f"step {shown[0]}" if len(shown) == 1 else f"steps {shown[0]}–{shown[-1]}"
    fig.suptitle(f"timeline: {span}, {rows} ranks (hatched: waiting)")
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1))
    out = Path(path) if path is not None else Path(run_dir) / "timeline.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


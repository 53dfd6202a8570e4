"""Figures of per-block and per-micro-batch fields: local parallelism's auxiliary losses and
AMP's staleness.

Both fields are dicts in a step's record: ``aux_loss`` maps a block to the loss of its
auxiliary classifier, ``staleness`` maps a staleness (the optimiser steps a rank took between a
micro-batch's forward and its backward) to how many backwards had it.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from matplotlib.figure import Figure

from . import panels
from .rundir import Run, num
from .series import gapped


def has_auxiliary_losses(runs: list[Run]) -> bool:
    return any(isinstance(r.get("aux_loss"), dict) and r["aux_loss"] for run in runs for r in run.iters)


def has_staleness(runs: list[Run]) -> bool:
    return any(isinstance(r.get("staleness"), dict) and r["staleness"] for run in runs for r in run.iters)


def auxiliary_losses(runs: list[Run]) -> Figure:
    """Each block's auxiliary loss against the optimiser step, with the network's own loss
    (black) for comparison: one panel per run."""
    fig, axes = panels.new_figure(len(runs), min(len(runs), 2))
    for ax, run in zip(axes, runs):
        blocks = sorted({b for r in run.iters for b in (r.get("aux_loss") or {})}, key=int)
        for i, b in enumerate(blocks):
            x, y = _positive(run, lambda r, b=b: num((r.get("aux_loss") or {}).get(b)))
            ax.plot(*gapped(x, y), label=f"block {b}", **panels.style(i))
        x, y = _positive(run, lambda r: num(r.get("loss")))
        if x.size:
            ax.plot(*gapped(x, y), color="black", lw=1, label="network (last block)")
        panels.finish(ax, "optimiser step", f"loss: {run.label}", logy=True)
    fig.suptitle("auxiliary losses per block")
    return fig


def _positive(run: Run, value) -> tuple[np.ndarray, np.ndarray]:
    """``(step, value(record))`` of the run's steps where the value is a positive number."""
    pts = [(r["step"], value(r)) for r in run.iters]
    pts = [(s, v) for s, v in pts if v is not None and v > 0]
    return np.array([s for s, _ in pts]), np.array([v for _, v in pts])


def staleness(runs: list[Run]) -> Figure:
    """How many micro-batch backwards saw weights 0, 1, 2, … optimiser steps newer than their
    forward, over the whole run (all ranks), as a share of all backwards."""
    fig, (ax,) = panels.new_figure(1, 1)
    width = 0.8 / len(runs)
    seen: set[int] = set()
    for i, run in enumerate(runs):
        counts: Counter[int] = Counter()
        for r in run.iters:
            for k, n in (r.get("staleness") or {}).items():
                counts[int(k)] += int(n)
        total = sum(counts.values())
        if not total:
            continue
        ks = sorted(counts)
        seen.update(ks)
        ax.bar(np.array(ks) + (i - (len(runs) - 1) / 2) * width, [counts[k] / total for k in ks], width,
               label=run.label, color=panels.style(i)["color"])
    if seen:
        panels.ticks_at(ax.xaxis, seen)
    panels.finish(ax, "staleness (optimiser steps between a micro-batch's forward and backward)",
                  "share of backwards")
    fig.suptitle("AMP staleness")
    return fig

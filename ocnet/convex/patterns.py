"""Activation patterns of a ReLU layer on the training data, sampled.

A hidden neuron ``u`` splits the n samples into those it fires on and the rest: the pattern
``D = diag(1[X u ≥ 0])``. The convex program of a two-layer ReLU network has one pair of
variables per pattern, and the set of all patterns grows as ``O((n/d)^d)`` (hyperplane
arrangements), so the patterns are sampled instead: ``D_i = diag(1[X g_i ≥ 0])`` for Gaussian
directions ``g_i``. A pattern is stored as a 0/1 column of an ``(n, P)`` matrix ``S``
(``S[:, i]`` is the diagonal of ``D_i``).
"""
from __future__ import annotations

import torch


def sample_patterns(x: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """At most ``count`` distinct activation patterns of ``x`` ``(n, d)``, as a 0/1 matrix
    ``(n, P)`` of the data's dtype and device, ``1 ≤ P ≤ count``.

    ``count`` directions ``g_i ~ N(0, I_d)`` are drawn from ``generator`` (on the CPU, so a
    seed gives the same patterns on every device); duplicates are dropped, and so is the
    pattern that fires on no sample (its variables can only multiply zero: they add nothing
    to the program). Columns keep the order in which they were first drawn.
    """
    if count < 1:
        raise ValueError(f"the number of activation patterns must be at least 1, got {count}")
    if x.ndim != 2:
        raise ValueError(f"the data must be a matrix (n, d), got shape {tuple(x.shape)}")
    g = torch.randn(x.shape[1], count, generator=generator, dtype=torch.float64)
    fires = (x.detach().to("cpu", torch.float64) @ g >= 0)  # (n, count)
    seen: set[bytes] = set()
    keep = []
    for i in range(count):
        column = fires[:, i]
        key = column.numpy().tobytes()
        if key in seen or not bool(column.any()):
            continue
        seen.add(key)
        keep.append(i)
    if not keep:  # possible when few directions are drawn on data of few directions
        raise ValueError(f"no direction of the {count} drawn fires a neuron on any sample: draw more")
    return fires[:, keep].to(x.device, x.dtype)

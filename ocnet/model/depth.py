"""Transfer of parameters between a network and its twin coarsened in depth.

A stage of ``N`` residual steps is forward Euler on the layer-time grid ``t_n = n h``,
``h = T / N``; step ``n`` carries ``θ_n``, read as the value of a field ``θ(t)`` at the step's
left end ``t_n``.  The coarse twin has ``N / c`` steps per stage, of size ``H = c h``, step
``j`` at ``j H = t_{cj}``.  The operators act stage by stage (a coarse step takes fine steps
of its own stage only) and on each step's parameters and buffers alike:

* interpolation ``P`` (coarse → fine, :func:`interpolate`): ``constant`` gives fine step
  ``n`` the coarse step ``⌊n / c⌋``; ``linear`` interpolates in layer time between coarse
  steps ``j`` and ``j + 1`` with weight ``(n − c j) / c`` on ``j + 1``, and the stage's last
  coarse step, which has no right neighbour, extends constant (convex weights keep batch
  norm's running variances positive, which extrapolation would not).
* restriction of *values* (fine → coarse, :func:`restrict`): ``injection`` takes fine step
  ``c j``; ``full_weighting`` averages fine steps ``c j + m``, ``|m| < c``, with the hat
  weights ``(c − |m|) / c²`` (``[¼, ½, ¼]`` for ``c = 2``; inside a stage, the transpose of
  ``linear`` divided by ``c``), renormalised over the steps that exist at a stage's start
  (``[⅔, ⅓]`` for ``c = 2``).  Both are averages (each row sums to one): a field constant in
  depth stays the same constant.
* restriction of *gradients* (:func:`restrict` with ``which="gradients"``): ``sum`` is
  ``Pᵀ`` for ``constant``, the sum over the ``c`` fine steps a coarse step stands for, and
  ``linear_transpose`` is ``Pᵀ`` for ``linear``.  A gradient per step scales like the step
  size (``∂J/∂θ_n ≈ h δJ/δθ(t_n)`` for a field ``θ(t)``), so the coarse gradient must be a
  sum (``≈ H δJ/δθ``), not an average; and ``Pᵀ ∇J_h`` is the gradient of
  ``θ_H ↦ J_h(P θ_H)`` (chain rule), what MG/Opt's first-order coherence asks of ``R``.

The opening, the transitions between stages and the classifier are not in layer time: they
are copied as they are.  Integer buffers (batch norm's ``num_batches_tracked``) are not
averaged: they take injection's or constant interpolation's value.
"""
from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch import nn

from .grid import TimeGrid, stage_layers
from .problem import Problem
from .steps import Residual

INTERPOLATIONS = ("constant", "linear")
RESTRICTIONS = ("injection", "full_weighting", "sum", "linear_transpose")


def coarsen_layers(n_layers: int, n_stages: int, c: int) -> int:
    """The residual steps of the coarse twin of a network of ``n_layers`` steps shared over
    ``n_stages`` stages (as :func:`~ocnet.model.grid.stage_layers` shares them), coarsened by
    ``c``: ``n_layers / c``.  Raises ``ValueError`` when a stage would be left without steps
    or ``c`` does not divide a stage's steps."""
    if c < 1:
        raise ValueError(f"a coarsening factor is a positive integer, got c = {c}")
    if n_layers < n_stages:
        raise ValueError(f"{n_layers} layers leave some of {n_stages} stages without layers")
    per_stage = stage_layers(n_layers, n_stages)
    for s, n in enumerate(per_stage):
        if n % c:
            raise ValueError(f"coarsening factor c = {c} does not divide stage {s}'s {n} layers "
                             f"(the {n_layers} layers fill {n_stages} stages as {per_stage})")
    return n_layers // c


def coarsen(problem: Problem, c: int) -> Problem:
    """The twin of ``problem`` with ``c`` times fewer steps per stage, of ``c`` times their
    size: a copy of its opening, transitions and classifier and of every stage's steps
    ``c j`` (injection), each now of size ``c h``.  Raises ``ValueError`` as
    :func:`coarsen_layers` when ``c`` does not divide a stage."""
    for s, grid in enumerate(problem.stages):
        if grid.N % c:
            raise ValueError(f"coarsening factor c = {c} does not divide stage {s}'s {grid.N} layers")
    twin = copy.deepcopy(problem)
    layers, n = [], 0
    for layer in twin.layers:
        if not isinstance(layer, Residual):  # a transition: the next stage starts
            layers.append(layer)
            n = 0
            continue
        if n % c == 0:
            layer.h *= c
            layers.append(layer)
        n += 1
    coarse = Problem(twin.opening, layers, twin.classifier, [TimeGrid(g.N // c, g.T) for g in problem.stages],
                     problem.input_shape, problem.n_classes)
    coarse.head_factory = problem.head_factory
    return coarse


def factor(fine: Problem, coarse: Problem) -> int:
    """The coarsening factor ``c`` between ``fine`` and ``coarse``: every stage of ``fine`` has
    ``c`` times the steps of the same stage of ``coarse``, on the same final time."""
    if len(fine.stages) != len(coarse.stages):
        raise ValueError(f"a network of {len(fine.stages)} stages and one of {len(coarse.stages)}")
    ratios = set()
    for s, (f, g) in enumerate(zip(fine.stages, coarse.stages)):
        if f.N % g.N:
            raise ValueError(f"stage {s}: {g.N} coarse steps do not divide {f.N} fine steps")
        if f.T != g.T:
            raise ValueError(f"stage {s}: final time {f.T} on the fine grid, {g.T} on the coarse")
        ratios.add(f.N // g.N)
    if len(ratios) != 1:
        raise ValueError(f"the stages are coarsened by different factors {sorted(ratios)}")
    return ratios.pop()


# -- the operators on one stage's sequence of steps -------------------------------------------
def interpolation(n_coarse: int, c: int, how: str = "constant") -> torch.Tensor:
    """``P``, shape ``(c n_coarse, n_coarse)``, float64: fine step ``n`` is ``Σ_j P[n, j]`` ×
    coarse step ``j``."""
    if how not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {how!r}; choose from {', '.join(INTERPOLATIONS)}")
    P = torch.zeros(c * n_coarse, n_coarse, dtype=torch.float64)
    for n in range(c * n_coarse):
        j, k = divmod(n, c)
        if how == "linear" and j + 1 < n_coarse:
            P[n, j], P[n, j + 1] = 1 - k / c, k / c
        else:
            P[n, j] = 1.0
    return P


def restriction(n_coarse: int, c: int, how: str = "injection") -> torch.Tensor:
    """``R``, shape ``(n_coarse, c n_coarse)``, float64: coarse step ``j`` is ``Σ_n R[j, n]`` ×
    fine step ``n`` (the rules: the module's docstring)."""
    if how == "sum":
        return interpolation(n_coarse, c, "constant").T.contiguous()
    if how == "linear_transpose":
        return interpolation(n_coarse, c, "linear").T.contiguous()
    if how not in RESTRICTIONS:
        raise ValueError(f"unknown restriction {how!r}; choose from {', '.join(RESTRICTIONS)}")
    n_fine = c * n_coarse
    R = torch.zeros(n_coarse, n_fine, dtype=torch.float64)
    for j in range(n_coarse):
        if how == "injection":
            R[j, c * j] = 1.0
        else:
            for m in range(1 - c, c):
                if 0 <= c * j + m < n_fine:
                    R[j, c * j + m] = (c - abs(m)) / c**2
            R[j] /= R[j].sum()  # one-sided at a stage's start: the weights of the steps that exist
    return R


def _apply(W: torch.Tensor, xs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``y_i = Σ_k W[i, k] x_k`` over the nonzero weights only, so that a weight of one copies
    its tensor exactly (and a weight of zero ignores one that is not finite)."""
    if W.shape[1] != len(xs):
        raise ValueError(f"an operator on {W.shape[1]} steps applied to {len(xs)}")
    ys = []
    for row in W.tolist():
        terms = [(w, x) for w, x in zip(row, xs) if w]
        if not terms:
            ys.append(torch.zeros_like(xs[0]))
            continue
        y = terms[0][1] * terms[0][0] if terms[0][0] != 1 else terms[0][1].clone()
        for w, x in terms[1:]:
            y = y + w * x
        ys.append(y)
    return ys


def _check_steps(n_fine: int, c: int) -> int:
    if c < 1 or n_fine % c:
        raise ValueError(f"coarsening factor c = {c} does not divide {n_fine} steps")
    return n_fine // c


def restrict_sequence(xs: Sequence[torch.Tensor], c: int, how: str = "injection") -> list[torch.Tensor]:
    """One stage's per-step tensors (``N`` of any one shape) restricted to ``N / c``: ``R x``."""
    return _apply(restriction(_check_steps(len(xs), c), c, how), xs)


def interpolate_sequence(xs: Sequence[torch.Tensor], c: int, how: str = "constant") -> list[torch.Tensor]:
    """One stage's per-step tensors (``N_c`` of any one shape) interpolated to ``c N_c``:
    ``P x`` (for MG/Opt's correction, ``P (x_H − x_H⁰)``, since ``P`` is linear)."""
    return _apply(interpolation(len(xs), c, how), xs)


# -- the operators on networks ----------------------------------------------------------------
def stage_steps(problem: Problem) -> list[list[Residual]]:
    """The residual steps of each stage, in order."""
    stages: list[list[Residual]] = [[]]
    for layer in problem.layers:
        if isinstance(layer, Residual):
            stages[-1].append(layer)
        elif stages[-1]:  # a transition starts the next stage
            stages.append([])
    return stages


def _others(problem: Problem) -> list[tuple[str, nn.Module]]:
    """The modules outside layer time: the opening, the transitions, the classifier."""
    transitions = [(f"transition {s}", layer) for s, layer in
                   enumerate((m for m in problem.layers if not isinstance(m, Residual)), start=1)]
    return [("opening", problem.opening), *transitions, ("classifier", problem.classifier)]


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _match(where: str, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` hold the same names with the same shapes."""
    if a.keys() != b.keys():
        raise ValueError(f"{where}: the networks' tensors differ: {sorted(a.keys() ^ b.keys())}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"{where}: {name} has shape {tuple(a[name].shape)} in one network, "
                             f"{tuple(b[name].shape)} in the other")


def _pairs(source: Problem, target: Problem) -> Iterator[tuple[list[Residual], list[Residual]]]:
    """Check that ``source`` and ``target`` differ only in depth; yield each stage's steps."""
    a, b = _others(source), _others(target)
    if len(a) != len(b):
        raise ValueError(f"a network of {len(a) - 1} stages and one of {len(b) - 1}")
    for (where, m), (_, n) in zip(a, b):
        _match(where, _tensors(m), _tensors(n))
    for s, (xs, ys) in enumerate(zip(stage_steps(source), stage_steps(target))):
        for i, x in enumerate(xs):
            _match(f"stage {s}, step {i}", _tensors(x), _tensors(ys[0]))
        for i, y in enumerate(ys):
            _match(f"stage {s}, step {i}", _tensors(xs[0]), _tensors(y))
        yield xs, ys


def _transfer_values(source: Problem, target: Problem, W: list[torch.Tensor], nearest: list[torch.Tensor]) -> None:
    """Parameters and buffers: ``W[s]`` applied to ``source``'s steps of stage ``s`` gives
    ``target``'s (``nearest[s]``, a selection, for integer buffers); the rest is copied."""
    stages = list(_pairs(source, target))  # every check before the first write
    for (_, m), (_, n) in zip(_others(source), _others(target)):
        to = _tensors(n)
        for name, x in _tensors(m).items():
            to[name].copy_(x)
    for s, (xs, ys) in enumerate(stages):
        src, dst = [_tensors(x) for x in xs], [_tensors(y) for y in ys]
        for name, y0 in dst[0].items():
            op = W[s] if y0.is_floating_point() else nearest[s]
            for d, v in zip(dst, _apply(op, [t[name] for t in src])):
                d[name].copy_(v)


def _transfer_gradients(source: Problem, target: Problem, W: list[torch.Tensor]) -> None:
    """The parameters' ``.grad`` as :func:`_transfer_values` moves the parameters; a missing
    gradient counts as zero, and none at all leaves none."""
    stages = list(_pairs(source, target))
    for (_, m), (_, n) in zip(_others(source), _others(target)):
        to = dict(n.named_parameters())
        for name, p in m.named_parameters():
            to[name].grad = None if p.grad is None else p.grad.clone()
    for s, (xs, ys) in enumerate(stages):
        src = [dict(x.named_parameters()) for x in xs]
        for name, y0 in ys[0].named_parameters():
            grads = [t[name].grad for t in src]
            targets = [dict(y.named_parameters())[name] for y in ys]
            if all(g is None for g in grads):
                for t in targets:
                    t.grad = None
                continue
            zero = torch.zeros_like(y0)
            for t, v in zip(targets, _apply(W[s], [zero if g is None else g for g in grads])):
                t.grad = v


def _transfer(source: Problem, target: Problem, W: list[torch.Tensor], nearest: list[torch.Tensor],
              which: str) -> None:
    if which not in ("parameters", "gradients"):
        raise ValueError(f"which is 'parameters' or 'gradients', got {which!r}")
    with torch.no_grad():
        if which == "parameters":
            _transfer_values(source, target, W, nearest)
        else:
            _transfer_gradients(source, target, W)


def restrict(fine: Problem, coarse: Problem, how: str = "injection", which: str = "parameters") -> None:
    """Write into ``coarse`` its restriction of ``fine`` (stages of ``c`` times fewer steps).

    ``which="parameters"``: the parameters and buffers (``how``: ``injection`` or
    ``full_weighting``, averages for values); ``which="gradients"``: the parameters' ``.grad``
    (``how``: ``sum`` or ``linear_transpose``, the transposes of the interpolations, for
    gradients).  Either rule is accepted for either; the pairing above is the consistent one
    (the module's docstring).  Opening, transitions and classifier are copied.
    """
    c = factor(fine, coarse)
    W = [restriction(g.N, c, how) for g in coarse.stages]
    nearest = [restriction(g.N, c, "injection") for g in coarse.stages]
    _transfer(fine, coarse, W, nearest, which)


def interpolate(coarse: Problem, fine: Problem, how: str = "constant", which: str = "parameters") -> None:
    """Write into ``fine`` its interpolation ``P`` of ``coarse`` (``how``: ``constant`` or
    ``linear``): the parameters and buffers, or (``which="gradients"``) the ``.grad``.
    Opening, transitions and classifier are copied."""
    c = factor(fine, coarse)
    W = [interpolation(g.N, c, how) for g in coarse.stages]
    nearest = [interpolation(g.N, c, "constant") for g in coarse.stages]
    _transfer(coarse, fine, W, nearest, which)

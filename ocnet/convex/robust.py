"""The ℓ∞-robust version of the sampled convex program: adversarial training of radius ε on
the inputs, solved exactly over the networks whose neurons keep their sampled pattern on the
whole ε-ball of every training sample.

An attack moves each input ``x_k`` by ``δ`` with ``‖δ‖∞ ≤ ε``; the ones column appended for
the bias is not an input and does not move, so only the first ``d`` coefficients of a neuron
(``v[:d]``, written ``v°``) meet ``δ``. Two steps make the robust problem convex:

* **Robust cones.** ``(2D_i − I) X v_i ≥ ε ‖v_i°‖₁`` row-wise (and the same for ``w_i``).
  Since ``min_{‖δ‖∞ ≤ ε} δᵀv° = −ε ‖v°‖₁``, this says the sign of ``(x_k + δ)ᵀ v_i`` is the
  sampled one for every δ of the ball: the pattern ``D_i`` holds on the whole ball, so
  ``(X v_i)_+`` stays ``D_i X v_i`` under attack.
* **Exact worst case.** Under these constraints the network is linear in δ on each ball:
  ``f(x_k + δ) = f(x_k) + δᵀ z_k`` with ``z_k = Σ_i d_ik (v_i − w_i)°`` (:func:`sensitivity`,
  ``Z = S (V − W)°``). The worst δ is a corner of the ball, and the worst-case losses have
  closed forms:

  - logistic, ``Σ_k log(1 + exp(−(y_k f(x_k) − ε ‖z_k‖₁)))`` at ``δ_k = −ε y_k sign(z_k)``;
  - squared, ``½ Σ_k (|f(x_k) − y_k| + ε ‖z_k‖₁)²`` at ``δ_k = ε sign(f(x_k) − y_k) sign(z_k)``
    (either sign where ``f(x_k) = y_k``).

Both are convex in ``(V, W)`` (a convex increasing function of a convex one), so with the
group-ℓ2 term ``β Σ_i (‖v_i‖₂ + ‖w_i‖₂)`` the robust program

    minimise    max_{‖δ_k‖∞ ≤ ε} ℓ(Σ_i D_i (X + Δ) (v_i − w_i), y) + β Σ_i (‖v_i‖₂ + ‖w_i‖₂)
    subject to  (2D_i − I) X v_i ≥ ε ‖v_i°‖₁,  (2D_i − I) X w_i ≥ ε ‖w_i°‖₁      (i = 1 … P)

is a convex program whose loss term is the exact adversarial loss of its network on the
training data. It is adversarial training restricted to the networks whose neurons keep
their sampled pattern on every training ball, so its optimum bounds from above the robust
optimum over the networks of the sampled patterns (a network free to cross a ball with a
neuron's boundary is not in its feasible set). At ``ε = 0`` it is the nominal program
(:mod:`.program`). The recovery is :func:`~.network.recover`'s, unchanged: a solution is a
:class:`~.program.Solution`.

This is derived here from the statements of Bai, Gautam, Gai & Sojoudi (arXiv 2105.12237)
and Bai, Gautam & Sojoudi (arXiv 2201.01965, Section 4) that the robust problem has such a
convex form; their text beyond the abstracts could not be read, so this is not a
transcription of their program.

Shapes as in :mod:`.program`: ``x`` ``(n, d + 1)`` with the ones column (``(n, d)`` without
a bias), ``V, W`` ``(P, d + 1)``, ``z`` and ``δ`` ``(n, d)``.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .cvx import _cvxpy, check_size, clarabel
from .program import ConvexProgram, Objective, Solution


def inputs(program: ConvexProgram) -> int:
    """``d``, how many of the program's columns an attack moves: all but the ones column."""
    return program.x.shape[1] - 1 if program.bias else program.x.shape[1]


def with_linear_pattern(patterns: torch.Tensor) -> torch.Tensor:
    """The patterns ``(n, P)`` with the pattern that fires on every sample appended (unless
    it is there already), ``(n, P)`` or ``(n, P + 1)``.

    A sampled pattern comes from a hyperplane through the data, and it keeps a nonzero neuron
    in the robust program only if some hyperplane of the same pattern stays ε (in ℓ∞) away
    from every sample: at a larger ε fewer of them do, and those that do not are forced to
    ``v_i = w_i = 0``. In a program with a bias the all-firing pattern always does (a large
    enough bias moves the hyperplane away from the data): its neurons are linear, so with it
    the robust program holds at least the robust linear model at every radius.
    """
    if bool((patterns == 1).all(dim=0).any()):
        return patterns
    return torch.cat([patterns, torch.ones_like(patterns[:, :1])], dim=1)


def sensitivity(program: ConvexProgram, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``z_k = Σ_i d_ik (v_i − w_i)°`` ``(n, d)``: the gradient of the network's output in its
    input at ``x_k``, the same on the whole ball where the robust cones hold."""
    return program.patterns @ (v - w)[:, :inputs(program)]


def worst_perturbation(program: ConvexProgram, v: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The closed-form worst ``δ`` ``(n, d)`` of radius ``eps`` for each training sample: the
    corner of the ball that lowers the margin ``y f`` (logistic) or moves ``f`` away from
    ``y`` (squared) by ``ε ‖z_k‖₁``, where the robust cones hold."""
    _check(eps)
    z = sensitivity(program, v, w)
    if program.loss == "logistic":
        direction = -program.y
    else:  # where f = y either direction is worst; take +
        residual = program.predict(v, w) - program.y
        direction = torch.where(residual >= 0, 1.0, -1.0).to(z.dtype)
    return eps * direction[:, None] * z.sign()


def robust_loss_term(program: ConvexProgram, v: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """The worst-case loss over the ε-balls (a scalar tensor), exact where the robust cones hold."""
    _check(eps)
    prediction = program.predict(v, w)
    spread = eps * sensitivity(program, v, w).abs().sum(dim=1)  # ε ‖z_k‖₁, (n,)
    if program.loss == "logistic":
        return torch.nn.functional.softplus(-(program.y * prediction - spread)).sum()
    return 0.5 * ((prediction - program.y).abs() + spread).pow(2).sum()


def robust_cones(program: ConvexProgram, v: torch.Tensor, eps: float) -> torch.Tensor:
    """``(2D_i − I) X v_i − ε ‖v_i°‖₁`` for every i, ``(n, P)``: nonnegative where the
    robust constraints hold."""
    _check(eps)
    return program.cones(v) - eps * v[:, :inputs(program)].abs().sum(dim=1)[None, :]


def robust_violation(program: ConvexProgram, v: torch.Tensor, w: torch.Tensor, eps: float) -> float:
    """The largest violation of a robust cone, relative to the same scale as
    :meth:`~.program.ConvexProgram.violation` (0 for the point 0)."""
    scale = float(program.x.norm(dim=1).max()) * float(max(v.norm(dim=1).max(), w.norm(dim=1).max()))
    if scale == 0:
        return 0.0
    worst = min(float(robust_cones(program, v, eps).min()), float(robust_cones(program, w, eps).min()))
    return max(0.0, -worst) / scale


def robust_objective(program: ConvexProgram, v: torch.Tensor, w: torch.Tensor, eps: float) -> Objective:
    """The worst-case loss term, the group-ℓ2 term and the robust cones' violation at
    ``(V, W)``; at ``ε = 0`` it is :meth:`~.program.ConvexProgram.objective`."""
    loss = float(robust_loss_term(program, v, w, eps))
    penalty = float(program.penalty(v, w))
    return Objective(loss=loss, penalty=penalty, total=loss + penalty,
                     violation=robust_violation(program, v, w, eps))


def margins(program: ConvexProgram, cap: float = 1.0, **options: Any) -> torch.Tensor:
    """The widest ℓ∞ margin each pattern admits, ``(P,)``: ``m_i = max min_k (2D_i − I)_k x̃_kᵀ v``
    over ``‖v°‖₁ ≤ 1``, capped at ``cap`` (the all-firing pattern's is unbounded: a bias alone
    fires on every ball), by one linear program in CVXPY.

    The robust cones of pattern i admit a nonzero ``v_i`` exactly when ``m_i > ε`` (scale the
    maximiser; conversely a ``v`` with ``‖v°‖₁ = 1`` meets them only if its margin is ``≥ ε``,
    and a non-constant pattern needs ``v° ≠ 0``). The patterns sampled from Gaussian directions
    have hyperplanes through the data, so their margins are small, about the gaps between
    neighbouring samples. ``options`` go to Clarabel's ``Problem.solve``.
    """
    cp = _cvxpy()
    x = program.x.detach().cpu().double().numpy()
    s = program.patterns.detach().cpu().double().numpy()
    (n, d_full), p = x.shape, s.shape[1]
    v, m = cp.Variable((p, d_full)), cp.Variable(p)
    constraints = [cp.multiply(2 * s - 1, x @ v.T) >= np.ones((n, 1)) @ cp.reshape(m, (1, p), order="C"),
                   cp.norm1(v[:, :inputs(program)], axis=1) <= 1, m <= cap]
    problem = cp.Problem(cp.Maximize(cp.sum(m)), constraints)  # the P programs are separate: one solve
    clarabel(problem, "the margins", **options)
    return torch.as_tensor(m.value, dtype=program.x.dtype, device=program.x.device)


def solve_robust_cvxpy(program: ConvexProgram, eps: float, *, verbose: bool = False, **options: Any) -> Solution:
    """The optimum of the robust program of radius ``eps`` by Clarabel (``options`` go to
    ``Problem.solve``, for the margins and the program), on the CPU in float64, returned in
    the program's dtype and device; its ``objective`` is :func:`robust_objective`.

    At ``ε > 0`` the patterns whose :func:`margins` are at most ``ε`` admit only
    ``v_i = w_i = 0``; they are left out of the conic program (their rows of the solution are
    zero), which leaves its optimum unchanged and keeps the interior-point method away from
    cones whose only point is 0, on which Clarabel can stall.

    For C classes pass ``lambda ps: [solve_robust_cvxpy(p, eps) for p in ps]`` to
    :func:`~.network.one_vs_rest`: each output is then trained against its own worst case.

    Raises ValueError for ``eps < 0`` and, as :func:`~.cvx.solve_cvxpy`, for a program larger
    than :data:`~.cvx.MAX_SIZE`; RuntimeError when Clarabel fails or its status is not one
    of :data:`~.cvx.ACCEPTED`.
    """
    _check(eps)
    check_size(program)
    cp = _cvxpy()
    start = time.perf_counter()
    keep = torch.ones(program.patterns.shape[1], dtype=torch.bool)  # at ε = 0 every sampled cone has a point ≠ 0
    if eps > 0:
        keep = (margins(program, cap=eps + 1.0, **options) > eps).cpu()
    x = program.x.detach().cpu().double().numpy()
    y = program.y.detach().cpu().double().numpy()
    s = program.patterns[:, keep].detach().cpu().double().numpy()
    (n, d_full), p, d = x.shape, s.shape[1], inputs(program)
    if p == 0:  # no pattern is robust at ε: the optimum is the zero network
        v0, w0 = program.zeros()
        return Solution(v=v0, w=w0, objective=robust_objective(program, v0, w0, eps), status="optimal",
                        iterations=0, seconds=0.0)
    v, w = cp.Variable((p, d_full)), cp.Variable((p, d_full))
    prediction = cp.sum(cp.multiply(s, x @ (v - w).T), axis=1)
    # At ε = 0 the ℓ1 terms are left out rather than multiplied by 0 (CVXPY would still hand
    # Clarabel their n·d auxiliary variables): the program is then the nominal one, as
    # :func:`~.cvx.solve_cvxpy` writes it.
    spread = eps * cp.norm1(s @ (v - w)[:, :d], axis=1) if eps > 0 else 0  # ε ‖z_k‖₁, (n,)
    extra = []
    if program.loss == "squared" and eps > 0:
        # ½ (|f − y| + ε‖z‖₁)² is the square of a nonnegative convex function, which DCP does
        # not recognise as convex: bound the inner function by t and minimise ½‖t‖² instead.
        t = cp.Variable(n)
        loss = 0.5 * cp.sum_squares(t)
        extra = [t >= cp.abs(prediction - y) + spread]
    elif program.loss == "squared":
        loss = 0.5 * cp.sum_squares(prediction - y)
    else:
        loss = cp.sum(cp.logistic(spread - cp.multiply(y, prediction)))
    penalty = program.beta * (cp.sum(cp.norm(v, 2, axis=1)) + cp.sum(cp.norm(w, 2, axis=1)))
    sign, ones = 2 * s - 1, np.ones((n, 1))
    # ε ‖v_i°‖₁ is one number per neuron, the same bound for each of its n rows.
    margin = [eps * (ones @ cp.reshape(cp.norm1(u[:, :d], axis=1), (1, p), order="C")) if eps > 0 else 0
              for u in (v, w)]
    constraints = [cp.multiply(sign, x @ v.T) >= margin[0], cp.multiply(sign, x @ w.T) >= margin[1], *extra]
    problem = cp.Problem(cp.Minimize(loss + penalty), constraints)
    clarabel(problem, f"the robust program at ε = {eps}", verbose=verbose, **options)
    seconds = time.perf_counter() - start
    vt, wt = program.zeros()
    vt[keep.to(vt.device)] = torch.as_tensor(v.value, dtype=vt.dtype, device=vt.device)
    wt[keep.to(wt.device)] = torch.as_tensor(w.value, dtype=wt.dtype, device=wt.device)
    iterations = int(problem.solver_stats.num_iters or 0)
    return Solution(v=vt, w=wt, objective=robust_objective(program, vt, wt, eps), status=problem.status,
                    iterations=iterations, seconds=seconds)


def _check(eps: float) -> None:
    if not eps >= 0:
        raise ValueError(f"the robust program's radius ε must be at least 0, got {eps}")

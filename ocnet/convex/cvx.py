"""The convex program solved exactly by CVXPY with Clarabel, the reference for the torch
solver (:mod:`.admm`).

Clarabel is an interior-point method for conic programs: the group-ℓ2 term becomes second-
order cones, the logistic loss exponential cones. Its cost grows steeply with the program:
it took 55 s at n = 1000, d = 40, P = 50 (``n·d·P = 2·10⁶``) and 1.3 s at n = 200, d = 11,
P = 50 (``1.1·10⁵``), so programs larger than :data:`MAX_SIZE` are refused (the torch solver
takes them). CVXPY is imported only when
this solver is used: ``pip install ocnet[convex]`` brings it and Clarabel.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from .program import ConvexProgram, Solution

#: The largest ``n·d·P`` (d counting the ones column) solved here: a tenth of the measured
#: 55-second program, so a refusal costs nothing and an accepted program a few seconds.
MAX_SIZE = 200_000

#: The statuses taken as solved; ``optimal_inaccurate`` is Clarabel's answer within its
#: reduced tolerances, which the agreement with the torch solver checks in the tests.
ACCEPTED = ("optimal", "optimal_inaccurate")

#: Clarabel's settings unless the caller's options say otherwise. With its defaults it stopped
#: without an answer (InsufficientProgress) on two of three nominal programs of two digits in ten
#: principal components, and answered ``optimal_inaccurate`` on the third; with QDLDL's
#: factorisation and a tighter iterative refinement all of them ended ``optimal``.
CLARABEL: dict[str, Any] = {"direct_solve_method": "qdldl", "iterative_refinement_reltol": 1e-14}


def _cvxpy() -> Any:
    try:
        import cvxpy
    except ImportError as e:  # the optional extra
        raise ImportError("the exact convex solver needs CVXPY and Clarabel: pip install ocnet[convex]") from e
    return cvxpy


def check_size(program: ConvexProgram, hint: str = "") -> None:
    """Raise ValueError for a program larger than :data:`MAX_SIZE` (``hint``: what to use
    instead, appended to the message)."""
    if program.size > MAX_SIZE:
        n, d = program.x.shape
        raise ValueError(f"the program is too large for CVXPY: n·d·P = {n}·{d}·{program.patterns.shape[1]} = "
                         f"{program.size} > {MAX_SIZE} (Clarabel took 55 s at 2·10⁶){hint}")


def clarabel(problem: Any, what: str = "the program", *, verbose: bool = False, **options: Any) -> None:
    """Solve a CVXPY ``problem`` by Clarabel with :data:`CLARABEL` under ``options``; raise
    RuntimeError, naming ``what``, when Clarabel stops without an answer or with a status
    outside :data:`ACCEPTED`."""
    cp = _cvxpy()
    try:
        problem.solve(solver=cp.CLARABEL, verbose=verbose, **{**CLARABEL, **options})
    except cp.error.SolverError as e:  # Clarabel stopped without an answer (e.g. InsufficientProgress)
        raise RuntimeError(f"CVXPY/Clarabel failed on {what}: {e}") from e
    if problem.status not in ACCEPTED:
        raise RuntimeError(f"CVXPY/Clarabel ended with status {problem.status!r} on {what}, not one of {ACCEPTED}")


def solve_cvxpy(program: ConvexProgram, *, verbose: bool = False, **options: Any) -> Solution:
    """The optimum of ``program`` by Clarabel (``options`` go to ``Problem.solve``, over
    :data:`CLARABEL`), on the CPU in float64; the solution comes back in the program's dtype
    and device.

    Raises ValueError for a program larger than :data:`MAX_SIZE`, RuntimeError when the
    solver stops without an answer or its status is not one of :data:`ACCEPTED`.
    """
    check_size(program, "; use solve_admm")
    cp = _cvxpy()
    x = program.x.detach().cpu().double().numpy()
    y = program.y.detach().cpu().double().numpy()
    s = program.patterns.detach().cpu().double().numpy()
    p, d = s.shape[1], x.shape[1]
    v, w = cp.Variable((p, d)), cp.Variable((p, d))
    prediction = cp.sum(cp.multiply(s, x @ (v - w).T), axis=1)
    if program.loss == "squared":
        loss = 0.5 * cp.sum_squares(prediction - y)
    else:
        loss = cp.sum(cp.logistic(-cp.multiply(y, prediction)))
    penalty = program.beta * (cp.sum(cp.norm(v, 2, axis=1)) + cp.sum(cp.norm(w, 2, axis=1)))
    sign = 2 * s - 1
    constraints = [cp.multiply(sign, x @ v.T) >= 0, cp.multiply(sign, x @ w.T) >= 0]
    problem = cp.Problem(cp.Minimize(loss + penalty), constraints)
    start = time.perf_counter()
    clarabel(problem, verbose=verbose, **options)
    seconds = time.perf_counter() - start
    vt = torch.as_tensor(v.value, dtype=program.x.dtype, device=program.x.device)
    wt = torch.as_tensor(w.value, dtype=program.x.dtype, device=program.x.device)
    iterations = int(problem.solver_stats.num_iters or 0)
    return Solution(v=vt, w=wt, objective=program.objective(vt, wt), status=problem.status,
                    iterations=iterations, seconds=seconds)

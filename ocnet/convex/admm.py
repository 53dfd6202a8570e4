"""ADMM for the convex program (:mod:`.program`) in torch, on the data's device.

Bai, Gautam & Sojoudi (arXiv 2201.01965) give an ADMM for this program in their Section 3
("An ADMM Algorithm for Global ANN Training", Algorithm 3.1). Of that paper only the abstract
and the table of contents could be read here, not the algorithm itself; its splitting as
implementations of it describe it copies the variables ``u = (v_i, w_i)_i`` into ``v``
(which carries the group-ℓ2 term) and into slacks ``s = G u ≥ 0`` (which carry the cone
constraints, ``G u`` stacking the ``(2D_i − I) X v_i`` and ``(2D_i − I) X w_i``). What
follows is the textbook scaled-form ADMM (Boyd et al. 2011, §3.1.1) of that splitting with
one more copy, ``z = F u`` (``F u`` the prediction ``Σ_i D_i X (v_i − w_i)``), so that the
loss enters through its proximal operator and the squared and logistic losses share one algorithm:

    minimise  ℓ(z) + β Σ_g ‖v_g‖ + 𝟙[s ≥ 0]   subject to  u = v,  G u = s,  F u = z.

With penalty ρ and scaled duals ``λ, ν, μ`` one iteration is

    u ← (I + GᵀG + FᵀF)⁻¹ (v − λ + Gᵀ(s − ν) + Fᵀ(z − μ))
    v ← group soft-threshold of u + λ at β/ρ      (each v_i, w_i on its own)
    s ← max(G u + ν, 0)
    z ← prox_{ℓ/ρ}(F u + μ)                        (closed form for squared, Newton for logistic)
    λ += u − v,  ν += G u − s,  μ += F u − z,

over-relaxed (Boyd et al. §3.4.3): the last four lines see ``a·u + (1 − a)·v`` for ``u`` (and
so for ``G u``, ``F u`` against ``s``, ``z``); ``a = 1``, none, by default: on the programs
of the tests ``a = 1.6`` took more iterations, not fewer.

This is two-block ADMM on a closed proper convex problem with ``[I; G; F]`` of full column
rank, so it converges for every ρ > 0 (Boyd et al. §3.2). The matrix of the u-step does not
depend on ρ (all three copies share it), which makes adapting ρ by residual balancing
(Boyd et al. §3.4.1) free: it is factored once. ``(2D_i − I)² = I`` makes ``GᵀG`` block
diagonal with the blocks ``XᵀX``; with ``M = I + XᵀX`` the matrix is
``blockdiag(M) + FᵀF``, solved directly when its order ``2Pd`` is at most n, else through
Woodbury's identity with the n×n kernel ``I + 2 (X M⁻¹ Xᵀ) ∘ (S Sᵀ)``: the factorisation,
once, costs O(min(n, 2Pd)³) beside forming the matrix, and a step O(nPd + min(n, 2Pd)²).

It stops when the primal and dual residuals meet Boyd et al.'s test (§3.3.1) with ``tol``
as both absolute and relative tolerance. The point returned is ``v``: exactly group-sparse,
meeting the cone constraints to the primal residual (:meth:`ConvexProgram.violation`).

Programs that differ only in their labels (one-vs-rest's) share every linear map, so
:func:`solve_admm_together` runs their iterations as one, each step's products batched over
them (``(C, 2, P, d)`` for the points): one factorisation and one loop instead of C.
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from .program import ConvexProgram, Solution

#: Newton steps of the logistic loss's proximal operator per iteration (no test of their
#: convergence: it would synchronise a GPU every step).
NEWTON_STEPS = 12


class _Operators:
    """The linear maps of the splitting on points ``(C, 2, P, d)`` (``[v; w]`` of C programs
    that share their data and patterns), and the solve of the u-step (``direct``: by the
    2Pd×2Pd matrix, else by Woodbury; None picks the smaller)."""

    def __init__(self, program: ConvexProgram, direct: bool | None = None):
        self.x, self.s = program.x, program.patterns
        self.sign = 2 * self.s - 1
        n, d = self.x.shape
        p = self.s.shape[1]
        eye_d = torch.eye(d, dtype=self.x.dtype, device=self.x.device)
        self.m_chol = torch.linalg.cholesky(eye_d + self.x.T @ self.x)
        self.direct = 2 * p * d <= n if direct is None else direct
        if self.direct:
            f = self.f_matrix()  # (n, 2Pd)
            blocks = torch.block_diag(*([eye_d + self.x.T @ self.x] * (2 * p)))
            self.chol = torch.linalg.cholesky(blocks + f.T @ f)
        else:
            h = self.x @ torch.cholesky_solve(self.x.T, self.m_chol)  # X M⁻¹ Xᵀ (n, n)
            kernel = torch.eye(n, dtype=self.x.dtype, device=self.x.device) + 2 * h * (self.s @ self.s.T)
            self.chol = torch.linalg.cholesky(kernel)

    def f_matrix(self) -> torch.Tensor:
        """F as a matrix ``(n, 2Pd)``, the columns in the order of ``pair.reshape(-1)``."""
        blocks = self.s[:, :, None] * self.x[:, None, :]  # (n, P, d): D_i X
        return torch.stack([blocks, -blocks], dim=1).reshape(len(self.x), -1)

    def g(self, pair: torch.Tensor) -> torch.Tensor:
        """``G u`` ``(C, 2, n, P)``."""
        return (self.x @ pair.transpose(-1, -2)) * self.sign

    def gt(self, q: torch.Tensor) -> torch.Tensor:
        """``Gᵀ q`` ``(C, 2, P, d)`` of ``q`` ``(C, 2, n, P)``."""
        return (q * self.sign).transpose(-1, -2) @ self.x

    def f(self, pair: torch.Tensor) -> torch.Tensor:
        """``F u`` ``(C, n)``."""
        return ((self.x @ (pair[:, 0] - pair[:, 1]).transpose(-1, -2)) * self.s).sum(dim=-1)

    def ft(self, r: torch.Tensor) -> torch.Tensor:
        """``Fᵀ r`` ``(C, 2, P, d)`` of ``r`` ``(C, n)``."""
        half = (self.s * r[:, :, None]).transpose(-1, -2) @ self.x
        return torch.stack([half, -half], dim=1)

    def _block_solve(self, pair: torch.Tensor) -> torch.Tensor:
        """``blockdiag(M)⁻¹`` on points."""
        shape = pair.shape
        return torch.cholesky_solve(pair.reshape(-1, shape[-1]).T, self.m_chol).T.reshape(shape)

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(I + GᵀG + FᵀF)⁻¹ b`` for ``b`` ``(C, 2, P, d)``."""
        if self.direct:
            return torch.cholesky_solve(b.reshape(len(b), -1).T, self.chol).T.reshape(b.shape)
        # Woodbury: (B + FᵀF)⁻¹ = B⁻¹ − B⁻¹Fᵀ (I + F B⁻¹ Fᵀ)⁻¹ F B⁻¹
        bb = self._block_solve(b)
        k = torch.cholesky_solve(self.f(bb).T, self.chol).T
        return bb - self._block_solve(self.ft(k))


def _prox_loss(a: torch.Tensor, y: torch.Tensor, rho: torch.Tensor, loss: str, start: torch.Tensor) -> torch.Tensor:
    """``argmin_z ℓ(z, y) + (ρ/2)‖z − a‖²``, elementwise (``start``: a guess, the last z)."""
    if loss == "squared":
        return (y + rho * a) / (1 + rho)
    # Logistic: the derivative −y σ(−y z) + ρ (z − a) increases in z and changes sign in
    # [a − 1/ρ, a + 1/ρ]; Newton's steps from the last z (close once ADMM settles), kept
    # inside the shrinking bracket by bisection, converge quadratically there.
    lo, hi = a - 1 / rho, a + 1 / rho
    z = torch.minimum(torch.maximum(start, lo), hi)
    for _ in range(NEWTON_STEPS):
        sig = torch.sigmoid(-y * z)
        grad = -y * sig + rho * (z - a)
        lo = torch.where(grad < 0, z, lo)
        hi = torch.where(grad > 0, z, hi)
        newton = z - grad / (sig * (1 - sig) + rho)
        z = torch.where((newton >= lo) & (newton <= hi), newton, (lo + hi) / 2)
    return z


def _norms(*parts: torch.Tensor) -> torch.Tensor:
    """The Euclidean norm of the parts together, one per program ``(C,)``."""
    return torch.stack([p.reshape(len(p), -1).square().sum(dim=1) for p in parts]).sum(dim=0).sqrt()


def solve_admm(program: ConvexProgram, **options: Any) -> Solution:
    """Solve ``program`` by the ADMM of the module docstring from ``u = 0``; the options are
    :func:`solve_admm_together`'s."""
    return solve_admm_together([program], **options)[0]


def solve_admm_together(programs: Sequence[ConvexProgram], *, rho: float = 1.0, tol: float = 1e-6,
                        max_iter: int = 20000, relax: float = 1.0, check_every: int = 10,
                        adapt_until: int = 5000) -> list[Solution]:
    """Solve programs that differ only in their labels (one-vs-rest's C programs) by the ADMM
    of the module docstring, from ``u = 0``, all in one iteration: they share the factored
    u-step, and each step's products are batched over them. Each program keeps its own ρ and
    its own residual test; the iteration ends once every program has met it (a program that
    met it earlier goes on iterating and only comes closer), or at ``max_iter``.

    ``relax`` ∈ (0, 2) is the over-relaxation factor (1: none; Boyd et al. suggest 1.5 to 1.8).
    The residuals are tested every ``check_every`` iterations. ``rho`` is the initial
    penalty; at those tests, up to iteration ``adapt_until``, it is doubled or halved when one
    residual exceeds ten times the other (then held fixed, which keeps the convergence
    guarantee). ``status`` is ``"converged"`` when the residual test met ``tol``, else
    ``"max_iter"``; ``iterations`` is the iteration at which it was first met.
    """
    if rho <= 0 or tol <= 0 or max_iter < 1 or check_every < 1 or not 0 < relax < 2:
        raise ValueError(f"ADMM needs rho > 0, tol > 0, max_iter ≥ 1, check_every ≥ 1 and 0 < relax < 2 "
                         f"(got {rho}, {tol}, {max_iter}, {check_every}, {relax})")
    first = programs[0]
    if any(not torch.equal(p.x, first.x) or not torch.equal(p.patterns, first.patterns)
           or (p.loss, p.beta) != (first.loss, first.beta) for p in programs[1:]):
        raise ValueError("programs solved together must share their data, patterns, loss and β")
    start = time.perf_counter()
    ops = _Operators(first)
    y = torch.stack([p.y for p in programs])  # (C, n)
    c = len(programs)
    n, d = first.x.shape
    p = first.patterns.shape[1]
    u = first.x.new_zeros(c, 2, p, d)
    v, lam = u.clone(), u.clone()
    s, nu = first.x.new_zeros(c, 2, n, p), first.x.new_zeros(c, 2, n, p)
    z, mu = first.x.new_zeros(c, n), first.x.new_zeros(c, n)
    rho_c = first.x.new_full((c,), rho)
    # sizes of the constraint space and of u, for the absolute parts of the residual test
    root_m, root_u = math.sqrt(u[0].numel() + s[0].numel() + n), math.sqrt(u[0].numel())
    met = [0] * c  # the iteration at which each program first met the test
    k = 0
    for k in range(1, max_iter + 1):
        r2, r4 = rho_c[:, None], rho_c[:, None, None, None]
        u = ops.solve(v - lam + ops.gt(s - nu) + ops.ft(z - mu))
        gu, fu = ops.g(u), ops.f(u)
        # over-relaxation (Boyd et al. §3.4.3): the copies see a mix of the new u and the old copies
        ur, gr, fr = relax * u + (1 - relax) * v, relax * gu + (1 - relax) * s, relax * fu + (1 - relax) * z
        t = ur + lam
        norms = t.norm(dim=-1, keepdim=True)
        v_new = t * torch.clamp(1 - (first.beta / r4) / norms.clamp_min(1e-300), min=0)
        s_new = torch.clamp(gr + nu, min=0)
        z_new = _prox_loss(fr + mu, y, r2, first.loss, z)
        lam = lam + ur - v_new
        nu = nu + gr - s_new
        mu = mu + fr - z_new
        check = k % check_every == 0 or k == max_iter
        if check:  # the residuals cost as much as a step: test them now and then
            primal = _norms(u - v_new, gu - s_new, fu - z_new)
            dual = rho_c * _norms(v_new - v + ops.gt(s_new - s) + ops.ft(z_new - z))
        v, s, z = v_new, s_new, z_new
        if not check:
            continue
        scale_primal = torch.maximum(_norms(u, gu, fu), _norms(v, s, z))
        scale_dual = rho_c * _norms(lam + ops.gt(nu) + ops.ft(mu))
        ok = ((primal <= tol * (root_m + scale_primal)) & (dual <= tol * (root_u + scale_dual))).tolist()
        met = [m or (k if good else 0) for m, good in zip(met, ok)]
        if all(met):
            break
        if k <= adapt_until:
            factor = torch.where(primal > 10 * dual, 2.0, torch.where(dual > 10 * primal, 0.5, 1.0))
            rho_c = rho_c * factor  # the scaled duals are y/ρ: they scale inversely
            lam, nu, mu = lam / factor[:, None, None, None], nu / factor[:, None, None, None], mu / factor[:, None]
    seconds = time.perf_counter() - start
    return [Solution(v=v[i, 0].clone(), w=v[i, 1].clone(), objective=prog.objective(v[i, 0], v[i, 1]),
                     status="converged" if met[i] else "max_iter", iterations=met[i] or k, seconds=seconds)
            for i, prog in enumerate(programs)]

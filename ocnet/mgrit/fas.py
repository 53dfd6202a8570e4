"""The full approximation scheme between level ℓ and ℓ+1: restriction and correction.

Restriction (injection at the C-points).  With ``τ_j = Φ^ℓ_{j-1}(u_{j-1}) + g_j`` at a C-point
``j = J c`` the fine residual is ``r_j = τ_j − u_j``, and the coarse problem gets

    v_J = u_{Jc},    g^{ℓ+1}_J = v_J − Φ^{ℓ+1}_{J-1}(v_{J-1}) + r_{Jc} = τ_{Jc} − Φ^{ℓ+1}_{J-1}(v_{J-1}),

so that its solution is ``v`` itself when the fine residual vanishes.  The residual's 2-norm
over the fine C-points is the convergence measure (XBraid's convention): each point's sum of
squares in the states' dtype, their sum in float64.

Correction: the C-points take the coarse solution, ``u_{Jc} ← v_J`` (FAS with injection:
``u + (v − v_restricted) = v``); on coarse levels an F-relaxation then carries it to the
F-points, which the next finer level reads as its C-points.
"""
from __future__ import annotations

import torch

from .levels import PREV_COARSE, PREV_FINE, Context, Level, square_norm
from .relax import f_relax


def restrict(ctx: Context, fine: Level, build_coarse: bool = True, c_relax: bool = False
             ) -> tuple[Level | None, torch.Tensor]:
    """The coarse level ``ℓ+1`` of ``fine`` and the local ``Σ ‖r_j‖²`` over owned C-points.

    With ``c_relax`` each owned C-point then takes the step into it, ``u_j ← Φ(u_{j-1}) + g_j``
    (XBraid's final C-relaxation, made of the steps the residual evaluated: none more).

    Returns
    -------
    coarse : Level or None
        Values ``v`` and right-hand sides ``g`` of the coarse points this rank owns
        (``None`` with ``build_coarse=False``: only the residual is wanted).
    res_sq : Tensor
        Scalar float64: this rank's share of the squared residual norm.
    """
    c = ctx.c
    sends = []
    coarse = ctx.level(fine.index + 1) if build_coarse else None
    if coarse is not None and not coarse.empty:
        coarse.u = [fine.get(J * c) for J in coarse.points()]
        if coarse.b + 1 <= coarse.n:  # the next coarse point's owner needs v_B
            sends.append(ctx.send_last(coarse, coarse.u[-1], PREV_COARSE))
    if not fine.empty and fine.b + 1 <= fine.n and (fine.b + 1) % c == 0:
        sends.append(ctx.send_last(fine, fine.get(fine.b), PREV_FINE))

    res_sq = torch.zeros((), dtype=torch.float64)
    tau: dict[int, torch.Tensor] = {}
    # C-points j >= 1, the one needing the left neighbour's F-point last (overlap)
    points = [j for j in range(max(fine.a, 1), fine.b + 1) if j % c == 0]
    points.sort(key=lambda j: j == fine.a)
    for j in points:
        prev = ctx.recv_prev(fine, PREV_FINE) if j == fine.a else fine.get(j - 1)
        t = ctx.advance(fine, j, prev)
        res_sq += square_norm((t - fine.get(j)).detach()).cpu()
        tau[j] = t
    ctx.note_nonfinite(fine.index, res_sq)
    if c_relax:
        for j, t in tau.items():
            fine.set(j, t)

    if coarse is not None and not coarse.empty:
        coarse.g = [None] * len(coarse.u)
        if coarse.a == 0:
            coarse.g[0] = fine.rhs(0)
        # coarse points J >= 1, the one needing the left neighbour's value last
        order = sorted(range(max(coarse.a, 1), coarse.b + 1), key=lambda J: J == coarse.a)
        for J in order:
            prev = ctx.recv_prev(coarse, PREV_COARSE) if J == coarse.a else coarse.get(J - 1)
            coarse.g[J - coarse.a] = tau[J * c] - ctx.phi(coarse.index, J - 1, prev)
    for s in sends:
        s.wait()
    return coarse, res_sq


def inject(ctx: Context, fine: Level) -> Level:
    """The coarse level of ``fine`` with ``v_J = u_{Jc}`` and no restricted residual: the
    right-hand side is zero but for ``g_0`` (XBraid's skipped down-cycle; no steps, no
    messages: a coarse point lives on the rank of its fine C-point)."""
    coarse = ctx.level(fine.index + 1)
    if not coarse.empty:
        coarse.u = [fine.get(J * ctx.c) for J in coarse.points()]
        coarse.g = [None] * len(coarse.u)
        if coarse.a == 0:
            coarse.g[0] = fine.rhs(0)
    return coarse


def correct(ctx: Context, fine: Level, coarse: Level) -> None:
    """Inject the coarse solution at the C-points; on coarse levels, F-relax after it.

    On the finest level the F-relaxation is left to the next cycle, which starts with one.
    """
    for J in coarse.points():
        fine.set(J * ctx.c, coarse.get(J))
    if fine.index > 0:
        f_relax(ctx, fine)

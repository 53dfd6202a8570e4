"""Multigrid reduction in time (MGRIT) on any propagator; the network is one of them.

    from ocnet.mgrit import solve, LinearODE
    result = solve(LinearODE(-1.0, h=1 / 64, c=4), torch.ones(()), 64, levels=3)
    result.residual        # residual norm per iteration

See docs/mgrit.rst.

May use: :mod:`ocnet.ranks`, :mod:`ocnet.model`.
"""
from .adjoint import AdjointResult, solve_adjoint
from .core import MGRITDivergence, MGRITResult, solve
from .layout import Layout
from .levels import Differentiable, Propagator
from .problems import Heat1D, LinearODE

__all__ = ["AdjointResult", "Differentiable", "Heat1D", "Layout", "LinearODE", "MGRITDivergence", "MGRITResult",
           "Propagator", "solve", "solve_adjoint"]

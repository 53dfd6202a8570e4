"""Convex training of two-layer ReLU networks: the network ocnet's classifier heads could be,
trained to a certified optimum of its sampled convex program (Pilanci & Ergen 2020).

* :mod:`.patterns`: activation patterns sampled from the data;
* :mod:`.program`: the convex program, its objective and its solutions;
* :mod:`.network`: the two-layer ReLU network of a solution, and one-vs-rest for C classes;
* :mod:`.cvx`: the exact reference by CVXPY and Clarabel (``pip install ocnet[convex]``);
* :mod:`.admm`: ADMM in torch, on the data's device, for programs of thousands of samples;
* :mod:`.adversarial`: FGSM and PGD attacks and adversarial training, the robust baselines;
* :mod:`.robust`: the ℓ∞-robust convex program, exact adversarial training over the networks
  whose neurons keep their patterns on every training ball, and its solver by CVXPY.

May use: nothing of ocnet (it sits between :mod:`ocnet.solvers` and :mod:`ocnet.runs`, for the
runs that will train a convex head).
"""
from __future__ import annotations

from .admm import solve_admm
from .cvx import MAX_SIZE, solve_cvxpy
from .network import TwoLayerReLU, neurons, one_vs_rest, recover
from .patterns import sample_patterns
from .program import LOSSES, ConvexProgram, Objective, Solution
from .robust import robust_objective, solve_robust_cvxpy, with_linear_pattern

__all__ = ["LOSSES", "MAX_SIZE", "ConvexProgram", "Objective", "Solution", "TwoLayerReLU", "neurons", "one_vs_rest",
           "recover", "robust_objective", "sample_patterns", "solve_admm", "solve_cvxpy", "solve_robust_cvxpy",
           "with_linear_pattern"]

"""A trained network's classifier refitted as a two-layer ReLU network by the convex program.

ocnet's classifiers end in a linear map (``nn.Linear``) of features of the last state ``u_N``:
for a convolutional network the globally pooled channels, for a dense one ``u_N`` itself.
:func:`fit` replaces that map by a two-layer ReLU network on the same features, trained by
one-vs-rest (:func:`~.network.one_vs_rest`) to the optimum of its sampled convex program:

* the features ``φ`` ``(n, d)`` of the training samples are standardised (mean 0, variance 1
  per feature, on the training set), and the program is posed on ``(φ − m) / σ``, so that one
  β and one ε mean the same on every network; the affine map is folded into the hidden layer
  afterwards, so the exported head takes the raw features;
* with ``eps > 0`` each class's program is the ℓ∞-robust one (:mod:`.robust`): robust to
  perturbations of the standardised features of radius ε, not of the input.

Everything before the last linear map (pooling, flattening, a class token's selection) is kept:
:func:`attach` puts the new head in the map's place in a copy of the classifier.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .admm import solve_admm_together
from .cvx import MAX_SIZE, solve_cvxpy
from .network import TwoLayerReLU, one_vs_rest
from .program import ConvexProgram, Solution
from .robust import solve_robust_cvxpy

#: The solvers :func:`fit` can use.
SOLVERS = ("admm", "cvxpy")

#: The most bytes :func:`check` lets ADMM's iterates and factor take: beyond them a run would
#: likely exhaust the memory after training rather than refuse before it.
ADMM_MEMORY = 4 * 2 ** 30


def last_linear(classifier: nn.Module) -> tuple[str, nn.Linear]:
    """The name (dotted, as ``named_modules`` gives it) and module of the classifier's last
    ``nn.Linear``: the map the convex head replaces."""
    found = [(name, m) for name, m in classifier.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError("the classifier holds no nn.Linear for a convex head to replace")
    return found[-1]


def features(model: nn.Module, classifier: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    """The inputs of ``classifier``'s last linear map when ``model`` (which ends in
    ``classifier``) runs on ``x``: ``(n, d)``, without gradients, in evaluation mode."""
    _, linear = last_linear(classifier)
    seen: list[torch.Tensor] = []
    hook = linear.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch):
                model(x[i:i + batch])
    finally:
        hook.remove()
        model.train(training)
    return torch.cat(seen).flatten(1)


def attach(classifier: nn.Module, head: nn.Module) -> nn.Module:
    """A copy of ``classifier`` whose last linear map is ``head``."""
    name, _ = last_linear(classifier)
    out = copy.deepcopy(classifier)
    if not name:  # the classifier is the linear map itself
        return head
    parent_name, _, child = name.rpartition(".")
    parent = out.get_submodule(parent_name) if parent_name else out
    setattr(parent, child, head)
    return out


def program_size(n: int, d: int, patterns: int) -> int:
    """``n · (d + 1) · P``, one class's program (the ones column counted)."""
    return n * (d + 1) * patterns


def admm_bytes(n: int, d: int, patterns: int, classes: int) -> int:
    """The float64 bytes ADMM holds for C programs of n samples, d features and P patterns:
    the factor of the u-step (``min(n, 2P(d+1))²``) and about ten arrays of the cones' size
    ``C · 2 · n · P`` (the slacks, their duals and the iteration's temporaries)."""
    order = min(n, 2 * patterns * (d + 1))
    return 8 * (order * order + 10 * classes * 2 * n * patterns)


def check(n: int, d: int, classes: int, *, patterns: int, beta: float, eps: float, solver: str) -> None:
    """Refuse, with one message, a head that :func:`fit` could not fit: ``patterns < 1``,
    ``beta < 0``, ``eps < 0``, an unknown solver, a program larger than CVXPY takes, or one
    whose ADMM would hold more than :data:`ADMM_MEMORY` bytes."""
    if patterns < 1:
        raise ValueError(f"the convex head needs at least 1 activation pattern, got {patterns}")
    if not beta >= 0:
        raise ValueError(f"the convex head's weight decay β must be ≥ 0, got {beta}")
    if not eps >= 0:
        raise ValueError(f"the convex head's robust radius ε must be ≥ 0, got {eps}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown convex solver {solver!r}: one of {', '.join(SOLVERS)}")
    size = program_size(n, d, patterns)
    if (solver == "cvxpy" or eps > 0) and size > MAX_SIZE:
        why = "the robust program is solved by CVXPY, which" if solver == "admm" else "CVXPY"
        raise ValueError(f"the convex head's program of {n} samples × {d + 1} features × {patterns} patterns "
                         f"(n·d·P = {size:,}) is too large: {why} takes at most {MAX_SIZE:,}; "
                         "fit it on fewer samples or patterns")
    if solver == "admm" and eps == 0 and admm_bytes(n, d, patterns, classes) > ADMM_MEMORY:
        raise ValueError(f"the convex head's ADMM on {n} samples × {d + 1} features × {patterns} patterns × "
                         f"{classes} classes would hold {admm_bytes(n, d, patterns, classes) / 2 ** 30:.1f} GiB "
                         f"(at most {ADMM_MEMORY / 2 ** 30:.0f}); fit it on fewer samples or patterns")


@dataclass(frozen=True)
class Fit:
    """A fitted head: the network on raw features ``(n, d) → (n, C)``, the C programs'
    solutions (on standardised features) and the fit's wall time."""

    head: TwoLayerReLU
    solutions: list[Solution]
    seconds: float

    @property
    def objective(self) -> float:
        """The sum of the C programs' objectives (loss and group-ℓ2 term)."""
        return sum(s.objective.total for s in self.solutions)


def fit(phi: torch.Tensor, labels: torch.Tensor, *, patterns: int, beta: float, loss: str = "squared",
        eps: float = 0.0, solver: str = "admm", tol: float = 1e-5, max_iter: int = 20000,
        generator: torch.Generator | None = None) -> Fit:
    """The convex head of features ``phi`` ``(n, d)`` and class labels ``(n,)``, fitted in
    float64 on ``phi``'s device (CVXPY: on the CPU): one-vs-rest of ``loss`` with weight decay
    ``beta`` over ``patterns`` sampled activation patterns, ℓ∞-robust of radius ``eps`` when
    ``eps > 0`` (by CVXPY, the robust program's solver)."""
    check(len(phi), phi.shape[1], int(labels.max()) + 1, patterns=patterns, beta=beta, eps=eps, solver=solver)
    x = phi.double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-12)
    z = (x - mean) / std
    solve: Callable[[list[ConvexProgram]], list[Solution]]
    if eps > 0:
        solve = lambda programs: [solve_robust_cvxpy(p, eps) for p in programs]  # noqa: E731
    elif solver == "cvxpy":
        solve = lambda programs: [solve_cvxpy(p) for p in programs]  # noqa: E731
    else:
        solve = lambda programs: solve_admm_together(programs, tol=tol, max_iter=max_iter)  # noqa: E731
    start = time.perf_counter()
    net, solutions = one_vs_rest(z, labels, solve, beta=beta, loss=loss, patterns=patterns, generator=generator)
    seconds = time.perf_counter() - start
    with torch.no_grad():  # hidden((φ − m)/σ) = (W/σ) φ + (b − (W/σ) m): the head on raw features
        w = net.hidden.weight / std
        net.hidden.bias.sub_(w @ mean)
        net.hidden.weight.copy_(w)
    return Fit(head=net.to(phi.dtype), solutions=solutions, seconds=seconds)

"""The convex training program of a scalar-output two-layer ReLU network over sampled
activation patterns (Pilanci & Ergen 2020), and its objective in torch.

The network ``f(X) = Σ_j (X u_j)_+ α_j`` trained with weight decay ``β/2 Σ_j (‖u_j‖² + α_j²)``
is equivalent to

    minimise    ℓ(Σ_i D_i X (v_i − w_i), y) + β Σ_i (‖v_i‖₂ + ‖w_i‖₂)
    subject to  (2D_i − I) X v_i ≥ 0,  (2D_i − I) X w_i ≥ 0      (i = 1 … P)

when the patterns ``D_i`` are all the patterns of ``X`` (and the width is large enough); over
a sample of them (:mod:`.patterns`) it is the same training problem restricted to the
networks whose neurons fire in one of the sampled patterns, so its optimum bounds the
network's global optimum from above, and equals it once the sample holds the patterns of an
optimal network. The cone constraints say that ``D_i`` is the pattern of ``X v_i``, which
makes ``D_i X v_i = (X v_i)_+``: a solution is a ReLU network (:mod:`.network`).

Shapes: data ``x`` ``(n, d)`` (with a column of ones appended when the network has a bias),
labels ``y`` ``(n,)``, patterns ``S`` ``(n, P)`` (``S[:, i]`` the diagonal of ``D_i``), and a
point of the program ``V, W`` ``(P, d)`` (row ``i`` is ``v_i``, ``w_i``).

Losses, as sums over the samples (the scale β refers to):

* ``"squared"``: ``½ Σ_k (ŷ_k − y_k)²``, regression or labels ±1;
* ``"logistic"``: ``Σ_k log(1 + exp(−y_k ŷ_k))``, binary classification with labels ±1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .patterns import sample_patterns

LOSSES = ("squared", "logistic")


@dataclass(frozen=True)
class ConvexProgram:
    """One program: ``x`` ``(n, d)`` (ones column included when ``bias``), ``y`` ``(n,)``,
    ``patterns`` ``(n, P)`` of 0/1, the loss and ``beta`` ≥ 0. Build it with :meth:`build`,
    which checks its inputs."""

    x: torch.Tensor
    y: torch.Tensor
    patterns: torch.Tensor
    loss: str
    beta: float
    bias: bool

    @classmethod
    def build(cls, x: torch.Tensor, y: torch.Tensor, *, beta: float, loss: str = "squared",
              patterns: int | torch.Tensor = 10, bias: bool = True,
              generator: torch.Generator | None = None) -> ConvexProgram:
        """The program for data ``x`` ``(n, d)`` and labels ``y`` ``(n,)`` or ``(n, 1)``.

        ``patterns`` is either how many to sample (:func:`~.patterns.sample_patterns` from
        ``generator``) or a 0/1 matrix ``(n, P)`` already sampled (one-vs-rest shares one
        sample between its classes). With ``bias`` a column of ones is appended to ``x``:
        the first layer's bias is the last coefficient of each neuron, and weight decay
        applies to it as to the weights.
        """
        if x.ndim != 2:
            raise ValueError(f"the data must be a matrix (n, d), got shape {tuple(x.shape)}")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(f"the convex program trains a scalar-output network: labels must be (n,) or (n, 1), "
                             f"got shape {tuple(y.shape)} (for C classes use one_vs_rest)")
        if len(y) != len(x):
            raise ValueError(f"{len(x)} samples but {len(y)} labels")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}: one of {', '.join(LOSSES)}")
        if not beta >= 0:
            raise ValueError(f"the weight decay β must be ≥ 0, got {beta}")
        y = y.to(x.dtype)
        if loss == "logistic" and not bool(((y == 1) | (y == -1)).all()):
            raise ValueError("the logistic loss takes labels ±1 (binary classification); "
                             f"got values {sorted(set(y.unique().tolist()))[:5]}")
        if bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1)
        if isinstance(patterns, torch.Tensor):
            if patterns.ndim != 2 or patterns.shape[0] != len(x) or patterns.shape[1] < 1:
                raise ValueError(f"patterns must be a 0/1 matrix (n, P ≥ 1) with n = {len(x)}, "
                                 f"got shape {tuple(patterns.shape)}")
            s = patterns.to(x.device, x.dtype)
        else:
            s = sample_patterns(x, patterns, generator)
        return cls(x=x, y=y, patterns=s, loss=loss, beta=float(beta), bias=bias)

    @property
    def size(self) -> int:
        """``n · d · P``, what the cost of an interior-point solve grows with."""
        n, d = self.x.shape
        return n * d * self.patterns.shape[1]

    def zeros(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The point ``V = W = 0`` ``(P, d)`` (feasible: every cone holds 0)."""
        z = self.x.new_zeros(self.patterns.shape[1], self.x.shape[1])
        return z, z.clone()

    # The linear maps of the program, shared by the solvers and the objective.
    def predict(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``Σ_i D_i X (v_i − w_i)`` ``(n,)``."""
        return ((self.x @ (v - w).T) * self.patterns).sum(dim=1)

    def cones(self, v: torch.Tensor) -> torch.Tensor:
        """``(2D_i − I) X v_i`` for every i, ``(n, P)``: nonnegative where the constraints hold."""
        return (self.x @ v.T) * (2 * self.patterns - 1)

    def loss_term(self, prediction: torch.Tensor) -> torch.Tensor:
        """ℓ(ŷ, y) of a prediction ``(n,)`` (a scalar tensor)."""
        return data_loss(prediction, self.y, self.loss)

    def penalty(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``β Σ_i (‖v_i‖ + ‖w_i‖)``."""
        return self.beta * (v.norm(dim=1).sum() + w.norm(dim=1).sum())

    def violation(self, v: torch.Tensor, w: torch.Tensor) -> float:
        """The largest violation of a cone constraint, ``max(0, −min (2D_i − I) X v_i, …)``,
        relative to ``max_k ‖x_k‖ · max_i max(‖v_i‖, ‖w_i‖)`` so that it reads the same at any
        scale of the data or of the point (0 for the point 0)."""
        scale = float(self.x.norm(dim=1).max()) * float(max(v.norm(dim=1).max(), w.norm(dim=1).max()))
        if scale == 0:
            return 0.0
        worst = min(float(self.cones(v).min()), float(self.cones(w).min()))
        return max(0.0, -worst) / scale

    def objective(self, v: torch.Tensor, w: torch.Tensor) -> Objective:
        """The loss term, the group-ℓ2 term and the constraint violation at ``(V, W)``."""
        loss = float(self.loss_term(self.predict(v, w)))
        penalty = float(self.penalty(v, w))
        return Objective(loss=loss, penalty=penalty, total=loss + penalty, violation=self.violation(v, w))


@dataclass(frozen=True)
class Objective:
    """The terms of the objective at one point; ``violation`` as :meth:`ConvexProgram.violation`."""

    loss: float
    penalty: float
    total: float
    violation: float


@dataclass(frozen=True)
class Solution:
    """A point ``V, W`` ``(P, d)`` of a program, its objective and what the solver says of it
    (``status``; ``iterations`` where the solver iterates; ``seconds`` of its own)."""

    v: torch.Tensor
    w: torch.Tensor
    objective: Objective
    status: str
    iterations: int
    seconds: float


def data_loss(prediction: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """The loss summed over the samples, as the module docstring defines it."""
    if loss == "squared":
        return 0.5 * ((prediction - y) ** 2).sum()
    if loss == "logistic":
        return torch.nn.functional.softplus(-y * prediction).sum()
    raise ValueError(f"unknown loss {loss!r}: one of {', '.join(LOSSES)}")

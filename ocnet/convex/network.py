"""The two-layer ReLU network a solution of the convex program stands for, and one-vs-rest
for C classes.

From a point ``(V, W)`` of the program (:mod:`.program`): each ``v_i ≠ 0`` gives a neuron
``u = v_i / √‖v_i‖`` with output weight ``α = √‖v_i‖``, each ``w_i ≠ 0`` a neuron
``u = w_i / √‖w_i‖`` with ``α = −√‖w_i‖``. Then ``(X u)_+ α = (X v_i)_+``, which is
``D_i X v_i`` where the cone constraints hold, so on the training data the network predicts
exactly ``Σ_i D_i X (v_i − w_i)``; and ``½(‖u‖² + α²) = ‖v_i‖``, so its weight decay
``β/2 Σ_j (‖u_j‖² + α_j²)`` is the program's group-ℓ2 term.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import nn

from .patterns import sample_patterns
from .program import ConvexProgram, Solution


class TwoLayerReLU(nn.Module):
    """``x (n, d) ↦ output(relu(hidden(x)))`` ``(n, outputs)``: ``hidden`` is
    ``Linear(d, m)`` (with a bias when the program had a ones column), ``output`` is
    ``Linear(m, outputs)`` without bias."""

    def __init__(self, d: int, m: int, outputs: int = 1, bias: bool = True):
        super().__init__()
        self.hidden = nn.Linear(d, m, bias=bias)
        self.output = nn.Linear(m, outputs, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(torch.relu(self.hidden(x)))

    def weight_decay(self) -> torch.Tensor:
        """``½ Σ_j (‖u_j‖² + α_j²)``: half the squares of every weight, the hidden bias
        included (it is the ones column's coefficient of ``u_j``)."""
        return 0.5 * sum((p ** 2).sum() for p in self.parameters())  # type: ignore[return-value]


def neurons(solution: Solution) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden weights ``(m, d)`` (ones column last) and output weights ``(m,)`` of a
    solution: one neuron per nonzero ``v_i`` and per nonzero ``w_i``."""
    rows, alphas = [], []
    for part, sign in ((solution.v, 1.0), (solution.w, -1.0)):
        norms = part.norm(dim=1)
        keep = norms > 0
        root = norms[keep].sqrt()
        rows.append(part[keep] / root[:, None])
        alphas.append(sign * root)
    return torch.cat(rows), torch.cat(alphas)


def recover(program: ConvexProgram, solution: Solution) -> TwoLayerReLU:
    """The network of a solution, on the data's device and dtype; it takes the data without
    the ones column (its bias is that column's coefficient)."""
    u, alpha = neurons(solution)
    return _network([u], [alpha], program.bias)


def _network(us: list[torch.Tensor], alphas: list[torch.Tensor], bias: bool) -> TwoLayerReLU:
    """One network whose output c is the neurons ``us[c]`` weighted by ``alphas[c]``."""
    d_full = us[0].shape[1]
    d = d_full - 1 if bias else d_full
    widths = [len(u) for u in us]
    with warnings.catch_warnings():
        # A large β can make the optimum the zero function, a network of no neurons: its
        # empty weights need no initialisation, which torch would warn of.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        net = TwoLayerReLU(d, sum(widths), len(us), bias).to(us[0].device, us[0].dtype)
    u = torch.cat(us)
    out = u.new_zeros(len(us), sum(widths))
    start = 0
    for c, (width, alpha) in enumerate(zip(widths, alphas)):
        out[c, start:start + width] = alpha  # each output sees only its own class's neurons
        start += width
    with torch.no_grad():
        net.hidden.weight.copy_(u[:, :d])
        if bias:
            net.hidden.bias.copy_(u[:, d])
        net.output.weight.copy_(out)
    return net


def one_vs_rest(x: torch.Tensor, labels: torch.Tensor,
                solve: Callable[[list[ConvexProgram]], list[Solution]], *,
                beta: float, loss: str = "squared", patterns: int = 10, bias: bool = True,
                generator: torch.Generator | None = None) -> tuple[TwoLayerReLU, list[Solution]]:
    """A network with one output per class of ``labels`` ``(n,)`` (integers ``0 … C-1``):
    output c is the scalar program of labels ``+1`` for class c and ``−1`` for the others.
    ``solve`` takes the C programs and returns their solutions (ADMM solves them together,
    :func:`~.admm.solve_admm_together`). The classes share one sample of patterns; the network's hidden
    layer is every class's neurons side by side and its output layer is block diagonal, so
    it is still a two-layer ReLU network, and ``argmax`` over its outputs classifies."""
    if labels.ndim != 1 or len(labels) != len(x):
        raise ValueError(f"one_vs_rest takes class labels (n,) with n = {len(x)}, got shape {tuple(labels.shape)}")
    classes = int(labels.max()) + 1
    if classes < 2:
        raise ValueError("one_vs_rest needs at least 2 classes")
    full = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], dim=1) if bias else x
    s = sample_patterns(full, patterns, generator)
    programs = [ConvexProgram.build(x, torch.where(labels == c, 1.0, -1.0).to(x.dtype), beta=beta, loss=loss,
                                    patterns=s, bias=bias) for c in range(classes)]
    solutions = solve(programs)
    us, alphas = zip(*(neurons(solution) for solution in solutions))
    return _network(list(us), list(alphas), bias), solutions

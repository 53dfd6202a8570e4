"""Local parallelism on P ranks: its gradients against autograd, and its exactness anchor.

argv: out.json blocks overlap weight filter

Every rank builds the same float64 conv problem.  (1) One step with a learning rate of 0
leaves each block's accumulated gradient; rank 0 gathers them and compares with
``Σ_{j=b}^{b+n} ∂L_j/∂θ_b`` by autograd of the whole, untruncated network (:func:`reference`).
(2) Three Adam steps of the local solver with ``overlap = K - 1`` and weight 0 against three
of the serial solver on the same ranks.  Importable: :func:`reference` serves the one-process
test as well.
"""
from __future__ import annotations

import json
import sys

import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.filters import FILTERS
from ocnet.solvers import Local, Serial


def problem():
    return build((2, 8, 8), 3, net="conv", layers=8, channels=[4], seed=1, dtype=torch.float64)


def data(n=12):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, 2, 8, 8, generator=gen, dtype=torch.float64), torch.arange(n) % 3


def solver(cls, prob, comm, filter="identity", lr=0.0, partition=None, **options):
    config = {k: options.get(k, o.default) for k, o in cls.options.items()}
    network = prob.local(partition or cls.partition(prob.n_layers, comm.size, config), comm.rank)
    opt = (lambda p: torch.optim.SGD(p, lr=0.0)) if lr == 0 else (lambda p: torch.optim.Adam(p, lr=lr))
    return cls(network, comm, opt, filter=FILTERS[filter], seed=0, **options)


def reference(prob, K, n, w, x, y, rank_starts=(), filter=FILTERS["identity"]):
    """``{name: gradient}``: each block's parameters receive the gradients of the losses of
    the blocks ``b … b + n`` (heads ``w``-weighted, the network's own loss 1), by autograd."""
    cuts = Partition(prob.n_layers, K).cuts()
    heads = {b: prob.auxiliary_head(cuts[b + 1], 0) for b in range(K - 1)}
    u, outs = prob.opening(x), []
    for b in range(K):
        if b and cuts[b] in rank_starts:
            u = filter.project(u)
        for layer in prob.layers[cuts[b]:cuts[b + 1]]:
            u = layer(u)
        outs.append(u)
    losses = [w * prob.loss(heads[b](outs[b]), y) for b in range(K - 1)] + [prob.loss(prob.classifier(outs[-1]), y)]
    names = dict(prob.named_parameters())
    out = {k: torch.zeros_like(p) for k, p in names.items()}
    for j, L in enumerate(losses):
        grads = torch.autograd.grad(L, list(names.values()), retain_graph=True, allow_unused=True)
        for k, g in zip(names, grads):
            b = block_of(k, cuts)
            if g is not None and j - n <= b <= j:
                out[k] += g
    return out


def block_of(name, cuts):
    if name.startswith("opening"):
        return 0
    if name.startswith("classifier"):
        return len(cuts) - 2
    layer = int(name.split(".")[1])
    return max(b for b in range(len(cuts) - 1) if cuts[b] <= layer)


def main(out, K, n, w, filter):
    from ocnet.ranks.comm import world
    comm = world()
    x, y = data()
    index = torch.arange(len(y))
    prob = problem()
    s = solver(Local, prob, comm, filter, local_blocks=K, local_overlap=n, local_aux_weight=w)
    s.step(x, y, index)
    grads = {s.network.problem_name(k): p.grad.clone() for k, p in s.network.named_parameters() if p.grad is not None}
    gathered = comm.gather({"grads": grads, "start": s.network.start})
    result = {}
    if gathered is not None:
        starts = {g["start"] for g in gathered if g["start"] > 0}
        want = reference(problem(), K, n, w, x, y, starts, FILTERS[filter])
        got = {k: v for g in gathered for k, v in g["grads"].items()}
        scale = max(float(v.abs().max()) for v in want.values())
        result["grad_rel_err"] = max(float((got.get(k, torch.zeros_like(v)) - v).abs().max()) / scale
                                     for k, v in want.items())
    # the anchor: full overlap, no auxiliary losses = the serial solver
    pa, pb = problem(), problem()
    a = solver(Local, pa, comm, filter, lr=1e-2, local_blocks=K, local_overlap=K - 1, local_aux_weight=0.0)
    b = solver(Serial, pb, comm, filter, lr=1e-2, partition=a.network.partition)  # the filter at the same cuts
    for step in range(3):
        rows = index.roll(-4 * step)[:8]
        a.step(x[rows], y[rows], rows)
        b.step(x[rows], y[rows], rows)
    a.end_epoch(0)
    s.end_epoch(0)
    diff = max(float((p - q).detach().abs().max()) for p, q in zip(a.network.parameters(), b.network.parameters()))
    diffs = comm.gather(diff)
    if diffs is not None:
        result["serial_max_diff"] = max(diffs)
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])

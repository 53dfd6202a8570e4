"""Local gradients of the penalty / AL solvers on P ranks against autograd of the full objective.

argv: out.json solver(penalty|al) net(dense|conv) blocks filter

Every rank builds the same float64 problem; after the initial sweep the auxiliary states and
multipliers are perturbed (so that no constraint holds), each rank computes its local
gradients, and rank 0 gathers them and compares with autograd of the whole penalised
objective built from the gathered states.  Importable: :func:`reference_objective` and
:func:`compare` serve the single-process test as well.
"""
from __future__ import annotations

import json
import sys

import torch

from ocnet.ranks.filters import FILTERS


def reference_objective(problem, blocks, rank_starts, x, y, z, mu, rho, filter, filter_aux=False):
    """The batch-mean penalised (AL) objective of the whole network.

    ``blocks``: global layer ranges of blocks 0 … K-1; ``rank_starts``: the boundaries that
    cross ranks (where ``P = decode ∘ encode`` of ``filter`` applies); ``z``, ``mu``: dicts
    boundary ↦ ``(batch, …)``.
    """
    n = len(y)
    u = problem.opening(x)
    total = 0.0
    for b, (start, stop) in enumerate(blocks):
        if b > 0:
            o = filter.project(u) if (b in rank_starts or filter_aux) else u
            r = z[b] - o
            total = total + 0.5 * rho * (r ** 2).sum() / n
            if mu:
                total = total + (mu[b] * r).sum() / n
            u = z[b]
        for layer in problem.layers[start:stop]:
            u = layer(u)
    return total + problem.loss(problem.classifier(u), y)


def perturb(solver, seed):
    """Noise on the stored auxiliary states and multipliers (rank-dependent, reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    for store, scale in ((solver.z, 0.1), (solver.mu, 0.3)):
        for _, rows in sorted(store.rows.items()):
            rows += scale * torch.randn(rows.shape, generator=gen, dtype=rows.dtype)


def compare(problem, pieces, x, y, index, rho, filter, multipliers):
    """Max relative errors of the gathered local gradients against autograd.

    ``pieces``: per rank ``{"blocks", "b0", "z", "mu", "zgrad", "pgrad"}`` (states of the
    batch, their gradients, and parameter gradients under the problem's names).
    """
    blocks = [blk for p in pieces for blk in p["blocks"]]
    rank_starts = {p["b0"] for p in pieces if p["b0"] > 0}
    z = {b: t.clone().requires_grad_(True) for p in pieces for b, t in p["z"].items()}
    mu = {b: t for p in pieces for b, t in p["mu"].items()} if multipliers else {}
    problem.zero_grad(set_to_none=True)
    L = reference_objective(problem, blocks, rank_starts, x, y, z, mu, rho, filter)
    params = dict(problem.named_parameters())
    grads = torch.autograd.grad(L, [*params.values(), *z.values()])
    ref_p = dict(zip(params, grads[:len(params)]))
    ref_z = dict(zip(z, grads[len(params):]))

    def err(got, want, scale):
        # relative to the gradient's overall size: some entries are zero in exact arithmetic
        # (a convolution's bias before group norm) and only rounding noise remains there
        return float((got - want).abs().max()) / scale

    p_scale = max(float(g.abs().max()) for g in ref_p.values())
    z_scale = max(float(g.abs().max()) for g in ref_z.values())
    theta = max(err(g, ref_p[k], p_scale) for p in pieces for k, g in p["pgrad"].items())
    zerr = max(err(g, ref_z[b], z_scale) for p in pieces for b, g in p["zgrad"].items())
    covered = sorted(k for p in pieces for k in p["pgrad"]) == sorted(params)
    return {"theta_rel_err": theta, "z_rel_err": zerr, "n_z": len(z), "all_params": covered,
            "objective": float(L.detach())}


def local_pieces(solver, problem, x, y, index):
    """This rank's share for :func:`compare`, after one :meth:`Penalty.gradients` call."""
    z, _, record = solver.gradients(x, y, index)
    names = {id(p): k for k, p in problem.named_parameters()}
    return {"blocks": solver.blocks, "b0": solver.b0,
            "z": {b: t.detach() for b, t in z.items()}, "zgrad": {b: t.grad for b, t in z.items()},
            "mu": {b: solver.mu.get(b, index) for b in z} if solver.multipliers else {},
            "pgrad": {names[id(p)]: p.grad for p in solver.network.parameters() if p.grad is not None},
            "record": record}


def main() -> None:
    from ocnet.model.grid import Partition
    from ocnet.model.problem import build
    from ocnet.ranks.comm import world
    from ocnet.solvers import get

    out, solver_name, net, blocks, filter_name = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    comm = world()
    torch.set_num_threads(1)
    shape = (2, 8, 8) if net == "conv" else (1, 8, 8)
    problem = build(shape, 4, net=net, layers=12, width=6, channels=[4], seed=5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=gen)
    index = torch.tensor([3, 17, 0, 9, 12, 5, 19, 1])
    network = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    filt = FILTERS[filter_name]
    solver = get(solver_name)(network, comm, lambda p: torch.optim.SGD(p, lr=0.1), filter=filt,
                              blocks=blocks, rho=0.7)
    init = solver.begin_epoch(0, x, y)
    after_init = solver.evaluate(x[index], y[index], index)
    perturb(solver, 100 + comm.rank)
    sent = comm.bytes_sent
    mine = local_pieces(solver, problem, x[index], y[index], index)
    mine["bytes"] = comm.bytes_sent - sent
    pieces = comm.gather(mine)
    inits = comm.gather(after_init)
    if comm.rank == 0:
        with torch.no_grad():
            J = float(problem.loss(problem(x[index]), y[index]))
        result = compare(problem, pieces, x[index], y[index], index, solver.rho, filt, solver.multipliers)
        result.update(init_violation=sum(r["constraint_violation"] for r in inits),
                      init_objective=sum(r["penalized_objective"] for r in inits), J=J,
                      local_objective=sum(p["record"]["penalized_objective"] for p in pieces),
                      rho=init.get("rho"), bytes=[p["bytes"] for p in pieces])
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()

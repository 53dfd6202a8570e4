"""The mgrit solver on a 32-layer float64 network under mpiexec (tests/test_mgrit_solver.py):
exact-mode gradients against the serial solver's on the same ranks, and a few one-shot steps
whose losses and residuals must not depend on the rank count.  Rank 0 writes JSON to argv[1]."""
import json
import sys

import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import world
from ocnet.solvers import get

LAYERS = 32


def data():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(24, 8, generator=gen, dtype=torch.float64)
    return x, torch.arange(24) % 3


def make(comm, name, **options):
    problem = build((8,), 3, net="dense", layers=LAYERS, width=8, seed=1, dtype=torch.float64)
    network = problem.local(Partition(LAYERS, comm.size), comm.rank)
    solver = get(name)(network, comm, lambda p: torch.optim.SGD(p, lr=0.05), **options)
    return network, solver


def run(comm):
    x, y = data()
    idx = torch.arange(len(y))
    grads = {}
    records = {}
    for name, options in [("serial", {}),
                          ("mgrit", dict(mgrit_tol=1e-10, mgrit_levels=3, coarsening=2))]:
        network, solver = make(comm, name, **options)
        solver.optimizer.zero_grad()
        solver.optimizer.param_groups[0]["lr"] = 0.0  # keep θ: compare gradients only
        records[name] = solver.step(x, y, idx)
        grads[name] = {k: v.grad.clone() for k, v in _named(network)}
    err = max(float((grads["mgrit"][k] - grads["serial"][k]).abs().max() /
                    grads["serial"][k].abs().max()) for k in grads["serial"])
    err = comm.allreduce(err, op="max")

    network, solver = make(comm, "mgrit", mgrit_mode="one_shot", mgrit_iters=1, mgrit_levels=3, coarsening=2)
    one_shot = []
    for s in range(6):
        sel = torch.arange(len(y)).roll(-4 * s)[:12]
        one_shot.append(solver.step(x[sel], y[sel], sel))
    losses = comm.gather([r.get("loss") for r in one_shot])
    return {"grad_rel_err": err, "exact": records["mgrit"],
            "one_shot_loss": None if losses is None else losses[-1],
            "one_shot": [{k: v for k, v in r.items() if k != "loss"} for r in one_shot]}


def _named(network):
    """(global name, parameter) for this rank's parameters, in the whole problem's names."""
    out = []
    if network.opening is not None:
        out += [(f"opening.{k}", p) for k, p in network.opening.named_parameters()]
    for i, layer in enumerate(network.layers, start=network.start):
        out += [(f"layers.{i}.{k}", p) for k, p in layer.named_parameters()]
    if network.classifier is not None:
        out += [(f"classifier.{k}", p) for k, p in network.classifier.named_parameters()]
    return out


if __name__ == "__main__":
    comm = world()
    result = run(comm)
    if comm.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)

"""The mgrit solver with storage "graph" against "states" on a 16-layer float64 network: the
same gradients in exact and one-shot modes, at 1 and 3 levels, and with "graph" no adjoint
step or parameter gradient runs a layer's forward again.  Rank 0 writes JSON to argv[1]."""
import json
import sys

import torch

from ocnet.model.problem import build
from ocnet.ranks import timeline
from ocnet.ranks.comm import world
from ocnet.solvers import get

LAYERS = 16
CASES = {
    "exact_L1": dict(mgrit_levels=1),
    "exact_L3": dict(mgrit_levels=3, mgrit_tol=1e-12),
    "exact_L3_skip_F": dict(mgrit_levels=3, mgrit_tol=1e-12, mgrit_skip=True, mgrit_relax="F"),
    "one_shot_L1": dict(mgrit_levels=1, mgrit_mode="one_shot"),
    "one_shot_L3": dict(mgrit_levels=3, mgrit_mode="one_shot", mgrit_iters=2),
    "one_shot_L3_iters0": dict(mgrit_levels=3, mgrit_mode="one_shot", mgrit_iters=0),
    "one_shot_L3_fcycle": dict(mgrit_levels=3, mgrit_mode="one_shot", mgrit_iters=1, mgrit_cycle="F"),
}


def data():
    gen = torch.Generator().manual_seed(5)
    return torch.randn(12, 8, generator=gen, dtype=torch.float64), torch.arange(12) % 3


def grads(comm, storage, options):
    """The gradients of three one-shot or exact steps (lr 0.05), and the spans recorded."""
    problem = build((8,), 3, net="dense", layers=LAYERS, width=8, seed=2, dtype=torch.float64)
    part = get("mgrit").partition(LAYERS, comm.size, {"coarsening": 2, "mgrit_levels": options["mgrit_levels"]})
    network = problem.local(part, comm.rank)
    solver = get("mgrit")(network, comm, lambda p: torch.optim.SGD(p, lr=0.05), coarsening=2,
                          mgrit_storage=storage, **options)
    x, y = data()
    out, kinds = [], set()
    rec = timeline.Recorder()
    with timeline.recording(rec):
        for s in range(3):
            sel = torch.arange(12).roll(-4 * s)[:8]
            solver.step(x[sel], y[sel], sel)
            out.append([p.grad.clone() for p in network.parameters()])
    kinds = {e[0] for e in rec.events}
    return out, kinds, solver.prop.graphs


def run(comm):
    result = {}
    for case, options in CASES.items():
        g, kinds_g, left = grads(comm, "graph", options)
        s, kinds_s, _ = grads(comm, "states", options)
        err = 0.0
        for step_g, step_s in zip(g, s):
            for a, b in zip(step_g, step_s):
                err = max(err, float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)))
        result[case] = {"err": comm.allreduce(err, op="max"),
                        "recompute_graph": comm.allreduce(float("vjp_recompute" in kinds_g), op="max"),
                        "recompute_states": comm.allreduce(float("vjp_recompute" in kinds_s), op="max"),
                        "graphs_left": comm.allreduce(float(len(left)), op="max"),
                        "kinds_graph": sorted(kinds_g)}
    return result


if __name__ == "__main__":
    comm = world()
    result = run(comm)
    if comm.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)

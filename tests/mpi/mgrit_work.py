"""MGRIT's step counts under mpiexec (tests/test_mgrit_work.py): the cumulative ``step_evals``
of forward and adjoint solves of u' = λu over a grid of options, which must be the work
formula's whatever the rank count, and with ``reuse`` the same states with no more steps.
Rank 0 writes JSON to argv[1]."""
import json
import sys

import torch

from ocnet.mgrit import LinearODE, solve, solve_adjoint
from ocnet.ranks.comm import world

CASES = [  # N, c, levels, relaxation, cf_sweeps, cycle, skip, max_iter, fine relaxation
    (37, 2, 4, "FCF", 1, "F", True, 2, None), (30, 3, 3, "FCF", 2, "V", False, 2, "F"),
    (64, 4, 3, "F", 1, "V", True, 1, None), (27, 3, 4, "FCF", 1, "F", False, 1, None),
    (16, 2, 1, "FCF", 1, "V", False, 0, None), (32, 4, 3, "FCF", 1, "V", True, 1, "F"),
]


def run(comm):
    out = []
    for N, c, levels, relaxation, sweeps, cycle, skip, max_iter, fine in CASES:
        prop = LinearODE(-1.0, h=1.0 / N, c=c)
        opts = dict(levels=levels, relaxation=relaxation, cf_sweeps=sweeps, cycle=cycle, skip=skip,
                    max_iter=max_iter, fine_relaxation=fine, tol=-1.0)  # all iterations
        u0 = torch.ones((), dtype=torch.float64) if comm.rank == 0 else None
        fwd = solve(prop, u0, N, comm, **opts)
        lam_N = torch.ones((), dtype=torch.float64) if comm.rank == comm.size - 1 else None
        adj = solve_adjoint(prop, fwd.u, lam_N, N, comm, **opts)
        # reuse: the same states bit for bit (each rank's), at most the steps without it
        lean = solve(prop, u0, N, comm, reuse=True, **opts)
        lean_adj = solve_adjoint(prop, lean.u, lam_N, N, comm, reuse=True, **opts)
        same = all(torch.equal(a, b) for a, b in zip(fwd.u + adj.mgrit.u, lean.u + lean_adj.mgrit.u))
        same = comm.allreduce(float(same), op="min") == 1.0
        out.append({"case": [N, c, levels, relaxation, sweeps, cycle, skip, max_iter, fine],
                    "forward": fwd.step_evals, "adjoint": adj.mgrit.step_evals, "same_with_reuse": same,
                    "reuse": [lean.step_evals[-1], lean_adj.mgrit.step_evals[-1]]})
    return out


if __name__ == "__main__":
    comm = world()
    result = run(comm)
    if comm.rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump(result, f)

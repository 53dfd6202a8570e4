"""MGRIT on model problems under mpiexec: residual histories and solutions for the P-invariance
test (tests/test_mgrit_mpi.py).  Rank 0 writes JSON to argv[1]."""
import json
import sys

import torch

from ocnet.mgrit import Heat1D, Layout, LinearODE, solve, solve_adjoint
from ocnet.ranks.comm import world

torch.set_default_dtype(torch.float64)

# Slice boundaries per rank count for the layouts that are not balanced: rank r owns the
# fine points cuts[r] … cuts[r+1] - 1 (none when equal).
CUTS = {
    # rank 1 gets no point at all when there are four ranks
    "uneven": {2: [0, 11, 65], 3: [0, 11, 41, 65], 4: [0, 30, 30, 41, 65]},
    # the last rank owns nothing: the adjoint's time starts on an empty rank
    "empty_last": {2: [0, 65, 65], 3: [0, 30, 65, 65], 4: [0, 20, 41, 65, 65]},
    # the first rank (two ranks) or a middle one (three) owns nothing; two ranks of four
    "empty_inner": {2: [0, 0, 65], 3: [0, 30, 30, 65], 4: [0, 0, 30, 30, 65]},
}


def gather_states(comm, res):
    """All fine states in time order on rank 0 (as lists of floats)."""
    parts = comm.gather([(n, v.flatten().tolist()) for n, v in zip(res.points, res.u)])
    if parts is None:
        return None
    return [v for _, v in sorted(p for part in parts for p in part)]


def sliced(N, size, name):
    if size == 1:
        return None
    cuts = CUTS[name][size]
    assert cuts[-1] == N + 1
    return Layout(N, tuple((cuts[r], cuts[r + 1] - 1) for r in range(size)))


def main(out):
    comm = world()
    results = {}
    cases = {
        "fcf_v3": dict(N=64, c=4, levels=3, relaxation="FCF", cycle="V"),
        "f_v2": dict(N=64, c=4, levels=2, relaxation="F", cycle="V"),
        "fcf_f3": dict(N=64, c=4, levels=3, relaxation="FCF", cycle="F"),
        "fcf2_f4": dict(N=64, c=2, levels=4, relaxation="FCF", cf_sweeps=2, cycle="F"),
        "sparse_c": dict(N=16, c=4, levels=3, relaxation="FCF", cycle="V"),  # ranks without C-points
        "uneven": dict(N=64, c=4, levels=3, relaxation="FCF", cycle="V", layout="uneven"),
        "empty_last": dict(N=64, c=4, levels=3, relaxation="FCF", cycle="F", layout="empty_last"),
        "empty_inner": dict(N=64, c=2, levels=4, relaxation="FCF", cycle="V", layout="empty_inner"),
        # torchbraid's settings, a fixed number of iterations
        "torchbraid": dict(N=64, c=4, levels=3, relaxation="FCF", cycle="V", fine_relaxation="F", skip=True,
                           final_fc=True, max_iter=1, tol=-1.0, layout="uneven"),
    }
    for name, case in cases.items():
        case = dict(case)
        N = case.pop("N")
        layout = sliced(N, comm.size, case.pop("layout")) if "layout" in case else None
        prop = LinearODE(-2.0, 1.0 / N, case.pop("c"))
        u0 = torch.linspace(1.0, 2.0, 3)
        case = {"tol": 1e-13, "max_iter": 30, **case}
        res = solve(prop, u0, N, comm, layout=layout, **case)
        adj = solve_adjoint(prop, res.u, torch.ones(3), N, comm, layout=layout, **case)
        lam = comm.gather(sorted((n, v.tolist()) for n, v in adj.lam.items()))
        results[name] = {"residual": res.residual, "states": gather_states(comm, res),
                         "adjoint_residual": adj.mgrit.residual, "bytes": res.bytes_sent,
                         "steps": res.step_evals,
                         "lam": None if lam is None else sorted({n: v for part in lam for n, v in part}.items())}
    u0 = torch.sin(torch.pi * torch.linspace(0, 1, 17)[1:-1])
    res = solve(Heat1D(15, 1.0, 1.0 / 4096, 2), u0, 64, comm, levels=3, tol=1e-13, max_iter=30)
    results["heat"] = {"residual": res.residual, "states": gather_states(comm, res)}
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])

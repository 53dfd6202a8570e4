"""MGRIT that diverges, under mpiexec (tests/test_mgrit_mpi.py): every rank must raise the
same MGRITDivergence at the same iteration, and none may wait for the others.  Each rank
reports what it caught; rank 0 writes JSON to argv[1]."""
import json
import math
import sys

import torch

from ocnet.mgrit import LinearODE, solve, solve_adjoint
from ocnet.ranks.comm import world

torch.set_default_dtype(torch.float64)


def caught(run):
    """What ``run()`` raised, as a dict (``None`` when it returned)."""
    try:
        run()
    except ArithmeticError as err:
        return {"type": type(err).__name__, "iteration": getattr(err, "iteration", None),
                "level": getattr(err, "level", None), "adjoint": getattr(err, "adjoint", None),
                "residual": [str(r) for r in getattr(err, "residual", [])], "message": str(err)}
    return None


def main(out):
    comm = world()
    first = comm.rank == 0
    # fine factor -0.9, coarse factors 1 - 1.9 · 4^l: the second residual overflows, first
    # on level 1 (two levels) or 2 (three), as in test_mgrit.py
    def unstable(N, **options):
        return solve(LinearODE(-1.9 * N, 1.0 / N, 4), torch.ones(2) if first else None, N, comm,
                     max_iter=20, **options)

    stable = LinearODE(-1.0, 1.0 / 64, 4)
    ok = solve(stable, torch.ones(2), 64, comm, levels=3, tol=1e-12)
    cases = {
        "overflow": lambda: unstable(1024, levels=2),
        "overflow_f3": lambda: unstable(4096, levels=3, cycle="F"),
        "nan_u0": lambda: solve(stable, torch.tensor([1.0, math.nan]) if first else None, 64, comm, levels=3),
        "adjoint": lambda: solve_adjoint(stable, ok.u, torch.full((2,), math.inf), 64, comm, levels=3),
    }
    report = {name: caught(run) for name, run in cases.items()}
    comm.barrier()  # every rank got here: no rank waits in a solve
    reports = comm.gather(report)
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump(reports, f)


if __name__ == "__main__":
    main(sys.argv[1])

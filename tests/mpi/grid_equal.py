"""The training loop on a grid of data groups against one group, at the library level, on 4 ranks.

argv: ROOT

Each case trains two epochs (float64) with :func:`ocnet.runs.train.fit` four times: one group on
the first 1, 2 and 4 ranks, and 2 groups × 2 layer ranks on all 4.  49 samples in batches of
16 end each epoch with a batch of one sample, which one group does not own (its idle step).
Rank 0 of each job writes ``ROOT/CASE/JOB.pt``: the history and the final parameters under
the whole problem's names.  tests/test_grid.py compares them.
"""
import sys
from pathlib import Path

import torch
from mpi4py import MPI

from ocnet.model.data import Dataset
from ocnet.model.problem import build
from ocnet.ranks.comm import Comm, SelfComm
from ocnet.ranks.replicas import Grid
from ocnet.runs.train import History, fit
from ocnet.solvers import get

N, BATCH, EPOCHS = 49, 16, 2
ADAM = lambda params: torch.optim.Adam(params, lr=1e-2)  # noqa: E731
# Adam divides by the gradient's own scale: the penalty methods' block gradients start at exactly
# zero (every constraint holds after the initial sweep), and Adam would blow the last bits in
# which two batch splittings differ up to steps of size lr.  SGD keeps them where they are.
SGD = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)  # noqa: E731
# (solver, options, layers, dropout, optimiser)
CASES = {
    "serial": ("serial", {"micro_batches": 2}, 8, 0.0, ADAM),
    "mgrit": ("mgrit", {"coarsening": 2, "mgrit_tol": 1e-13}, 8, 0.0, ADAM),
    "penalty": ("penalty", {"blocks": 4}, 8, 0.0, SGD),
    "al": ("al", {"blocks": 4}, 8, 0.0, SGD),
    "serial_dropout": ("serial", {}, 8, 0.1, ADAM),
    # per-sample warm starts, and a composite that switches between two solvers
    "oneshot": ("mgrit", {"coarsening": 2, "mgrit_mode": "one_shot", "mgrit_warm_start": "sample"}, 8, 0.0, ADAM),
    "hybrid": ("hybrid", {"parallel": "al", "blocks": 4, "serial_every": 2, "parallel_epochs": 1,
                          "serial_epochs": 1}, 8, 0.0, SGD),
    # batch norm normalises each group's share: the same running statistics in every group
    "batchnorm": ("serial", {}, 4, 0.0, ADAM),
    # the auxiliary heads are the solver's own parameters, which the groups average too
    "local": ("local", {"local_blocks": 4, "local_overlap": 1}, 8, 0.0, ADAM),
}
JOBS = [(1, 1), (2, 1), (4, 1), (4, 2)]  # (ranks, data groups)

root = Path(sys.argv[1])
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
y = torch.arange(N + 20) % 3
centres = torch.randn(3, 8, generator=gen, dtype=torch.float64) * 2
x = centres[y] + 0.7 * torch.randn(N + 20, 8, generator=gen, dtype=torch.float64)
data = Dataset("blobs", x[:N], y[:N], x[N:], y[N:], 3, False)
images = Dataset("blobs", x[:N].view(N, 1, 2, 4), y[:N], x[N:].view(20, 1, 2, 4), y[N:], 3, True)


def job(grid: Grid, case: str, name: str) -> None:
    solver_name, options, layers, p, optimizer = CASES[case]
    cls = get(solver_name)
    comm = grid.layers
    if case == "batchnorm":  # images: 1 channel of 2 × 4 pixels
        problem = build((1, 2, 4), 3, net="conv", layers=layers, channels=[4], norm="batch", seed=1,
                        dtype=torch.float64)
    else:
        problem = build((8,), 3, net="dense", layers=layers, width=6, seed=1, dtype=torch.float64, dropout=p)
    config = {k: options.get(k, o.default) for k, o in cls.options_for(options).items()}
    network = problem.local(cls.partition(problem.n_layers, comm.size, config), comm.rank)
    solver = cls(network, comm, optimizer, seed=0, **options)
    history = History(None)
    fit(solver, images if case == "batchnorm" else data, comm, epochs=EPOCHS, batch_size=BATCH, seed=5,
        lr=lambda e: 1e-2, augment_images=False, history=history, grid=grid)
    params = grid.world.gather({k: v.clone() for k, v in network.problem_state().items()})
    if params is not None:  # each group's, group by group
        groups = [{k: v for p in params[g * comm.size:(g + 1) * comm.size] for k, v in p.items()}
                  for g in range(grid.groups)]
        (root / case).mkdir(parents=True, exist_ok=True)
        torch.save({"records": history.records, "params": groups[0], "groups": groups}, root / case / f"{name}.pt")


world = Comm(MPI.COMM_WORLD)
for ranks, groups in JOBS:
    sub = MPI.COMM_WORLD.Split(0 if world.rank < ranks else MPI.UNDEFINED, world.rank)
    if sub != MPI.COMM_NULL:
        comm = SelfComm() if ranks == 1 else Comm(sub)
        grid = Grid.split(comm, groups) if groups > 1 else Grid.single(comm)
        for case in CASES:
            job(grid, case, f"P{ranks}_D{groups}")
        sub.Free()
    world.barrier()

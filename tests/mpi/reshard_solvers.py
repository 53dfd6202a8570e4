"""Checkpoints that resume on another number of ranks, at the library level, on 4 ranks.

argv: ROOT

The phases run on the first 4, 2, 3 and 1 ranks (sub-communicators: one launch, not four
interpreter start-ups per phase).  ``write`` trains a case's whole run and saves a
checkpoint at the case's stop point on the way (saving changes nothing); ``resume``, in a
later phase on another number of ranks, restores that checkpoint (``checkpoint.restore``)
and trains to the end.  Either writes, from the phase's rank 0, ``ROOT/CASE/ACTION.pt``: the
losses per ``(epoch, batch)`` and the final parameters under the whole problem's names.
tests/test_reshard.py compares the two.
"""
import sys
from pathlib import Path

import torch
from mpi4py import MPI

from ocnet.model.data import batches
from ocnet.model.problem import build
from ocnet.ranks.comm import Comm, SelfComm
from ocnet.runs import checkpoint
from ocnet.solvers import get

EPOCHS, N, BATCH = 3, 48, 16  # three batches per epoch
# (solver, options, layers, stop): the checkpoint is taken after (epoch, batch); batch None: the whole epoch
CASES = {
    "serial_4to2": ("serial", {}, 8, (1, None)),
    "serial_2to3": ("serial", {"micro_batches": 2}, 8, (0, 2)),
    "penalty_4to2": ("penalty", {"blocks": 4}, 8, (1, None)),
    # a serial step every second step, checkpointed between a parallel and a serial one
    "hybrid_2to3": ("hybrid", {"parallel": "al", "blocks": 4, "serial_every": 2, "parallel_epochs": 2,
                               "serial_epochs": 1}, 8, (1, 1)),
    # solves that stop at the tolerance, so that their result depends on the warm start
    "mgrit_2to1": ("mgrit", {"coarsening": 2}, 32, (0, None)),
    "oneshot_2to1": ("mgrit", {"coarsening": 2, "mgrit_mode": "one_shot", "mgrit_warm_start": "sample"}, 8, (1, 2)),
}

PHASES = [
    (4, "serial_4to2:write penalty_4to2:write"),
    (2, "serial_4to2:resume penalty_4to2:resume serial_2to3:write hybrid_2to3:write mgrit_2to1:write "
        "oneshot_2to1:write"),
    (3, "serial_2to3:resume hybrid_2to3:resume"),
    (1, "mgrit_2to1:resume oneshot_2to1:resume"),
]

root = Path(sys.argv[1])
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
y = torch.arange(N) % 3
centres = torch.randn(3, 8, generator=gen, dtype=torch.float64) * 2
x = centres[y] + 0.5 * torch.randn(N, 8, generator=gen, dtype=torch.float64)


def job(comm: Comm, case: str, action: str) -> None:
    """Train ``case``: ``write`` from the start, ``resume`` from its checkpoint."""
    name, options, layers, stop = CASES[case]
    cls = get(name)
    problem = build((8,), 3, net="dense", layers=layers, width=6, seed=1, dtype=torch.float64)
    config = {k: options.get(k, o.default) for k, o in cls.options_for(options).items()}
    network = problem.local(cls.partition(problem.n_layers, comm.size, config), comm.rank)
    solver = cls(network, comm, lambda p: torch.optim.Adam(p, lr=1e-2), seed=0, **options)
    run_dir = root / case
    first, skip = 0, 0
    if action == "resume":
        info, _ = checkpoint.restore(comm, run_dir, "cpu", solver)
        first, skip = (info["epoch"] + 1, 0) if info["batch"] is None else (info["epoch"], info["batch"])
    losses = {}
    for epoch in range(first, EPOCHS):
        solver.set_lr(1e-2)
        if not (epoch == first and skip):  # a checkpoint inside an epoch holds what begin_epoch set
            solver.begin_epoch(epoch, x, y)
        for b, idx in enumerate(batches(N, BATCH, 5, epoch)):
            if epoch == first and b < skip:
                continue
            losses[epoch, b] = solver.step(x[idx], y[idx], idx).get("loss")
            if action == "write" and stop == (epoch, b + 1):
                checkpoint.save(comm, run_dir, epoch, {"solver": solver.state_dict()}, batch=b + 1,
                                partition=network.partition)
        solver.end_epoch(epoch)
        if action == "write" and stop == (epoch, None):
            checkpoint.save(comm, run_dir, epoch, {"solver": solver.state_dict()}, partition=network.partition)
    losses = comm.bcast(losses, root=comm.size - 1)  # the last rank computes the loss
    params = comm.gather({k: v.clone() for k, v in network.problem_state().items()})
    if params is not None:
        torch.save({"losses": losses, "params": {k: v for p in params for k, v in p.items()}},
                   run_dir / f"{action}.pt")


world = Comm(MPI.COMM_WORLD)
for ranks, jobs in PHASES:
    sub = MPI.COMM_WORLD.Split(0 if world.rank < ranks else MPI.UNDEFINED, world.rank)
    if sub != MPI.COMM_NULL:
        comm = SelfComm() if ranks == 1 else Comm(sub)
        for case, action in (j.split(":") for j in jobs.split()):
            job(comm, case, action)
        sub.Free()
    world.barrier()  # the phase's checkpoints are complete before the next phase reads them

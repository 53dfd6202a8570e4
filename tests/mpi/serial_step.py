"""One training step of the serial solver on P ranks; rank 0 writes the parameters.

argv: out.pt net micro_batches[,micro_batches...] [pipeline]  (one result per micro-batch count;
the pipeline schedule defaults to the solver's)
"""
import sys

import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import world
from ocnet.solvers.serial import Serial

out, net, micros = sys.argv[1], sys.argv[2], [int(m) for m in sys.argv[3].split(",")]
schedule = {"pipeline": sys.argv[4]} if len(sys.argv) > 4 else {}
comm = world()
torch.set_num_threads(1)
shape = (3, 8, 8) if net == "conv" else (1, 8, 8)
problem = build(shape, 5, net=net, layers=8, channels=[4, 8] if net == "conv" else [4], width=8, heads=2,
                seed=3, dtype=torch.float64)
gen = torch.Generator().manual_seed(7)
x = torch.randn(12, *shape, generator=gen, dtype=torch.float64)
y = torch.randint(0, 5, (12,), generator=gen)
initial = {k: v.clone() for k, v in problem.state_dict().items()}
results = {}
for micro in micros:
    problem.load_state_dict(initial)
    network = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    solver = Serial(network, comm, lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9), micro_batches=micro,
                    **schedule)
    losses = [solver.step(x, y, torch.arange(12)).get("loss") for _ in range(2)]
    state = comm.gather(network.problem_state())
    loss = comm.bcast(losses, root=comm.size - 1)
    if comm.rank == 0:
        results[micro] = {"params": {k: v for s in state for k, v in s.items()}, "loss": loss}
if comm.rank == 0:
    torch.save(results, out)

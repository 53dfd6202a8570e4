"""One training step's gradients on P ranks under each pipeline schedule; rank 0 writes them.

argv: out.pt filter(identity|downsample2) micro_batches[,micro_batches...]
Writes {(schedule, micro_batches): {"grads": {name: grad}, "loss": float, "live": [per rank]}},
with schedule "split" too: every backward split, its W after all else (the deepest deferral).
"""
import sys

import torch

from ocnet import pipeline, sweep
from ocnet.comm import world
from ocnet.filters import FILTERS
from ocnet.grid import Partition
from ocnet.problem import build


def split_all(rank: int, size: int, micro_batches: int) -> list:
    ops = pipeline.one_f_one_b(rank, size, micro_batches)
    return ops + [("W", m) for m in range(micro_batches)]


pipeline.SCHEDULES["split"] = split_all
out, name, micros = sys.argv[1], sys.argv[2], [int(m) for m in sys.argv[3].split(",")]
comm = world()
torch.set_num_threads(1)
problem = build((3, 8, 8), 5, net="conv", layers=6, channels=[4, 8], seed=3, dtype=torch.float64)
network = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
gen = torch.Generator().manual_seed(7)
x = torch.randn(12, 3, 8, 8, generator=gen, dtype=torch.float64)
y = torch.randint(0, 5, (12,), generator=gen)
results = {}
for schedule in ("1f1b", "zb", "split"):
    for micro in micros:
        network.zero_grad(set_to_none=True)
        loss = sweep.train(comm, network, x, y, 12, micro_batches=micro, schedule=schedule,
                           filter=FILTERS[name])
        grads = {network.problem_name(k): p.grad.clone() for k, p in network.named_parameters()}
        grads = comm.gather(grads)
        loss = comm.bcast(loss, root=comm.size - 1)
        live = comm.gather(pipeline.live(pipeline.SCHEDULES[schedule](comm.rank, comm.size, micro)))
        if comm.rank == 0:
            results[(schedule, micro)] = {"grads": {k: v for g in grads for k, v in g.items()}, "loss": loss,
                                          "live": live}
if comm.rank == 0:
    torch.save(results, out)

"""One training step's gradients on P ranks under the schedules on virtual stages; rank 0
writes them.

argv: out.pt micro_batches[,micro_batches...]
Writes {(schedule, filter, micro_batches): {"grads": {name: grad}, "loss": float}} for
schedule "1f1b" (one slice per rank), "interleaved" (2 stages per rank) and "v", filter
"identity" and "downsample2"; and, computed on rank 0 alone, the same step at P = 1:
("one", filter, micro_batches) with 1F1B on one slice (identity) or interleaved 1F1B on
2P stages (the same cuts as the runs on P ranks; downsample2).
"""
import sys

import torch

from ocnet import sweep
from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm, world
from ocnet.ranks.filters import FILTERS

out, micros = sys.argv[1], [int(m) for m in sys.argv[2].split(",")]
comm = world()
torch.set_num_threads(1)
problem = build((3, 8, 8), 5, net="conv", layers=6, channels=[4, 8], seed=3, dtype=torch.float64)
gen = torch.Generator().manual_seed(7)
x = torch.randn(12, 3, 8, 8, generator=gen, dtype=torch.float64)
y = torch.randint(0, 5, (12,), generator=gen)
n = problem.n_layers
P = comm.size
partitions = {"1f1b": Partition(n, P), "interleaved": Partition.virtual(n, P, 2),
              "v": Partition.virtual(n, P, 2, "v")}


def step(comm, partition, schedule, name, micro):
    network = problem.local(partition, comm.rank)
    network.zero_grad(set_to_none=True)
    loss = sweep.train(comm, network, x, y, 12, micro_batches=micro, schedule=schedule, filter=FILTERS[name])
    return loss, {network.problem_name(k): p.grad.clone() for k, p in network.named_parameters()}


results = {}
for name in ("identity", "downsample2"):
    for schedule, partition in partitions.items():
        if schedule == "1f1b" and name != "identity":
            continue
        for micro in micros:
            loss, grads = step(comm, partition, schedule, name, micro)
            owner = partition.stage_rank(partition.n_stages - 1)[0] if partition.is_virtual else P - 1
            loss = comm.bcast(loss, root=owner)
            grads = comm.gather(grads)
            if comm.rank == 0:
                results[(schedule, name, micro)] = {"grads": {k: v for g in grads for k, v in g.items()},
                                                    "loss": loss}
if comm.rank == 0:
    for name, schedule, partition in [("identity", "1f1b", Partition(n, 1)),
                                      ("downsample2", "interleaved", Partition.virtual(n, 1, 2 * P))]:
        for micro in micros:
            loss, grads = step(SelfComm(), partition, schedule, name, micro)
            results[("one", name, micro)] = {"grads": grads, "loss": loss}
    torch.save(results, out)

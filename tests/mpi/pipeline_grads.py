"""One training step's gradients on P ranks under each pipeline schedule; rank 0 writes them.

argv: out.pt filter(identity|downsample2) micro_batches[,micro_batches...]
Writes {(schedule, micro_batches): {"grads": {name: grad}, "loss": float, "live": [per rank]}},
with schedule "split" too: every backward split, its W after all else (the deepest deferral);
and {(schedule, 8, "ahead"): {..., "held": [per rank]}} for 1f1b and zb run with ``ahead=2``
while the last rank's forwards are slowed (so the others wait for adjoints and run ahead),
"held" being the most micro-batches a rank held at once, counted from its timeline.
"""
import sys
import time

import torch

from ocnet import sweep
from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks import pipeline, timeline
from ocnet.ranks.comm import world
from ocnet.ranks.filters import FILTERS


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


def held(events: list) -> int:
    """The most micro-batches held at once: from a forward until its parameter gradients."""
    now = peak = 0
    for kind, *_ in events:
        now += {"forward_graph": 1, "backward": -1, "weight_grad": -1}.get(kind, 0)
        peak = max(peak, now)
    return peak


for schedule in ("1f1b", "zb"):
    slow = (network.layers[0].register_forward_hook(lambda *args: time.sleep(0.02))
            if comm.rank == comm.size - 1 else None)
    network.zero_grad(set_to_none=True)
    rec = timeline.Recorder()
    with timeline.recording(rec):
        loss = sweep.train(comm, network, x, y, 12, micro_batches=8, schedule=schedule, ahead=2,
                           filter=FILTERS[name])
    if slow is not None:
        slow.remove()
    grads = comm.gather({network.problem_name(k): p.grad.clone() for k, p in network.named_parameters()})
    loss = comm.bcast(loss, root=comm.size - 1)
    peaks = comm.gather(held(rec.events))
    live = comm.gather(pipeline.live(pipeline.SCHEDULES[schedule](comm.rank, comm.size, 8)))
    if comm.rank == 0:
        results[(schedule, 8, "ahead")] = {"grads": {k: v for g in grads for k, v in g.items()}, "loss": loss,
                                           "live": live, "held": peaks}
if comm.rank == 0:
    torch.save(results, out)

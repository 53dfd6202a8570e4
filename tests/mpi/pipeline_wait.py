"""A pipeline of compute across all ranks: rank r works, then passes a token to r + 1.

Writes {"total": wall seconds of the chain, "compute": sum of the ranks' compute (wall),
"compute_cpu": the same in CPU seconds, "waiting_cpu": the CPU seconds the ranks spent while
waiting for the token} to argv[1]. Waiting ranks must not steal the cores of the working one
(polite waits): what they burn is CPU time, which other load on the machine does not change.
"""
import json
import sys
import time

import torch

from ocnet.ranks.comm import world

torch.set_num_threads(1)
comm = world()
a = torch.randn(128, 128, dtype=torch.float64)


def work(n: int) -> None:
    b = a
    for _ in range(n):
        b = torch.tanh(a @ b)


# Calibrate the work to ~0.1 s on rank 0 and time it alone, while the others wait politely.
n = alone = 0
if comm.rank == 0:
    t = time.perf_counter()
    work(50)
    n = max(1, int(50 * 0.1 / (time.perf_counter() - t)))
    t = time.perf_counter()
    work(n)
    alone = time.perf_counter() - t
n, alone = comm.bcast((n, alone))
comm.barrier()

start, cpu = time.perf_counter(), time.process_time()
token = torch.zeros(1)
if comm.rank > 0:
    token = comm.recv(comm.rank - 1, tag=5)
t, c = time.perf_counter(), time.process_time()
waiting_cpu = c - cpu
work(n)
mine, mine_cpu = time.perf_counter() - t, time.process_time() - c
if comm.rank < comm.size - 1:
    comm.send(token + 1, comm.rank + 1, tag=5)
compute, compute_cpu, waiting_cpu = comm.allreduce(mine), comm.allreduce(mine_cpu), comm.allreduce(waiting_cpu)
total = comm.bcast(time.perf_counter() - start, root=comm.size - 1)
if comm.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"total": total, "compute": compute, "alone": alone, "ranks": comm.size,
                   "compute_cpu": compute_cpu, "waiting_cpu": waiting_cpu}, f)

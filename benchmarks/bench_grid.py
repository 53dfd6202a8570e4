"""Data groups against layer ranks: ``mpiexec -n 2 python benchmarks/bench_grid.py``

Time per training step (serial back-propagation, forward + backward + Adam step) of a conv
ResNet on CIFAR-shaped synthetic states (8 layers, 16 channels, 32×32, batch 128; on 8×8
digits Python overhead dominates), one thread per rank:

* ``P1``: one rank (rank 0, while rank 1 waits), with 1 and with 2 threads;
* ``1x2``: one group of 2 layer ranks, the batch in 1 and in 4 micro-batches (1F1B);
* ``2x1``: 2 data groups of one rank, each on its half of the batch, gradients averaged.

The configurations take turns, repeat after repeat, and each reports its median.  It also
counts the bytes of one gradient reduction per rank against :func:`ocnet.ranks.replicas.reduction_bytes`
(every parameter element, and a presence flag per parameter, in the parameters' dtype).

Prints the figures and writes benchmarks/results/bench_grid.json (rank 0).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks.comm import SelfComm, world  # noqa: E402
from ocnet.ranks.replicas import GradientAverage, Grid, reduction_bytes  # noqa: E402
from ocnet.solvers import get  # noqa: E402

BATCH, LAYERS, CHANNELS = 128, 8, 16


def _solver(comm, **options):
    problem = build((3, 32, 32), 10, net="conv", layers=LAYERS, channels=[CHANNELS], seed=0)
    network = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    return get("serial")(network, comm, lambda p: torch.optim.Adam(p, lr=1e-3), **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    tuned = common.tune_malloc()
    comm = world()
    assert comm.size == 2, "run under mpiexec -n 2"
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (BATCH,), generator=gen)
    index = torch.arange(BATCH)

    grid = Grid.split(comm, 2)
    data_parallel = _solver(grid.layers)
    average = data_parallel.gradient_average = GradientAverage(data_parallel.network, data_parallel.optimizers,
                                                               grid.data)
    mine = grid.share(index)
    average.weight = len(mine) / BATCH

    def on_rank_0(threads: int) -> Callable[[], object]:
        """P = 1 on rank 0 with ``threads`` threads, while rank 1 waits."""
        solver = _solver(SelfComm())

        def step() -> None:
            if comm.rank == 0:
                torch.set_num_threads(threads)
                solver.step(x, y, index)
                torch.set_num_threads(1)
        return step

    pipeline, micro = _solver(comm), _solver(comm, micro_batches=4)
    steps: dict[str, Callable[[], object]] = {
        "P1_1thr": on_rank_0(1),
        "P1_2thr": on_rank_0(2),
        "1x2": lambda: pipeline.step(x, y, index),
        "1x2_4micro": lambda: micro.step(x, y, index),
        "2x1": lambda: data_parallel.step(x[mine], y[mine], index[mine] // 2),
    }

    def run(name: str) -> float:
        t = time.perf_counter()
        steps[name]()
        comm.barrier()
        return time.perf_counter() - t

    names = list(steps)
    for name in names:  # warm-up
        run(name)
    times: dict[str, list[float]] = {name: [] for name in names}
    sent = grid.data.bytes_sent
    for _ in range(args.repeats):
        for name in names:
            times[name].append(run(name))
    reduced = (grid.data.bytes_sent - sent) / args.repeats
    median = {name: comm.bcast(statistics.median(t)) for name, t in times.items()}
    result = {"allocator": "tuned (mallopt)" if tuned else "default", "batch": BATCH, "layers": LAYERS,
              "channels": CHANNELS, "state": [CHANNELS, 32, 32], "threads_per_rank": 1, "repeats": args.repeats,
              "median_step_s": median,
              "speedup_vs_P1_1thr": {n: median["P1_1thr"] / median[n] for n in names},
              "speedup_vs_P1_2thr": {n: median["P1_2thr"] / median[n] for n in names},
              "reduction_bytes_per_step_per_rank": reduced,
              "reduction_bytes_formula": reduction_bytes(data_parallel.network),
              "parameters": sum(p.numel() for p in data_parallel.network.parameters())}
    if comm.rank == 0:
        print(json.dumps(result, indent=2))
        common.write("bench_grid", result)


if __name__ == "__main__":
    main()

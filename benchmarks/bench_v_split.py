"""The V's searched splits against its rule before them, side by side.

    [OCNET_MALLOC=tuned] mpiexec -n 2 python -m mpi4py benchmarks/bench_v_split.py [--repeats 11]

The serial solver with ``--pipeline v`` (two stages per rank) on the network, batch and
micro-batches of ``bench_serial.py`` (c), once with the V's lists as :func:`ocnet.ranks.pipeline.v_shape`
makes them (a search over which backwards to split) and once with every backward split or
none, whichever the cost model predicts shorter (the rule before the search).  Both in one
job, their steps interleaved in rounds (each three steps in a row, the last two timed; the
order turning round every round), one thread per rank.  Prints the median steps, their
ratio and the predicted steps of both; the JSON goes to
``benchmarks/results/bench_v_split_pP.json`` (or ``--out``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serial import data, network  # noqa: E402
from common import allocator, tune_malloc, write  # noqa: E402

from ocnet.ranks import pipeline  # noqa: E402
from ocnet.ranks.comm import world  # noqa: E402
from ocnet.solvers.serial import Serial  # noqa: E402

#: The benchmark's name for the V before the search (registered in this process only).
ALL_OR_NONE = "v_all_or_none"


def all_or_none(rank: int, size: int, micro_batches: int, chunks: int = 2) -> list[pipeline.ChunkOp]:
    """The V's lists with every backward split or none, whichever is predicted shorter."""
    return list(pipeline._v_all_or_none(size, micro_batches, pipeline.COSTS)[1][1][rank])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=11, help="timed rounds (two steps each)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if allocator() == "tuned":
        tune_malloc()
    torch.set_num_threads(1)
    pipeline.VIRTUAL[ALL_OR_NONE] = ("v", all_or_none)
    comm = world()
    x, y = data(args.batch)
    problem = network(args.layers, args.channels)
    index = torch.arange(args.batch)
    solvers = {}
    for name in ("v", ALL_OR_NONE):
        config = {"pipeline": name, "virtual_stages": 2}
        local = problem.local(Serial.partition(problem.n_layers, comm.size, config), comm.rank)
        solvers[name] = Serial(local, comm, lambda p: torch.optim.SGD(p, lr=1e-3), micro_batches=args.micro, **config)
    times: dict[str, list[float]] = {name: [] for name in solvers}
    for i in range(args.repeats + 1):  # round 0 warms up
        for name, solver in (list(solvers.items()) if i % 2 else list(solvers.items())[::-1]):
            for j in range(3):
                comm.barrier()
                t = time.perf_counter()
                solver.step(x, y, index)
                comm.barrier()
                if i > 0 and j > 0:
                    times[name].append(time.perf_counter() - t)
    if comm.rank != 0:
        return
    med = {name: statistics.median(v) for name, v in times.items()}
    predicted = {name: max(pipeline.simulate([gen(r, comm.size, args.micro) for r in range(comm.size)], shape="v"))
                 for name, gen in (("v", pipeline.v_shape), (ALL_OR_NONE, all_or_none))}
    ratio = med["v"] / med[ALL_OR_NONE]
    print(f"P={comm.size}, {args.micro} micro-batches, allocator {allocator()}: the V searched "
          f"{med['v'] * 1e3:.0f} ms, every backward split or none {med[ALL_OR_NONE] * 1e3:.0f} ms: "
          f"{ratio:.3f} of the time (predicted {predicted['v']:.2f} against {predicted[ALL_OR_NONE]:.2f} forwards)")
    write(f"bench_v_split_p{comm.size}", {"ranks": comm.size, "micro_batches": args.micro, "allocator": allocator(),
                                          "step_s": med, "times": times, "ratio": ratio, "predicted": predicted},
          args.out)


if __name__ == "__main__":
    main()

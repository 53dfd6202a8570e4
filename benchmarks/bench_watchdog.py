"""The stall watchdog's cost per message: ping-pong latency of small messages between ranks 0
and 1, with and without the watchdog running.

    mpiexec -n 2 python -m mpi4py benchmarks/bench_watchdog.py [--trips 10000] [--repeats 5]

The two kinds alternate (in turns of which goes first) so that a drift of the machine affects
both alike; the figure is the median over repeats of the ratio with/without.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ocnet.ranks.comm import world  # noqa: E402


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trips", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    comm = world()
    x = torch.zeros(4)

    def round_trip() -> float:
        """Seconds per round trip."""
        comm.barrier()
        t = time.perf_counter()
        for _ in range(args.trips):
            if comm.rank == 0:
                comm.send(x, 1, tag=1)
                comm.recv(1, tag=2)
            elif comm.rank == 1:
                comm.send(comm.recv(0, tag=1), 0, tag=2)
        return (time.perf_counter() - t) / args.trips

    times: dict[str, list[float]] = {"with": [], "without": []}
    round_trip()  # warm up
    for i in range(args.repeats):
        for watched in (False, True) if i % 2 else (True, False):
            if watched:
                comm.start_watchdog(600)
            times["with" if watched else "without"].append(round_trip())
            comm.stop_watchdog()
    if comm.rank == 0:
        ratio = statistics.median(a / b for a, b in zip(times["with"], times["without"]))
        print(f"round trip: median {statistics.median(times['without']) * 1e6:.1f} us without the watchdog, "
              f"ratio with/without {ratio:.3f}")
        write("watchdog", {"ranks": comm.size, "trips": args.trips, "times": times, "ratio": ratio}, args.out)


if __name__ == "__main__":
    cli()

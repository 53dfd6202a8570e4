"""Ping-pong latency of small messages between ranks 0 and 1, with and without the stall
watchdog running (argv: OUT [TRIPS REPEATS]).

Writes {"with": [...], "without": [...]}: seconds per round trip of each repeat, the two
kinds interleaved (in turns of which goes first) so that a drift of the machine affects both
alike.
"""
import json
import sys
import time

import torch

from ocnet.comm import world

trips = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
comm = world()
x = torch.zeros(4)


def round_trips() -> float:
    comm.barrier()
    t = time.perf_counter()
    for _ in range(trips):
        if comm.rank == 0:
            comm.send(x, 1, tag=1)
            comm.recv(1, tag=2)
        elif comm.rank == 1:
            comm.send(comm.recv(0, tag=1), 0, tag=2)
    return (time.perf_counter() - t) / trips


times: dict[str, list[float]] = {"with": [], "without": []}
round_trips()  # warm up
for i in range(repeats):
    for watched in (False, True) if i % 2 else (True, False):
        if watched:
            comm.start_watchdog(600)
        times["with" if watched else "without"].append(round_trips())
        comm.stop_watchdog()
if comm.rank == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(times, f)

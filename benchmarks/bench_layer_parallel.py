"""Penalty / AL layer-parallel benchmark: ``mpiexec -n 2 python benchmarks/bench_layer_parallel.py``

* time per parallel-phase iteration at P = 2 (one thread per rank) against P = 1 running
  the same algorithm with the same K = 2 blocks (1 thread, and 2 threads), on image-sized
  states (CIFAR shapes, synthetic values: on 8×8 digits Python overhead dominates);
* bytes per iteration with the identity and the 2×2 downsampling filter;
* memory of the auxiliary states (plain and stored through the filter);
* time to accuracy for serial, penalty, al, hybrid at P = 2 on digits.

Prints the figures and writes benchmarks/results/bench_layer_parallel.json (rank 0).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from ocnet import run  # noqa: E402
from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks.comm import SelfComm, world  # noqa: E402
from ocnet.ranks.filters import FILTERS  # noqa: E402
from ocnet.solvers import get  # noqa: E402

BATCH, N_TRAIN, LAYERS, CHANNELS, REPEATS = 128, 512, 8, 16, 5


def _solver(comm, name, filter_name="identity", **options):
    problem = build((3, 32, 32), 10, net="conv", layers=LAYERS, channels=[CHANNELS], seed=0)
    network = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    return get(name)(network, comm, lambda p: torch.optim.Adam(p, lr=1e-3),
                     filter=FILTERS[filter_name], blocks=2, **options)


def _iteration_time(comm, name, filter_name="identity"):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (N_TRAIN,), generator=gen)
    solver = _solver(comm, name, filter_name)
    solver.begin_epoch(0, x, y)
    batches = iter(range(10**6))

    def one():
        i = next(batches) % (N_TRAIN // BATCH)
        idx = torch.arange(i * BATCH, (i + 1) * BATCH)
        solver.step(x[idx], y[idx], idx)
        comm.barrier()

    sent = comm.bytes_sent
    t, _ = common.median_time(one, REPEATS, warmup=2)
    per_iter = comm.allreduce(comm.bytes_sent - sent) / (REPEATS + 2)
    return t, per_iter, solver


def main() -> None:
    tuned = common.tune_malloc()
    comm = world()
    assert comm.size == 2, "run under mpiexec -n 2"
    result = {"allocator": "tuned (mallopt)" if tuned else "default", "batch": BATCH, "layers": LAYERS,
              "channels": CHANNELS, "state": [CHANNELS, 32, 32], "blocks": 2}
    torch.set_num_threads(1)
    for name in ("penalty", "al"):
        t2, b2, _ = _iteration_time(comm, name)
        _, b2f, _ = _iteration_time(comm, name, "downsample2")
        row = {"P2_s": t2, "bytes_per_iter": b2, "bytes_per_iter_downsample2": b2f}
        for threads in (1, 2):  # P = 1 on rank 0 while rank 1 waits politely
            if comm.rank == 0:
                torch.set_num_threads(threads)
                row[f"P1_{threads}thr_s"] = _iteration_time(SelfComm(), name)[0]
                torch.set_num_threads(1)
            comm.barrier()
        if comm.rank == 0:
            row["speedup_vs_P1_1thr"] = row["P1_1thr_s"] / t2
            row["speedup_vs_P1_2thr"] = row["P1_2thr_s"] / t2
        result[name] = row
    # memory of the auxiliary states per rank (rank 1 owns z_1 of all N_TRAIN samples)
    mem = {}
    for filter_aux in (False, True):
        s = _solver(comm, "al", "downsample2", filter_aux=filter_aux)
        s.begin_epoch(0, torch.randn(N_TRAIN, 3, 32, 32), torch.zeros(N_TRAIN, dtype=torch.long))
        mem["filtered" if filter_aux else "plain"] = comm.allreduce(s.z.nbytes + s.mu.nbytes)
    result["aux_memory_bytes"] = {**mem, "samples": N_TRAIN}

    # time to accuracy on digits (dense net, 20 epochs, one block per rank)
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = comm.bcast(tmp)
        base = ["--quiet", "--net", "dense", "--epochs", "20", "--threads", "1"]
        plans = {"serial": [], "penalty": [], "al": [], "hybrid": ["--parallel-epochs", "15", "--serial-epochs", "5"]}
        for name, extra in plans.items():
            out = Path(tmp) / name
            run.main(["--solver", name, "--out", str(out), *base, *extra])
            if comm.rank == 0:
                hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
                ep = [r for r in hist if r["kind"] == "epoch"]
                hit = next((r["wall_time"] for r in ep if r["test_acc"] >= 0.9), None)
                table[name] = {"final_test_acc": ep[-1]["test_acc"], "wall_s": ep[-1]["wall_time"],
                               "time_to_90pct_s": hit, "bytes_sent": sum(r["bytes_sent"] for r in ep)}
    result["time_to_accuracy_digits_P2"] = table
    if comm.rank == 0:
        print(json.dumps(result, indent=2))
        common.write("bench_layer_parallel", result)


if __name__ == "__main__":
    main()

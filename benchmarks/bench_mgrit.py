"""MGRIT benchmark: overhead per step evaluation, iterations against N and c, and a forward
solve on two ranks against the sequential sweep on one.

    python benchmarks/bench_mgrit.py                  # (a) overhead, (b) iterations; P = 1
    mpiexec -n 2 python -m mpi4py benchmarks/bench_mgrit.py   # (c) speedup at P = 2

(a) overhead ratio = wall time of the MGRIT iterations / (step evaluations × time of one
    step), 64-layer conv network (16 channels, 32×32, batch 16) and a dense one (width 32);
(b) iterations until the residual is below 1e-6·‖u_0‖, dense network, N and c varied;
(c) N = 256 conv layers: MGRIT forward solve on 2 ranks (1 thread each) against the
    sequential sweep on 1 rank with 1 and with 2 threads; step evaluations on the critical
    path explain the ratio.
Figures go to stdout and to benchmarks/results/bench_mgrit.json (or --out), merged with
what earlier invocations wrote.  The glibc allocator is tuned for ocnet and baseline alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, median_time, tune_malloc, write  # noqa: E402

from ocnet.mgrit import Layout, solve  # noqa: E402
from ocnet.mgrit.core import n_levels  # noqa: E402
from ocnet.mgrit.network import NetworkPropagator  # noqa: E402
from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks.comm import world  # noqa: E402


def network(kind: str, N: int, comm, c: int, seed: int = 0):
    """(propagator, u_0 on rank 0, layout) for a ``kind`` network of ``N`` layers."""
    if kind == "conv":
        problem = build((3, 32, 32), 10, net="conv", layers=N, channels=[16], seed=seed)
        x = torch.randn(16 if N <= 64 else 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    else:
        problem = build((64,), 10, net="dense", layers=N, width=32, seed=seed)
        x = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
    part = Partition(N, comm.size)
    local = problem.local(part, comm.rank)
    with torch.no_grad():
        u0 = local.opening(x) if comm.rank == 0 else None
    return NetworkPropagator(local, c), u0, Layout.from_partition(part), local


def sequential_time(prop, u0, N, repeats=3) -> float:
    def sweep():
        u = u0
        for i in range(N):
            u = prop.step(0, i, u)
    return median_time(sweep, repeats)[0]


class Timed:
    """A propagator that clocks the time spent inside its steps (coarsening as ``prop``'s)."""

    def __init__(self, prop) -> None:
        self.prop, self.c, self.seconds = prop, prop.c, 0.0

    def step(self, level, i, u):
        t = time.perf_counter()
        v = self.prop.step(level, i, u)
        self.seconds += time.perf_counter() - t
        return v


def overhead(comm, repeats: int = 3) -> dict:
    out = {}
    for kind in ("conv", "dense"):
        N, c = 64, 4
        prop, u0, layout, _ = network(kind, N, comm, c)
        rows = []
        for levels, relaxation in ((2, "FCF"), (3, "FCF"), (2, "F")):
            walls, seqs, inside = [], [], []
            for _ in range(repeats):  # interleaved, so that load from elsewhere hits both alike
                seqs.append(sequential_time(prop, u0, N, repeats=1) / N)
                timed = Timed(prop)
                res = solve(timed, u0, N, comm, levels=levels, relaxation=relaxation, tol=0.0,
                            max_iter=4, layout=layout)
                walls.append(res.wall_time[-1])
                inside.append(res.wall_time[-1] / timed.seconds)
            wall, t_step, steps = statistics.median(walls), statistics.median(seqs), res.step_evals[-1]
            rows.append({"levels": levels, "relaxation": relaxation, "iterations": res.iterations,
                         "step_evals": steps, "wall_s": wall, "step_s": t_step,
                         "overhead_ratio": wall / (steps * t_step),
                         # robust to load from other processes: wall time / time inside the steps
                         "wall_over_time_in_steps": statistics.median(inside)})
        out[kind] = {"N": N, "c": c, "runs": rows}
    return out


def iterations(comm) -> dict:
    rows = []
    for N in (16, 32, 64, 128, 256):
        for c in (2, 4, 8):
            if c > N:
                continue
            prop, u0, layout, _ = network("dense", N, comm, c)
            tol = 1e-6 * float(torch.linalg.vector_norm(u0))
            for levels in (2, n_levels(N, c, 99)):
                res = solve(prop, u0, N, comm, levels=levels, relaxation="FCF", tol=tol, max_iter=60,
                            layout=layout)
                rows.append({"N": N, "c": c, "levels": res.levels, "iterations": res.iterations,
                             "converged": res.converged, "conv_factor": res.conv_factor})
    return {"network": "dense width 32, tanh, T = 1, batch 64", "tol": "1e-6 |u_0|", "relaxation": "FCF",
            "cycle": "V", "runs": rows}


def speedup(comm) -> dict:
    N = 256
    rows = []
    seq = {}
    if comm.rank == 0:  # the sequential sweep on one rank, the other waits politely
        from ocnet.ranks.comm import SelfComm
        prop1, u01, _, _ = network("conv", N, SelfComm(), 4)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            seq[threads] = sequential_time(prop1, u01, N, repeats=3)
        torch.set_num_threads(1)
    comm.barrier()
    for c, levels, relaxation, max_iter, tol in ((4, 2, "FCF", 60, 1e-6), (8, 2, "F", 60, 1e-6),
                                                 (4, 2, "F", 1, 0.0)):
        prop, u0, layout, _ = network("conv", N, comm, c)
        scale = comm.allreduce(float(torch.linalg.vector_norm(u0)) if u0 is not None else 0.0)
        comm.barrier()
        t = time.perf_counter()
        res = solve(prop, u0, N, comm, levels=levels, relaxation=relaxation, tol=tol * scale,
                    max_iter=max_iter, layout=layout)
        comm.barrier()
        wall = time.perf_counter() - t
        critical = comm.allreduce(res.local_steps, op="max")
        rows.append({"c": c, "levels": levels, "relaxation": relaxation,
                     "stop": f"tol {tol}·|u0|" if tol else f"{max_iter} iteration(s)",
                     "iterations": res.iterations, "wall_s": wall, "step_evals_total": res.step_evals[-1],
                     "step_evals_critical_rank": critical, "bytes_sent": res.bytes_sent[-1],
                     "speedup_vs_P1_1thread": seq.get(1, float("nan")) / wall if comm.rank == 0 else None,
                     "speedup_vs_P1_2threads": seq.get(2, float("nan")) / wall if comm.rank == 0 else None})
    return {"N": N, "ranks": comm.size, "state": "(8, 16, 32, 32) conv", "sequential_s": seq,
            "sequential_step_evals": N, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS / "bench_mgrit.json"))
    args = parser.parse_args()
    tuned = tune_malloc()
    comm = world()
    torch.set_num_threads(1)
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() else {}
    if comm.size == 1:
        result["overhead"] = overhead(comm)
        result["iterations"] = iterations(comm)
    else:
        result["speedup"] = speedup(comm)
    result["allocator"] = "tuned (mallopt)" if tuned else "default"
    if comm.rank == 0:
        result.pop("benchmark", None)
        write("bench_mgrit", result, str(path))
        print(json.dumps({k: v for k, v in result.items() if k in ("overhead", "iterations", "speedup")}, indent=1))


if __name__ == "__main__":
    main()

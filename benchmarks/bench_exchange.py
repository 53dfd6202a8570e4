"""Gather against dense allreduce in the compressed gradient exchange: where is the crossover?

    OCNET_MALLOC=tuned .venv/bin/python benchmarks/bench_exchange.py [--groups 2,4]
        [--sizes 1e4,1e5,1e6] [--densities 0.001,0.01,0.03,0.1,0.2,0.3,0.5] [--repeats 41]
        [--allocators tuned,default] [--out FILE.json]

(it starts its own ``mpiexec -n D`` jobs, one per D and allocator; under ``mpiexec -n D python -m
mpi4py benchmarks/bench_exchange.py`` it measures that one D and prints its table).

:class:`ocnet.ranks.replicas.GradientAverage` combines the sparse messages of a compressor over
the D data groups either by gathering every rank's messages and summing them with
``index_add`` (the *gather path*) or by decoding them to a dense buffer and taking the dense
allreduce (the *dense path*).  It gathers while the largest rank's message is below
``GradientAverage.gather_below`` times the dense buffer's bytes.  Here each path is forced
(``gather_below`` = inf or 0 on the instance) and one ``average(params)`` call is timed, for
gradients of ``n`` float32 entries in total, cut like a small convolutional network (4 layers
of ``(c, c, 3, 3)`` kernels and ``(c,)`` biases, ``c`` chosen so the total is close to ``n``),
and a compressor that sends exactly ``ceil(ρ · numel)`` entries of each tensor (fixed random
positions per rank and tensor, so the selection itself costs no sort and the two paths differ
only in the exchange; the error-feedback bookkeeping is that of ``topk``).

Every call starts after a barrier; a call's time is the largest over the ranks, and the figure
is the median over ``--repeats`` calls after 3 warm-up calls, one thread per rank; the calls of
the two paths alternate, so that drift of the machine falls on both alike.  Reported per
D, n and ρ: the byte ratio the rule compares (the largest rank's message bytes over the dense
buffer's bytes, ≈ 2ρ for int32 positions and float32 values), gather ms, dense ms and their
ratio; per D and n the crossover: the largest measured byte ratio at which gathering is still
faster, the ratio where ``log(gather / dense)`` crosses zero above it, interpolated linearly in
the byte ratio between the neighbouring densities, and the smallest measured byte ratio at which
gathering is slower (below the largest faster one where noise makes the ratio not monotone in ρ).
D above the core count is oversubscribed: read its times as such.  Writes ``results/bench_exchange.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, mpiexec, tune_malloc, under_mpiexec, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet.ranks.comm import world  # noqa: E402
from ocnet.ranks.compress import INDEX_BYTES, ErrorFeedback, message_bytes, register_compressor  # noqa: E402
from ocnet.ranks.replicas import GradientAverage  # noqa: E402

WARMUP = 3
LAYERS = 4


@register_compressor("exact-share")
class ExactShare(ErrorFeedback):
    """Sends exactly ``ceil(ratio · n)`` entries of each tensor: fixed random positions per rank
    and tensor size, drawn once, so that what is timed is the exchange, not a selection."""

    def __init__(self, ratio: float = 0.01, bin: int = 0, seed: int = 0) -> None:
        super().__init__(ratio, bin)
        self.seed = seed
        self._chosen: dict[int, torch.Tensor] = {}

    def select(self, r: torch.Tensor, g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        n = r.numel()
        if n not in self._chosen:
            k = min(n, math.ceil(self.ratio * n))
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + n)
            self._chosen[n] = torch.sort(torch.randperm(n, generator=gen)[:k]).values
        return self._chosen[n]


def shapes(n: int) -> list[tuple[int, ...]]:
    """A small convolutional network's parameter shapes with about ``n`` entries in all."""
    c = max(1, round(math.sqrt(n / (LAYERS * 9))))
    return [s for _ in range(LAYERS) for s in ((c, c, 3, 3), (c,))]


class Net(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(torch.zeros(s)) for s in shapes(n)])


def measure(comm: Any, n: int, rho: float, repeats: int) -> dict[str, Any]:
    """One (n, ρ) point on this job's D ranks: both paths, each call's time max over ranks."""
    net = Net(n)
    params = list(net.parameters())
    gen = torch.Generator().manual_seed(1234 + comm.rank)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    numel = sum(p.numel() for p in params)
    counts = [min(p.numel(), math.ceil(rho * p.numel())) for p in params]
    elem = params[0].element_size()
    message = sum(message_bytes(c, elem) + INDEX_BYTES + elem for c in counts)
    dense = (numel + len(params)) * elem
    out: dict[str, Any] = {"n": numel, "tensors": len(params), "density": rho, "sent_per_rank": sum(counts),
                           "message_bytes": message, "dense_bytes": dense, "byte_ratio": message / dense}
    paths = {"gather": float("inf"), "dense": 0.0}
    averages = {}
    for path, below in paths.items():
        averages[path] = GradientAverage(net, [], comm, ExactShare(ratio=rho, seed=comm.rank))
        averages[path].gather_below = below
    times: dict[str, list[float]] = {path: [] for path in paths}
    for i in range(WARMUP + repeats):
        for path in (("gather", "dense") if i % 2 == 0 else ("dense", "gather")):  # interleaved: no drift between
            avg = averages[path]
            for p, g in zip(params, grads):
                p.grad = g.clone()
            avg.compressor.residue.clear()
            comm.barrier()
            t = time.perf_counter()
            avg.average(params)
            dt = time.perf_counter() - t
            if i >= WARMUP:
                times[path].append(dt)
    for path in paths:
        worst = comm.allreduce(torch.tensor(times[path], dtype=torch.float64), op="max").tolist()
        out[f"{path}_ms"] = statistics.median(worst) * 1e3
        out[f"{path}_times_ms"] = [t * 1e3 for t in worst]
    out["gather_over_dense"] = out["gather_ms"] / out["dense_ms"]
    return out


def worker(sizes: list[int], densities: list[float], repeats: int) -> dict[str, Any] | None:
    """Every (n, ρ) point on this job's ranks; the result on rank 0, ``None`` elsewhere."""
    comm = world()
    rows = [measure(comm, n, rho, repeats) for n in sizes for rho in densities]
    if comm.rank:
        return None
    cores = len(os.sched_getaffinity(0))
    return {"groups": comm.size, "cores": cores, "oversubscribed": comm.size > cores, "allocator": allocator(),
            "threads": torch.get_num_threads(), "rows": rows}


def crossover(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The crossover of one (D, n): the largest measured byte ratio at which gathering wins,
    and where ``log(gather / dense)`` crosses zero above it (linear in the byte ratio)."""
    rows = sorted(rows, key=lambda r: r["byte_ratio"])
    wins = [i for i, r in enumerate(rows) if r["gather_over_dense"] < 1.0]
    losses = [i for i, r in enumerate(rows) if r["gather_over_dense"] >= 1.0]
    first_slower = rows[losses[0]]["byte_ratio"] if losses else None
    if not wins:
        return {"largest_faster": None, "interpolated": None, "first_slower": first_slower,
                "note": f"dense faster at every density (from byte ratio {rows[0]['byte_ratio']:.4f})"}
    i = wins[-1]
    a = rows[i]
    if i + 1 == len(rows):
        return {"largest_faster": a["byte_ratio"], "interpolated": None, "first_slower": first_slower,
                "note": f"gather faster up to the largest byte ratio measured ({a['byte_ratio']:.3f})"}
    b = rows[i + 1]
    la, lb = math.log(a["gather_over_dense"]), math.log(b["gather_over_dense"])
    at = a["byte_ratio"] + (b["byte_ratio"] - a["byte_ratio"]) * (-la) / (lb - la)
    note = "" if len(wins) == i + 1 else "gather/dense not monotone in ρ below this point"
    return {"largest_faster": a["byte_ratio"], "interpolated": at, "first_slower": first_slower, "note": note}


def report(run: dict[str, Any]) -> None:
    D = run["groups"]
    over = f", OVERSUBSCRIBED: {D} ranks on {run['cores']} cores" if run["oversubscribed"] else ""
    print(f"\nD = {D} (allocator {run['allocator']}, {run['threads']} thread per rank{over})")
    print(f"{'n':>8s} {'ρ':>6s} {'msg/dense':>9s} {'gather ms':>10s} {'dense ms':>9s} {'gather/dense':>12s}")
    for r in run["rows"]:
        print(f"{r['n']:8d} {r['density']:6.3f} {r['byte_ratio']:9.4f} {r['gather_ms']:10.3f} {r['dense_ms']:9.3f} "
              f"{r['gather_over_dense']:12.2f}")
    run["crossover"] = {}
    for n in dict.fromkeys(r["n"] for r in run["rows"]):
        c = crossover([r for r in run["rows"] if r["n"] == n])
        run["crossover"][str(n)] = c
        largest = "none" if c["largest_faster"] is None else f"{c['largest_faster']:.4f}"
        inter = "" if c["interpolated"] is None else f", interpolated crossover at {c['interpolated']:.3f}"
        print(f"  crossover D={D} n={n}: gather faster up to byte ratio {largest}{inter}"
              + (f" ({c['note']})" if c["note"] else ""))


def launch(D: int, malloc: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One ``mpiexec -n D`` job of :func:`worker`; ``malloc`` sets ``OCNET_MALLOC`` there."""
    out = tmp / f"d{D}-{malloc}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OCNET_MALLOC": malloc}
    cmd = [mpiexec(), "-n", str(D), sys.executable, "-m", "mpi4py", __file__, "--worker", "--sizes", args.sizes,
           "--densities", args.densities, "--repeats", str(args.repeats), "--out", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", default="2,4", help="data groups D, one mpiexec job each")
    ap.add_argument("--sizes", default="1e4,1e5,1e6", help="total float32 entries n (about)")
    ap.add_argument("--densities", default="0.001,0.01,0.03,0.1,0.2,0.3,0.5", help="share ρ of each tensor sent")
    ap.add_argument("--repeats", type=int, default=41, help="timed calls per point (after 3 warm-ups)")
    ap.add_argument("--allocators", default="tuned,default",
                    help="OCNET_MALLOC of the jobs, each a job per D (the first is the headline)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if allocator() == "tuned":
        tune_malloc()
    torch.set_num_threads(1)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    densities = [float(d) for d in args.densities.split(",")]
    if args.worker or under_mpiexec():
        t0 = time.perf_counter()
        run = worker(sizes, densities, args.repeats)
        if run is None:
            return
        if args.worker:
            Path(args.out).write_text(json.dumps(run))
            return
        report(run)
        write("bench_exchange", {"sizes": sizes, "densities": densities, "repeats": args.repeats,
                                 "warmup": WARMUP, "runs": [run], "seconds": time.perf_counter() - t0}, args.out)
        return

    t0 = time.perf_counter()
    groups, mallocs = [int(d) for d in args.groups.split(",")], args.allocators.split(",")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for malloc in mallocs:
            for D in groups:
                runs.append(launch(D, malloc, args, Path(tmp)))
                report(runs[-1])
    print("\ncrossover byte ratio (largest measured with gather faster / interpolated / first measured with gather "
          "slower), by allocator, D and n:")
    for run in runs:
        for n, c in run["crossover"].items():
            largest = "-" if c["largest_faster"] is None else f"{c['largest_faster']:.4f}"
            inter = "-" if c["interpolated"] is None else f"{c['interpolated']:.3f}"
            slower = "-" if c["first_slower"] is None else f"{c['first_slower']:.4f}"
            print(f"  {run['allocator']:7s} D={run['groups']} n={n:>7s}: {largest:>7s} / {inter:>6s} / {slower:>7s}"
                  + (" (oversubscribed)" if run["oversubscribed"] else ""))
    print(f"gather_below now: {GradientAverage.gather_below}")
    seconds = time.perf_counter() - t0
    print(f"\nthis run took {seconds:.0f} s")
    write("bench_exchange", {"sizes": sizes, "densities": densities, "repeats": args.repeats, "warmup": WARMUP,
                             "layers": LAYERS, "gather_below": GradientAverage.gather_below, "runs": runs,
                             "seconds": seconds}, args.out)


if __name__ == "__main__":
    main()

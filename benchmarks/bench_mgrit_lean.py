"""The lean MGRIT training step against plain PyTorch, and its accuracy at cheap settings.

    OCNET_MALLOC=tuned python benchmarks/bench_mgrit_lean.py                       # P = 1
    OCNET_MALLOC=tuned mpiexec -n 2 python -m mpi4py benchmarks/bench_mgrit_lean.py --part b

The network: ``build((3, 32, 32), 10, net="conv", layers=N, channels=[16], T=2)``, batch 32,
synthetic data, one thread per rank.  "Plain PyTorch" is the exported module
(:meth:`~ocnet.model.problem.Problem.to_torch`) forward and backward on the same batch; the MGRIT
step is one optimiser step of the ``mgrit`` solver (SGD with rate 0, so that every repeat
sees the same parameters; one-shot mode, no warm start).  Times are medians of interleaved
repeats, measured side by side in one process (on P = 2 the plain step runs on rank 0 while
rank 1 waits).

(a) one level (the exact sequential sweep), N = 32 and 64: time / plain;
(b) N = 32 and 64 at torchbraid's settings — 3 levels, c = 4, FCF on the coarse levels and F on the
    fine one, skip, XBraid's ``max_iter = 2`` (the skip cycle and one correction: ocnet's
    ``mgrit_iters = 1`` with ``mgrit_skip``, see docs/mgrit.rst), the final FC-relaxation
    torchbraid asks for (``mgrit_final_fc``) — and FCF everywhere without
    skip for two and one corrections (N = 32): step evaluations (forward and adjoint, all ranks), layer
    forward evaluations (forward steps, and adjoint steps that re-run a layer: the count that
    torchbraid's 148 is) and time / plain, storage graph and states;
(r) torchbraid's settings at N = 32 and 64, ``graph`` storage: the plain step and the MGRIT
    step without and with ``mgrit_reuse`` interleaved in each repeat, layer forwards and
    time / plain of each (``--part r``; not in the default ``abc``);
(w) where the time of the step at torchbraid's settings goes, N = 32 and 64: the plain step's
    forward and backward, the MGRIT step's spans by kind (rank 0's layer steps and time) and
    the time between spans, interleaved in each repeat (``--part w``; not in the default ``abc``);
(c) relative errors of u_N and of the gradient against the exact ones, for (b)'s settings and
    cheaper ones; the fastest with errors within torchbraid's (4.6 %, 2 %).
Figures go to stdout and to benchmarks/results/bench_mgrit_lean[_pP].json (or --out).
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

from common import allocator, tune_malloc, write  # noqa: E402

from ocnet.mgrit import solve  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks import timeline  # noqa: E402
from ocnet.ranks.comm import world  # noqa: E402
from ocnet.solvers.mgrit import MGRIT  # noqa: E402

BATCH = 32
STEP_KINDS = ("forward", "forward_graph", "vjp", "vjp_recompute", "backward")
FORWARD_KINDS = ("forward", "forward_graph", "vjp_recompute")  # spans that run a layer forward


def problem(N: int):
    return build((3, 32, 32), 10, net="conv", layers=N, channels=[16], T=2.0, seed=0)


def batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 3, 32, 32, generator=gen), torch.randint(0, 10, (BATCH,), generator=gen)


def make_solver(comm, N: int, **options):
    prob = problem(N)
    cfg = {"coarsening": options.get("coarsening", 4), "mgrit_levels": options.get("mgrit_levels", 2)}
    network = prob.local(MGRIT.partition(N, comm.size, cfg), comm.rank)
    solver = MGRIT(network, comm, lambda p: torch.optim.SGD(p, lr=0.0), mgrit_mode="one_shot",
                   mgrit_warm_start="none", **options)
    return prob, network, solver


def plain_step(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()


def timed(comm, N: int, solvers: dict, repeats: int) -> tuple[dict, dict]:
    """The plain step and each of ``solvers``' MGRIT steps, interleaved in each repeat (so
    that a load that comes and goes falls on all alike): their times (rank 0's; the first
    round warms up), and each solver's layer steps by span kind in one more step (this rank's)."""
    model = problem(N).to_torch()
    x, y = batch()
    idx = torch.arange(BATCH)
    times: dict = {"plain": [], **{key: [] for key in solvers}}
    for r in range(repeats + 1):
        comm.barrier()
        if comm.rank == 0:
            t = time.perf_counter()
            plain_step(model, x, y)
            tp = time.perf_counter() - t
        for key, solver in solvers.items():
            comm.barrier()
            t = time.perf_counter()
            solver.step(x, y, idx)
            comm.barrier()
            if r > 0:
                times[key].append(time.perf_counter() - t)
        if r > 0 and comm.rank == 0:
            times["plain"].append(tp)
    counts = {}
    for key, solver in solvers.items():
        rec = timeline.Recorder()
        with timeline.recording(rec):
            solver.step(x, y, idx)
        counts[key] = rec.steps()
    return times, counts


def count(comm, steps: dict, kinds: tuple) -> int:
    """The layer steps of ``kinds`` (``steps``: by kind, this rank's), over all ranks."""
    return int(comm.allreduce(float(sum(steps.get(kind, 0) for kind in kinds))))


def compare(comm, N: int, options: dict, repeats: int) -> dict:
    """Median times of the MGRIT step and the plain step, interleaved, and the step count."""
    times, steps = timed(comm, N, {"mgrit": make_solver(comm, N, **options)[2]}, repeats)
    out = {"N": N, "options": options, "step_evals": count(comm, steps["mgrit"], STEP_KINDS),
           "forward_evals": count(comm, steps["mgrit"], FORWARD_KINDS)}
    if comm.rank == 0:
        plain, mgrit = statistics.median(times["plain"]), statistics.median(times["mgrit"])
        out.update(plain_s=plain, mgrit_s=mgrit, ratio=mgrit / plain)
    return out


def compare_reuse(comm, N: int, options: dict, repeats: int) -> dict:
    """The plain step, the MGRIT step without and with ``mgrit_reuse``, interleaved in each
    repeat: median times, the ratios to plain, and the layer forwards of each."""
    solvers = {key: make_solver(comm, N, **options, mgrit_reuse=key == "reuse")[2] for key in ("no_reuse", "reuse")}
    times, steps = timed(comm, N, solvers, repeats)
    out: dict = {"N": N, "options": options}
    for key in solvers:
        out[f"forward_evals_{key}"] = count(comm, steps[key], FORWARD_KINDS)
        if comm.rank == 0:
            out[f"ratio_{key}"] = statistics.median(times[key]) / statistics.median(times["plain"])
    if comm.rank == 0:
        out["plain_s"] = statistics.median(times["plain"])
        out["reuse_speedup"] = statistics.median(times["no_reuse"]) / statistics.median(times["reuse"])
    return out


def where(comm, N: int, options: dict, repeats: int) -> dict:
    """Where the time of a step goes: the plain step's forward and backward, and the MGRIT
    step's spans by kind (this rank's layer steps and seconds) and the time between them,
    interleaved in each repeat; medians (the first round warms up)."""
    model = problem(N).to_torch()
    solver = make_solver(comm, N, **options)[2]
    x, y = batch()
    idx = torch.arange(BATCH)
    runs: dict = {"plain_forward": [], "plain_backward": [], "mgrit": [], "between": []}
    spans: dict = {}
    for r in range(repeats + 1):
        comm.barrier()
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        comm.barrier()
        rec = timeline.Recorder()
        t3 = time.perf_counter()
        with timeline.recording(rec):
            solver.step(x, y, idx)
        wall = time.perf_counter() - t3
        if r == 0:
            continue
        runs["plain_forward"].append(t1 - t0)
        runs["plain_backward"].append(t2 - t1)
        runs["mgrit"].append(wall)
        this: dict = {}
        for kind, a, b, info in rec.events:
            steps, secs = this.get(kind, (0, 0.0))
            this[kind] = (steps + info.get("steps", 0), secs + b - a)
        runs["between"].append(wall - sum(s for _, s in this.values()))
        for kind, (steps, secs) in this.items():
            spans.setdefault(kind, (steps, []))[1].append(secs)
    out = {k: statistics.median(v) for k, v in runs.items()}
    out["spans"] = {k: {"steps": n, "s": statistics.median(v)} for k, (n, v) in spans.items()}
    return {"N": N, "options": options, **out}


def errors(comm, N: int, options: dict) -> dict:
    """Relative errors of u_N and of the gradient (all parameters) against the exact ones."""
    prob, network, solver = make_solver(comm, N, **options)
    x, y = batch()
    prob.zero_grad(set_to_none=True)
    with torch.no_grad():
        u = prob.opening(x)
        for layer in prob.layers:
            u = layer(u)
    uN_exact = u
    torch.nn.functional.cross_entropy(prob(x), y).backward()
    exact = {k: p.grad.clone() for k, p in prob.named_parameters()}
    prob.zero_grad(set_to_none=True)
    solver.step(x, y, torch.arange(BATCH))
    num = den = 0.0
    for k, p in network.named_parameters():
        g, e = p.grad, exact[network.problem_name(k)]
        num += float(((g - e) ** 2).sum())
        den += float((e ** 2).sum())
    num, den = comm.allreduce(num), comm.allreduce(den)
    with torch.no_grad():
        u0 = network.opening(x) if network.opening is not None else None
        fwd = solve(solver.prop, u0, N, comm, layout=solver.layout, tol=0.0, **solver.solve_options())
    solver.prop.release()
    err_u = 0.0
    if N in fwd.points:
        err_u = float(torch.linalg.vector_norm(fwd.at(N) - uN_exact) / torch.linalg.vector_norm(uN_exact))
    return {"options": options, "err_uN": comm.allreduce(err_u, op="max"), "err_grad": (num / den) ** 0.5}


TB = dict(mgrit_levels=3, coarsening=4, mgrit_relax="FCF")
TB_ERRORS = (0.046, 0.02)  # torchbraid's relative errors of u_N and of the gradient at its settings
TORCHBRAID = dict(TB, mgrit_fine_relax="F", mgrit_skip=True, mgrit_iters=1,  # XBraid's max_iter 2
                  mgrit_final_fc=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="abc")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out")
    args = ap.parse_args()
    tuned = tune_malloc() if allocator() == "tuned" else False
    torch.set_num_threads(1)
    comm = world()
    say = print if comm.rank == 0 else (lambda *a, **k: None)
    result: dict = {"ranks": comm.size, "allocator": allocator(), "malloc_tuned": tuned, "batch": BATCH,
                    "net": "conv, 16 channels, 32x32, T = 2, one thread per rank"}
    if "a" in args.part:
        rows = []
        for N in (32, 64):
            for storage in ("graph", "states"):
                row = compare(comm, N, dict(mgrit_levels=1, mgrit_storage=storage), args.repeats)
                rows.append(row)
                say(f"(a) N={N} 1 level {storage}: {row.get('ratio', 0):.3f}x plain "
                    f"({row.get('mgrit_s', 0) * 1e3:.1f} ms vs {row.get('plain_s', 0) * 1e3:.1f} ms)")
        result["one_level"] = rows
    if "b" in args.part:
        rows = []
        cases = [(N, TORCHBRAID) for N in (32, 64)] + [(32, dict(TB, mgrit_iters=k)) for k in (2, 1)]
        for N, base in cases:
            for storage in ("graph", "states"):
                opts = dict(base, mgrit_storage=storage)
                row = compare(comm, N, opts, args.repeats)
                rows.append(row)
                say(f"(b) N={N} {opts}: {row['step_evals']} step evals, {row['forward_evals']} layer forwards, "
                    f"{row.get('ratio', 0):.3f}x plain")
        result["torchbraid_settings"] = rows
    if "r" in args.part:
        rows = []
        for N in (32, 64):
            row = compare_reuse(comm, N, dict(TORCHBRAID, mgrit_storage="graph"), args.repeats)
            rows.append(row)
            say(f"(r) N={N} torchbraid's settings, graph: without reuse {row['forward_evals_no_reuse']} layer "
                f"forwards, {row.get('ratio_no_reuse', 0):.3f}x plain; with reuse {row['forward_evals_reuse']}, "
                f"{row.get('ratio_reuse', 0):.3f}x plain; {row.get('reuse_speedup', 0):.3f}x faster")
        result["reuse"] = rows
    if "w" in args.part:
        rows = []
        for N in (32, 64):
            row = where(comm, N, dict(TORCHBRAID, mgrit_storage="graph"), args.repeats)
            rows.append(row)
            plain = row["plain_forward"] + row["plain_backward"]
            kinds = ", ".join(f"{k} {v['steps']} steps {v['s'] * 1e3:.0f} ms" for k, v in
                              sorted(row["spans"].items(), key=lambda kv: -kv[1]["s"]))
            say(f"(w) N={N} torchbraid's settings, rank 0: plain {plain * 1e3:.0f} ms (forward "
                f"{row['plain_forward'] * 1e3:.0f}, backward {row['plain_backward'] * 1e3:.0f}); MGRIT "
                f"{row['mgrit'] * 1e3:.0f} ms ({row['mgrit'] / plain:.3f}x): {kinds}; between spans "
                f"{row['between'] * 1e3:.0f} ms ({row['between'] / row['mgrit'] * 100:.1f} %)")
        result["where"] = rows
    if "c" in args.part:
        rows = []
        T = TORCHBRAID
        grid = [T, dict(T, mgrit_final_fc=False), dict(T, mgrit_fine_relax="FCF"), dict(T, mgrit_levels=2),
                dict(T, mgrit_levels=2, coarsening=2), dict(T, mgrit_levels=2, coarsening=8, mgrit_iters=2),
                dict(T, mgrit_levels=2, mgrit_iters=2), dict(T, mgrit_iters=2), dict(T, mgrit_iters=0),
                dict(TB, mgrit_iters=2), dict(TB, mgrit_iters=1), dict(mgrit_levels=2, coarsening=8, mgrit_relax="F",
                                                                       mgrit_iters=1)]
        for opts in grid:
            row = errors(comm, 32, opts)
            row.update({k: v for k, v in compare(comm, 32, opts, args.repeats).items() if k != "options"})
            rows.append(row)
            say(f"(c) {opts}: u_N {row['err_uN'] * 100:.2f} %, gradient {row['err_grad'] * 100:.2f} %, "
                f"{row['step_evals']} step evals, {row['forward_evals']} layer forwards, "
                f"{row.get('ratio', 0):.3f}x plain")
        result["accuracy"] = rows
        within = [r for r in rows if r["err_uN"] <= TB_ERRORS[0] and r["err_grad"] <= TB_ERRORS[1]]
        if within and comm.rank == 0:
            best = min(within, key=lambda r: r["ratio"])
            result["fastest_within_torchbraids_errors"] = best
            say(f"(c) fastest within torchbraid's errors: {best['options']}, {best['ratio']:.3f}x plain")
    if comm.rank == 0:
        name = "bench_mgrit_lean" + ("" if comm.size == 1 else f"_p{comm.size}")
        write(name, result, args.out)


if __name__ == "__main__":
    main()

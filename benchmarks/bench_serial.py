"""Serial solver against plain PyTorch, and the micro-batched pipeline at P = 2 against P = 1.

    OCNET_MALLOC=tuned python benchmarks/bench_serial.py [--repeats 5] [--only-schedules] [--out FILE.json]

(it starts its own ``mpiexec`` jobs).

(a) Time per epoch of ocnet's serial solver at P = 1 against a plain PyTorch training loop
    of the exported network on the same batches and the same threads (target ratio ≤ 1.05).
(b) One training step of the pipeline at P = 2 (one thread per rank, micro-batches)
    against P = 1 with 1 thread and with all cores, and against
    ``torch.distributed.pipelining``'s 1F1B schedule on the same ranks (gloo).  Image-sized states (CIFAR shapes,
    synthetic values): on 8×8 digits Python overhead, not arithmetic, would dominate.
(c) ocnet's pipeline schedules (1F1B, zero-bubble; each as written and running one forward ahead)
    and torch's 1F1B in one job at P = 2, their
    repeats interleaved; medians and speed ratios, with the allocator tuned and as it comes.

Set ``OCNET_MALLOC=tuned`` to raise glibc's allocator thresholds for both sides.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, median_time, refuse_mpiexec, tune_malloc, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks.comm import SelfComm, world  # noqa: E402
from ocnet.ranks.pipeline import SCHEDULES  # noqa: E402
from ocnet.solvers.serial import Serial  # noqa: E402

SHAPE, CLASSES = (3, 32, 32), 10


def network(layers: int, channels: int):
    return build(SHAPE, CLASSES, net="conv", layers=layers, channels=[channels], seed=0)


def data(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)


def epoch_ratio(args) -> dict:
    """(a): ocnet serial at P = 1 against plain PyTorch, same batches, same threads."""
    x, y = data(args.batch * args.batches)
    problem = network(args.layers, args.channels)
    plain = problem.to_torch()
    solver = Serial(problem.local(Partition(problem.n_layers, 1), 0), SelfComm(),
                    lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9))
    opt = torch.optim.SGD(plain.parameters(), lr=1e-3, momentum=0.9)
    idx = torch.arange(len(y)).split(args.batch)

    def ocnet_epoch():
        for i in idx:
            solver.step(x[i], y[i], i)

    def torch_epoch():
        for i in idx:
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(plain(x[i]), y[i]).backward()
            opt.step()

    # Interleave the two so that machine noise hits both alike.
    times = {"ocnet": [], "torch": []}
    for _ in range(args.repeats):
        times["ocnet"].append(median_time(ocnet_epoch, 1)[0])
        times["torch"].append(median_time(torch_epoch, 1)[0])
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"threads": torch.get_num_threads(), "epoch_s": med, "ratio": med["ocnet"] / med["torch"],
            "times": times}


def pipeline_step(args) -> dict | None:
    """One serial-solver step on this job's ranks; rank 0 returns the median time."""
    comm = world()
    x, y = data(args.batch)
    problem = network(args.layers, args.channels)
    solver = Serial(problem.local(Partition(problem.n_layers, comm.size), comm.rank), comm,
                    lambda p: torch.optim.SGD(p, lr=1e-3), micro_batches=args.micro)

    def step():
        comm.barrier()
        solver.step(x, y, torch.arange(len(y)))
        comm.barrier()

    med, times = median_time(step, args.repeats, warmup=2)
    return {"ranks": comm.size, "threads": torch.get_num_threads(), "micro_batches": args.micro,
            "step_s": med, "times": times} if comm.rank == 0 else None


def torch_pipeline_step(args) -> dict | None:
    """The baseline: the same network and batch through ``torch.distributed.pipelining``'s
    1F1B schedule (gloo), one stage per rank."""
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    comm = world()
    dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size,
                            init_method=f"tcp://127.0.0.1:{args.port}")
    x, y = data(args.batch)
    problem = network(args.layers, args.channels)
    local = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    stage_module = torch.nn.Sequential(*[m for m in (local.opening, *local.layers, local.classifier)
                                         if m is not None])
    stage = PipelineStage(stage_module, comm.rank, comm.size, torch.device("cpu"))
    schedule = Schedule1F1B(stage, n_microbatches=args.micro,
                            loss_fn=lambda out, target: torch.nn.functional.cross_entropy(out, target))
    opt = torch.optim.SGD(stage_module.parameters(), lr=1e-3)

    def step():
        dist.barrier()
        opt.zero_grad(set_to_none=True)
        if comm.rank == 0:
            schedule.step(x)
        elif comm.rank == comm.size - 1:
            schedule.step(target=y, losses=[])
        else:
            schedule.step()
        opt.step()
        dist.barrier()

    med, times = median_time(step, args.repeats, warmup=2)
    dist.destroy_process_group()
    return {"ranks": comm.size, "threads": torch.get_num_threads(), "micro_batches": args.micro,
            "step_s": med, "times": times, "baseline": "torch.distributed.pipelining 1F1B"} \
        if comm.rank == 0 else None


def schedules_step(args) -> dict | None:
    """ocnet's pipeline schedules and ``torch.distributed.pipelining``'s 1F1B in one job, their
    repeats interleaved so that machine noise hits all alike; rank 0 returns the medians over
    about ``repeats`` steps each."""
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    comm = world()
    dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size,
                            init_method=f"tcp://127.0.0.1:{args.port}")
    x, y = data(args.batch)
    problem = network(args.layers, args.channels)
    local = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    steps = {}
    for schedule in SCHEDULES:
        for ahead in (0, 1):
            solver = Serial(local, comm, lambda p: torch.optim.SGD(p, lr=1e-3), micro_batches=args.micro,
                            pipeline=schedule, ahead=ahead)
            name = f"ocnet_{schedule}_ahead{ahead}"
            steps[name] = lambda solver=solver: solver.step(x, y, torch.arange(len(y)))
    stage_module = torch.nn.Sequential(*[m for m in (local.opening, *local.layers, local.classifier)
                                         if m is not None])
    stage = PipelineStage(stage_module, comm.rank, comm.size, torch.device("cpu"))
    torch_schedule = Schedule1F1B(stage, n_microbatches=args.micro,
                                  loss_fn=lambda out, target: torch.nn.functional.cross_entropy(out, target))
    opt = torch.optim.SGD(stage_module.parameters(), lr=1e-3)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        if comm.rank == 0:
            torch_schedule.step(x)
        elif comm.rank == comm.size - 1:
            torch_schedule.step(target=y, losses=[])
        else:
            torch_schedule.step()
        opt.step()

    steps["torch_1f1b"] = torch_step
    # Rounds: each contender runs three steps in a row and the last two count, so that each
    # is timed in its own steady state (its allocator pattern) while noise still hits all.
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(args.repeats // 2 + 1):
        for name, fn in steps.items():
            for j in range(3):
                dist.barrier()
                comm.barrier()
                t = time.perf_counter()
                fn()
                comm.barrier()
                if i > 0 and j > 0:  # round 0 warms up
                    times[name].append(time.perf_counter() - t)
    dist.destroy_process_group()
    if comm.rank != 0:
        return None
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ranks": comm.size, "threads": torch.get_num_threads(), "micro_batches": args.micro,
            "step_s": med, "times": times,
            "speed_vs_torch_1f1b": {k: med["torch_1f1b"] / v for k, v in med.items()}}


def launch(ranks: int, threads: int, micro: int, args, baseline: bool = False, compare: bool = False,
           malloc: str | None = None) -> dict:
    """Run :func:`pipeline_step` (the torch baseline; with ``compare``, :func:`schedules_step`)
    in a fresh job of ``ranks`` processes; ``malloc`` overrides ``OCNET_MALLOC`` there."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    kind = ("torch" if baseline else "") + ("compare" if compare else "") + (malloc or "")
    out = Path(args.tmp) / f"p{ranks}t{threads}m{micro}{kind}.json"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker",
           *(["--torch-baseline"] if baseline else []),
           "--threads", str(threads), "--micro", str(micro), "--layers", str(args.layers),
           "--channels", str(args.channels), "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--out", str(out)]
    if compare:
        cmd.insert(cmd.index("--worker") + 1, "--compare")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if malloc is not None:
        env["OCNET_MALLOC"] = malloc
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=4, help="batches per epoch in (a)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--only-schedules", action="store_true", help="run (c) only")
    ap.add_argument("--port", type=int, default=29517, help="TCP port of the torch baseline's gloo group")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if os.environ.get("OCNET_MALLOC") == "tuned":
        tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        result = (schedules_step(args) if args.compare else
                  torch_pipeline_step(args) if args.torch_baseline else pipeline_step(args))
        if result is not None:
            Path(args.out).write_text(json.dumps(result))
        return

    refuse_mpiexec("bench_serial.py")
    schedules = {m: launch(2, 1, args.micro, args, compare=True, malloc=m) for m in ("tuned", "default")}
    for m, c in schedules.items():
        print(f"(c) P=2, {args.micro} micro-batches, allocator {m}: " + ", ".join(
            f"{k} {c['step_s'][k] * 1e3:.1f} ms ({c['speed_vs_torch_1f1b'][k]:.3f}x torch 1F1B)" for k in c["step_s"]))
    if args.only_schedules:
        write("bench_serial_schedules", {"layers": args.layers, "channels": args.channels, "batch": args.batch,
                                         "shape": SHAPE, "schedules": schedules}, args.out)
        return
    cores = len(os.sched_getaffinity(0))
    a = epoch_ratio(args)
    print(f"(a) serial P=1 vs plain torch, {a['threads']} threads: epoch {a['epoch_s']['ocnet']:.3f} s vs "
          f"{a['epoch_s']['torch']:.3f} s, ratio {a['ratio']:.3f} (target <= 1.05)")
    runs = {"P1_1thread": launch(1, 1, 1, args), f"P1_{cores}threads": launch(1, cores, 1, args),
            "P2_1thread_1micro": launch(2, 1, 1, args), f"P2_1thread_{args.micro}micro": launch(2, 1, args.micro, args),
            f"P2_torch_pipelining_{args.micro}micro": launch(2, 1, args.micro, args, baseline=True)}
    base = runs[f"P1_{cores}threads"]["step_s"]
    for name, r in runs.items():
        print(f"(b) {name:>20}: step {r['step_s'] * 1e3:7.1f} ms, speed vs P=1 with {cores} threads "
              f"{base / r['step_s']:.2f}x")
    write("bench_serial", {"allocator": allocator(), "layers": args.layers, "channels": args.channels,
                           "batch": args.batch, "shape": SHAPE, "epoch_vs_torch": a, "pipeline": runs,
                           "speed_vs_best_P1": {k: base / r["step_s"] for k, r in runs.items()},
                           "schedules": schedules}, args.out)


if __name__ == "__main__":
    main()

"""The cost of recording timelines: training-step time with recording on against off.

    OCNET_MALLOC=tuned python benchmarks/bench_timeline.py [--repeats 11] [--steps 4] [--out FILE.json]

Each case runs under ``mpiexec`` with one thread per rank; inside one process, blocks of
``--steps`` training steps (more where a block would last under 0.25 s) alternate between
recording (every step in a window, as a run records the steps of its window) and not
recording, in alternating order, ``--repeats`` times;
the figure is the ratio of the medians of the block times (rank 0's clock, barrier to
barrier).  Cases:

* ``digits``: the default run (serial solver, dense, 16 layers, width 32, batch 64), P = 2;
* ``digits-penalty``: the same network trained by the penalty solver, P = 2;
* ``conv``: image-sized steps (16 conv layers, 16 channels, 32×32 synthetic CIFAR shapes,
  batch 64, serial with 4 micro-batches), P = 2;
* ``digits`` and ``conv`` at P = 8, oversubscribed on a machine with fewer cores.

Target: at most 2 % slower while recording.  On a shared machine the step times swing by
several per cent between blocks; the script also measures what one recorded event costs
(a span, a wait's fast path; recording and not) and prints the overhead that cost implies
for each case's events per step.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, tune_malloc, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks import timeline  # noqa: E402
from ocnet.ranks.comm import world  # noqa: E402
from ocnet.runs.job import make_optimizer_factory, setup  # noqa: E402
from ocnet.solvers.serial import Serial  # noqa: E402

CASES = [("digits", 2), ("digits-penalty", 2), ("conv", 2), ("digits", 8), ("conv", 8)]


def _solver(case: str, comm):
    """``(solver, x, y, index)`` of one case on this rank."""
    if case.startswith("digits"):
        flags = ["--quiet", "--threads", "1", "--out", tempfile.mkdtemp(prefix="bench-timeline-")]
        s = setup(flags + (["--solver", "penalty"] if case == "digits-penalty" else []), comm)
        data = s["data"].to(s["device"], s["dtype"])
        s["solver"].begin_epoch(0, data.x_train, data.y_train)  # the penalty's auxiliary states
        return s["solver"], data.x_train[:64], data.y_train[:64], torch.arange(64)
    shape = (3, 32, 32)
    problem = build(shape, 10, net="conv", layers=16, channels=[16], seed=0)
    network = problem.local(Partition(16, comm.size), comm.rank)
    config = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
    solver = Serial(network, comm, make_optimizer_factory(config), micro_batches=4)
    gen = torch.Generator().manual_seed(0)
    return solver, torch.randn(64, *shape, generator=gen), torch.randint(0, 10, (64,), generator=gen), torch.arange(64)


def worker(case: str, repeats: int, steps: int) -> None:
    torch.set_num_threads(1)
    comm = world()
    solver, x, y, index = _solver(case, comm)
    log = timeline.Log(tempfile.mkdtemp(prefix="bench-timeline-"), comm.rank, comm.size, 10**9, job=0.0)
    log.align(comm.barrier)
    times: dict[str, list[float]] = {"off": [], "on": []}
    n = 0

    def block(on: bool) -> float:
        nonlocal n
        comm.barrier()
        t = time.perf_counter()
        for _ in range(steps):
            n += 1
            if on:
                with log.step(0, n):
                    solver.step(x, y, index)
            else:
                solver.step(x, y, index)
        comm.barrier()
        return time.perf_counter() - t

    block(False), block(True)  # warm-up
    # blocks of at least a quarter of a second: shorter ones measure the scheduler, not the step
    steps = comm.bcast(max(steps, math.ceil(0.25 * steps / block(False))))
    for r in range(repeats):
        for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
            times[mode].append(block(mode == "on") / steps)
    events = log.n_events / max(1, sum(1 for _ in log.windows))
    if comm.rank == 0:
        off, on = statistics.median(times["off"]), statistics.median(times["on"])
        print(json.dumps({"case": case, "ranks": comm.size, "steps_per_block": steps, "step_off_s": off,
                          "step_on_s": on,
                          "overhead": on / off - 1, "events_per_step_rank0": events,
                          "times": times}), flush=True)


def event_cost(n: int = 200_000) -> dict[str, float]:
    """Seconds per span and per wait's fast path, recording and not (medians of 5): the cost
    that the step times above are too noisy to resolve on a shared machine."""
    from ocnet.ranks.comm import _wait
    from ocnet.ranks.watchdog import Progress
    progress, ready = Progress(), (lambda: True)

    def spans() -> None:
        for _ in range(n):
            with timeline.span("forward", steps=1):
                pass

    def waits() -> None:
        for _ in range(n):
            _wait(ready, progress, ("recv", 1, 0))

    out = {}
    for name, fn in (("span", spans), ("wait", waits)):
        for on in (False, True):
            times = []
            for _ in range(5):
                rec = timeline.Recorder()
                t = time.perf_counter()
                if on:
                    with timeline.recording(rec):
                        fn()
                else:
                    fn()
                times.append((time.perf_counter() - t) / n)
            out[f"{name}_{'on' if on else 'off'}_s"] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--steps", type=int, default=4, help="training steps per timed block (at least; more "
                    "where a block would last under 0.25 s)")
    ap.add_argument("--cases", default=",".join(f"{c}:{p}" for c, p in CASES),
                    help="CASE:RANKS, comma-separated")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if allocator() == "tuned":
        tune_malloc()
    if args.worker:
        worker(args.worker, args.repeats, args.steps)
        return
    cores = os.cpu_count() or 1
    cost = event_cost()
    per_event = max(cost["span_on_s"] - cost["span_off_s"], cost["wait_on_s"] - cost["wait_off_s"])
    print("per event: span {span_off_s:.2e} s off, {span_on_s:.2e} s recording; wait (fast path) "
          "{wait_off_s:.2e} s off, {wait_on_s:.2e} s recording".format(**cost), flush=True)
    results = []
    for item in args.cases.split(","):
        case, ranks = item.split(":")
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", ranks, sys.executable, "-m", "mpi4py", __file__,
               "--worker", case, "--repeats", str(args.repeats), "--steps", str(args.steps)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["oversubscribed"] = int(ranks) > cores
        results.append(result)
        result["modelled_overhead"] = result["events_per_step_rank0"] * per_event / result["step_off_s"]
        flag = " (oversubscribed)" if result["oversubscribed"] else ""
        print(f"{case:15s} P={ranks}{flag}: step {1e3 * result['step_off_s']:8.2f} ms off, "
              f"{1e3 * result['step_on_s']:8.2f} ms recording, overhead {100 * result['overhead']:+.1f} % "
              f"({result['events_per_step_rank0']:.0f} events per step on rank 0: "
              f"{100 * result['modelled_overhead']:.3f} % by the cost per event)", flush=True)
    write("bench_timeline", {"allocator": allocator(), "repeats": args.repeats, "steps": args.steps,
                             "event_cost": cost, "results": results}, args.out)


if __name__ == "__main__":
    main()

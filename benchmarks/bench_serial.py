"""Serial solver against plain PyTorch, and the micro-batched pipeline at P = 2 against P = 1.

    [OCNET_MALLOC=tuned] python benchmarks/bench_serial.py [--repeats 5] [--only-schedules] [--ranks 2]
        [--micro 8] [--out FILE.json]

(it starts its own ``mpiexec`` jobs).

(a) Time per epoch of ocnet's serial solver at P = 1 against a plain PyTorch training loop
    of the exported network on the same batches and the same threads (target ratio ≤ 1.05).
(b) One training step of the pipeline at P = 2 (one thread per rank, micro-batches)
    against P = 1 with 1 thread and with all cores, and against
    ``torch.distributed.pipelining``'s 1F1B schedule on the same ranks (gloo).  Image-sized states (CIFAR shapes,
    synthetic values): on 8×8 digits Python overhead, not arithmetic, would dominate.
(c) ocnet's pipeline schedules (1F1B, zero-bubble, each as written and running one forward ahead;
    interleaved 1F1B and the V on two stages per rank, as written) and every schedule of
    ``torch.distributed.pipelining`` (:data:`TORCH_SCHEDULES`; the
    multi-stage ones with two stages per rank) in one job at P = ``--ranks`` (2), on the same
    network, batch and ranks, their repeats interleaved; one table of medians and speeds
    against torch's best, with glibc's allocator as it comes and as ``OCNET_MALLOC=tuned``
    sets it, both sides alike, and across the two jobs ocnet's best tuned (as its ranks run by
    default) against torch's best under glibc's thresholds (as a torch script runs).  Each
    contender's loss and gradient are checked against a
    plain forward and backward first; a torch schedule that cannot run is listed with the reason.
    The bound: the same micro-batches forward and backward on one rank (plain torch), divided
    by the ranks; each schedule's fraction of it is its ``efficiency``.  The concurrent bound:
    every rank its own stage's forwards and backwards at the same time, no bubble and no
    messages (:func:`concurrent_stages`), which charges what the ranks' sharing of one machine
    costs: a schedule's work without its bubble and its messages.

Both sides of (a) and (b) run under the allocator setting ocnet's runs take (``--malloc auto``: glibc's
thresholds raised unless ``OCNET_MALLOC=glibc``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import allocator, median_time, mpiexec, refuse_mpiexec, tune_malloc, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from ocnet.model.grid import Partition  # noqa: E402
from ocnet.model.problem import build  # noqa: E402
from ocnet.ranks.comm import SelfComm, world  # noqa: E402
from ocnet.ranks.pipeline import SCHEDULES, VIRTUAL  # noqa: E402
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


#: ``torch.distributed.pipelining``'s schedules by class name: how many stages each rank holds
#: and where stage ``s`` of ``S`` lives ("loop": on rank ``s % P``; "v": on ranks ``0 … P-1``
#: and back, so that rank ``r`` holds stages ``r`` and ``2P-1-r``).  A ``Schedule*`` class of
#: torch that is not here is listed as not run, with that reason.
TORCH_SCHEDULES: dict[str, tuple[int, str]] = {
    "ScheduleGPipe": (1, "loop"), "Schedule1F1B": (1, "loop"), "ScheduleInterleaved1F1B": (2, "loop"),
    "ScheduleLoopedBFS": (2, "loop"), "ScheduleInterleavedZeroBubble": (2, "loop"),
    "ScheduleZBVZeroBubble": (2, "v"), "ScheduleDualPipeV": (2, "v"),
}


def stage_indices(rank: int, ranks: int, per_rank: int, placement: str) -> list[int]:
    """The stages (of ``per_rank * ranks``) that ``rank`` holds, in increasing order."""
    if placement == "v":
        return sorted({rank, 2 * ranks - 1 - rank}) if per_rank == 2 else [rank]
    return [rank + k * ranks for k in range(per_rank)]


def stage_module(problem, stages: int, index: int) -> torch.nn.Sequential:
    """Stage ``index`` of the network cut into ``stages`` contiguous slices (sharing its parameters)."""
    local = problem.local(Partition(problem.n_layers, stages), index)
    return torch.nn.Sequential(*[m for m in (local.opening, *local.layers, local.classifier) if m is not None])


def cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(out, target)


def torch_schedules(comm, problem, x, y, micro: int) -> tuple[dict, dict]:
    """Every ``Schedule*`` class of ``torch.distributed.pipelining`` on this job's ranks (gloo):
    ``({name: (step, gradient)}, {name: why it does not run})``; ``gradient()`` runs one
    step without the update and returns the mean loss (on the rank that holds the last
    stage, else ``None``).  Construction errors are the same on every rank."""
    import torch.distributed.pipelining.schedules as schedules
    from torch.distributed.pipelining import PipelineStage

    found = sorted(n for n in dir(schedules) if n.startswith("Schedule") and isinstance(getattr(schedules, n), type))
    runs, not_run = {}, {}
    for cls_name in [*TORCH_SCHEDULES, *(n for n in found if n not in TORCH_SCHEDULES)]:
        name = "torch_" + cls_name.removeprefix("Schedule")
        if cls_name not in found:
            not_run[name] = f"not in torch {torch.__version__}"
            continue
        if cls_name not in TORCH_SCHEDULES:
            not_run[name] = "its placement of stages on ranks is not known to this benchmark"
            continue
        per_rank, placement = TORCH_SCHEDULES[cls_name]
        n_stages = per_rank * comm.size
        indices = stage_indices(comm.rank, comm.size, per_rank, placement)
        try:
            modules = [stage_module(problem, n_stages, s) for s in indices]
            stages = [PipelineStage(m, s, n_stages, torch.device("cpu")) for m, s in zip(modules, indices)]
            cls = getattr(schedules, cls_name)
            schedule = cls(stages[0] if per_rank == 1 else stages, n_microbatches=micro, loss_fn=cross_entropy)
        except Exception as e:  # noqa: BLE001 - the reason is the result
            not_run[name] = f"{type(e).__name__}: {e}"
            continue
        opt = torch.optim.SGD([p for m in modules for p in m.parameters()], lr=1e-3)
        first, last = 0 in indices, n_stages - 1 in indices

        def gradient(schedule=schedule, opt=opt, first=first, last=last):
            opt.zero_grad(set_to_none=True)
            losses: list[torch.Tensor] = []
            schedule.step(*((x,) if first else ()), **({"target": y, "losses": losses} if last else {}))
            return torch.stack(losses).mean().item() if last else None

        def step(gradient=gradient, opt=opt):
            gradient()
            opt.step()

        runs[name] = (step, gradient)
    return runs, not_run


def same_network(comm, problem, x, y, micro: int, contenders: dict) -> dict:
    """One gradient of each contender against a plain forward and backward of the whole
    network on every rank (the mean of the micro-batches' mean losses): the relative
    differences of the loss and of the whole gradient (2-norm over all ranks' parameters;
    a bias before a normalisation has a gradient of rounding errors only) (``checks``), and the contenders
    that raised, with the reason (``failed``).  No update is applied."""
    params = list(problem.parameters())
    plain = torch.nn.Sequential(problem.opening, *problem.layers, problem.classifier)
    problem.zero_grad(set_to_none=True)
    loss = torch.stack([cross_entropy(plain(a), b) for a, b in zip(x.tensor_split(micro), y.tensor_split(micro))])
    loss.mean().backward()
    reference, ref_loss = [p.grad.clone() for p in params], loss.mean().item()
    norm2 = sum((g ** 2).sum().item() for g in reference)
    checks, failed = {}, {}
    for name, gradient in contenders.items():
        problem.zero_grad(set_to_none=True)
        try:
            found, why = gradient(), None
        except Exception as e:  # noqa: BLE001 - a rank whose peer raised times out in its receive
            found, why = None, f"{type(e).__name__}: {e}"
        # only the gradients this rank computed (the others stay None here); every parameter's
        # must have been computed on some rank
        held = [i for i, p in enumerate(params) if p.grad is not None]
        error = sum(((params[i].grad - reference[i]) ** 2).sum().item() for i in held)
        gathered = comm.gather((None if found is None else float(found), why, error, held))
        result = None
        if comm.rank == 0:
            whys = [w for _, w, _, _ in gathered if w is not None]
            losses = [v for v, _, _, _ in gathered if v is not None]
            missing = len(params) - len({i for *_, h in gathered for i in h})
            if not whys and (not losses or missing):
                whys = [f"no loss, or no gradient for {missing} of {len(params)} parameters"]
            result = {"failed": whys[0]} if whys else {
                "loss": losses[0], "loss_error": abs(losses[0] - ref_loss) / abs(ref_loss),
                "grad_error": (sum(e for _, _, e, _ in gathered) / norm2) ** 0.5}
        result = comm.bcast(result)
        if "failed" in result:
            failed[name] = result["failed"]
        else:
            checks[name] = result
    problem.zero_grad(set_to_none=True)
    return {"reference_loss": ref_loss, "checks": checks, "failed": failed}


def concurrent_stages(comm, problem, x, y, micro: int):
    """The step a schedule on this partition would take without bubble or messages, where
    the ranks share a machine: every rank runs its own stage (:func:`stage_module`, the
    ranks' contiguous slices) forward and backward on all ``micro`` micro-batches at the
    same time as the others.  The inputs of a stage are the previous stages' outputs, computed
    once here; a stage before the last back-propagates a fixed output gradient.  Timed
    between barriers, its time is the slowest rank's, so it charges the stages' imbalance
    and the ranks' sharing of cores and memory bandwidth, which one rank's loop halved does not."""
    stages = [stage_module(problem, comm.size, s) for s in range(comm.rank + 1)]
    stage, last = stages[-1], comm.rank == comm.size - 1
    inputs, targets = list(x.tensor_split(micro)), y.tensor_split(micro)
    gen = torch.Generator().manual_seed(comm.rank)
    with torch.no_grad():
        for earlier in stages[:-1]:
            inputs = [earlier(h) for h in inputs]
        grads = None if last else [torch.randn(stage(h).shape, generator=gen) for h in inputs]

    def step() -> None:
        stage.zero_grad(set_to_none=True)
        for k, h in enumerate(inputs):
            h = h.requires_grad_(comm.rank > 0)  # a later stage sends its input's gradient back
            out = stage(h)
            if last:
                (cross_entropy(out, targets[k]) / micro).backward()
            else:
                out.backward(grads[k])

    return step


def schedules_step(args) -> dict | None:
    """ocnet's pipeline schedules and every schedule of ``torch.distributed.pipelining`` in one
    job, on the same network, batch and ranks, their repeats interleaved so that machine noise
    hits all alike; rank 0 returns the medians over about ``repeats`` steps each, the check
    that each computes the same loss and gradient, and why a torch schedule did not run."""
    import torch.distributed as dist

    comm = world()
    dist.init_process_group("gloo", rank=comm.rank, world_size=comm.size,
                            init_method=f"tcp://127.0.0.1:{args.port}", timeout=timedelta(seconds=args.gloo_timeout))
    x, y = data(args.batch)
    problem = network(args.layers, args.channels)
    local = problem.local(Partition(problem.n_layers, comm.size), comm.rank)
    index = torch.arange(len(y))
    steps, gradients = {}, {}
    for schedule in SCHEDULES:
        for ahead in (0, 1):
            solver = Serial(local, comm, lambda p: torch.optim.SGD(p, lr=1e-3), micro_batches=args.micro,
                            pipeline=schedule, ahead=ahead)
            name = f"ocnet_{schedule}_ahead{ahead}"
            steps[name] = lambda solver=solver: solver.step(x, y, index)
            gradients[name] = lambda solver=solver: solver.gradient(x, y, index).get("loss")
    for schedule in VIRTUAL:  # two stages per rank, as torch's multi-stage schedules hold
        config = {"pipeline": schedule, "virtual_stages": 2}
        chunks = problem.local(Serial.partition(problem.n_layers, comm.size, config), comm.rank)
        solver = Serial(chunks, comm, lambda p: torch.optim.SGD(p, lr=1e-3), micro_batches=args.micro, **config)
        name = f"ocnet_{schedule}"
        steps[name] = lambda solver=solver: solver.step(x, y, index)
        gradients[name] = lambda solver=solver: solver.gradient(x, y, index).get("loss")
    runs, not_run = torch_schedules(comm, problem, x, y, args.micro)
    for name, (step, gradient) in runs.items():
        steps[name], gradients[name] = step, gradient
    check = same_network(comm, problem, x, y, args.micro, gradients)
    for name, why in check.pop("failed").items():
        not_run[name] = why
        del steps[name]
    # The bound no schedule can beat: the same micro-batches' forwards and backwards on one
    # rank (plain torch, gradients accumulated), divided by the ranks.  Rank 0 runs it in the
    # rounds below while the other ranks wait.
    model = problem.to_torch()

    def one_rank() -> None:
        if comm.rank == 0:
            model.zero_grad(set_to_none=True)
            for xb, yb in zip(x.chunk(args.micro), y.chunk(args.micro)):
                (torch.nn.functional.cross_entropy(model(xb), yb) / args.micro).backward()

    steps[ONE_RANK] = one_rank
    steps[CONCURRENT] = concurrent_stages(comm, problem, x, y, args.micro)
    # Rounds: each contender runs three steps in a row and the last two count, so that each
    # is timed in its own steady state (its allocator pattern) while noise still hits all; the
    # order turns round every round, so that a load that changes within one hits all alike.
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(max(2, args.repeats // 2 + 1)):  # round 0 warms up
        for name, fn in (list(steps.items()) if i % 2 else list(steps.items())[::-1]):
            for j in range(3):
                dist.barrier()
                comm.barrier()
                t = time.perf_counter()
                fn()
                comm.barrier()
                if i > 0 and j > 0:
                    times[name].append(time.perf_counter() - t)
    dist.destroy_process_group()
    if comm.rank != 0:
        return None
    bound = statistics.median(times.pop(ONE_RANK)) / comm.size
    concurrent = statistics.median(times.pop(CONCURRENT))
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_best = min((k for k in med if k.startswith("torch_")), key=med.__getitem__, default=None)
    ocnet_best = min((k for k in med if k.startswith("ocnet_")), key=med.__getitem__)
    return {"ranks": comm.size, "threads": torch.get_num_threads(), "micro_batches": args.micro,
            "step_s": med, "times": times, "not_run": not_run, **check, "bound_s": bound,
            "concurrent_s": concurrent,
            "efficiency": {k: bound / v for k, v in med.items()},
            "torch_best": torch_best, "ocnet_best": ocnet_best,
            "speed_vs_torch_best": {k: med[torch_best] / v for k, v in med.items()} if torch_best else {},
            "ocnet_best_vs_torch_best": med[torch_best] / med[ocnet_best] if torch_best else None}


#: (c)'s one-rank step: every micro-batch forward and backward in turn, plain torch.
ONE_RANK = "one_rank"
#: (c)'s concurrent stages: every rank its stage's forwards and backwards at once, no messages.
CONCURRENT = "concurrent_stages"
#: The allocators (c) runs under: glibc's own thresholds (``OCNET_MALLOC=default``), and ``OCNET_MALLOC=tuned``'s.
ALLOCATORS = ("default", "tuned")
#: Largest relative differences from a plain forward and backward counted as the same network
#: (float32 sums in another order).
SAME_LOSS, SAME_GRAD = 1e-5, 1e-5


def table(schedules: dict, ranks: int, micro: int) -> str:
    """(c) as one table: each contender's median step and its speed against torch's best per
    allocator, the headline ratio, the torch schedules that did not run and why, and how far
    each contender's loss and gradient are from a plain forward and backward."""
    names = list(dict.fromkeys(k for c in schedules.values() for k in c["step_s"]))
    width = max(map(len, names)) + 2
    lines = [f"(c) P={ranks}, {micro} micro-batches, one thread per rank: median step and speed against "
             "torch's best (>= 1: faster)",
             f"{'schedule':<{width}}" + "".join(f"{'allocator ' + m:>26}" for m in schedules)]
    for name in names:
        cells = [f"{c['step_s'][name] * 1e3:.0f} ms ({c['speed_vs_torch_best'].get(name, float('nan')):.3f}x)"
                 if name in c["step_s"] else "-" for c in schedules.values()]
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>26}" for cell in cells))
    for m, c in schedules.items():
        if c["torch_best"] is None:
            lines.append(f"ocnet best / torch best, allocator {m}: no torch schedule ran")
            continue
        lines.append(f"ocnet best / torch best, allocator {m}: {c['ocnet_best_vs_torch_best']:.3f}x "
                     f"({c['ocnet_best']} against {c['torch_best']}; load {c['load_before'][0]:.2f} before, "
                     f"{c['load_after'][0]:.2f} after)")
    defaults = as_run_by_default(schedules)
    if defaults is not None:
        lines.append(f"as each runs by default (ocnet's ranks tuned, a torch script with glibc's thresholds): "
                     f"ocnet best / torch best {defaults:.3f}x, across the two jobs, not side by side")
    for m, c in schedules.items():
        best = max(c["efficiency"].values())
        lines.append(f"allocator {m}: one rank takes {c['bound_s'] * ranks * 1e3:.0f} ms for the same micro-batches, "
                     f"so no schedule on {ranks} ranks beats {c['bound_s'] * 1e3:.0f} ms; the best reaches "
                     f"{best:.3f} of that bound, and torch's best {c['efficiency'].get(c['torch_best'], 0):.3f}")
        if "concurrent_s" in c and c["torch_best"] is not None:
            lines.append(f"allocator {m}: the ranks' stages computed at once, no bubble, no messages: "
                         f"{c['concurrent_s'] * 1e3:.0f} ms ({c['bound_s'] / c['concurrent_s']:.3f} of the bound), "
                         f"a schedule that fast would be {c['step_s'][c['torch_best']] / c['concurrent_s']:.3f}x "
                         "torch's best")
    for name, why in {k: v for c in schedules.values() for k, v in c["not_run"].items()}.items():
        lines.append(f"not run: {name}: {why}")
    checks = [ch for c in schedules.values() for ch in c["checks"].values()]
    lines.append(f"same network: loss within {max(ch['loss_error'] for ch in checks):.1e}, gradient within "
                 f"{max(ch['grad_error'] for ch in checks):.1e} (relative) of a plain forward and backward")
    for m, c in schedules.items():
        for name, ch in c["checks"].items():
            if ch["loss_error"] > SAME_LOSS or ch["grad_error"] > SAME_GRAD:
                lines.append(f"DIFFERS, allocator {m}: {name}: loss {ch['loss_error']:.1e}, "
                             f"gradient {ch['grad_error']:.1e}")
    return "\n".join(lines)


def as_run_by_default(schedules: dict) -> float | None:
    """ocnet's best under the allocator its ranks take by default (``tuned``) against torch's
    best under glibc's own thresholds, which a torch script keeps: from two jobs, so the
    load of each falls on one side only."""
    tuned, default = schedules.get("tuned"), schedules.get("default")
    if tuned is None or default is None or default["torch_best"] is None:
        return None
    return default["step_s"][default["torch_best"]] / tuned["step_s"][tuned["ocnet_best"]]


def launch(ranks: int, threads: int, micro: int, args, baseline: bool = False, compare: bool = False,
           malloc: str | None = None) -> dict:
    """Run :func:`pipeline_step` (the torch baseline; with ``compare``, :func:`schedules_step`)
    in a fresh job of ``ranks`` processes; ``malloc`` overrides ``OCNET_MALLOC`` there.  The
    result records the load average before and after the job."""
    kind = ("torch" if baseline else "") + ("compare" if compare else "") + (malloc or "")
    out = Path(args.tmp) / f"p{ranks}t{threads}m{micro}{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--worker",
           *(["--torch-baseline"] if baseline else []),
           "--threads", str(threads), "--micro", str(micro), "--layers", str(args.layers),
           "--channels", str(args.channels), "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--port", str(args.port), "--gloo-timeout", str(args.gloo_timeout), "--out", str(out)]
    if compare:
        cmd.insert(cmd.index("--worker") + 1, "--compare")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if malloc is not None:
        env["OCNET_MALLOC"] = malloc
    load = os.getloadavg()
    subprocess.run(cmd, check=True, env=env)
    return {**json.loads(out.read_text()), "load_before": load, "load_after": os.getloadavg()}


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
    ap.add_argument("--ranks", type=int, default=2, help="ranks of the schedules' comparison (c)")
    ap.add_argument("--port", type=int, default=29517, help="TCP port of the torch baseline's gloo group")
    ap.add_argument("--gloo-timeout", type=float, default=300.0,
                    help="seconds a torch schedule's receive waits before it fails (a peer that raised)")
    ap.add_argument("--tmp", default="/tmp")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if allocator() == "tuned":
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
    schedules = {m: launch(args.ranks, 1, args.micro, args, compare=True, malloc=m) for m in ALLOCATORS}
    print(table(schedules, args.ranks, args.micro))
    if args.only_schedules:
        write("bench_serial_schedules", {"layers": args.layers, "channels": args.channels, "batch": args.batch,
                                         "shape": SHAPE, "ranks": args.ranks, "schedules": schedules,
                                         "as_run_by_default": as_run_by_default(schedules),
                                         "ocnet_best_vs_torch_best": {m: c["ocnet_best_vs_torch_best"]
                                                                      for m, c in schedules.items()}}, args.out)
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

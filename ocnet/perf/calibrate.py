"""Measuring the machine for the performance model (:mod:`ocnet.speedup`).

``[mpiexec -n 2] python -m ocnet.perf.calibrate [--config FILE.toml] [--key value …] --save FILE``

* **Compute**: seconds per layer step of each compute kind of :data:`ocnet.ranks.timeline.KINDS`
  on the configured network at the configured batch (and at the micro-batch sizes asked
  for), one thread, medians of interleaved repeats.  A sample of the network is timed (up to
  :data:`SAMPLE_LAYERS` layers, its stages in proportion): the cost per layer step is the
  network's average.
* **Communication**: latency and bandwidth by ping-pong between ranks 0 and 1 and the cost
  of one allreduce round, when run under ``mpiexec`` with at least two ranks; otherwise
  :data:`DEFAULT_LINK` (measured on this project's development machine, shared memory).
* **MGRIT convergence**: the convergence factor of the forward solve on the configured
  network for each coarsening and level count asked for (one process, small batch): the
  miniature a replay runs on does not converge like the real network, so the iteration
  count an exact solve needs comes from here.

The result is JSON (:func:`save`, :func:`load`), read back by ``--calibration FILE``.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..model.problem import from_config
from ..ranks import timeline
from ..runs import allocator
from .replay import COMPUTE, Link

#: Layers of the configured network timed for the compute costs.
SAMPLE_LAYERS = 16
#: Most layers of the configured network a solver's real steps are profiled on (:func:`profile`).
PROFILE_LAYERS = 64
#: Measured on the 2-core development machine (``link_costs`` on 2 ranks, shared memory):
#: the latency is that of :mod:`ocnet.ranks.comm`'s polite waits, which sleep between polls.
DEFAULT_LINK = Link(latency=150e-6, bandwidth=1.2e10, reduction=5e-6)

#: Train-set sizes and input shapes of the data sets (no need to load them to calibrate).
DATASETS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "peaks": (4000, (2,), 5), "sequences": (4000, (16,), 4), "digits": (1437, (1, 8, 8), 10),
    "mnist": (60000, (1, 28, 28), 10),
    "cifar10": (50000, (3, 32, 32), 10), "cifar100": (50000, (3, 32, 32), 100)}


def build_problem(config: Mapping[str, Any], layers: int | None = None, *, channels: Sequence[int] | None = None,
                  width: int | None = None, input_shape: Sequence[int] | None = None) -> Any:
    """The configured network (or one with other layers/channels/width/input), built as a
    run builds it, without loading the data."""
    _, shape, n_classes = DATASETS[config["problem"]]
    return from_config(config, tuple(input_shape or shape), n_classes, layers=layers, width=width,
                       channels=list(channels) if channels else None)


def median_interleaved(fns: Mapping[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds of each function after one warm-up call each, their ``repeats``
    interleaved so that machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def compute_costs(config: Mapping[str, Any], batch: int, repeats: int = 5) -> dict[str, float]:
    """Seconds per layer step of each compute kind at ``batch`` samples (``head``: per head
    span, a third of the opening's and the classifier's forward and backward; ``update``:
    per layer's optimiser step)."""
    from ..runs.job import make_optimizer_factory
    problem = build_problem(config, min(config["layers"], SAMPLE_LAYERS))
    x = problem.examples(batch)
    y = torch.randint(0, problem.n_classes, (batch,))
    layers = list(problem.layers)
    n = len(layers)
    with torch.no_grad():
        u0 = problem.opening(x)
        states = [u0]
        for layer in layers:
            states.append(layer(states[-1]))
    grads = [torch.randn_like(s) for s in states[1:]]
    # the optimiser steps a copy: stepping the parameters in place would spoil the stored graphs
    stepped = copy.deepcopy(layers)
    optimizer = make_optimizer_factory(dict(config))([p for layer in stepped for p in layer.parameters()])

    def forward() -> None:
        with torch.no_grad():
            u = u0
            for layer in layers:
                u = layer(u)

    def forward_graph() -> None:
        u = u0.requires_grad_(False)
        for layer in layers:
            u = layer(u)

    def backward() -> None:
        u = u0.detach().requires_grad_(True)
        for layer in layers:
            u = layer(u)
        t = time.perf_counter()
        u.backward(grads[-1])
        timed["backward"] = time.perf_counter() - t

    graphs = []
    for layer, s in zip(layers, states):
        v = s.detach().requires_grad_(True)
        graphs.append((v, layer(v), list(layer.parameters())))

    def vjp() -> None:
        for (v, out, _), g in zip(graphs, grads):
            torch.autograd.grad(out, v, g, retain_graph=True)

    def weight_grad() -> None:
        for (_, out, params), g in zip(graphs, grads):
            torch.autograd.grad(out, params, g, retain_graph=True)

    def vjp_recompute() -> None:
        for layer, s, g in zip(layers, states, grads):
            v = s.detach().requires_grad_(True)
            torch.autograd.grad(layer(v), v, g)

    def head() -> None:
        xin = x.detach()
        uN = states[-1].detach().requires_grad_(True)
        problem.loss(problem.classifier(uN), y).backward()
        problem.opening(xin).backward(grads[0])

    def update() -> None:
        optimizer.step()

    for layer in stepped:  # the optimiser needs gradients to step on
        for p in layer.parameters():
            p.grad = torch.zeros_like(p)
    timed: dict[str, float] = {}
    backward_times: list[float] = []

    def backward_recorded() -> None:
        backward()
        backward_times.append(timed["backward"])

    with torch.random.fork_rng(devices=[]):
        medians = median_interleaved(dict(forward=forward, forward_graph=forward_graph, backward=backward_recorded,
                                           vjp=vjp, weight_grad=weight_grad, vjp_recompute=vjp_recompute,
                                           head=head, update=update), repeats)
    medians["backward"] = statistics.median(backward_times[1:] or backward_times)
    per_step = {k: v / n for k, v in medians.items() if k != "head"}
    # The solvers wrap the opening's forward, the classifier's forward and backward, and the
    # opening's backward in "head" spans of their own (two or three per step): one span is
    # charged a third of the whole.
    per_step["head"] = medians["head"] / 3
    return per_step


def compute_batch(config: Mapping[str, Any]) -> int:
    """The batch one compute span works on (a micro-batch for the pipelined serial solver)."""
    return max(1, config["batch_size"] // int(config.get("micro_batches", 1)))


class _Profile:
    """One solver variant's real steps on one rank, one at a time (see :func:`profile_all`)."""

    @classmethod
    def make(cls, config: Mapping[str, Any]) -> _Profile | None:
        """``None`` where the solver has no partition on one rank."""
        from ..ranks.comm import SelfComm
        from ..runs.job import build_solver
        from ..solvers import get
        problem = build_problem(config, min(config["layers"], PROFILE_LAYERS))
        solver_cls = get(config["solver"])
        try:
            partition = solver_cls.partition(problem.n_layers, 1, config)
        except ValueError:
            return None
        solver = build_solver(solver_cls, problem.local(partition, 0), SelfComm(), dict(config), torch.device("cpu"))
        return cls(config, problem, solver)

    def __init__(self, config: Mapping[str, Any], problem: Any, solver: Any) -> None:
        self.config, self.problem, self.solver = config, problem, solver
        self.generator = torch.Generator().manual_seed(0)
        self.taken: list[dict[str, Any]] = []  # per timed step: time, compute spans, kinds
        self.batches = 0
        x, y, index = self._batch()
        self.solver.begin_epoch(0, x, y)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next batch of its own (a warm start then starts from another batch's states,
        as in training)."""
        b, k = self.config["batch_size"], self.batches
        self.batches += 1
        return (self.problem.examples(b, self.generator),
                torch.randint(0, self.problem.n_classes, (b,), generator=self.generator),
                torch.arange(k * b, (k + 1) * b))

    def step(self) -> None:
        """Time one step, after one untimed step that brings the solver's memory back into
        the caches (as a training run's steps follow each other)."""
        self.solver.step(*self._batch())
        x, y, index = self._batch()
        rec = timeline.Recorder()
        with timeline.recording(rec):
            t = time.perf_counter()
            record = self.solver.step(x, y, index)
            total = time.perf_counter() - t
        seconds: dict[str, float] = {}
        layer_steps: dict[str, float] = {}
        for kind, start, end, info in rec.events:
            if kind in COMPUTE:
                seconds[kind] = seconds.get(kind, 0.0) + end - start
                layer_steps[kind] = layer_steps.get(kind, 0.0) + (1 if kind == "head" else info.get("steps", 1))
        residual = record.get("residual") if self.config.get("mgrit_mode") == "exact" else None
        self.taken.append({"total": total, "covered": sum(seconds.values()),
                           "spans": sum(1 for e in rec.events if e[0] in COMPUTE), "seconds": seconds,
                           "layer_steps": layer_steps,
                           "iterations": ((len(residual["forward"]) - 1, len(residual["adjoint"]) - 1)
                                          if isinstance(residual, dict) else None)})

    def result(self) -> dict[str, Any] | None:
        """Each figure the median over the steps taken; ``None`` without a compute span."""
        taken = [t for t in self.taken if t["spans"]]
        if not taken:
            return None
        med = statistics.median
        kinds = {kind for t in taken for kind, n in t["layer_steps"].items() if n > 0}
        out: dict[str, Any] = {
            "coverage": med(t["covered"] / t["total"] for t in taken),
            "outside": med(max(0.0, t["total"] - t["covered"]) / t["spans"] for t in taken),
            "spans": med(t["spans"] for t in taken),
            "costs": {kind: med(t["seconds"][kind] / t["layer_steps"][kind] for t in taken
                                if t["layer_steps"].get(kind)) for kind in sorted(kinds)},
            "batch": compute_batch(self.config)}
        iterations = [t["iterations"] for t in taken if t["iterations"] is not None]
        if iterations:
            out["iterations"] = [round(med(it[i] for it in iterations)) for i in (0, 1)]
        return out


def profile_all(named: Mapping[str, Mapping[str, Any]], steps: int = 4) -> dict[str, dict[str, Any] | None]:
    """:func:`profile` for each named configuration, their steps taken in rounds (in each, an
    untimed and a timed step of each configuration), so that a load that comes and goes while
    they run falls on all alike, and the medians over the rounds leave it out."""
    made = {name: p for name, p in ((name, _Profile.make(c)) for name, c in named.items()) if p is not None}
    for _ in range(steps):
        for p in made.values():
            p.step()
    return {name: made[name].result() if name in made else None for name in named}


def profile(config: Mapping[str, Any], steps: int = 4) -> dict[str, Any] | None:
    """A few real steps of the configured solver on one rank (one thread), each on a batch of
    its own, as in training (a warm start then starts from another batch's states), each
    after an untimed one; on the configured network, cut to at most :data:`PROFILE_LAYERS`
    layers.  ``None`` when the solver has no partition on one rank (local parallelism with
    an overlap needs two blocks) or records no compute span.

    Returns
    -------
    dict
        Medians over the steps: ``coverage``, the fraction of a step's time that compute spans
        cover; ``outside``, the seconds outside every compute span per compute span (the
        solver's bookkeeping between them, which the replay charges per span,
        :data:`ocnet.perf.replay.OUTSIDE`); ``spans``, compute spans per step;
        ``iterations`` (exact MGRIT only), the iterations ``[forward, adjoint]`` the solves
        took to their tolerance, each ``len(residual) - 1``; ``costs``, each compute kind's
        seconds per layer step (``head``: per span) as the spans of a step took them.  And
        ``batch``: the samples of one span (a micro-batch's where the solver cuts the batch),
        the batch those costs hold at.
    """
    return profile_all({"": config}, steps)[""]


#: A second process that waits as a rank waits for a message (:mod:`ocnet.ranks.comm`'s
#: polite wait: 50 polls, then sleeps growing from 20 µs to 200 µs between polls) while it
#: is told to: a byte on its input starts a wait, the next ends it, the end of input ends it.
_WAITING_NEIGHBOUR = """
import os, select, sys, time
fd = sys.stdin.fileno()
def ready():
    return bool(select.select([fd], [], [], 0)[0])
while os.read(fd, 1):
    for _ in range(50):
        if ready():
            break
    else:
        sleep = 2e-5
        while not ready():
            time.sleep(sleep)
            sleep = min(2 * sleep, 2e-4)
    if not os.read(fd, 1):
        break
"""


def neighbour_factors(config: Mapping[str, Any], batch: int, rounds: int = 5,
                      repeats: int = 3) -> dict[str, float]:
    """Per compute kind: its cost while another process waits politely for a message (as a
    neighbouring rank does between its own spans), over its cost alone; medians over
    ``rounds`` that alternate the two, so that the machine's other load hits both alike.

    On a machine whose cores wake each other (a virtual machine's idle cores, a scheduler
    that moves a waking process onto a busy core) the factor exceeds 1: with P ≥ 2 ranks
    every rank computes beside others that wait, and the replay charges its spans so."""
    import subprocess
    alone: list[dict[str, float]] = []
    beside: list[dict[str, float]] = []
    neighbour = subprocess.Popen([sys.executable, "-c", _WAITING_NEIGHBOUR], stdin=subprocess.PIPE)
    assert neighbour.stdin is not None
    try:
        for _ in range(rounds):
            alone.append(compute_costs(config, batch, repeats))
            neighbour.stdin.write(b"g")
            neighbour.stdin.flush()
            beside.append(compute_costs(config, batch, repeats))
            neighbour.stdin.write(b"s")
            neighbour.stdin.flush()
    finally:
        neighbour.stdin.close()
        neighbour.wait()
    return {k: statistics.median(b[k] / a[k] for a, b in zip(alone, beside) if a[k] > 0) for k in alone[0]}


def mgrit_factor(config: Mapping[str, Any], c: int, levels: int, iterations: int = 4, batch: int = 8) -> float:
    """The forward solve's mean convergence factor on the configured network (one process)."""
    from ..mgrit import solve
    from ..mgrit.network import NetworkPropagator
    from ..model.grid import Partition
    problem = build_problem(config)
    network = problem.local(Partition(problem.n_layers, 1), 0)
    prop = NetworkPropagator(network, c)
    with torch.no_grad():
        u0 = problem.opening(problem.examples(batch))
        result = solve(prop, u0, prop.N, levels=levels, max_iter=iterations, tol=0.0)
    return float(result.conv_factor)


def link_costs(comm: Any, repeats: int = 50) -> Link:
    """Latency, bandwidth and allreduce round cost between ranks 0 and 1 of ``comm`` (every
    rank calls it; ranks past 1 only join the allreduces)."""

    def pingpong(nbytes: int) -> float:
        t = torch.zeros(max(1, nbytes // 4))
        times = []
        for _ in range(repeats):
            comm.barrier()
            t0 = time.perf_counter()
            if comm.rank == 0:
                comm.send(t, 1, 5)
                comm.recv(1, 5)
            elif comm.rank == 1:
                comm.send(comm.recv(0, 5), 0, 5)
            times.append((time.perf_counter() - t0) / 2)
        return statistics.median(times)

    small, big, nbig = pingpong(8), pingpong(1 << 22), float(1 << 22)
    bandwidth = nbig / max(big - small, 1e-9)
    reduce_times = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce(1.0)
        reduce_times.append(time.perf_counter() - t0)
    rounds = max(1, math.ceil(math.log2(comm.size)))
    reduction = comm.bcast(statistics.median(reduce_times) / rounds)
    latency, bandwidth = comm.bcast((small, bandwidth))
    return Link(latency=latency, bandwidth=bandwidth, reduction=reduction)


def calibrate(config: Mapping[str, Any], batches: Iterable[int] = (), mgrit: Iterable[tuple[int, int]] = (),
              comm: Any = None, repeats: int = 5, with_coverage: bool = True,
              profiles: Mapping[str, Mapping[str, Any]] | None = None, neighbours: bool = True) -> dict[str, Any]:
    """Everything the model needs, as a JSON-ready dict (see the module docstring).  The
    costs are measured under the allocator setting the runs of ``config`` would use
    (``--malloc``), which ``malloc`` records.  ``profiles``: name ↦ configuration of each
    solver variant to :func:`profile` (default, with ``with_coverage``: ``config``'s own
    solver under its name); ``neighbours``: measure :func:`neighbour_factors` at every batch."""
    torch.set_num_threads(1)
    malloc = allocator.apply(config.get("malloc", "auto"))
    link = link_costs(comm) if comm is not None and comm.size > 1 else None
    sizes = sorted({config["batch_size"], *batches})
    out: dict[str, Any] = {"config": {k: config[k] for k in ("problem", "net", "layers", "width", "channels",
                                                            "batch_size", "dtype", "norm", "optimizer")},
                           "compute": {str(b): compute_costs(config, b, repeats) for b in sizes}}
    out["malloc"] = malloc
    out["link"] = vars(link if link is not None else DEFAULT_LINK) | {"measured": link is not None}
    out["mgrit_factors"] = {f"{c},{L}": mgrit_factor(config, c, L) for c, L in mgrit}
    if neighbours:
        out["neighbours"] = {str(b): neighbour_factors(config, b) for b in sizes}
    named = dict(profiles or ({config["solver"]: config} if with_coverage else {}))
    out["profiles"] = profile_all(named)
    return out


def median(calibrations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The calibration whose every measured figure is the median of ``calibrations``'
    (of the same configuration, measured one after the other): a load that slowed one of
    them is left out.  Integers stay integers (the lower median: a count that was measured);
    anything not a number (a string, ``None``, a flag) is the first calibration's.

    Raises
    ------
    ValueError
        For no calibration.
    """
    if not calibrations:
        raise ValueError("the median of no calibration")

    def med(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, Mapping):
            return {k: med([v[k] for v in values if isinstance(v, Mapping) and k in v]) for k in first}
        if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
            return [med(list(column)) for column in zip(*values)]
        if isinstance(first, bool) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return first
        if all(isinstance(v, int) for v in values):
            return statistics.median_low(values)
        return statistics.median(values)

    return med(list(calibrations))


def save(calibration: Mapping[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(calibration, indent=2) + "\n")


def load(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def main(argv: list[str] | None = None) -> int:
    from ..ranks import comm as comm_mod
    from ..runs.config import ConfigError, resolve
    argv = sys.argv[1:] if argv is None else list(argv)
    save_to = "calibration.json"
    if "--save" in argv:
        i = argv.index("--save")
        save_to = argv[i + 1]
        del argv[i:i + 2]
    try:
        config = resolve(argv)
    except ConfigError as e:
        print(f"ocnet: error: {e}", file=sys.stderr)
        return 2
    comm = comm_mod.world()
    if comm.rank == 0:
        result = calibrate(config, comm=comm)
    else:
        link_costs(comm)
        return 0
    save(result, save_to)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

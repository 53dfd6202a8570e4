"""``[mpirun -n P] python -m ocnet.run [--config FILE.toml] [--key value …]``

Builds everything from the configuration — communicator, device, data, network, partition,
solver — trains, and writes the run directory (config.toml, history.jsonl, summary.json,
plots, checkpoints).  This is the only module that reaches for ``COMM_WORLD``.

Set-up errors (configuration, plug-ins, data, network, partition, building the solver) are
checked on every rank and agreed on with one collective, so every rank exits with status 2
and the job prints one message.  A :class:`~ocnet.solvers.SolverError` during training (a
diverged MGRIT solve), which every rank raises together, prints one message and exits with
status 3; any other exception during training aborts the whole job (no rank is left waiting).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from . import checkpoint
from . import comm as comm_mod
from .config import ConfigError, dump_toml, given, help_text, resolve
from .data import DataError, load
from .filters import FILTERS
from .problem import build
from .solvers import Solver, SolverError
from .solvers import get as get_solver
from .tags import Tags
from .train import History, fit, lr_schedule

T = TypeVar("T")
EXIT_SETUP = 2
EXIT_SOLVER = 3


class SetupError(Exception):
    """A set-up step failed on some rank; that rank has printed why."""


def agree(comm: comm_mod.Comm, what: Callable[[], T]) -> T:
    """Run a set-up step on every rank; if it fails anywhere, fail everywhere.

    The lowest failing rank prints the one message; all ranks raise :class:`SetupError`.
    """
    error: Exception | None = None
    try:
        result = what()
    except Exception as e:  # a user's plug-in may raise anything while it is built
        error = e
    first = comm.allreduce(comm.rank if error is not None else comm.size, op="min")
    if first < comm.size:
        if comm.rank == first:
            print(f"ocnet: error: {_message(error)}", file=sys.stderr, flush=True)
        raise SetupError
    return result


def _message(error: Exception | None) -> str:
    """The one line that reports a set-up error: the message, with the exception's type
    where the type is not one of the expected kinds of bad input."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, (ConfigError, DataError, ValueError, OSError)):
        return str(error)
    return f"{type(error).__name__}: {error}"


def pick_device(kind: str, comm: comm_mod.Comm) -> torch.device:
    """``cuda:local_rank % n_gpus`` when CUDA is present (or asked for), else the CPU."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda", comm_mod.node_rank_and_size(comm)[0] % torch.cuda.device_count())


def default_threads(comm: comm_mod.Comm) -> int:
    """The cores of this node shared among its ranks (oversubscribed threads fight)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // comm_mod.node_rank_and_size(comm)[1])


def make_optimizer_factory(config: dict[str, Any]):
    kind, lr, wd = config["optimizer"], config["lr"], config["weight_decay"]
    if kind == "adam":
        return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=config["momentum"], weight_decay=wd)


def net_kind(config: dict[str, Any], is_image: bool) -> str:
    if config["net"] != "auto":
        return config["net"]
    return "conv" if is_image and config["problem"] != "digits" else "dense"


def setup(argv: list[str], comm: comm_mod.Comm) -> dict[str, Any]:
    """Everything before training, each step agreed on by all ranks."""
    config = agree(comm, lambda: resolve(argv))
    dtype = getattr(torch, config["dtype"])
    device = agree(comm, lambda: pick_device(config["device"], comm))
    data = agree(comm, lambda: load(config["problem"], config["data_dir"] or None, config["seed"]))
    problem = agree(comm, lambda: build(
        data.input_shape, data.n_classes, net=net_kind(config, data.is_image), layers=config["layers"],
        width=config["width"], channels=config["channels"], T=config["final_time"],
        activation=None if config["activation"] == "auto" else config["activation"],
        norm=config["norm"], seed=config["seed"], dtype=dtype))
    solver_cls = get_solver(config["solver"])
    partition = agree(comm, lambda: solver_cls.partition(problem.n_layers, comm.size, config))
    out = Path(config["out"] or f"runs/{config['problem']}-{config['solver']}-P{comm.size}")
    config["out"] = str(out)
    resume = Path(config["resume"]) if config["resume"] else None
    start = agree(comm, lambda: _resume_epoch(resume, comm))
    agree(comm, lambda: out.mkdir(parents=True, exist_ok=True))
    network = problem.local(partition, comm.rank).to(device)
    solver = agree(comm, lambda: build_solver(solver_cls, network, comm, config, device))
    return dict(config=config, dtype=dtype, device=device, data=data, problem=problem,
                network=network, solver=solver, out=out, resume=resume, start=start)


def build_solver(cls: type[Solver], network: Any, comm: comm_mod.Comm, config: dict[str, Any],
                 device: torch.device) -> Solver:
    """The solver of the configuration, on this rank's slice (no communication: every rank
    builds its own, and :func:`agree` collects the errors)."""
    return cls(network, comm, make_optimizer_factory(config), device=device, filter=FILTERS[config["filter"]],
               seed=config["seed"], tags=Tags(), **{k: config[k] for k in cls.options_for(config)})


def _resume_epoch(resume: Path | None, comm: comm_mod.Comm) -> int:
    return 0 if resume is None else checkpoint.complete_epoch(resume, comm.size) + 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    comm = comm_mod.world()
    if "--help" in argv or "-h" in argv:
        try:
            given([a for a in argv if a not in ("--help", "-h")])  # the plug-ins' solvers join the list
        except ConfigError as e:
            print(f"ocnet: error: {e}", file=sys.stderr)
            return EXIT_SETUP
        if comm.rank == 0:
            print(help_text())
        return 0
    try:
        s = setup(argv, comm)
    except SetupError:
        return EXIT_SETUP
    config, device, out = s["config"], s["device"], s["out"]
    comm_mod.abort_on_exception(comm)
    if config["cuda_aware"] != "auto":
        comm.cuda_aware = config["cuda_aware"] == "on"
    torch.set_num_threads(config["threads"] or default_threads(comm))

    data = s["data"].to(device, s["dtype"])
    network, solver = s["network"], s["solver"]
    history = None
    if s["resume"] is not None:
        epoch, state = checkpoint.load(comm, s["resume"], device)
        solver.load_state_dict(state["solver"])
        history = History.read(s["resume"] / "history.jsonl", epoch)
        history.path = out / "history.jsonl" if comm.rank == 0 else None
    if comm.rank == 0:
        checkpoint.atomic_write(out / "config.toml", dump_toml(config))

    t0 = time.perf_counter()
    augment = config["augment"] == "on" or (config["augment"] == "auto" and config["problem"].startswith("cifar"))
    try:
        last = fit(solver, data, comm, epochs=config["epochs"], batch_size=config["batch_size"],
                   seed=config["seed"], lr=lr_schedule(config["schedule"], config["lr"], config["epochs"]),
                   augment_images=augment, run_dir=out, checkpoint_every=config["checkpoint_every"],
                   start_epoch=s["start"], history=history, progress=not config["quiet"])
    except SolverError as e:  # raised by every rank together: one message, every rank exits
        if comm.rank == 0:
            print(f"ocnet: error: {e}", file=sys.stderr, flush=True)
        return EXIT_SOLVER
    wall = time.perf_counter() - t0
    bytes_sent = comm.allreduce(comm.bytes_sent)
    model = comm.gather(network.problem_state())
    if model is not None:  # rank 0
        _finish(out, config, comm.size, last, wall, bytes_sent, model)
    return 0


def _finish(out: Path, config: dict, ranks: int, last: dict, wall: float, bytes_sent: int,
            shards: list[dict]) -> None:
    """Rank 0: the exported model, summary.json, plots, and the one-line summary."""
    import io
    import json
    buf = io.BytesIO()
    torch.save({k: v.cpu() for shard in shards for k, v in shard.items()}, buf)
    checkpoint.atomic_write(out / "model.pt", buf.getvalue())
    summary = {"solver": config["solver"], "ranks": ranks, "problem": config["problem"],
               "layers": config["layers"], "epochs": config["epochs"],
               "final_test_acc": last.get("test_acc"), "final_train_acc": last.get("train_acc"),
               "final_loss": last.get("loss"), "wall_time": wall, "bytes_sent": bytes_sent}
    checkpoint.atomic_write(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    try:
        from .plot import plot_runs
        plot_runs([out])
    except Exception as e:  # plots are a convenience; the data is already safe on disk
        print(f"ocnet: warning: plotting failed: {e}", file=sys.stderr)
    print(f"ocnet: {config['solver']} P={ranks} on {config['problem']}: "
          f"test acc {100 * last.get('test_acc', float('nan')):.2f} %, "
          f"train acc {100 * last.get('train_acc', float('nan')):.2f} %, loss {last.get('loss', float('nan')):.4g}, "
          f"{wall:.1f} s, {bytes_sent / 1e6:.2f} MB sent -> {out}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

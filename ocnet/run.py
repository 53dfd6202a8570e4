"""``[mpirun -n P] python -m ocnet.run [--config FILE.toml] [--key value …]``

Builds everything from the configuration — communicator, device, data, network, partition,
solver — trains, and writes the run directory (config.toml, history.jsonl, summary.json,
plots, checkpoints).  This is the only module that reaches for ``COMM_WORLD``.

Set-up errors (configuration, data, network, partition) are checked on every rank and
agreed on with one collective, so every rank exits with status 2 and the job prints one
message; an exception during training aborts the whole job (no rank is left waiting).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from . import checkpoint, comm as comm_mod
from .config import ConfigError, dump_toml, help_text, resolve
from .data import DataError, load
from .filters import FILTERS
from .grid import Partition
from .problem import build
from .solvers import get as get_solver
from .train import History, fit, lr_schedule

T = TypeVar("T")
EXIT_SETUP = 2


class SetupError(Exception):
    """A set-up step failed on some rank; that rank has printed why."""


def agree(comm: comm_mod.Comm, what: Callable[[], T]) -> T:
    """Run a set-up step on every rank; if it fails anywhere, fail everywhere.

    The lowest failing rank prints the one message; all ranks raise :class:`SetupError`.
    """
    error = None
    try:
        result = what()
    except (ConfigError, DataError, ValueError, OSError, KeyError) as e:
        error = e
    first = comm.allreduce(comm.rank if error is not None else comm.size, op="min")
    if first < comm.size:
        if comm.rank == first:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            print(f"ocnet: error: {message}", file=sys.stderr, flush=True)
        raise SetupError
    return result


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
    partition = agree(comm, lambda: Partition(problem.n_layers, comm.size))
    out = Path(config["out"] or f"runs/{config['problem']}-{config['solver']}-P{comm.size}")
    config["out"] = str(out)
    resume = Path(config["resume"]) if config["resume"] else None
    start = agree(comm, lambda: _resume_epoch(resume, comm))
    agree(comm, lambda: out.mkdir(parents=True, exist_ok=True))
    return dict(config=config, dtype=dtype, device=device, data=data, problem=problem,
                partition=partition, out=out, resume=resume, start=start)


def _resume_epoch(resume: Path | None, comm: comm_mod.Comm) -> int:
    return 0 if resume is None else checkpoint.complete_epoch(resume, comm.size) + 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    comm = comm_mod.world()
    if "--help" in argv or "-h" in argv:
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
    network = s["problem"].local(s["partition"], comm.rank).to(device)
    solver_cls = get_solver(config["solver"])
    solver = solver_cls(network, comm, make_optimizer_factory(config), device=device,
                        filter=FILTERS[config["filter"]],
                        **{k: config[k] for k in solver_cls.options})
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
    last = fit(solver, data, comm, epochs=config["epochs"], batch_size=config["batch_size"],
               seed=config["seed"], lr=lr_schedule(config["schedule"], config["lr"], config["epochs"]),
               augment_images=augment, run_dir=out, checkpoint_every=config["checkpoint_every"],
               start_epoch=s["start"], history=history, progress=not config["quiet"])
    wall = time.perf_counter() - t0
    bytes_sent = comm.allreduce(comm.bytes_sent)
    model = comm.gather(network.problem_state())
    if comm.rank == 0:
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

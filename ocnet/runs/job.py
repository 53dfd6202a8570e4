"""``[mpirun -n P] python -m ocnet.run [--config FILE.toml] [--key value …]``

Builds everything from the configuration — communicator, device, data, network, partition,
solver — trains, and writes the run directory (config.toml, history.jsonl, summary.json,
plots, checkpoints).  Like the other entry points (``python -m ocnet.perf.calibrate``, the
multi-rank solver checks, a user's :class:`~ocnet.runs.loop.Training` given no communicator) it
takes the communicator of all ranks from :func:`ocnet.ranks.comm.world`, the one place that
reaches for ``COMM_WORLD``; library code takes the communicator as an argument.

A run directory belongs to one run, and to one job at a time: before set-up rank 0 claims it
(:mod:`ocnet.runs.directory`, :mod:`ocnet.runs.claim`), and the job holds the claim until it
ends.  A new run refuses a non-empty ``--out`` (unless ``--overwrite``), and ``--resume D``
continues in ``D`` itself, from its newest checkpoint, on any number of ranks, refusing a
configuration that differs in a key that must not change.

Exit status: 0 done; 1 a checkpoint could not be written (a full disk: one line says what
to free and how to continue); 2 a set-up error (configuration, plug-ins, data, memory, run directory,
checkpoint, building the solver — checked on every rank and agreed on with one collective,
so the job prints one message and changes no file); 3 the method failed on every rank
together (a diverged MGRIT solve, a non-finite loss or parameter); 128 + the signal's number
after SIGTERM / SIGINT stopped the run at a step boundary with a checkpoint.  Any other
exception on any rank aborts the whole job (no rank is left waiting), from the first line on.
A ``SystemExit`` after set-up does too, with one line (:func:`_left`); a rank that leaves without
a word (``os._exit``, a signal) is named by its supervisor (:mod:`ocnet.ranks.supervisor`).
"""
from __future__ import annotations

import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from ..model.data import DataError, Dataset, load, vocabulary
from ..model.problem import Problem, from_config, net_kind
from ..ranks import comm as comm_mod
from ..ranks import compress, supervisor, timeline
from ..ranks.filters import FILTERS
from ..ranks.replicas import GradientAverage, Grid
from ..ranks.tags import Tags
from ..solvers import Solver, SolverError
from ..solvers import get as get_solver
from ..solvers.records import dumps
from . import allocator, checkpoint, claim, convex_head, directory, faults, nested, startup
from .config import ConfigError, check_filter, dump_toml, given, help_text, resolve, without_effect
from .console import Console
from .memory import check_memory
from .train import History, NonFinite, Stopped, evaluate, exchange_bytes, fit, lr_schedule, steps_per_epoch

T = TypeVar("T")
EXIT_WRITE = 1
EXIT_SETUP = 2
EXIT_SOLVER = 3


class SetupError(Exception):
    """A set-up step failed on some rank; that rank has printed why."""


def agree(comm: comm_mod.Comm, what: Callable[[], T]) -> T:
    """Run a set-up step on every rank; if it fails anywhere, fail everywhere.

    The lowest failing rank prints the one message (naming itself when not every rank
    failed); all ranks raise :class:`SetupError`.
    """
    error: BaseException | None = None
    try:
        faults.inject("setup", comm.rank)
        result = what()
    except Exception as e:  # a user's plug-in may raise anything while it is built
        error = e
    except (KeyboardInterrupt, SystemExit) as e:  # Ctrl-C, or a plug-in that exits: a set-up failure
        error = e
    first = comm.allreduce(comm.rank if error is not None else comm.size, op="min")
    if first < comm.size:
        failed = comm.allreduce(int(error is not None))
        if comm.rank == first:
            where = "" if failed == comm.size else f"rank {first}: "
            print(f"ocnet: error: {where}{_message(error)}", file=sys.stderr, flush=True)
        raise SetupError
    return result


def _message(error: BaseException | None) -> str:
    """The one line that reports a set-up error: the message, with the exception's type
    where the type is not one of the expected kinds of bad input."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted during set-up"
    if isinstance(error, SystemExit):
        return f"raised SystemExit({error.code!r}) during set-up (a plug-in that exits?)"
    if isinstance(error, (ConfigError, DataError, ValueError, OSError)) and str(error):
        return str(error).splitlines()[0]
    return f"{type(error).__name__}: {error}".splitlines()[0]


def pick_device(kind: str, comm: comm_mod.Comm) -> torch.device:
    """``cuda:local_rank % n_gpus`` when CUDA is present (or asked for), else the CPU."""
    if kind == "cpu" or (kind == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA device")
    return torch.device("cuda", comm_mod.node_rank_and_size(comm)[0] % torch.cuda.device_count())


def default_threads(comm: comm_mod.Comm, net: str) -> int:
    """Torch threads per rank for ``--threads 0``: ``OMP_NUM_THREADS`` where it is set (a
    batch script's choice); else one for a dense network, whose steps are too small to
    share (``benchmarks/bench_threads.py``: a second thread gains nothing on the default
    run), and the cores of this node shared among its ranks for a convolutional one
    (oversubscribed threads fight)."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    if net == "dense":
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // comm_mod.node_rank_and_size(comm)[1])


def make_optimizer_factory(config: dict[str, Any]):
    kind, lr, wd = config["optimizer"], config["lr"], config["weight_decay"]
    if kind == "adam":
        return lambda params: torch.optim.Adam(params, lr=lr, weight_decay=wd)
    return lambda params: torch.optim.SGD(params, lr=lr, momentum=config["momentum"], weight_decay=wd)


def setup(argv: list[str], world: comm_mod.Comm) -> dict[str, Any]:
    """Everything before training, each step agreed on by all ranks.  The first, once the
    configuration is known: rank 0 claims the run directory (making it if need be), and every
    rank checks it can write there; no other file is written.  A set-up that fails gives the
    claim up again, with any directory made for it."""
    config, malloc = agree(world, lambda: _configure(argv))
    held, out, resume = agree(world, lambda: _claim(config, world))
    config["out"] = str(out)
    try:
        agree(world, lambda: directory.probe(out))
        return {**_build(config, world, out, resume), "claim": held, "malloc": malloc}
    except BaseException:
        if held is not None:
            held.release(started=False)
        raise


def _configure(argv: list[str]) -> tuple[dict[str, Any], str]:
    """The configuration, and the allocator setting put into effect before the job allocates
    its tensors (one set-up step: the steps' count is what fault injection names them by)."""
    config = resolve(argv)
    return config, allocator.apply(config["malloc"])


def _claim(config: dict[str, Any], world: comm_mod.Comm) -> tuple[claim.Claim | None, Path, bool]:
    """``(claim, out, resuming)``: rank 0 claims the run directory (and holds the claim);
    every rank learns where the run writes, or fails with rank 0's error (one line for the
    job, not one of rank 0's own)."""
    taken, error = None, None
    if world.rank == 0:
        try:
            taken = directory.claim_for(config, world.size)
        except BaseException as e:  # Ctrl-C included: every rank waits for the broadcast
            error = e
    where = world.bcast(_message(error) if error is not None else (taken[0].directory, taken[1]) if taken else None)
    if error is not None:
        raise error
    if isinstance(where, str):
        raise ConfigError(where)
    return (taken[0] if taken else None), where[0], where[1]


def _build(config: dict[str, Any], world: comm_mod.Comm, out: Path, resume: bool) -> dict[str, Any]:
    """The set-up steps after the claim: grid, device, data, network, solver, checkpoint."""
    groups = config["data_parallel"]
    agree(world, lambda: Grid.check(groups, world.size))
    grid = Grid.split(world, groups) if groups > 1 else Grid.single(world)
    comm = grid.layers  # the solver's ranks: this rank's data group
    dtype = getattr(torch, config["dtype"])
    device = agree(world, lambda: pick_device(config["device"], world))
    data = agree(world, lambda: load(config["problem"], config["data_dir"] or None, config["seed"],
                                     config["val_split"], config["data"] or None))
    kind = net_kind(config, data.input_shape)
    sharing = comm_mod.node_rank_and_size(world)[1]  # a collective: outside agree's step
    agree(world, lambda: check_memory(
        data.input_shape, data.n_classes, net=kind, layers=config["layers"], width=config["width"],
        channels=config["channels"], norm=config["norm"], heads=config["heads"], patch=config["patch"],
        vocab=vocabulary(config["problem"]), batch_size=-(-config["batch_size"] // groups), dtype=dtype,
        n_ranks=comm.size, n_samples=len(data.y_train) + len(data.y_test), optimizer=config["optimizer"],
        device=device, sharing=sharing))
    problem = agree(world, lambda: from_config(config, data.input_shape, data.n_classes))
    agree(world, lambda: convex_head.check(config, problem, len(data.y_train)))
    levels = agree(world, lambda: nested.plan(config, len(problem.stages)))
    solver_cls = get_solver(config["solver"])
    for lv in levels[:-1]:  # every coarse level's partition, before any training
        agree(world, partial(_coarse_partition, solver_cls, lv.layers, comm.size, config))
    level = 0
    if resume and len(levels) > 1:  # the checkpoint holds the network of the level it was written in
        info = agree(world, lambda: checkpoint.latest(out))
        level = nested.level_of(levels, info["epoch"]) if info is not None else 0
    if level < len(levels) - 1:  # a coarse level's network
        problem = agree(world, lambda: from_config(config, data.input_shape, data.n_classes,
                                                   layers=levels[level].layers))
    partition = agree(world, lambda: solver_cls.partition(problem.n_layers, comm.size, config))
    network = agree(world, lambda: problem.local(partition, comm.rank).to(device))
    solver = agree(world, lambda: build_solver(solver_cls, network, comm, config, device))
    agree(world, lambda: check_filter(config["filter"], kind))  # after the solver's own refusal of filters
    if config["compress"] == "adacomp" and config["compress_bin"]:
        agree(world, lambda: compress.check_bin(config["compress_bin"], [p.numel() for p in problem.parameters()]))
    if groups > 1:  # before a checkpoint is loaded: it holds the compressor's residues
        _average_gradients(solver, grid, config)
    if world.rank == 0:
        for line in without_effect(config, net=kind, image=data.is_image, device=device.type):
            print(f"ocnet: warning: {line}", file=sys.stderr, flush=True)
    start, history = None, History(out / "history.jsonl" if world.rank == 0 else None)
    if resume:
        start = agree(world, lambda: _load_checkpoint(solver, grid, out, device, config["epochs"]))
        history = agree(world, lambda: History.read(out / "history.jsonl", start["meta"]["step"])
                        if world.rank == 0 else history)
    return dict(config=config, dtype=dtype, device=device, data=data, problem=problem, network=network,
                solver=solver, out=out, start=start, history=history, grid=grid, levels=levels, level=level)


def _coarse_partition(solver_cls: type[Solver], layers: int, n_ranks: int, config: dict[str, Any]) -> None:
    """Refuse a coarse level of nested iteration whose network the solver cannot share out
    over ``n_ranks`` ranks (fewer layers than ranks, or the solver's own rules)."""
    try:
        solver_cls.partition(layers, n_ranks, config)
    except ValueError as e:
        raise ConfigError(f"--nested {','.join(map(str, config['nested']))}: the level of {layers} layers "
                          f"has no partition on {n_ranks} ranks: {str(e).splitlines()[0]}") from None


def _average_gradients(solver: Solver, grid: Grid, config: dict[str, Any]) -> None:
    """Average ``solver``'s gradients over the data groups, through the configured compressor."""
    solver.gradient_average = GradientAverage(
        solver.replicated_parameters(), solver.optimizers, grid.data,
        compress.make(config["compress"], config["compress_ratio"], config["compress_bin"]),
        config["compress_exchange"])


def _load_checkpoint(solver: Solver, grid: Grid, out: Path, device: torch.device,
                     epochs: int) -> dict[str, Any]:
    """Load the newest checkpoint of ``out`` into ``solver``; returns its ``latest.json``."""
    info = checkpoint.latest(out)
    if info is None:
        raise ConfigError(f"cannot resume {out}: it has no complete checkpoint (--checkpoint-every K writes them)")
    checkpoint.check_files(out, info)  # what latest.json names is there, before it is believed
    done = info["epoch"] + (info["batch"] is None)
    if done > epochs:
        raise ConfigError(f"{out} has trained {done} epochs already; --epochs must be at least {done}")
    info, state = checkpoint.restore(grid.layers, out, device, solver, grid.data)
    if solver.gradient_average is not None:
        # a tensor's residues, summed over the shards read, are what its groups have not yet sent:
        # on another number of groups the first group carries that sum, the others start at zero
        solver.gradient_average.load_state_dict(state.get("compress", []),
                                                keep=info.get("groups", 1) == grid.groups or grid.group == 0)
    return info


def build_solver(cls: type[Solver], network: Any, comm: comm_mod.Comm, config: dict[str, Any],
                 device: torch.device, optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> Solver:
    """The solver of the configuration, on this rank's slice, with the configuration's
    optimiser unless ``optimizer`` makes another (no communication: every rank builds its
    own, and :func:`agree` collects the errors)."""
    return cls(network, comm, optimizer or make_optimizer_factory(config), device=device,
               filter=FILTERS[config["filter"]], seed=config["seed"], tags=Tags(),
               **{k: config[k] for k in cls.options_for(config)})


def _prepare(out: Path, config: dict[str, Any], resuming: bool) -> None:
    """Rank 0, under the claim, once every set-up step has passed: the run directory and its
    config.toml."""
    if config["overwrite"] and not resuming:
        directory.remove_run_files(out)
    if resuming:
        checkpoint.remove_leftovers(out)
    checkpoint.atomic_write(out / "config.toml", dump_toml(config))


def main(argv: list[str] | None = None, draw: Callable[[Path], None] | None = None) -> int:
    """Train as the command line ``argv`` says; returns the exit status.

    ``draw`` is called on rank 0 with the finished run directory to draw its figures (the
    entry point ``python -m ocnet.run`` passes the plotting of :mod:`ocnet.results`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    comm = comm_mod.world()
    startup.uninstall()  # the job's own handling of Ctrl-C and errors from here on
    comm_mod.abort_on_exception(comm)  # from the first line on: no exception leaves a rank waiting
    supervisor.note("during set-up")
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
    try:
        return _run(s, comm, draw)
    finally:
        if s["claim"] is not None:  # rank 0, however the job ends (SIGKILL leaves a stale claim)
            s["claim"].release()


def _run(s: dict[str, Any], comm: comm_mod.Comm, draw: Callable[[Path], None] | None) -> int:
    """Train what :func:`setup` built; returns the exit status."""
    config, device, out, start, grid = s["config"], s["device"], s["out"], s["start"], s["grid"]
    if start is not None and start["batch"] is None and start["epoch"] >= config["epochs"] - 1 \
            and (out / "summary.json").exists():
        if comm.rank == 0:
            print(f"ocnet: {out} has finished its {start['epoch'] + 1} epochs; nothing to do "
                  "(a larger --epochs continues it)", flush=True)
        return 0
    if config["cuda_aware"] != "auto":
        comm.cuda_aware = config["cuda_aware"] == "on"
    kind = net_kind(config, s["data"].input_shape)
    torch.set_num_threads(config["threads"] or default_threads(comm, kind))
    if comm.rank == 0:
        _prepare(out, config, start is not None)
    comm.barrier()  # the directory exists before any rank writes its checkpoint shard there

    data = s["data"].to(device, s["dtype"])
    network, solver = s["network"], s["solver"]
    t0 = time.perf_counter()
    augment = config["augment"] == "on" or (config["augment"] == "auto" and config["problem"].startswith("cifar"))
    step_losses = config["log_every"] > 0 and not config["quiet"]
    levels, level = s["levels"], s["level"]
    log = None
    if config["timeline_steps"]:
        log = timeline.Log(out, comm.rank, comm.size, config["timeline_steps"], job=comm.bcast(time.time()),
                           after_step=start["meta"]["step"] if start is not None else 0)
    comm.start_watchdog(config["stall_timeout"])
    try:
        last: dict[str, Any] = {}
        stopped = False  # by --max-steps, in some level: the levels after it are handed over untrained
        trained = level  # the last level that trained
        for i in range(level, len(levels)):
            lv = levels[i]
            if i > level:
                t_level = time.perf_counter()
                comm.where(f"hand-over to the level of {lv.layers} layers")
                network, solver = _next_level(s, levels[i - 1].layers, lv.layers, network)
                start = {"epoch": lv.first - 1, "batch": None,
                         "meta": {"step": last["step"], "wall_time": last["wall_time"] + time.perf_counter() - t_level}}
            if stopped:
                continue
            console = None
            if comm.rank == 0 and not config["quiet"]:
                n_batches = steps_per_epoch(len(data.y_train), config["batch_size"], config["limit_batches"])
                console = Console(config["epochs"], n_batches, solver.record_fields(), log_every=config["log_every"],
                                  verbose=config["verbose"],
                                  bar_steps=_steps_left({**config, "epochs": lv.end}, start, n_batches))
                if len(levels) > 1 and (start is None or start["epoch"] + (start["batch"] is None) < lv.end):
                    span = f"epochs {lv.first + 1} to {lv.end}" if lv.epochs > 1 else f"epoch {lv.end}"
                    console.say(f"level of {lv.layers} layers: {span}")
            last = fit(solver, data, grid.layers, epochs=lv.end, batch_size=config["batch_size"],
                       seed=config["seed"], lr=lr_schedule(config["schedule"], config["lr"], config["epochs"]),
                       augment_images=augment, run_dir=out, checkpoint_every=config["checkpoint_every"],
                       start=start, history=s["history"], console=console, step_losses=step_losses, log=log,
                       limit_batches=config["limit_batches"], max_steps=config["max_steps"],
                       epoch_test=config["epoch_test"], grid=grid, level=lv.layers if len(levels) > 1 else None)
            stopped = bool(config["max_steps"]) and last.get("step", 0) >= config["max_steps"]
            trained = i
        # the last epoch's score is the finest network's unless --max-steps stopped a coarser one
        final_test = last.get("test_acc") if trained == len(levels) - 1 else None
        if final_test is None:  # with a validation set the test set is scored once, now
            comm.where("evaluation of the test set")
            final_test = evaluate(solver, grid.layers, data.x_test, data.y_test, grid)[0]
        comm.where("the solver's report")
        report = solver.report(data.x_test, data.y_test)
    except SystemExit as e:  # a solver or plug-in that exits: the other ranks would wait for this one
        return _left(comm, e)
    except (SolverError, NonFinite) as e:  # raised by every rank together: one message, every rank exits
        if comm.rank == 0:
            print(f"ocnet: error: {e}", file=sys.stderr, flush=True)
        return EXIT_SOLVER
    except Stopped as e:
        if comm.rank == 0:
            print(f"ocnet: {e}; continue with: {_resume_command(comm, out)}", file=sys.stderr, flush=True)
        return 128 + e.signum
    except checkpoint.WriteError as e:  # raised by every rank together
        if comm.rank == 0:
            info = checkpoint.latest(out)
            kept = "no checkpoint is complete yet" if info is None else "the checkpoint after " + (
                f"epoch {info['epoch']}" if info["batch"] is None else f"batch {info['batch']} of epoch {info['epoch']}"
            ) + " is kept; once there is room, continue with: " + _resume_command(comm, out)
            print(f"ocnet: error: {e}; {kept}", file=sys.stderr, flush=True)
        return EXIT_WRITE
    finally:
        # Rank 0 alone writes the model and plots next: not a stall.  On every way out, or a
        # watchdog left running in a process that goes on (a test, a notebook) would end it
        # once its timeout passes without the ticks of a run that is over.
        comm.stop_watchdog()
    wall = time.perf_counter() - t0
    supervisor.note("while writing the model, summary and figures" if comm.rank == 0
                    else "after training, while rank 0 writes the model, summary and figures")
    faults.inject("finish", comm.rank)
    model = comm.gather(network.problem_state())
    if model is not None:  # rank 0
        model = model[:grid.layers.size]  # the first data group's layers
        network_of = {"net": kind, "input_shape": list(data.input_shape), "n_classes": data.n_classes}
        records = s["history"].records
        _finish(out, config, comm.size, records, wall, model, network_of, final_test,
                best_test=_best_test(out, config, data, records), resumed=s["start"] is not None, draw=draw,
                report=report, levels=levels if len(levels) > 1 else None, malloc=s["malloc"],
                head=partial(_convex_head, out, config, data) if config["head"] == "convex" else None)
    return 0


def _next_level(s: dict[str, Any], coarse_layers: int, layers: int, network: Any) -> tuple[Any, Solver]:
    """The network and solver of the level of ``layers`` layers (a fresh optimiser), its
    parameters the interpolation in layer time of ``network``, this rank's slice of the level
    of ``coarse_layers`` layers just trained.  Every rank builds both levels' whole networks
    on the CPU: the coarse one gathers the ranks' slices, the fine one takes the interpolation
    before its slice moves to the device."""
    config, grid, device = s["config"], s["grid"], s["device"]
    shape, n_classes = s["data"].input_shape, s["data"].n_classes
    coarse = from_config(config, shape, n_classes, layers=coarse_layers)
    fine = from_config(config, shape, n_classes, layers=layers)
    nested.hand_over(network, grid.layers, coarse, fine, config["nested_interpolate"])
    solver_cls = get_solver(config["solver"])
    partition = solver_cls.partition(fine.n_layers, grid.layers.size, config)  # checked in _build
    network = fine.local(partition, grid.layers.rank).to(device)
    solver = build_solver(solver_cls, network, grid.layers, config, device)
    if grid.groups > 1:
        _average_gradients(solver, grid, config)
    return network, solver


def _resume_command(comm: comm_mod.Comm, out: Path) -> str:
    launch = f"mpirun -n {comm.size} " if comm.size > 1 else ""
    return f"{launch}python -m ocnet.run --resume {out}"


def _left(comm: comm_mod.Comm, e: SystemExit) -> int:
    """A rank that raised ``SystemExit`` after set-up: one line, then the whole job ends at
    once; returns the exit status (where this rank is the whole job)."""
    code = e.code if isinstance(e.code, int) and not isinstance(e.code, bool) and e.code else 1
    where = f"in {comm.progress.where}" if comm.progress.where else "after set-up"
    print(f"ocnet: error: rank {comm.rank} (pid {os.getpid()}) raised SystemExit({e.code!r}) {where}, "
          "before the job finished", file=sys.stderr, flush=True)
    if comm.size > 1:
        time.sleep(0.5)  # let the launcher forward the line before the abort tears the job down
        comm.abort(code)
    return code


def _steps_left(config: dict, start: dict | None, n_batches: int) -> int:
    """The steps this job will take at ``n_batches`` an epoch (a resumed job starts after
    its checkpoint's; ``--max-steps`` may end it sooner)."""
    done = 0 if start is None else start["meta"].get("step", 0)  # the run's steps before this job
    left = max(config["epochs"] * n_batches - done, 0)
    return min(left, max(config["max_steps"] - done, 0)) if config["max_steps"] else left


def _best_test(out: Path, config: dict[str, Any], data: Dataset, records: list[dict[str, Any]]) -> float | None:
    """Rank 0: the test accuracy of ``best.pt``, the parameters of the epoch with the best
    validation accuracy (``None`` without a validation set); with nested iteration, a network
    of the layers of that epoch's level."""
    if not len(data.y_val) or not (out / "best.pt").is_file():
        return None
    best = max((r for r in records if r["kind"] == "epoch" and r.get("val_acc") is not None),
               key=lambda r: r["val_acc"], default={})
    model, correct = _trained(out / "best.pt", config, data, layers=best.get("level")).to_torch().eval(), 0
    with torch.no_grad():
        for i in range(0, len(data.y_test), 1024):
            correct += int((model(data.x_test[i:i + 1024]).argmax(1) == data.y_test[i:i + 1024]).sum())
    return correct / len(data.y_test)


def _trained(path: Path, config: dict[str, Any], data: Dataset, layers: int | None = None) -> Problem:
    """The network of ``config`` (of ``layers`` layers: a level of nested iteration) with the
    parameters of the file ``path``, on the data's device."""
    problem = from_config(config, data.input_shape, data.n_classes, layers=layers).to(data.x_test.device)
    problem.load_state_dict(torch.load(path, weights_only=True, map_location=data.x_test.device))
    return problem


def _convex_head(out: Path, config: dict[str, Any], data: Dataset) -> dict[str, Any]:
    """Rank 0, ``--head convex``: the head fitted on the network of ``model.pt``, saved as
    ``convex_head.pt``; returns the summary's entry."""
    head, entry = convex_head.fit(config, _trained(out / "model.pt", config, data), data)
    checkpoint.write_model(out / convex_head.FILE, [head.state_dict()])
    if "max_iter" in entry["convex_head"]["status"]:
        print(f"ocnet: warning: ADMM stopped at its iteration limit before --convex-tol "
              f"{config['convex_tol']:g} on some classes: the convex head's objective is not certified "
              "(fewer --convex-samples or --convex-patterns, or a larger --convex-tol, converge sooner)",
              file=sys.stderr, flush=True)
    return entry


def _finish(out: Path, config: dict, ranks: int, records: list[dict], wall: float, shards: list[dict],
            network: dict[str, Any], final_test: float, best_test: float | None = None,
            resumed: bool = False, draw: Callable[[Path], None] | None = None,
            report: dict[str, Any] | None = None, levels: list[nested.Level] | None = None,
            head: Callable[[], dict[str, Any]] | None = None, malloc: str | None = None) -> None:
    """Rank 0: the exported model, summary.json, the plots ``draw`` makes, and the one-line summary.

    ``wall`` is this job's time; the summary's ``wall_time`` and ``bytes_sent`` cover the
    whole run, over every job that resumed it.  ``network`` (``net``, ``input_shape``,
    ``n_classes``) goes into the summary, so that :func:`ocnet.load_run` can
    rebuild the network without the data.  ``final_test`` is the final model's test
    accuracy; with a validation set, ``best_test`` that of ``best.pt``. ``report`` holds the
    solver's own entries (:meth:`~ocnet.solvers.Solver.report`).  ``levels``: those of nested
    iteration, which the summary lists with the epochs each trained.  ``head``: the convex
    head's fit, run once ``model.pt`` is written (its entries join the summary; a fit that
    fails is a warning, the trained network is kept).  ``malloc``: the allocator setting this
    job's ranks ran under (:func:`ocnet.runs.allocator.apply`), so that its times say what
    they were measured under."""
    checkpoint.write_model(out / "model.pt", shards)
    if head is not None:
        print("ocnet: fitting the convex head", flush=True)
        try:
            report = {**(report or {}), **head()}
        except (ValueError, RuntimeError) as e:  # a solver's failure: the trained network is on disk
            print(f"ocnet: warning: the convex head was not fitted: {e}", file=sys.stderr, flush=True)
    epochs = [r for r in records if r["kind"] == "epoch"]
    last = epochs[-1]
    summary = {"solver": config["solver"], "ranks": ranks, "data_parallel": config["data_parallel"],
               "problem": config["problem"], **network,
               "layers": config["layers"], "epochs": len(epochs), "steps": last["step"],
               "final_test_acc": final_test, "final_train_acc": last.get("train_acc"),
               "final_loss": last.get("loss"), "wall_time": last["wall_time"],
               "bytes_sent": sum(r["bytes_sent"] for r in epochs), **(report or {})}
    if malloc is not None:
        summary["malloc"] = malloc
    if levels is not None:
        summary["levels"] = [{"layers": lv.layers, "epochs": sum(r.get("level") == lv.layers for r in epochs)}
                             for lv in levels]
    summary.update(exchange_bytes(epochs))  # the gradient exchange between data groups, by kind of tensor
    best = max((r for r in epochs if r.get("val_acc") is not None), key=lambda r: r["val_acc"], default=None)
    if best is not None:  # the first epoch that reached the best validation accuracy
        summary.update(final_val_acc=last.get("val_acc"), best_epoch=best["epoch"], best_val_acc=best["val_acc"],
                       best_test_acc=best_test)
    checkpoint.atomic_write(out / "summary.json", dumps(summary, indent=2) + "\n")
    try:
        if draw is not None and config["plots"] != "none":
            draw(out)
    except Exception as e:  # plots are a convenience; the data is already safe on disk
        print(f"ocnet: warning: plotting failed: {e}", file=sys.stderr)
    best_text = "" if best is None else \
        f" (best epoch {best['epoch'] + 1}: val {100 * best['val_acc']:.2f} %, test {100 * (best_test or 0):.2f} %)"
    groups = f" (D={config['data_parallel']})" if config["data_parallel"] > 1 else ""
    convex = (report or {}).get("convex_head")
    if convex is not None:
        best_text += f" (convex head: test {100 * convex['convex_test_acc']:.2f} %)"
    print(f"ocnet: {config['solver']} P={ranks}{groups} on {config['problem']}: "
          f"test acc {100 * final_test:.2f} %{best_text}, train acc {100 * last['train_acc']:.2f} %, "
          f"loss {last['loss']:.4g}, {summary['wall_time']:.1f} s{f' ({wall:.1f} s in this job)' if resumed else ''}, "
          f"{summary['bytes_sent'] / 1e6:.2f} MB sent -> {out}", flush=True)

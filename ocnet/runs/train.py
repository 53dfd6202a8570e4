"""The training loop: epochs, batches, evaluation, history, checkpoints, progress.

The loop owns everything a solver does not: it hands each solver mini-batches (augmented
when the solver allows it), evaluates after each epoch, and on rank 0 writes the history.
Per-step record fields come back from every rank and are combined once per epoch, each by
the rule its schema declares (:mod:`ocnet.solvers.records`), so that no collective interrupts the
pipeline between steps.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..model import batchnorm, dropout
from ..model.data import Dataset, augment, batches
from ..ranks import timeline
from ..ranks.comm import Comm
from ..ranks.replicas import GradientAverage, Grid, average_running_statistics
from ..solvers.base import Solver
from ..solvers.records import combine, combine_groups, dumps, jsonable, non_finite
from . import checkpoint, faults
from .console import Console, statistics

_EVAL_BATCH = 1000
_TRAIN_EVAL_MAX = 10_000  # train accuracy is measured on at most this many samples


def lr_schedule(kind: str, lr: float, epochs: int) -> Callable[[int], float]:
    """``epoch ↦ learning rate``: constant, cosine (to 0), or step (×0.1 at 50 % and 75 %)."""
    if kind == "constant":
        return lambda e: lr
    if kind == "cosine":
        return lambda e: 0.5 * lr * (1 + math.cos(math.pi * e / epochs))
    if kind == "step":
        return lambda e: lr * 0.1 ** ((e >= epochs // 2) + (e >= 3 * epochs // 4))
    raise ValueError(f"unknown schedule {kind!r}")


class History:
    """The records of a run, kept in memory and mirrored atomically to ``history.jsonl``
    (strict JSON: a non-finite number is written as ``null``)."""

    def __init__(self, path: Path | None, records: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.records = records or []

    def extend(self, records: list[dict[str, Any]]) -> None:
        self.records += records
        if self.path is not None:
            checkpoint.atomic_write(self.path, "".join(dumps(r) + "\n" for r in self.records))

    @classmethod
    def read(cls, path: Path, up_to_step: int) -> "History":
        """The records of steps ``≤ up_to_step`` (for resuming a checkpoint taken after that
        step), which must all be there.

        Raises
        ------
        ValueError
            When the file is missing, a line is not a record, or it ends before ``up_to_step``.
        """
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the run's history {path}: {e}") from None
        records = []
        for n, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
                step = record["step"]
            except (ValueError, TypeError, KeyError):
                raise ValueError(f"{path}, line {n}, is not a history record") from None
            if not isinstance(step, int):
                raise ValueError(f"{path}, line {n}: step must be an integer, got {step!r}")
            if step <= up_to_step:
                records.append(record)
        if up_to_step and (not records or records[-1]["step"] != up_to_step):
            ends = records[-1]["step"] if records else 0
            raise ValueError(f"the run's history {path} ends at step {ends}, "
                             f"its checkpoint was taken after step {up_to_step}")
        return cls(path, records)


class NonFinite(Exception):
    """A loss, state, parameter or residual became nan or inf; every rank raises it together."""


class Stopped(Exception):
    """SIGTERM or SIGINT asked the run to stop; it stopped at a step boundary, with a
    checkpoint.  ``signum`` is the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class Interrupt:
    """While active, SIGTERM and SIGINT (what schedulers and Ctrl-C send) set
    :attr:`signum` instead of killing the process, so the loop can stop at the next step
    boundary with a checkpoint.  Another signal within a second of the first is part of the
    same request (a launcher forwarding the terminal's Ctrl-C, a scheduler's SIGTERM and then
    SIGINT), and so is any signal once :attr:`finishing` is set, while the stop checkpoint is
    written: the job stops as the first signal asked, with its checkpoint intact.  A later
    second signal stops at once (a loop that does not reach its next step boundary)."""

    _SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum = 0
        self.finishing = False
        self._at = 0.0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self._SIGNALS}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.signum:
            self.signum, self._at = signum, time.monotonic()
        elif not self.finishing and time.monotonic() - self._at > 1.0:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} again: stopping at once, without a checkpoint")


def evaluate(solver: Solver, comm: Comm, x: torch.Tensor, y: torch.Tensor,
             grid: Grid | None = None) -> tuple[float, float]:
    """``(accuracy, mean loss)`` on ``(x, y)``, known on every rank; on a ``grid`` each data
    group scores its share of the samples (``comm`` is then the group's)."""
    faults.inject("evaluate", (grid.world if grid is not None else comm).rank)
    n = len(y)
    if grid is not None and grid.groups > 1:
        x, y = x[grid.group::grid.groups], y[grid.group::grid.groups]
    correct = loss = 0.0
    with batchnorm.evaluating(solver.network):
        for i in range(0, len(y), _EVAL_BATCH):
            logits = solver.predict(x[i:i + _EVAL_BATCH])
            if logits is not None:
                yy = y[i:i + _EVAL_BATCH]
                correct += float((logits.argmax(1) == yy).sum())
                loss += float(solver.network.loss(logits, yy, reduction="sum"))
    if grid is not None and grid.groups > 1:
        totals = grid.world.allreduce(torch.tensor([correct, loss], dtype=torch.float64)).tolist()
    else:
        totals = comm.bcast((correct, loss), root=comm.size - 1)
    return totals[0] / n, totals[1] / n


def finite_parameters(solver: Solver) -> bool:
    """Whether every parameter of this rank is finite (one reduction per tensor)."""
    return all(bool(torch.isfinite(p).all()) for p in solver.network.parameters())


def _poison(solver: Solver, record: dict[str, Any]) -> None:
    """The ``nan`` fault: this rank's loss and its first parameter become nan."""
    record["loss"] = float("nan")
    with torch.no_grad():
        next(solver.network.parameters()).fill_(float("nan"))


def training_batch(data: Dataset, idx: torch.Tensor, seed: int, epoch: int, b: int,
                   augmented: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples ``idx`` of the training set as batch ``b`` of ``epoch``: ``(x, y)`` on the
    data's device, ``x`` randomly cropped and flipped when ``augmented`` (seeded per batch, so
    that a run resumes at any batch alike)."""
    x, y = data.x_train[idx.to(data.x_train.device)], data.y_train[idx.to(data.y_train.device)]
    if augmented:
        x = augment(x, torch.Generator().manual_seed((1_000_003 * seed + epoch) * 1_000_033 + b))
    return x, y


def steps_per_epoch(n: int, batch_size: int, limit_batches: int = 0) -> int:
    """The batches of an epoch over ``n`` samples, at most ``limit_batches`` (0: no limit)."""
    n_batches = math.ceil(n / batch_size)
    return min(n_batches, limit_batches) if limit_batches else n_batches


def fit(solver: Solver, data: Dataset, comm: Comm, *, epochs: int, batch_size: int, seed: int,
        lr: Callable[[int], float], augment_images: bool, run_dir: Path | None = None,
        checkpoint_every: int = 0, start: dict[str, Any] | None = None, history: History | None = None,
        console: Console | None = None, step_losses: bool = False, log: timeline.Log | None = None,
        limit_batches: int = 0, max_steps: int = 0, epoch_test: bool = False,
        grid: Grid | None = None, level: int | None = None) -> dict[str, Any]:
    """Train up to the end of epoch ``epochs - 1``; returns the last epoch record (every rank).

    Parameters
    ----------
    data : Dataset
        On the training device and in the training dtype.  With validation samples
        (``data.y_val``) each epoch is scored on them, the test set only with
        ``epoch_test``, and the parameters of the epoch with the best validation accuracy
        so far are written to ``run_dir/best.pt``; without, each epoch is scored on the
        test set.
    lr : callable
        ``epoch ↦ learning rate``.
    augment_images : bool
        Random crop and flip of training batches, in epochs where the solver allows it.
    run_dir : Path, optional
        Where rank 0 writes ``history.jsonl`` and every rank its checkpoint shard.
    start : dict, optional
        Where to continue: the ``latest.json`` of the checkpoint the solver was loaded from
        (``epoch``, ``batch`` — ``None`` after a whole epoch — and the loop's ``meta``).
    history : History, optional
        The records up to that checkpoint (rank 0).
    console : Console, optional
        Rank 0's lines: every step, every checked step, every epoch, and the statistics of
        the job at its end.
    step_losses : bool
        Whether each step's loss reaches rank 0 with the step's check (for
        ``console.log_every``); the same on every rank.
    limit_batches : int
        Train on at most this many batches per epoch (0: all).
    max_steps : int
        Stop after this many optimiser steps of the run (0: no limit): the epoch it falls
        in ends there, is scored, and is the last (with no end-of-epoch checkpoint when it
        was cut short).
    log : timeline.Log, optional
        This rank's timeline: the steps of its window are recorded (each epoch that has
        some starts with a barrier, which aligns the ranks' clocks), and its file is
        written at the end of every epoch and when the loop stops.
    grid : Grid, optional
        Data groups (:mod:`ocnet.ranks.replicas`): ``comm`` is then this rank's group, which trains
        on the samples it owns of every batch, and the solver's gradients are averaged over
        the groups (``solver.gradient_average``, installed here when missing), weighted by
        the group's share; records, checks and evaluation span every group, and each group
        writes its own checkpoint shards.
    level : int, optional
        The layer count of the level of nested iteration this call trains
        (:mod:`ocnet.runs.nested`): every iter and epoch record carries it as ``level``.

    Raises
    ------
    NonFinite
        On every rank, one step after the first step whose record holds nan or inf on some
        rank (or, checked at each epoch's end, a parameter does): the history ends with that
        step, and nothing more is written.
    Stopped
        On every rank, at the end of the step after the one in which SIGTERM or SIGINT
        reached any rank, once the checkpoint of that step boundary is written.
    """
    grid = grid or Grid.single(comm)
    world, D = grid.world, grid.groups
    history = history or History(run_dir / "history.jsonl" if run_dir and world.rank == 0 else None)
    start = start or {"epoch": -1, "batch": None, "meta": {}}
    step = start["meta"].get("step", 0)
    t0 = time.perf_counter() - (start["meta"].get("wall_time") or 0.0)
    n = len(data.y_train)
    n_batches = steps_per_epoch(n, batch_size, limit_batches)
    validate = len(data.y_val) > 0
    # the best validation accuracy so far, as rank 0's history of a resumed run knows it
    best_val = world.bcast(max((r["val_acc"] for r in history.records
                               if r["kind"] == "epoch" and r.get("val_acc") is not None), default=-1.0))
    first_epoch = start["epoch"] + (start["batch"] is None)
    # each group's share of the training set, by sample: sample i is the group's i // D
    own = torch.arange(grid.group, n, D)
    weights = [len(range(g, n, D)) / n for g in range(D)]
    if D > 1 and solver.gradient_average is None:
        solver.gradient_average = GradientAverage(solver.replicated_parameters(), solver.optimizers, grid.data)
    if solver.gradient_average is not None:
        solver.gradient_average.take_sent()  # each step's record counts its own exchange

    def sent() -> int:  # this rank's bytes, its share of the gradient average included
        return comm.bytes_sent + (grid.data.bytes_sent if grid.data is not comm else 0)

    job = (time.perf_counter(), list(comm.progress.waited), sent())
    # a run resumed after its last epoch trains nothing and reports that epoch's record
    last: dict[str, Any] = next((r for r in reversed(history.records) if r["kind"] == "epoch"), {})

    def stop_here(ep: _Epoch, kept: int, done: int, signum: int = 0, bad: tuple[int, str] | None = None) -> None:
        """Write the records of the epoch's first ``kept`` steps (of this job) and, for a
        signal, a checkpoint after ``done`` batches; then raise on every rank."""
        at = step - len(ep.iters) + kept  # the step whose end we stop at
        gathered = world.gather({"iters": ep.iters[:kept], "begin": ep.begin, "bytes": sent() - ep.bytes})
        meta: dict[str, Any] = {}
        if gathered is not None:  # rank 0
            history.extend(_iter_records(gathered, ep.wall[:kept], ep.shares[:kept], solver, ep.epoch, at - kept))
            begun = ep.begin if ep.resumed else _over_grid([g["begin"] for g in gathered], weights,
                                                          solver.record_fields())
            meta = {"step": at, "wall_time": time.perf_counter() - t0, "begin": jsonable(begun),
                    "bytes": sum(g["bytes"] for g in gathered) + (start["meta"]["bytes"] if ep.resumed else 0)}
        where = f"epoch {ep.epoch}, step {at}"
        if bad is not None:
            raise NonFinite(f"{bad[1]} is not finite at {where} on rank {bad[0]} (solver {solver.name}); "
                            "nothing after the last checkpoint was saved — a smaller --lr may help")
        if run_dir is not None:
            comm.where(f"checkpoint of {where}")
            interrupt.finishing = True  # a second signal now must not tear the stop checkpoint
            average_running_statistics(solver.network, grid.data)
            checkpoint.save(comm, run_dir, ep.epoch, _state(solver), batch=done,
                            meta=world.bcast(meta), partition=solver.network.partition, data=grid.data)
        kept_text = " with a checkpoint" if run_dir is not None else ""
        raise Stopped(f"stopped by {signal.Signals(signum).name} at {where} (batch {done} of {n_batches})"
                      f"{kept_text}", signum)

    def settle(ep: _Epoch, check: _Check, done: int) -> None:
        """Act on a step's check, ``done`` batches into the epoch: stop at that step for a
        non-finite value, at this boundary for a signal."""
        bad_rank, what, signum = check.result()
        if console is not None:
            at, batch, elapsed = check.at
            console.checked(ep.epoch, at, batch, elapsed, check.loss)
        if bad_rank is not None:
            stop_here(ep, check.kept, done, bad=(bad_rank, what))
        if signum:
            stop_here(ep, len(ep.iters), done, signum)

    with Interrupt() as interrupt, _kept(log):
        for epoch in range(first_epoch, epochs):
            solver.set_lr(lr(epoch))
            resumed = epoch == start["epoch"]  # in the middle of this epoch
            skip = start["batch"] if resumed else 0
            comm.where(f"start of epoch {epoch}")
            recording = log if log is not None and log.epoch_records(n_batches, skip) else None
            if recording is not None:
                recording.align(world.common_moment)
            ep = _Epoch(epoch, resumed, sent())
            with dropout.samples(seed, epoch, own), batchnorm.frozen(solver.network):
                ep.begin = start["meta"]["begin"] if resumed else solver.begin_epoch(
                    epoch, data.x_train[own.to(data.x_train.device)], data.y_train[own.to(data.y_train.device)])
            do_augment = augment_images and data.is_image and solver.augments(epoch)
            iters, wall = ep.iters, ep.wall
            pending: _Check | None = None  # the previous step's check, still in flight
            done = n_batches
            for b, idx in enumerate(batches(n, batch_size, seed, epoch)):
                if b >= n_batches:
                    break
                if b < skip:
                    continue
                x, y = training_batch(data, idx, seed, epoch, b, do_augment)
                samples, index, share = idx, idx, 1.0
                if D > 1:  # this group's share, augmented as part of the whole batch
                    assert solver.gradient_average is not None
                    mine = grid.share(idx)
                    samples, index, share = idx[mine], idx[mine] // D, len(mine) / len(idx)
                    x, y = x[mine.to(x.device)], y[mine.to(y.device)]
                    solver.gradient_average.weight = share
                    ep.shares.append([k / len(idx) for k in grid.shares(idx)])
                before = sent()
                comm.where(f"epoch {epoch}, step {step + 1}")
                window = recording.step(epoch, step + 1) if recording and recording.records(b) else nullcontext()
                with window:  # the step, and the wait for the previous step's check
                    with dropout.samples(seed, epoch, samples), batchnorm.one_update(solver.network):
                        record = dict(solver.step(x, y, index) if len(index) else solver.idle_step())
                    if level is not None:
                        record["level"] = level
                    if faults.inject("step", world.rank) == "nan":
                        _poison(solver, record)
                    record["bytes_sent"] = sent() - before
                    if solver.gradient_average is not None:
                        record["exchange_bytes"] = solver.gradient_average.take_sent()
                    iters.append(record)
                    step += 1
                    wall.append(time.perf_counter() - t0)
                    if console is not None:
                        console.step(step, record)
                    # checked one step late, so that the check's collective overlaps the next step
                    loss = record.get("loss")
                    if isinstance(loss, float):  # the group's part of the whole batch's mean
                        loss *= share
                    check = _Check(world, non_finite(record), interrupt.signum, kept=len(iters),
                                   loss=loss if step_losses else False)
                    check.at = (step, b, wall[-1])
                    if pending is not None:
                        try:
                            settle(ep, pending, b + 1)
                        except (NonFinite, Stopped):  # every rank posted this step's check: complete it,
                            check.request.wait()      # or MPI_Finalize reports it as a pending reference
                            raise
                    pending = check
                if max_steps and step >= max_steps:
                    done = b + 1
                    break
            if pending is not None:
                settle(ep, pending, done)
            end = solver.end_epoch(epoch)
            average_running_statistics(solver.network, grid.data)
            bad_rank, what, _ = _Check(world, None if finite_parameters(solver) else "a parameter", 0).result()
            if bad_rank is not None:
                stop_here(ep, len(iters), n_batches, bad=(bad_rank, what))
            comm.where(f"evaluation of epoch {epoch}")
            train_acc, _ = evaluate(solver, comm, data.x_train[:_TRAIN_EVAL_MAX], data.y_train[:_TRAIN_EVAL_MAX],
                                    grid)
            scores: dict[str, float] = {}
            if validate:
                scores["val_acc"], scores["val_loss"] = evaluate(solver, comm, data.x_val, data.y_val, grid)
            if epoch_test or not validate:
                scores["test_acc"], scores["test_loss"] = evaluate(solver, comm, data.x_test, data.y_test, grid)
            gathered = world.gather({"iters": iters, "begin": ep.begin, "end": end, "bytes": sent() - ep.bytes})
            if gathered is not None:  # rank 0
                fields = solver.record_fields()
                records = _iter_records(gathered, wall, ep.shares, solver, epoch, step - len(wall))
                earlier = [r for r in history.records if r["kind"] == "iter" and r["epoch"] == epoch]
                losses = [v for r in earlier + records if isinstance(v := r.get("loss"), (int, float))]
                begun = ep.begin if resumed else _over_grid([g["begin"] for g in gathered], weights, fields)
                last = {"kind": "epoch", "epoch": epoch, "step": step, **begun,
                        **_over_grid([g["end"] for g in gathered], weights, fields)}
                if level is not None:
                    last["level"] = level
                last.update(exchange_bytes(earlier + records))
                last.update(loss=sum(losses) / len(losses) if losses else float("nan"),
                            wall_time=time.perf_counter() - t0,
                            bytes_sent=sum(g["bytes"] for g in gathered) + (start["meta"]["bytes"] if resumed else 0),
                            train_acc=train_acc, **scores, lr=lr(epoch))
                history.extend(records + [last])
                if console is not None:
                    console.epoch(last, records[-1] if records else None)
            if validate and scores["val_acc"] > best_val:  # every rank knows the score
                best_val = scores["val_acc"]
                comm.where(f"best model of epoch {epoch}")
                shards = world.gather(solver.network.problem_state())
                if shards is not None and run_dir is not None:  # the first group's layers
                    checkpoint.write_model(run_dir / "best.pt", shards[:comm.size])
            if log is not None:
                log.write()
            stop = bool(max_steps) and step >= max_steps
            due = checkpoint_every and ((epoch + 1) % checkpoint_every == 0 or epoch == epochs - 1 or stop)
            if done < n_batches:  # cut short by max_steps: the epoch is not complete
                due = False
            if run_dir is not None and due:
                comm.where(f"checkpoint of epoch {epoch}")
                meta = world.bcast({"step": step, "wall_time": last.get("wall_time")})
                checkpoint.save(comm, run_dir, epoch, _state(solver), meta=meta,
                                partition=solver.network.partition, data=grid.data)
            if stop:
                break
    waited = [a - b for a, b in zip(comm.progress.waited, job[1])]
    ranks = world.gather({"train": time.perf_counter() - job[0], "waiting_messages": waited[0],
                          "waiting_collectives": waited[1], "bytes": sent() - job[2]})
    if console is not None:
        console.close()
        if ranks is not None:
            console.say(statistics(history.records, ranks, time.perf_counter() - job[0]))
    return world.bcast(last)


class _kept:
    """Writes the timeline ``log`` (if any) however the loop ends."""

    def __init__(self, log: timeline.Log | None) -> None:
        self.log = log

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if self.log is not None:
            self.log.write()


def exchange_bytes(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"exchange_bytes": by kind of tensor}`` summed over ``records`` (empty where none has it)."""
    parts = [{"exchange_bytes": r["exchange_bytes"]} for r in records if "exchange_bytes" in r]
    return combine(parts) if parts else {}


def _iter_records(gathered: list[dict[str, Any]], wall: list[float], shares: list[list[float]], solver: Solver,
                  epoch: int, step: int) -> list[dict[str, Any]]:
    """Rank 0: one record per step from every rank's fields, numbered from ``step + 1``;
    ``shares``: each data group's share of each step's batch (empty: one group)."""
    fields = solver.record_fields()
    return [{"kind": "iter", "epoch": epoch, "step": step + i + 1,
             **_over_grid(list(r), shares[i] if shares else [1.0], fields), "wall_time": w}
            for i, (r, w) in enumerate(zip(zip(*(g["iters"] for g in gathered)), wall))]


def _over_grid(records: list[dict[str, Any]], weights: list[float], fields: dict) -> dict[str, Any]:
    """One record from the world's records (group by group, in rank order): combined over
    each group's layer ranks, then over the groups with their ``weights``."""
    per = len(records) // len(weights)
    if len(weights) == 1:
        return combine(records, fields)
    return combine_groups([combine(records[k * per:(k + 1) * per], fields) for k in range(len(weights))],
                          weights, fields)


@dataclass
class _Epoch:
    """What the loop gathers over one epoch: this rank's fields and rank 0's clock per step,
    the fields ``begin_epoch`` returned, the bytes sent before it."""

    epoch: int
    resumed: bool  # in the middle of this epoch, from a checkpoint
    bytes: int
    begin: Any = None
    iters: list[dict[str, Any]] = field(default_factory=list)
    shares: list[list[float]] = field(default_factory=list)  # the data groups' shares of each step
    wall: list[float] = field(default_factory=list)


class _Check:
    """A step's check, in flight: :meth:`result` tells every rank the lowest rank whose record
    was not finite (``None`` when all were) with the field, and a signal asked for on any rank
    (0 when none).  ``kept``: how many of the epoch's steps (of this job) precede it, itself
    included.  Unless ``loss`` is ``False`` (the same on every rank), the step's loss comes
    along: each rank's share (a number, or ``None``) in a slot of its own, so that the maximum
    over the ranks carries every share; afterwards :attr:`loss` is their sum (``None`` when
    no rank had one).  ``at``: the caller's note of which step it checks."""

    def __init__(self, comm: Comm, bad_field: str | None, signum: int, kept: int = 0,
                 loss: Any = False) -> None:
        self.comm, self.bad_field, self.kept = comm, bad_field, kept
        self.loss: float | None = None
        self.at: tuple[int, int, float] = (0, 0, 0.0)
        flags: list[float] = [-(comm.rank if bad_field else comm.size), signum]
        if loss is not False:
            shares = [-math.inf] * comm.size
            if isinstance(loss, (int, float)):
                shares[comm.rank] = float(loss)
            flags += shares
        self.request = comm.iallreduce(torch.tensor(flags, dtype=torch.float64), op="max")

    def result(self) -> tuple[int | None, str, int]:
        flags = self.request.wait()
        shares = [float(v) for v in flags[2:] if float(v) != -math.inf]
        self.loss = sum(shares) if shares else None
        bad_rank, signum = int(-flags[0]), int(flags[1])
        if bad_rank == self.comm.size:
            return None, "", signum
        return bad_rank, self.comm.bcast(self.bad_field, root=bad_rank), signum


def _state(solver: Any) -> dict[str, Any]:
    """What a rank's checkpoint shard holds: the solver's state, and the residues of the
    gradient exchange's compressor where there is one (a checkpoint without them loads)."""
    state: dict[str, Any] = {"solver": solver.state_dict()}
    residues = solver.gradient_average.state_dict() if solver.gradient_average is not None else None
    if residues is not None:
        state["compress"] = residues
    return state

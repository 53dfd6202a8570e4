"""The training loop: epochs, batches, evaluation, history, checkpoints, progress.

The loop owns everything a solver does not: it hands each solver mini-batches (augmented
when the solver allows it), evaluates after each epoch, and on rank 0 writes the history.
Per-step record fields come back from every rank and are combined once per epoch, each by
the rule its schema declares (:mod:`ocnet.records`), so that no collective interrupts the
pipeline between steps.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint
from .comm import Comm
from .data import Dataset, augment, batches
from .records import combine
from .solvers.base import Solver

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
    """The records of a run, kept in memory and mirrored atomically to ``history.jsonl``."""

    def __init__(self, path: Path | None, records: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.records = records or []

    def extend(self, records: list[dict[str, Any]]) -> None:
        self.records += records
        if self.path is not None:
            checkpoint.atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    @classmethod
    def read(cls, path: Path, up_to_epoch: int) -> "History":
        """The records of epochs ``≤ up_to_epoch`` (for resuming)."""
        lines = path.read_text().splitlines() if path.exists() else []
        return cls(path, [r for r in map(json.loads, lines) if r["epoch"] <= up_to_epoch])


def evaluate(solver: Solver, comm: Comm, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """``(accuracy, mean loss)`` on ``(x, y)``, known on every rank."""
    correct = loss = 0.0
    for i in range(0, len(y), _EVAL_BATCH):
        logits = solver.predict(x[i:i + _EVAL_BATCH])
        if logits is not None:
            yy = y[i:i + _EVAL_BATCH]
            correct += float((logits.argmax(1) == yy).sum())
            loss += float(solver.network.loss(logits, yy, reduction="sum"))
    totals = comm.bcast((correct, loss), root=comm.size - 1)
    return totals[0] / len(y), totals[1] / len(y)


def fit(solver: Solver, data: Dataset, comm: Comm, *, epochs: int, batch_size: int, seed: int,
        lr: Callable[[int], float], augment_images: bool, run_dir: Path | None = None,
        checkpoint_every: int = 0, start_epoch: int = 0, history: History | None = None,
        progress: bool = False) -> dict[str, Any]:
    """Train for epochs ``start_epoch … epochs-1``; returns the last epoch record (every rank).

    Parameters
    ----------
    data : Dataset
        On the training device and in the training dtype.
    lr : callable
        ``epoch ↦ learning rate``.
    augment_images : bool
        Random crop and flip of training batches, in epochs where the solver allows it.
    run_dir : Path, optional
        Where rank 0 writes ``history.jsonl`` and every rank its checkpoint shard.
    """
    history = history or History(run_dir / "history.jsonl" if run_dir and comm.rank == 0 else None)
    step = history.records[-1]["step"] if history.records else 0
    t0 = time.perf_counter() - (history.records[-1]["wall_time"] if history.records else 0.0)
    n = len(data.y_train)
    n_batches = math.ceil(n / batch_size)
    bar = _progress(epochs, start_epoch, n_batches) if progress and comm.rank == 0 else None
    last: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        bytes_epoch = comm.bytes_sent
        solver.set_lr(lr(epoch))
        extra = solver.begin_epoch(epoch, data.x_train, data.y_train)
        generator = torch.Generator().manual_seed(1_000_003 * seed + epoch)
        do_augment = augment_images and data.is_image and solver.augments(epoch)
        iters: list[dict[str, Any]] = []  # this rank's fields, per step
        wall: list[float] = []  # rank 0's clock, per step
        for idx in batches(n, batch_size, seed, epoch):
            x, y = data.x_train[idx.to(data.x_train.device)], data.y_train[idx.to(data.y_train.device)]
            if do_augment:
                x = augment(x, generator)  # a CPU generator drives it on any device
            sent = comm.bytes_sent
            record = solver.step(x, y, idx)
            iters.append({**record, "bytes_sent": comm.bytes_sent - sent})
            wall.append(time.perf_counter() - t0)
            if bar is not None:
                bar.update(1)
        extra = {**extra, **solver.end_epoch(epoch)}
        train_acc, _ = evaluate(solver, comm, data.x_train[:_TRAIN_EVAL_MAX], data.y_train[:_TRAIN_EVAL_MAX])
        test_acc, test_loss = evaluate(solver, comm, data.x_test, data.y_test)
        mine = {"iters": iters, "extra": extra, "bytes": comm.bytes_sent - bytes_epoch}
        gathered = comm.gather(mine)
        if gathered is not None:  # rank 0
            fields = solver.record_fields()
            records = [{"kind": "iter", "epoch": epoch, "step": step + i + 1, **combine(list(r), fields),
                        "wall_time": w}
                       for i, (r, w) in enumerate(zip(zip(*(g["iters"] for g in gathered)), wall))]
            step += len(records)
            losses = [v for r in records if isinstance(v := r.get("loss"), (int, float))]
            last = {"kind": "epoch", "epoch": epoch, "step": step,
                    **combine([g["extra"] for g in gathered], fields)}
            last.update(loss=sum(losses) / len(losses) if losses else float("nan"),
                        wall_time=time.perf_counter() - t0,
                        bytes_sent=sum(g["bytes"] for g in gathered),
                        train_acc=train_acc, test_acc=test_acc, test_loss=test_loss, lr=lr(epoch))
            history.extend(records + [last])
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.3g}", test_acc=f"{100 * test_acc:.1f}%")
        if run_dir is not None and checkpoint_every and ((epoch + 1) % checkpoint_every == 0 or epoch == epochs - 1):
            checkpoint.save(comm, run_dir, epoch, {"solver": solver.state_dict(), "epoch": epoch})
    if bar is not None:
        bar.close()
    return comm.bcast(last)


def _progress(epochs: int, start_epoch: int, n_batches: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=(epochs - start_epoch) * n_batches, unit="step", dynamic_ncols=True, leave=False)

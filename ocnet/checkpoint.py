"""Atomic files and sharded checkpoints.

Nothing in a run directory is ever torn: every file is written to a temporary name in the
same directory and renamed over the target (``os.replace`` is atomic on POSIX).  A
checkpoint is one shard per rank plus ``latest.json`` naming the newest complete epoch,
written only after every shard is on disk; shards load with ``weights_only=True``, so a
checkpoint file cannot execute code.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .comm import Comm


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def shard_path(run_dir: str | Path, epoch: int, rank: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:04d}" / f"rank_{rank:03d}.pt"


def save(comm: Comm, run_dir: str | Path, epoch: int, state: dict[str, Any]) -> None:
    """Every rank saves its shard of the state after ``epoch``; then rank 0 marks it complete."""
    path = shard_path(run_dir, epoch, comm.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())
    comm.barrier()  # every shard is on disk before the checkpoint is declared complete
    if comm.rank == 0:
        atomic_write(Path(run_dir) / "checkpoints" / "latest.json",
                     json.dumps({"epoch": epoch, "ranks": comm.size}))


def latest(run_dir: str | Path) -> dict[str, int] | None:
    """``{"epoch": e, "ranks": P}`` of the newest complete checkpoint, or ``None``."""
    marker = Path(run_dir) / "checkpoints" / "latest.json"
    if not marker.exists():
        return None
    return json.loads(marker.read_text())


def complete_epoch(run_dir: str | Path, ranks: int) -> int:
    """The epoch of the newest complete checkpoint in ``run_dir`` written by ``ranks`` ranks.

    Raises
    ------
    FileNotFoundError
        When there is no complete checkpoint, or it was written by another number of ranks.
    """
    info = latest(run_dir)
    if info is None:
        raise FileNotFoundError(f"no complete checkpoint in {Path(run_dir) / 'checkpoints'}")
    if info["ranks"] != ranks:
        raise FileNotFoundError(f"the checkpoint in {run_dir} was written by {info['ranks']} ranks, "
                                f"this job has {ranks}: resume with the same number of ranks")
    return info["epoch"]


def load(comm: Comm, run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[int, dict[str, Any]]:
    """This rank's shard of the newest complete checkpoint: ``(epoch, state)``
    (raises as :func:`complete_epoch`)."""
    epoch = complete_epoch(run_dir, comm.size)
    path = shard_path(run_dir, epoch, comm.rank)
    return epoch, torch.load(path, map_location=device, weights_only=True)

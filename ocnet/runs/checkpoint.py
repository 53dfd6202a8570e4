"""Atomic files and sharded checkpoints that resume on any number of ranks.

Nothing in a run directory is ever torn: every file is written to a temporary name in the
same directory and renamed over the target (``os.replace`` is atomic on POSIX).

A checkpoint is a directory ``checkpoints/epoch_EEEE`` (after the whole epoch ``E``) or
``checkpoints/epoch_EEEE_batch_BBBBB`` (after its first ``B`` batches) holding one shard
``rank_RRR.pt`` per rank (on a grid of data groups, :mod:`ocnet.ranks.replicas`, group ``g > 0``'s
in ``group_GGG/``); ``checkpoints/latest.json`` names the newest complete one and is
written only after every shard is on disk.  A shard carries its identity (rank, ranks, epoch,
batch, layer range) beside the state, and loads with ``weights_only=True``, so a checkpoint
file cannot execute code.

The solvers key their state globally — parameters and optimiser state by the whole
problem's parameter names, per-sample rows by global boundary or time-point index — so the
union of the shards is one state of the whole run.  A job on the same partition reads its
own shard; a job on another one reads every shard (memory-mapped: only what a rank takes
is read into memory) and each solver takes its part (:meth:`ocnet.solvers.Solver.load_state_dict`).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..model.grid import SHAPES, Partition
from ..ranks.atomic import atomic_write
from ..ranks.comm import Comm
from ..solvers.records import jsonable
from . import faults

if TYPE_CHECKING:
    from ..solvers.base import Solver

FORMAT = "ocnet-checkpoint-1"  # the shard's and latest.json's format tag
_DIR = re.compile(r"epoch_(\d+)(?:_batch_(\d+))?")
_SHARD = re.compile(r"rank_(\d+)\.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, torn, corrupt, misplaced, or written for
    another configuration; the one-line message names the file."""


class WriteError(Exception):
    """A checkpoint file could not be written (a full disk, a quota): raised by :func:`save` on
    every rank together.  The one-line message names the file and the space free there; the
    checkpoint before stays the newest complete one."""


# -- where things are ---------------------------------------------------------------------------
def write_model(path: str | Path, shards: list[dict[str, torch.Tensor]]) -> None:
    """Write the whole network's parameters, gathered from the ranks' ``problem_state``
    shards, as one ``state_dict`` file (atomically; CPU tensors)."""
    buf = io.BytesIO()
    torch.save({k: v.cpu() for shard in shards for k, v in shard.items()}, buf)
    atomic_write(Path(path), buf.getvalue())


def checkpoint_dir(run_dir: str | Path, epoch: int, batch: int | None = None) -> Path:
    """The directory of the checkpoint after epoch ``epoch`` (``batch=None``) or after its
    first ``batch`` batches."""
    name = f"epoch_{epoch:04d}" if batch is None else f"epoch_{epoch:04d}_batch_{batch:05d}"
    return Path(run_dir) / "checkpoints" / name


def shard_path(run_dir: str | Path, epoch: int, rank: int, batch: int | None = None, group: int = 0) -> Path:
    """The shard of layer rank ``rank`` (of data group ``group``: :mod:`ocnet.ranks.replicas`)."""
    directory = checkpoint_dir(run_dir, epoch, batch)
    return (directory if group == 0 else directory / f"group_{group:03d}") / f"rank_{rank:03d}.pt"


def _group(data: Comm | None) -> tuple[int, int]:
    """``(group, groups)`` of a rank whose data communicator is ``data`` (``None``: one group)."""
    return (data.rank, data.size) if data is not None else (0, 1)


def _marker(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints" / "latest.json"


def _starts(partition: Partition) -> list[int]:
    """The first layer of each stage: of each rank's slice, or of every virtual stage."""
    return [partition.stage_bounds(s)[0] for s in range(partition.n_stages)]


def _virtual(partition: Partition) -> list[Any] | None:
    """``[chunks per rank, shape]`` of a partition into virtual stages, else ``None``."""
    return [partition.chunks_per_rank, partition.shape] if partition.is_virtual else None


def _layers(partition: Partition, rank: int) -> list[Any]:
    """What a shard records of the layers it holds: ``[start, stop]``, or one such pair per
    chunk on a partition into virtual stages."""
    if partition.is_virtual:
        return [list(chunk) for chunk in partition.chunks(rank)]
    return list(partition.bounds(rank))


def _recorded(info: dict[str, Any]) -> Partition | None:
    """The partition a checkpoint's ``latest.json`` records (``None``: not recorded)."""
    if info["starts"] is None:
        return None
    if info.get("virtual"):
        chunks, shape = info["virtual"]
        return Partition.virtual(info["n_layers"], info["ranks"], chunks, shape)
    return Partition(info["n_layers"], info["ranks"], tuple(info["starts"]))


# -- writing ----------------------------------------------------------------------------------
def save(comm: Comm, run_dir: str | Path, epoch: int, state: dict[str, Any], *, batch: int | None = None,
         meta: dict[str, Any] | None = None, partition: Partition | None = None, data: Comm | None = None) -> None:
    """Every rank writes its shard of ``state``; then rank 0 marks the checkpoint complete.

    Parameters
    ----------
    epoch, batch : int
        The checkpoint is taken after epoch ``epoch`` (``batch=None``) or after the first
        ``batch`` batches of it.
    state : dict
        This rank's state: tensors and plain values (``{"solver": solver.state_dict()}``).
    meta : dict, optional
        Small JSON-able bookkeeping of the training loop, kept in ``latest.json`` (rank 0's).
    partition : Partition, optional
        The job's partition, recorded so that each shard's layer range is checked on loading
        and a job with the same number of ranks but other cuts takes its part correctly.
    data : Comm, optional
        On a grid of data groups, the ranks that hold this rank's layers in every group
        (:class:`ocnet.ranks.replicas.Grid`): ``comm`` is then the group's, each group writes its
        own shards (group ``g > 0`` into ``group_GGG/``), and the first rank of the first
        group marks the checkpoint once all are written.

    Raises
    ------
    WriteError
        On every rank, when some rank could not write its shard or ``latest.json`` (the
        lowest such rank's message); the incomplete checkpoint is removed, and the one
        before stays the newest.
    """
    if partition is not None and partition.n_ranks != comm.size:
        raise ValueError(f"a partition over {partition.n_ranks} ranks for a job of {comm.size}")
    layers = _layers(partition, comm.rank) if partition is not None else None
    group, groups = _group(data)
    path = shard_path(run_dir, epoch, comm.rank, batch, group)
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "rank": comm.rank, "ranks": comm.size, "epoch": epoch, "batch": batch,
                "layers": layers, "state": state}, buf)

    def shard() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buf.getvalue(),
                     before_rename=lambda: faults.inject("checkpoint", group * comm.size + comm.rank))

    # every shard is on disk (in every group) before the checkpoint is declared complete; a
    # rank that could not write its shard tells every other, so that all stop together
    error = _agreed(_written(path, shard), comm, data if groups > 1 else None)
    first = comm.rank == 0 and group == 0
    if error is None:
        if first:
            info = {"format": FORMAT, "epoch": epoch, "batch": batch, "ranks": comm.size,
                    "n_layers": partition.n_layers if partition is not None else None,
                    "starts": _starts(partition) if partition is not None else None,
                    **({"virtual": _virtual(partition)} if partition is not None and partition.is_virtual else {}),
                    "meta": jsonable(meta or {}), **({"groups": groups} if groups > 1 else {})}
            error = _written(_marker(run_dir), lambda: atomic_write(_marker(run_dir),
                                                                    json.dumps(info, allow_nan=False) + "\n"))
        error = _agreed(error, data if groups > 1 else None, comm)  # from the first rank of the first group
    if error is not None:
        if first:  # the space the other shards took is of no use: latest.json does not name them
            _discard(run_dir, epoch, batch)
        raise WriteError(error)


def _written(path: Path, write: Callable[[], Any]) -> str | None:
    """Run ``write`` (of the file ``path``): ``None`` when it succeeds, else the one line that
    says why not, with the space free where it was to go."""
    try:
        write()
        return None
    except OSError as e:
        where = next((p for p in path.parents if p.is_dir()), Path("."))
        try:
            free = f" ({_size(shutil.disk_usage(where).free)} free there)"
        except OSError:
            free = ""
        return f"cannot write {path}: {e.strerror or e}{free}"


def _agreed(error: str | None, *comms: Comm | None) -> str | None:
    """Every rank's answer to whether some rank failed: over each communicator in turn, the
    message of its lowest failing rank (one reduction each while none fails)."""
    for c in comms:
        if c is None:
            continue
        failed = c.allreduce(c.rank if error is not None else c.size, op="min")
        if failed < c.size:
            error = c.bcast(error, root=failed)
    return error


def _discard(run_dir: str | Path, epoch: int, batch: int | None) -> None:
    """Remove the incomplete checkpoint of ``(epoch, batch)`` unless ``latest.json`` names it."""
    try:
        info = latest(run_dir)
    except CheckpointError:
        return
    if info is None or (info["epoch"], info["batch"]) != (epoch, batch):
        shutil.rmtree(checkpoint_dir(run_dir, epoch, batch), ignore_errors=True)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n >= 10 else f"{n:.1f} {unit}"
        n /= 1000
    return ""


# -- reading ----------------------------------------------------------------------------------
def latest(run_dir: str | Path) -> dict[str, Any] | None:
    """The parsed and checked ``latest.json`` of the newest complete checkpoint, or ``None``
    when the run has none: ``{"format", "epoch", "batch", "ranks", "n_layers", "starts",
    "meta"}`` and, from a job of several data groups, ``"groups"`` (``ranks`` counts one
    group's; ``batch`` is ``None`` after a whole epoch; ``n_layers`` and ``starts``, the
    first layer of each rank's slice, are ``None`` when the partition was not recorded) and,
    from a partition into virtual stages, ``"virtual": [stages per rank, shape]`` (``starts``
    then gives the first layer of every stage).

    Raises
    ------
    CheckpointError
        When ``run_dir`` does not exist, or ``latest.json`` is unreadable or malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory")
    marker = _marker(run_dir)
    if not marker.exists():
        return None
    try:
        info = json.loads(marker.read_bytes().decode())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{marker}: not a checkpoint marker ({_first_line(e)})") from None
    _check_info(marker, info)
    return info


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check_info(marker: Path, info: Any) -> None:
    """Raise :class:`CheckpointError` unless ``info`` is a well-formed ``latest.json``."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{marker}: {why}")

    if not isinstance(info, dict):
        raise bad(f"expected a JSON object, found {type(info).__name__}")
    missing = [k for k in ("format", "epoch", "batch", "ranks", "n_layers", "starts", "meta") if k not in info]
    if missing:
        raise bad(f"no {', '.join(repr(k) for k in missing)}")
    if info["format"] != FORMAT:
        raise bad(f"format {info['format']!r}, expected {FORMAT!r}")
    for key, ok, what in (("epoch", _is_int(info["epoch"]), "an integer >= 0"),
                          ("batch", info["batch"] is None or _is_int(info["batch"]), "null or an integer >= 0"),
                          ("ranks", _is_int(info["ranks"], 1), "an integer >= 1"),
                          ("meta", isinstance(info["meta"], dict), "an object")):
        if not ok:
            raise bad(f"{key!r} must be {what}, got {info[key]!r}")
    if not _is_int(info.get("groups", 1), 1):
        raise bad(f"'groups' must be an integer >= 1, got {info['groups']!r}")
    n, starts = info["n_layers"], info["starts"]
    if (n is None) != (starts is None):
        raise bad("'n_layers' and 'starts' are both null or both given")
    if starts is not None:
        if not (_is_int(n, 1) and isinstance(starts, list) and all(_is_int(s) for s in starts)):
            raise bad(f"'n_layers' must be an integer >= 1 and 'starts' a list of integers, got {n!r}, {starts!r}")
        virtual = info.get("virtual")
        if virtual is not None and not (isinstance(virtual, list) and len(virtual) == 2 and _is_int(virtual[0], 2)
                                        and virtual[1] in SHAPES):
            raise bad(f"'virtual' must be [stages per rank >= 2, one of {list(SHAPES)}], got {virtual!r}")
        stages = info["ranks"] * (virtual[0] if virtual else 1)
        # fields that disagree: say so, not what a job of that many ranks would need
        if len(starts) != stages:
            raise bad(f"'ranks' is {info['ranks']} but 'starts' gives the first layers of {len(starts)}"
                      f"{' virtual stages' if virtual else ''}: the file is damaged")
        if stages > n:
            raise bad(f"'ranks' is {info['ranks']} but 'n_layers' is {n}: no job of more "
                      f"{'stages' if virtual else 'ranks'} than layers wrote it; the file is damaged")
        try:
            recorded = _recorded(info)
        except ValueError as e:
            raise bad(str(e)) from None
        if virtual and recorded is not None and _starts(recorded) != starts:
            raise bad(f"'starts' {starts} are not the virtual stages of {n} layers: the file is damaged")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_files(run_dir: str | Path, info: dict[str, Any]) -> None:
    """Check that the checkpoint ``info`` (its ``latest.json``) names is there, before anything
    else believes it: its directory, and a regular file for each shard (of each data group).

    Raises
    ------
    CheckpointError
        Naming what is missing or is no shard (a directory, a device, a dangling link).
    """
    marker = _marker(run_dir)
    directory = checkpoint_dir(run_dir, info["epoch"], info["batch"])
    after = f"epoch {info['epoch']}" if info["batch"] is None else f"batch {info['batch']} of epoch {info['epoch']}"
    if not directory.is_dir():
        there = "is not there" if not os.path.lexists(directory) else "is not a directory"
        raise CheckpointError(f"{marker} names the checkpoint after {after}, but {directory} {there}: "
                              "latest.json is damaged, or that checkpoint was removed")
    for group in range(info.get("groups", 1)):
        for rank in range(info["ranks"]):
            path = shard_path(run_dir, info["epoch"], rank, info["batch"], group)
            problem = _not_a_file(path)
            if problem is not None:
                raise CheckpointError(f"{path}: {problem}")


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint file it could read, or ``None`` when it is a regular file."""
    link = f"a link to {os.readlink(path)}, " if path.is_symlink() else ""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return f"{link}which does not exist" if link else "missing (the checkpoint is incomplete)"
    except OSError as e:
        return f"{link}cannot be read: {e.strerror or e}"
    if stat.S_ISREG(mode):
        return None
    kind = next((kind for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                                         (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                                         (stat.S_ISSOCK, "a socket")) if test(mode)), "a special file")
    return f"{link}{kind}, not a checkpoint file"


def _read_shard(path: Path, rank: int, info: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """The state in shard ``path`` of rank ``rank`` of the checkpoint ``info``, its identity
    checked; memory-mapped, so that only the tensors used are read."""
    problem = _not_a_file(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty")
    if not zipfile.is_zipfile(path):  # a torch file is a zip archive, whose directory comes last
        raise CheckpointError(f"{path}: truncated or corrupt (not a complete torch file)")
    try:
        shard = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except Exception as e:  # torch reports a torn or foreign file by several exception types
        if "weights only" in str(e).lower() or "weights_only" in str(e):
            raise CheckpointError(f"{path}: refused: it holds objects other than tensors and plain values "
                                  "(weights_only loading)") from None
        raise CheckpointError(f"{path}: not a readable checkpoint shard, truncated or corrupt "
                              f"({_first_line(e)})") from None
    if not isinstance(shard, dict) or shard.get("format") != FORMAT or "state" not in shard:
        raise CheckpointError(f"{path}: not an ocnet checkpoint shard")
    recorded = _recorded(info)
    layers = None if recorded is None else _layers(recorded, rank)
    expected = {"rank": rank, "ranks": info["ranks"], "epoch": info["epoch"], "batch": info["batch"],
                "layers": layers}
    for key, value in expected.items():
        if shard.get(key) != value:
            raise CheckpointError(f"{path}: a shard of {key} {shard.get(key)!r} where {value!r} belongs "
                                  "(a swapped or misplaced shard?)")
    return shard["state"]


def _shards(comm: Comm, run_dir: str | Path, device: torch.device | str, partition: Partition,
            data: Comm | None = None) -> tuple[dict[str, Any], list[tuple[Path, Any]], bool]:
    """``(info, [(path, state), …], own)``: the shards this rank reads — its own (``own``)
    where the job has the checkpoint's partition and data groups, else every shard of its
    data group, or of every group where their number differs (on the CPU)."""
    info = latest(run_dir)
    if info is None:
        raise CheckpointError(f"{_marker(run_dir)}: missing: {run_dir} has no complete checkpoint")
    check_files(run_dir, info)
    marker = _marker(run_dir)
    if partition.n_ranks != comm.size:
        raise ValueError(f"a partition over {partition.n_ranks} ranks for a job of {comm.size}")
    if info["n_layers"] is not None and info["n_layers"] != partition.n_layers:
        raise CheckpointError(f"{marker}: the checkpoint holds a network of {info['n_layers']} layers, "
                              f"this job's has {partition.n_layers} (another --layers?)")
    group, groups = _group(data)
    written = info.get("groups", 1)
    own = written == groups and info["ranks"] == comm.size and (
        info["starts"] is None or (info["starts"] == _starts(partition) and info.get("virtual") == _virtual(partition)))
    ranks = [comm.rank] if own else range(info["ranks"])
    # another number of data groups: every group's shards, for the per-sample rows each kept
    paths = [(r, shard_path(run_dir, info["epoch"], r, info["batch"], g))
             for g in ([group] if written == groups else range(written)) for r in ranks]
    return info, [(path, _read_shard(path, r, info, device if own else "cpu")) for r, path in paths], own


def load(comm: Comm, run_dir: str | Path, device: torch.device | str,
         partition: Partition, data: Comm | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """This rank's state of the newest complete checkpoint, whatever number of ranks wrote it.

    Parameters
    ----------
    device : torch.device or str
        Where the tensors of the rank's own shard go; when the checkpoint was written on
        another partition, the merged state stays on the CPU (memory-mapped) and the
        solver's ``load_state_dict`` moves what it takes.
    partition : Partition
        This job's partition.
    data : Comm, optional
        As for :func:`save`: each data group reads its own shards.

    Returns
    -------
    info : dict
        The checkpoint's ``latest.json`` (:func:`latest`).
    state : dict
        What the ranks saved, merged over the shards read: ``state["solver"]`` is what this
        rank's solver's ``load_state_dict`` takes.

    Raises
    ------
    CheckpointError
        For a missing, torn, corrupt, misplaced or foreign checkpoint file (named).
    """
    info, shards, _ = _shards(comm, run_dir, device, partition, data)
    return info, _merge([s for _, s in shards], checkpoint_dir(run_dir, info["epoch"], info["batch"]))


def restore(comm: Comm, run_dir: str | Path, device: torch.device | str,
            solver: Solver, data: Comm | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`load` the newest checkpoint into ``solver`` (from ``state["solver"]``), checked
    against it: its tensors have this network's shapes and dtypes, and a checkpoint of
    another partition goes only to a solver whose state is keyed globally
    (:meth:`Solver.reshardable`).  Returns ``(info, state)`` as :func:`load`, except that
    ``state["compress"]`` lists every shard's residues of the gradient exchange (where saved).

    Raises
    ------
    CheckpointError
        As :func:`load`, and for a checkpoint that does not fit the solver (named).
    """
    partition = solver.network.partition
    info, shards, own = _shards(comm, run_dir, device, partition, data)
    directory = checkpoint_dir(run_dir, info["epoch"], info["batch"])
    if not own and not solver.reshardable():
        raise CheckpointError(f"{directory}: solver {solver.name!r} cannot resume on another rank count "
                              f"or partition (written by {info['ranks']} ranks, this job has {comm.size})")
    fresh = solver.state_dict()
    for path, state in shards:
        if not isinstance(state, dict) or not isinstance(state.get("solver"), dict):
            raise CheckpointError(f"{path}: holds no solver state")
        _compare(path, state["solver"], fresh)
    merged = _merge([s for _, s in shards], directory)
    # the gradient exchange's residues: every shard's, for the exchange to sum by tensor
    merged["compress"] = [s["compress"] for _, s in shards if isinstance(s.get("compress"), dict)]
    missing = _missing(fresh, merged["solver"])
    if missing:
        raise CheckpointError(f"{directory}: holds no {missing} (another network or solver?)")
    try:
        solver.load_state_dict(merged["solver"])
    except CheckpointError:
        raise
    except (KeyError, IndexError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{directory}: does not fit this {solver.name} solver: {_first_line(e)}") from None
    return info, merged


def _merge(states: list[Any], where: Path, path: str = "") -> Any:
    """The union of the shards' states: dictionaries key by key, lists item by item; of a
    value present in several shards (a replicated one), the first."""
    first = states[0]
    if isinstance(first, dict) and all(isinstance(s, dict) for s in states):
        keys = list(dict.fromkeys(k for s in states for k in s))
        return {k: _merge([s[k] for s in states if k in s], where, f"{path}/{k}") for k in keys}
    if isinstance(first, list) and all(isinstance(s, list) for s in states):
        if len({len(s) for s in states}) > 1:
            raise CheckpointError(f"{where}: the shards disagree on the length of {path.lstrip('/')}")
        return [_merge(list(items), where, f"{path}/{i}") for i, items in enumerate(zip(*states))]
    return first


def _leaves(state: Any, path: str = "") -> dict[str, Any]:
    """``{"a/b/c": value}`` for the tensors in nested dictionaries and lists."""
    if isinstance(state, dict):
        return {k: v for key, item in state.items() for k, v in _leaves(item, f"{path}/{key}").items()}
    if isinstance(state, (list, tuple)):
        return {k: v for i, item in enumerate(state) for k, v in _leaves(item, f"{path}/{i}").items()}
    return {path.lstrip("/"): state} if isinstance(state, torch.Tensor) else {}


def _compare(path: Path, saved: Any, fresh: dict[str, Any]) -> None:
    """Raise unless every tensor that ``saved`` and this solver's ``fresh`` state both hold
    has one shape and dtype in both."""
    mine = _leaves(fresh)
    for key, t in _leaves(saved).items():
        own = mine.get(key)
        if own is None:
            continue
        if t.shape != own.shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, this network's {tuple(own.shape)} "
                                  "(another --width, --channels or --layers?)")
        if t.dtype != own.dtype:
            raise CheckpointError(f"{path}: {key} is {t.dtype}, this network's {own.dtype} (another --dtype?)")


def _missing(fresh: dict[str, Any], saved: dict[str, Any]) -> str | None:
    """The first tensor of this solver's ``fresh`` state that ``saved`` lacks, or ``None``."""
    have = _leaves(saved)
    return next((key for key in _leaves(fresh) if key not in have), None)


# -- cleaning up --------------------------------------------------------------------------------
def _order(name: str) -> tuple[int, float] | None:
    """The position of checkpoint directory ``name`` in the run: after epoch E's batch B, or
    after the whole epoch E (``None`` for a name that is not a checkpoint's)."""
    m = _DIR.fullmatch(name)
    if m is None:
        return None
    return int(m.group(1)), float("inf") if m.group(2) is None else int(m.group(2))


def remove_leftovers(run_dir: str | Path) -> list[Path]:
    """Delete what interrupted writes left in ``run_dir``: temporary ``.*.tmp`` files
    anywhere in it, checkpoint directories newer than the complete one ``latest.json``
    names (all of them when there is none), and in that one the shards of ranks it does not
    have.  Returns what was deleted.

    Raises
    ------
    CheckpointError
        When ``latest.json`` is there but unreadable (nothing is deleted then).
    """
    run_dir = Path(run_dir)
    info = latest(run_dir)
    removed = [p for p in run_dir.rglob(".*.tmp") if p.is_file()]
    for p in removed:
        p.unlink()
    root = run_dir / "checkpoints"
    complete = None if info is None else _order(checkpoint_dir(run_dir, info["epoch"], info["batch"]).name)
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        position = _order(d.name)
        if not d.is_dir() or position is None:
            continue
        if complete is None or position > complete:
            shutil.rmtree(d)
            removed.append(d)
        elif position == complete:
            assert info is not None
            for shard in d.iterdir():
                m = _SHARD.fullmatch(shard.name)
                if m is not None and int(m.group(1)) >= info["ranks"]:
                    shard.unlink()
                    removed.append(shard)
    return removed

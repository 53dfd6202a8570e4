"""Per-sample state: one row per training sample, kept across optimiser steps.

Some solvers carry a state for every training sample from one epoch to the next: the
auxiliary states ``z_b`` and multipliers ``μ_b`` of the penalty methods (one per block
boundary ``b``), MGRIT's per-sample warm start (one per time point).  A :class:`SampleStore`
holds such rows under integer keys: row ``i`` of key ``k`` belongs to training sample ``i``,
so a mini-batch reads and writes the rows of its ``index``.  Per-sample state is why those
solvers refuse data augmentation: a sample must look the same every time it comes.

The store may keep its rows through a communication filter (``encode`` on write, ``decode``
on read) to save memory: ``s²`` less for the s×s downsampling filter.

On a grid of D data groups (:mod:`ocnet.ranks.replicas`) group ``g`` numbers its own samples: its
row ``j`` is training sample ``j·D + g``.  Its :meth:`SampleStore.state_dict` then says so in
each key (``"3@1/2"``: key 3, group 1 of 2), so that the union of every group's state holds
each sample once, and :meth:`SampleStore.load_state_dict` takes the rows of this process's
samples from it under any number of groups.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from .filters import IDENTITY, Filter

#: This process's data group and the number of groups (:func:`number_samples`).
_NUMBERING = (0, 1)


def number_samples(group: int, groups: int) -> None:
    """Say that this process's rows are training samples ``j·groups + group`` (the training
    loop's grid sets it; one group numbers them as they are)."""
    global _NUMBERING
    _NUMBERING = (group, groups)


class SampleStore:
    """Rows ``(n_samples, …)`` per integer key, allocated on first write.

    Parameters
    ----------
    filter : Filter
        Applied to what is stored (``encode``) and to what is read (``decode``).
    """

    def __init__(self, filter: Filter = IDENTITY) -> None:
        self.filter = filter
        self.rows: dict[int, torch.Tensor] = {}

    def __contains__(self, key: int) -> bool:
        return key in self.rows

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def allocate(self, key: int, n: int, like: torch.Tensor) -> None:
        """Zero rows for ``n`` samples under ``key``, shaped like one encoded ``like[0]``."""
        enc = self.filter.encode(like[:1].detach())
        self.rows[key] = torch.zeros((n, *enc.shape[1:]), dtype=enc.dtype, device=enc.device)

    def get(self, key: int, index: torch.Tensor) -> torch.Tensor:
        """The rows of samples ``index`` under ``key``: ``(len(index), …)``, a copy (zero for
        a sample never written)."""
        rows = self._covering(key, index)
        return self.filter.decode(rows[index.to(rows.device)])

    def set(self, key: int, index: torch.Tensor, value: torch.Tensor) -> None:
        """Write ``value`` ``(len(index), …)`` as the rows of samples ``index`` (a key met for
        the first time is allocated for them)."""
        if key not in self.rows:
            self.allocate(key, 0, value)
        rows = self._covering(key, index)
        rows[index.to(rows.device)] = self.filter.encode(value.detach()).to(rows.dtype)

    def _covering(self, key: int, index: torch.Tensor) -> torch.Tensor:
        """The rows of ``key``, grown with zero rows to cover ``index``."""
        rows = self.rows[key]
        size = int(index.max()) + 1 if len(index) else 0
        if rows.shape[0] < size:
            rows = self.rows[key] = torch.cat([rows, rows.new_zeros((size - rows.shape[0], *rows.shape[1:]))])
        return rows

    def fill_(self, value: float) -> None:
        for rows in self.rows.values():
            rows.fill_(value)

    @property
    def nbytes(self) -> int:
        """Memory held by the stored rows, in bytes."""
        return sum(r.numel() * r.element_size() for r in self.rows.values())

    def sq_norm(self, chunk: int = 1024) -> float:
        """``Σ_k Σ_i ‖decode(row_i)‖²``: the squared norm of the rows as they are read."""
        total = 0.0
        for rows in self.rows.values():
            for i in range(0, len(rows), chunk):
                total += float((self.filter.decode(rows[i:i + chunk]).double() ** 2).sum())
        return total

    def state_dict(self) -> dict[str, Any]:
        """The rows under their keys (as strings; ``"key@group/groups"`` on a grid)."""
        group, groups = _NUMBERING
        tag = f"@{group}/{groups}" if groups > 1 else ""
        return {f"{k}{tag}": r for k, r in self.rows.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None,
                        keys: Iterable[int] | None = None) -> None:
        """Copy the rows of ``state`` (of :meth:`state_dict`; only those under ``keys`` when
        given: a rank's part of the union of all ranks' states) onto ``device``.  Rows that
        another number of data groups wrote are gathered into this group's numbering."""
        wanted = None if keys is None else {int(k) for k in keys}
        blocks: dict[int, list[tuple[int, int, torch.Tensor]]] = {}
        for name, rows in state.items():
            key, _, numbering = name.partition("@")
            group, groups = map(int, numbering.split("/")) if numbering else (0, 1)
            if wanted is None or int(key) in wanted:
                blocks.setdefault(int(key), []).append((group, groups, rows))
        self.rows = {k: _renumber(parts).to(device) if device is not None else _renumber(parts)
                     for k, parts in blocks.items()}


def _renumber(parts: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    """This process's rows from the rows ``(group, groups, rows)`` that groups kept: row ``j``
    of group ``g`` of ``G`` is sample ``j·G + g``; ours are those of our numbering."""
    group, groups = _NUMBERING
    for g, G, rows in parts:
        if (g, G) == (group, groups):
            return rows.clone()
    index, taken = [], []
    for g, G, rows in parts:
        samples = torch.arange(len(rows)) * G + g
        keep = samples % groups == group
        index.append(samples[keep] // groups)
        taken.append(rows[keep.to(rows.device)])
    at = torch.cat(index)
    like = parts[0][2]
    out = like.new_zeros((int(at.max()) + 1 if len(at) else 0, *like.shape[1:]))
    out[at.to(out.device)] = torch.cat(taken)
    return out

"""Per-sample state: one row per training sample, kept across optimiser steps.

Some solvers carry a state for every training sample from one epoch to the next: the
auxiliary states ``z_b`` and multipliers ``μ_b`` of the penalty methods (one per block
boundary ``b``), MGRIT's per-sample warm start (one per time point).  A :class:`SampleStore`
holds such rows under integer keys: row ``i`` of key ``k`` belongs to training sample ``i``,
so a mini-batch reads and writes the rows of its ``index``.  Per-sample state is why those
solvers refuse data augmentation: a sample must look the same every time it comes.

The store may keep its rows through a communication filter (``encode`` on write, ``decode``
on read) to save memory: ``s²`` less for the s×s downsampling filter.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from .filters import IDENTITY, Filter


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
        """The rows under their keys (as strings)."""
        return {str(k): r for k, r in self.rows.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str | None = None,
                        keys: Iterable[int] | None = None) -> None:
        """Copy the rows of ``state`` (of :meth:`state_dict`; only those under ``keys`` when
        given: a rank's part of the union of all ranks' states) onto ``device``."""
        wanted = None if keys is None else {str(k) for k in keys}
        self.rows = {int(k): r.to(device).clone() if device is not None else r.clone()
                     for k, r in state.items() if wanted is None or k in wanted}

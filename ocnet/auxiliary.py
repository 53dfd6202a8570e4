"""Per-sample auxiliary states at block boundaries (penalty and augmented-Lagrangian solvers).

The auxiliary state ``z_b`` (and the multiplier ``μ_b``) is one tensor per *training sample*
at each block boundary ``b`` a rank owns: row ``i`` belongs to training sample ``i``, so a
mini-batch reads and writes the rows of its ``index``.  The store may keep the rows through
a communication filter (``encode`` on write, ``decode`` on read) to save memory: ``s²`` less
for the s×s downsampling filter.
"""
from __future__ import annotations

from typing import Any

import torch

from .filters import IDENTITY, Filter


class AuxiliaryStates:
    """Rows ``(n_samples, …)`` per boundary index, allocated on first write.

    Parameters
    ----------
    filter : Filter
        Applied to what is stored (``encode``) and to what is read (``decode``).
    """

    def __init__(self, filter: Filter = IDENTITY) -> None:
        self.filter = filter
        self.rows: dict[int, torch.Tensor] = {}

    def __contains__(self, b: int) -> bool:
        return b in self.rows

    def allocate(self, b: int, n: int, like: torch.Tensor) -> None:
        """Zero rows for ``n`` samples at boundary ``b``, shaped like one encoded ``like[0]``."""
        enc = self.filter.encode(like[:1].detach())
        self.rows[b] = torch.zeros((n, *enc.shape[1:]), dtype=enc.dtype, device=enc.device)

    def get(self, b: int, index: torch.Tensor) -> torch.Tensor:
        """The states of samples ``index`` at boundary ``b``: ``(len(index), …)``, a copy."""
        return self.filter.decode(self.rows[b][index.to(self.rows[b].device)])

    def set(self, b: int, index: torch.Tensor, value: torch.Tensor) -> None:
        """Write ``value`` ``(len(index), …)`` as the states of samples ``index``."""
        rows = self.rows[b]
        rows[index.to(rows.device)] = self.filter.encode(value.detach()).to(rows.dtype)

    def fill_(self, value: float) -> None:
        for rows in self.rows.values():
            rows.fill_(value)

    @property
    def nbytes(self) -> int:
        """Memory held by the stored rows, in bytes."""
        return sum(r.numel() * r.element_size() for r in self.rows.values())

    def sq_norm(self, chunk: int = 1024) -> float:
        """``Σ_b Σ_i ‖decode(row_i)‖²``: the squared norm of the states as they are read."""
        total = 0.0
        for rows in self.rows.values():
            for i in range(0, len(rows), chunk):
                total += float((self.filter.decode(rows[i:i + chunk]).double() ** 2).sum())
        return total

    def state_dict(self) -> dict[str, Any]:
        return {str(b): r for b, r in self.rows.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = {int(b): r.clone() for b, r in state.items()}

"""Initial guesses for MGRIT's solves: what a one-shot step starts its iterations from.

A strategy is asked for a guess before each solve and told the solution after it, for the
states (``what = "u"``) and the adjoints (``"lam"``) separately; it carries whatever it
remembers through ``state_dict`` so that a resumed run starts from the same guesses.  That
state is keyed by global time point, so that a run resumed on another number of ranks
moves each point's guess to the rank that now owns it (``global_state = True`` says so; the
MGRIT solver refuses such a resume with a strategy that does not).  This is torchbraid's
``setFwdInitialGuess`` idea as an object: a new strategy (extrapolating in the optimiser's
steps, say) is a class with these four methods, passed to the MGRIT solver.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol

import torch

from ..ranks.store import SampleStore


class WarmStart(Protocol):
    """Guesses for a rank's points of one solve.

    ``points`` are the time points the rank owns (forward time for ``"u"``, reversed time for
    ``"lam"``), ``index`` the batch's sample positions ``(batch,)``; a guess is one tensor
    ``(batch, …)`` per point, or ``None`` for MGRIT's default (zero but for the initial value).
    """

    def guess(self, what: str, index: torch.Tensor, points: range) -> list[torch.Tensor] | None: ...

    def remember(self, what: str, index: torch.Tensor, points: range, values: list[torch.Tensor]) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], device: torch.device,
                        points: Mapping[str, range] | None = None) -> None:
        """Load ``state`` onto ``device``; with ``points`` (per solve, this rank's points) only
        their part of it: ``state`` may be the union of all ranks' states."""


class Cold:
    """No warm start: every solve starts from zero."""

    global_state = True

    def guess(self, what: str, index: torch.Tensor, points: range) -> list[torch.Tensor] | None:
        return None

    def remember(self, what: str, index: torch.Tensor, points: range, values: list[torch.Tensor]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device,
                        points: Mapping[str, range] | None = None) -> None:
        pass


class PreviousBatch(Cold):
    """The previous step's solution, whatever samples it saw (when the batch size matches:
    every rank knows the batch size, so every rank decides alike)."""

    def __init__(self) -> None:
        self.last: dict[str, dict[int, torch.Tensor]] = {}  # per solve: the state at each point

    def guess(self, what: str, index: torch.Tensor, points: range) -> list[torch.Tensor] | None:
        last = self.last.get(what, {})
        if not points or any(n not in last for n in points) or last[points[0]].shape[0] != len(index):
            return None
        return [last[n] for n in points]

    def remember(self, what: str, index: torch.Tensor, points: range, values: list[torch.Tensor]) -> None:
        self.last[what] = {n: v.detach() for n, v in zip(points, values)}

    def state_dict(self) -> dict[str, Any]:
        return {what: {str(n): v for n, v in last.items()} for what, last in self.last.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device,
                        points: Mapping[str, range] | None = None) -> None:
        self.last = {what: {int(n): v.to(device).clone() for n, v in last.items()
                            if points is None or int(n) in points[what]}
                     for what, last in state.items()}


class PerSample(Cold):
    """Each sample's solution from the last step that saw it, kept in a :class:`SampleStore`
    per solve: memory ``n_train × points per rank × state`` for each of ``u`` and ``lam``."""

    def __init__(self) -> None:
        self.stores: dict[str, SampleStore] = {}

    def guess(self, what: str, index: torch.Tensor, points: range) -> list[torch.Tensor] | None:
        store = self.stores.get(what)
        if not store:
            return None
        like = store.rows[next(iter(store))]
        for n in points:
            if n not in store:  # a point first met now: zero rows shaped like the others
                store.allocate(n, 0, like)
        return [store.get(n, index) for n in points]

    def remember(self, what: str, index: torch.Tensor, points: range, values: list[torch.Tensor]) -> None:
        store = self.stores.setdefault(what, SampleStore())
        for n, v in zip(points, values):
            store.set(n, index, v)

    def state_dict(self) -> dict[str, Any]:
        return {k: s.state_dict() for k, s in self.stores.items()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device,
                        points: Mapping[str, range] | None = None) -> None:
        self.stores = {}
        for what, rows in state.items():
            self.stores[what] = SampleStore()
            self.stores[what].load_state_dict(rows, device, keys=None if points is None else points[what])


WARM_STARTS: dict[str, type[WarmStart]] = {"none": Cold, "batch": PreviousBatch, "sample": PerSample}

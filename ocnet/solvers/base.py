"""The solver interface: what every solver of the training problem provides.

A solver receives its rank's slice of the problem, the communicator and an optimiser
factory, and nothing else (``run.py`` builds it from the configuration).  It carries out
optimiser steps on mini-batches; the training loop owns epochs, data, evaluation and output.
A new solver is a subclass with one obligatory method, :meth:`Solver.step`.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable

import torch

from .. import sweep
from ..comm import Comm
from ..config import Option
from ..filters import IDENTITY, Filter
from ..problem import LocalNetwork

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class Solver:
    """Base class of all solvers.

    Parameters
    ----------
    network : LocalNetwork
        This rank's layers (with the opening on the first rank, the classifier on the last).
    comm : Comm
        The communicator of the layer ranks.
    make_optimizer : callable
        ``params ↦ torch.optim.Optimizer``; a solver may build several (one per sub-problem).
    device : torch.device
        Where this rank's tensors live.
    filter : Filter
        Applied to everything that crosses a rank boundary.
    **options
        The solver's own options, declared in :attr:`options`.

    Attributes
    ----------
    name : str
        The name under which the solver is registered (``--solver NAME``).
    options : dict of str to Option
        The solver's own configuration keys with types, defaults and help.
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"solver {self.name!r} has no option(s) {sorted(unknown)}")
        self.network = network
        self.comm = comm
        self.device = torch.device(device)
        self.filter = filter
        self.make_optimizer = make_optimizer
        self.optimizer = make_optimizer(network.parameters())
        self.config = {k: options.get(k, o.default) for k, o in self.options.items()}

    # -- the one obligatory method ---------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
        """One optimiser step on the mini-batch ``(x, y)``.

        Parameters
        ----------
        x : Tensor
            Inputs ``(batch, …)`` on this rank's device (every rank gets them; most read
            them only on the first rank).
        y : Tensor
            Labels ``(batch,)``.
        index : Tensor
            The samples' positions in the training set ``(batch,)``, for per-sample state.

        Returns
        -------
        dict
            Record fields of this rank.  The training loop *sums* each field over ranks, so
            a rank reports only its own share (the last rank reports ``loss``); a value every
            rank knows is reported by rank 0 alone.
        """
        raise NotImplementedError

    # -- hooks with defaults ---------------------------------------------------------------
    def begin_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Called before each epoch with the whole un-augmented training set; returns
        record fields for the epoch record (summed over ranks like :meth:`step`)."""
        return {}

    def augments(self, epoch: int) -> bool:
        """Whether this epoch's batches may be augmented (per-sample state forbids it)."""
        return True

    def network_changed(self) -> None:
        """Someone else (the hybrid's serial correction) has changed the parameters: state
        derived from them (auxiliary states, warm starts) is stale.  Solvers that carry such
        state rebuild it at their next :meth:`begin_epoch`; the default does nothing."""

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def predict(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Logits ``(batch, n_classes)`` on the last rank, ``None`` elsewhere."""
        return sweep.predict(self.comm, self.network, x, filter=self.filter, device=self.device)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything the solver carries between steps (tensors and plain values only)."""
        return {"network": self.network.state_dict(),
                "optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"])
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)

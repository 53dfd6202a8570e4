"""The serial-parallel hybrid: a schedule over a parallel solver and the serial one.

Parallel phases (penalty or augmented Lagrangian, on un-augmented data: per-sample states)
alternate with a serial correction — exact forward/backward passes through
:func:`ocnet.sweep.train`, with data augmentation.  After a correction the parallel solver's
auxiliary states are stale; it is told so (:meth:`Solver.network_changed`) and rebuilds them
by a forward sweep at the start of its next epoch.  Written against the solver interface
only, so any registered parallel solver gains a serial correction (Sun et al. 2020;
DESIGN.md §1 "Hybrid is a schedule").

The plan (``switch = "plan"``): ``parallel_epochs`` parallel epochs, then ``serial_epochs``
serial ones, repeated (``--epochs 40 --parallel-epochs 30 --serial-epochs 10`` is the
prototype's plan); within parallel epochs, ``serial_every = m`` makes every m-th step a
serial step (a ratio within each epoch; those steps see the un-augmented batch, as the epoch
is a parallel one).

The adaptive rule (``switch = "adaptive"``), read from the parallel solver's records: after
a parallel epoch whose mean constraint violation fell by less than ``stall_tol`` (relative)
from the parallel epoch before, or in which MGRIT's convergence factor exceeded 1, come
``serial_epochs`` serial epochs; then the parallel phase resumes.
"""
from __future__ import annotations

from typing import Any

import torch

from ..comm import Comm
from ..config import Option
from ..filters import IDENTITY, Filter
from ..problem import LocalNetwork
from .al import AugmentedLagrangian
from .base import OptimizerFactory, Solver
from .penalty import Penalty
from .serial import Serial


class Hybrid(Solver):
    """Parallel phases of ``parallel`` and serial corrections, sharing network and optimiser.

    Attributes
    ----------
    parallel : Solver
        The parallel solver (built with the options it declares).
    serial : Serial
        The serial solver; it steps the parallel solver's optimiser, so that optimiser
        state (Adam's moments) carries over from one phase to the next.
    """

    name = "hybrid"
    options = {
        **Penalty.options, **AugmentedLagrangian.options, **Serial.options,
        "parallel": Option(str, "penalty", "the solver of the parallel phases (a registered solver)"),
        "parallel_epochs": Option(int, 3, "parallel epochs per cycle of the plan", min=0),
        "serial_epochs": Option(int, 1, "serial-correction epochs per cycle (after the parallel ones)", min=0),
        "serial_every": Option(int, 0, "in parallel epochs, make every this many steps a serial step "
                               "(0: none)", min=0),
        "switch": Option(str, "plan", "plan: the fixed plan; adaptive: serial epochs when the constraint "
                         "violation stalls or MGRIT's convergence factor exceeds 1", choices=("plan", "adaptive")),
        "stall_tol": Option(float, 0.05, "adaptive: the violation stalls when it falls by less than this "
                            "fraction in a parallel epoch", min=0.0, max=1.0),
    }

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, **options: Any) -> None:
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, **options)
        from . import get  # the registry imports this module

        cls = get(self.config["parallel"])
        if cls is Hybrid or cls is Serial:
            raise ValueError(f"hybrid: parallel solver {cls.name!r} is not a parallel solver")
        if self.config["parallel_epochs"] + self.config["serial_epochs"] == 0:
            raise ValueError("hybrid: parallel_epochs and serial_epochs cannot both be 0")
        own = {k: self.config[k] for k in cls.options if k in self.config}
        self.parallel = cls(network, comm, make_optimizer, device=device, filter=filter, **own)
        self.optimizer = self.parallel.optimizer
        self.serial = Serial(network, comm, lambda params: self.parallel.optimizer, device=device,
                             filter=filter, micro_batches=self.config["micro_batches"])
        self._phase = "parallel"
        self._steps = 0
        # the adaptive rule's memory: this epoch's parallel records, the last epoch's violation
        self._violation, self._factor, self._count = 0.0, 0.0, 0
        self._last_violation: float | None = None
        self._serial_left = 0

    def phase(self, epoch: int) -> str:
        """``"parallel"`` or ``"serial"``: the plan's phase of ``epoch``."""
        p, s = self.config["parallel_epochs"], self.config["serial_epochs"]
        return "parallel" if epoch % (p + s) < p else "serial"

    def augments(self, epoch: int) -> bool:
        return (self._phase if self.config["switch"] == "adaptive" else self.phase(epoch)) == "serial"

    def _adaptive_phase(self) -> str:
        """Judge the epoch just finished (collectively: every rank decides the same)."""
        if self._phase == "parallel" and self._count:
            violation = self.comm.allreduce(self._violation) / self._count
            factor = self.comm.allreduce(self._factor, op="max")
            last, self._last_violation = self._last_violation, violation
            if factor > 1 or (last is not None and violation > (1 - self.config["stall_tol"]) * last):
                self._serial_left, self._last_violation = self.config["serial_epochs"], None
        self._violation, self._factor, self._count = 0.0, 0.0, 0
        if self._serial_left:
            self._serial_left -= 1
            return "serial"
        return "parallel"

    def begin_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        adaptive = self.config["switch"] == "adaptive"
        self._phase, self._steps = self._adaptive_phase() if adaptive else self.phase(epoch), 0
        solver = self.parallel if self._phase == "parallel" else self.serial
        record = dict(solver.begin_epoch(epoch, x, y))
        if self.comm.rank == 0:
            record["phase"] = self._phase
        return record

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, Any]:
        self._steps += 1
        every = self.config["serial_every"]
        phase = "serial" if self._phase == "serial" or (every and self._steps % every == 0) else "parallel"
        if phase == "serial":
            record = dict(self.serial.step(x, y, index))
            self.parallel.network_changed()
        else:
            record = dict(self.parallel.step(x, y, index))
            self._violation += record.get("constraint_violation", 0.0)
            self._factor = max(self._factor, _forward_factor(record.get("conv_factor")))
            self._count += 1
        if self.comm.rank == 0:
            record["phase"] = phase
        return record

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.parallel.optimizers

    def state_dict(self) -> dict[str, Any]:
        # network and optimiser are shared: the parallel solver's state holds them
        return {"parallel": self.parallel.state_dict(), "phase": self._phase,
                "last_violation": self._last_violation, "serial_left": self._serial_left}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_state_dict(state["parallel"])
        self._phase, self._last_violation = state["phase"], state["last_violation"]
        self._serial_left = state["serial_left"]


def _forward_factor(value: Any) -> float:
    """MGRIT's forward convergence factor from a record field (a number or a per-phase dict)."""
    if isinstance(value, dict):
        value = value.get("forward")
    return float(value) if isinstance(value, (int, float)) else 0.0

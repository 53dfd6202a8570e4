"""The serial-parallel hybrid: a schedule over a parallel solver and the serial one.

Parallel phases (penalty or augmented Lagrangian, on un-augmented data: per-sample states)
alternate with a serial correction — exact forward/backward passes through
:func:`ocnet.ranks.sweep.train`, with data augmentation.  After a correction the parallel solver's
auxiliary states are stale; it is told so (:meth:`Solver.network_changed`) and rebuilds them
by a forward sweep at the start of its next epoch.  Written against the solver interface
only, so any registered parallel solver (:class:`~.base.ParallelSolver`) gains a serial
correction (Sun et al. 2020): the hybrid is a schedule, not a new algorithm.  It takes its
partner's options on the command line and in TOML (``--parallel mgrit --mgrit-levels 3``).

The plan (``switch = "plan"``): ``parallel_epochs`` parallel epochs, then ``serial_epochs``
serial ones, repeated (``--epochs 40 --parallel-epochs 30 --serial-epochs 10`` is the
prototype's plan); within parallel epochs, ``serial_every = m`` makes every m-th step a
serial step (a ratio within each epoch; those steps see the un-augmented batch, as the epoch
is a parallel one).

The adaptive rule (``switch = "adaptive"``), read from the parallel solver's records: after
a parallel epoch whose mean constraint violation fell by less than ``stall_tol`` (relative)
from the parallel epoch before, in which MGRIT's convergence factor exceeded 1, or whose mean
gradient inexactness (MGRIT's estimate) exceeded ``inexact_tol``, come ``serial_epochs``
serial epochs; then the parallel phase resumes.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..model.grid import Partition
from ..model.options import ConfigError, Option
from ..model.problem import LocalNetwork
from ..ranks.comm import Comm
from ..ranks.filters import IDENTITY, Filter
from ..ranks.tags import Tags
from .base import OptimizerFactory, ParallelSolver, Solver
from .records import Field, Record, reduce
from .registry import get
from .serial import Serial

_OWN = {
    "parallel": Option(str, "penalty", "the solver of the parallel phases (a registered parallel solver; "
                       "its options are taken too)"),
    "parallel_epochs": Option(int, 3, "parallel epochs per cycle of the plan", min=0),
    "serial_epochs": Option(int, 1, "serial-correction epochs per cycle (after the parallel ones)", min=0),
    "serial_every": Option(int, 0, "in parallel epochs, make every this many steps a serial step "
                           "(0: none)", min=0),
    "switch": Option(str, "plan", "plan: the fixed plan; adaptive: serial epochs when the constraint "
                     "violation stalls, MGRIT's convergence factor exceeds 1 or its gradient inexactness exceeds "
                     "inexact_tol", choices=("plan", "adaptive")),
    "stall_tol": Option(float, 0.05, "adaptive: the violation stalls when it falls by less than this "
                        "fraction in a parallel epoch", min=0.0, max=1.0),
    "inexact_tol": Option(float, 0.05, "adaptive: serial epochs also after a parallel epoch whose mean gradient "
                          "inexactness (MGRIT's relative residual) exceeded this", positive=True),
}


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
    rank_invariant = True  # when its partner is
    options = {**_OWN, **Serial.options}  # and its partner's: :meth:`options_for`

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, seed: int = 0,
                 tags: Tags | None = None, **options: Any) -> None:
        cls = self.partner(options.get("parallel", _OWN["parallel"].default))
        partner_options = {k: options.pop(k) for k in list(options) if k in cls.options and k not in self.options}
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, seed=seed, tags=tags,
                         **options)
        if self.config["parallel_epochs"] + self.config["serial_epochs"] == 0:
            raise ValueError("hybrid: parallel_epochs and serial_epochs cannot both be 0")
        shared = {k: self.config[k] for k in cls.options if k in self.config}
        self.parallel = cls(network, comm, make_optimizer, device=device, filter=filter, seed=seed,
                            tags=self.tags, **shared, **partner_options)
        self.optimizer = self.parallel.optimizer
        self.serial = Serial(network, comm, lambda params: self.parallel.optimizer, device=device,
                             filter=filter, seed=seed, tags=self.tags,
                             **{k: self.config[k] for k in Serial.options})
        self._phase = "parallel"
        self._steps = 0
        # the adaptive rule's memory: this epoch's parallel records, the last epoch's violation
        self._violation, self._factor, self._inexactness, self._count = 0.0, 0.0, 0.0, 0
        self._last_violation: float | None = None
        self._serial_left = 0

    # -- what the configuration asks of the class -------------------------------------------
    @staticmethod
    def partner(name: Any) -> type[Solver]:
        """The registered parallel solver called ``name``."""
        try:
            cls = get(str(name))
        except KeyError as e:
            raise ConfigError(f"hybrid: {e.args[0]}") from None
        if not issubclass(cls, ParallelSolver):
            raise ConfigError(f"hybrid: {cls.name!r} is not a parallel solver; choose a parallel one "
                              "(penalty, al, mgrit, or a plug-in derived from ParallelSolver)")
        return cls

    @classmethod
    def options_for(cls, values: Mapping[str, Any]) -> dict[str, Option]:
        partner = cls.partner(values.get("parallel", _OWN["parallel"].default))
        # a key the serial correction shares with the partner (micro_batches) takes the
        # partner's default: the parallel phases are the partner's method as it is by itself
        return {**cls.options, **partner.options_for(values), **_OWN}

    @classmethod
    def help_extra(cls) -> str:
        return "takes the options of its parallel solver too, e.g. --parallel mgrit --mgrit-levels 3"

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """The partner's partition (the serial correction works on any)."""
        return cls.partner(config["parallel"]).partition(n_layers, n_ranks, config)

    def record_fields(self) -> dict[str, Field]:
        return self.parallel.record_fields()

    # -- the schedule ------------------------------------------------------------------------
    def phase(self, epoch: int) -> str:
        """``"parallel"`` or ``"serial"``: the plan's phase of ``epoch``."""
        p, s = self.config["parallel_epochs"], self.config["serial_epochs"]
        return "parallel" if epoch % (p + s) < p else "serial"

    def augments(self, epoch: int) -> bool:
        return (self._phase if self.config["switch"] == "adaptive" else self.phase(epoch)) == "serial"

    def _adaptive_phase(self) -> str:
        """Judge the epoch just finished (collectively: every rank decides the same)."""
        if self._phase == "parallel" and self._count:
            fields = self.record_fields()
            violation = reduce(self.comm, "constraint_violation", self._violation, fields) / self._count
            factor = reduce(self.comm, "conv_factor", self._factor, fields)
            inexact = reduce(self.comm, "inexactness", self._inexactness, fields) / self._count
            last, self._last_violation = self._last_violation, violation
            if factor > 1 or inexact > self.config["inexact_tol"] or \
                    (last is not None and violation > (1 - self.config["stall_tol"]) * last):
                self._serial_left, self._last_violation = self.config["serial_epochs"], None
        self._violation, self._factor, self._inexactness, self._count = 0.0, 0.0, 0.0, 0
        if self._serial_left:
            self._serial_left -= 1
            return "serial"
        return "parallel"

    def _solver(self) -> Solver:
        return self.parallel if self._phase == "parallel" else self.serial

    def begin_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> Record:
        adaptive = self.config["switch"] == "adaptive"
        self._phase, self._steps = self._adaptive_phase() if adaptive else self.phase(epoch), 0
        return {**self._solver().begin_epoch(epoch, x, y), "phase": self._phase}

    def end_epoch(self, epoch: int) -> Record:
        return self._solver().end_epoch(epoch)

    def _next_phase(self) -> str:
        """The phase of the next step (counted)."""
        self._steps += 1
        every = self.config["serial_every"]
        return "serial" if self._phase == "serial" or (every and self._steps % every == 0) else "parallel"

    def idle_step(self) -> Record:
        phase = self._next_phase()
        if phase == "serial":
            self.parallel.settle()
        record = dict(self.parallel.idle_step())  # the two share the optimiser
        if phase == "serial":
            self.parallel.network_changed()
        else:
            self._count += 1  # the adaptive rule divides by the same count in every data group
        return {**record, "phase": phase}

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        phase = self._next_phase()
        if phase == "serial":
            self.parallel.settle()
            record = dict(self.serial.step(x, y, index))
            self.parallel.network_changed()
        else:
            record = dict(self.parallel.step(x, y, index))
            self._violation += float(record.get("constraint_violation") or 0.0)  # type: ignore[arg-type]
            self._factor = max(self._factor, _forward_factor(record.get("conv_factor")))
            self._inexactness += float(record.get("inexactness") or 0.0)  # type: ignore[arg-type]
            self._count += 1
        record["phase"] = phase
        return record

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.parallel.optimizers

    # -- checkpoints ------------------------------------------------------------------------
    global_state = True  # this rank's shares of the adaptive rule's sums are keyed by its first layer

    def state_dict(self) -> dict[str, Any]:
        # network and optimiser are shared: the parallel solver's state holds them
        return {"parallel": self.parallel.state_dict(), "phase": self._phase, "steps": self._steps,
                "count": self._count, "last_violation": self._last_violation, "serial_left": self._serial_left,
                "shares": {str(self.network.start): {"violation": self._violation, "factor": self._factor,
                                                     "inexactness": self._inexactness}}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.parallel.load_state_dict(state["parallel"])
        self._phase, self._steps, self._count = state["phase"], state["steps"], state["count"]
        self._last_violation, self._serial_left = state["last_violation"], state["serial_left"]
        # the shares of the ranks whose layers start in ours: each share is taken by one
        # rank of any partition, so the sum (and the max) over the ranks stays the same
        start, stop = self.network.start, self.network.stop
        mine = [s for k, s in state["shares"].items() if start <= int(k) < stop]
        self._violation = sum((s["violation"] for s in mine), 0.0)
        self._factor = max((s["factor"] for s in mine), default=0.0)
        self._inexactness = max((s.get("inexactness", 0.0) for s in mine), default=0.0)

    def reshardable(self) -> bool:
        return super().reshardable() and self.parallel.reshardable()


def _forward_factor(value: Any) -> float:
    """MGRIT's forward convergence factor from a record field (a number or a per-phase dict)."""
    if isinstance(value, dict):
        value = value.get("forward")
    return float(value) if isinstance(value, (int, float)) else 0.0

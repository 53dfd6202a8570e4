"""The solver interface: what every solver of the training problem is given and provides.

A solver receives its rank's slice of the problem, the communicator, an optimiser factory
and a few declared facts (device, filter, seed, message tags), and nothing else: ``run.py``
builds it from the configuration.  It carries out optimiser steps on mini-batches; the
training loop owns epochs, data, evaluation and output.  A new solver is a subclass with one
obligatory method, :meth:`Solver.step`.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Mapping

import torch

from ..model.grid import Partition
from ..model.options import Option
from ..model.problem import LocalNetwork
from ..ranks import sweep
from ..ranks.comm import Comm
from ..ranks.filters import IDENTITY, Filter
from ..ranks.replicas import GradientAverage
from ..ranks.tags import Tags
from .records import FIELDS, Field, Record

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


class SolverError(RuntimeError):
    """The method itself failed (an MGRIT solve diverged, say), not the configuration.

    Raised on every rank at the same point of the computation (the condition is known
    collectively), so ``python -m ocnet.run`` reports it in one line and every rank exits;
    a failure that only one rank sees is an ordinary exception, which ends the whole job.
    """


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
    seed : int
        The run's seed: draw any random state the solver creates from it (not from torch's
        global generator), so that a resumed run continues bit for bit.
    tags : Tags, optional
        Where the solver takes the message tags it sends with (:meth:`Tags.take`); every
        rank builds its solvers in the same order, so the tags agree across ranks.
    **options
        The solver's own options, declared in :attr:`options`.

    Attributes
    ----------
    name : str
        The name under which the solver is registered (``--solver NAME``).
    options : dict of str to Option
        The solver's own configuration keys with types, defaults and help.
    fields : dict of str to Field
        How the record fields this solver adds combine over ranks (:mod:`ocnet.solvers.records`);
        the common ones (``loss``, ``rho``, ``residual``, …) are declared already.
    rank_invariant : bool
        Whether the trained parameters are the same on any number of ranks (up to
        floating-point reassociation); :func:`ocnet.runs.testing.check_solver` holds it to it.
    overlaps_steps : bool
        Whether a step's work runs on into the next step's (a pipeline without a flush, ranks
        that run batches ahead): the performance model then times a step in the steady
        state, between the ends of two, instead of from a cold start.
    n_classes : int
        Number of classes of the problem.
    state_shape : tuple of int
        Shape of one sample's state entering this rank's first layer (``network.state_shapes``
        has it at every layer).
    sweep_tags : range
        Two tags for this solver's forward and backward sweeps (:mod:`ocnet.ranks.sweep`).
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    fields: ClassVar[dict[str, Field]] = {}
    rank_invariant: ClassVar[bool] = False
    overlaps_steps: ClassVar[bool] = False

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, seed: int = 0,
                 tags: Tags | None = None, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            raise TypeError(f"solver {self.name!r} has no option(s) {sorted(unknown)}")
        self.network = network
        self.comm = comm
        self.device = torch.device(device)
        self.filter = filter
        self.seed = seed
        self.tags = tags if tags is not None else Tags()
        self.sweep_tags = self.tags.take(2)
        self.n_classes = network.n_classes
        self.state_shape = network.state_shapes[network.start]
        self.make_optimizer = make_optimizer
        self.optimizer = make_optimizer(network.parameters())
        #: On a grid of data groups, the average of the gradients over the groups, which the
        #: optimisers' steps take (set by whoever builds the grid; :mod:`ocnet.ranks.replicas`).
        self.gradient_average: GradientAverage | None = None
        self.config = {k: options.get(k, o.default) for k, o in self.options.items()}

    # -- what the configuration asks of a class ----------------------------------------------
    @classmethod
    def options_for(cls, values: Mapping[str, Any]) -> dict[str, Option]:
        """The options this solver takes given the configuration ``values`` (raw, unconverted):
        :attr:`options`, unless the solver is composite and takes its partner's too."""
        return cls.options

    @classmethod
    def help_extra(cls) -> str:
        """A line for ``--help`` beyond the options (e.g. whose options a composite takes)."""
        return ""

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """Which layers each rank holds, given the solver's resolved options ``config``.

        The method must not depend on it (only who computes what does); the default is the
        balanced partition.  Raises ``ValueError`` when the options admit none."""
        return Partition(n_layers, n_ranks)

    # -- the one obligatory method ---------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
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
            This rank's record fields: numbers, strings, or dicts of numbers (per phase).
            Each field combines over ranks by its declared rule (:attr:`fields`,
            :mod:`ocnet.solvers.records`): a rank reports its own share of a summed field (the last
            rank the ``loss``), every rank the value of a ``"first"`` field.
        """
        raise NotImplementedError

    def gradient(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        """The gradient of the batch's mean loss in the parameters' ``.grad``, without the
        optimiser's step; record fields as :meth:`step`.  A solver whose step is that
        gradient followed by one step of its optimiser (serial, mgrit) gives it, so that a
        method around it (MG/Opt) can change the gradient or the step; the others raise
        ``NotImplementedError``."""
        raise NotImplementedError(f"solver {self.name!r} gives no gradient apart from its step")

    def average_gradients(self) -> None:
        """Make the parameters' gradients those of the whole batch now.

        On a grid of data groups (:mod:`ocnet.ranks.replicas`) each group's backward pass leaves
        its own share, and the optimiser's step averages them over the groups.  A solver
        that reads the whole gradient before stepping (its norm, to clip it) calls this
        first; the step then does not average again.  In one group it does nothing."""
        if self.gradient_average is not None:
            self.gradient_average.now()

    # -- hooks with defaults ---------------------------------------------------------------
    def idle_step(self) -> Record:
        """Take part in an optimiser step without samples of one's own.

        On a grid of data groups (:mod:`ocnet.ranks.replicas`) a group may own none of a batch's
        samples; it still steps, with the gradient the other groups average into it.  The
        default zeroes the gradients and steps each optimiser once, as :meth:`step` does; a
        solver whose step takes its optimisers' steps otherwise (or counts steps) overrides
        it.  Returns record fields, as :meth:`step`."""
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
            opt.step()
        return {}

    def begin_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> Record:
        """Called before each epoch with the whole un-augmented training set; returns
        record fields for the epoch record (combined over ranks like :meth:`step`'s)."""
        return {}

    def end_epoch(self, epoch: int) -> Record:
        """Called after the epoch's last step, before evaluation: finish what is in flight
        (deferred updates, pending messages); returns fields for the epoch record."""
        return {}

    def settle(self) -> None:
        """Finish deferred work (micro-batches in flight, updates not yet taken) so that the
        parameters are final for now: the hybrid calls it before a serial step in the middle
        of an epoch.  The default does nothing; :meth:`end_epoch` settles as well."""

    def augments(self, epoch: int) -> bool:
        """Whether this epoch's batches may be augmented (per-sample state forbids it)."""
        return True

    def network_changed(self) -> None:
        """Someone else (the hybrid's serial correction) has changed the parameters: state
        derived from them (auxiliary states, warm starts) is stale.  Solvers that carry such
        state rebuild it at their next :meth:`begin_epoch`; the default does nothing."""

    def record_fields(self) -> dict[str, Field]:
        """The schema of this solver's records: the common fields and its own."""
        return {**FIELDS, **self.fields}

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def set_lr(self, lr: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def predict(self, x: torch.Tensor | None) -> torch.Tensor | None:
        """Logits ``(batch, n_classes)`` on the last rank, ``None`` elsewhere."""
        return sweep.predict(self.comm, self.network, x, filter=self.filter, device=self.device,
                             tag=self.sweep_tags[0])

    def report(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """Entries of the solver's own for the run's ``summary.json``, given the test set
        ``(x, y)`` after training (a collective: every rank calls it, and returns the same;
        local parallelism's auxiliary heads and their accuracies, say).  Default: none."""
        return {}

    # -- checkpoints -----------------------------------------------------------------------
    #: Whether this class's ``state_dict`` keys everything globally (see :meth:`reshardable`).
    global_state: ClassVar[bool] = True

    def state_dict(self) -> dict[str, Any]:
        """Everything the solver carries between steps (tensors and plain values only),
        complete at any step boundary, in the middle of an epoch too.

        The state is keyed globally, not by rank: parameters and buffers under the whole
        problem's names (``layers.5.weight``), optimiser state per parameter name.  The union
        of all ranks' states is then the state of the whole run, and a job on another number
        of ranks takes its part of it (:mod:`ocnet.runs.checkpoint`).
        """
        names = self._parameter_names()
        return {"network": self.network.problem_state(),
                "optimizers": [optimizer_state(opt, names) for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's part of ``state``: the union of :meth:`state_dict` over the ranks
        of any partition, or one rank's own (tensors may come on the CPU)."""
        net = self.network
        net.load_state_dict({k: state["network"][net.problem_name(k)] for k in net.state_dict()})
        names = self._parameter_names()
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"the state has {len(state['optimizers'])} optimiser(s), the solver "
                             f"{len(self.optimizers)}")
        for opt, s in zip(self.optimizers, state["optimizers"]):
            load_optimizer_state(opt, s, names)

    def reshardable(self) -> bool:
        """Whether a checkpoint of this solver resumes on another partition (number of ranks).

        The base class's state is global, so a solver that keeps it is.  A class that
        overrides :meth:`state_dict` or :meth:`load_state_dict` must say, by
        ``global_state = True`` in its own body, that its additions are global too
        (per-sample rows under global boundary or time-point indices, numbers every rank
        holds alike) and that it takes only its part on loading; otherwise the resume on
        another partition is refused.
        """
        for cls in type(self).__mro__:
            if cls is Solver:
                return True
            own = vars(cls)
            if ("state_dict" in own or "load_state_dict" in own) and not own.get("global_state", False):
                return False
        return True

    def replicated_parameters(self) -> dict[str, torch.Tensor]:
        """The parameters that every data group holds alike, by their name in the whole
        problem: the network's and those the solver adds to its optimisers under a name
        (:meth:`_parameter_names`: local parallelism's heads).  The gradient average over the
        groups (:mod:`ocnet.ranks.replicas`) sums exactly these, in the optimisers' order."""
        names = self._parameter_names()
        return {names[id(p)]: p for opt in self.optimizers for group in opt.param_groups for p in group["params"]
                if id(p) in names}

    def _parameter_names(self) -> dict[int, str]:
        """``id(parameter) ↦`` its name in the whole problem."""
        return {id(p): self.network.problem_name(k) for k, p in self.network.named_parameters()}


def optimizer_state(opt: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    """``opt.state_dict()`` keyed by parameter name instead of position:
    ``{name: {"group": hyper-parameters of its group, "state": its state}}``.  A parameter
    that is not the network's (a solver's own) is named by its position, ``"#k"``."""
    sd = opt.state_dict()
    out = {}
    for saved, group in zip(sd["param_groups"], opt.param_groups):
        hyper = {k: v for k, v in saved.items() if k != "params"}
        for i, p in zip(saved["params"], group["params"]):
            out[names.get(id(p), f"#{i}")] = {"group": hyper, "state": sd["state"].get(i, {})}
    return out


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any], names: dict[int, str]) -> None:
    """Load :func:`optimizer_state`'s ``state`` into ``opt``, for the parameters ``opt`` holds
    (``state`` may hold others')."""
    groups, per_param, i = [], {}, 0
    for group in opt.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        positions = []
        for p in group["params"]:
            name = names.get(id(p), f"#{i}")
            if name not in state:
                raise ValueError(f"no optimiser state for {name}")
            hyper = state[name]["group"]
            if state[name]["state"]:
                per_param[i] = state[name]["state"]
            positions.append(i)
            i += 1
        groups.append({**hyper, "params": positions})
    opt.load_state_dict({"state": per_param, "param_groups": groups})


class ParallelSolver(Solver):
    """A solver whose ranks compute their layers concurrently (penalty, al, mgrit, a user's
    time-parallel scheme): what the hybrid alternates with serial corrections.  Deriving from
    it is the mark; it adds nothing else."""

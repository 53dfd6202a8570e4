"""MG/Opt: multilevel optimisation in depth, around an inner solver.

The levels are the network (level 0) and its twins with ``c``, ``c²``, … times fewer steps of
``c``, ``c²``, … times the step size (:func:`ocnet.model.depth.coarsen`).  Every level has an
inner solver of its own (``serial`` or ``mgrit``: any that gives a gradient apart from its
step), with its own optimiser, whose state is kept from batch to batch.  Level ``l``
minimises ``f_l(θ) = J_l(θ) − ⟨v_l, θ⟩`` on the batch, with ``v_0 = 0``.  One V-cycle per
mini-batch, MG/Opt in its standard form (Nash 2000; in depth as Gaedke-Merzhäuser,
Kopaničáková & Krause 2020 and torchbraid's ``mgopt.py`` use it)::

    cycle(l):
        the coarsest level: ``coarse_steps`` optimiser steps on f_l; return
        ν₁ = ``pre`` optimiser steps on f_l                                (pre-smoothing)
        g = ∇f_l(θ_l)
        θ_{l+1} ← R θ_l;  θ⁰ ← θ_{l+1}                     (restriction of the parameters)
        v_{l+1} ← ∇J_{l+1}(θ⁰) − Pᵀ g                      (first-order coherence)
        cycle(l + 1)
        d ← P (θ_{l+1} − θ⁰)                              (prolongation of the correction)
        α ← ``alpha``, halved while f_l(θ_l + α d) > f_l(θ_l) + 10⁻⁴ α ⟨g, d⟩, at most
            ``line_search`` times (0 if it still is, or if ⟨g, d⟩ ≥ 0)        (Armijo)
        θ_l ← θ_l + α d
        ν₂ = ``post`` optimiser steps on f_l                              (post-smoothing)

``R`` restricts values (``injection`` or ``full_weighting``), ``P`` interpolates
(``constant`` or ``linear``) and ``Pᵀ`` restricts gradients (:mod:`ocnet.model.depth`), so
that ``∇f_{l+1}(θ⁰) = Pᵀ g``: at the start of the coarse problem its gradient is the fine
gradient restricted, and the coarse steps move where the fine objective goes down to first
order.  With ``coarse_steps = 0`` or ``alpha = 0`` the correction is zero and a cycle is
``pre + post`` steps of the inner solver, exactly.

Every rank holds its slice of every level (each level partitioned by the inner solver over
the same ranks) and a private copy of each level's whole network: before a restriction and
after a coarse cycle the ranks' slices are gathered (``Comm.allgather`` of the parameters,
the gradients, the correction), so every rank applies ``R`` and ``P`` to the same whole
tensors, and the result does not depend on the number of ranks.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..model import depth
from ..model.grid import Partition
from ..model.options import ConfigError, Option
from ..model.problem import LocalNetwork, Problem
from ..ranks.comm import Comm
from ..ranks.filters import IDENTITY, Filter
from ..ranks.tags import Tags
from .base import OptimizerFactory, Solver
from .records import Field, Record
from .registry import get
from .serial import Serial

#: The inner solvers: those whose step is a gradient and one optimiser step.
INNER = ("serial", "mgrit")

_OWN = {
    "inner": Option(str, "serial", "the solver on every level (its options are taken too)", choices=INNER),
    "mgopt_levels": Option(int, 2, "levels, the network included", min=1),
    "mgopt_coarsen": Option(int, 2, "coarsening factor in depth from one level to the next", min=2),
    "mgopt_pre": Option(int, 1, "pre-smoothing steps on each level but the coarsest", min=0),
    "mgopt_post": Option(int, 0, "post-smoothing steps on each level but the coarsest", min=0),
    "mgopt_coarse_steps": Option(int, 1, "optimiser steps on the coarsest level per cycle", min=0),
    "mgopt_alpha": Option(float, 1.0, "the step length the line search starts from (0: no correction)", min=0.0),
    "mgopt_line_search": Option(int, 4, "halvings of the step length the Armijo line search may take "
                                "(0: take the first step length unchecked)", min=0),
    "mgopt_restrict": Option(str, "full_weighting", "restriction of the parameters in depth",
                             choices=("injection", "full_weighting")),
    "mgopt_interpolate": Option(str, "linear", "interpolation of the correction in depth (its transpose "
                                "restricts the gradient)", choices=depth.INTERPOLATIONS),
}
#: Pᵀ for each interpolation P.
TRANSPOSE = {"constant": "sum", "linear": "linear_transpose"}
#: Armijo's sufficient decrease.
ARMIJO = 1e-4


@dataclass
class _Level:
    """One level on this rank: its inner solver (on this rank's slice), a private copy of
    its whole network (``whole``: every rank's slice, gathered) and, on every level but the
    coarsest, a scratch copy the correction is interpolated into."""

    solver: Solver
    whole: Problem
    owners: list[list[str]]  # by rank: the names of the parameters it holds
    scratch: Problem | None = None
    v: dict[str, torch.Tensor] = field(default_factory=dict)  # the coherence term, by name

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """This rank's parameters of the level, by their name in the whole network."""
        net = self.solver.network
        return {net.problem_name(k): p for k, p in net.named_parameters()}


class MGOpt(Solver):
    """MG/Opt V-cycles in depth around the inner solver ``inner`` (module docstring)."""

    name = "mgopt"
    rank_invariant = True  # when the inner solver is
    options = {**_OWN, **Serial.options}  # and the inner solver's: :meth:`options_for`
    fields = {"mgopt_alpha": Field("first", "MG/Opt step length")}

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, seed: int = 0,
                 tags: Tags | None = None, **options: Any) -> None:
        inner = self.inner_class(options.get("inner", _OWN["inner"].default))
        inner_options = {k: options.pop(k) for k in list(options) if k in inner.options and k not in _OWN}
        options = {k: v for k, v in options.items() if k in _OWN}
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, seed=seed, tags=tags,
                         **options)
        if comm.replicas is not None:
            raise ValueError("mgopt does not run on data groups (--data-parallel): its coarse levels would "
                             "step apart in each group")
        cfg = self.config

        def build(net: LocalNetwork) -> Solver:
            return inner(net, comm, make_optimizer, device=device, filter=filter, seed=seed, tags=self.tags,
                         **inner_options)

        inner_config = {k: inner_options.get(k, o.default) for k, o in inner.options.items()}
        self.levels: list[_Level] = []
        whole = copy.deepcopy(network.problem).to(self.device)  # private: the ranks' slices are gathered here
        solver = build(network)
        for level in range(cfg["mgopt_levels"]):
            if level:
                whole = depth.coarsen(whole, cfg["mgopt_coarsen"])
                partition = inner.partition(whole.n_layers, comm.size, inner_config)
                solver = build(whole.local(partition, comm.rank).to(self.device))
            partition = solver.network.partition
            owners = [[net.problem_name(k) for k, _ in net.named_parameters()]
                      for net in (whole.local(partition, r) for r in range(comm.size))]
            self.levels.append(_Level(solver, whole, owners))
            solver.optimizer.register_step_pre_hook(self._coherence(self.levels[-1]))
        for lev in self.levels[:-1]:
            lev.scratch = copy.deepcopy(lev.whole)
        self.optimizer = self.levels[0].solver.optimizer

    # -- what the configuration asks of the class -------------------------------------------
    @staticmethod
    def inner_class(name: Any) -> type[Solver]:
        if name not in INNER:
            raise ConfigError(f"mgopt: unknown inner solver {name!r}; choose from {', '.join(INNER)}")
        return get(str(name))

    @classmethod
    def options_for(cls, values: Mapping[str, Any]) -> dict[str, Option]:
        return {**cls.inner_class(values.get("inner", _OWN["inner"].default)).options_for(values), **_OWN}

    @classmethod
    def help_extra(cls) -> str:
        return "takes the options of its inner solver too, e.g. --inner mgrit --mgrit-levels 3"

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """The inner solver's partition of the network (the coarse levels' partitions, and
        whether their stages coarsen, are checked as the solver is built)."""
        return cls.inner_class(config["inner"]).partition(n_layers, n_ranks, config)

    def record_fields(self) -> dict[str, Field]:
        return {**self.levels[0].solver.record_fields(), **self.fields}

    # -- the cycle ---------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        self._record: Record | None = None
        alpha = self._cycle(0, x, y, index)
        return {**(self._record or {}), "mgopt_alpha": alpha}

    def _keep(self, level: int, fields: Record) -> None:
        """The step's record: the fields of the first gradient of the network (level 0)."""
        if level == 0 and self._record is None:
            self._record = dict(fields)

    def _cycle(self, level: int, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> float:
        """One V-cycle from ``level`` down; returns the step length of the level's correction."""
        cfg, lev = self.config, self.levels[level]
        solver = lev.solver

        def smooth(steps: int) -> None:
            for _ in range(steps):
                self._keep(level, solver.step(x, y, index))

        if level == len(self.levels) - 1:
            smooth(cfg["mgopt_coarse_steps"])
            return 0.0
        smooth(cfg["mgopt_pre"])
        fields = solver.gradient(x, y, index)
        self._keep(level, fields)
        own = lev.params
        g = {k: _grad(p) - lev.v[k] if k in lev.v else _grad(p) for k, p in own.items()}
        loss = fields.get("loss")
        f0 = self._objective(lev, loss if isinstance(loss, float) else None, own)
        coarse = self.levels[level + 1]
        # restriction: the values by R, the gradient by Pᵀ, on every rank's gathered whole
        self._gather(lev, {k: p.detach() for k, p in own.items()})
        depth.restrict(lev.whole, coarse.whole, cfg["mgopt_restrict"])
        assert lev.scratch is not None
        self._gather(lev, g, into=lev.scratch)
        for p in lev.scratch.parameters():  # as .grad, which depth restricts leaving θ_{l+1} alone
            p.grad = p.detach().clone()
        depth.restrict(lev.scratch, coarse.whole, TRANSPOSE[cfg["mgopt_interpolate"]], which="gradients")
        coarse_own = coarse.params
        restricted = {k: _grad(p).clone() for k, p in coarse_own.items()}
        start = {k: p.detach().clone() for k, p in coarse_own.items()}
        coarse.v = {}
        coarse.solver.gradient(x, y, index)
        coarse.v = {k: _grad(p) - restricted[k] for k, p in coarse_own.items()}
        self._cycle(level + 1, x, y, index)
        # prolongation of the correction, then the line search on this level's objective
        correction = {k: p.detach() - start[k] for k, p in coarse_own.items()}
        self._gather(coarse, correction)
        depth.interpolate(coarse.whole, lev.scratch, cfg["mgopt_interpolate"])
        whole = dict(lev.scratch.named_parameters())
        d = {k: whole[k].detach().clone() for k in own}
        alpha = self._line_search(lev, x, y, own, g, d, f0)
        smooth(cfg["mgopt_post"])
        return alpha

    def _line_search(self, lev: _Level, x: torch.Tensor, y: torch.Tensor, own: dict[str, torch.Tensor],
                     g: dict[str, torch.Tensor], d: dict[str, torch.Tensor], f0: float) -> float:
        """Take ``θ ← θ + α d`` with Armijo's backtracking from ``alpha``; returns ``α``."""
        cfg = self.config
        alpha = cfg["mgopt_alpha"]
        if alpha == 0.0:
            return 0.0
        slope = self._dot(g, d)
        if slope >= 0.0:  # not a descent direction of f_l: no step length makes it one
            return 0.0
        theta = {k: p.detach().clone() for k, p in own.items()}
        for _ in range(cfg["mgopt_line_search"] + 1):
            with torch.no_grad():
                for k, p in own.items():
                    p.copy_(theta[k] + alpha * d[k])
            if not cfg["mgopt_line_search"]:
                return alpha
            if self._objective(lev, self._loss(lev, x, y), own) <= f0 + ARMIJO * alpha * slope:
                return alpha
            alpha /= 2
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(theta[k])
        return 0.0

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def _coherence(lev: _Level) -> Any:
        """The optimiser's step pre-hook of level ``lev``: its gradient is ``∇J − v``."""
        def hook(optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
            if lev.v:
                for k, p in lev.params.items():
                    if k in lev.v:
                        p.grad = _grad(p) - lev.v[k]
        return hook

    def _gather(self, lev: _Level, values: dict[str, torch.Tensor], into: Problem | None = None) -> None:
        """Write every rank's ``values`` (its parameters' tensors by name) into the level's
        whole network (or ``into``, a network of its shape), on every rank."""
        target = dict((into if into is not None else lev.whole).named_parameters())
        mine = lev.owners[self.comm.rank]
        like = next(iter(target.values()))
        flat = torch.cat([values[k].detach().flatten() for k in mine]) if mine else like.new_zeros(0)
        parts = self.comm.allgather(flat) if self.comm.size > 1 else [flat.cpu()]
        with torch.no_grad():
            for names, part in zip(lev.owners, parts):
                offset = 0
                for k in names:
                    t = target[k]
                    t.copy_(part[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()

    def _dot(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        """``⟨a, b⟩`` over every rank's parameters (a collective)."""
        local = sum(float((a[k] * b[k]).sum()) for k in a) if a else 0.0
        return float(self.comm.allreduce(local)) if self.comm.size > 1 else local

    def _objective(self, lev: _Level, loss: float | None, own: dict[str, torch.Tensor]) -> float:
        """``f_l = J_l − ⟨v, θ⟩`` on every rank, from the loss the last rank holds."""
        J = float(self.comm.bcast(loss, root=self.comm.size - 1)) if self.comm.size > 1 else float(loss or 0.0)
        if not lev.v:
            return J
        return J - self._dot(lev.v, {k: p.detach() for k, p in own.items()})

    def _loss(self, lev: _Level, x: torch.Tensor, y: torch.Tensor) -> float | None:
        """The batch's mean loss of the level's network (on the last rank)."""
        with torch.no_grad():
            logits = lev.solver.predict(x)
        return None if logits is None else float(lev.solver.network.loss(logits, y))

    # -- checkpoints ---------------------------------------------------------------------------
    global_state = True  # every level's inner solver keys its state globally

    def state_dict(self) -> dict[str, Any]:
        return {"levels": [lev.solver.state_dict() for lev in self.levels]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        levels = state.get("levels", [])
        if len(levels) != len(self.levels):
            raise ValueError(f"the state has {len(levels)} MG/Opt level(s), the solver {len(self.levels)}")
        for lev, s in zip(self.levels, levels):
            lev.solver.load_state_dict(s)

    def reshardable(self) -> bool:
        return all(lev.solver.reshardable() for lev in self.levels)


def _grad(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)

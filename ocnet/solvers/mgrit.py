"""Layer-parallel training by MGRIT: forward and adjoint solves in parallel over layer-time.

One optimiser step: the opening gives ``u_0`` (rank 0); MGRIT solves the state equation over
the ranks; the last rank evaluates the loss and ``λ_N = ∂ℓ/∂u_N``; MGRIT solves the adjoint
backward; each rank assembles the gradients of the layers it holds, rank 0 that of the
opening (from ``λ_0``), the last rank that of the classifier.

``mgrit_mode = "exact"`` iterates both solves to ``mgrit_tol`` (relative to ``‖u_0‖``,
``‖λ_N‖``): the gradient is back-propagation's, up to the tolerance.  ``"one_shot"`` takes
``mgrit_iters`` iterations of each per step, warm-started from the states and adjoints of the
previous step (``mgrit_warm_start = "batch"``) or of the last step that saw the same samples
(``"sample"``): the simultaneous approach of Günther et al. (SIMODS 2020), whose
gradient is inexact but whose states improve as training goes on.

Every step records its ``inexactness``: the larger of the two solves' last residuals relative
to the norm of their states at the same (fine C-) points, an estimate of how far the gradient
is from back-propagation's that costs one reduction of two numbers (the residuals are
evaluated anyway).  With ``mgrit_control = "iters"`` a one-shot run raises ``mgrit_iters`` by one after
each epoch whose mean inexactness exceeded ``mgrit_control_tol`` (the hybrid's adaptive
switch reads the same estimate, against its ``inexact_tol``, to turn to serial epochs
instead).

``mgrit_storage = "graph"`` (default) keeps each layer's autograd graph from the forward
solve's last pass, so that the adjoint steps and the parameter gradients need no forward run
again (a training step at one level costs one forward and one backward per layer, as
back-propagation does); ``"states"`` keeps one state per layer and recomputes.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ..mgrit import Layout, MGRITDivergence, solve, solve_adjoint
from ..mgrit.core import MGRITResult, n_levels
from ..mgrit.levels import square_norm
from ..mgrit.network import STORAGES, NetworkPropagator, check_layout
from ..model.grid import Partition
from ..model.options import Option
from ..model.problem import LocalNetwork
from ..ranks import tags, timeline
from ..ranks.comm import Comm
from ..ranks.filters import IDENTITY, Filter
from .base import OptimizerFactory, ParallelSolver, SolverError
from .records import Record, reduce
from .warm_start import WARM_STARTS, Cold, WarmStart


class MGRIT(ParallelSolver):
    """Layer-parallel training with MGRIT forward and adjoint solves (module docstring).

    Attributes
    ----------
    layout : Layout
        Rank ``r`` owns the states after its layers (:meth:`Layout.from_partition`).
    levels : int
        The levels the solves use.
    warm_start : WarmStart
        The initial guesses of the solves (:meth:`make_warm_start`).
    """

    name = "mgrit"
    rank_invariant = True
    options = {
        "mgrit_mode": Option(str, "exact", "exact: solve to mgrit_tol; one_shot: mgrit_iters iterations per "
                             "step, warm-started", choices=("exact", "one_shot")),
        "mgrit_levels": Option(int, 2, "MGRIT levels (every rank then starts at a multiple of "
                               "coarsening^(levels-1) layers)", min=1),
        "coarsening": Option(int, 2, "MGRIT coarsening factor c (coarse step c^l h)", min=2),
        "mgrit_relax": Option(str, "FCF", "relaxation", choices=("F", "FCF")),
        "mgrit_fine_relax": Option(str, "auto", "relaxation on the fine level (auto: F in exact mode, where it "
                                   "reaches the tolerance in fewer step evaluations, as torchbraid's default F with "
                                   "FCF on the coarse levels; --mgrit-relax in one-shot mode, whose few iterations "
                                   "gain from FCF)", choices=("auto", "F", "FCF")),
        "mgrit_cf_sweeps": Option(int, 1, "CF sweeps after the first F-relaxation (FCF relaxation)", min=1),
        "mgrit_cycle": Option(str, "V", "multigrid cycle", choices=("V", "F")),
        "mgrit_tol": Option(float, 1e-6, "exact mode: residual tolerance, relative to |u_0| (forward) "
                            "and |lambda_N| (adjoint)", positive=True),
        "mgrit_max_iter": Option(int, 30, "exact mode: most iterations per solve", min=1),
        "mgrit_iters": Option(int, 1, "one-shot mode: iterations per solve and optimiser step", min=0),
        "mgrit_warm_start": Option(str, "batch", "initial guess: the previous batch's states (batch), each "
                                   "sample's last states (sample: memory n_train x layers/rank x state), or "
                                   "zero (none)", choices=("batch", "sample", "none")),
        "mgrit_coarse_substeps": Option(int, 1, "Euler sub-steps per coarse step (remedy for unstable "
                                        "coarse steps)", min=1),
        "mgrit_storage": Option(str, "graph", "graph: keep each layer's autograd graph from the forward solve "
                                "(no forward re-run; memory: the step's activations per layer); states: one "
                                "state per layer, recompute", choices=STORAGES),
        "mgrit_skip": Option(bool, False, "XBraid's skip: start each solve with a cycle that has no "
                             "down-cycle (the guess injected on every level, the coarsest solved, corrections "
                             "carried up)"),
        "mgrit_final_fc": Option(bool, False, "XBraid's final FC-relaxation: the last iteration's C-points take "
                                 "the steps its residual evaluated (u_N one fine step from u_N-1, no step more)"),
        "mgrit_reuse": Option(bool, True, "evaluate no coarse step twice from the same state (the same "
                              "states bit for bit, fewer layer steps; memory: one input and output per coarse "
                              "point)", resumable=True),
        "mgrit_control": Option(str, "off", "one-shot mode: raise mgrit_iters by one after an epoch whose mean "
                                "gradient inexactness (relative residual) exceeded mgrit_control_tol (iters), or "
                                "keep it fixed (off)", choices=("off", "iters")),
        "mgrit_control_tol": Option(float, 0.05, "the mean inexactness per epoch (relative residual) the "
                                    "accuracy control tolerates", positive=True),
    }

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, **options: Any) -> None:
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, **options)
        if filter.name != IDENTITY.name:
            raise ValueError(f"mgrit does not support communication filters yet (got {filter.name!r}); "
                             "use --filter identity")
        cfg = self.config
        self.prop = NetworkPropagator(network, cfg["coarsening"], cfg["mgrit_coarse_substeps"],
                                      cfg["mgrit_storage"])
        self.N = self.prop.N
        self.layout = Layout.from_partition(network.partition)
        self.levels = n_levels(self.N, cfg["coarsening"], cfg["mgrit_levels"])
        check_layout(network, self.layout, cfg["coarsening"], self.levels)
        self.mgrit_tags = self.tags.take(len(tags.MGRIT))
        self.warm_start = self.make_warm_start()
        # this rank's points of the forward solve and of the adjoint's (in reversed time)
        self.points = {what: range(lo, hi + 1) for what, (lo, hi) in
                       (("u", self.layout.bounds[comm.rank]), ("lam", self.layout.mirror().bounds[comm.rank]))}
        self.iters = cfg["mgrit_iters"]  # one-shot iterations; the accuracy control raises them
        #: Caps on an exact solve's iterations below ``mgrit_max_iter``, by solve (``"forward"``,
        #: ``"adjoint"``); the performance model's replay sets them to the iterations the
        #: configured network's solves take, which its miniature would not (:mod:`ocnet.perf.speedup`).
        self.max_iter: dict[str, int] = {}
        self._inexactness, self._steps = 0.0, 0  # this epoch's sum and count

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """Ranks start at multiples of ``c^(L-1)``, so that every coarse step a rank computes
        uses a layer it holds; the pieces between are dealt out evenly."""
        c = config["coarsening"]
        s = c ** (n_levels(n_layers, c, config["mgrit_levels"]) - 1)
        cuts = [*range(0, n_layers, s), n_layers]
        if len(cuts) - 1 < n_ranks:
            raise ValueError(
                f"mgrit: with coarsening {c} and {config['mgrit_levels']} levels every rank must start at a "
                f"multiple of c^(levels-1) = {s}, and {n_layers} layers have only {len(cuts) - 1} such "
                f"piece(s) for {n_ranks} ranks: use fewer levels or ranks, a smaller coarsening, or at least "
                f"{s * (n_ranks - 1) + 1} layers")
        return Partition.aligned(cuts, n_ranks)

    def make_warm_start(self) -> WarmStart:
        """The warm-start strategy (``mgrit_warm_start``); override to supply your own."""
        return WARM_STARTS[self.config["mgrit_warm_start"]]()

    # -- one optimiser step ---------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        record = self.gradient(x, y, index)
        with timeline.span("update", steps=len(self.network.layers)):
            self.optimizer.step()
        return record

    def gradient(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        net, comm, cfg = self.network, self.comm, self.config
        self.optimizer.zero_grad(set_to_none=True)
        exact = cfg["mgrit_mode"] == "exact"

        with timeline.span("head"):
            u0 = net.opening(x) if net.opening is not None else None
        u0_value = None if u0 is None else u0.detach()
        warm, points = self.warm_start, self.points
        tol = {"forward": cfg["mgrit_tol"] * self._norm(u0_value) if exact else 0.0}
        try:
            fwd = solve(self.prop, u0_value, self.N, comm, layout=self.layout,
                        guess=warm.guess("u", index, points["u"]), tol=tol["forward"], **self.solve_options("forward"))
        except MGRITDivergence as e:
            self.prop.release()
            raise SolverError(f"mgrit: the forward solve diverged: {e}") from e

        loss, lam_N = None, None
        if net.is_last:
            with timeline.span("head"), torch.enable_grad():
                uN = fwd.at(self.N).detach().requires_grad_(True)
                out = net.loss(net.head(uN), y)
                out.backward()  # the classifier's gradient, and λ_N
            loss, lam_N = float(out.detach()), uN.grad
        tol["adjoint"] = cfg["mgrit_tol"] * self._norm(lam_N) if exact else 0.0
        # λ is the adjoint of the batch's *mean* loss, 1/n of each sample's own: the warm start
        # keeps n λ, so that a guess fits a batch of another size (a data group's share)
        n = len(index)
        lam_guess = warm.guess("lam", index, points["lam"])
        try:
            adj = solve_adjoint(self.prop, fwd.u, lam_N, self.N, comm, layout=self.layout,
                                guess=None if lam_guess is None else [g / n for g in lam_guess],
                                tol=tol["adjoint"], device=self.device,
                                **self.solve_options("adjoint"))
        except MGRITDivergence as e:
            self.prop.release()
            raise SolverError(f"mgrit: the adjoint solve diverged: {e}") from e

        self.prop.finish_gradients(adj.states, adj.lam)
        if u0 is not None:
            with timeline.span("head"):
                u0.backward(adj.lam[0])
        if type(warm) is not Cold:  # Cold forgets: n λ at every point would be copies thrown away
            warm.remember("u", index, fwd.points, fwd.u)
            warm.remember("lam", index, adj.mgrit.points, [n * lam for lam in adj.mgrit.u])

        residual = {"forward": fwd.residual, "adjoint": adj.mgrit.residual}
        inexactness = 0.0
        # The residuals are the same on every rank, so every rank skips the states' norms (and
        # their reduction) alike where no residual is left to scale (one level: an exact sweep).
        if any(r[-1] > 0 for r in residual.values()):
            scale = dict(zip(residual, self._c_norms(fwd, adj.mgrit)))
            inexactness = max(residual[k][-1] / scale[k] if scale[k] > 0 else 0.0 for k in residual)
        self._inexactness, self._steps = self._inexactness + inexactness, self._steps + 1
        record: Record = {} if loss is None else {"loss": loss}
        record.update(residual=residual, inexactness=inexactness,
                      step_evals=fwd.step_evals[-1] + adj.mgrit.step_evals[-1] if fwd.step_evals else 0,
                      conv_factor={"forward": _finite(fwd.conv_factor), "adjoint": _finite(adj.mgrit.conv_factor)},
                      n_layers=self.N)
        if exact:
            record["tolerance"] = tol  # absolute, as the residuals are
        else:
            record["mgrit_iters"] = self.iters
        return record

    def end_epoch(self, epoch: int) -> Record:
        """The accuracy control (``mgrit_control = "iters"``): one iteration more per solve
        after an epoch whose mean inexactness exceeded ``mgrit_control_tol``, up to
        ``mgrit_max_iter``; every rank decides alike (rank 0's mean is broadcast)."""
        cfg, steps = self.config, self._steps
        mean = self._inexactness / steps if steps else 0.0
        self._inexactness, self._steps = 0.0, 0
        if cfg["mgrit_mode"] == "one_shot" and cfg["mgrit_control"] == "iters" and steps:
            mean = reduce(self.comm, "inexactness", mean, self.record_fields())
            if mean > cfg["mgrit_control_tol"] and self.iters < cfg["mgrit_max_iter"]:
                self.iters += 1  # the next step's record shows it
        return {}

    def solve_options(self, solve: str = "forward") -> dict[str, Any]:
        """The keyword arguments this step gives :func:`ocnet.mgrit.solve` for ``solve``
        (``"forward"`` or ``"adjoint"``, which :func:`~ocnet.mgrit.solve_adjoint` passes on):
        levels, relaxation, cycle, iterations and tags."""
        cfg = self.config
        exact = cfg["mgrit_mode"] == "exact"
        fine = cfg["mgrit_fine_relax"]
        if fine == "auto":
            fine = "F" if exact else cfg["mgrit_relax"]
        return dict(levels=self.levels, relaxation=cfg["mgrit_relax"],
                    fine_relaxation=fine, cf_sweeps=cfg["mgrit_cf_sweeps"],
                    cycle=cfg["mgrit_cycle"],
                    max_iter=min(cfg["mgrit_max_iter"], self.max_iter.get(solve, cfg["mgrit_max_iter"])) if exact
                    else self.iters,
                    skip=cfg["mgrit_skip"], final_fc=cfg["mgrit_final_fc"], reuse=cfg["mgrit_reuse"],
                    tags=self.mgrit_tags)

    def _c_norms(self, *solves: MGRITResult) -> list[float]:
        """The 2-norm of each solve's states over the fine C-points, where its residual is
        taken, measured as the residual is (:func:`~ocnet.mgrit.levels.square_norm`); the same
        numbers on every rank (one reduction for all)."""
        c = self.config["coarsening"]
        local = torch.tensor([sum(float(square_norm(u)) for n, u in zip(s.points, s.u) if n % c == 0)
                              for s in solves], dtype=torch.float64)
        return [math.sqrt(float(v)) for v in self.comm.allreduce(local)]

    def _norm(self, v_on_owner: torch.Tensor | None) -> float:
        """``‖v‖`` for ``v`` known on one rank; the same number on every rank."""
        local = 0.0 if v_on_owner is None else float(torch.linalg.vector_norm(v_on_owner, dtype=torch.float64))
        return self.comm.allreduce(local)

    # -- checkpoints ----------------------------------------------------------------------
    global_state = True  # the warm start's guesses are keyed by global time point

    def state_dict(self) -> dict[str, Any]:
        # the epoch's inexactness sum is the same on every rank: any rank's copy will do
        return {**super().state_dict(), "warm_start": self.warm_start.state_dict(), "iters": self.iters,
                "inexactness": [self._inexactness, self._steps]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.warm_start.load_state_dict(state["warm_start"], self.device, points=self.points)
        self.iters = state.get("iters", self.config["mgrit_iters"])
        self._inexactness, self._steps = state.get("inexactness", (0.0, 0))

    def reshardable(self) -> bool:
        return super().reshardable() and getattr(self.warm_start, "global_state", False)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

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
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..comm import Comm
from ..config import Option
from ..filters import IDENTITY, Filter
from ..mgrit import Layout, solve, solve_adjoint
from ..mgrit.core import n_levels
from ..mgrit.network import NetworkPropagator, accumulate_gradients, check_layout
from ..problem import LocalNetwork
from .base import OptimizerFactory, Solver


class _SampleStore:
    """Rows ``(n_samples, …)`` per time point, grown on demand: row ``i`` is training sample ``i``."""

    def __init__(self) -> None:
        self.rows: dict[int, torch.Tensor] = {}

    def get(self, points: range, index: torch.Tensor) -> list[torch.Tensor] | None:
        if not self.rows:
            return None
        out = []
        for n in points:
            rows = self._grow(n, int(index.max()) + 1)
            out.append(rows[index.to(rows.device)])
        return out

    def put(self, points: range, index: torch.Tensor, values: list[torch.Tensor]) -> None:
        for n, v in zip(points, values):
            if n not in self.rows:
                self.rows[n] = torch.zeros((0, *v.shape[1:]), dtype=v.dtype, device=v.device)
            rows = self._grow(n, int(index.max()) + 1)
            rows[index.to(rows.device)] = v.detach()

    def _grow(self, n: int, size: int) -> torch.Tensor:
        rows = self.rows.get(n)
        if rows is None:  # a point first met now: shaped like the others
            like = next(iter(self.rows.values()))
            rows = self.rows[n] = like.new_zeros((0, *like.shape[1:]))
        if rows.shape[0] < size:
            rows = self.rows[n] = torch.cat([rows, rows.new_zeros((size - rows.shape[0], *rows.shape[1:]))])
        return rows


class MGRIT(Solver):
    """Layer-parallel training with MGRIT forward and adjoint solves (module docstring).

    Attributes
    ----------
    layout : Layout
        Rank ``r`` owns the states after its layers (:meth:`Layout.from_partition`).
    levels : int
        The levels the solves use.
    """

    name = "mgrit"
    options = {
        "mgrit_mode": Option(str, "exact", "exact: solve to mgrit_tol; one_shot: mgrit_iters iterations per "
                             "step, warm-started", choices=("exact", "one_shot")),
        "mgrit_levels": Option(int, 2, "MGRIT levels (each rank's first layer must be a multiple of "
                               "coarsening^(levels-1))", min=1),
        "coarsening": Option(int, 4, "MGRIT coarsening factor c (coarse step c^l h)", min=2),
        "mgrit_relax": Option(str, "FCF", "relaxation", choices=("F", "FCF")),
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
    }

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, **options: Any) -> None:
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, **options)
        if filter.name != IDENTITY.name:
            raise ValueError(f"mgrit does not support communication filters yet (got {filter.name!r}); "
                             "use --filter identity")
        cfg = self.config
        self.prop = NetworkPropagator(network, cfg["coarsening"], cfg["mgrit_coarse_substeps"])
        self.N = self.prop.N
        self.layout = Layout.from_partition(network.partition)
        self.levels = n_levels(self.N, cfg["coarsening"], cfg["mgrit_levels"])
        check_layout(network, self.layout, cfg["coarsening"], self.levels)
        self.warm: dict[str, Any] = {"u": _SampleStore(), "lam": _SampleStore()}  # or lists ("batch")

    # -- one optimiser step ---------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> dict[str, Any]:
        net, comm, cfg = self.network, self.comm, self.config
        self.optimizer.zero_grad(set_to_none=True)
        exact = cfg["mgrit_mode"] == "exact"

        u0 = net.opening(x) if net.is_first else None
        u0_value = None if u0 is None else u0.detach()
        fwd = solve(self.prop, u0_value, self.N, comm, layout=self.layout,
                    guess=self._guess("u", index, len(y)),
                    tol=self._tol(u0_value) if exact else 0.0, **self._solve_options(exact))

        loss, lam_N = None, None
        if net.is_last:
            with torch.enable_grad():
                uN = fwd.at(self.N).detach().requires_grad_(True)
                out = net.loss(net.head(uN), y)
                out.backward()  # the classifier's gradient, and λ_N
            loss, lam_N = float(out.detach()), uN.grad
        adj = solve_adjoint(self.prop, fwd.u, lam_N, self.N, comm, layout=self.layout,
                            guess=self._guess("lam", index, len(y)),
                            tol=self._tol(lam_N) if exact else 0.0, device=self.device,
                            **self._solve_options(exact))

        accumulate_gradients(net, adj.states, adj.lam)
        if u0 is not None:
            u0.backward(adj.lam[0])
        self.optimizer.step()
        self._remember("u", index, fwd.points, fwd.u)
        self._remember("lam", index, adj.mgrit.points, adj.mgrit.u)

        record: dict[str, Any] = {} if loss is None else {"loss": loss}
        if comm.rank == 0:  # globally known: reported once (the loop sums over ranks)
            record.update(
                residual={"forward": fwd.residual, "adjoint": adj.mgrit.residual},
                conv_factor={"forward": _finite(fwd.conv_factor), "adjoint": _finite(adj.mgrit.conv_factor)},
                n_layers=self.N)
        return record

    def _solve_options(self, exact: bool) -> dict[str, Any]:
        cfg = self.config
        return dict(c=cfg["coarsening"], levels=self.levels, relaxation=cfg["mgrit_relax"],
                    cf_sweeps=cfg["mgrit_cf_sweeps"], cycle=cfg["mgrit_cycle"],
                    max_iter=cfg["mgrit_max_iter"] if exact else cfg["mgrit_iters"])

    def _tol(self, scale_on_owner: torch.Tensor | None) -> float:
        """``mgrit_tol × ‖v‖`` for ``v`` known on one rank; the same number on every rank."""
        local = 0.0 if scale_on_owner is None else float(torch.linalg.vector_norm(scale_on_owner.double()))
        return self.config["mgrit_tol"] * self.comm.allreduce(local)

    # -- warm starts ----------------------------------------------------------------------
    def _guess(self, what: str, index: torch.Tensor, batch: int) -> list[torch.Tensor] | None:
        mode = self.config["mgrit_warm_start"]
        if mode == "none":
            return None
        store = self.warm[what]
        if mode == "batch":
            # every rank knows the batch size, so every rank decides alike
            return store if isinstance(store, list) and store and store[0].shape[0] == batch else None
        points = self._points(what)
        return store.get(points, index)

    def _remember(self, what: str, index: torch.Tensor, points: range, values: list[torch.Tensor]) -> None:
        mode = self.config["mgrit_warm_start"]
        if mode == "batch":
            self.warm[what] = [v.detach() for v in values]
        elif mode == "sample":
            self.warm[what].put(points, index, values)

    def _points(self, what: str) -> range:
        layout = self.layout if what == "u" else self.layout.mirror()
        lo, hi = layout.bounds[self.comm.rank]
        return range(lo, hi + 1)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["warm"] = {k: (v.rows if isinstance(v, _SampleStore) else v) for k, v in self.warm.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k, v in state.get("warm", {}).items():
            if isinstance(v, dict):
                store = _SampleStore()
                store.rows = {int(n): t.to(self.device) for n, t in v.items()}
                self.warm[k] = store
            else:
                self.warm[k] = [t.to(self.device) for t in v]


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None

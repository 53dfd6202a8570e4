"""A residual network as an MGRIT propagator, and the gradient assembled from the adjoint.

Fine step ``i`` is layer ``i``: ``Φ_i(u) = u + h F(u; θ_i)``.  The coarse step on level ℓ
from fine point ``i`` is the same layer with step ``c^ℓ h`` — the controls of the fine point
the coarse point sits on (injection).  With ``substeps = s > 1`` it is ``s`` Euler steps of
``c^ℓ h / s`` with those controls: the remedy when ``c^ℓ h`` is too large a step (see
docs/mgrit.rst, "Unstable coarse steps").

Storage (``storage``): ``"states"`` keeps only the states; every adjoint step runs its layer's
forward again under autograd, and the parameter gradients take one more forward and backward
per layer.  ``"graph"`` keeps, for each fine step ``i``, ``x_i`` (the input, detached) and
``z_i = F_i(x_i)`` with its autograd graph, from the fine pass that may be the solve's last
(:class:`~ocnet.mgrit.levels.Announced`): the latest of them is at the final state.  An
adjoint step on any level ℓ from fine point ``n`` (one substep) is then
``μ + c^ℓ h (∂F_n/∂u)^T μ``, one input-gradient of the stored graph; the parameter gradient
``h (∂F_n/∂θ_n)^T λ_{n+1}`` comes from the same graph, fused into the adjoint's last fine
pass when that pass is known to take each step once.
"""
from __future__ import annotations

import torch

from ..model.problem import LocalNetwork
from ..model.steps import Residual
from ..ranks import timeline
from .layout import Layout
from .levels import DONE, LAST, MAY_BE_LAST, NOT_LAST

STORAGES = ("graph", "states")


class NetworkPropagator:
    """The residual layers one rank holds, as a :class:`~ocnet.mgrit.levels.Propagator`.

    Parameters
    ----------
    network : LocalNetwork
        A single-stage network: every layer a :class:`~ocnet.model.steps.Residual` of one shape.
    c : int
        Coarsening factor (coarse step ``c^ℓ h``), the one :func:`~ocnet.mgrit.core.solve`
        coarsens by.
    substeps : int
        Euler sub-steps per coarse step.
    storage : {"graph", "states"}
        What the forward solve keeps for the adjoint (module docstring): ``"graph"`` a
        conv/dense step's autograd graph per layer (its saved activations), ``"states"`` one
        state per layer (least memory, a forward re-run per adjoint step).

    Raises
    ------
    ValueError
        For a network with several stages or a transition layer, or an unknown storage.
    """

    def __init__(self, network: LocalNetwork, c: int, substeps: int = 1, storage: str = "graph") -> None:
        if len(network.stages) != 1 or not all(isinstance(layer, Residual) for layer in network.layers):
            raise ValueError(
                f"mgrit needs a single-stage network (every layer a residual step of one shape); this one "
                f"has {len(network.stages)} stages — use one channels entry (e.g. --channels 16) or a "
                f"dense net, or another solver")
        if substeps < 1:
            raise ValueError(f"substeps must be at least 1, got {substeps}")
        if storage not in STORAGES:
            raise ValueError(f"unknown storage {storage!r}; choose from {', '.join(STORAGES)}")
        self.layers: dict[int, Residual] = {network.start + k: layer for k, layer in enumerate(network.layers)
                                            if isinstance(layer, Residual)}
        self.N = network.stages[0].N
        self.c, self.substeps, self.storage = c, substeps, storage
        #: fine step i ↦ (x_i, z_i = F_i(x_i) with its graph): the latest recorded evaluation
        self.graphs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._record = False  # the forward solve's current fine pass may be its last
        self._fuse = False  # the adjoint's current fine pass is its last and takes each step once
        self._done: set[int] = set()  # layers whose parameter gradients are accumulated

    def _layer(self, i: int) -> Residual:
        try:
            return self.layers[i]
        except KeyError:
            raise RuntimeError(f"layer {i} is not held by this rank (layers {min(self.layers)}…"
                               f"{max(self.layers)}); see check_layout") from None

    def _apply(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor:
        layer = self._layer(i)
        H = self.c ** level * layer.h
        if level == 0 or self.substeps == 1:
            return layer(u, h=H)
        for _ in range(self.substeps):
            u = layer(u, h=H / self.substeps)
        return u

    def step(self, level: int, i: int, u: torch.Tensor) -> torch.Tensor:
        """``Φ^ℓ_i(u)`` for a state ``(batch, …)``; the result carries no graph.  In a fine pass
        that may be the forward solve's last (``storage="graph"``) the step's graph is kept."""
        if self._record and level == 0:
            layer = self._layer(i)
            with timeline.span("forward_graph", steps=1, level=0), torch.enable_grad():
                x = u.detach().requires_grad_(True)
                z = layer.rhs(x)
                self.graphs[i] = (x, z)  # replaces (frees) an earlier evaluation's graph
                return u + layer.h * z.detach()
        with timeline.span("forward", steps=1, level=level), torch.no_grad():
            return self._apply(level, i, u)

    def fine_pass(self, last: str) -> None:
        """The forward solve's announcement (:class:`~ocnet.mgrit.levels.Announced`): record
        graphs in passes that may be the last; a pass that cannot be drops the stale ones."""
        if last == NOT_LAST:
            self.graphs.clear()
        self._record = self.storage == "graph" and last in (MAY_BE_LAST, LAST)

    def adjoint_pass(self, last: str) -> None:
        """The adjoint solve's announcement: in its ``LAST`` pass each fine adjoint step also
        gives its layer's parameter gradient (one autograd call), and frees the graph."""
        self._fuse = last == LAST
        if last == DONE:
            self._fuse = False

    def _graph(self, level: int, i: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if level > 0 and self.substeps > 1:
            return None  # several Euler substeps: not a function of F_i(u_i) alone
        return self.graphs.get(i)

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``(∂Φ^ℓ_i/∂u)(u)^T lam``, from the stored graph of fine step ``i`` where there is one
        (it is at the final forward state, the ``u`` given); otherwise the layer's forward is
        run again.  In the adjoint's last pass the fine step also adds its layer's parameter
        gradient ``h (∂F_i/∂θ_i)^T lam`` to ``.grad``."""
        layer = self._layer(i)
        H = self.c ** level * layer.h
        graph = self._graph(level, i)
        if graph is None:
            with timeline.span("vjp_recompute", steps=1, level=level), torch.enable_grad():
                x = u.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._apply(level, i, x), x, lam)
            return g
        x, z = graph
        if self._fuse and level == 0:
            params = _trainable(layer)
            with timeline.span("backward", steps=1, level=0):
                grads = torch.autograd.grad(z, [x, *params], H * lam, allow_unused=True)
                _accumulate(params, grads[1:])
            del self.graphs[i]
            self._done.add(i)
            return lam + grads[0]
        with timeline.span("vjp", steps=1, level=level):
            (g,) = torch.autograd.grad(z, x, H * lam, retain_graph=True)
            return lam + g

    def finish_gradients(self, states: dict[int, torch.Tensor], lam: dict[int, torch.Tensor]) -> None:
        """Add ``∂J/∂θ_k = h (∂F/∂θ)(u_k; θ_k)^T λ_{k+1}`` to the ``.grad`` of every layer ``k``
        this rank holds whose adjoint's last pass did not already, and free the graphs.

        Parameters
        ----------
        states : dict of int to Tensor
            ``u_k`` at the layers' inputs (used where no graph is stored).
        lam : dict of int to Tensor
            ``λ_{k+1}`` at their outputs.
        """
        todo = [k for k in sorted(self.layers) if k not in self._done]
        stored = [k for k in todo if k in self.graphs]
        if stored:
            with timeline.span("weight_grad", steps=len(stored)), torch.enable_grad():
                for k in stored:
                    x, z = self.graphs.pop(k)
                    params = _trainable(self.layers[k])
                    _accumulate(params, torch.autograd.grad(z, params, self.layers[k].h * lam[k + 1],
                                                            allow_unused=True))
        for k in todo:
            if k not in stored:
                layer = self.layers[k]
                with timeline.span("forward_graph", steps=1, level=0), torch.enable_grad():
                    out = layer(states[k].detach())
                with timeline.span("weight_grad", steps=1):
                    out.backward(lam[k + 1])
        self.release()

    def release(self) -> None:
        """Drop the stored graphs and the record of finished gradients."""
        self.graphs.clear()
        self._done.clear()
        self._record = self._fuse = False


def _trainable(layer: Residual) -> list[torch.Tensor]:
    return [p for p in layer.parameters() if p.requires_grad]


def _accumulate(params: list[torch.Tensor], grads: tuple[torch.Tensor | None, ...] | list) -> None:
    """``p.grad += g`` (as ``backward`` would) for each parameter that the step uses."""
    for p, g in zip(params, grads):
        if g is not None:
            p.grad = g if p.grad is None else p.grad + g


def check_layout(network: LocalNetwork, layout: Layout, c: int, levels: int) -> None:
    """Check that every coarse step this rank computes uses a layer it holds.

    The coarse step into level-ℓ point ``j`` is computed by the point's owner and uses layer
    ``(j-1) c^ℓ``; that is local when each rank's first layer is a multiple of ``c^(L-1)``.

    Raises
    ------
    ValueError
        Naming a layer count, rank count or number of levels that works.
    """
    held = range(network.start, network.stop)
    for level in range(1, levels):
        a, b = layout.local(network.rank, level, c)
        for j in range(max(a, 1), b + 1):
            k = (j - 1) * c ** level
            if k not in held:
                raise ValueError(
                    f"mgrit: with coarsening {c} and {levels} levels, rank {network.rank} (layers "
                    f"{network.start}…{network.stop - 1}) would need layer {k} of its neighbour for a "
                    f"coarse step. Every rank's first layer must be a multiple of c^(levels-1) = "
                    f"{c ** (levels - 1)}: use fewer levels, a smaller coarsening, or a layer count "
                    f"such as {c ** (levels - 1) * network.size} (a multiple of {c ** (levels - 1)} × ranks)")

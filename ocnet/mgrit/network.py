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
pass when that pass is known to take each step once.  A step taken from the previous
recorded step's result links its graph to that step's (:class:`Record`), so that the last
pass differentiates each run of consecutive steps — a rank's whole sweep on one level, an
interval C → F … F → C on several — in one autograd call, as plain back-propagation does.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..model.problem import LocalNetwork
from ..model.steps import Residual
from ..ranks import timeline
from .layout import Layout
from .levels import DONE, LAST, MAY_BE_LAST, NOT_LAST

STORAGES = ("graph", "states")


class Record(NamedTuple):
    """Fine step ``i``'s recorded evaluation: ``y = x + h z`` with ``z = F_i(x)``.

    ``x`` is a leaf (``u_i`` detached), or, in the solve's last pass, the ``y`` of step
    ``i - 1``'s record when the step was taken from that record's ``out``: consecutive
    recorded steps form one autograd graph (a chain), which the adjoint's last pass
    differentiates in one call.
    """

    x: torch.Tensor
    z: torch.Tensor
    y: torch.Tensor
    out: torch.Tensor  # y detached: the state the solve saw


class _Pending(NamedTuple):
    """A chain backward's result for fine step ``i``, handed out when the adjoint reaches it."""

    mu: torch.Tensor  # λ_{i+1}: the adjoint the solve must pass for this result to be its step's
    lam: torch.Tensor  # λ_i
    grads: tuple  # h (∂F_i/∂θ_i)^T λ_{i+1}, per trainable parameter


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
        #: fine step i ↦ its latest recorded evaluation (x_i, z_i = F_i(x_i) with its graph, y_i, out)
        self.graphs: dict[int, Record] = {}
        self._record = False  # the forward solve's current fine pass may be its last
        self._link = False  # ... and is: only the last pass's chains are differentiated whole
        self._pending: dict[int, _Pending] = {}  # the current chain backward's results
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
        that may be the forward solve's last (``storage="graph"``) the step's graph is kept, in
        the pass that is the last as a link of the previous step's chain when ``u`` is that
        step's result."""
        if self._record and level == 0:
            layer = self._layer(i)
            prev = self.graphs.get(i - 1)
            with timeline.span("forward_graph", steps=1, level=0), torch.enable_grad():
                x = prev.y if self._link and prev is not None and prev.out is u else u.detach().requires_grad_(True)
                z = layer.rhs(x)
                y = x + layer.h * z
                # replaces (frees) an earlier evaluation's graph, unless a later step's chain holds it
                self.graphs[i] = Record(x, z, y, y.detach())
                return self.graphs[i].out
        with timeline.span("forward", steps=1, level=level), torch.no_grad():
            return self._apply(level, i, u)

    def fine_pass(self, last: str) -> None:
        """The forward solve's announcement (:class:`~ocnet.mgrit.levels.Announced`): record
        graphs in passes that may be the last; a pass that cannot be drops the stale ones.
        Only the last pass links its steps into chains: in a pass that may be the last, a
        step's new graph must free the previous pass's, which a later step's link would hold."""
        if last == NOT_LAST:
            self.graphs.clear()
        self._record = self.storage == "graph" and last in (MAY_BE_LAST, LAST)
        self._link = self._record and last == LAST

    def adjoint_pass(self, last: str) -> None:
        """The adjoint solve's announcement: in its ``LAST`` pass each fine adjoint step also
        gives its layer's parameter gradient, from one autograd call per chain of recorded
        steps, and frees the graphs."""
        self._fuse = last == LAST
        if last == DONE:
            self._fuse = False

    def _graph(self, level: int, i: int) -> Record | None:
        if level > 0 and self.substeps > 1:
            return None  # several Euler substeps: not a function of F_i(u_i) alone
        return self.graphs.get(i)

    def _chain(self, i: int) -> list[int]:
        """The recorded steps ``k … i`` whose graphs end in step ``i``'s, latest first (no
        parameter in two of them: each layer's gradient is its own)."""
        run, seen = [i], {id(p) for p in _trainable(self.layers[i])}
        while True:
            k = run[-1] - 1
            prev = self.graphs.get(k)
            if prev is None or self.graphs[k + 1].x is not prev.y:
                return run
            ids = {id(p) for p in _trainable(self.layers[k])}
            if ids & seen:
                return run
            run.append(k)
            seen |= ids

    def _backward_chain(self, i: int, mu: torch.Tensor) -> None:
        """Differentiate the chain ending in step ``i`` at ``λ_{i+1} = mu`` in one autograd call
        (as plain back-propagation does) and keep each step's ``λ_k`` and parameter gradient
        until the adjoint's last pass reaches it (:meth:`vjp`)."""
        run = self._chain(i)
        params = [_trainable(self.layers[k]) for k in run]
        with timeline.span("backward", steps=len(run), level=0):
            grads = torch.autograd.grad(self.graphs[i].y, [self.graphs[k].x for k in run]
                                        + [p for ps in params for p in ps], mu, allow_unused=True)
        lams, rest = grads[:len(run)], list(grads[len(run):])
        for k, lam_k, ps in zip(run, lams, params):
            del self.graphs[k]  # consumed: a step the adjoint takes again is run afresh
            self._pending[k] = _Pending(mu, lam_k, tuple(rest[:len(ps)]))
            mu, rest = lam_k, rest[len(ps):]

    def vjp(self, level: int, i: int, u: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``(∂Φ^ℓ_i/∂u)(u)^T lam``, from the stored graph of fine step ``i`` where there is one
        (it is at the final forward state, the ``u`` given); otherwise the layer's forward is
        run again.  In the adjoint's last pass the fine step also adds its layer's parameter
        gradient ``h (∂F_i/∂θ_i)^T lam`` to ``.grad``: the first step of that pass to reach a
        chain differentiates the whole chain at once, and the chain's other steps take their
        results when the pass reaches them with the adjoint it gave."""
        layer = self._layer(i)
        H = self.c ** level * layer.h
        if self._fuse and level == 0:
            if i in self.graphs:
                self._backward_chain(i, lam)
            pending = self._pending.pop(i, None)
            if pending is not None and pending.mu is lam:
                _accumulate(_trainable(layer), pending.grads)
                self._done.add(i)
                return pending.lam
        graph = self._graph(level, i)
        if graph is None:
            with timeline.span("vjp_recompute", steps=1, level=level), torch.enable_grad():
                x = u.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self._apply(level, i, x), x, lam)
            return g
        with timeline.span("vjp", steps=1, level=level):
            # λ + H (∂F/∂u)^T λ in one pass over the state, not a scaled copy of λ and a sum
            (g,) = torch.autograd.grad(graph.z, graph.x, lam, retain_graph=True)
            return torch.add(lam, g, alpha=H)

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
                    params = _trainable(self.layers[k])
                    _accumulate(params, torch.autograd.grad(self.graphs.pop(k).z, params,
                                                            self.layers[k].h * lam[k + 1], allow_unused=True))
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
        self._pending.clear()
        self._done.clear()
        self._record = self._link = self._fuse = False


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

"""Penalty layer-parallel training with per-sample auxiliary states (Sun et al. 2020).

The network is cut into K blocks ``B_0 … B_{K-1}`` (``B_0`` includes the opening, so its
input is ``x``); the input of block ``b ≥ 1`` is an auxiliary state ``z_b``, one per training
sample.  Per sample the penalised objective is

    f = ℓ(C(B_{K-1}(z_{K-1})), y) + Σ_{b=1}^{K-1} (ρ/2)‖r_b‖² [+ ⟨μ_b, r_b⟩],
    r_b = z_b − P_b(B_{b-1}(z_{b-1})),  z_0 = x,

with ``P_b = decode ∘ encode`` of the communication filter at rank boundaries (identity for
the identity filter) and the bracket for the augmented Lagrangian (:mod:`.al`).  A mini-batch
minimises the batch mean ``L = mean_s f^s``.

One iteration on rank r (blocks ``b0 … b1-1``; it owns ``z_b, μ_b`` for ``b0 ≤ b < b1``, the
states its blocks *read*): one exchange with each neighbour, posted at the start —

* to the left, ``w_{b0} = z_{b0} + μ_{b0}/ρ`` (known before any computation);
* to the right, the output ``o_{b1-1}`` of its last block (as soon as it is computed).

With ``w_{b1}`` from the right, the rank's local objective (its blocks' terms, the target
term ``(ρ/2)‖P w_{b1} − P o_{b1-1}‖²`` or the loss on the last rank) gives by one backward
pass ``∂L/∂θ`` of its blocks and the part of ``∂L/∂z`` that flows through its blocks; with
``o_{b0-1}`` from the left it adds ``ρ r_{b0} + μ_{b0}``, the part of ``∂L/∂z_{b0}`` from the
left block.  Then θ takes an optimiser step and ``z`` a gradient step; no rank waits for more
than its neighbours' messages (docs/layer_parallel.rst draws the data flow).
"""
from __future__ import annotations

import functools
import math
import operator
from typing import Any, Mapping

import torch

from ..model import dropout
from ..model.grid import Partition
from ..model.options import Option
from ..model.problem import LocalNetwork
from ..ranks import sweep, timeline
from ..ranks.comm import Comm
from ..ranks.filters import IDENTITY, Filter
from ..ranks.store import SampleStore
from .base import OptimizerFactory, ParallelSolver
from .records import Record

_CHUNK = 1024  # samples per chunk of the initialising forward sweep


class Penalty(ParallelSolver):
    """Layer-parallel training of the penalised objective (module docstring).

    The cut into K blocks depends on the layers and K alone (:meth:`cuts`); the number of
    ranks only decides which rank holds which blocks (:meth:`partition`), so the method is
    the same on any number of ranks.

    Attributes
    ----------
    z, mu : SampleStore
        The auxiliary states and multipliers this rank owns, rows ``(n_train, …)`` per
        boundary index ``b`` (``mu`` stays empty for the pure penalty method).
    blocks : list of (int, int)
        The global layer range ``[start, stop)`` of each of this rank's blocks.
    rho, eta : float
        The current penalty parameter and auxiliary step size.
    """

    name = "penalty"
    rank_invariant = True  # for a fixed number of blocks
    multipliers = False
    options = {
        "rho": Option(float, 1.0, "penalty parameter rho (first epoch)", positive=True),
        "rho_growth": Option(float, 3.0, "rho is multiplied by this every epoch (1: constant); the "
                             "continuation restarts when the network is changed from outside", min=1.0),
        "rho_max": Option(float, 1e4, "upper bound for a growing rho", positive=True),
        "aux_lr": Option(float, 0.5, "auxiliary step eta*rho: z -= (aux_lr/rho) * per-sample gradient",
                         positive=True),
        "aux_decay": Option(float, 1.0, "aux_lr is multiplied by this every epoch", positive=True, max=1.0),
        "blocks": Option(int, 0, "number of blocks K, cut from the layers alone (0: one per rank, which "
                         "makes the method depend on the rank count); a rank holds consecutive blocks", min=0),
        "reinit_every": Option(int, 0, "re-initialise the auxiliary states by a forward sweep every this "
                               "many epochs (0: at the start only)", min=0),
        "filter_aux": Option(bool, False, "store the auxiliary states through the communication filter "
                             "(s^2 less memory)"),
    }

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, **options: Any) -> None:
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, **options)
        self.K = self.n_blocks(self.config, comm.size)
        cuts = self.cuts(network.partition.n_layers, self.K)
        self.b0, self.b1 = Partition(self.K, comm.size).bounds(comm.rank)
        if (network.start, network.stop) != (cuts[self.b0], cuts[self.b1]):
            raise ValueError(f"penalty: rank {comm.rank} holds layers {network.start}…{network.stop - 1}, not "
                             f"its blocks' {cuts[self.b0]}…{cuts[self.b1] - 1}; build the partition with "
                             f"{type(self).__name__}.partition")
        self.blocks = [(cuts[b], cuts[b + 1]) for b in range(self.b0, self.b1)]
        self._slices = [slice(a - network.start, b - network.start) for a, b in self.blocks]
        self.owned = [b for b in range(self.b0, self.b1) if b > 0]
        store = filter if self.config["filter_aux"] else IDENTITY
        self.z, self.mu = SampleStore(store), SampleStore(store)
        self.output_tag, self.target_tag = self.tags.take(2)
        self.rho = self.config["rho"]
        self.eta = self.config["aux_lr"] / self.rho
        self._initialized = False
        self._stale = False
        self._epoch0 = 0  # the epoch the continuation ρ = rho·rho_growth^(epoch − epoch0) started

    @staticmethod
    def cuts(n_layers: int, K: int) -> list[int]:
        """The first layer of each of the K blocks, and ``n_layers``: balanced, and a function
        of ``(n_layers, K)`` alone."""
        if not 1 <= K <= n_layers:
            raise ValueError(f"penalty: {K} blocks of {n_layers} layers: every block needs a layer; "
                             f"use at most {n_layers} blocks")
        blocks = Partition(n_layers, K)
        return [blocks.bounds(b)[0] for b in range(K)] + [n_layers]

    @classmethod
    def n_blocks(cls, config: Mapping[str, Any], n_ranks: int) -> int:
        """K: the ``blocks`` option, or one block per rank when it is 0."""
        K = config["blocks"] or n_ranks
        if K < n_ranks:
            raise ValueError(f"{cls.name}: {K} blocks for {n_ranks} ranks: every rank needs a block; "
                             f"use blocks >= ranks")
        return K

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """Each rank holds whole blocks: the K blocks dealt to the ranks in order."""
        return Partition.aligned(cls.cuts(n_layers, cls.n_blocks(config, n_ranks)), n_ranks)

    # -- the schedule and the auxiliary states ----------------------------------------------
    def schedule(self, epoch: int) -> tuple[float, float]:
        """``(ρ, η)`` of ``epoch`` (counted from the start of the continuation): ρ grows
        geometrically up to ``rho_max``; the auxiliary step is ``η = aux_lr·aux_decay^epoch / ρ``,
        so that ηρ — which decides whether the residual part of the z-update is stable
        (ηρ < 2) — does not grow with ρ.

        A growing ρ is what lets the method train: each sample's states move once per epoch
        while every θ step moves the block maps, so with a fixed ρ the last block fits
        auxiliary states the forward pass never produces (docs/layer_parallel.rst,
        "Accuracy").  The growing penalty pulls them back to the forward states."""
        c = self.config
        rho = min(c["rho_max"], c["rho"] * c["rho_growth"] ** epoch)
        return rho, c["aux_lr"] * c["aux_decay"] ** epoch / rho

    def network_changed(self) -> None:
        self._stale = True

    def begin_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> Record:
        if self._stale:
            # a new continuation: the states are rebuilt from a network someone else has
            # trained (the hybrid's serial correction), so ρ starts again from rho
            self._epoch0 = epoch
        self.rho, self.eta = self.schedule(epoch - self._epoch0)
        every = self.config["reinit_every"]
        if not self._initialized or self._stale or (every and epoch % every == 0):
            self.initialize(x)
        record: Record = {"rho": self.rho}
        if self.multipliers:
            # ‖μ‖ is not a sum over ranks: reduce here, between epochs
            record["mu_norm"] = math.sqrt(self.comm.allreduce(self.mu.sq_norm()) / len(x))
        return record

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Auxiliary states by one forward sweep over the training set ``x`` ``(n, …)``
        (then every constraint holds: ``r_b = 0``); multipliers to zero."""
        n = len(x)
        for i in range(0, n, _CHUNK):
            index = torch.arange(i, min(n, i + _CHUNK), device=self.device)

            def blocks(u: torch.Tensor, index: torch.Tensor = index) -> torch.Tensor:
                for j in range(len(self._slices)):
                    b = self.b0 + j
                    if b > 0:  # store, and read back what the store keeps
                        if b not in self.z:
                            self.z.allocate(b, n, u)
                            if self.multipliers:
                                self.mu.allocate(b, n, u)
                        self.z.set(b, index, u)
                        u = self.z.get(b, index)
                    u = self._block(j, u)
                return u

            first = x[i:i + _CHUNK] if self.comm.rank == 0 else None
            with dropout.narrow(slice(i, i + _CHUNK)):
                sweep.forward(self.comm, blocks, first, filter=self.filter, device=self.device,
                              tag=self.sweep_tags[0])
        self.mu.fill_(0.0)
        self._initialized, self._stale = True, False

    def augments(self, epoch: int) -> bool:
        return False  # per-sample auxiliary states: a sample must look the same every epoch

    # -- one iteration ------------------------------------------------------------------------
    def _block(self, j: int, u: torch.Tensor) -> torch.Tensor:
        """This rank's ``j``-th block map (the opening first on the first block of rank 0)."""
        if j == 0 and self.network.opening is not None:
            u = self.network.opening(u)
        for layer in self.network.layers[self._slices[j]]:
            u = layer(u)
        return u

    def _project(self, b: int, o: torch.Tensor) -> torch.Tensor:
        """``P_b(o)`` at a boundary ``b`` inside this rank: filtered only when the store keeps
        filtered states (across ranks the filter always applies, on the wire)."""
        return self.filter.project(o) if self.config["filter_aux"] else o

    def _penalty(self, r: torch.Tensor, mu: torch.Tensor | None) -> torch.Tensor:
        """``mean_s (ρ/2)‖r^s‖² + ⟨μ^s, r^s⟩`` for ``r, μ`` of shape ``(batch, …)``."""
        value = 0.5 * self.rho * (r ** 2).sum()
        if mu is not None:
            value = value + (mu * r).sum()
        return value / len(r)

    def gradients(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, *,
                  backward: bool = True) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor],
                                                   Record]:
        """The local gradients of one iteration, without any update.

        Leaves ``∂L/∂θ`` of this rank's parameters in their ``.grad`` (zeroed first).

        Returns
        -------
        z : dict of int to Tensor
            ``z_b`` of the batch ``(batch, …)`` per owned boundary; ``z[b].grad`` is
            ``∂L/∂z_b`` of the batch-mean objective ``L`` (None with ``backward=False``).
        r : dict of int to Tensor
            The residuals ``r_b`` per owned boundary.
        record : dict
            ``loss`` (last rank), ``constraint_violation`` ``mean_s Σ_b ‖r_b^s‖²`` and
            ``penalized_objective`` over this rank's boundaries (sums over ranks).
        """
        comm, rank, n = self.comm, self.comm.rank, len(index)
        first, last = rank == 0, rank == comm.size - 1
        from_left = comm.irecv(rank - 1, self.output_tag, self.device) if not first else None
        from_right = comm.irecv(rank + 1, self.target_tag, self.device) if not last else None
        sends = []
        z = {b: self.z.get(b, index).requires_grad_(backward) for b in self.owned}
        mu = {b: self.mu.get(b, index) for b in self.owned} if self.multipliers else {}
        if not first:  # known before any computation: goes out at once
            target = z[self.b0].detach() + mu[self.b0] / self.rho if mu else z[self.b0].detach()
            sends.append(comm.isend(self.filter.encode(target), rank - 1, self.target_tag))

        # compute spans are leaves and never hold a wait: each block is one, the waits for
        # the neighbours' messages fall between them
        kind = "forward_graph" if backward else "forward"
        with torch.set_grad_enabled(backward):
            terms, r, value = [], {}, 0.0
            u = x if first else z[self.b0]
            for j, (start, stop) in enumerate(self.blocks):
                b = self.b0 + j + 1
                with timeline.span(kind, steps=stop - start, block=b - 1):
                    o = self._block(j, u)
                    if b < self.b1:  # a boundary inside this rank
                        r[b] = z[b] - self._project(b, o)
                        terms.append(self._penalty(r[b], mu.get(b)))
                        value += float(terms[-1].detach())
                        r[b] = r[b].detach()
                        u = z[b]
            record: Record = {}
            if last:
                with timeline.span("head", steps=0):
                    terms.append(self.network.loss(self.network.head(o), y))
                    loss = float(terms[-1].detach())
                record["loss"] = loss
                value += loss
            else:
                sends.append(comm.isend(self.filter.encode(o.detach()), rank + 1, self.output_tag))
                # θ's share of the next rank's term: only w = z + μ/ρ enters its gradient.
                assert from_right is not None
                w = self.filter.decode(from_right.wait())
                terms.append(0.5 * self.rho * ((w - self.filter.project(o)) ** 2).sum() / n)
            if backward:
                with timeline.span("backward", steps=self.network.stop - self.network.start):
                    self.optimizer.zero_grad(set_to_none=True)
                    functools.reduce(operator.add, terms).backward()

        if not first:  # the left block's term: ∂/∂z_{b0} of (ρ/2)‖r‖² + ⟨μ, r⟩
            b = self.b0
            assert from_left is not None
            r[b] = z[b].detach() - self.filter.decode(from_left.wait())
            if backward:
                z[b].grad += (self.rho * r[b] + mu[b] if mu else self.rho * r[b]) / n
            value += float(self._penalty(r[b], mu.get(b)))
        for s in sends:
            s.wait()
        record["constraint_violation"] = float(sum((rb ** 2).sum() for rb in r.values())) / n if r else 0.0
        record["penalized_objective"] = value
        return z, r, record

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        z, r, record = self.gradients(x, y, index)
        with timeline.span("update", steps=self.network.stop - self.network.start, of="theta"):
            self.optimizer.step()
        with torch.no_grad():
            n = len(index)
            with timeline.span("update", steps=0, of="z"):
                for b, zb in z.items():
                    # per-sample gradient = n × the gradient of the batch mean
                    self.z.set(b, index, zb.detach() - self.eta * n * zb.grad)
            if self.multipliers:
                with timeline.span("update", steps=0, of="mu"):
                    self.update_multipliers(index, r)
                    record["mu_sq"] = sum(float((self.mu.get(b, index) ** 2).sum()) for b in z) / n
        record["rho"] = self.rho
        return record

    def update_multipliers(self, index: torch.Tensor, r: dict[int, torch.Tensor]) -> None:
        """The augmented-Lagrangian multiplier step (:class:`~.al.AugmentedLagrangian`)."""

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        """The record of one iteration on ``(x, y, index)`` without any update."""
        return self.gradients(x, y, index, backward=False)[2]

    # -- checkpoints -----------------------------------------------------------------------------
    # z and μ are keyed by the global boundary b, and every rank holds ρ, η and the flags alike
    global_state = True

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "blocks": self.K, "z": self.z.state_dict(), "mu": self.mu.state_dict(),
                "rho": self.rho, "eta": self.eta, "initialized": self._initialized, "stale": self._stale,
                "epoch0": self._epoch0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["blocks"] != self.K:
            # the boundaries, and with them z and μ, are those of another cut
            raise ValueError(f"{self.name}: the checkpoint cuts the network into {state['blocks']} blocks, "
                             f"this job into {self.K}: resume with --blocks {state['blocks']} "
                             f"on at most {state['blocks']} ranks")
        super().load_state_dict(state)
        self.z.load_state_dict(state["z"], self.device, keys=self.owned)
        self.mu.load_state_dict(state["mu"], self.device, keys=self.owned)
        self.rho, self.eta = state["rho"], state["eta"]
        self._initialized, self._stale = state["initialized"], state["stale"]
        self._epoch0 = state["epoch0"]

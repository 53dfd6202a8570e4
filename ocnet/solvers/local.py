"""Local parallelism: blocks trained on losses of their own (Laskin et al. 2020).

The layers are cut into K blocks ``B_0 … B_{K-1}`` (from the layers and K alone, like the
penalty methods' blocks; ``B_0`` includes the opening).  Every block but the last ends in an
auxiliary classifier ``A_b`` (:mod:`ocnet.model.auxiliary`) with its loss

    L_b = w · ℓ(A_b(u_b), y)   (b < K − 1),     L_{K-1} = ℓ(C(u_N), y),

``u_b`` the output of block ``b`` and ``w`` the auxiliary weight.  The forward pass sends each
block's output on as a fresh leaf: no gradient crosses a block boundary by itself.  With
*n-wise overlap* the adjoint of loss ``L_j`` is carried back through the blocks
``j, j − 1, …, j − n`` and no further, so block ``b``'s parameters receive

    g_b = Σ_{j = b}^{min(b + n, K − 1)} ∂L_j/∂θ_b :

n = 0 is purely local training, n = K − 1 with w = 0 is back-propagation of the network's
loss.  Each loss's adjoint stops at its own block, so the adjoint that flows into a block is
kept apart by where its parts stop (their *expiry* ``max(j − n, 0)``): parts that stop at the
same block travel summed.  A block takes its optimiser step once its own adjoints are in, and
before its forward of the next batch.

What runs in parallel: block ``b`` waits for the adjoints of blocks ``b + 1 … b + n`` only, never
for the network's last block while ``n < K − 1``; with n = 0 no adjoint is sent at all and the
ranks form a forward pipeline over the batches.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..model import auxiliary, dropout
from ..model.grid import Partition
from ..model.options import Option
from ..model.problem import LocalNetwork
from ..ranks import timeline
from ..ranks.comm import Comm, Request
from ..ranks.filters import IDENTITY, Filter
from ..ranks.tags import Tags
from .base import OptimizerFactory, ParallelSolver
from .records import Field, Record


class Local(ParallelSolver):
    """Local parallelism with n-wise overlap (module docstring).

    Attributes
    ----------
    K, n : int
        The number of blocks and the overlap.
    cuts : list of int
        The first layer of each block, and the number of layers.
    heads : dict of int to nn.Module
        The auxiliary classifier of each of this rank's blocks but the network's last, by block.
    """

    name = "local"
    rank_invariant = True  # for a fixed number of blocks
    options = {
        "local_blocks": Option(int, 0, "number of blocks K, cut from the layers alone (0: one per rank, which "
                               "makes the method depend on the rank count); a rank holds consecutive blocks", min=0),
        "local_overlap": Option(int, 0, "n: a block's update also receives the adjoints of the next n blocks' "
                                "losses (0: purely local; K-1: back-propagation of every loss)", min=0),
        "local_aux_weight": Option(float, 1.0, "weight w of the auxiliary classifiers' losses (0: the "
                                   "network's loss only)", min=0.0),
    }
    fields = {"aux_loss": Field("sum", "auxiliary loss per block", log=True)}

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory, *,
                 device: torch.device | str = "cpu", filter: Filter = IDENTITY, seed: int = 0,
                 tags: Tags | None = None, **options: Any) -> None:
        super().__init__(network, comm, make_optimizer, device=device, filter=filter, seed=seed, tags=tags,
                         **options)
        self.K = self.n_blocks(self.config, comm.size, network.partition.n_layers)
        self.n, self.weight = self.config["local_overlap"], self.config["local_aux_weight"]
        self.cuts = Partition(network.partition.n_layers, self.K).cuts()
        self.b0, self.b1 = Partition(self.K, comm.size).bounds(comm.rank)
        if (network.start, network.stop) != (self.cuts[self.b0], self.cuts[self.b1]):
            raise ValueError(f"local: rank {comm.rank} holds layers {network.start}…{network.stop - 1}, not its "
                             f"blocks' {self.cuts[self.b0]}…{self.cuts[self.b1] - 1}; build the partition with "
                             "Local.partition")
        self.heads = nn.ModuleDict({str(b): network.auxiliary_head(self.cuts[b + 1], seed).to(self.device)
                                    for b in range(self.b0, self.b1) if b < self.K - 1})
        self.optimizer = make_optimizer([*network.parameters(), *self.heads.parameters()])
        self.forward_tag, self.backward_tag = self.sweep_tags
        self._sends: list[Request] = []  # the previous step's, waited for one step later

    # -- what the configuration asks of the class -------------------------------------------
    @classmethod
    def n_blocks(cls, config: Mapping[str, Any], n_ranks: int, n_layers: int) -> int:
        """K: the ``local_blocks`` option, or one block per rank when it is 0; checked
        against the ranks, the layers and the overlap."""
        K = config["local_blocks"] or n_ranks
        if not n_ranks <= K <= n_layers:
            raise ValueError(f"local: {K} blocks for {n_ranks} ranks and {n_layers} layers: every rank needs a "
                             f"block and every block a layer; use {n_ranks} <= local_blocks <= {n_layers}")
        if config["local_overlap"] >= K:
            raise ValueError(f"local: an overlap of {config['local_overlap']} blocks needs more than {K} blocks; "
                             f"use local_overlap <= {K - 1} (K - 1 is back-propagation)")
        return K

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """Each rank holds whole blocks: the K blocks dealt to the ranks in order."""
        K = cls.n_blocks(config, n_ranks, n_layers)
        return Partition.aligned(Partition(n_layers, K).cuts(), n_ranks)

    # -- which adjoints go where ------------------------------------------------------------
    def _has_loss(self, j: int) -> bool:
        return j == self.K - 1 or self.weight > 0

    def _expiry(self, j: int) -> int:
        """The block where the adjoint of loss ``L_j`` stops."""
        return max(j - self.n, 0)

    def _into(self, b: int) -> list[int]:
        """The expiries of the parts of the adjoint that flows from block ``b + 1`` into block
        ``b``, in the order they travel."""
        reach = range(b + 1, min(b + self.n, self.K - 1) + 1)
        return sorted({self._expiry(j) for j in reach if self._has_loss(j)})

    # -- one step ----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        self.optimizer.zero_grad(set_to_none=True)
        net, B = self.network, len(y)
        first, last = self.comm.rank == 0, self.comm.rank == self.comm.size - 1
        sends: list[Request] = []
        passes: list[tuple[int, torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        aux: dict[str, float] = {}
        loss = None
        u = x
        for b in range(self.b0, self.b1):
            # the block's input is a leaf of its own graph (the opening reads x directly); on
            # a rank boundary the leaf is what came in, so that its adjoint is what was sent
            v = None
            if b == self.b0 and not first:
                v = self.comm.recv(self.comm.rank - 1, self.forward_tag, self.device)
            elif b > 0:
                v = u.detach()
            if v is not None:
                v.requires_grad_(bool(self._into(b - 1)))
            a, z = self.cuts[b] - net.start, self.cuts[b + 1] - net.start
            with timeline.span("forward_graph", steps=z - a):
                out = self._block(b, x if v is None else self.filter.decode(v) if b == self.b0 else v, a, z)
            sent = out
            if b == self.b1 - 1 and not last:
                sent = self.filter.encode(out)
                sends.append(self.comm.isend(sent.detach(), self.comm.rank + 1, self.forward_tag))
            g_own = None
            if b == self.K - 1 or self.weight > 0:
                with timeline.span("head", steps=0):
                    u_head = out.detach().requires_grad_(True)
                    if b == self.K - 1:
                        loss = net.loss(net.head(u_head), y, reduction="sum") / B
                        loss.backward()
                    else:
                        value = net.loss(self.heads[str(b)](u_head), y, reduction="sum") / B
                        (self.weight * value if self.weight != 1 else value).backward()
                        aux[str(b)] = float(value.detach())
                g_own = u_head.grad
            passes.append((b, v, out, sent, g_own))
            u = out
        # the adjoints, last block first: the parts that arrive from the block after (on the
        # rank boundary, adjoints of the encoded output), and the block's own loss's
        flowing: dict[int, torch.Tensor] = {}
        for b, v, out, sent, g_own in reversed(passes):
            if b == self.b1 - 1 and not last and self._into(b):
                stacked = self.comm.recv(self.comm.rank + 1, self.backward_tag, self.device)
                flowing = dict(zip(self._into(b), stacked.unbind(0)))
            parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {e: [(sent, g)] for e, g in flowing.items()}
            if g_own is not None:
                parts.setdefault(self._expiry(b), []).append((out, g_own))
            flowing = self._backward(b, v, parts)
            if b == self.b0 and not first and flowing:
                sends.append(self.comm.isend(torch.stack([flowing[e] for e in self._into(b - 1)]),
                                             self.comm.rank - 1, self.backward_tag))
        with timeline.span("update", steps=len(net.layers)):
            self.optimizer.step()
        for s in self._sends:  # the previous step's: no rank runs more than one batch ahead
            s.wait()
        self._sends = sends
        record: Record = {"aux_loss": aux} if aux else {}
        if loss is not None:
            record["loss"] = float(loss.detach())
        return record

    def _block(self, b: int, u: torch.Tensor, a: int, z: int) -> torch.Tensor:
        """Block ``b``: this rank's layers ``a … z-1`` (local indices), after the opening for
        ``b = 0``."""
        net = self.network
        if b == 0 and net.opening is not None:
            u = net.opening(u)
        for layer in net.layers[a:z]:
            u = layer(u)
        return u

    def _backward(self, b: int, v: torch.Tensor | None,
                  parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]]) -> dict[int, torch.Tensor]:
        """Accumulate block ``b``'s parameter gradients from the adjoint ``parts`` of its output
        (by expiry: pairs of a graph's root and its adjoint); return the adjoints of its input
        ``v`` that flow on into block ``b - 1``, by expiry."""
        params = [p for p in self._parameters_of(b) if p.requires_grad]
        going = sorted(e for e in parts if e < b)
        stopping = [pair for e in parts if e >= b for pair in parts[e]]
        steps = self.cuts[b + 1] - self.cuts[b]
        flowing = {}
        for i, e in enumerate(going):
            assert v is not None  # b > 0 when an adjoint flows on
            roots, grads = zip(*parts[e])
            with timeline.span("backward", steps=steps):
                torch.autograd.backward(roots, grads, inputs=[v, *params],
                                        retain_graph=bool(stopping) or i < len(going) - 1)
            assert v.grad is not None
            flowing[e], v.grad = v.grad, None
        if stopping:
            roots, grads = zip(*stopping)
            with timeline.span("weight_grad" if going else "backward", steps=steps):
                torch.autograd.backward(roots, grads, inputs=params)
        return flowing

    def _parameters_of(self, b: int) -> list[nn.Parameter]:
        net = self.network
        a, z = self.cuts[b] - net.start, self.cuts[b + 1] - net.start
        modules = ([net.opening] if b == 0 and net.opening is not None else []) + list(net.layers[a:z])
        return [p for m in modules for p in m.parameters()]

    def settle(self) -> None:
        for s in self._sends:
            s.wait()
        self._sends = []

    def end_epoch(self, epoch: int) -> Record:
        self.settle()
        return {}

    # -- the report and checkpoints -----------------------------------------------------------
    @torch.no_grad()
    def report(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        """The auxiliary heads (dropped from the exported network): after which layer each
        reads, its parameters, and its test accuracy on ``(x, y)``; on every rank."""
        net, counts = self.network, {b: 0 for b in map(int, self.heads)}
        for i in range(0, len(y), 1024):
            xs, ys = x[i:i + 1024], y[i:i + 1024]
            u = xs if self.comm.rank == 0 else self.filter.decode(
                self.comm.recv(self.comm.rank - 1, self.forward_tag, self.device))
            with dropout.suspended():
                for b in range(self.b0, self.b1):
                    u = self._block(b, u, self.cuts[b] - net.start, self.cuts[b + 1] - net.start)
                    if b in counts:
                        counts[b] += int((self.heads[str(b)](u).argmax(1) == ys).sum())
            if self.comm.rank < self.comm.size - 1:
                self.comm.send(self.filter.encode(u), self.comm.rank + 1, self.forward_tag)
        mine = [{"block": b, "after_layer": self.cuts[b + 1], "parameters": auxiliary.parameters(self.heads[str(b)]),
                 "test_acc": counts[b] / max(len(y), 1)} for b in sorted(counts)]
        gathered = self.comm.gather(mine)
        heads = self.comm.bcast(None if gathered is None else [h for part in gathered for h in part])
        return {"auxiliary_heads": heads}

    global_state = True  # heads under their block's index, which a partition of the same K shares

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "heads": {f"{b}.{k}": t for b, h in self.heads.items()
                                                  for k, t in h.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for b, h in self.heads.items():
            h.load_state_dict({k: state["heads"][f"{b}.{k}"] for k in h.state_dict()})

    def _parameter_names(self) -> dict[int, str]:
        names = super()._parameter_names()
        names.update({id(p): f"auxiliary.{b}.{k}" for b, h in self.heads.items() for k, p in h.named_parameters()})
        return names

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

from ..model import auxiliary, batchnorm, dropout
from ..model.grid import Partition
from ..model.options import Option
from ..model.problem import LocalNetwork
from ..ranks import sweep, timeline
from ..ranks.comm import Comm, Request
from ..ranks.filters import IDENTITY, Filter
from ..ranks.tags import Tags
from .base import OptimizerFactory, ParallelSolver
from .records import Field, Record

#: A graph's root and the adjoint it is given
Pair = tuple[torch.Tensor, torch.Tensor]


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
    overlaps_steps = True  # ranks run batches ahead of the ranks after them
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

    def _own_into(self, b: int) -> int | None:
        """The expiry of ``L_{b+1}``'s adjoint when it flows on into block ``b`` (block ``b + 1``
        sends it first, as soon as its own loss is in), else ``None``."""
        j = b + 1
        return self._expiry(j) if self.n >= 1 and j < self.K and self._has_loss(j) else None

    def _forwarded_into(self, b: int) -> list[int]:
        """The expiries of the adjoints of the later losses ``L_{b+2} …`` that block ``b + 1``
        passes on into block ``b`` (sent second, once they have come through it)."""
        reach = range(b + 2, min(b + self.n, self.K - 1) + 1)
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
                v.requires_grad_(self._own_into(b - 1) is not None or bool(self._forwarded_into(b - 1)))
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
        # First each block's own loss, which needs no other block: what of it flows on goes to
        # the block before at once, so that no block waits for more than n blocks after it.
        own: dict[int, torch.Tensor] = {}  # block b ↦ its input's adjoint of L_b
        stopping: dict[int, list[Pair]] = {b: [] for b in range(self.b0, self.b1)}
        for b, v, out, _, g_own in passes:
            if g_own is not None and self._expiry(b) < b:
                own[b] = self._input_adjoint(b, v, [(out, g_own)])
            elif g_own is not None:
                stopping[b].append((out, g_own))
        if not first and self.b0 in own:
            sends.append(self.comm.isend(own[self.b0], self.comm.rank - 1, self.backward_tag))
        # Then the adjoints of the later losses, last block first.
        forwarded: dict[int, torch.Tensor] = {}
        for b, v, out, sent, _ in reversed(passes):
            parts: dict[int, list[Pair]] = {}
            arriving: list[tuple[int | None, torch.Tensor | None]]
            if b < self.b1 - 1:  # from the block after, on this rank: adjoints of its input, our output
                arriving = [(self._own_into(b), own.get(b + 1)), *forwarded.items()]
                root = out
            else:
                arriving, root = list(self._receive(b)) if not last else [], sent
            for e, g in arriving:
                if e is not None and g is not None:
                    parts.setdefault(e, []).append((root, g))
            forwarded = {e: self._input_adjoint(b, v, pairs) for e, pairs in sorted(parts.items()) if e < b}
            stopping[b] += [pair for e, pairs in parts.items() if e >= b for pair in pairs]
            if stopping[b]:
                with timeline.span("weight_grad" if b in own or forwarded else "backward",
                                   steps=self.cuts[b + 1] - self.cuts[b]):
                    roots, grads = zip(*stopping[b])
                    torch.autograd.backward(roots, grads, inputs=self._parameters_of(b), retain_graph=True)
        if not first and forwarded:
            stacked = torch.stack([forwarded[e] for e in self._forwarded_into(self.b0 - 1)])
            sends.append(self.comm.isend(stacked, self.comm.rank - 1, self.backward_tag))
        with timeline.span("update", steps=len(net.layers)):
            self.optimizer.step()
        for s in self._sends:  # the previous step's: no rank runs more than one batch ahead
            s.wait()
        self._sends = sends
        record: Record = {"aux_loss": aux} if aux else {}
        if loss is not None:
            record["loss"] = float(loss.detach())
        return record

    def _receive(self, b: int) -> list[tuple[int | None, torch.Tensor]]:
        """The adjoints of block ``b``'s sent output from the next rank, by expiry: the next
        block's own loss's, then the later losses' it passes on."""
        got: list[tuple[int | None, torch.Tensor]] = []
        e = self._own_into(b)
        if e is not None:
            got.append((e, self.comm.recv(self.comm.rank + 1, self.backward_tag, self.device)))
        later = self._forwarded_into(b)
        if later:
            stacked = self.comm.recv(self.comm.rank + 1, self.backward_tag, self.device)
            got += list(zip(later, stacked.unbind(0)))
        return got

    def _block(self, b: int, u: torch.Tensor, a: int, z: int) -> torch.Tensor:
        """Block ``b``: this rank's layers ``a … z-1`` (local indices), after the opening for
        ``b = 0``."""
        net = self.network
        if b == 0 and net.opening is not None:
            u = net.opening(u)
        for layer in net.layers[a:z]:
            u = layer(u)
        return u

    def _input_adjoint(self, b: int, v: torch.Tensor | None, pairs: list[Pair]) -> torch.Tensor:
        """One backward pass of block ``b`` from ``pairs`` (a graph's root and its adjoint):
        the parameter gradients accumulate, the adjoint of the input ``v`` is returned."""
        assert v is not None  # b > 0 when an adjoint flows on
        roots, grads = zip(*pairs)
        with timeline.span("backward", steps=self.cuts[b + 1] - self.cuts[b]):
            torch.autograd.backward(roots, grads, inputs=[v, *self._parameters_of(b)], retain_graph=True)
        g, v.grad = v.grad, None
        assert g is not None
        return g

    def _parameters_of(self, b: int) -> list[nn.Parameter]:
        """The trainable parameters of block ``b``."""
        net = self.network
        a, z = self.cuts[b] - net.start, self.cuts[b + 1] - net.start
        modules = ([net.opening] if b == 0 and net.opening is not None else []) + list(net.layers[a:z])
        return [p for m in modules for p in m.parameters() if p.requires_grad]

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
            ys = y[i:i + 1024]

            def blocks(u: torch.Tensor, ys: torch.Tensor = ys) -> torch.Tensor:  # each head read on the way
                for b in range(self.b0, self.b1):
                    u = self._block(b, u, self.cuts[b] - net.start, self.cuts[b + 1] - net.start)
                    if b in counts:
                        counts[b] += int((self.heads[str(b)](u).argmax(1) == ys).sum())
                return u

            with dropout.suspended(), batchnorm.evaluating(net):
                sweep.forward(self.comm, blocks, x[i:i + 1024], filter=self.filter, device=self.device,
                              tag=self.forward_tag)
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

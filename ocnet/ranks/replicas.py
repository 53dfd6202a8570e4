"""Data-parallel replicas: the P ranks as a grid of D groups × P/D layer ranks.

Each group holds the whole network, cut into P/D slices as a job of P/D ranks would, and
trains on its share of every mini-batch: the samples ``i`` with ``i mod D = g`` belong to
group ``g``.  Ownership by sample rather than by position keeps a sample in the same group
every epoch, so per-sample state (auxiliary states, multipliers, warm starts) lives with
the group that sees the sample.  A group presents its samples to its solver as a training
set of its own: sample ``i`` is the group's sample ``i // D``.

The solvers stay unaware of the grid.  They receive the group's layer communicator, and a
hook on their optimisers averages the parameter gradients over the groups before each step:
with ``n_g`` of the batch's ``n`` samples in group ``g``, the group's gradient of its mean
loss is weighted by ``n_g / n`` and summed over the groups, which is the gradient of the
whole batch's mean loss.  It is one reduction per optimiser step and rank, of one flat
buffer, started when the rank's own backward is done (so it overlaps the backward of the
ranks before it); its payload is :func:`reduction_bytes`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..model import batchnorm
from . import store
from .comm import Comm, SelfComm
from .compress import INDEX_BYTES, Compressor, Message, carried, kind, message_bytes


@dataclass
class Grid:
    """Where a rank sits: its group's layer communicator, and the communicator of the ranks
    that hold the same layers in every group.

    Attributes
    ----------
    world : Comm
        All ranks; group ``g`` holds world ranks ``g P/D … (g + 1) P/D - 1``.
    layers : Comm
        The group's ranks (size P/D): what the solver receives.
    data : Comm
        The ranks of the same layer slice, one per group (size D), ordered by group.
    """

    world: Comm
    layers: Comm
    data: Comm

    @staticmethod
    def check(groups: int, ranks: int) -> None:
        """Raise ``ValueError`` unless ``groups`` data groups divide ``ranks`` ranks evenly."""
        if groups < 1 or ranks % groups:
            raise ValueError(f"--data-parallel {groups} does not divide the job's {ranks} ranks into "
                             "groups of equal size")

    @classmethod
    def split(cls, world: Comm, groups: int) -> "Grid":
        """The grid of ``groups`` data groups over ``world`` (a collective; :meth:`check`
        first)."""
        cls.check(groups, world.size)
        per_group = world.size // groups
        group, layer_rank = divmod(world.rank, per_group)
        layers, data = world.split(group, layer_rank), world.split(layer_rank, group)
        layers.replicas = data if groups > 1 else None
        store.number_samples(group, groups)
        return cls(world, layers, data)

    @classmethod
    def single(cls, comm: Comm) -> "Grid":
        """One group: ``comm`` holds every layer rank and the data axis is trivial."""
        store.number_samples(0, 1)
        return cls(comm, comm, SelfComm())

    @property
    def groups(self) -> int:
        return self.data.size

    @property
    def group(self) -> int:
        return self.data.rank

    def share(self, index: torch.Tensor) -> torch.Tensor:
        """The positions in ``index`` ``(batch,)`` of the samples this group owns."""
        return torch.nonzero(index % self.groups == self.group).flatten()

    def shares(self, index: torch.Tensor) -> list[int]:
        """How many of the samples ``index`` each group owns, by group."""
        return torch.bincount(index % self.groups, minlength=self.groups).tolist()


#: How compressed messages combine (:class:`GradientAverage`'s ``exchange``).
EXCHANGES = ("auto", "gather", "dense")


class GradientAverage:
    """Averages the gradients of ``network``'s parameters over the groups before every step
    of the given optimisers (``register_step_pre_hook``).  ``network`` is a module, or the
    parameters by their names in the whole problem (:meth:`Solver.replicated_parameters`).

    Set :attr:`weight` to the group's share ``n_g / n`` of the batch before the step.  A
    parameter without a gradient in some group (one the step did not reach, or a group
    without samples) counts as zero there; it keeps ``None`` only where no group had one.
    """

    #: ``exchange="auto"`` gathers the sparse messages where the largest is below this share
    #: of the dense buffer, and the buffer holds at least :attr:`gather_from` entries: below
    #: that size the gather's two collectives cost more than the bytes they save
    #: (``benchmarks/bench_exchange.py``).
    gather_below = 0.2
    gather_from = 500_000

    def __init__(self, network: nn.Module | Mapping[str, torch.Tensor], optimizers: Iterable[torch.optim.Optimizer],
                 data: Comm, compressor: Compressor | None = None, exchange: str = "auto") -> None:
        if exchange not in EXCHANGES:
            raise ValueError(f"unknown exchange {exchange!r}; choose from {', '.join(EXCHANGES)}")
        self.data = data
        self.weight = 1.0
        #: What each rank sends of its gradients (:mod:`ocnet.ranks.compress`); ``None``:
        #: the exact dense allreduce.
        self.compressor = compressor
        #: How compressed messages combine: ``gather``, ``dense`` (decoded, then the dense
        #: allreduce) or ``auto`` (by size, as measured).
        self.exchange = exchange
        #: Bytes this rank has sent in the exchange since :meth:`take_sent`, by
        #: :func:`~ocnet.ranks.compress.kind` of tensor.
        self.sent: dict[str, int] = {}
        if isinstance(network, nn.Module):
            namer = getattr(network, "problem_name", lambda k: k)
            network = {namer(k): p for k, p in network.named_parameters()}
        self._network = list(network.values())
        self._names = {id(p): k for k, p in network.items()}
        self._ids = {id(p) for p in self._network}
        self._averaged = False  # by :meth:`now`, for the next optimiser step
        for opt in dict.fromkeys(optimizers):
            opt.register_step_pre_hook(self._hook)

    def _hook(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self._averaged:
            self._averaged = False
            return
        self.average([p for g in optimizer.param_groups for p in g["params"] if id(p) in self._ids])

    def state_dict(self) -> dict[str, Any] | None:
        """The compressor's residues (``None`` without compression): a checkpoint keeps them."""
        return None if self.compressor is None else self.compressor.state_dict()

    def load_state_dict(self, shards: Sequence[dict[str, Any]], keep: bool = True) -> None:
        """Take this rank's tensors' residues from the :meth:`state_dict` of every checkpoint
        shard read, summed by tensor (:func:`~ocnet.ranks.compress.carried`); with ``keep``
        false, start from zero residues."""
        if self.compressor is not None:
            # what error feedback has not sent yet, whichever compressor kept it
            residue = carried(list(shards)) if keep else {}
            self.compressor.load_state_dict({"name": self.compressor.name, "residue": residue},
                                            set(self._names.values()))

    def take_sent(self) -> dict[str, int]:
        """The bytes sent by kind of tensor since the last call (and start again from zero)."""
        sent, self.sent = self.sent, {}
        return sent

    def now(self) -> None:
        """Average every parameter's gradient at once, for a solver that reads the whole
        gradient before it steps (a norm, a clip); the next optimiser step does not again."""
        self.average(self._network)
        self._averaged = True

    def average(self, params: Sequence[torch.Tensor]) -> None:
        """Replace each ``p.grad`` by the weighted sum over the groups (one reduction)."""
        if not params:
            return
        like = params[0]
        grads = [(p.grad * self.weight).flatten().to(like.dtype) if p.grad is not None else like.new_zeros(p.numel())
                 for p in params]
        had = like.new_tensor([float(p.grad is not None) for p in params])
        if self.compressor is None:
            self._dense(params, grads, had)
            return
        messages = [self.compressor.compress(self._names[id(p)], g, tuple(p.shape))
                    for p, g in zip(params, grads)]
        counts = torch.tensor([i.numel() for i, _ in messages], dtype=torch.int32)
        sizes = [message_bytes(int(c), like.element_size()) + INDEX_BYTES + like.element_size() for c in counts]
        if self._gathers(params, sum(sizes)):
            self._gathered(params, messages, counts, had)
            self._count(params, sizes)
        else:
            self._dense(params, [_decoded(p, m) for p, m in zip(params, messages)], had)

    def _gathers(self, params: Sequence[torch.Tensor], nbytes: int) -> bool:
        """Whether this exchange gathers, the same on every rank: by the largest rank's
        message of ``nbytes`` (an allreduce of 8 bytes of bookkeeping) under ``auto``."""
        if self.exchange != "auto":
            return self.exchange == "gather"
        entries = sum(p.numel() for p in params) + len(params)
        if entries < self.gather_from:
            return False
        largest = self.data.allreduce(float(nbytes), op="max") if self.data.size > 1 else float(nbytes)
        return largest < self.gather_below * entries * params[0].element_size()

    def _dense(self, params: Sequence[torch.Tensor], parts: list[torch.Tensor], had: torch.Tensor) -> None:
        """Sum the flat gradients ``parts`` and presence flags ``had`` by the dense allreduce."""
        flat = self.data.allreduce(torch.cat(parts + [had]))
        self.data.bytes_sent += flat.numel() * flat.element_size()
        self._count(params, [(p.numel() + 1) * flat.element_size() for p in params])
        _unpack(params, flat)

    def _gathered(self, params: Sequence[torch.Tensor], messages: list[Message], counts: torch.Tensor,
                  had: torch.Tensor) -> None:
        """Gather every rank's sparse messages and sum them into a zero buffer in rank order:
        the same operations on the same data everywhere, so the replicas agree bit for bit."""
        like = params[0]
        starts = torch.tensor([0] + [p.numel() for p in params]).cumsum(0)
        numel = int(starts[-1])
        ints = self.data.allgather(torch.cat([counts] + [i.cpu() for i, _ in messages]))
        floats = self.data.allgather(torch.cat([v.cpu() for _, v in messages] + [had.cpu()]))
        flat = torch.zeros(numel + len(params), dtype=like.dtype)
        for r_ints, r_floats in zip(ints, floats):
            r_counts = r_ints[:len(params)].long()
            where = r_ints[len(params):].long() + torch.repeat_interleave(starts[:-1], r_counts)
            sent = int(r_counts.sum())
            flat[:numel].index_add_(0, where, r_floats[:sent])  # positions within one message differ
            flat[numel:] += r_floats[sent:]
        _unpack(params, flat.to(like.device))

    def _count(self, params: Sequence[torch.Tensor], sizes: Sequence[int]) -> None:
        for p, n in zip(params, sizes):
            k = kind(tuple(p.shape))
            self.sent[k] = self.sent.get(k, 0) + int(n)


def _decoded(p: torch.Tensor, message: Message) -> torch.Tensor:
    """The sparse ``message`` of parameter ``p`` as a dense flat tensor."""
    index, values = message
    d = values.new_zeros(p.numel())
    d[index.long().to(d.device)] = values.to(d.device)
    return d


def _unpack(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Make each parameter's gradient its piece of the summed buffer ``flat`` (the gradients
    in order, then one presence flag per parameter): where no group had a gradient the
    parameter keeps ``None``."""
    offset = 0
    for p, present in zip(params, flat[-len(params):].tolist()):
        g = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
        if present:
            p.grad = g.to(p.device, p.dtype) if p.grad is None else p.grad.copy_(g)


def reduction_bytes(network: nn.Module) -> int:
    """The payload of one gradient reduction of a rank holding ``network``: its parameters'
    elements plus one presence flag per parameter, in the parameters' element size."""
    params = list(network.parameters())
    return sum(p.numel() * p.element_size() for p in params) + len(params) * params[0].element_size() \
        if params else 0


def average_running_statistics(network: nn.Module, data: Comm) -> None:
    """Make batch norm's running statistics the plain mean over the groups (a collective over
    ``data``; nothing happens in a network without batch norm).

    Each group moves its running statistics one momentum step per optimiser step,
    ``r ← (1 - m) r + m s_g``.  The step is affine with the same coefficients in every group,
    so the mean over the groups taken at the end of an epoch equals the mean taken after
    every step: averaging once an epoch costs one reduction and changes nothing.  (A group
    that owns none of a batch's samples skips that step's update, as it skips the forward.)
    """
    layers = batchnorm.norms(network)
    if not layers or data.size == 1:
        return
    stats = [getattr(m, k) for m in layers for k in ("running_mean", "running_var")]
    flat = data.allreduce(torch.cat([t.flatten() for t in stats])) / data.size
    offset = 0
    for t in stats:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()

"""The coarse-to-fine sweep across ranks (docs/theory.rst).

A sweep visits the block boundaries in order, rank after rank, carrying the boundary state
forward (or the adjoint backward); each rank applies its own block in between.  With the
exact block maps this *is* layer-serial forward/backward propagation.  The serial solver,
MGRIT's coarsest level, the hybrid correction and the initialisation of auxiliary states
all run through here.

Conventions: rank ``r`` receives its input from ``r - 1`` and sends its output to ``r + 1``;
the first rank's input is given, the last rank's output stays.  Every send is nonblocking;
every function waits for its own sends before it returns, so no buffer outlives a call.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .comm import Comm, Request
from .filters import IDENTITY, Filter
from .problem import LocalNetwork
from .tags import SWEEP_BACKWARD as BACKWARD_TAG
from .tags import SWEEP_FORWARD as FORWARD_TAG

Map = Callable[[torch.Tensor], torch.Tensor]


def forward(comm: Comm, block: Map, u_first: torch.Tensor | None = None, *,
            filter: Filter = IDENTITY, device: torch.device | str = "cpu",
            tag: int = FORWARD_TAG) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward sweep.

    Parameters
    ----------
    block : callable
        This rank's map, carried across the ranks.
    u_first : Tensor, optional
        The first rank's input (ignored elsewhere).

    Returns
    -------
    u_in, u_out : Tensor
        The state this rank received (``u_first`` on the first rank) and its block's output.
    """
    u_in = _given(u_first, "u_first") if comm.rank == 0 else filter.decode(comm.recv(comm.rank - 1, tag, device))
    u_out = block(u_in)
    if comm.rank < comm.size - 1:
        comm.send(filter.encode(u_out), comm.rank + 1, tag)
    return u_in, u_out


def backward(comm: Comm, vjp: Map, g_last: torch.Tensor | None = None, *,
             device: torch.device | str = "cpu", tag: int = BACKWARD_TAG) -> tuple[torch.Tensor, torch.Tensor]:
    """One backward (adjoint) sweep: the mirror image of :func:`forward`.

    ``vjp`` maps the adjoint of this rank's output to the adjoint of its input; the last
    rank's output adjoint is ``g_last``.  Returns ``(g_out, g_in)``.
    """
    last = comm.size - 1
    g_out = _given(g_last, "g_last") if comm.rank == last else comm.recv(comm.rank + 1, tag, device)
    g_in = vjp(g_out)
    if comm.rank > 0:
        comm.send(g_in, comm.rank - 1, tag)
    return g_out, g_in


def _given(value: torch.Tensor | None, name: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} is needed on the rank where the sweep starts")
    return value


def one_f_one_b(rank: int, size: int, micro_batches: int) -> list[tuple[str, int]]:
    """The 1F1B pipeline schedule of one rank: ``[("F", m) | ("B", m), …]``.

    Rank ``r`` runs ``P - 1 - r`` forwards ahead, then alternates forward and backward, so at
    most ``P - r`` micro-batches hold activations at once (GPipe holds all of them) while
    the pipeline bubble stays the same.
    """
    warm = min(size - 1 - rank, micro_batches)
    ops = [("F", m) for m in range(warm)]
    for i in range(micro_batches - warm):
        ops += [("F", warm + i), ("B", i)]
    ops += [("B", m) for m in range(micro_batches - warm, micro_batches)]
    return ops


def train(comm: Comm, network: LocalNetwork, x: torch.Tensor | None, y: torch.Tensor | None,
          batch_size: int, *, micro_batches: int = 1, filter: Filter = IDENTITY,
          device: torch.device | str = "cpu",
          tags: Sequence[int] = (FORWARD_TAG, BACKWARD_TAG)) -> float | None:
    """Exact forward and backward propagation of the mean loss over one mini-batch.

    Accumulates ``∂J/∂θ`` into the ``.grad`` of this rank's parameters.  The batch is cut into
    ``micro_batches`` chunks that flow through the ranks in a 1F1B pipeline, so ranks overlap.

    Parameters
    ----------
    network : LocalNetwork
        This rank's block (``network(u)``) and, on the last rank, ``network.head`` and
        ``network.loss``.
    x : Tensor, optional
        The inputs ``(batch, …)`` (read on the first rank only).
    y : Tensor, optional
        The labels ``(batch,)`` (read on the last rank only).
    batch_size : int
        The number of samples in the batch (every rank knows it).
    tags : (int, int)
        The tags of the forward and the backward messages.

    Returns
    -------
    float or None
        The mean loss on the last rank, ``None`` elsewhere.
    """
    first, last = comm.rank == 0, comm.rank == comm.size - 1
    micro_batches = min(micro_batches, batch_size)
    xs = _given(x, "x").tensor_split(micro_batches) if first else ()
    ys = _given(y, "y").tensor_split(micro_batches) if last else ()
    forward_tag, backward_tag = tags
    live: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
    sends: list[Request] = []
    total = 0.0

    for op, m in one_f_one_b(comm.rank, comm.size, micro_batches):
        if op == "F":
            if first:
                v = None
                u_in = xs[m]
            else:
                v = comm.recv(comm.rank - 1, forward_tag, device).requires_grad_(True)
                u_in = filter.decode(v)
            u_out = network(u_in)
            if last:
                # Each chunk's loss is a sum scaled by the whole batch size: the chunks add up
                # to the batch mean exactly as one pass would compute it.
                out = network.loss(network.head(u_out), ys[m], reduction="sum") / batch_size
                total += float(out.detach())
            else:
                out = filter.encode(u_out)
                sends.append(comm.isend(out, comm.rank + 1, forward_tag))
            live[m] = (v, out)
        else:
            v, out = live.pop(m)
            if last:
                out.backward()
            else:
                out.backward(comm.recv(comm.rank + 1, backward_tag, device))
            if v is not None:  # not the first rank: the adjoint of what came in goes back
                sends.append(comm.isend(_given(v.grad, "v.grad"), comm.rank - 1, backward_tag))
    for s in sends:
        s.wait()
    return total if last else None


@torch.no_grad()
def predict(comm: Comm, network: LocalNetwork, x: torch.Tensor | None, *,
            filter: Filter = IDENTITY, device: torch.device | str = "cpu",
            tag: int = FORWARD_TAG) -> torch.Tensor | None:
    """The logits ``(batch, n_classes)`` on the last rank (``None`` elsewhere)."""
    _, u = forward(comm, network, x, filter=filter, device=device, tag=tag)
    return network.head(u) if comm.rank == comm.size - 1 else None

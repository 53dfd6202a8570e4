"""The coarse-to-fine sweep across ranks (docs/theory.rst).

A sweep visits the block boundaries in order, rank after rank, carrying the boundary state
forward (or the adjoint backward); each rank applies its own block in between.  With the
exact block maps this *is* layer-serial forward/backward propagation.  The serial solver,
MGRIT's coarsest level, the hybrid correction and the initialisation of auxiliary states
all run through here.

Conventions: rank ``r`` receives its input from ``r - 1`` and sends its output to ``r + 1``;
the first rank's input is given, the last rank's output stays.  On a partition into virtual
stages (:meth:`ocnet.model.grid.Partition.virtual`) the same holds of stages: stage ``s``
receives from stage ``s - 1`` wherever it lives, and a rank hands a state between two of its
own chunks over without a message.  Every send is nonblocking;
every function waits for its own sends before it returns, so no buffer outlives a call.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..model import dropout
from ..model.problem import LocalNetwork
from . import timeline
from .comm import Comm, Request
from .filters import IDENTITY, Filter
from .pipeline import SCHEDULES, VIRTUAL, ChunkOp, live, one_f_one_b
from .tags import MAX_CHUNKS, SWEEP_STAGES
from .tags import SWEEP_BACKWARD as BACKWARD_TAG
from .tags import SWEEP_FORWARD as FORWARD_TAG

Map = Callable[[torch.Tensor], torch.Tensor]

#: (parameters of one module, that module's output) for each parametrised module of a block
_Outputs = list[tuple[list[torch.Tensor], torch.Tensor]]

__all__ = ["forward", "backward", "train", "predict", "one_f_one_b"]


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


def train(comm: Comm, network: LocalNetwork, x: torch.Tensor | None, y: torch.Tensor | None,
          batch_size: int, *, micro_batches: int = 1, schedule: str = "1f1b", ahead: int = 0,
          filter: Filter = IDENTITY, device: torch.device | str = "cpu",
          tags: Sequence[int] = (FORWARD_TAG, BACKWARD_TAG)) -> float | None:
    """Exact forward and backward propagation of the mean loss over one mini-batch.

    Accumulates ``∂J/∂θ`` into the ``.grad`` of this rank's parameters.  The batch is cut into
    ``micro_batches`` chunks that flow through the ranks in a pipeline, so ranks overlap; the
    order of the passes is the ``schedule`` (:data:`ocnet.ranks.pipeline.SCHEDULES`: ``"1f1b"``, or
    ``"zb"`` that defers some parameter gradients into the pipeline's idle time; on a
    network of virtual stages one of :data:`ocnet.ranks.pipeline.VIRTUAL`, ``"interleaved"``
    or ``"v"``, whose shape the partition must have).

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
    schedule : str
        The name of the pipeline schedule; every rank must name the same.
    ahead : int
        How many micro-batches a rank may hold beyond the schedule's most (:func:`ocnet.ranks.pipeline.live`)
        by running a later forward while the adjoint its next backward needs has not arrived.
        Backwards and parameter gradients keep the schedule's order, so the gradient is
        bitwise the same whatever the timing; only idle time is filled.  Schedules of one
        slice per rank only (:data:`ocnet.ranks.pipeline.SCHEDULES`); ignored on virtual stages.
    tags : (int, int)
        The tags of the forward and the backward messages; on virtual stages ``2 · chunks``
        of them, the forward messages into each chunk then the backward ones
        (default: from :data:`ocnet.ranks.tags.SWEEP_STAGES`).

    Returns
    -------
    float or None
        The mean loss on the rank that holds the classifier (the last rank, or the first on
        the V), ``None`` elsewhere.
    """
    micro_batches = min(micro_batches, batch_size)
    partition, chunks = network.partition, len(network.chunks)
    most: int | None = None  # run-ahead's bound on the micro-batches held (one slice per rank)
    if schedule in VIRTUAL:
        shape, generate = VIRTUAL[schedule]
        if (partition.is_virtual and partition.shape != shape) or (not partition.is_virtual and shape == "v"):
            raise ValueError(f"pipeline schedule {schedule!r} needs the layers dealt to the ranks as "
                             f"Partition.virtual(…, shape={shape!r}); this network's partition is {partition}")
        ops = generate(comm.rank, comm.size, micro_batches, chunks)
    else:
        if chunks > 1:
            raise ValueError(f"pipeline schedule {schedule!r} runs one slice of layers per rank; this "
                             f"network's partition is {partition}: use one of {', '.join(VIRTUAL)}")
        plain = SCHEDULES[schedule](comm.rank, comm.size, micro_batches)
        ops = [(kind, m, 0) for kind, m in plain]
        most = live(plain) + ahead
    split = {(m, c) for kind, m, c in ops if kind == "W"}
    pipe = _Stages(comm, network, x, y, batch_size, micro_batches, split, filter, device, stage_tags(chunks, tags))
    try:
        pipe.run(ops, most)
        for s in pipe.sends:
            s.wait()
    finally:
        pipe.close()
    return pipe.total if network.classifier is not None else None


class _Pass:
    """What one micro-batch keeps on this rank between its passes."""

    __slots__ = ("v", "u_out", "outputs", "out", "u_head", "loss", "grads")

    def __init__(self, v: torch.Tensor | None, u_out: torch.Tensor, outputs: _Outputs | None) -> None:
        self.v, self.u_out, self.outputs = v, u_out, outputs
        self.out = u_out  # what the backward starts from: the sent (encoded) output
        self.u_head: torch.Tensor = u_out  # the classifier's own input (last rank)
        self.loss: torch.Tensor = u_out
        self.grads: Sequence[torch.Tensor] = ()

    def head_loss(self, network: LocalNetwork, y: torch.Tensor, batch_size: int, m: int) -> float:
        """The classifier and the loss of micro-batch ``m`` (labels ``y``), kept for its
        backward; returns the loss.  It is a sum scaled by the whole batch size, so that the
        micro-batches add up to the batch mean exactly as one pass would compute it.  The
        head gets a graph of its own, so that its time is told apart."""
        with timeline.span("head", steps=0, micro_batch=m):
            self.u_head = self.u_out.detach().requires_grad_(True)
            self.loss = network.loss(network.head(self.u_head), y, reduction="sum") / batch_size
        return float(self.loss.detach())


def _given_outputs(outputs: _Outputs | None
                   ) -> _Outputs:
    if outputs is None:
        raise RuntimeError("a W pass needs a micro-batch whose B was split")
    return outputs


class _Pieces:
    """Records the output of every module that holds trainable parameters of its own while
    the block runs forward: a split backward needs the adjoint there, so that the parameter
    gradients of each module are one small backward pass of its own nodes."""

    def __init__(self, network: LocalNetwork, chunk: int) -> None:
        self.network, self.chunk = network, chunk
        self.sink: _Outputs | None = None
        self.complete = True
        self.handles: list[torch.utils.hooks.RemovableHandle] = []
        # the modules chunk ``chunk`` runs
        first = network.chunks[chunk][0] == 0
        block = [network.opening] if network.opening is not None and first else []
        layers = list(network.chunk_layers(chunk))
        self.trainable = {id(q) for part in block + layers for q in part.parameters()
                          if q.requires_grad}
        for module in (m for part in [*block, *layers] for m in part.modules()):
            params: list[torch.Tensor] = [q for q in module.parameters(recurse=False) if q.requires_grad]
            if params:
                self.handles.append(module.register_forward_hook(self._hook(params)))

    def _hook(self, params: list[torch.Tensor]) -> Callable:
        def hook(module: torch.nn.Module, args: object, output: object) -> None:
            if self.sink is None:
                return
            if isinstance(output, torch.Tensor) and output.requires_grad:
                self.sink.append((params, output))
            else:  # parameters reached by another path: this micro-batch cannot be split
                self.complete = False
        return hook

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, _Outputs | None]:
        """The block's output and the (parameters, output) of each parametrised module, or
        ``None`` when some module's output cannot carry its parameters' gradient."""
        self.sink, self.complete = [], True
        try:
            u_out = self.network.chunk(self.chunk, u)
            # Every trainable parameter must sit in a module whose output was recorded, or
            # its gradient would be lost: otherwise this micro-batch is not split.
            seen = {id(q) for params, _ in self.sink for q in params}
            whole = self.complete and seen == self.trainable and bool(self.sink)
            return u_out, (self.sink if whole else None)
        finally:
            self.sink = None

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def stage_tags(chunks: int, tags: Sequence[int] = (FORWARD_TAG, BACKWARD_TAG)) -> list[int]:
    """The ``2 · chunks`` tags of a sweep on virtual stages: ``tags`` when it holds that
    many, else the defaults of :data:`ocnet.ranks.tags.SWEEP_STAGES`."""
    if len(tags) == 2 * chunks:
        return list(tags)
    if chunks > MAX_CHUNKS:
        raise ValueError(f"at most {MAX_CHUNKS} chunks per rank, got {chunks}")
    return [SWEEP_STAGES[c] for c in range(chunks)] + [SWEEP_STAGES[MAX_CHUNKS + c] for c in range(chunks)]


class _Stages:
    """One rank's passes of one mini-batch through its chunks (one slice of layers, or
    several virtual pipeline stages): forwards, backwards and parameter-gradient passes of
    its micro-batches, with the receives each chunk needs posted ahead.

    Chunk ``c`` is stage ``s``; its input comes from stage ``s - 1`` and its output adjoint
    from stage ``s + 1``: by a message tagged for chunk ``c`` when that stage is another
    rank's, so that the messages into two chunks never match each other, else handed over
    here.  Each chunk's passes run in the order of the micro-batches, so the ``k``-th
    message into a chunk is micro-batch ``k``'s."""

    def __init__(self, comm: Comm, network: LocalNetwork, x: torch.Tensor | None, y: torch.Tensor | None,
                 batch_size: int, micro_batches: int, split: set[tuple[int, int]], filter: Filter,
                 device: torch.device | str, tags: Sequence[int]) -> None:
        self.comm, self.network, self.batch_size = comm, network, batch_size
        self.split = split  # (m, c) whose backward is split into B and W
        self.micro_batches, self.filter, self.device = micro_batches, filter, device
        grid = network.partition  # one slice per rank is one stage per rank
        self.stage = grid.stages(comm.rank)
        self.where = [grid.stage_rank(s) for s in range(grid.n_stages)]  # (rank, chunk) of each stage
        self.last = len(self.where) - 1
        chunks = len(self.stage)
        self.forward_tags, self.backward_tags = tags[:chunks], tags[chunks:]
        self.rows = torch.arange(batch_size).tensor_split(micro_batches)
        self.xs = _given(x, "x").tensor_split(micro_batches) if self.stage[0] == 0 else ()
        self.ys = _given(y, "y").tensor_split(micro_batches) if self.stage[-1] == self.last else ()
        self.live: dict[tuple[int, int], _Pass] = {}
        self.here: dict[tuple[str, int, int], torch.Tensor] = {}  # handed over between own chunks
        self.sends: list[Request] = []
        self.total = 0.0
        # a recorder of the parametrised modules' outputs per chunk that has a split backward
        self.pieces = {c: _Pieces(network, c) for c in {c for _, c in split}}
        self.received = {(kind, c): 0 for kind in "FB" for c in range(chunks)}
        self.forwards = [0] * chunks  # micro-batches whose forward through each chunk has run
        self.posted = {(kind, c): self._post(kind, c) for kind in "FB" for c in range(chunks)}

    def _source(self, kind: str, c: int) -> tuple[int, int] | None:
        """``(rank, chunk)`` of the stage that feeds chunk ``c``'s ``kind`` pass (``None``:
        the data or the loss)."""
        s = self.stage[c] + (-1 if kind == "F" else 1)
        return self.where[s] if 0 <= s <= self.last else None

    def _post(self, kind: str, c: int) -> Request | None:
        """The receive of the next message into chunk ``c`` for its ``kind`` passes, posted
        early so that the transfer proceeds while this rank computes."""
        source = self._source(kind, c)
        if self.received[(kind, c)] >= self.micro_batches or source is None or source[0] == self.comm.rank:
            return None
        tag = (self.forward_tags if kind == "F" else self.backward_tags)[c]
        return self.comm.irecv(source[0], tag, self.device)

    def _take(self, kind: str, m: int, c: int) -> torch.Tensor:
        """What chunk ``c``'s ``kind`` pass of micro-batch ``m`` starts from, from its
        neighbouring stage."""
        request = self.posted[(kind, c)]
        if request is None:
            return self.here.pop((kind, m, c))
        self.received[(kind, c)] += 1
        value = request.wait()
        self.posted[(kind, c)] = self._post(kind, c)
        return value

    def _give(self, kind: str, m: int, c: int, value: torch.Tensor) -> None:
        """Send ``value`` on to the stage after chunk ``c`` (``"F"``) or before it (``"B"``)."""
        rank, chunk = self.where[self.stage[c] + (1 if kind == "F" else -1)]
        if rank == self.comm.rank:
            self.here[(kind, m, chunk)] = value.detach()
        else:
            tags = self.forward_tags if kind == "F" else self.backward_tags
            self.sends.append(self.comm.isend(value, rank, tags[chunk]))

    def run(self, ops: Sequence[ChunkOp], most: int | None = None) -> None:
        """Run ``ops`` in order.  With ``most``: while a backward waits for its adjoint, run
        the chunk's next forward instead if its input is there and fewer than ``most``
        micro-batches are held; backwards and parameter gradients keep their order."""
        for kind, m, c in ops:
            if kind == "F":
                if m >= self.forwards[c]:  # not run ahead already
                    self.forward(m, c)
            elif kind == "B":
                if most is not None:
                    self._run_ahead(c, most)
                self.backward(m, c)
            else:
                self.weight(m, c)

    def _run_ahead(self, c: int, most: int) -> None:
        adjoint = self.posted[("B", c)]
        while adjoint is not None and not adjoint.test():
            inputs = self.posted[("F", c)]
            ahead = self.forwards[c] < self.micro_batches and len(self.live) < most
            if ahead and (inputs is None or inputs.test()):
                self.forward(self.forwards[c], c)
            else:
                self.comm.wait_any([r for r in (adjoint, inputs if ahead else None) if r is not None])

    def forward(self, m: int, c: int) -> None:
        network, s = self.network, self.stage[c]
        self.forwards[c] += 1
        v = None if s == 0 else self._take("F", m, c).requires_grad_(True)
        u_in = self.xs[m] if v is None else self.filter.decode(v)
        steps = len(network.chunk_layers(c))
        with timeline.span("forward_graph", steps=steps, micro_batch=m), dropout.narrow(self.rows[m]):
            if (m, c) in self.split:
                u_out, outputs = self.pieces[c].forward(u_in)
            else:
                u_out, outputs = network.chunk(c, u_in), None
        p = self.live[(m, c)] = _Pass(v, u_out, outputs)
        if s == self.last:
            self.total += p.head_loss(network, self.ys[m], self.batch_size, m)
        else:
            p.out = self.filter.encode(u_out)
            self._give("F", m, c, p.out)

    def backward(self, m: int, c: int) -> None:
        p = self.live[(m, c)]
        if self.stage[c] == self.last:
            with timeline.span("head", steps=0, micro_batch=m):
                p.loss.backward()
            g, p.out = p.u_head.grad, p.u_out
        else:
            g = self._take("B", m, c)
        steps = len(self.network.chunk_layers(c))
        if p.outputs is None:
            with timeline.span("backward", steps=steps, micro_batch=m):
                torch.autograd.backward(p.out, g)
            g_in = None if p.v is None else p.v.grad
            del self.live[(m, c)]
        else:
            inputs = ([] if p.v is None else [p.v]) + [u for _, u in p.outputs]
            with timeline.span("vjp", steps=steps, micro_batch=m):
                # The adjoints of the chunk's input and of every parametrised module's
                # output, keeping the graph for the parameter gradients (the W).
                grads = torch.autograd.grad(p.out, inputs, g, retain_graph=True)
            g_in = None if p.v is None else grads[0]
            p.grads = grads[len(inputs) - len(p.outputs):]
        if p.v is not None:  # not the first stage: the adjoint of what came in goes back
            self._give("B", m, c, _given(g_in, "the input's adjoint"))

    def weight(self, m: int, c: int) -> None:
        if (m, c) not in self.live:  # its B could not be split and did all the work
            return
        p = self.live.pop((m, c))
        with timeline.span("weight_grad", steps=len(self.network.chunk_layers(c)), micro_batch=m):
            for (params, u), g in zip(_given_outputs(p.outputs), p.grads):
                # Pruned to the module's own nodes: ``inputs`` reach no further back.
                torch.autograd.backward(u, g, inputs=params, retain_graph=True)

    def close(self) -> None:
        for pieces in self.pieces.values():
            pieces.close()


@torch.no_grad()
def predict(comm: Comm, network: LocalNetwork, x: torch.Tensor | None, *,
            filter: Filter = IDENTITY, device: torch.device | str = "cpu",
            tag: int = FORWARD_TAG) -> torch.Tensor | None:
    """The logits ``(batch, n_classes)`` on the last rank (``None`` elsewhere).

    On virtual stages the state passes the stages in order, each rank running its chunks
    as the state comes by, and the rank of the classifier sends the logits on to the last
    rank where it is not the last (the V's first rank)."""
    if network.partition.is_virtual:
        return _predict_stages(comm, network, x, filter, device, tag)

    def block(u: torch.Tensor) -> torch.Tensor:
        with timeline.span("forward", steps=len(network.layers)):
            return network(u)

    _, u = forward(comm, block, x, filter=filter, device=device, tag=tag)
    if comm.rank < comm.size - 1:
        return None
    with timeline.span("head", steps=0):
        return network.head(u)


def _predict_stages(comm: Comm, network: LocalNetwork, x: torch.Tensor | None, filter: Filter,
                    device: torch.device | str, tag: int) -> torch.Tensor | None:
    grid, last = network.partition, network.partition.n_stages - 1
    u: torch.Tensor | None = None
    for c, s in enumerate(grid.stages(comm.rank)):
        if s == 0:
            u = _given(x, "x")
        elif grid.stage_rank(s - 1)[0] != comm.rank:
            u = filter.decode(comm.recv(grid.stage_rank(s - 1)[0], tag, device))
        else:  # the previous stage is this rank's previous chunk
            u = filter.decode(_given(u, "the previous chunk's output"))
        with timeline.span("forward", steps=len(network.chunk_layers(c))):
            u = network.chunk(c, _given(u, "the stage's input"))
        if s < last:
            u = filter.encode(u)
            if grid.stage_rank(s + 1)[0] != comm.rank:
                comm.send(u, grid.stage_rank(s + 1)[0], tag)
        else:
            with timeline.span("head", steps=0):
                logits = network.head(u)
            if comm.rank == comm.size - 1:
                return logits
            comm.send(logits, comm.size - 1, tag)
    if comm.rank == comm.size - 1:
        return comm.recv(grid.stage_rank(last)[0], tag, device)
    return None

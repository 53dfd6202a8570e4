"""AMP: asynchronous model-parallel training (Gaunt et al. 2017, "AMPNet", arXiv 1705.09786).

The serial solver's pipeline without its flush.  Micro-batches keep flowing through the
ranks across mini-batches, and each rank steps its own optimiser after every
``amp_update_every`` backwards it has run, whatever the other ranks do.  A micro-batch's
backward may then meet other weights than its forward met (docs/amp.rst); how many of this
rank's updates lie between the two is its *staleness*, reported per step as a histogram.

The schedule is fixed, so that every receive is matched in schedule order (never by arrival)
and a run is bit-identical when repeated whatever the timing: rank ``r`` holds at most
``w_r = min(m, P - r) - 1`` micro-batches between its passes (``m = amp_in_flight``, or
``P``), and for each micro-batch ``j`` of a step runs ``F(j)``, then ``B(j - w_r)`` when
there is one.  ``w_r`` does not grow with ``r``, so a backward needs only backwards of the
rank after it from the same step or an earlier one: no deadlock.  :meth:`AMP.settle` runs
the backwards still in flight and takes the last update.
"""
from __future__ import annotations

from collections import deque
from typing import Any

import torch

from ..model import batchnorm, dropout
from ..model.options import Option
from ..ranks import timeline
from ..ranks.comm import Request
from .base import ParallelSolver, SolverError
from .records import Field, Record

Draw = tuple[int, int, torch.Tensor] | None


class _Micro:
    """One micro-batch this rank has run forward and not yet backward.

    ``v`` is what came in (``(rows, …)``: the received, filter-encoded state, or the first
    rank's slice of ``x``), ``y`` its labels on the last rank, ``batch`` and ``micro`` the
    size and micro-batch count of its mini-batch (the loss's scale), ``updates`` this rank's
    optimiser steps when it ran forward, ``draw`` its dropout samples.  ``out`` (what the
    backward starts from) and, on the last rank, ``u_head`` and ``loss`` are its graph;
    ``None`` once stale or after a load: the backward then recomputes them.
    """

    __slots__ = ("j", "v", "y", "batch", "micro", "updates", "draw", "out", "u_head", "loss")

    def __init__(self, j: int, v: torch.Tensor, y: torch.Tensor | None, batch: int, micro: int,
                 updates: int, draw: Draw) -> None:
        self.j, self.v, self.y, self.batch, self.micro = j, v, y, batch, micro
        self.updates, self.draw = updates, draw
        self.out: torch.Tensor | None = None
        self.u_head: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None


class AMP(ParallelSolver):
    """A pipeline of micro-batches without a flush; each rank updates on its own.

    With ``amp_in_flight = 1`` every rank runs ``F(j) B(j)``, and with ``amp_update_every =
    micro_batches`` it then updates once per mini-batch after the same accumulation as the
    serial solver: bitwise the serial solver's parameters.  Otherwise the gradient of an
    update mixes micro-batches of neighbouring mini-batches, some of them computed through
    weights that changed after their forward (its forward is run again then).
    """

    name = "amp"
    rank_invariant = False  # when a rank updates depends on its place in the pipeline
    overlaps_steps = True  # micro-batches flow on from one step into the next
    options = {
        "micro_batches": Option(int, 4, "micro-batches per mini-batch in the pipeline", min=1),
        "amp_update_every": Option(int, 4, "amp: a rank steps its optimiser after every this many "
                                   "micro-batch backwards it has run (AMPNet's min_update_frequency)", min=1),
        "amp_in_flight": Option(int, 0, "amp: the most micro-batches in flight (AMPNet's max_active_keys; "
                                "0: the number of ranks, the 1F1B depth)", min=0),
    }
    fields = {
        "staleness": Field("sum", "staleness (updates between a micro-batch's forward and backward)"),
        "updates": Field("sum", "optimiser steps (over the ranks)"),
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        P, r = self.comm.size, self.comm.rank
        m = self.config["amp_in_flight"] or P
        # micro-batches a rank holds between its passes: the 1F1B depth, capped by m
        self.depth = min(m, P - r) - 1
        self.next_depth = min(m, P - r - 1) - 1  # rank r + 1's
        self.first, self.last = r == 0, r == P - 1
        self.steps = len(self.network.layers)
        self.forward_tag, self.backward_tag = self.sweep_tags
        self._pending: deque[_Micro] = deque()
        self._early: deque[torch.Tensor] = deque()  # adjoints received ahead (by state_dict)
        self._posted: Request | None = None  # the next adjoint's receive, posted ahead
        self._ahead = 0  # adjoints this step receives beyond the one posted
        self._sends: list[Request] = []
        self._forwards = 0  # micro-batches run forward since the pipeline last settled
        self._updates = 0  # this rank's optimiser steps
        self._since = 0  # backwards since its last one
        self._staleness: dict[str, int] = {}  # this step's (and a settle's not yet reported)
        self._updated = 0

    # -- the schedule ----------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        """Run ``F(j)`` for each micro-batch ``j`` of ``(x, y)``, each followed by the backward
        the schedule pairs with it; updates happen wherever this rank's count comes due.

        Parameters
        ----------
        x : Tensor
            Inputs ``(batch, …)`` (read on the first rank).
        y : Tensor
            Labels ``(batch,)`` (read on the last rank).
        index : Tensor
            The samples' positions ``(batch,)`` (dropout reads the training loop's).
        """
        B = len(y)
        M = min(self.config["micro_batches"], B)
        self._check_groups(M)
        rows = torch.arange(B).tensor_split(M)
        xs = x.tensor_split(M) if self.first else ()
        ys = y.tensor_split(M) if self.last else ()
        # Every message this step consumes is sent in this step or earlier, so each receive can
        # be posted one ahead (never more: a message's header and payload share its tag) and
        # none is left posted at the step's end.
        if not self.last:
            self._ahead = max(0, len(self._pending) + M - self.depth) - len(self._early)
            self._post()
        post = (lambda: None) if self.first else \
            (lambda: self.comm.irecv(self.comm.rank - 1, self.forward_tag, self.device))
        inputs = post()
        total = 0.0
        for i in range(M):
            if inputs is None:
                v = xs[i]
            else:
                v, inputs = inputs.wait(), (post() if i + 1 < M else None)
            with dropout.narrow(rows[i]):
                total += self._forward(v, ys[i] if self.last else None, B, M, dropout.current())
            if len(self._pending) > self.depth:
                self._backward()
        self._sends = [s for s in self._sends if not s.test()]
        record: Record = {"staleness": self._staleness, "updates": self._updated}
        self._staleness, self._updated = {}, 0
        if self.last:
            record["loss"] = total
        return record

    def settle(self) -> None:
        """Run the backwards in flight, take the update of what they accumulated, and wait
        for this rank's messages: the parameters are final and the pipeline empty."""
        while self._pending:
            self._backward()
        if self._since:
            self._update()
        for s in self._sends:
            s.wait()
        self._sends, self._forwards = [], 0

    def end_epoch(self, epoch: int) -> Record:
        self.settle()
        record: Record = {"staleness": self._staleness, "updates": self._updated}
        self._staleness, self._updated = {}, 0
        return record

    def idle_step(self) -> Record:
        self._check_groups(0)  # a group without samples cannot keep the others' update count
        return {}

    def network_changed(self) -> None:
        for p in self._pending:  # the stored graphs hold the old parameters
            p.out = p.u_head = p.loss = None

    def _check_groups(self, micro: int) -> None:
        """On a grid of data groups every group must run as many micro-batches (so that its
        updates, each a reduction over the groups, come at the same points): one small
        reduction per step checks it, and every rank fails alike when they differ."""
        replicas = self.comm.replicas
        if replicas is None or replicas.size == 1:
            return
        most, least = replicas.allreduce(torch.tensor([micro, -micro], dtype=torch.float64), op="max").tolist()
        if most != -least:
            raise SolverError(f"amp: the data groups hold {int(-least)} to {int(most)} micro-batches of a batch; "
                              "every group must hold as many (every batch, the last one too, of at least data groups × "
                              "micro_batches samples)")

    # -- the passes --------------------------------------------------------------------------
    def _forward(self, v: torch.Tensor, y: torch.Tensor | None, batch: int, micro: int, draw: Draw) -> float:
        """``F(j)``: the block (and the head) with a graph; the output goes to the next rank.
        Returns the micro-batch's share of the batch's mean loss (last rank; 0 elsewhere)."""
        p = _Micro(self._forwards, v, y, batch, micro, self._updates, draw)
        self._forwards += 1
        with timeline.span("forward_graph", steps=self.steps, micro_batch=p.j):
            self._graph(p)
        self._pending.append(p)
        if not self.last:
            assert p.out is not None
            self._sends.append(self.comm.isend(p.out, self.comm.rank + 1, self.forward_tag))
            return 0.0
        with timeline.span("head", steps=0, micro_batch=p.j):
            share = self._head(p)
        return share

    def _graph(self, p: _Micro) -> None:
        """Run ``p``'s block forward, recording its graph (under its own dropout samples)."""
        if not self.first:
            p.v = p.v.detach().requires_grad_(True)
        samples = dropout.suspended() if p.draw is None else dropout.samples(*p.draw)
        with samples:
            u_out = self.network(p.v if self.first else self.filter.decode(p.v))
        p.out = u_out if self.last else self.filter.encode(u_out)

    def _head(self, p: _Micro) -> float:
        """The loss of ``p`` (last rank), on a graph of its own: the sum over its samples over
        the batch size, as the serial pipeline's, scaled by ``micro / amp_update_every`` so
        that an update averages about one batch's worth of gradient whatever that is."""
        assert p.out is not None and p.y is not None
        p.u_head = p.out.detach().requires_grad_(True)
        samples = dropout.suspended() if p.draw is None else dropout.samples(*p.draw)
        with samples:
            loss = self.network.loss(self.network.head(p.u_head), p.y, reduction="sum") / p.batch
        share = float(loss.detach())
        k = self.config["amp_update_every"]
        p.loss = loss if p.micro == k else loss * (p.micro / k)  # k = micro_batches: the serial solver's
        return share

    def _backward(self) -> None:
        """``B(j)`` of the oldest micro-batch held: its input adjoint goes back, its parameter
        gradients accumulate; an update follows when this rank's count comes due."""
        p = self._pending.popleft()
        stale = self._updates - p.updates
        self._staleness[str(stale)] = self._staleness.get(str(stale), 0) + 1
        g = None if self.last else (self._early.popleft() if self._early else self._receive())
        if p.out is None or stale:
            # The parameters changed in place since the forward (AMPNet's semantics: the
            # backward meets today's weights), or the graph was never kept: run the forward
            # again from the stored input.  Batch norm's running statistics moved already.
            with timeline.span("forward_graph", steps=self.steps, micro_batch=p.j), batchnorm.frozen(self.network):
                self._graph(p)
                if self.last:
                    self._head(p)
        with timeline.span("backward", steps=self.steps, micro_batch=p.j):
            if self.last:
                assert p.loss is not None and p.u_head is not None
                p.loss.backward()
                g = p.u_head.grad
            assert p.out is not None
            torch.autograd.backward(p.out, g)
        if not self.first:
            assert p.v.grad is not None
            self._sends.append(self.comm.isend(p.v.grad, self.comm.rank - 1, self.backward_tag))
        p.out = p.u_head = p.loss = None
        self._since += 1
        if self._since == self.config["amp_update_every"]:
            self._update()

    def _post(self) -> None:
        """Post the receive of the next adjoint if this step has one more to receive."""
        if self._ahead > 0:
            self._posted = self.comm.irecv(self.comm.rank + 1, self.backward_tag, self.device)
            self._ahead -= 1

    def _receive(self) -> torch.Tensor:
        """The next adjoint from rank ``r + 1``, in schedule order."""
        request = self._posted or self.comm.irecv(self.comm.rank + 1, self.backward_tag, self.device)
        self._posted = None
        g = request.wait()
        self._post()
        return g

    def _update(self) -> None:
        with timeline.span("update", steps=self.steps):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._updates += 1
        self._updated += 1
        self._since = 0

    # -- checkpoints ------------------------------------------------------------------------
    # What a rank holds in flight belongs to its place in the pipeline (the depth, the
    # neighbours' counts): keyed by its first layer, it resumes on the same partition only.
    global_state = False

    def state_dict(self) -> dict[str, Any]:
        """The base state, and this rank's flight: the micro-batches held (inputs, labels,
        scales, dropout samples, update counts at their forward), the adjoints the next rank
        has sent for them already (received here, in schedule order), the accumulated
        gradients and the counters."""
        if not self.last:  # the next rank's backwards run ahead by depth - next_depth
            owed = len(self._pending) - min(self.next_depth, self._forwards) - len(self._early)
            for _ in range(owed):
                self._early.append(self._receive())
        for s in self._sends:  # their receivers take them in their own state_dict at the latest
            s.wait()
        self._sends = []
        names = self._parameter_names()
        held = [{"j": p.j, "v": p.v.detach().clone(), "y": None if p.y is None else p.y.clone(), "batch": p.batch,
                 "micro": p.micro, "updates": p.updates,
                 "draw": None if p.draw is None else {"seed": p.draw[0], "epoch": p.draw[1], "index": p.draw[2]}}
                for p in self._pending]
        mine = {"held": held, "adjoints": list(self._early), "forwards": self._forwards, "updates": self._updates,
                "since": self._since, "staleness": dict(self._staleness), "updated": self._updated,
                "grads": {names[id(q)]: q.grad.detach().clone() for q in self.network.parameters()
                          if q.grad is not None}}
        return {**super().state_dict(), "amp": {str(self.network.start): mine}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        mine = state["amp"][str(self.network.start)]
        dev = self.device
        self._pending = deque(
            _Micro(h["j"], h["v"].to(dev), None if h["y"] is None else h["y"].to(dev), h["batch"], h["micro"],
                   h["updates"], None if h["draw"] is None else (h["draw"]["seed"], h["draw"]["epoch"],
                                                                  h["draw"]["index"]))
            for h in mine["held"])  # no graphs: the first backward of each recomputes it
        self._early = deque(g.to(dev) for g in mine["adjoints"])
        self._posted, self._ahead, self._sends = None, 0, []
        self._forwards, self._updates, self._since = mine["forwards"], mine["updates"], mine["since"]
        self._staleness, self._updated = dict(mine["staleness"]), mine["updated"]
        names = self._parameter_names()
        for q in self.network.parameters():
            g = mine["grads"].get(names[id(q)])
            q.grad = None if g is None else g.to(q.device, q.dtype).clone()

"""Layer-serial back-propagation, pipelined across ranks: exact gradients."""
from __future__ import annotations

import torch

from ..model.options import Option
from ..ranks import sweep, timeline
from ..ranks.pipeline import SCHEDULES
from .base import Solver
from .records import Record


class Serial(Solver):
    """Forward across the ranks carrying the boundary state, loss on the last rank, backward
    carrying the adjoint (:func:`ocnet.ranks.sweep.train`).  With ``micro_batches > 1`` the batch
    flows through the ranks in pieces so that ranks overlap, in the order of the ``pipeline``
    schedule, with forwards run ``ahead`` into time a rank would spend waiting
    (docs/pipeline.rst); the gradient is the same."""

    name = "serial"
    rank_invariant = True
    options = {
        "micro_batches": Option(int, 1, "micro-batches per mini-batch in the pipeline", min=1),
        "pipeline": Option(str, "1f1b", "pipeline schedule of the micro-batches: 1f1b, or zb "
                           "(zero-bubble: parameter gradients deferred into idle time)",
                           choices=tuple(SCHEDULES)),
        "ahead": Option(int, 1, "micro-batches a rank may hold beyond the schedule's by running "
                        "a later forward while its next backward waits for its adjoint (the "
                        "gradient is bitwise the same)", min=0, resumable=True),
    }

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        record = self.gradient(x, y, index)
        with timeline.span("update", steps=len(self.network.layers)):
            self.optimizer.step()
        return record

    def gradient(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        self.optimizer.zero_grad(set_to_none=True)
        loss = sweep.train(self.comm, self.network, x, y, len(y),
                           micro_batches=self.config["micro_batches"], schedule=self.config["pipeline"],
                           ahead=self.config["ahead"], filter=self.filter, device=self.device, tags=self.sweep_tags)
        return {} if loss is None else {"loss": loss}

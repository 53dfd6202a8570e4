"""Layer-serial back-propagation, pipelined across ranks: exact gradients."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..model.grid import Partition
from ..model.options import Option
from ..model.problem import LocalNetwork
from ..ranks import sweep, timeline
from ..ranks.comm import Comm
from ..ranks.pipeline import SCHEDULES, VIRTUAL
from .base import OptimizerFactory, Solver
from .records import Record


class Serial(Solver):
    """Forward across the ranks carrying the boundary state, loss on the last rank, backward
    carrying the adjoint (:func:`ocnet.ranks.sweep.train`).  With ``micro_batches > 1`` the batch
    flows through the ranks in pieces so that ranks overlap, in the order of the ``pipeline``
    schedule, with forwards run ``ahead`` into time a rank would spend waiting
    (docs/pipeline.rst); the gradient is the same.

    The schedules ``interleaved`` and ``v`` cut the layers into ``virtual_stages`` stages per
    rank (:meth:`ocnet.model.grid.Partition.virtual`); on the V the first rank holds the
    classifier and reports the loss."""

    name = "serial"
    rank_invariant = True
    options = {
        "micro_batches": Option(int, 1, "micro-batches per mini-batch in the pipeline", min=1),
        "pipeline": Option(str, "1f1b", "pipeline schedule of the micro-batches: 1f1b, zb "
                           "(zero-bubble: parameter gradients deferred into idle time), interleaved "
                           "(1F1B on virtual_stages stages per rank) or v (two stages per rank in a V)",
                           choices=(*SCHEDULES, *VIRTUAL)),
        "virtual_stages": Option(int, 2, "stages per rank of the interleaved pipeline (v: always 2)", min=1),
        "ahead": Option(int, 1, "micro-batches a rank may hold beyond the schedule's by running "
                        "a later forward while its next backward waits for its adjoint (the "
                        "gradient is bitwise the same; 1f1b and zb)", min=0, resumable=True),
    }

    def __init__(self, network: LocalNetwork, comm: Comm, make_optimizer: OptimizerFactory,
                 **kwargs: Any) -> None:
        super().__init__(network, comm, make_optimizer, **kwargs)
        chunks = len(network.chunks)
        virtual = self.config["pipeline"] in VIRTUAL
        one_chunk = self.config["pipeline"] == "interleaved" and self.config["virtual_stages"] == 1
        if virtual and not network.partition.is_virtual and not one_chunk:
            # a serial correction inside another solver works on that solver's slices
            raise ValueError(f"--pipeline {self.config['pipeline']} needs the layers dealt to the ranks in "
                             "virtual stages, which only --solver serial does; use 1f1b or zb here")
        if network.partition.is_virtual and not virtual:
            raise ValueError(f"the network is cut into virtual stages; --pipeline {self.config['pipeline']} "
                             "runs one slice per rank")
        # the messages into each chunk take tags of their own (2 per chunk)
        self.stage_tags = self.sweep_tags if chunks == 1 else self.tags.take(2 * chunks)

    @classmethod
    def partition(cls, n_layers: int, n_ranks: int, config: Mapping[str, Any]) -> Partition:
        """One balanced slice per rank, or ``virtual_stages`` of them for the schedules on
        virtual stages (two in a V for ``v``).  Raises ``ValueError`` for too few layers, inside
        another solver."""
        pipeline = config.get("pipeline", "1f1b")
        if pipeline not in VIRTUAL:
            return Partition(n_layers, n_ranks)
        if config.get("solver", "serial") != "serial":  # MG/Opt's levels read the loss on the last rank
            raise ValueError(f"--pipeline {pipeline} runs in --solver serial only, not inside "
                             f"{config['solver']}; use 1f1b or zb there")
        shape = VIRTUAL[pipeline][0]
        chunks = config.get("virtual_stages", 2)
        if shape == "v" and chunks != 2:
            raise ValueError(f"--pipeline v holds 2 stages per rank; leave virtual_stages at 2, not {chunks}")
        if chunks * n_ranks > n_layers:
            raise ValueError(f"--pipeline {pipeline}: {chunks} stages per rank on {n_ranks} ranks need at least "
                             f"{chunks * n_ranks} layers, the network has {n_layers}")
        return Partition.virtual(n_layers, n_ranks, chunks, shape)

    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        record = self.gradient(x, y, index)
        with timeline.span("update", steps=len(self.network.layers)):
            self.optimizer.step()
        return record

    def gradient(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor) -> Record:
        self.optimizer.zero_grad(set_to_none=True)
        loss = sweep.train(self.comm, self.network, x, y, len(y),
                           micro_batches=self.config["micro_batches"], schedule=self.config["pipeline"],
                           ahead=self.config["ahead"], filter=self.filter, device=self.device,
                           tags=self.stage_tags)
        return {} if loss is None else {"loss": loss}

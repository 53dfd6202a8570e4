"""Nested iteration in depth: the plan of levels, and the hand-over from one level to the next.

``--nested c_0,c_1,…,1`` trains the network of ``N / c_0`` layers (step ``c_0 h``) for
``--nested-epochs``' first number of epochs, interpolates its parameters in layer time to
the network of ``N / c_1`` layers (:func:`ocnet.model.depth.interpolate`), trains that, and
so on to the configured ``N`` layers, which trains until ``--epochs``.  Epoch numbers run on
across levels; a level is known by its layer count.

The configuration is checked twice: :func:`check` before anything is built (the factors
against the layer count), :func:`plan` once the network's stages are known (each factor
against each stage's layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from ..model import depth
from ..model.options import ConfigError
from ..model.problem import LocalNetwork, Problem
from ..ranks.comm import Comm


@dataclass(frozen=True)
class Level:
    """One level: a network of ``layers`` residual layers trained in epochs ``first … end - 1``."""

    layers: int
    first: int
    end: int

    @property
    def epochs(self) -> int:
        return self.end - self.first


def check(config: Mapping[str, Any]) -> None:
    """Refuse ``nested`` / ``nested_epochs`` that no network of ``config['layers']`` layers admits.

    Raises
    ------
    ConfigError
        Naming the key: factors not strictly decreasing or not ending in 1, a factor that does
        not divide the layer count, a count of ``nested_epochs`` other than one per level but
        the last, or budgets that leave the last level no epoch of ``epochs``.
    """
    levels, budgets, epochs = list(config["nested"]), list(config["nested_epochs"]), config["epochs"]
    if not levels:
        if budgets:
            raise ConfigError("nested_epochs: --nested-epochs needs --nested (the coarsening factors of the levels)")
        return
    text = ",".join(map(str, levels))
    if levels[-1] != 1 or any(c < 1 for c in levels):
        raise ConfigError(f"nested: the factors {text} must be positive and end in 1 (the configured network)")
    if any(a <= b for a, b in zip(levels, levels[1:])):
        raise ConfigError(f"nested: the factors {text} must decrease strictly (coarse to fine)")
    if len(levels) < 2:
        raise ConfigError("nested: one level (1) is plain training; give at least two factors, e.g. 2,1")
    for c in levels:
        if config["layers"] % c:
            raise ConfigError(f"nested: factor {c} does not divide the {config['layers']} layers")
    if len(budgets) != len(levels) - 1:
        raise ConfigError(f"nested_epochs: the {len(levels)} levels {text} need {len(levels) - 1} of them, "
                          f"the epochs of each level but the last (which trains until --epochs); got {len(budgets)}")
    if any(e < 1 for e in budgets):
        raise ConfigError(f"nested_epochs: each level trains at least one epoch, got {','.join(map(str, budgets))}")
    if sum(budgets) >= epochs:
        raise ConfigError(f"nested_epochs: the coarse levels' {sum(budgets)} epochs leave none of the {epochs} "
                          f"epochs (--epochs, all levels together) to the last level")


def plan(config: Mapping[str, Any], n_stages: int) -> list[Level]:
    """The levels of a run of ``config`` on a network of ``n_stages`` stages, coarse to fine
    (one level of ``config['layers']`` layers for all epochs without ``nested``).

    Raises
    ------
    ConfigError
        For a factor that does not divide some stage's layers (naming both).
    """
    factors = list(config["nested"]) or [1]
    budgets = [*config["nested_epochs"], config["epochs"] - sum(config["nested_epochs"])]
    levels, first = [], 0
    for c, e in zip(factors, budgets):
        try:
            layers = depth.coarsen_layers(config["layers"], n_stages, c)
        except ValueError as error:
            raise ConfigError(f"nested: {error}") from None
        levels.append(Level(layers, first, first + e))
        first += e
    return levels


def level_of(levels: Sequence[Level], epoch: int) -> int:
    """The index of the level that trains ``epoch`` (the last level for an epoch beyond them)."""
    return next((i for i, lv in enumerate(levels) if epoch < lv.end), len(levels) - 1)


def gather_whole(network: LocalNetwork, comm: Comm, problem: Problem) -> None:
    """Load into ``problem`` (a whole network, on every rank of ``comm``) the parameters and
    buffers whose slices ``network`` holds on ``comm``'s ranks: each rank's shard goes to
    rank 0 and the union back to all (on the CPU; bookkeeping, not counted as bytes sent)."""
    shard = {k: v.detach().cpu() for k, v in network.problem_state().items()}
    shards = comm.gather(shard)
    whole = comm.bcast({k: v for s in shards for k, v in s.items()} if shards is not None else None)
    problem.load_state_dict(whole)


def hand_over(network: LocalNetwork, comm: Comm, coarse: Problem, fine: Problem, how: str) -> None:
    """Write into ``fine`` the interpolation in layer time of the network whose slices
    ``network`` holds on ``comm``'s ranks; ``coarse`` is a whole network of that network's
    shape, overwritten on the way (both on the CPU, on every rank)."""
    gather_whole(network, comm, coarse)
    with torch.no_grad():
        depth.interpolate(coarse, fine, how)

"""Augmented-Lagrangian layer-parallel training: the penalty method plus multipliers.

The objective adds ``Σ_b ⟨μ_b, r_b⟩`` per sample to the penalised one (:mod:`.penalty`); the
multipliers, one per training sample and boundary like the auxiliary states, take the
damped step ``μ_b ← μ_b + β·ρ·r_b`` with the residual of the iteration.  Each sample's
multipliers move once per epoch (when its batch comes).  The full step β = 1 diverged in
the prototype (docs/layer_parallel.rst); β = 0.01 trained.
"""
from __future__ import annotations

import torch

from ..model.options import Option
from .penalty import Penalty


class AugmentedLagrangian(Penalty):
    """:class:`~.penalty.Penalty` with multipliers ``μ_b`` and their update."""

    name = "al"
    multipliers = True
    options = {
        **Penalty.options,
        "mu_step": Option(float, 0.01, "damping beta of the multiplier step mu += beta*rho*r", positive=True),
    }

    @torch.no_grad()
    def update_multipliers(self, index: torch.Tensor, r: dict[int, torch.Tensor]) -> None:
        beta_rho = self.config["mu_step"] * self.rho
        for b, rb in r.items():
            self.mu.set(b, index, self.mu.get(b, index) + beta_rho * rb)

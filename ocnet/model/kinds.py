"""Step kinds of the user's own: ``--net NAME`` for a residual function ``F(u; θ)`` registered
here, around which ocnet builds the network every solver trains.

    import torch
    from torch import nn
    from ocnet.model.kinds import register_step

    class Gated(nn.Module):                       # F(u) = tanh(A u) ⊙ σ(B u)
        def __init__(self, width):
            super().__init__()
            self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

        def forward(self, u):                     # (batch, width) → (batch, width)
            return torch.tanh(self.a(u)) * torch.sigmoid(self.b(u))

    register_step("gated", lambda s: Gated(s.width))

The network is ``u_0 = opening(x)``, ``--layers`` steps ``u + h F(u; θ_n)`` on
``[0, --final-time]`` (one stage), and ``classifier(u_N)``. Without an ``opening`` of its own it
is ``x ↦ σ(W flatten(x))`` to ``--width`` (σ: ``--activation``, tanh by default); without a
``classifier`` a linear map of the flattened last state. :func:`ocnet.runs.testing.check_step`
checks what the solvers rely on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from torch import nn

from . import plugins

#: The kinds ocnet builds itself (:func:`ocnet.model.problem.build`).
BUILT_IN = ("dense", "conv", "conv1d", "transformer")
ENTRY_POINTS = "ocnet.steps"


@dataclass(frozen=True)
class Settings:
    """What a step kind's factories are given: the data's sample shape and class count, and the
    run's ``--width``, ``--channels``, ``--activation`` (``None``: the kind's own default),
    ``--norm`` and ``--heads``."""

    input_shape: tuple[int, ...]
    n_classes: int
    width: int = 32
    channels: tuple[int, ...] = (16,)
    activation: str | None = None
    norm: str = "group"
    heads: int = 4


@dataclass(frozen=True)
class StepKind:
    """A registered step kind.

    ``step(settings)`` makes one ``F(u; θ)``: an ``nn.Module`` that maps a state batch to a
    state batch of the same shape. ``opening(settings)`` makes ``x ↦ u_0``;
    ``classifier(settings, state_shape)`` makes ``u_N ↦ logits`` (``state_shape``: one
    sample's state). ``couples_samples``: ``F`` mixes the samples of a batch (as batch norm
    does), so that micro-batches change what it computes."""

    step: Callable[[Settings], nn.Module]
    opening: Callable[[Settings], nn.Module] | None = None
    classifier: Callable[[Settings, Sequence[int]], nn.Module] | None = None
    couples_samples: bool = False


KINDS: dict[str, StepKind] = {}


def register_step(name: str, step: Callable[[Settings], nn.Module], *,
                  opening: Callable[[Settings], nn.Module] | None = None,
                  classifier: Callable[[Settings, Sequence[int]], nn.Module] | None = None,
                  couples_samples: bool = False) -> StepKind:
    """Make ``--net name`` the network of ``step`` (see :class:`StepKind`); a plug-in
    (``--plugin``) or an entry point of the group ``ocnet.steps`` (naming a :class:`StepKind`
    or a step factory) calls it."""
    if not name or name != name.strip().lower() or name == "auto":
        raise ValueError(f"a step kind's name is lower case without spaces, and not 'auto': {name!r}")
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in step kind; register yours under another name")
    KINDS[name] = kind = StepKind(step, opening, classifier, couples_samples)
    return kind


def available() -> tuple[str, ...]:
    """The names ``--net`` accepts: ``auto``, the built-in kinds, the registered ones (after
    loading the entry points of ``ocnet.steps``, once)."""
    for entry in plugins.entry_points(ENTRY_POINTS):
        if entry.name not in KINDS:
            found = entry.load()
            if isinstance(found, StepKind):
                KINDS[entry.name] = found
            else:
                register_step(entry.name, found)
    return ("auto", *BUILT_IN, *KINDS)


def get(name: str) -> StepKind:
    """The step kind registered as ``name``."""
    available()
    if name not in KINDS:
        raise ValueError(f"unknown net {name!r}; choose from {', '.join(available()[1:])}")
    return KINDS[name]

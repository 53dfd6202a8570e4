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
``[0, --final-time]`` (one stage; several: below), and ``classifier(u_N)``. Without an
``opening`` of its own it is ``x ↦ σ(W flatten(x))`` to ``--width`` (σ: ``--activation``,
tanh by default); without a ``classifier`` a linear map of the flattened last state.

A kind with a ``transition`` has stages, as ``--net conv`` has: one per entry of
``--channels``, the ``--layers`` steps shared evenly among them (the first ``layers % stages``
stages one more), each stage on ``[0, --final-time]``, and ``transition(settings,
state_shape)`` between two stages, mapping the last state of one to the first of the next.
Each factory is given the :class:`Settings` of the stage it builds for: ``settings.stage``
(0 for the opening, the stage entered for a transition, the last for the classifier) and
``settings.stage_channels`` (``channels[stage]``)::

    class Dense(nn.Module):                       # F(u) = tanh(W u + b) on (batch, c)
        def __init__(self, c):
            super().__init__()
            self.lin = nn.Linear(c, c)

        def forward(self, u):
            return torch.tanh(self.lin(u))

    register_step("widening", lambda s: Dense(s.stage_channels),
                  opening=lambda s: nn.Sequential(nn.Flatten(), nn.Linear(s.input_shape[0], s.stage_channels)),
                  transition=lambda s, shape: nn.Linear(shape[0], s.stage_channels))

``--channels 8,16 --layers 6`` makes it three steps of width 8, a linear map to 16 and
three steps of width 16. A kind without a transition has one stage whatever ``--channels``
holds (its factories may read ``settings.channels`` as they like). MGRIT refuses a network of
several stages, as it does a convolutional one (:doc:`/own_step`).
:func:`ocnet.runs.testing.check_step` checks what the solvers rely on (every stage's ``F``
and every transition).
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
    """What a step kind's factories are given: the data's sample shape and class count, the
    run's ``--width``, ``--channels``, ``--activation`` (``None``: the kind's own default),
    ``--norm`` and ``--heads``, and the ``stage`` being built (0 unless the kind has a
    transition: see :class:`StepKind`)."""

    input_shape: tuple[int, ...]
    n_classes: int
    width: int = 32
    channels: tuple[int, ...] = (16,)
    activation: str | None = None
    norm: str = "group"
    heads: int = 4
    stage: int = 0

    @property
    def stage_channels(self) -> int:
        """``channels[stage]``: the channels (or width) of the stage being built."""
        return self.channels[self.stage]


@dataclass(frozen=True)
class StepKind:
    """A registered step kind.

    ``step(settings)`` makes one ``F(u; θ)``: an ``nn.Module`` that maps a state batch to a
    state batch of the same shape. ``opening(settings)`` makes ``x ↦ u_0``;
    ``classifier(settings, state_shape)`` makes ``u_N ↦ logits`` (``state_shape``: one
    sample's state). ``couples_samples``: ``F`` (or a transition) mixes the samples of a
    batch (as batch norm does), so that micro-batches change what it computes.

    ``transition(settings, state_shape)`` makes the map from the last state of stage
    ``settings.stage - 1`` (one sample's shape ``state_shape``) to the first of stage
    ``settings.stage``. With one, the network has a stage per entry of ``settings.channels``;
    without one, a single stage. Every factory gets the settings of its stage
    (``settings.stage``, ``settings.stage_channels``): the opening stage 0's, ``step`` its
    stage's, the classifier the last stage's."""

    step: Callable[[Settings], nn.Module]
    opening: Callable[[Settings], nn.Module] | None = None
    classifier: Callable[[Settings, Sequence[int]], nn.Module] | None = None
    couples_samples: bool = False
    transition: Callable[[Settings, Sequence[int]], nn.Module] | None = None

    def n_stages(self, settings: Settings) -> int:
        """The stages of this kind's network under ``settings``: one per entry of
        ``channels`` with a transition, else one."""
        return len(settings.channels) if self.transition is not None else 1


KINDS: dict[str, StepKind] = {}


def register_step(name: str, step: Callable[[Settings], nn.Module], *,
                  opening: Callable[[Settings], nn.Module] | None = None,
                  transition: Callable[[Settings, Sequence[int]], nn.Module] | None = None,
                  classifier: Callable[[Settings, Sequence[int]], nn.Module] | None = None,
                  couples_samples: bool = False) -> StepKind:
    """Make ``--net name`` the network of ``step`` (see :class:`StepKind`; with a
    ``transition``, one stage per entry of ``--channels``); a plug-in (``--plugin``) or an
    entry point of the group ``ocnet.steps`` (naming a :class:`StepKind` or a step factory)
    calls it."""
    if not name or name != name.strip().lower() or name == "auto":
        raise ValueError(f"a step kind's name is lower case without spaces, and not 'auto': {name!r}")
    if name in BUILT_IN:
        raise ValueError(f"{name!r} is a built-in step kind; register yours under another name")
    KINDS[name] = kind = StepKind(step, opening, classifier, couples_samples, transition)
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

"""The optimal-control problem: opening layer, state equation, classifier, loss.

    u_0 = O(x; θ_O),   u_{n+1} = Φ_n(u_n) = u_n + h F(u_n; θ_n),   J = mean ℓ(C(u_N), y)

:class:`Problem` holds the whole network (every rank builds the same one from the same
seed); :meth:`Problem.local` cuts out the slice a rank owns, sharing its parameters.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as Fn

from . import auxiliary, batchnorm, dropout, kinds
from .data import vocabulary
from .grid import Partition, TimeGrid, stage_layers
from .steps import AttentionStep, ConvStep, DenseStep, Residual, Transition, activation, convolution, normalisation
from .tokens import ClassToken, Patches, Tokens, Vocabulary, patch_size


class Problem(nn.Module):
    """The whole network as an optimal-control problem.

    Parameters
    ----------
    opening : nn.Module
        ``x ↦ u_0``.
    layers : sequence of nn.Module
        The layer maps in order: :class:`~ocnet.model.steps.Residual` steps, with a
        :class:`~ocnet.model.steps.Transition` between stages.
    classifier : nn.Module
        ``u_N ↦ logits``, shape ``(batch, n_classes)``.
    stages : sequence of TimeGrid
        One time grid per stage (stages are separated by transitions).
    input_shape : sequence of int
        Shape of one input sample, e.g. ``(1, 28, 28)``.
    n_classes : int
        Number of classes (the classifier's output width).
    """

    def __init__(self, opening: nn.Module, layers: Sequence[nn.Module], classifier: nn.Module,
                 stages: Sequence[TimeGrid], input_shape: Sequence[int], n_classes: int) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.n_classes = n_classes
        self.opening = opening
        self.layers = nn.ModuleList(layers)
        self.classifier = classifier
        self.stages = list(stages)
        for n, layer in enumerate(self.layers):
            if isinstance(layer, Residual):
                layer.index = n
        n_steps = sum(isinstance(layer, Residual) for layer in self.layers)
        if n_steps != sum(g.N for g in self.stages):
            raise ValueError("the stages' time grids do not match the residual layers")
        #: A step kind's own classifier factory ``(stage, state_shape) ↦ head``, for the
        #: auxiliary heads of :meth:`auxiliary_head` (``None``: ocnet's own rules).
        self.head_factory: auxiliary.Factory | None = None

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shape of one sample's state entering layer ``n`` (``n = n_layers``: the output),
        found by passing one zero sample through the network."""
        if getattr(self, "_state_shapes", None) is None:
            p = next(self.parameters())
            with torch.no_grad(), dropout.suspended(), batchnorm.evaluating(self):
                u = self.opening(torch.zeros((1, *self.input_shape), dtype=p.dtype, device=p.device))
                shapes = [tuple(u.shape[1:])]
                for layer in self.layers:
                    u = layer(u)
                    shapes.append(tuple(u.shape[1:]))
            self._state_shapes = shapes
        return self._state_shapes

    def auxiliary_head(self, n: int, seed: int = 0) -> nn.Module:
        """An auxiliary classifier of the state entering layer ``n`` (:mod:`ocnet.model.auxiliary`),
        initialised from ``seed`` and ``n``; raises ``ValueError`` when none fits."""
        stage = sum(not isinstance(layer, Residual) for layer in self.layers[:n])
        return auxiliary.head(self.state_shapes[n], self.n_classes, stage=stage, classifier=self.classifier,
                              final_shape=self.state_shapes[-1], factory=self.head_factory,
                              seed=seed * 100_003 + n)

    def examples(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` synthetic inputs ``(n, *input_shape)`` in the parameters' dtype: random token
        ids for a token opening, standard normal values otherwise (for timing and probes)."""
        dtype = next(self.parameters()).dtype
        embed = getattr(self.opening, "embed", None)
        if isinstance(embed, Vocabulary):
            ids = torch.randint(0, embed.embed.num_embeddings, (n, *self.input_shape), generator=generator)
            return ids.to(dtype)
        return torch.randn(n, *self.input_shape, generator=generator, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.opening(x)
        for layer in self.layers:
            u = layer(u)
        return self.classifier(u)

    @staticmethod
    def loss(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """ℓ: cross-entropy, averaged over the batch unless ``reduction='sum'``."""
        return Fn.cross_entropy(logits, y, reduction=reduction)

    def local(self, partition: Partition, rank: int) -> "LocalNetwork":
        """The slice of the network that ``rank`` owns (sharing parameters with ``self``)."""
        if partition.n_layers != self.n_layers:
            raise ValueError(f"partition of {partition.n_layers} layers for a network of {self.n_layers}")
        return LocalNetwork(self, partition, rank)

    def to_torch(self) -> nn.Sequential:
        """A plain ``torch.nn.Sequential`` with a copy of the parameters and the same outputs."""
        return nn.Sequential(copy.deepcopy(self.opening), *copy.deepcopy(list(self.layers)),
                             copy.deepcopy(self.classifier))


class LocalNetwork(nn.Module):
    """The part of a :class:`Problem` held by one rank: layers ``start … stop-1``, plus the
    opening on the first rank and the classifier on the last.

    On a partition into virtual stages (:meth:`Partition.virtual`) the rank holds several
    slices, its :attr:`chunks`: ``layers`` is their layers in order (all of this rank's
    parameters, for optimisers, gradient exchange and checkpoints), :meth:`chunk` runs one of
    them, the opening sits with the chunk that starts at layer 0 and the classifier with the
    one that ends at the last layer.
    """

    problem: Problem

    def __init__(self, problem: Problem, partition: Partition, rank: int) -> None:
        super().__init__()
        self.rank, self.size = rank, partition.n_ranks
        #: ``[(start, stop), …]``: the slices of layers this rank holds, in layer order
        self.chunks = partition.chunks(rank)
        # the first layer held and one past the last (one slice unless virtual)
        self.start, self.stop = self.chunks[0][0], self.chunks[-1][1]
        self.partition = partition
        self.stages = problem.stages
        self.n_classes, self.input_shape = problem.n_classes, problem.input_shape
        self.state_shapes = problem.state_shapes
        self.opening = problem.opening if self.start == 0 else None
        self.layers = nn.ModuleList([layer for a, b in self.chunks for layer in problem.layers[a:b]])
        self.classifier = problem.classifier if self.stop == problem.n_layers else None
        self.loss = problem.loss
        self.auxiliary_head = problem.auxiliary_head
        # the whole network this slice is cut from; kept outside the module tree, since its
        # parameters are this slice's and the other ranks' (multilevel methods transfer it)
        self.__dict__["problem"] = problem
        # where each chunk's layers begin in ``layers``
        self._offsets = [0]
        for a, b in self.chunks:
            self._offsets.append(self._offsets[-1] + b - a)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The block map ``B_k``: the opening (first rank) then the local layers.

        ``u`` is the input ``x`` on the first rank, the incoming boundary state elsewhere.
        A rank of several chunks has no one block map: see :meth:`chunk`.
        """
        if len(self.chunks) > 1:
            raise ValueError(f"rank {self.rank} holds {len(self.chunks)} slices of layers (virtual pipeline "
                             "stages): run them one at a time with chunk(c, u)")
        return self.chunk(0, u)

    def chunk_layers(self, c: int) -> nn.ModuleList:
        """The layers of chunk ``c`` (a view into :attr:`layers`)."""
        return self.layers[self._offsets[c]:self._offsets[c + 1]]

    def chunk(self, c: int, u: torch.Tensor) -> torch.Tensor:
        """Chunk ``c``'s map: the opening if the chunk starts at layer 0, then its layers."""
        if self.chunks[c][0] == 0 and self.opening is not None:
            u = self.opening(u)
        for layer in self.chunk_layers(c):
            u = layer(u)
        return u

    def head(self, u: torch.Tensor) -> torch.Tensor:
        """The classifier (last rank only): ``(batch, …) → (batch, n_classes)``."""
        if self.classifier is None:
            raise RuntimeError(f"rank {self.rank} holds no classifier; only the rank of the last layer does")
        return self.classifier(u)

    def problem_state(self) -> dict[str, torch.Tensor]:
        """This rank's parameters and buffers under the whole problem's names."""
        out = {}
        if self.opening is not None:
            out.update({f"opening.{k}": v for k, v in self.opening.state_dict().items()})
        for i, layer in enumerate(self.layers):
            out.update({f"layers.{self._global(i)}.{k}": v for k, v in layer.state_dict().items()})
        if self.classifier is not None:
            out.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        return out

    def problem_name(self, name: str) -> str:
        """The whole problem's name of this slice's parameter or buffer ``name``
        (``layers.i.…`` here is ``layers.{start + i}.…`` there, chunk by chunk)."""
        head, _, rest = name.partition(".")
        if head != "layers":
            return name
        i, _, rest = rest.partition(".")
        return f"layers.{self._global(int(i))}.{rest}"

    def _global(self, i: int) -> int:
        """The whole problem's index of local layer ``i``."""
        c = max(c for c in range(len(self.chunks)) if self._offsets[c] <= i)
        return self.chunks[c][0] + i - self._offsets[c]


# -- builders ---------------------------------------------------------------------------------
def dense_problem(in_features: int | Sequence[int], n_classes: int, width: int = 32, n_layers: int = 16,
                  T: float = 1.0, act: str = "tanh") -> Problem:
    """Vector data ``(batch, in_features)``: a linear opening to ``width``, ``n_layers`` dense
    residual steps on ``[0, T]``, a linear classifier."""
    shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
    grid = TimeGrid(n_layers, T)
    opening = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), activation(act))
    layers = [Residual(DenseStep(width, act), grid.h) for _ in range(n_layers)]
    return Problem(opening, layers, nn.Linear(width, n_classes), [grid], shape, n_classes)


def conv_problem(input_shape: Sequence[int], n_classes: int, channels: Sequence[int] = (16,),
                 layers_per_stage: Sequence[int] = (8,), T: float = 1.0, act: str = "relu",
                 norm: str = "group") -> Problem:
    """Images ``(batch, in_channels, H, W)``, or signals ``(batch, in_channels, L)``: a
    convolutional opening (3×3, or 3 wide), then one stage of convolutional residual steps per
    entry of ``channels`` (each stage on ``[0, T]``), a strided :class:`Transition` between
    stages, global average pooling and a linear classifier."""
    if len(channels) != len(layers_per_stage):
        raise ValueError("give one layer count per stage")
    dims = len(input_shape) - 1
    opening = nn.Sequential(convolution(dims)(input_shape[0], channels[0], 3, padding=1),
                            normalisation(norm, channels[0], dims), activation(act))
    layers: list[nn.Module] = []
    grids = []
    for s, (c, n) in enumerate(zip(channels, layers_per_stage)):
        if s:
            layers.append(Transition(channels[s - 1], c, act, norm, dims=dims))
        grid = TimeGrid(n, T)
        grids.append(grid)
        layers += [Residual(ConvStep(c, act, norm, dims=dims), grid.h) for _ in range(n)]
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
    classifier = nn.Sequential(pool, nn.Flatten(), nn.Linear(channels[-1], n_classes))
    return Problem(opening, layers, classifier, grids, input_shape, n_classes)


def transformer_problem(input_shape: Sequence[int], n_classes: int, width: int = 32, heads: int = 4,
                        n_layers: int = 8, T: float = 1.0, act: str = "gelu", patch: int = 0,
                        vocab: int = 0) -> Problem:
    """Images ``(batch, C, H, W)`` cut into patches (a vision transformer), or token sequences
    ``(batch, L)`` of ids below ``vocab``: a :class:`~ocnet.model.tokens.Tokens` opening to
    ``(batch, 1 + tokens, width)``, ``n_layers`` :class:`~ocnet.model.steps.AttentionStep` steps on
    ``[0, T]``, a classifier on the class token."""
    embed: nn.Module
    if vocab:
        if len(input_shape) != 1:
            raise ValueError(f"token sequences have shape (L,), got {tuple(input_shape)}")
        n_tokens, embed = input_shape[0], Vocabulary(vocab, width)
    else:
        if len(input_shape) != 3:
            raise ValueError(f"net 'transformer' needs images (C, H, W) or token sequences, "
                             f"got shape {tuple(input_shape)}")
        p = patch_size(input_shape, patch)
        n_tokens, embed = (input_shape[1] // p) * (input_shape[2] // p), Patches(input_shape[0], width, p)
    grid = TimeGrid(n_layers, T)
    layers = [Residual(AttentionStep(width, heads, act), grid.h) for _ in range(n_layers)]
    return Problem(Tokens(embed, n_tokens, width), layers, ClassToken(width, n_classes), [grid],
                   input_shape, n_classes)


def registered_problem(kind: kinds.StepKind, settings: kinds.Settings, n_layers: int, T: float = 1.0) -> Problem:
    """The network of a registered step kind (:mod:`ocnet.model.kinds`): its opening (or
    ``σ(W flatten(x))`` to ``width``), ``n_layers`` steps of its ``F`` on ``[0, T]``, its
    classifier (or a linear map of the flattened last state). A kind with a transition has one
    stage per entry of ``settings.channels``, each on ``[0, T]``, the steps shared among them
    as :func:`build` shares a convolutional network's, its transition between two stages."""
    per_stage = stage_layers(n_layers, kind.n_stages(settings))
    stage = dataclasses.replace(settings, stage=0)
    if kind.opening is not None:
        opening = kind.opening(stage)
    else:
        opening = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(settings.input_shape), settings.width),
                                activation(settings.activation or "tanh"))
    with torch.no_grad():
        state = tuple(opening(torch.zeros(1, *settings.input_shape)).shape[1:])
    layers: list[nn.Module] = []
    grids = []
    for s, n in enumerate(per_stage):
        stage = dataclasses.replace(settings, stage=s)
        if s:
            assert kind.transition is not None
            transition = kind.transition(stage, state)
            layers.append(transition)
            with torch.no_grad(), batchnorm.evaluating(transition):  # running statistics stay as built
                state = tuple(transition(torch.zeros(1, *state)).shape[1:])
        grid = TimeGrid(n, T)
        grids.append(grid)
        layers += [Residual(kind.step(stage), grid.h) for _ in range(n)]
    classifier = (kind.classifier(stage, state) if kind.classifier is not None
                  else nn.Sequential(nn.Flatten(), nn.Linear(math.prod(state), settings.n_classes)))
    problem = Problem(opening, layers, classifier, grids, settings.input_shape, settings.n_classes)
    if kind.classifier is not None:
        make = kind.classifier
        problem.head_factory = lambda s, shape: make(dataclasses.replace(settings, stage=s), shape)
    return problem


def build(input_shape: Sequence[int], n_classes: int, *, net: str, layers: int, width: int = 32,
          channels: Sequence[int] = (16,), T: float = 1.0, activation: str | None = None,
          norm: str = "group", heads: int = 4, patch: int = 0, vocab: int = 0, dropout: float = 0.0,
          seed: int = 0, dtype: torch.dtype = torch.float32) -> Problem:
    """Build the network for data of ``input_shape`` (without the batch dimension).

    ``net='dense'`` flattens the input; ``net='conv'`` needs images ``(C, H, W)`` (and
    ``net='conv1d'`` signals ``(C, L)``) and splits ``layers`` residual steps evenly over the
    stages given by ``channels``;
    ``net='transformer'`` takes images (``patch`` × ``patch`` patches) or, with ``vocab``,
    token sequences, into tokens of ``width`` with ``heads`` attention heads; any other ``net``
    is a registered step kind (:func:`registered_problem`).  ``dropout``
    is the rate of every residual step's (:class:`~ocnet.model.steps.Residual`).  Parameters are
    initialised from ``seed`` alone, so every rank builds the same network.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if net == "dense":
            problem = dense_problem(input_shape, n_classes, width, layers, T, activation or "tanh")
        elif net in ("conv", "conv1d"):
            if net == "conv" and len(input_shape) != 3:
                raise ValueError(f"net 'conv' needs image data (C, H, W), got shape {tuple(input_shape)}")
            if net == "conv1d" and len(input_shape) != 2:
                raise ValueError(f"net 'conv1d' needs signals (C, L), got shape {tuple(input_shape)}")
            problem = conv_problem(input_shape, n_classes, channels, stage_layers(layers, len(channels)), T,
                                   activation or "relu", norm)
        elif net == "transformer":
            problem = transformer_problem(input_shape, n_classes, width, heads, layers, T,
                                          activation or "gelu", patch, vocab)
        else:
            settings = kinds.Settings(tuple(input_shape), n_classes, width, tuple(channels), activation, norm, heads)
            problem = registered_problem(kinds.get(net), settings, layers, T)
    for layer in problem.layers:
        if isinstance(layer, Residual):
            layer.dropout = dropout
    return problem.to(dtype)


def net_kind(config: Mapping[str, Any], input_shape: Sequence[int]) -> str:
    """The kind of network a run configuration asks for on samples of ``input_shape``: its
    ``net``, or by default ``transformer`` for token sequences, ``conv`` for images ``(C, H, W)``
    other than the 8×8 digits, ``conv1d`` for signals ``(C, L)`` and ``dense`` otherwise."""
    if config["net"] != "auto":
        return config["net"]
    if vocabulary(config["problem"]):
        return "transformer"
    if len(input_shape) == 2:
        return "conv1d"
    return "conv" if len(input_shape) == 3 and config["problem"] != "digits" else "dense"


def from_config(config: Mapping[str, Any], input_shape: Sequence[int], n_classes: int, **overrides: Any) -> Problem:
    """The network a run of ``config`` trains on inputs of ``input_shape``; ``overrides``
    (``layers``, ``channels``, ``width``, …; ``None`` keeps the configured value) change
    :func:`build`'s arguments."""
    kwargs = dict(net=net_kind(config, input_shape), layers=config["layers"], width=config["width"],
                  channels=list(config["channels"]), T=config["final_time"],
                  activation=None if config["activation"] == "auto" else config["activation"],
                  norm=config["norm"], heads=config["heads"], patch=config["patch"], dropout=config["dropout"],
                  vocab=vocabulary(config["problem"]), seed=config["seed"], dtype=getattr(torch, config["dtype"]))
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return build(tuple(input_shape), n_classes, **kwargs)

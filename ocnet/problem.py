"""The optimal-control problem: opening layer, state equation, classifier, loss.

    u_0 = O(x; θ_O),   u_{n+1} = Φ_n(u_n) = u_n + h F(u_n; θ_n),   J = mean ℓ(C(u_N), y)

:class:`Problem` holds the whole network (every rank builds the same one from the same
seed); :meth:`Problem.local` cuts out the slice a rank owns, sharing its parameters.
"""
from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as Fn

from .grid import Partition, TimeGrid
from .options import ConfigError
from .steps import ConvStep, DenseStep, Residual, Transition, activation, normalisation


class Problem(nn.Module):
    """The whole network as an optimal-control problem.

    Parameters
    ----------
    opening : nn.Module
        ``x ↦ u_0``.
    layers : sequence of nn.Module
        The layer maps in order: :class:`~ocnet.steps.Residual` steps, with a
        :class:`~ocnet.steps.Transition` between stages.
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
        n_steps = sum(isinstance(layer, Residual) for layer in self.layers)
        if n_steps != sum(g.N for g in self.stages):
            raise ValueError("the stages' time grids do not match the residual layers")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shape of one sample's state entering layer ``n`` (``n = n_layers``: the output),
        found by passing one zero sample through the network."""
        if getattr(self, "_state_shapes", None) is None:
            p = next(self.parameters())
            with torch.no_grad():
                u = self.opening(torch.zeros((1, *self.input_shape), dtype=p.dtype, device=p.device))
                shapes = [tuple(u.shape[1:])]
                for layer in self.layers:
                    u = layer(u)
                    shapes.append(tuple(u.shape[1:]))
            self._state_shapes = shapes
        return self._state_shapes

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
    opening on the first rank and the classifier on the last."""

    def __init__(self, problem: Problem, partition: Partition, rank: int) -> None:
        super().__init__()
        self.rank, self.size = rank, partition.n_ranks
        self.start, self.stop = partition.bounds(rank)
        self.partition = partition
        self.stages = problem.stages
        self.n_classes, self.input_shape = problem.n_classes, problem.input_shape
        self.state_shapes = problem.state_shapes
        self.opening = problem.opening if rank == 0 else None
        self.layers = nn.ModuleList(problem.layers[self.start:self.stop])
        self.classifier = problem.classifier if rank == self.size - 1 else None
        self.loss = problem.loss

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """The block map ``B_k``: the opening (first rank) then the local layers.

        ``u`` is the input ``x`` on the first rank, the incoming boundary state elsewhere.
        """
        if self.opening is not None:
            u = self.opening(u)
        for layer in self.layers:
            u = layer(u)
        return u

    def head(self, u: torch.Tensor) -> torch.Tensor:
        """The classifier (last rank only): ``(batch, …) → (batch, n_classes)``."""
        if self.classifier is None:
            raise RuntimeError(f"rank {self.rank} holds no classifier; only the last rank does")
        return self.classifier(u)

    def problem_state(self) -> dict[str, torch.Tensor]:
        """This rank's parameters and buffers under the whole problem's names."""
        out = {}
        if self.opening is not None:
            out.update({f"opening.{k}": v for k, v in self.opening.state_dict().items()})
        for i, layer in enumerate(self.layers, start=self.start):
            out.update({f"layers.{i}.{k}": v for k, v in layer.state_dict().items()})
        if self.classifier is not None:
            out.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        return out

    def problem_name(self, name: str) -> str:
        """The whole problem's name of this slice's parameter or buffer ``name``
        (``layers.i.…`` here is ``layers.{start + i}.…`` there)."""
        head, _, rest = name.partition(".")
        if head != "layers":
            return name
        i, _, rest = rest.partition(".")
        return f"layers.{self.start + int(i)}.{rest}"


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
    """Images ``(batch, in_channels, H, W)``: a 3×3 convolutional opening, then one stage of
    convolutional residual steps per entry of ``channels`` (each stage on ``[0, T]``), a
    strided :class:`Transition` between stages, global average pooling and a linear
    classifier."""
    if len(channels) != len(layers_per_stage):
        raise ValueError("give one layer count per stage")
    opening = nn.Sequential(nn.Conv2d(input_shape[0], channels[0], 3, padding=1),
                            normalisation(norm, channels[0]), activation(act))
    layers: list[nn.Module] = []
    grids = []
    for s, (c, n) in enumerate(zip(channels, layers_per_stage)):
        if s:
            layers.append(Transition(channels[s - 1], c, act, norm))
        grid = TimeGrid(n, T)
        grids.append(grid)
        layers += [Residual(ConvStep(c, act, norm), grid.h) for _ in range(n)]
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], n_classes))
    return Problem(opening, layers, classifier, grids, input_shape, n_classes)


def build(input_shape: Sequence[int], n_classes: int, *, net: str, layers: int, width: int = 32,
          channels: Sequence[int] = (16,), T: float = 1.0, activation: str | None = None,
          norm: str = "group", seed: int = 0, dtype: torch.dtype = torch.float32) -> Problem:
    """Build the network for data of ``input_shape`` (without the batch dimension).

    ``net='dense'`` flattens the input; ``net='conv'`` needs images ``(C, H, W)`` and splits
    ``layers`` residual steps evenly over the stages given by ``channels``.  Parameters are
    initialised from ``seed`` alone, so every rank builds the same network.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if net == "dense":
            problem = dense_problem(input_shape, n_classes, width, layers, T, activation or "tanh")
        elif net == "conv":
            if len(input_shape) != 3:
                raise ValueError(f"net 'conv' needs image data (C, H, W), got shape {tuple(input_shape)}")
            n_stages = len(channels)
            if layers < n_stages:
                raise ValueError(f"{layers} layers cannot fill {n_stages} stages")
            per_stage = [layers // n_stages + (s < layers % n_stages) for s in range(n_stages)]
            problem = conv_problem(input_shape, n_classes, channels, per_stage, T,
                                   activation or "relu", norm)
        else:
            raise ValueError(f"unknown net {net!r}; choose dense or conv")
    return problem.to(dtype)


# -- memory -----------------------------------------------------------------------------------
# Python objects of one layer (module, parameters, their dictionaries): 11–14 KiB measured
# for the layers of ocnet.steps; counted so that very many small layers do not look free.
LAYER_OVERHEAD = 16 * 1024
# Per layer, autograd keeps about this many tensors of the state's size for the backward
# pass: the input, the linear map's or convolution's output, the normalisation's, the
# activation's and the Euler update.
STATES_PER_LAYER = 5


@dataclass(frozen=True)
class MemoryEstimate:
    """The bytes one rank needs, by part (see :func:`memory_estimate`).

    Attributes
    ----------
    network : int
        The whole network's parameters and layer objects: every rank builds all of it on
        the host before it keeps its slice.
    local : int
        The parameters of the largest slice one rank owns (a copy on a GPU).
    training : int
        The slice's gradients and optimiser state.
    activations : int
        The states of one mini-batch through the slice that the backward pass keeps.
    data : int
        The data set in ``dtype`` as training uses it: a copy on a GPU (or in float64); on
        the host in float32 it is the loaded data itself, counted once more.
    """

    network: int
    local: int
    training: int
    activations: int
    data: int

    def parts(self, device: torch.device | str = "cpu") -> dict[str, dict[str, int]]:
        """Where each part lives: ``{'host': {...}, 'cuda': {...}}`` for a GPU, else the host
        holds everything (the parameters are then the slice's own, shared with the network)."""
        if torch.device(device).type == "cuda":
            return {"host": {"parameters": self.network},
                    "cuda": {"parameters": self.local, "gradients and optimiser state": self.training,
                             "activations": self.activations, "data": self.data}}
        return {"host": {"parameters": self.network, "gradients and optimiser state": self.training,
                         "activations": self.activations, "data": self.data}}


def memory_estimate(input_shape: Sequence[int], n_classes: int, *, net: str, layers: int, width: int = 32,
                    channels: Sequence[int] = (16,), norm: str = "group", batch_size: int = 64,
                    dtype: torch.dtype = torch.float32, n_ranks: int = 1, n_samples: int = 0,
                    optimizer: str = "adam") -> MemoryEstimate:
    """The memory one rank needs to train the network :func:`build` would build, without
    building it: arithmetic on the sizes alone, so it is instant for any size.

    Parameters are counted exactly (the layers of :func:`dense_problem` and
    :func:`conv_problem`), each layer adds :data:`LAYER_OVERHEAD` bytes of Python objects.
    A rank's slice is bounded by the ``ceil(n_layers / n_ranks)`` largest layers plus the
    opening and the classifier, whatever the solver's partition.  Training adds, per
    parameter of the slice, a gradient and the optimiser's state (Adam: two moments; SGD:
    the momentum).  Activations: ``min(batch_size, n_samples)`` samples times
    :data:`STATES_PER_LAYER` states per layer of the slice (the largest states), plus the
    input and the logits.  Data: ``n_samples`` inputs in ``dtype``.

    The result is a rough upper bound for the serial solver: the states that parallel
    solvers keep on top (MGRIT's levels, the penalty methods' auxiliary states of the whole
    training set), the allocator's slack and torch's own workspace are not counted.

    Parameters
    ----------
    input_shape, n_classes, net, layers, width, channels, norm, dtype
        As for :func:`build` (``net`` is ``'dense'`` or ``'conv'``).
    batch_size : int
        Samples per mini-batch.
    n_ranks : int
        Ranks the layers are shared among.
    n_samples : int
        Training and test samples together (0: no data copy counted).
    optimizer : str
        ``'adam'`` (two state tensors per parameter) or ``'sgd'`` (one).
    """
    item = torch.empty((), dtype=dtype).element_size()
    norm_params = (lambda c: 0) if norm == "none" else (lambda c: 2 * c)
    shape = [int(s) for s in input_shape]
    d = math.prod(shape)
    if net == "conv":
        c_in, H, W = shape if len(shape) == 3 else (d, 1, 1)  # build refuses other shapes itself
        S = len(channels)
        per_stage = [layers // S + (s < layers % S) for s in range(S)]
        opening = 9 * c_in * channels[0] + channels[0] + norm_params(channels[0])
        classifier = channels[-1] * n_classes + n_classes
        kinds = []  # (count, parameters, state per sample) of each kind of layer
        opening_state = channels[0] * H * W
        for s, (c, n) in enumerate(zip(channels, per_stage)):
            if s:
                H, W = (H + 1) // 2, (W + 1) // 2  # the stride-2 transition
                kinds.append((1, 9 * channels[s - 1] * c + c + norm_params(c), c * H * W))
            kinds.append((n, 9 * c * c + c + norm_params(c), c * H * W))
    else:
        opening = d * width + width
        classifier = width * n_classes + n_classes
        kinds = [(layers, width * width + width, width)]
        opening_state = width
    n_layers = sum(count for count, _, _ in kinds)
    per_rank = -(-n_layers // max(1, n_ranks))
    total = opening + classifier + sum(count * p for count, p, _ in kinds)
    local = opening + classifier + _largest(per_rank, [(count, p) for count, p, _ in kinds])
    states = _largest(per_rank, [(count, u) for count, _, u in kinds])
    batch = min(batch_size, n_samples) if n_samples else batch_size
    per_sample = d + STATES_PER_LAYER * (opening_state + states) + n_classes
    moments = 2 if optimizer == "adam" else 1
    return MemoryEstimate(network=total * item + (n_layers + 2) * LAYER_OVERHEAD, local=local * item,
                          training=(1 + moments) * local * item, activations=batch * per_sample * item,
                          data=n_samples * d * item)


def _largest(k: int, kinds: list[tuple[int, int]]) -> int:
    """The sum of the ``k`` largest values among ``count`` copies of each ``value``."""
    out = 0
    for count, value in sorted(kinds, key=lambda cv: -cv[1]):
        take = min(k, count)
        out, k = out + take * value, k - take
    return out


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes free for a new allocation: on a CUDA device what the driver reports free, on
    the host ``MemAvailable`` of ``/proc/meminfo`` (free pages where it is missing), less
    where a cgroup limits this process to less."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            with open(f"/sys/fs/cgroup/{limit}") as f_limit, open(f"/sys/fs/cgroup/{usage}") as f_usage:
                available = min(available, max(0, int(f_limit.read()) - int(f_usage.read())))
        except (OSError, ValueError):  # no such cgroup, or no limit ("max")
            continue
    return available


def check_memory(input_shape: Sequence[int], n_classes: int, *, device: torch.device | str = "cpu",
                 sharing: int = 1, **sizes) -> MemoryEstimate:
    """Refuse, before anything is allocated, a network that cannot fit.

    Parameters
    ----------
    input_shape, n_classes, **sizes
        As for :func:`memory_estimate`.
    device : torch.device or str
        Where the rank computes.
    sharing : int
        Ranks that share this host (the ranks of the node); those on one GPU are
        ``ceil(sharing / device_count)``.

    Returns
    -------
    MemoryEstimate
        The estimate, when it fits.

    Raises
    ------
    ConfigError
        ``the network needs about 3.7 PB per rank (parameters 1.2 PB, …); this machine has
        23 GB available`` when the estimate exceeds the share of the host (or GPU) memory
        available to one rank.
    """
    estimate = memory_estimate(input_shape, n_classes, **sizes)
    for where, parts in estimate.parts(device).items():
        need = sum(parts.values())
        if where == "cuda":
            have, what = available_memory(device), f"{torch.device(device)} has"
            ranks = -(-max(1, sharing) // max(1, torch.cuda.device_count()))
        else:
            have, what, ranks = available_memory("cpu"), "this machine has", max(1, sharing)
        if need > have // ranks:
            detail = ", ".join(f"{name} {format_bytes(n)}" for name, n in parts.items())
            share = f", {format_bytes(have // ranks)} for each of its {ranks} ranks" if ranks > 1 else ""
            on = " on the GPU" if where == "cuda" else ""
            raise ConfigError(f"the network needs about {format_bytes(need)} per rank{on} ({detail}); "
                              f"{what} {format_bytes(have)} available{share}")
    return estimate


def format_bytes(n: float) -> str:
    """``3.7e15`` ↦ ``'3.7 PB'`` (decimal units, two or three significant digits)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
    i = 0
    while abs(n) >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    unit = units[i]
    return f"{n:.0f} {unit}" if abs(n) >= 10 or unit == "B" else f"{n:.2g} {unit}"

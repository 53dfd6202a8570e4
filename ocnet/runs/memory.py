"""How much memory a rank needs, estimated before anything is allocated, so that a
network that cannot fit (``--width 1000000000``) is refused in one line instead of failing
in the allocator or the kernel's out-of-memory killer."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch

from ..model import kinds as step_kinds
from ..model.grid import stage_layers
from ..model.options import ConfigError
from ..model.problem import build
from ..model.steps import Residual
from ..model.tokens import patch_size

# Python objects of one layer (module, parameters, their dictionaries): 11–14 KiB measured
# for the layers of ocnet.model.steps; counted so that very many small layers do not look free.
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
                    channels: Sequence[int] = (16,), norm: str = "group", heads: int = 4, patch: int = 0,
                    vocab: int = 0, batch_size: int = 64,
                    dtype: torch.dtype = torch.float32, n_ranks: int = 1, n_samples: int = 0,
                    optimizer: str = "adam") -> MemoryEstimate:
    """The memory one rank needs to train the network :func:`build` would build, without
    building it: arithmetic on the sizes alone, so it is instant for any size.

    Parameters are counted exactly (the layers of :func:`dense_problem`,
    :func:`conv_problem` and :func:`transformer_problem`), each layer adds
    :data:`LAYER_OVERHEAD` bytes of Python objects.
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
    input_shape, n_classes, net, layers, width, channels, norm, heads, patch, vocab, dtype
        As for :func:`build`.
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
    if net in ("conv", "conv1d"):
        # images (C, H, W) with 3×3 kernels, signals (C, L) as (C, L, 1) with kernels 3 wide
        k, dims = (9, 3) if net == "conv" else (3, 2)
        c_in, H, W = (*shape, 1)[:3] if len(shape) == dims else (d, 1, 1)  # build refuses other shapes itself
        per_stage = stage_layers(layers, len(channels))
        opening = k * c_in * channels[0] + channels[0] + norm_params(channels[0])
        classifier = channels[-1] * n_classes + n_classes
        kinds = []  # (count, parameters, numbers kept per sample) of each kind of layer
        opening_state = channels[0] * H * W
        for s, (c, n) in enumerate(zip(channels, per_stage)):
            if s:
                H, W = (H + 1) // 2, (W + 1) // 2  # the stride-2 transition
                kinds.append((1, k * channels[s - 1] * c + c + norm_params(c), STATES_PER_LAYER * c * H * W))
            kinds.append((n, k * c * c + c + norm_params(c), STATES_PER_LAYER * c * H * W))
    elif net == "transformer":
        if vocab or len(shape) != 3:  # token ids (build refuses other shapes without them itself)
            n_tokens, opening = d, vocab * width
        else:
            c_in, H, W = shape
            p = patch_size(shape, patch)  # refuses a patch that does not tile the images, as build does
            n_tokens, opening = (H // p) * (W // p), c_in * p * p * width + width
        n_tokens += 1  # the class token
        opening += width + n_tokens * width
        classifier = 2 * width + width * n_classes + n_classes
        # two layer norms, q/k/v and the output map (4 w² + 4 w), the MLP (8 w² + 5 w)
        kinds = [(layers, 12 * width * width + 13 * width,
                  # per token about 16 widths (the norms, q/k/v, the attention's output, the
                  # MLP's 4w-wide hidden layer and activation) and each head's attention row
                  n_tokens * (16 * width + heads * n_tokens))]
        opening_state = n_tokens * width
    elif net == "dense":
        opening = d * width + width
        classifier = width * n_classes + n_classes
        kinds = [(layers, width * width + width, STATES_PER_LAYER * width)]
        opening_state = width
    else:  # a registered step kind: its sizes from one step of each stage (and its transitions), built
        kind = step_kinds.get(net)
        S = kind.n_stages(step_kinds.Settings(tuple(shape), n_classes, channels=tuple(channels)))
        one = build(tuple(shape), n_classes, net=net, layers=S, width=width, channels=channels, norm=norm,
                    heads=heads)
        size = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        opening, classifier = size(one.opening), size(one.classifier)
        steps = iter(stage_layers(layers, S))
        kinds = []
        with torch.no_grad():
            u = one.opening(torch.zeros(1, *shape))
            opening_state = u.numel()
            for layer in one.layers:
                u = layer(u)
                count = next(steps) if isinstance(layer, Residual) else 1
                kinds.append((count, size(layer), STATES_PER_LAYER * u.numel()))
    n_layers = sum(count for count, _, _ in kinds)
    per_rank = -(-n_layers // max(1, n_ranks))
    total = opening + classifier + sum(count * p for count, p, _ in kinds)
    local = opening + classifier + _largest(per_rank, [(count, p) for count, p, _ in kinds])
    states = _largest(per_rank, [(count, u) for count, _, u in kinds])
    batch = min(batch_size, n_samples) if n_samples else batch_size
    per_sample = d + STATES_PER_LAYER * opening_state + states + n_classes
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

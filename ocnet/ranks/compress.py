"""Stateful compression of the gradient exchange between data groups.

A :class:`Compressor` sees, per parameter tensor and optimiser step, the weighted gradient
``g`` that this rank contributes to the sum over the data groups, and returns the part it
sends as a sparse message: int32 positions into the flattened tensor and their values.
What it does not send it keeps, per tensor, in a residue (error feedback), so that nothing
is lost, only delayed.  Tensors are keyed by the parameter's name in the whole problem, so
the same tensor is compressed the same way whatever the number of layer ranks.

:data:`COMPRESSORS` maps names (``--compress NAME``) to classes; :func:`register_compressor`
adds one (a plug-in may).  The built-ins:

``none``
    No compression: :class:`ocnet.ranks.replicas.GradientAverage` keeps its exact dense
    allreduce.
``topk``
    ``r ← r + g``; send the ``k = ceil(ratio · n)`` entries of largest ``|r|``; ``r ← r − sent``.
``adacomp``
    AdaComp (Chen et al., AAAI-18, arXiv:1712.02679), as far as its text could be read.
    The text available here was the abstract and third-party summaries: the scheme keeps
    a residue, divides each tensor into bins of a fixed length ``L``, selects within each
    bin the residues that are large relative to that bin (no global sort), with a
    "self-adjusting soft threshold", and has one hyper-parameter (the bin length).  The
    exact selection rule, the quantisation of the sent values and the paper's bin lengths
    could not be read.  Chosen here: with ``r ← r + g`` and ``m_b = max_{i∈b} |r_i|``, send
    ``r_i`` where ``|r_i + g_i| ≥ m_b`` and ``r_i ≠ 0`` (the latest gradient counted once more
    acts as the soft threshold: an element whose residue is growing reaches the bin's
    maximum sooner); values are sent unquantised, so sending plus keeping is exact.  The
    default bin lengths, 50 for convolution kernels (tensors of 3 or more dimensions) and
    500 for every other tensor, are this module's choice, not values read from the paper.
    With ``L = 1`` every non-zero residue is sent.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

Shape = tuple[int, ...]
#: A message: the int32 positions into the flattened tensor, and the values sent there.
Message = tuple[torch.Tensor, torch.Tensor]

#: Bytes of one position in a message (int32).
INDEX_BYTES = 4


def message_bytes(count: int, element_size: int) -> int:
    """The payload of ``count`` sent entries: their int32 positions and their values."""
    return count * (INDEX_BYTES + element_size)


class Compressor:
    """No compression, and the interface of every compressor.

    Parameters
    ----------
    ratio : float
        The share of entries that :class:`TopK` sends, in ``(0, 1]``.
    bin : int
        The bin length of :class:`AdaComp` (0: its default per kind of tensor).
    """

    name = "none"
    #: Whether this compressor leaves the exchange as the dense allreduce.
    dense = True

    def __init__(self, ratio: float = 0.01, bin: int = 0) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"compression ratio must lie in (0, 1], got {ratio}")
        if bin < 0:
            raise ValueError(f"bin length must be at least 0, got {bin}")
        self.ratio, self.bin = ratio, bin
        self.residue: dict[str, torch.Tensor] = {}

    def compress(self, name: str, g: torch.Tensor, shape: Shape = ()) -> Message:
        """What this rank sends of gradient ``g`` (flat) of tensor ``name`` (of ``shape``):
        ``(positions int32, values)``.  The base class sends everything."""
        return torch.arange(g.numel(), dtype=torch.int32), g.clone()

    def state_dict(self) -> dict[str, Any]:
        """The residues by tensor name (tensors and plain values only)."""
        return {"name": self.name, "residue": {k: v.clone() for k, v in self.residue.items()}}

    def load_state_dict(self, state: dict[str, Any], names: Any = None) -> None:
        """Take the residues of ``state`` (of the tensors in ``names``, when given)."""
        if state.get("name", self.name) != self.name:
            raise ValueError(f"the state of compressor {state.get('name')!r}, not of {self.name!r}")
        self.residue = {k: v.detach().clone() for k, v in state.get("residue", {}).items()
                        if names is None or k in names}


COMPRESSORS: dict[str, type[Compressor]] = {}


def register_compressor(name: str) -> Callable[[type[Compressor]], type[Compressor]]:
    """Make the decorated class the compressor ``--compress name``."""
    def add(cls: type[Compressor]) -> type[Compressor]:
        if not (isinstance(cls, type) and issubclass(cls, Compressor)):
            raise TypeError(f"compressor {name!r} must be a subclass of Compressor")
        cls.name = name
        COMPRESSORS[name] = cls
        return cls
    return add


register_compressor("none")(Compressor)


class ErrorFeedback(Compressor):
    """Error feedback: ``r ← r + g``; send ``r`` at :meth:`select`'s positions; zero them."""

    dense = False

    def select(self, r: torch.Tensor, g: torch.Tensor, shape: Shape) -> torch.Tensor:
        """The positions (int64, ascending) of the residue ``r`` to send."""
        raise NotImplementedError

    def compress(self, name: str, g: torch.Tensor, shape: Shape = ()) -> Message:
        g = g.detach().flatten()
        old = self.residue.get(name)
        r = g.clone() if old is None else old.to(g.device, g.dtype) + g
        index = self.select(r, g, shape)
        values = r[index]
        r[index] = 0  # r − sent, exactly: the sent entries are the residue's
        self.residue[name] = r
        return index.to(torch.int32), values


@register_compressor("topk")
class TopK(ErrorFeedback):
    """The ``ceil(ratio · n)`` entries of largest magnitude of the residue."""

    def select(self, r: torch.Tensor, g: torch.Tensor, shape: Shape) -> torch.Tensor:
        k = min(r.numel(), math.ceil(self.ratio * r.numel()))
        if k >= r.numel():
            return torch.arange(r.numel(), device=r.device)
        return torch.sort(torch.topk(r.abs(), k, sorted=False).indices).values


def kind(shape: Shape) -> str:
    """The kind of a parameter tensor of ``shape``, by which bytes are reported and AdaComp's
    default bin length is chosen: ``conv`` (a kernel: 3 or more dimensions), ``matrix`` (a
    dense or attention layer's weight) or ``vector`` (biases, normalisation scales)."""
    return "conv" if len(shape) >= 3 else "matrix" if len(shape) == 2 else "vector"


#: The default bin lengths of :class:`AdaComp` by :func:`kind` (this module's choice; see the
#: docstring).
DEFAULT_BINS = {"conv": 50, "matrix": 500, "vector": 500}


@register_compressor("adacomp")
class AdaComp(ErrorFeedback):
    """Per bin of ``L`` consecutive entries, the residues with ``|r + g| ≥ max_bin |r|``."""

    def bin_length(self, shape: Shape) -> int:
        if self.bin:
            return self.bin
        return DEFAULT_BINS[kind(shape)]

    def select(self, r: torch.Tensor, g: torch.Tensor, shape: Shape) -> torch.Tensor:
        n, L = r.numel(), self.bin_length(shape)
        bins = -(-n // L)
        pad = bins * L - n
        mag = torch.nn.functional.pad(r.abs(), (0, pad)).view(bins, L)
        top = mag.amax(dim=1, keepdim=True).expand(bins, L).reshape(-1)[:n]
        chosen = ((r + g).abs() >= top) & (r != 0)
        return torch.nonzero(chosen).flatten()


def check_bin(bin: int, sizes: list[int]) -> None:
    """Raise ``ValueError`` unless an AdaComp bin of ``bin`` entries fits in the largest of the
    tensors of ``sizes`` entries: a longer bin would make every tensor one bin."""
    if bin > max(sizes, default=0):
        raise ValueError(f"--compress-bin {bin} is longer than the network's largest tensor "
                         f"({max(sizes, default=0)} entries): every tensor would be one bin")


def carried(states: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """The residues of the checkpoint shards ``states`` (each a :meth:`Compressor.state_dict`)
    summed by tensor name: a tensor's residues in the groups that kept them add up to what
    the groups have not yet sent of it."""
    total: dict[str, torch.Tensor] = {}
    for state in states:
        for k, r in state.get("residue", {}).items():
            total[k] = r.detach().clone() if k not in total else total[k] + r.to(total[k])
    return total


def make(name: str, ratio: float = 0.01, bin: int = 0) -> Compressor | None:
    """The compressor ``name``, or ``None`` for ``none`` (the dense exchange)."""
    if name not in COMPRESSORS:
        raise ValueError(f"unknown compressor {name!r}; choose from {', '.join(COMPRESSORS)}")
    c = COMPRESSORS[name](ratio=ratio, bin=bin)
    return None if c.dense else c

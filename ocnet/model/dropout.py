"""Dropout whose masks depend on the sample, not on who computes it.

A mask element is a hash of ``(seed, epoch, sample, layer, element)``: the same sample meets
the same mask in a layer whatever the rank count, the micro-batching or the solver, and a
layer evaluated again on the same samples (MGRIT's relaxations, a recomputed forward) meets
it again.  Training dropout with it keeps rank invariance.

The training loop says which samples a step holds (:func:`samples`); code that cuts a batch
into pieces narrows that to each piece (:func:`narrow`).  Outside :func:`samples`
(evaluation, prediction, an exported module) dropout is the identity.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import ContextManager, Iterator

import torch

_MASK32 = 0xFFFFFFFF
_local = threading.local()


def _hash(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash, elementwise on int64 tensors holding values below 2³²
    (multipliers below 2³¹, so that no product leaves int64)."""
    x = x & _MASK32
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK32
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


class _Draw:
    def __init__(self, seed: int, epoch: int, index: torch.Tensor) -> None:
        self.seed, self.epoch, self.index = seed, epoch, index


@contextmanager
def _drawing(draw: _Draw | None) -> Iterator[None]:
    previous = getattr(_local, "draw", None)
    _local.draw = draw
    try:
        yield
    finally:
        _local.draw = previous


def samples(seed: int, epoch: int, index: torch.Tensor) -> ContextManager[None]:
    """Within it, dropout draws the masks of the samples ``index`` ``(batch,)`` (int64, in
    the batch's row order) of ``epoch``."""
    return _drawing(_Draw(seed, epoch, index))


def suspended() -> ContextManager[None]:
    """Within it dropout is the identity (a pass that is not training: shapes, probes)."""
    return _drawing(None)


def current() -> tuple[int, int, torch.Tensor] | None:
    """The ``(seed, epoch, samples)`` in force (narrowed as it is), or ``None`` outside
    :func:`samples`: a pass run again in a later step (a forward recomputed for a delayed
    backward) re-enters them with :func:`samples` and meets the masks its first run met."""
    draw = getattr(_local, "draw", None)
    return None if draw is None else (draw.seed, draw.epoch, draw.index)


def narrow(rows: slice | torch.Tensor) -> ContextManager[None]:
    """Within it, the samples are the current ones' ``rows`` (a micro-batch, a chunk of the
    training set); nothing changes outside :func:`samples`."""
    draw = getattr(_local, "draw", None)
    return _drawing(None if draw is None else _Draw(draw.seed, draw.epoch, draw.index[rows]))


def mask(shape: torch.Size, layer: int, p: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """The inverted-dropout mask (0 or ``1/(1-p)``) of layer ``layer`` for states of ``shape``
    ``(batch, …)``, or ``None`` outside :func:`samples`."""
    draw = getattr(_local, "draw", None)
    if draw is None or p <= 0:
        return None
    if len(draw.index) != shape[0]:
        raise RuntimeError(f"dropout: {shape[0]} states but {len(draw.index)} samples; a piece of a batch "
                           "must narrow the samples (ocnet.model.dropout.narrow)")
    key = torch.tensor(draw.seed, dtype=torch.int64, device=device)
    for part in (draw.epoch, layer):
        key = _hash(_hash(key) ^ part)
    per_sample = _hash(key ^ _hash(draw.index.to(device, torch.int64)))  # (batch,)
    element = torch.arange(int(torch.Size(shape[1:]).numel()), device=device, dtype=torch.int64)
    u = _hash(per_sample[:, None] ^ _hash(element + 0x9E3779B9)[None, :])  # (batch, elements)
    keep = (u >> 8).to(torch.float64) / 2**24 >= p
    return (keep.to(dtype) / (1 - p)).reshape(shape)

"""Batch norm's running statistics under solvers that evaluate a layer more than once a step.

In training a batch-norm layer normalises with the statistics of the states it is given —
a micro-batch in a pipeline, the batch elsewhere — and moves its running statistics (what
evaluation uses) one momentum step towards them.  MGRIT evaluates every layer many times in
a step (relaxations, coarse levels, recomputed passes), so by themselves the running
statistics would move as often.  Within :func:`one_update` each layer's running statistics
take exactly one step per optimiser step: from its *last* evaluation in that step (MGRIT's
final fine pass, the pipeline's last micro-batch, the only one of the serial solver and the
penalty methods).  Within :func:`frozen` they do not move at all (the penalty methods'
initial sweep over the training set).  Outside both, batch norm behaves as torch's.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


#: The batch-norm layers of each network seen, found once: a network's modules do not change
#: after it is built, and walking thousands of layers every step would cost milliseconds.
_FOUND: weakref.WeakKeyDictionary[nn.Module, list[nn.modules.batchnorm._BatchNorm]] = weakref.WeakKeyDictionary()


def norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``module`` that keep running statistics."""
    if module not in _FOUND:
        _FOUND[module] = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                          and m.track_running_stats]
    return _FOUND[module]


def _snapshot(layers: list[nn.modules.batchnorm._BatchNorm]) -> list[dict[str, torch.Tensor]]:
    return [{k: getattr(m, k).clone() for k in _BUFFERS} for m in layers]


def _restore(m: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    # New tensors rather than copies into the old ones: an earlier evaluation's autograd graph
    # (MGRIT keeps them) holds the old buffers and must find them unchanged.
    for k, v in saved.items():
        setattr(m, k, v.clone())


@contextmanager
def one_update(module: nn.Module) -> Iterator[None]:
    """Within it, each batch-norm layer of ``module`` evaluated in training mode starts from
    its running statistics at entry, so that only its last evaluation's update remains."""
    layers = norms(module)
    saved = _snapshot(layers)
    handles = [m.register_forward_pre_hook(lambda m, args, s=s: _restore(m, s) if m.training else None)
               for m, s in zip(layers, saved)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Within it, the running statistics of ``module``'s batch-norm layers do not change."""
    layers = norms(module)
    saved = _snapshot(layers)
    try:
        yield
    finally:
        for m, s in zip(layers, saved):
            _restore(m, s)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Within it, ``module`` is in evaluation mode (batch norm uses its running statistics)."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)

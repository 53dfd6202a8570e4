"""Auxiliary classifiers: small heads that read a class out of an intermediate state.

Local parallelism (:mod:`ocnet.solvers.local`) trains each block of layers on the loss of such
a head on its last state instead of on the gradient of the network's loss.  Which head a state
gets:

* a step kind's own ``classifier(settings, state_shape)`` (:mod:`ocnet.model.kinds`), for the
  stage the state is in: a plug-in gives its own heads that way;
* where the state has the shape of the network's last state, a freshly initialised copy of
  the network's classifier (dense, transformer and one-stage convolutional networks);
* else, by the state's shape: a linear map of a vector ``(width,)``; global average pooling and
  a linear map of channels-first states ``(C, L)`` or ``(C, H, W)`` (an earlier stage of a
  convolutional network).

A head is initialised from the run's seed and the layer it reads after, never from the rank
that holds it, so the heads are the same on any number of ranks.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch
from torch import nn

#: ``(stage, state_shape) ↦`` head: a step kind's own classifier factory
Factory = Callable[[int, Sequence[int]], nn.Module]


def head(shape: Sequence[int], n_classes: int, *, stage: int, classifier: nn.Module,
         final_shape: Sequence[int], factory: Factory | None = None, seed: int = 0) -> nn.Module:
    """A head ``(batch, *shape) → (batch, n_classes)`` for states of one sample's ``shape`` in
    ``stage``, initialised from ``seed``, in the dtype and on the device of ``classifier``.

    Raises
    ------
    ValueError
        When no head fits such states, or the one made gives logits of another shape.
    """
    shape = tuple(shape)
    like = next(classifier.parameters(), None)
    dtype, device = (like.dtype, like.device) if like is not None else (torch.get_default_dtype(), "cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if factory is not None:
            module = factory(stage, shape)
        elif shape == tuple(final_shape):
            module = copy.deepcopy(classifier)
            for m in module.modules():
                reset = getattr(m, "reset_parameters", None)
                if callable(reset):
                    reset()
        elif len(shape) == 1:
            module = nn.Linear(shape[0], n_classes)
        elif len(shape) in (2, 3):
            pool = nn.AdaptiveAvgPool1d(1) if len(shape) == 2 else nn.AdaptiveAvgPool2d(1)
            module = nn.Sequential(pool, nn.Flatten(), nn.Linear(shape[0], n_classes))
        else:
            raise ValueError(f"no auxiliary head fits states of shape {shape}; give the step kind a classifier")
    module = module.to(dtype=dtype, device=device)
    try:
        with torch.no_grad():
            logits = module(torch.zeros((2, *shape), dtype=dtype, device=device))
        fits, got = tuple(logits.shape) == (2, n_classes), str(tuple(logits.shape[1:]))
    except Exception as e:  # a plug-in's head that cannot take these states
        fits, got = False, f"an error ({type(e).__name__}: {e})"
    if not fits:
        raise ValueError(f"the auxiliary head for states {shape} gives {got} instead of ({n_classes},) "
                         "logits per sample: it does not fit the state's shape")
    return module


def parameters(module: nn.Module) -> int:
    """The number of trainable values of a head."""
    return sum(math.prod(p.shape) for p in module.parameters() if p.requires_grad)

"""Residual step functions ``F(u; θ)`` and the layers built from them.

A :class:`Step` is any ``nn.Module`` mapping a state to a state of the same shape; the
layer ``Residual(F, h)`` is one forward-Euler step ``u + h F(u; θ)``.  Solvers that change
the step size (MGRIT's coarse levels) call ``layer(u, h=...)``.  :class:`Transition` joins
two stages of different shapes (a strided convolution); it is not a time step.

The steps: :class:`DenseStep` (vectors), :class:`ConvStep` (images, or signals with
``dims=1``) and :class:`AttentionStep` (tokens: a pre-layer-norm transformer encoder layer).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as Fn

from . import dropout

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def normalisation(kind: str, channels: int, dims: int = 2) -> nn.Module:
    """The normalisation of a convolutional step over ``dims`` spatial dimensions (2: images,
    1: signals): ``group``, ``instance`` and ``none`` do not couple samples, so that a
    micro-batch or a single sample gives the same result as the whole batch; ``batch``
    normalises with the statistics of the states it is given (a micro-batch in a pipeline) and
    keeps running statistics for evaluation (:mod:`ocnet.model.batchnorm`)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalisation {kind!r}; choose from group, instance, batch, none")


class DenseStep(nn.Module):
    """``F(u) = σ(W u + b)`` for states of shape ``(batch, width)``."""

    def __init__(self, width: int, act: str = "tanh") -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.act = activation(act)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(u))


def convolution(dims: int) -> type[nn.Conv1d] | type[nn.Conv2d]:
    """The convolution over ``dims`` spatial dimensions: 1 (signals), 2 (images)."""
    if dims not in (1, 2):
        raise ValueError(f"convolutions over {dims} dimensions: 1 (signals) or 2 (images)")
    return nn.Conv1d if dims == 1 else nn.Conv2d


class ConvStep(nn.Module):
    """``F(u) = σ(N(K * u + b))`` for states of shape ``(batch, channels, height, width)``, or
    ``(batch, channels, length)`` with ``dims=1``."""

    def __init__(self, channels: int, act: str = "relu", norm: str = "group", kernel: int = 3, dims: int = 2) -> None:
        super().__init__()
        self.conv = convolution(dims)(channels, channels, kernel, padding=kernel // 2)
        self.norm = normalisation(norm, channels, dims)
        self.act = activation(act)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(u)))


class SelfAttention(nn.Module):
    """Multi-head self-attention ``(batch, tokens, width) → (batch, tokens, width)``: every
    token attends to every token (no mask), ``heads`` heads of ``width / heads`` each."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"a token width of {width} does not split into {heads} attention heads")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b, n, w = u.shape
        # (3, batch, heads, tokens, width / heads)
        q, k, v = self.qkv(u).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = Fn.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(b, n, w))


class AttentionStep(nn.Module):
    """``F(X) = φ₁(X) + φ₂(X + φ₁(X))`` for token states ``X`` of shape ``(batch, tokens, width)``:
    ``φ₁`` is self-attention after a layer norm, ``φ₂`` a two-layer MLP (``mlp`` × wider)
    after a layer norm.

    ``X + h F(X)`` with ``h = 1`` is the standard pre-layer-norm encoder layer
    (``Y = X + φ₁(X)``, ``Z = Y + φ₂(Y)``); with ``h = T/N`` it is a forward-Euler step of a
    neural ODE.  Layer norm acts on each token alone, so samples never mix.
    """

    def __init__(self, width: int, heads: int = 4, act: str = "gelu", mlp: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp * width), activation(act), nn.Linear(mlp * width, width))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        a = self.attention(self.norm1(u))
        return a + self.mlp(self.norm2(u + a))


class Residual(nn.Module):
    """One forward-Euler step ``Φ(u) = u + h F(u; θ)`` of the state equation.

    With ``dropout = p`` the update is ``u + h D ⊙ F(u; θ)`` in training, with ``D`` the mask
    of :mod:`ocnet.model.dropout` for this layer (its ``index`` in the network) and the batch's
    samples; elsewhere ``D = 1``.
    """

    def __init__(self, F: nn.Module, h: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.F = F
        self.h = h
        self.dropout = dropout
        self.index = 0  # the layer's place in the network (Problem sets it): the masks' key

    def forward(self, u: torch.Tensor, h: float | None = None) -> torch.Tensor:
        return u + (self.h if h is None else h) * self.rhs(u)

    def rhs(self, u: torch.Tensor) -> torch.Tensor:
        """The step's increment without ``h``: ``F(u; θ)``, masked by dropout in training."""
        f = self.F(u)
        if self.dropout:
            d = dropout.mask(f.shape, self.index, self.dropout, f.device, f.dtype)
            f = f if d is None else f * d
        return f

    def extra_repr(self) -> str:
        return f"h={self.h:g}" + (f", dropout={self.dropout:g}" if self.dropout else "")


class Transition(nn.Module):
    """Strided convolution between stages: ``(b, c_in, H, W) → (b, c_out, H/s, W/s)``, or
    ``(b, c_in, L) → (b, c_out, L/s)`` with ``dims=1``."""

    def __init__(self, c_in: int, c_out: int, act: str = "relu", norm: str = "group",
                 stride: int = 2, dims: int = 2) -> None:
        super().__init__()
        self.conv = convolution(dims)(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = normalisation(norm, c_out, dims)
        self.act = activation(act)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(u)))

"""Communication filters: what crosses a rank boundary passes ``encode`` before the send and
``decode`` after the receive.  Both are differentiable, so gradients flow through them.

:data:`FILTERS` maps configuration names (``--filter NAME``) to filters: ``identity`` and
``downsample2`` / ``downsample4`` (s×s average pooling, s² fewer bytes per image state).
"""
from __future__ import annotations

import torch
from torch.nn import functional as Fn


class Filter:
    """The identity filter, and the interface of every filter."""

    name = "identity"
    #: Whether it acts on image states ``(batch, channels, height, width)`` only, and leaves
    #: every other state as it is.
    spatial = False

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """What is sent for state ``u``."""
        return u

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """The state reconstructed from what was received."""
        return v

    def project(self, u: torch.Tensor) -> torch.Tensor:
        """``decode(encode(u))``: what the receiver sees of ``u``."""
        return self.decode(self.encode(u))


IDENTITY = Filter()


class Downsample(Filter):
    """Average over ``s × s`` spatial windows; decode by interpolation back to full size.

    States of shape ``(batch, channels, height, width)`` are sent as
    ``(batch, channels, height / s, width / s)``: ``s²`` fewer bytes.  Other states (dense
    ``(batch, width)``) pass unchanged.

    Parameters
    ----------
    s : int
        The window size; ``height`` and ``width`` must be multiples of it.
    mode : str
        ``"nearest"`` (default) or ``"bilinear"`` interpolation.  With ``"nearest"``,
        ``encode(decode(v)) = v`` and ``decode ∘ encode`` is the orthogonal projection onto
        fields constant on each window, which makes the penalty solvers' local gradients
        exact for the filtered objective (the projection is symmetric; docs/layer_parallel.rst).
    """

    spatial = True

    def __init__(self, s: int, mode: str = "nearest") -> None:
        if s < 1:
            raise ValueError(f"window size must be at least 1, got {s}")
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"unknown interpolation {mode!r}; choose nearest or bilinear")
        self.s, self.mode = s, mode
        self.name = f"downsample{s}" + ("" if mode == "nearest" else f"-{mode}")

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 4 or self.s == 1:
            return u
        h, w = u.shape[-2:]
        if h % self.s or w % self.s:
            raise ValueError(f"filter {self.name}: state of {h}×{w} pixels is not a multiple of "
                             f"{self.s}×{self.s}; use a smaller window or the identity filter")
        return Fn.avg_pool2d(u, self.s)

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() != 4 or self.s == 1:
            return v
        if self.mode == "nearest":
            return Fn.interpolate(v, scale_factor=self.s, mode="nearest")
        return Fn.interpolate(v, scale_factor=self.s, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        return f"Downsample(s={self.s}, mode={self.mode!r})"


FILTERS: dict[str, Filter] = {
    "identity": IDENTITY,
    "downsample2": Downsample(2),
    "downsample4": Downsample(4),
}

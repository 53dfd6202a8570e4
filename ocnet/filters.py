"""Communication filters: what crosses a rank boundary passes ``encode`` before the send and
``decode`` after the receive.  Both are differentiable, so gradients flow through them."""
from __future__ import annotations

import torch


class Filter:
    """The identity filter, and the interface of every filter."""

    name = "identity"

    def encode(self, u: torch.Tensor) -> torch.Tensor:
        """What is sent for state ``u``."""
        return u

    def decode(self, v: torch.Tensor) -> torch.Tensor:
        """The state reconstructed from what was received."""
        return v


IDENTITY = Filter()


FILTERS: dict[str, Filter] = {"identity": IDENTITY}

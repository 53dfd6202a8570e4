"""The opening and the classifier of a transformer: inputs to tokens, tokens to logits.

The state of a transformer is ``(batch, 1 + L, width)``: a learned class token, then ``L``
tokens embedded from the input, each with a learned position embedding added.  The
classifier reads the class token alone.  Images become tokens as in a vision transformer
(ViT): non-overlapping ``p × p`` patches, each mapped linearly to ``width``.  Token
sequences (ids in ``0 … vocab-1``, carried as floating-point numbers like every other
input) look up a learned embedding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Patches(nn.Module):
    """Images ``(batch, C, H, W)`` → patch tokens ``(batch, (H/p)(W/p), width)``, row by row."""

    def __init__(self, channels: int, width: int, patch: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(channels, width, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).flatten(2).transpose(1, 2)


class Vocabulary(nn.Module):
    """Token ids ``(batch, L)`` (integers held in a floating-point tensor) → ``(batch, L, width)``."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x.long())


class Tokens(nn.Module):
    """The opening ``x ↦ u_0``: ``embed(x)`` ``(batch, L, width)``, a class token in front, a
    position embedding added; ``(batch, 1 + L, width)``."""

    def __init__(self, embed: nn.Module, n_tokens: int, width: int) -> None:
        super().__init__()
        self.embed = embed
        # Small random values, as ViT initialises them: zeros would leave every position alike.
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.position = nn.Parameter(0.02 * torch.randn(1, 1 + n_tokens, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x)
        return torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1) + self.position


class ClassToken(nn.Module):
    """The classifier ``u_N ↦ logits``: layer norm of the class token, then a linear map;
    ``(batch, 1 + L, width) → (batch, n_classes)``."""

    def __init__(self, width: int, n_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear = nn.Linear(width, n_classes)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(u[:, 0]))


def patch_size(input_shape: Sequence[int], patch: int = 0) -> int:
    """The patch size for images ``(C, H, W)``: ``patch``, or (``0``) the largest that divides
    ``H`` and ``W`` and still leaves at least 16 patches (8×8 → 2, 28×28 → 7, 32×32 → 8)."""
    _, H, W = input_shape
    if patch:
        if H % patch or W % patch:
            raise ValueError(f"a patch of {patch}×{patch} does not tile {H}×{W} images")
        return patch
    fits = [p for p in range(1, min(H, W) + 1) if H % p == 0 and W % p == 0 and (H // p) * (W // p) >= 16]
    return max(fits, default=1)

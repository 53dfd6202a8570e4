"""Mini-batches of an epoch and image augmentation, drawn from generators keyed by the seed and
the epoch, so that every rank draws the same without sharing a random stream."""
from __future__ import annotations

import hashlib

import torch


def _generator(seed: int, epoch: int) -> torch.Generator:
    # A cryptographic hash, not Python's hash(), so every process derives the same 63-bit
    # seed, and neighbouring (seed, epoch) pairs give unrelated streams.
    digest = hashlib.sha256(f"ocnet.batches:{int(seed)}:{int(epoch)}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return g


def batches(n: int, batch_size: int, seed: int, epoch: int,
            shuffle: bool = True) -> list[torch.Tensor]:
    """Mini-batch indices for one epoch.

    Parameters
    ----------
    n, batch_size : int
        Number of samples, samples per batch.
    seed, epoch : int
        Fix the permutation: every rank computing it independently gets the same batches.
    shuffle : bool
        False gives ``0 … n-1`` in order.

    Returns
    -------
    list of torch.Tensor
        int64 (CPU) index tensors of length ``batch_size`` (the last may be shorter) that
        together cover ``range(n)`` exactly once.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = (torch.randperm(n, generator=_generator(seed, epoch), dtype=torch.int64)
             if shuffle else torch.arange(n, dtype=torch.int64))
    return list(torch.split(order, batch_size)) if n else []  # split() of empty gives [empty]


def augment(x: torch.Tensor, generator: torch.Generator, crop_padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    """Random crop (after zero padding) and random horizontal flip, per sample.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(n, C, H, W)`` on any device.
    generator : torch.Generator
        CPU generator; draws, in order, the crop offsets ``(2, n)`` then the flips ``(n,)``.
    crop_padding : int
        ``p``: each image is padded by ``p`` zeros on every side and a window ``H × W`` is
        taken at an offset uniform in ``0 … 2p`` in each direction (shift of ``-p … p``).
    flip : bool
        Mirror each image left-right with probability 1/2.

    Returns
    -------
    torch.Tensor
        ``(n, C, H, W)``, same dtype and device; ``x`` itself when nothing is enabled.
    """
    if x.dim() != 4:
        raise ValueError(f"augment expects images (n, C, H, W), got shape {tuple(x.shape)}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be non-negative, got {crop_padding}")
    n, _, H, W = x.shape
    out = x
    if crop_padding > 0:
        p = crop_padding
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(x.device)
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        # One gather: sample i takes rows dy_i … dy_i+H-1 and columns dx_i … dx_i+W-1.
        rows = (offsets[0, :, None] + torch.arange(H, device=x.device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(W, device=x.device))[:, None, None, :]
        idx_n = torch.arange(n, device=x.device)[:, None, None, None]
        idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        out = padded[idx_n, idx_c, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out

"""The table of problems, and :func:`load`: a data set by name, normalised, with its
validation samples held out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .batching import _generator
from .dataset import DataError, Dataset, Raw
from .files import _load_cifar10, _load_cifar100, _load_mnist
from .generated import _load_digits, _load_peaks, _load_sequences, vocabulary

DATASETS = ("peaks", "sequences", "digits", "mnist", "cifar10", "cifar100")

_LOADERS: dict[str, Callable[[Path | None, int], Raw]] = {
    "peaks": _load_peaks,
    "sequences": _load_sequences,
    "digits": _load_digits,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
}


# ---------------------------------------------------------------------- public API

def _normalise(x_train: torch.Tensor, *others: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-channel (dimension 1) standardisation of ``x_train`` and ``others`` with the
    training statistics."""
    dims = [d for d in range(x_train.dim()) if d != 1]
    std, mean = torch.std_mean(x_train, dim=dims, keepdim=True, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays finite
    return tuple((x - mean) / std for x in (x_train, *others))


def _hold_out(n: int, fraction: float, seed: int) -> torch.Tensor:
    """Which of ``n`` training samples are held out for validation (a boolean mask): a
    ``fraction`` of them, chosen by ``seed``."""
    n_val = round(fraction * n)
    if fraction > 0 and not 0 < n_val < n:
        raise DataError(f"--val-split {fraction:g} of {n} training samples leaves "
                        f"{'no validation' if n_val == 0 else 'no training'} sample")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=_generator(seed, -1))[:n_val]] = True
    return mask


def load(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, val_split: float = 0.0) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    data_dir : path, optional
        Directory holding the files of ``mnist``, ``cifar10`` and ``cifar100``.
    seed : int
        Generates ``peaks`` and chooses the ``digits`` split; the file data sets have
        fixed official splits.  Also chooses the validation samples.
    val_split : float
        The fraction of the training set held out for validation (before the inputs are
        normalised with the statistics of what is left).

    Raises
    ------
    DataError
        Unknown name, missing ``data_dir``, a missing or malformed file (wrong magic or
        size, labels out of range, no samples, a directory where a file belongs), always
        naming the file.
    """
    key = str(name).strip().lower()
    if key not in _LOADERS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    root = None if data_dir is None else Path(data_dir).expanduser()
    x_tr, y_tr, x_te, y_te, n_classes = _LOADERS[key](root, seed)
    if len(y_tr) == 0 or len(y_te) == 0:  # the file loaders name the file; this is the last guard
        raise DataError(f"data set {key!r}: the {'training' if len(y_tr) == 0 else 'test'} set is empty")
    x_all, y_all = torch.as_tensor(np.asarray(x_tr, np.float32)), torch.as_tensor(np.asarray(y_tr, np.int64))
    val = _hold_out(len(y_all), val_split, seed)
    x_train, x_test, x_val = x_all[~val], torch.as_tensor(np.asarray(x_te, np.float32)), x_all[val]
    if not vocabulary(key):
        x_train, x_test, x_val = _normalise(x_train, x_test, x_val)
    return Dataset(name=key, x_train=x_train.contiguous(), y_train=y_all[~val],
                   x_test=x_test.contiguous(), y_test=torch.as_tensor(np.asarray(y_te, np.int64)),
                   n_classes=n_classes, is_image=x_train.dim() == 4, x_val=x_val.contiguous(), y_val=y_all[val])

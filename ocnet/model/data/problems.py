"""The table of problems, the data sets users register (:func:`register`), and :func:`load`:
a data set by name, normalised, with its validation samples held out."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from .. import plugins
from . import arrays, mnist1d
from .batching import _generator
from .dataset import DataError, Dataset, Raw
from .files import _load_cifar10, _load_cifar100, _load_mnist
from .generated import _load_digits, _load_peaks, _load_sequences, vocabulary

DATASETS = ("peaks", "sequences", "digits", "mnist1d", "mnist", "cifar10", "cifar100", "arrays")

_LOADERS: dict[str, Callable[[Path | None, int], Raw]] = {
    "peaks": _load_peaks,
    "sequences": _load_sequences,
    "digits": _load_digits,
    "mnist1d": mnist1d.load,
    "mnist": _load_mnist,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
}

#: A registered data set: ``loader(data_dir, seed)`` returns the arrays of
#: :mod:`~ocnet.model.data.arrays` (``x_train``, ``y_train``, ``x_test``, ``y_test``, optionally
#: ``x_val``, ``y_val``), which are checked as a file's would be.
Loader = Callable[[Path | None, int], Mapping[str, np.ndarray]]
ENTRY_POINTS = "ocnet.datasets"
REGISTERED: dict[str, Loader] = {}


def register(name: str, loader: Loader | None = None) -> Callable[[Loader], Loader] | Loader:
    """Make ``loader`` the data set ``--problem name`` (usable as a decorator,
    ``@register("name")``); a plug-in (``--plugin``) or an entry point of the group
    ``ocnet.datasets`` calls it."""
    if not name or name != name.strip().lower():
        raise ValueError(f"a data set's name is lower case without spaces, not {name!r}")
    if name in DATASETS:
        raise ValueError(f"{name!r} is a built-in data set; register yours under another name")

    def add(f: Loader) -> Loader:
        REGISTERED[name] = f
        return f
    return add if loader is None else add(loader)


def available() -> tuple[str, ...]:
    """The names ``--problem`` accepts: the built-in ones, then the registered ones (after
    loading the entry points of ``ocnet.datasets``, once)."""
    for entry in plugins.entry_points(ENTRY_POINTS):
        if entry.name not in REGISTERED:
            register(entry.name, entry.load())
    return DATASETS + tuple(REGISTERED)


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


def load(name: str, data_dir: str | os.PathLike | None = None, seed: int = 0, val_split: float = 0.0,
         data: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`, or a registered data set (:func:`register`).
    data_dir : path, optional
        Directory holding the files of ``mnist``, ``cifar10`` and ``cifar100``.
    seed : int
        Generates ``peaks`` and chooses the ``digits`` split; the file data sets have
        fixed official splits.  Also chooses the validation samples.
    val_split : float
        The fraction of the training set held out for validation (before the inputs are
        normalised with the statistics of what is left).
    data : path, optional
        The ``.npz`` file or folder of ``.npy`` files of ``arrays``
        (:mod:`ocnet.model.data.arrays`), which may hold its own validation samples.

    Raises
    ------
    DataError
        Unknown name, missing ``data_dir``, a missing or malformed file (wrong magic or
        size, labels out of range, no samples, a directory where a file belongs), always
        naming the file.
    """
    key = str(name).strip().lower()
    given: tuple[np.ndarray, np.ndarray] | None = None  # validation samples of the data set's own
    root = None if data_dir is None else Path(data_dir).expanduser()
    if key in _LOADERS:
        x_tr, y_tr, x_te, y_te, n_classes = _LOADERS[key](root, seed)
    elif key == "arrays" or key in available():
        if key == "arrays":
            if data is None:
                raise DataError("--problem arrays reads --data PATH: a .npz file or a folder of .npy files")
            source = str(data)
            a, n_classes = arrays.read(Path(data).expanduser())
        else:
            source = f"data set {key!r}"
            a = {k: np.asarray(v) for k, v in REGISTERED[key](root, seed).items()}
            n_classes = arrays.check(a, source)
        x_tr, y_tr, x_te, y_te = a["x_train"], a["y_train"], a["x_test"], a["y_test"]
        if "x_val" in a:
            if val_split > 0:
                raise DataError(f"{source}: holds its own validation samples (x_val, y_val); leave --val-split out")
            given = a["x_val"], a["y_val"]
    else:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(available())}")
    if len(y_tr) == 0 or len(y_te) == 0:  # the file loaders name the file; this is the last guard
        raise DataError(f"data set {key!r}: the {'training' if len(y_tr) == 0 else 'test'} set is empty")
    x_all, y_all = _tensors(x_tr, y_tr)
    if given is None:
        val = _hold_out(len(y_all), val_split, seed)
        (x_train, y_train), (x_val, y_val) = (x_all[~val], y_all[~val]), (x_all[val], y_all[val])
    else:
        (x_train, y_train), (x_val, y_val) = (x_all, y_all), _tensors(*given)
    x_test, y_test = _tensors(x_te, y_te)
    if not vocabulary(key):
        x_train, x_test, x_val = _normalise(x_train, x_test, x_val)
    return Dataset(name=key, x_train=x_train.contiguous(), y_train=y_train, x_test=x_test.contiguous(),
                   y_test=y_test, n_classes=n_classes, is_image=x_train.dim() == 4, x_val=x_val.contiguous(),
                   y_val=y_val)


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples as float32 and labels as int64 tensors."""
    return torch.as_tensor(np.asarray(x, np.float32)), torch.as_tensor(np.asarray(y, np.int64))

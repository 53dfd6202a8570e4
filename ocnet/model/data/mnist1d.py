"""MNIST-1D (Greydanus & Kobak, 2020): ten digit templates of 12 points, padded, scaled,
translated, sheared and noised into 40-point signals; 4,000 training and 1,000 test samples.

The samples are *generated* by the ``mnist1d`` package's ``make_dataset`` with its default
arguments (seed 42, the authors' split), never downloaded: ``get_dataset`` would fetch a
pickle from the web, so it is not called.  The arguments are fixed rather than taken from
``--seed`` so that every run trains and tests on the same data as the authors' table
(logistic regression 32 %, MLP 68 %, CNN 94 %, GRU 91 % test accuracy); the seed still
chooses the parameters, the batches and any validation samples.

Generating takes about 3 s (half of it importing ``mnist1d``, which imports matplotlib and
scipy), on every rank; so the arrays are kept in ``--data-dir`` when given, else in
``$XDG_CACHE_HOME/ocnet`` (``~/.cache/ocnet``), under a name that holds the package's version
(whose default arguments make the data), and later runs read them from there.  A cache that
cannot be written is skipped.
"""
from __future__ import annotations

import importlib.metadata
import os
import random
import secrets
import zipfile
from pathlib import Path

import numpy as np

from .dataset import DataError, Raw

#: Samples as ``(n, 1, 40)``: one channel of 40 points, the shape ``conv1d`` networks take.
SIGNAL_LENGTH = 40


def _version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        raise DataError("data set 'mnist1d' needs the mnist1d package, which generates it: "
                        "pip install mnist1d") from None


def _cache_dir(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ocnet"


def generate() -> dict[str, np.ndarray]:
    """The data set as ``make_dataset`` makes it with its default arguments: ``x`` ``(4000, 40)``,
    ``y`` ``(4000,)``, ``x_test`` ``(1000, 40)``, ``y_test`` ``(1000,)``.  ``make_dataset``
    seeds Python's and numpy's global generators; their states are restored afterwards, so a
    caller's random numbers do not change by loading it."""
    import mnist1d.data  # about 1.5 s: matplotlib, scipy and requests (which is never used here)

    saved = random.getstate(), np.random.get_state()
    try:
        made = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return {k: np.asarray(made[k]) for k in ("x", "y", "x_test", "y_test")}


def load(data_dir: Path | None, seed: int) -> Raw:
    """The ``mnist1d`` problem: signals ``(n, 1, 40)``, labels ``0 … 9``; ``seed`` is unused
    (the data are the authors' fixed set)."""
    path = _cache_dir(data_dir) / f"mnist1d-{_version()}.npz"
    a = _read(path)
    if a is None:
        a = generate()
        _write(path, a)
    x, x_test = (a[k].reshape(len(a[k]), 1, SIGNAL_LENGTH) for k in ("x", "x_test"))
    return x, a["y"], x_test, a["y_test"], 10


def _read(path: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when there is no readable, whole cache file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            a = {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # absent, torn or foreign
        return None
    return a if a["x"].shape == (len(a["y"]), SIGNAL_LENGTH) else None


def _write(path: Path, a: dict[str, np.ndarray]) -> None:
    """Keep ``a`` at ``path``, written under a temporary name and renamed, so that ranks that
    generate at once never read a part; an unwritable place is skipped."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, x=a["x"], y=a["y"], x_test=a["x_test"], y_test=a["y_test"])
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder itself could not be made
            pass

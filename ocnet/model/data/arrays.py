"""A data set of the user's own arrays (``--problem arrays --data PATH``): one ``.npz`` file,
or a folder of ``.npy`` files, checked before anything trains.

The arrays (keys of the ``.npz``, or file names without ``.npy``):

``x_train``, ``x_test``
    one sample per row, of any of the shapes a network kind takes: vectors ``(n, d)``,
    signals ``(n, C, L)``, images ``(n, C, H, W)``; real numbers, finite;
``y_train``, ``y_test``
    integer class labels ``(n,)`` in ``0 … C-1``, where ``C`` is the largest training
    label + 1;
``x_val``, ``y_val``
    optional: validation samples (then ``--val-split`` does not apply).

Nothing is unpickled (``allow_pickle=False``: an array of Python objects is refused, never
loaded), and an array whose header claims more than :data:`MAX_BYTES` is refused before it
is read.
"""
from __future__ import annotations

import zipfile
from functools import partial
from pathlib import Path
from typing import IO, Callable

import numpy as np

from .dataset import DataError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("x_val", "y_val")
#: The most bytes one array may hold; every rank holds the whole data set in memory.
MAX_BYTES = 8 << 30


def read(path: Path) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of ``path`` (a ``.npz`` file or a folder of ``.npy`` files), checked
    (:func:`check`), and the number of classes."""
    if path.is_dir():
        arrays = _read_folder(path)
    elif path.is_file():
        arrays = _read_npz(path)
    elif path.exists():
        raise DataError(f"{path}: expected a .npz file or a folder of .npy files, found neither")
    else:
        raise DataError(f"{path} does not exist (--data: a .npz file or a folder of .npy files)")
    return arrays, check(arrays, str(path))


def check(arrays: dict[str, np.ndarray], source: str) -> int:
    """Check the arrays of a data set (the module's contract); returns the number of classes.

    Raises
    ------
    DataError
        Naming ``source``, the array and what is wrong with it.
    """
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)} (a data set holds {', '.join(REQUIRED)}; "
                        f"{' and '.join(OPTIONAL)} optional)")
    unknown = sorted(set(arrays) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise DataError(f"{source}: unknown array(s) {', '.join(unknown)} (expected {', '.join(REQUIRED + OPTIONAL)})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"{source}: x_val and y_val come together; found only "
                        f"{'x_val' if 'x_val' in arrays else 'y_val'}")
    splits = [s for s in ("train", "test", "val") if f"x_{s}" in arrays]
    shape = None
    for s in splits:
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if x.dtype.kind not in "biuf":
            raise DataError(f"{source}: x_{s} holds {x.dtype} values; features must be real numbers")
        if not 2 <= x.ndim <= 4:
            raise DataError(f"{source}: x_{s} has shape {x.shape}: no network kind takes samples of shape "
                            f"{x.shape[1:]} (vectors (n, d), signals (n, C, L) or images (n, C, H, W))")
        if 0 in x.shape[1:]:
            raise DataError(f"{source}: x_{s} has shape {x.shape}: its samples are empty")
        if shape is not None and x.shape[1:] != shape:
            raise DataError(f"{source}: x_{s}'s samples have shape {x.shape[1:]}, x_train's {shape}")
        shape = x.shape[1:]
        if len(x) == 0 and s != "val":
            raise DataError(f"{source}: x_{s} holds no samples")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{source}: y_{s} must be integer class labels of shape (n,), found {y.dtype} {y.shape}")
        if len(y) != len(x):
            raise DataError(f"{source}: x_{s} has {len(x)} samples but y_{s} {len(y)} labels")
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            row = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
            raise DataError(f"{source}: x_{s} row {row} holds a value that is not finite (nan or inf)")
    labels = {s: arrays[f"y_{s}"] for s in splits if len(arrays[f"y_{s}"])}
    for s, y in labels.items():
        if y.min() < 0:
            raise DataError(f"{source}: y_{s} holds label {int(y.min())}; labels are 0 … C-1")
    n_classes = int(labels["train"].max()) + 1
    if n_classes < 2:
        raise DataError(f"{source}: y_train holds one class only (label 0); a classifier needs two")
    for s, y in labels.items():
        if y.max() >= n_classes:
            raise DataError(f"{source}: y_{s} holds label {int(y.max())}; labels are 0 … {n_classes - 1} "
                            f"(the largest training label + 1 classes)")
    return n_classes


def _read_folder(folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for path in sorted(folder.glob("*.npy")):
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "no regular file"
            raise DataError(f"{path}: expected an .npy file, found {kind}")
        try:
            with open(path, "rb") as f:
                _refuse(_header(f, str(path)), str(path))
        except OSError as e:
            raise DataError(f"{path}: could not read ({e})") from e
        arrays[path.stem] = _load(partial(np.load, path, allow_pickle=False), str(path))
    if not arrays:
        raise DataError(f"{folder}: holds no .npy files (expected {', '.join(f'{k}.npy' for k in REQUIRED)})")
    return arrays


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as f:
                    where = f"{path}: {info.filename}"
                    _refuse(_header(f, where), where)
    except zipfile.BadZipFile as e:
        raise DataError(f"{path}: not a .npz file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: could not read ({e})") from e
    with np.load(path, allow_pickle=False) as npz:
        return {key: _load(partial(npz.__getitem__, key), f"{path}: {key}") for key in npz.files}


def _header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an ``.npy`` stream's header declares."""
    try:
        version = np.lib.format.read_magic(f)
        shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                           else np.lib.format.read_array_header_2_0(f))
    except ValueError as e:
        raise DataError(f"{where}: not an .npy array ({e})") from e
    return shape, dtype


def _refuse(header: tuple[tuple[int, ...], np.dtype], where: str) -> None:
    shape, dtype = header
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (a pickle); refused, never loaded: save plain numeric arrays")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if size > MAX_BYTES:
        raise DataError(f"{where}: its header declares {shape} {dtype}, {size / 2**30:.1f} GiB; "
                        f"the most one array may hold is {MAX_BYTES / 2**30:g} GiB (each rank loads it all)")


def _load(read: Callable[[], np.ndarray], where: str) -> np.ndarray:
    try:
        return read()
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:  # truncated data, a bad header
        raise DataError(f"{where}: could not read ({e})") from e

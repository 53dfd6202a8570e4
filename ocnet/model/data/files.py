"""The data sets read from ``--data-dir``: MNIST's IDX files and CIFAR's python pickles, read
with bounded sizes and an unpickler that may rebuild arrays and nothing else."""
from __future__ import annotations

import gzip
import importlib
import math
import os
import pickle
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DataError, Raw

# ------------------------------------------------------------------ file look-up

def _require_dir(data_dir: Path | None, name: str) -> Path:
    if data_dir is None:
        raise DataError(f"data set {name!r} is read from files: pass --data-dir DIR "
                        f"(the directory that holds them); nothing is downloaded")
    if not data_dir.exists():
        raise DataError(f"data directory {data_dir} does not exist")
    if not data_dir.is_dir():
        raise DataError(f"data directory {data_dir} is not a directory")
    return data_dir


def _find(candidates: list[Path], what: str) -> Path:
    """The first regular file among ``candidates``; a DataError naming the first one that
    exists but is not a file (a directory, a FIFO, which would block), else listing them all."""
    for path in candidates:
        if path.is_file():
            return path
    for path in candidates:
        if path.exists():
            kind = "a directory" if path.is_dir() else "not a regular file"
            raise DataError(f"{path}: expected the {what}, found {kind}")
    looked = "\n  ".join(str(p) for p in candidates)
    raise DataError(f"missing {what}; looked at:\n  {looked}")


def _read_at_most(f: Any, n: int) -> bytearray:
    """Up to ``n`` bytes of ``f``, in chunks, so that a corrupt size in a header allocates
    no more than the file really holds."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), 1 << 24))
        if not chunk:
            break
        buf += chunk
    return buf


# --------------------------------------------------------------------------- MNIST

_IDX_IMAGES, _IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim
# Far beyond any IDX data set (MNIST's training images are 47 MB): a header that claims
# more is corrupt, and is refused before anything is read.
_IDX_MAX_BYTES = 1 << 32


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an IDX file (plain or gzip) whose header must carry ``magic``.

    Returns a uint8 array of the dimensions in the header, e.g. ``(n, 28, 28)``.
    """
    kind = "images" if magic == _IDX_IMAGES else "labels"
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = _read_at_most(f, header)
            if len(head) < 4:
                raise DataError(f"{path}: truncated: {len(head)} bytes, expected an IDX header "
                                f"with magic 0x{magic:08x} ({kind})")
            found = int.from_bytes(head[:4], "big")
            if found != magic:
                raise DataError(f"{path}: expected IDX magic 0x{magic:08x} ({kind}, unsigned bytes, "
                                f"{ndim} dimension(s)), found 0x{found:08x}")
            if len(head) < header:
                raise DataError(f"{path}: truncated header: {len(head)} bytes, expected {header}")
            dims = tuple(int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
            size = math.prod(dims)  # Python integers: four 32-bit dimensions do not overflow
            expected = header + size
            if size > _IDX_MAX_BYTES:
                raise DataError(f"{path}: header says dimensions {dims}, so {expected} bytes; "
                                f"more than any IDX data set, the file is corrupt")
            payload = _read_at_most(f, size + 1)  # one byte more tells trailing bytes
            total = header + len(payload)
            if path.suffix != ".gz":
                total = os.fstat(f.fileno()).st_size
    except DataError:
        raise
    except (OSError, EOFError, zlib.error) as e:  # gzip reports truncation as EOFError
        raise DataError(f"{path}: could not read ({e})") from e
    if len(payload) != size:
        state, found_text = (("truncated", str(total)) if len(payload) < size
                             else ("has trailing bytes", str(total) if path.suffix != ".gz" else "more"))
        raise DataError(f"{path}: {state}: header says dimensions {dims}, so "
                        f"{expected} bytes expected, found {found_text}")
    return np.frombuffer(payload, np.uint8).reshape(dims)


def _mnist_split(root: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        # Plain before .gz (no decompression); then torchvision's MNIST/raw layout.
        candidates = [d / f"{stem}{ext}" for d in (root, root / "MNIST" / "raw")
                      for ext in ("", ".gz")]
        paths.append(_find(candidates, f"MNIST file {stem}[.gz]"))
    images_path, labels_path = paths
    images, labels = _read_idx(images_path, _IDX_IMAGES), _read_idx(labels_path, _IDX_LABELS)
    if images.size == 0:
        raise DataError(f"{images_path}: holds no images (its header says dimensions {images.shape})")
    if len(images) != len(labels):
        raise DataError(f"MNIST {prefix}: {len(images)} images but {len(labels)} labels "
                        f"in {images_path} and {labels_path}")
    if labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be 0 … 9, found {labels.max()}")
    return images[:, None].astype(np.float32) / 255.0, labels.astype(np.int64)


def _load_mnist(data_dir: Path | None, seed: int) -> Raw:
    # The split is the official one; ``seed`` has nothing to choose here.
    root = _require_dir(data_dir, "mnist")
    x_tr, y_tr = _mnist_split(root, "train")
    x_te, y_te = _mnist_split(root, "t10k")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"MNIST in {root}: train images are {x_tr.shape[2:]}, test images "
                        f"{x_te.shape[2:]}; expected the same size")
    return x_tr, y_tr, x_te, y_te, 10


# --------------------------------------------------------------------------- CIFAR

def _numpy_global(submodule: str, name: str) -> Any:
    """``numpy._core.<submodule>.<name>`` (numpy 2), else ``numpy.core…`` (numpy 1).
    Resolved directly so that numpy 2 does not warn about the deprecated ``numpy.core``."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


@lru_cache(maxsize=1)
def _pickle_allowlist() -> dict[tuple[str, str], Any]:
    """The only globals a data pickle may name: what numpy arrays, dtypes and scalars need
    to be rebuilt (as pickled by numpy 1 and 2, protocols 2–5), and ``_codecs.encode``,
    which Python 3 uses to pickle ``bytes`` at protocol 2. None of them runs arbitrary code."""
    import codecs

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray,
                                           ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): codecs.encode}
    for sub, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                      ("numeric", "_frombuffer")):
        obj = _numpy_global(sub, name)
        for package in ("numpy._core", "numpy.core"):
            allowed[(f"{package}.{sub}", name)] = obj
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickling calls whatever the file names, so a pickle from a user's directory could
    run any code (e.g. ``os.system``). This one refuses every global outside the allowlist."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _pickle_allowlist()[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed") from None


# CIFAR-100's training pickle, the largest, is 155 MB.
_CIFAR_MAX_BYTES = 1 << 30


def _read_cifar_pickle(path: Path, label_key: str, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file -> images uint8 ``(n, 3, 32, 32)`` and labels int64 ``(n,)``."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: could not read ({e})") from e
    if size > _CIFAR_MAX_BYTES:
        raise DataError(f"{path}: {size} bytes; a CIFAR pickle is at most about 160 MB, "
                        f"so this is not one")
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the files were written by Python 2 (keys are bytes).
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a malformed pickle can fail in any of many ways
        raise DataError(f"{path}: not a readable CIFAR pickle "
                        f"({type(e).__name__}: {e})") from e
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(batch).__name__}")
    # Accept str keys too, for batches re-pickled by Python 3.
    get = lambda k: batch.get(k.encode(), batch.get(k))  # noqa: E731
    data, labels = get("data"), get(label_key)
    if data is None or labels is None:
        keys = sorted(str(k) for k in batch)
        raise DataError(f"{path}: expected keys b'data' and b'{label_key}', found {keys}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected b'data' as uint8 of shape (n, 3072), "
                        f"found {data.dtype} of shape {data.shape}")
    if len(data) == 0:
        raise DataError(f"{path}: holds no images")
    try:
        raw_labels = np.asarray(labels)
        if raw_labels.dtype.kind not in "iu":  # floats would be truncated, bools taken as 0/1
            raise TypeError(f"dtype {raw_labels.dtype}")
        labels = raw_labels.astype(np.int64).reshape(-1)
    except Exception as e:  # ragged lists, huge integers, objects: all the same mistake
        raise DataError(f"{path}: b'{label_key}' is not a list of integers") from e
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{path}: labels must lie in 0 … {n_classes - 1}, "
                        f"found {labels.min()} … {labels.max()}")
    # Each row is the red plane, then green, then blue, each row-major 32×32.
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(root: Path, folder: str, train: list[str], test: str, label_key: str,
           n_classes: int) -> Raw:
    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_pickle(_find([root / folder / f, root / f], f"{folder} file {f}"),
                                    label_key, n_classes) for f in files]
        images = np.concatenate([p[0] for p in parts])
        return images.astype(np.float32) / 255.0, np.concatenate([p[1] for p in parts])

    x_tr, y_tr = read(train)
    x_te, y_te = read([test])
    return x_tr, y_tr, x_te, y_te, n_classes


def _load_cifar10(data_dir: Path | None, seed: int) -> Raw:
    root = _require_dir(data_dir, "cifar10")
    return _cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  "test_batch", "labels", 10)


def _load_cifar100(data_dir: Path | None, seed: int) -> Raw:
    root = _require_dir(data_dir, "cifar100")
    return _cifar(root, "cifar-100-python", ["train"], "test", "fine_labels", 100)

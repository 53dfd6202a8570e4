"""Datasets, batching and augmentation.

Six classification problems, all returned as one :class:`Dataset` of torch tensors:

``peaks``     2-D points in ``[-3, 3]^2``, 5 level-set classes of MATLAB's ``peaks``
              (Günther et al., SIMODS 2020); generated, no files.
``sequences`` token sequences whose class is set by their first and last tokens, far
              apart: a task for attention; generated, no files.
``digits``    scikit-learn's shipped 8×8 digits; no download.
``mnist``     IDX files (plain or ``.gz``) in ``--data-dir`` or ``--data-dir/MNIST/raw``.
``cifar10``   the python pickle batches in ``--data-dir/cifar-10-batches-py`` (or directly).
``cifar100``  ``train`` / ``test`` pickles in ``--data-dir/cifar-100-python`` (or directly).

Inputs are normalised per channel with the mean and standard deviation of the *training*
set, applied to both splits (token ids are not: they index an embedding).  Every rank calls
these functions independently, so everything random here is driven by explicit seeds and
generators, never by global RNG state.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib
import math
import os
import pickle
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["DataError", "Dataset", "DATASETS", "load", "batches", "augment", "vocabulary"]

DATASETS = ("peaks", "sequences", "digits", "mnist", "cifar10", "cifar100")


class DataError(ValueError):
    """A data set could not be loaded: a missing or malformed file, or a bad name."""


@dataclass
class Dataset:
    """A classification data set, normalised, ready for training.

    ``x_train`` float32 ``(n_train, *input_shape)``, per-channel mean 0 / std 1;
    ``y_train`` int64 ``(n_train,)`` in ``0 … n_classes-1``; ``x_test`` / ``y_test`` likewise
    with ``n_test`` rows, normalised with the *training* statistics; ``x_val`` / ``y_val``
    the validation samples held out of the training set (``n_val`` rows, 0 unless asked
    for). ``is_image``: ``x`` is ``(n, C, H, W)``; otherwise feature vectors ``(n, d)``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    is_image: bool
    x_val: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0))
    y_val: torch.Tensor = dataclasses.field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` for images, ``(d,)`` otherwise."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Dataset":
        """The same data with inputs in ``dtype`` and everything on ``device``."""
        return dataclasses.replace(
            self, x_train=self.x_train.to(device, dtype), y_train=self.y_train.to(device),
            x_test=self.x_test.to(device, dtype), y_test=self.y_test.to(device),
            x_val=self.x_val.to(device, dtype), y_val=self.y_val.to(device))


# A loader returns raw numpy arrays (x_train, y_train, x_test, y_test, n_classes);
# :func:`load` does the common conversion and normalisation.
_Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


# --------------------------------------------------------------------------- peaks

_PEAKS_N_TRAIN, _PEAKS_N_TEST = 5000, 1000
# The class boundaries must not depend on the user's seed (otherwise "class 3" would mean
# different regions for different seeds), so they come from a reference sample of its own.
_PEAKS_REFERENCE_SEED, _PEAKS_REFERENCE_SIZE = 20200101, 200_000


def _peaks_z(xy: np.ndarray) -> np.ndarray:
    """MATLAB's ``peaks`` function at points ``xy`` of shape ``(n, 2)``; returns ``(n,)``."""
    x, y = xy[:, 0], xy[:, 1]
    return (3 * (1 - x) ** 2 * np.exp(-x**2 - (y + 1) ** 2)
            - 10 * (x / 5 - x**3 - y**5) * np.exp(-x**2 - y**2)
            - np.exp(-(x + 1) ** 2 - y**2) / 3)


@lru_cache(maxsize=1)
def _peaks_thresholds() -> np.ndarray:
    """The 4 level-set thresholds: quintiles of z over a fixed uniform sample of [-3, 3]^2,
    so the 5 classes hold about 20 % of the square each."""
    rng = np.random.default_rng(_PEAKS_REFERENCE_SEED)
    z = _peaks_z(rng.uniform(-3.0, 3.0, size=(_PEAKS_REFERENCE_SIZE, 2)))
    return np.quantile(z, [0.2, 0.4, 0.6, 0.8])


def _load_peaks(data_dir: Path | None, seed: int) -> _Raw:
    rng = np.random.default_rng(seed)
    x_train = rng.uniform(-3.0, 3.0, size=(_PEAKS_N_TRAIN, 2))
    x_test = rng.uniform(-3.0, 3.0, size=(_PEAKS_N_TEST, 2))
    thresholds = _peaks_thresholds()
    label = lambda x: np.searchsorted(thresholds, _peaks_z(x), side="right")  # noqa: E731
    return x_train, label(x_train), x_test, label(x_test), 5


# ----------------------------------------------------------------------- sequences

_SEQUENCES_N_TRAIN, _SEQUENCES_N_TEST = 4000, 1000
_SEQUENCES_LENGTH, _SEQUENCES_VOCAB = 16, 8


def vocabulary(name: str) -> int:
    """The number of token ids of a token-sequence data set (0 for the others)."""
    return _SEQUENCES_VOCAB if str(name).strip().lower() == "sequences" else 0


def _load_sequences(data_dir: Path | None, seed: int) -> _Raw:
    """``L = 16`` tokens drawn uniformly from ``0 … 7``; the class ``2 [x_0 ≥ 4] + [x_15 ≥ 4]``
    (4 classes of about a quarter each) depends on the first and the last token only, so a
    model must carry information across the whole sequence: per-token layers alone cannot."""
    rng = np.random.default_rng(seed)
    half = _SEQUENCES_VOCAB // 2

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.integers(0, _SEQUENCES_VOCAB, size=(n, _SEQUENCES_LENGTH))
        return x, 2 * (x[:, 0] >= half) + (x[:, -1] >= half)

    return (*draw(_SEQUENCES_N_TRAIN), *draw(_SEQUENCES_N_TEST), 4)


# -------------------------------------------------------------------------- digits

def _load_digits(data_dir: Path | None, seed: int) -> _Raw:
    from sklearn.datasets import load_digits  # imported lazily: only this loader needs it
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0 … 16
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
    return x_tr, y_tr, x_te, y_te, 10


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


def _load_mnist(data_dir: Path | None, seed: int) -> _Raw:
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
           n_classes: int) -> _Raw:
    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_cifar_pickle(_find([root / folder / f, root / f], f"{folder} file {f}"),
                                    label_key, n_classes) for f in files]
        images = np.concatenate([p[0] for p in parts])
        return images.astype(np.float32) / 255.0, np.concatenate([p[1] for p in parts])

    x_tr, y_tr = read(train)
    x_te, y_te = read([test])
    return x_tr, y_tr, x_te, y_te, n_classes


def _load_cifar10(data_dir: Path | None, seed: int) -> _Raw:
    root = _require_dir(data_dir, "cifar10")
    return _cifar(root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  "test_batch", "labels", 10)


def _load_cifar100(data_dir: Path | None, seed: int) -> _Raw:
    root = _require_dir(data_dir, "cifar100")
    return _cifar(root, "cifar-100-python", ["train"], "test", "fine_labels", 100)


_LOADERS: dict[str, Callable[[Path | None, int], _Raw]] = {
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

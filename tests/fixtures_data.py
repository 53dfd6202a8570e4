"""Small, format-faithful MNIST and CIFAR files for tests (no download needed).

Each writer returns the raw arrays it wrote so tests can check round trips.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_N_TRAIN, MNIST_N_TEST = 20, 10


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic (0x0000 08 ndim), dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def idx_header(magic: int, dims: tuple[int, ...]) -> bytes:
    """Only the header of an IDX file, with any dimensions (a corrupt one claims too many)."""
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims)


def mnist_arrays(n: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` uint8 with a known pattern and labels ``(n,)``."""
    i, r, c = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    images = ((i * 7 + r * 3 + c + offset) % 256).astype(np.uint8)
    labels = ((np.arange(n) + offset) % 10).astype(np.uint8)
    return images, labels


def write_mnist(root: Path, gz: bool = False, torchvision_layout: bool = False) -> dict:
    """Write the four MNIST IDX files; returns ``{"train": (x, y), "t10k": (x, y)}``."""
    folder = root / "MNIST" / "raw" if torchvision_layout else root
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n, offset in (("train", MNIST_N_TRAIN, 0), ("t10k", MNIST_N_TEST, 5)):
        images, labels = mnist_arrays(n, offset)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images),
                          (f"{prefix}-labels-idx1-ubyte", labels)):
            payload = idx_bytes(arr)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / stem).write_bytes(payload)
        out[prefix] = (images, labels)
    return out


def cifar_arrays(n: int, offset: int, n_classes: int) -> tuple[np.ndarray, list[int]]:
    """Rows ``(n, 3072)`` uint8 (red plane, green, blue) and a label list."""
    data = ((np.arange(n * 3072).reshape(n, 3072) * 13 + offset) % 251).astype(np.uint8)
    labels = [int((k * 3 + offset) % n_classes) for k in range(n)]
    return data, labels


def write_cifar10(root: Path, subdir: bool = True, per_batch: int = 3, n_test: int = 4,
                  protocol: int = 2) -> dict:
    """Five training batches and a test batch; returns ``{"train": (data, labels), "test": …}``."""
    folder = root / "cifar-10-batches-py" if subdir else root
    folder.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for b in range(1, 6):
        data, labels = cifar_arrays(per_batch, b, 10)
        batch = {b"batch_label": f"training batch {b} of 5".encode(), b"labels": labels,
                 b"data": data, b"filenames": [b"x.png"] * per_batch}
        (folder / f"data_batch_{b}").write_bytes(pickle.dumps(batch, protocol=protocol))
        train_data.append(data)
        train_labels += labels
    data, labels = cifar_arrays(n_test, 99, 10)
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"labels": labels, b"data": data}, protocol=protocol))
    return {"train": (np.concatenate(train_data), train_labels), "test": (data, labels)}


def write_cifar100(root: Path, n_train: int = 6, n_test: int = 3, protocol: int = 4) -> dict:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, offset in (("train", n_train, 40), ("test", n_test, 77)):
        data, fine = cifar_arrays(n, offset, 100)
        batch = {b"data": data, b"fine_labels": fine,
                 b"coarse_labels": [f // 5 for f in fine]}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[split] = (data, fine)
    return out

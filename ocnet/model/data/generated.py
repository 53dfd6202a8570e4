"""The data sets made here, with no files: ``peaks``, ``sequences`` and scikit-learn's shipped
``digits``."""
from __future__ import annotations

import gzip
import importlib.util
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from .dataset import DataError, Raw

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


def _load_peaks(data_dir: Path | None, seed: int) -> Raw:
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


def _load_sequences(data_dir: Path | None, seed: int) -> Raw:
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

def _load_digits(data_dir: Path | None, seed: int) -> Raw:
    """scikit-learn's 8×8 digits (1,797 images), read from the file scikit-learn ships without
    importing scikit-learn, which would add about a second to the start of every rank; split
    80 / 20 by class as ``train_test_split(..., test_size=0.2, stratify=y, random_state=seed)``
    splits them (asserted against it in the tests)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data set 'digits' needs scikit-learn, which ships it: pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    x, y = data[:, :-1].reshape(-1, 1, 8, 8) / 16.0, data[:, -1].astype(int)  # pixel values are 0 … 16
    train, test = stratified_split(y, 0.2, seed)
    return x[train], y[train], x[test], y[test], 10


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of one split of the samples with labels ``y`` that keeps each
    class's share in both parts: the split of scikit-learn's ``StratifiedShuffleSplit`` with
    ``random_state=seed`` (the same draws from the same ``RandomState``, in the same order)."""
    n_test = math.ceil(test_size * len(y))
    n_train = len(y) - n_test
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, indices in enumerate(members):
        shuffled = indices.take(rng.permutation(counts[i]), mode="clip")
        train.extend(shuffled[:n_i[i]])
        test.extend(shuffled[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Samples per class when ``n_draws`` are drawn from classes of ``counts``: the floor of
    each class's share, plus one for the largest remainders (ties broken by ``rng``)."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need = int(n_draws - floored.sum())
    remainder = continuous - floored
    for value in np.sort(np.unique(remainder))[::-1]:
        if need <= 0:
            break
        (tied,) = np.where(remainder == value)
        add = min(len(tied), need)
        floored[rng.choice(tied, size=add, replace=False)] += 1
        need -= add
    return floored.astype(int)

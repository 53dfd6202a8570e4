"""The data sets made here, with no files: ``peaks``, ``sequences`` and scikit-learn's shipped
``digits``."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .dataset import Raw

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
    from sklearn.datasets import load_digits  # imported lazily: only this loader needs it
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0 … 16
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
    return x_tr, y_tr, x_te, y_te, 10

"""What a data set is once loaded, and the error a bad one raises."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch


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
Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]

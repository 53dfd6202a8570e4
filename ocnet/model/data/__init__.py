"""Datasets, batching and augmentation.

Six classification problems, the user's own arrays and the data sets plug-ins register
(:func:`register`), all returned as one :class:`Dataset` of torch tensors:

``peaks``     2-D points in ``[-3, 3]^2``, 5 level-set classes of MATLAB's ``peaks``
              (Günther et al., SIMODS 2020); generated, no files.
``sequences`` token sequences whose class is set by their first and last tokens, far
              apart: a task for attention; generated, no files.
``digits``    scikit-learn's shipped 8×8 digits; no download.
``mnist``     IDX files (plain or ``.gz``) in ``--data-dir`` or ``--data-dir/MNIST/raw``.
``cifar10``   the python pickle batches in ``--data-dir/cifar-10-batches-py`` (or directly).
``cifar100``  ``train`` / ``test`` pickles in ``--data-dir/cifar-100-python`` (or directly).
``arrays``    the user's ``.npz`` file or folder of ``.npy`` files (:mod:`.arrays`).

Inputs are normalised per channel with the mean and standard deviation of the *training*
set, applied to both splits (token ids are not: they index an embedding).  Every rank calls
these functions independently, so everything random here is driven by explicit seeds and
generators, never by global RNG state.
"""
from .batching import augment, batches
from .dataset import DataError, Dataset
from .generated import vocabulary
from .problems import DATASETS, REGISTERED, available, load, register

__all__ = ["DataError", "Dataset", "DATASETS", "REGISTERED", "available", "load", "register", "batches", "augment",
           "vocabulary"]

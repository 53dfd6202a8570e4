"""Tests for ocnet.model.data: loaders on small format-faithful files, batching, augmentation."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from fixtures_data import MNIST_N_TEST, MNIST_N_TRAIN, idx_bytes, idx_header, write_cifar10, write_cifar100, write_mnist

from ocnet.model import data
from ocnet.model.data import DATASETS, DataError, augment, batches, generated, load, problems


def assert_normalised_from(ds: data.Dataset, raw_train: np.ndarray, raw_test: np.ndarray) -> None:
    """``ds`` must be ``(raw - mean) / std`` per channel, with the *training* statistics
    applied to both splits; so every pixel of the files round-trips."""
    axes = tuple(a for a in range(raw_train.ndim) if a != 1)
    mean = raw_train.mean(axis=axes, keepdims=True)
    std = raw_train.std(axis=axes, keepdims=True)
    np.testing.assert_allclose(ds.x_train.numpy(), (raw_train - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), (raw_test - mean) / std, atol=1e-5)
    # ... and undoing it gives the file's bytes back exactly.
    back = np.rint((ds.x_test.numpy() * std + mean) * 255)
    np.testing.assert_array_equal(back, np.rint(raw_test * 255))


# ---------------------------------------------------------------------------- MNIST

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("torchvision_layout", [False, True])
def test_mnist_loads_plain_gz_and_torchvision_layout(tmp_path, gz, torchvision_layout):
    written = write_mnist(tmp_path, gz=gz, torchvision_layout=torchvision_layout)
    ds = load("mnist", tmp_path)
    assert ds.name == "mnist" and ds.is_image and ds.n_classes == 10
    assert ds.x_train.shape == (MNIST_N_TRAIN, 1, 28, 28)
    assert ds.x_test.shape == (MNIST_N_TEST, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    np.testing.assert_array_equal(ds.y_train.numpy(), written["train"][1])
    np.testing.assert_array_equal(ds.y_test.numpy(), written["t10k"][1])
    raw_tr = written["train"][0][:, None].astype(np.float64) / 255
    raw_te = written["t10k"][0][:, None].astype(np.float64) / 255
    assert_normalised_from(ds, raw_tr, raw_te)
    assert abs(ds.x_train.mean().item()) < 1e-5
    assert ds.x_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def test_mnist_known_pixel(tmp_path):
    write_mnist(tmp_path)
    x = load("mnist", tmp_path).x_train[:, 0]
    # fixture pixel (i, r, c) = (7 i + 3 r + c) mod 256: (3, 5, 7) = 43, (0, 0, 1) = 1,
    # (0, 0, 0) = 0; an affine normalisation keeps the ratio of differences
    ratio = (x[3, 5, 7] - x[0, 0, 0]) / (x[0, 0, 1] - x[0, 0, 0])
    assert ratio.item() == pytest.approx(43.0, rel=1e-5)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated_file_names_file(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=name) as info:
        load("mnist", tmp_path)
    if not gz:  # the IDX check itself: header size against file size
        assert "truncated" in str(info.value)
        assert str(16 + MNIST_N_TRAIN * 784) in str(info.value)


def test_mnist_trailing_bytes_rejected(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load("mnist", tmp_path)


def test_mnist_wrong_magic(tmp_path):
    written = write_mnist(tmp_path)
    # an images file where the labels file should be
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(written["train"][0]))
    with pytest.raises(DataError) as info:
        load("mnist", tmp_path)
    msg = str(info.value)
    assert "train-labels-idx1-ubyte" in msg and "0x00000801" in msg and "0x00000803" in msg


def test_mnist_label_count_mismatch(tmp_path):
    written = write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(written["t10k"][1][:-1]))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load("mnist", tmp_path)


def test_mnist_missing_file_lists_paths(tmp_path):
    write_mnist(tmp_path, gz=True)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load("mnist", tmp_path)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg
    assert str(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz") in msg


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_file_datasets_need_data_dir(name):
    with pytest.raises(DataError, match="--data-dir"):
        load(name)


def test_unknown_name_lists_datasets():
    with pytest.raises(DataError) as info:
        load("imagenet")
    assert all(n in str(info.value) for n in DATASETS)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("subdir,protocol", [(True, 2), (False, 4), (True, 5)])
def test_cifar10_loads(tmp_path, subdir, protocol):
    written = write_cifar10(tmp_path, subdir=subdir, protocol=protocol)
    ds = load("cifar10", tmp_path)
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.n_classes == 10 and ds.is_image and ds.input_shape == (3, 32, 32)
    assert ds.y_train.dtype == torch.int64
    assert ds.y_train.tolist() == written["train"][1]
    assert ds.y_test.tolist() == written["test"][1]
    # channel-major rows: bytes 0…1023 red, 1024…2047 green, 2048… blue
    raw_tr = written["train"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    raw_te = written["test"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    assert_normalised_from(ds, raw_tr, raw_te)
    # per-channel normalisation: each channel of the training set has mean 0 / std 1
    for c in range(3):
        assert abs(ds.x_train[:, c].mean().item()) < 1e-5
        assert ds.x_train[:, c].std(correction=0).item() == pytest.approx(1.0, abs=1e-5)


def test_cifar100_fine_labels(tmp_path):
    written = write_cifar100(tmp_path)
    ds = load("cifar100", tmp_path)
    assert ds.n_classes == 100
    assert ds.x_train.shape == (6, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
    assert ds.y_train.tolist() == written["train"][1]
    assert max(ds.y_train.tolist()) >= 20  # fine (0…99), not coarse (0…19), labels
    raw_tr = written["train"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    raw_te = written["test"][0].reshape(-1, 3, 32, 32).astype(np.float64) / 255
    assert_normalised_from(ds, raw_tr, raw_te)


def test_cifar_missing_batch_names_it(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError) as info:
        load("cifar10", tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_4") in msg
    assert str(tmp_path / "data_batch_4") in msg


def test_cifar_malformed_contents(tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                   b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=r"\(n, 3072\)"):
        load("cifar100", tmp_path)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8),
                                   b"fine_labels": [0, 100]}))
    with pytest.raises(DataError, match="0 … 99"):
        load("cifar100", tmp_path)
    path.write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    with pytest.raises(DataError, match="test"):
        load("cifar100", tmp_path)


class _Evil:
    def __init__(self, call, arg):
        self.call, self.arg = call, arg

    def __reduce__(self):
        return self.call, (self.arg,)


@pytest.mark.parametrize("how", ["os.system", "exec", "nested"])
def test_malicious_pickle_refused_and_not_executed(tmp_path, how):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    if how == "os.system":
        payload = _Evil(os.system, command)
    elif how == "exec":
        payload = _Evil(exec, f"open({str(marker)!r}, 'w').close()")
    else:  # hidden inside an otherwise valid batch
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_Evil(os.system, command)]}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match="data_batch_2") as info:
        load("cifar10", tmp_path)
    assert "refusing" in str(info.value)
    assert not marker.exists()


# --------------------------------------------------------------------------- digits

def test_digits():
    a, b, c = load("digits", seed=0), load("digits", seed=0), load("digits", seed=1)
    assert a.x_train.shape == (1437, 1, 8, 8) and a.x_test.shape == (360, 1, 8, 8)
    assert a.n_classes == 10 and a.is_image and a.x_train.dtype == torch.float32
    assert sorted(a.y_train.unique().tolist()) == list(range(10))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)
    assert abs(a.x_train.mean().item()) < 1e-5
    assert a.x_train.std(correction=0).item() == pytest.approx(1.0, abs=1e-4)
    # stratified: every class holds ~20 % of its samples in the test set
    counts = torch.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


# ---------------------------------------------------------------------------- peaks

def test_peaks_function_and_thresholds():
    # MATLAB: peaks(0, 0) = 8/3 e^-1 = 0.98101...
    assert generated._peaks_z(np.array([[0.0, 0.0]]))[0] == pytest.approx(8 / 3 / np.e, rel=1e-12)
    t = generated._peaks_thresholds()
    assert t.shape == (4,) and np.all(np.diff(t) > 0)
    # the global maximum (~8.1 near (0, 1.58)) is in the top class, the minimum (~-6.55
    # near (0.23, -1.63)) in the bottom one
    z = generated._peaks_z(np.array([[0.0, 1.58], [0.23, -1.63]]))
    assert z[0] > 8.0 and z[1] < -6.5
    assert z[0] > t[-1] and z[1] < t[0]


def test_peaks():
    a, b, c = load("peaks", seed=3), load("peaks", seed=3), load("peaks", seed=4)
    assert a.x_train.shape == (5000, 2) and a.x_test.shape == (1000, 2)
    assert a.n_classes == 5 and not a.is_image and a.input_shape == (2,)
    assert a.y_train.dtype == torch.int64 and a.x_train.dtype == torch.float32
    for y in (a.y_train, a.y_test):
        share = torch.bincount(y, minlength=5).double() / len(y)
        assert share.min() >= 0.10 and share.max() <= 0.30
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.x_train, c.x_train)
    # the recipe: uniform points from Generator(seed), train then test, labels by level set
    rng = np.random.default_rng(3)
    raw_tr, raw_te = rng.uniform(-3, 3, (5000, 2)), rng.uniform(-3, 3, (1000, 2))
    for raw, y in ((raw_tr, a.y_train), (raw_te, a.y_test)):
        expected = np.searchsorted(generated._peaks_thresholds(), generated._peaks_z(raw), side="right")
        np.testing.assert_array_equal(y.numpy(), expected)
    assert_normalised_from_features(a, raw_tr, raw_te)


def assert_normalised_from_features(ds, raw_tr, raw_te):
    mean, std = raw_tr.mean(0), raw_tr.std(0)
    np.testing.assert_allclose(ds.x_train.numpy(), (raw_tr - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), (raw_te - mean) / std, atol=1e-5)


# -------------------------------------------------------------------------- batches

def test_batches_partition_and_determinism():
    b = batches(103, 10, seed=5, epoch=2)
    assert [len(t) for t in b] == [10] * 10 + [3]
    assert all(t.dtype == torch.int64 for t in b)
    assert sorted(torch.cat(b).tolist()) == list(range(103))
    assert torch.equal(torch.cat(b), torch.cat(batches(103, 10, seed=5, epoch=2)))
    assert not torch.equal(torch.cat(b), torch.cat(batches(103, 10, seed=5, epoch=3)))
    assert not torch.equal(torch.cat(b), torch.cat(batches(103, 10, seed=6, epoch=2)))
    assert not torch.equal(torch.cat(b), torch.arange(103))
    assert torch.equal(torch.cat(batches(103, 10, 5, 2, shuffle=False)), torch.arange(103))
    assert batches(0, 4, 0, 0) == []
    with pytest.raises(ValueError):
        batches(10, 0, 0, 0)


def test_batches_ignore_global_rng_and_agree_across_processes():
    torch.manual_seed(123)
    first = torch.cat(batches(50, 7, seed=1, epoch=4))
    torch.manual_seed(456)
    torch.rand(10)
    assert torch.equal(first, torch.cat(batches(50, 7, seed=1, epoch=4)))
    # another process (another "rank") must compute the same permutation
    code = ("import torch; from ocnet.model.data import batches; "
            "print(torch.cat(batches(50, 7, seed=1, epoch=4)).tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONHASHSEED": "77"})
    assert eval(out.stdout) == first.tolist()


# -------------------------------------------------------------------------- augment

def test_augment_identity_when_disabled():
    x = torch.randn(5, 3, 6, 6)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=False), x)


def test_augment_flip_known_image():
    n = 64
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4).repeat(n, 1, 1, 1)
    out = augment(x, torch.Generator().manual_seed(1), crop_padding=0, flip=True)
    assert out.shape == x.shape
    flipped = torch.tensor([torch.equal(o, x[0].flip(-1)) for o in out])
    same = torch.tensor([torch.equal(o, x[0]) for o in out])
    assert torch.all(flipped ^ same)  # every sample is exactly one of the two
    assert 16 <= flipped.sum() <= 48
    assert out[flipped][0, 0, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    # documented draw order: with no crop, the flips are the generator's first rand(n)
    expected = torch.rand(n, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(flipped, expected)


def test_augment_crop_shifts_content():
    n, p, H, W = 40, 2, 7, 9
    x = torch.zeros(n, 1, H, W)
    x[:, 0, 3, 4] = 1.0  # one bright pixel
    out = augment(x, torch.Generator().manual_seed(2), crop_padding=p, flip=False)
    assert out.shape == x.shape
    shifts = set()
    for o in out[:, 0]:
        assert o.sum().item() == 1.0  # padding p and a pixel p or more from the edge: never lost
        r, c = (o == 1).nonzero()[0].tolist()
        assert abs(r - 3) <= p and abs(c - 4) <= p
        shifts.add((r - 3, c - 4))
    assert len(shifts) >= 8  # offsets are random per sample
    # matches a per-sample reference with the documented draws
    g = torch.Generator().manual_seed(2)
    offsets = torch.randint(0, 2 * p + 1, (2, n), generator=g)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    ref = torch.stack([padded[i, :, dy:dy + H, dx:dx + W]
                       for i, (dy, dx) in enumerate(offsets.T.tolist())])
    assert torch.equal(out, ref)


def test_augment_deterministic_for_generator_seed():
    x = torch.randn(16, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(9))
    b = augment(x, torch.Generator().manual_seed(9))
    c = augment(x, torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    with pytest.raises(ValueError):
        augment(torch.randn(4, 8), torch.Generator())


# ------------------------------------------------------------- malformed files, named

def _message(call) -> str:
    """The DataError message of ``call()``; fails instead of hanging should it block."""
    result: list = []

    def target():
        try:
            call()
            result.append("no error")
        except DataError as e:
            result.append(str(e))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    assert result, "blocked"
    return result[0]


def test_mnist_empty_training_set(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_header(0x803, (0, 28, 28)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_header(0x801, (0,)))
    assert _message(lambda: load("mnist", tmp_path)) == (
        f"{path}: holds no images (its header says dimensions (0, 28, 28))")


def test_mnist_labels_out_of_range_name_the_file(tmp_path):
    written = write_mnist(tmp_path)
    labels = written["t10k"][1].copy()
    labels[3] = 12
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(labels))
    assert _message(lambda: load("mnist", tmp_path)) == f"{path}: labels must be 0 … 9, found 12"


def test_mnist_header_claiming_too_much_is_refused_unread(tmp_path):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_header(0x803, (2**32 - 1, 2**32 - 1, 2**32 - 1)) + b"\x00" * 100)
    expected = 16 + (2**32 - 1) ** 3
    assert _message(lambda: load("mnist", tmp_path)) == (
        f"{path}: header says dimensions {(2**32 - 1,) * 3}, so {expected} bytes; "
        "more than any IDX data set, the file is corrupt")


def test_mnist_gz_trailing_bytes(tmp_path):
    import gzip
    written = write_mnist(tmp_path, gz=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(written["t10k"][1]) + b"\x00\x00"))
    assert _message(lambda: load("mnist", tmp_path)) == (
        f"{path}: has trailing bytes: header says dimensions (10,), so 18 bytes expected, found more")


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_mnist_not_a_file_where_a_file_belongs(tmp_path, kind):
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.unlink()
    if kind == "directory":
        path.mkdir()
    else:
        os.mkfifo(path)
    found = "a directory" if kind == "directory" else "not a regular file"
    assert _message(lambda: load("mnist", tmp_path)) == (
        f"{path}: expected the MNIST file train-images-idx3-ubyte[.gz], found {found}")


def test_data_dir_must_be_a_directory(tmp_path):
    assert _message(lambda: load("mnist", tmp_path / "nope")) == f"data directory {tmp_path / 'nope'} does not exist"
    (tmp_path / "file").write_text("")
    assert _message(lambda: load("cifar10", tmp_path / "file")) == (
        f"data directory {tmp_path / 'file'} is not a directory")


def test_cifar_empty_batch_and_bad_labels_name_the_file(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}))
    assert _message(lambda: load("cifar10", tmp_path)) == f"{path}: holds no images"
    for labels in ([0.5, 1.5], [True, False], [2**70, 0], [[0], [1, 2]], "ab"):
        path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}))
        assert _message(lambda: load("cifar10", tmp_path)) == f"{path}: b'labels' is not a list of integers"
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, -1]}))
    assert _message(lambda: load("cifar10", tmp_path)) == f"{path}: labels must lie in 0 … 9, found -1 … 0"


def test_cifar_huge_file_refused_unread(tmp_path):
    write_cifar100(tmp_path)
    path = tmp_path / "cifar-100-python" / "train"
    with open(path, "r+b") as f:
        f.truncate(2**30 + 1)  # sparse: no disk space, no time
    assert _message(lambda: load("cifar100", tmp_path)) == (
        f"{path}: {2**30 + 1} bytes; a CIFAR pickle is at most about 160 MB, so this is not one")


def test_cifar_directory_where_a_batch_belongs(tmp_path):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.unlink()
    path.mkdir()
    assert _message(lambda: load("cifar10", tmp_path)) == (
        f"{path}: expected the cifar-10-batches-py file test_batch, found a directory")


def test_an_empty_data_set_is_refused(monkeypatch):
    empty = np.zeros((0, 2)), np.zeros(0, np.int64)
    monkeypatch.setitem(problems._LOADERS, "peaks", lambda root, seed: (*empty, np.ones((3, 2)), np.zeros(3), 5))
    assert _message(lambda: load("peaks")) == "data set 'peaks': the training set is empty"


@pytest.mark.parametrize("seed", [0, 1, 7, 42, 2**31 - 1])
def test_digits_split_is_scikit_learns(seed):
    """The digits are read without importing scikit-learn, and split as its stratified
    train_test_split splits them, sample for sample."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    digits = load_digits()
    x = digits.images.reshape(-1, 1, 8, 8) / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=0.2, random_state=seed,
                                              stratify=digits.target)
    for ours, theirs in zip(generated._load_digits(None, seed)[:4], (x_tr, y_tr, x_te, y_te)):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("seed", range(6))
def test_stratified_split_draws_as_scikit_learn_does(seed):
    from sklearn.model_selection import StratifiedShuffleSplit
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2 + seed, size=40 + 17 * seed)
    y[:2 * (2 + seed)] = np.repeat(np.arange(2 + seed), 2)  # every class at least twice
    test_size = [0.2, 0.25, 0.3, 0.5, 0.15, 0.35][seed]
    theirs = next(StratifiedShuffleSplit(1, test_size=test_size, random_state=seed).split(y, y))
    for a, b in zip(generated.stratified_split(y, test_size, seed), theirs):
        assert np.array_equal(a, b)

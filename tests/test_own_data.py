"""A user's own data: ``--problem arrays --data PATH`` (one ``.npz`` or a folder of ``.npy``
files) and data sets that plug-ins register, trained as they are, and every malformed one
refused with one message before anything trains."""
from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_mpi

from ocnet import load_run
from ocnet.model.data import REGISTERED, DataError, load
from ocnet.model.data import arrays as arrays_mod
from ocnet.run import main
from ocnet.runs.launcher import run

TINY = ["--layers", "4", "--quiet", "--timeline-steps", "0", "--plots", "false"]
BUILT_IN = "peaks, sequences, digits, mnist1d, mnist, cifar10, cifar100, arrays"


@pytest.fixture(autouse=True)
def _registry():
    """Each test's plug-ins register their data sets afresh, and leave none behind."""
    saved, modules = dict(REGISTERED), set(sys.modules)
    yield
    REGISTERED.clear()
    REGISTERED.update(saved)
    for name in set(sys.modules) - modules:
        if name.startswith("ocnet_plugin_"):
            del sys.modules[name]


def blobs(n: int, shape: tuple[int, ...] = (6,), classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` samples of ``shape``, class ``c`` centred at ``3·e_c`` of the flattened sample."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, int(np.prod(shape)))).astype(np.float32)
    x[np.arange(n), y] += 3.0
    return x.reshape(n, *shape), y


def data_set(shape: tuple[int, ...] = (6,), val: bool = False) -> dict[str, np.ndarray]:
    (xa, ya), (xb, yb), (xc, yc) = blobs(400, shape), blobs(100, shape, seed=1), blobs(60, shape, seed=2)
    return {"x_train": xa, "y_train": ya, "x_test": xb, "y_test": yb, **({"x_val": xc, "y_val": yc} if val else {})}


def test_an_npz_trains_as_given_and_keeps_its_validation_samples(tmp_path):
    given = data_set(val=True)
    np.savez(tmp_path / "mine.npz", **given)
    data = load("arrays", data=tmp_path / "mine.npz")
    assert (data.n_classes, data.input_shape, len(data.y_train), len(data.y_val)) == (4, (6,), 400, 60)
    assert (data.y_val.numpy() == given["y_val"]).all() and (data.y_test.numpy() == given["y_test"]).all()
    mean, std = given["x_train"].mean(0), given["x_train"].std(0)
    np.testing.assert_allclose(data.x_val.numpy(), (given["x_val"] - mean) / std, rtol=1e-4, atol=1e-5)
    out = tmp_path / "run"
    assert main(["--problem", "arrays", "--data", str(tmp_path / "mine.npz"), "--epochs", "3", "--out", str(out),
                 *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] > 0.85 and summary["n_classes"] == 4, summary  # 4 blobs 3σ apart


@pytest.mark.parametrize("shape, net", [((1, 8, 8), "conv"), ((2, 16), "dense")])
def test_a_folder_of_npy_files_of_images_or_signals(tmp_path, shape, net):
    for key, value in data_set(shape).items():
        np.save(tmp_path / f"{key}.npy", value)
    data = load("arrays", data=tmp_path)
    assert data.input_shape == shape and data.is_image == (len(shape) == 3)
    out = tmp_path / "run"
    assert main(["--problem", "arrays", "--data", str(tmp_path), "--epochs", "1", "--channels", "4",
                 "--out", str(out), *TINY]) == 0
    assert json.loads((out / "summary.json").read_text())["input_shape"] == list(shape)
    convs = [m for m in load_run(out).model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert bool(convs) == (net == "conv")


class Unpickled:
    """Creates ``marker`` if it is ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _bad(tmp_path: Path) -> dict[str, tuple[dict, str]]:
    """name ↦ (arrays, the message the data set gives)."""
    good = data_set()
    x, y = good["x_train"], good["y_train"]
    nan = x.copy()
    nan[3, 2] = np.nan
    wide_label = good["y_test"].copy()
    wide_label[5] = 7
    pickled = np.empty(2, dtype=object)
    pickled[:] = [Unpickled(tmp_path / "unpickled"), 1]
    return {
        "missing": ({k: v for k, v in good.items() if k != "y_test"}, "missing y_test"),
        "unknown": ({**good, "X_val": x}, "unknown array(s) X_val"),
        "half val": ({**good, "x_val": x}, "x_val and y_val come together"),
        "lengths": ({**good, "y_train": y[:-1]}, "x_train has 400 samples but y_train 399 labels"),
        "float labels": ({**good, "y_train": y.astype(np.float32)}, "y_train must be integer class labels"),
        "negative": ({**good, "y_train": y - 1}, "y_train holds label -1"),
        "beyond": ({**good, "y_test": wide_label}, "y_test holds label 7; labels are 0 … 3"),
        "one class": ({**good, "y_train": 0 * y}, "one class only"),
        "nan": ({**good, "x_train": nan}, "x_train row 3 holds a value that is not finite"),
        "scalars": ({**good, "x_train": x[:, 0], "x_test": good["x_test"][:, 0]}, "no network kind takes samples"),
        "5-d": ({**good, "x_train": x.reshape(400, 1, 1, 1, 6)}, "no network kind takes samples of shape"),
        "shapes": ({**good, "x_test": good["x_test"][:, :5]}, "x_test's samples have shape (5,), x_train's (6,)"),
        "empty": ({**good, "x_test": x[:0], "y_test": y[:0]}, "x_test holds no samples"),
        "complex": ({**good, "x_train": x.astype(np.complex64)}, "features must be real numbers"),
        "pickle": ({**good, "x_train": pickled}, "holds Python objects (a pickle); refused, never loaded"),
    }


@pytest.mark.parametrize("case", list(_bad(Path("."))))
@pytest.mark.parametrize("form", ["npz", "folder"])
def test_a_malformed_data_set_is_refused_naming_what_is_wrong(tmp_path, case, form):
    arrays, message = _bad(tmp_path)[case]
    path = tmp_path / ("d.npz" if form == "npz" else "d")
    if form == "npz":
        np.savez(path, **arrays)
    else:
        path.mkdir()
        for key, value in arrays.items():
            np.save(path / f"{key}.npy", value)
    with pytest.raises(DataError) as e:
        load("arrays", data=path)
    assert message in str(e.value) and str(path) in str(e.value), str(e.value)
    assert not (tmp_path / "unpickled").exists()


def test_broken_files_are_refused_before_they_are_read(tmp_path):
    huge = tmp_path / "huge"
    huge.mkdir()
    for key, value in data_set().items():
        np.save(huge / f"{key}.npy", value)
    with open(huge / "x_train.npy", "wb") as f:  # a header that claims 4 TiB, and no data
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    with pytest.raises(DataError, match=r"4096\.0 GiB; the most one array may hold is 8 GiB"):
        load("arrays", data=huge)
    short = huge / "x_train.npy"
    np.save(short, data_set()["x_train"])
    short.write_bytes(short.read_bytes()[:-100])
    with pytest.raises(DataError, match="x_train.npy: could not read"):
        load("arrays", data=huge)
    (tmp_path / "not.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="not a .npz file"):
        load("arrays", data=tmp_path / "not.npz")
    with pytest.raises(DataError, match="does not exist"):
        load("arrays", data=tmp_path / "nowhere.npz")
    with pytest.raises(DataError, match="--problem arrays reads --data PATH"):
        load("arrays")
    assert arrays_mod.MAX_BYTES == 8 << 30


def test_bad_options_exit_2_with_one_line(tmp_path, capsys):
    np.savez(tmp_path / "v.npz", **data_set(val=True))
    cases = {
        ("--problem", "digits", "--data", str(tmp_path / "v.npz")): "--data names the arrays of --problem arrays",
        ("--problem", "arrays"): "--problem arrays reads --data PATH",
        ("--problem", "arrays", "--data", str(tmp_path / "v.npz"), "--val-split", "0.1"):
            "holds its own validation samples (x_val, y_val); leave --val-split out",
    }
    for flags, message in cases.items():
        assert main([*flags, "--out", str(tmp_path / "run"), *TINY]) == 2, flags
        err = capsys.readouterr().err
        assert err.count("ocnet: error:") == 1 and message in err, err
        assert not (tmp_path / "run" / "history.jsonl").exists()


@pytest.mark.mpi
def test_every_rank_stops_before_training_on_a_bad_file(tmp_path):
    arrays, message = _bad(tmp_path)["beyond"]
    np.savez(tmp_path / "d.npz", **arrays)
    proc = run_mpi(2, "ocnet.run", "--problem", "arrays", "--data", str(tmp_path / "d.npz"), "--out",
                   str(tmp_path / "run"), *TINY, module=True, plain=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("ocnet: error:") == 1 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "run" / "history.jsonl").exists()


PLUGIN = """
import numpy as np
from ocnet.model.data import register


@register("blobs")
def blobs(data_dir, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 300)
    x = rng.normal(size=(300, 5))
    x[np.arange(300), y] += 3.0
    return {"x_train": x[:240], "y_train": y[:240], "x_test": x[240:], "y_test": y[240:] * BAD}
"""


def _plugin(tmp_path: Path, bad: int = 1) -> Path:
    path = tmp_path / f"blobs_{bad}.py"
    path.write_text(PLUGIN.replace("BAD", str(bad)))
    return path


def test_a_registered_data_set_is_a_choice_of_problem(tmp_path, capsys):
    plugin = _plugin(tmp_path)
    out = tmp_path / "run"
    assert main(["--plugin", str(plugin), "--problem", "blobs", "--epochs", "3", "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_classes"] == 3 and summary["input_shape"] == [5] and summary["final_test_acc"] > 0.8
    assert main(["--plugin", str(plugin), "--help"]) == 0
    assert f"problems: {BUILT_IN}, blobs" in capsys.readouterr().out
    # its arrays are checked as a file's are
    assert main(["--plugin", str(_plugin(tmp_path, bad=9)), "--problem", "blobs", "--out", str(tmp_path / "bad"),
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and "data set 'blobs': y_test holds label 18; labels are 0 … 2" in err, err


def test_an_unknown_problem_or_a_taken_name_is_refused(tmp_path, capsys):
    assert main(["--problem", "blob", "--plugin", str(_plugin(tmp_path)), "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"unknown problem 'blob'; choose from {BUILT_IN}, blobs; " \
        "did you mean 'blobs'?" in err, err
    (tmp_path / "taken.py").write_text("from ocnet.model.data import register\nregister('digits', lambda d, s: {})\n")
    assert main(["--plugin", str(tmp_path / "taken.py"), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "'digits' is a built-in data set; register yours under another name" in capsys.readouterr().err


def test_a_data_set_declared_as_an_entry_point(tmp_path):
    (tmp_path / "mine.py").write_text(textwrap.dedent(PLUGIN.replace("BAD", "1")).replace('@register("blobs")\n', ""))
    info = tmp_path / "mine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ocnet.datasets]\nblobs = mine:blobs\n")
    proc = run([sys.executable, "-m", "ocnet.run", "--problem", "blobs", "--epochs", "1", "--out", "run", *TINY],
               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["n_classes"] == 3

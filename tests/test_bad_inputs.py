"""Hundreds of bad inputs — flags, TOML files, plug-ins, checkpoints, histories, data files,
impossible sizes — each give one ``ocnet: error:`` line and a non-zero exit: no traceback,
no hang, and no file of an existing run directory changed."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
from pathlib import Path
from typing import Callable

import pytest
import torch

from ocnet import solvers
from ocnet.run import main
from ocnet.runs.config import COMMON

TINY = ["--layers", "4", "--quiet", "--dtype", "float64", "--batch-size", "512"]
_SKIP = {"out", "resume", "overwrite"}  # cases of their own below: a valid value would start a run

BAD_VALUES: dict[type, list[str]] = {
    int: ["abc", "1.5", "-5", "99999999999999999999999", "", "nan", "0x10"],
    float: ["abc", "nan", "inf", "-1e400", "", "1e999"],
    bool: ["maybe", "2", ""],
    list: ["", "a,b", "0", "-3", "1,,x", "99999999999999999999"],
    str: ["bogus-choice", ""],
}


def _flag_cases() -> list[tuple[str, list[str]]]:
    """Every key of the run and of every solver with values of the wrong kind or range."""
    keys = dict(COMMON)
    for cls in solvers.available().values():
        keys.update(cls.options)
    cases = []
    for key, opt in keys.items():
        named = key in ("solver", "filter", "plugin", "problem", "net")  # checked against a registry
        if key in _SKIP or (opt.type is str and not opt.choices and not named):
            continue
        for value in BAD_VALUES[opt.type]:
            owner = ["--solver", _owner(key)] if key not in COMMON else []
            cases.append((f"--{key}={value!r}", [*owner, f"--{key.replace('_', '-')}", value]))
    return cases


def _owner(key: str) -> str:
    return next(name for name, cls in solvers.available().items() if key in cls.options)


def _toml_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    files = {
        "syntax": b"epochs = = 3\n",
        "binary": bytes(range(256)) * 4,
        "latin-1": "problem = \"d\xefgits\"\n".encode("latin-1"),
        "deep-arrays": b"channels = " + b"[" * 3000 + b"]" * 3000 + b"\n",
        "deep-tables": b"x = " + b"{a = " * 3000 + b"1" + b"}" * 3000 + b"\n",
        "table": b"[solver]\nname = \"mgrit\"\n",
        "unknown": b"epochz = 3\n",
        "config-key": b"config = \"other.toml\"\n",
        "wrong-type": b"epochs = \"three\"\n",
        "float-for-int": b"layers = 4.5\n",
        "bool-for-int": b"layers = true\n",
        "huge-int": b"layers = 9223372036854775807\n",
        "list-of-str": b"channels = [\"a\"]\n",
        "empty-list": b"channels = []\n",
        "date": b"seed = 1979-05-27\n",
        "nan": b"lr = nan\n",
        "inf": b"final_time = inf\n",
        "negative": b"batch_size = -1\n",
        "bad-solver": b"solver = \"nonesuch\"\n",
    }
    cases = []
    for name, raw in files.items():
        path = tmp / f"{name}.toml"
        path.write_bytes(raw)
        cases.append((f"toml {name}", ["--config", str(path)]))
    os.mkfifo(tmp / "fifo.toml")
    (tmp / "dir.toml").mkdir()
    cases += [("toml fifo", ["--config", str(tmp / "fifo.toml")]),
              ("toml directory", ["--config", str(tmp / "dir.toml")]),
              ("toml /dev/zero", ["--config", "/dev/zero"]),
              ("toml missing", ["--config", str(tmp / "missing.toml")])]
    return cases


def _argv_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    (tmp / "raising.py").write_text("raise RuntimeError('plug-in broke')\n")
    (tmp / "syntax.py").write_text("def (:\n")
    return [
        ("positional", ["digits"]), ("single dash", ["-epochs", "3"]), ("bare --", ["--"]),
        ("empty key", ["--=3"]), ("unknown flag", ["--epochz", "3"]),
        ("solver option of another", ["--mgrit-levels", "3"]),
        ("plugin missing module", ["--plugin", "no_such_module_xyz"]),
        ("plugin missing file", ["--plugin", str(tmp / "nope.py")]),
        ("plugin raises", ["--plugin", str(tmp / "raising.py")]),
        ("plugin syntax", ["--plugin", str(tmp / "syntax.py")]),
        ("more ranks than layers: layers 0", ["--layers", "0"]),
        ("mgrit levels", ["--solver", "mgrit", "--mgrit-levels", "3", "--layers", "6"]),
        ("mgrit filter", ["--solver", "mgrit", "--filter", "downsample2"]),
        ("hybrid partner", ["--solver", "hybrid", "--parallel", "serial"]),
    ]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished 2-epoch run with a checkpoint after each epoch."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["--out", str(out), "--epochs", "2", "--checkpoint-every", "1", *TINY]) == 0
    return out


def _digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _corruptions() -> list[tuple[str, Callable[[Path], None]]]:
    """Ways to damage a copy of the base run, each to be refused on ``--resume``."""
    shard = "checkpoints/epoch_0001/rank_000.pt"
    marker = "checkpoints/latest.json"

    def write(rel: str, data: bytes) -> Callable[[Path], None]:
        return lambda d: (d / rel).write_bytes(data)

    def truncate(rel: str, keep: float) -> Callable[[Path], None]:
        return lambda d: (d / rel).write_bytes((d / rel).read_bytes()[:int(len((d / rel).read_bytes()) * keep)])

    def remove(rel: str) -> Callable[[Path], None]:
        return lambda d: (shutil.rmtree if (d / rel).is_dir() else os.unlink)(d / rel)

    def torch_save(rel: str, obj) -> Callable[[Path], None]:
        return lambda d: torch.save(obj, d / rel)

    def swap(d: Path) -> None:  # the epoch-0 shard where the epoch-1 one belongs
        (d / shard).write_bytes((d / "checkpoints/epoch_0000/rank_000.pt").read_bytes())

    def config_line(old: str, new: str) -> Callable[[Path], None]:
        return lambda d: (d / "config.toml").write_text((d / "config.toml").read_text().replace(old, new))

    return [
        ("shard truncated", truncate(shard, 0.5)), ("shard truncated to 10 bytes", truncate(shard, 0.0001)),
        ("shard empty", write(shard, b"")), ("shard random", write(shard, os.urandom(4096))),
        ("shard text", write(shard, b"hello")), ("shard missing", remove(shard)),
        ("shard directory missing", remove("checkpoints/epoch_0001")),
        ("shard of another epoch", swap),
        ("shard a plain tensor", torch_save(shard, torch.zeros(3))),
        ("shard a dict", torch_save(shard, {"solver": {"network": {}}})),
        ("shard wrong shapes", torch_save(shard, {"solver": {"network": {"w": torch.zeros(2)}, "optimizers": []}})),
        ("shard hostile pickle", torch_save(shard, {"evil": os.system})),
        ("latest empty", write(marker, b"")), ("latest random", write(marker, os.urandom(64))),
        ("latest list", write(marker, b"[]")), ("latest null", write(marker, b"null")),
        ("latest missing keys", write(marker, b"{}")),
        ("latest epoch text", write(marker, b'{"epoch": "x", "batch": null, "ranks": 1}')),
        ("latest epoch negative", write(marker, b'{"epoch": -4, "batch": null, "ranks": 1}')),
        ("latest epoch huge", write(marker, b'{"epoch": 99999999999999999999, "batch": null, "ranks": 1}')),
        ("latest epoch absent", write(marker, b'{"epoch": 7, "batch": null, "ranks": 1}')),
        ("latest ranks zero", write(marker, b'{"epoch": 1, "batch": null, "ranks": 0}')),
        ("latest truncated", truncate(marker, 0.5)), ("latest missing", remove(marker)),
        ("checkpoints missing", remove("checkpoints")),
        ("history empty", write("history.jsonl", b"")), ("history random", write("history.jsonl", os.urandom(300))),
        ("history truncated", truncate("history.jsonl", 0.3)),
        ("history not records", write("history.jsonl", b"[1, 2]\n")),
        ("history no steps", write("history.jsonl", b'{"kind": "iter"}\n')),
        ("history missing", remove("history.jsonl")),
        ("config missing", remove("config.toml")), ("config garbage", write("config.toml", b"\x00\xff = =")),
        # (a key changed there that changes no shape, e.g. the seed, is what --resume continues
        # with: config.toml is the record a resumed run takes its keys from)
        ("config another width", config_line("width = 32", "width = 16")),
        ("config another solver", config_line('solver = "serial"', 'solver = "penalty"')),
    ]


def _data_cases(tmp: Path) -> list[tuple[str, list[str]]]:
    from fixtures_data import write_cifar10, write_mnist
    cases = [("mnist missing directory", ["--problem", "mnist", "--data-dir", str(tmp / "nowhere")])]
    damage = {
        "images truncated": lambda d: _cut(d / "train-images-idx3-ubyte", 100),
        "labels truncated": lambda d: _cut(d / "train-labels-idx1-ubyte", 9),
        "images empty": lambda d: (d / "train-images-idx3-ubyte").write_bytes(b""),
        "images wrong magic": lambda d: _poke(d / "train-images-idx3-ubyte", 0, b"\x00\x00\x09\x03"),
        "labels out of range": lambda d: _poke(d / "train-labels-idx1-ubyte", 8, b"\xff"),
        "images a directory": lambda d: (os.unlink(d / "train-images-idx3-ubyte"),
                                         (d / "train-images-idx3-ubyte").mkdir()),
        "test labels missing": lambda d: os.unlink(d / "t10k-labels-idx1-ubyte"),
        "counts differ": lambda d: (d / "train-labels-idx1-ubyte").write_bytes(
            (d / "t10k-labels-idx1-ubyte").read_bytes()),
    }
    for name, hurt in damage.items():
        d = tmp / f"mnist-{name.replace(' ', '-')}"
        write_mnist(d)
        hurt(d)
        cases.append((f"mnist {name}", ["--problem", "mnist", "--data-dir", str(d)]))
    cifar = {
        "batch missing": lambda d: os.unlink(next(d.rglob("data_batch_2"))),
        "batch garbage": lambda d: next(d.rglob("data_batch_1")).write_bytes(os.urandom(500)),
        "batch empty": lambda d: next(d.rglob("test_batch")).write_bytes(b""),
    }
    for name, hurt in cifar.items():
        d = tmp / f"cifar-{name.replace(' ', '-')}"
        write_cifar10(d, per_batch=4, n_test=4)
        hurt(d)
        cases.append((f"cifar10 {name}", ["--problem", "cifar10", "--data-dir", str(d), "--channels", "4"]))
    return cases


def _cut(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:n])


def _poke(path: Path, at: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


SIZES = [("width 1e9", ["--width", "1000000000"]), ("channels 1e6", ["--net", "conv", "--channels", "1000000"]),
         ("layers 1e7", ["--layers", "10000000"]), ("width x layers", ["--width", "200000", "--layers", "64"])]


class Hang(Exception):
    pass


def _run(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` in this process, failing on a hang (20 s) or an escaping exception."""
    def alarm(signum, frame):
        raise Hang(f"no answer in 20 s to {argv}")
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    try:
        code = main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, capsys.readouterr().err


def _check(code: int, err: str, what: str) -> None:
    assert code != 0, what
    assert err.count("ocnet: error:") == 1, f"{what}: {err}"
    assert "Traceback" not in err, f"{what}: {err}"
    line = next(x for x in err.splitlines() if x.startswith("ocnet: error:"))
    assert len(line) < 500, f"{what}: {line}"


def test_bad_inputs_give_one_line_and_change_nothing(base, tmp_path, capsys):
    victim = tmp_path / "victim"
    shutil.copytree(base, victim)
    before = _digest(victim)
    cases = [(name, [*argv, "--out", str(victim)]) for name, argv in
             _flag_cases() + _toml_cases(tmp_path) + _argv_cases(tmp_path)]
    cases += [(name, [*TINY, *argv, "--out", str(tmp_path / "fresh")]) for name, argv in
              _data_cases(tmp_path) + SIZES]
    for name, argv in cases:
        code, err = _run(argv, capsys)
        _check(code, err, name)
        assert _digest(victim) == before, f"{name} changed the run directory"
        assert not (tmp_path / "fresh").exists(), f"{name} created its run directory"
    n_resumes = 0
    for name, hurt in _corruptions():
        d = tmp_path / f"resume-{n_resumes}"
        shutil.copytree(base, d)
        hurt(d)
        damaged = _digest(d)
        code, err = _run(["--resume", str(d), "--epochs", "3", *TINY], capsys)
        _check(code, err, name)
        assert _digest(d) == damaged, f"{name} changed the run directory"
        n_resumes += 1
    assert len(cases) + n_resumes >= 150, len(cases) + n_resumes

"""The shipped experiment configurations: each is valid, says in its header either what it
reaches (``# Expect: test accuracy >= X %``) or which data it needs (``# Needs: …``), and
keeps its word: the first kind is trained here on 2 ranks, or as many as ``# Ranks: P``
says (and, with ``# Within: X points of OTHER.toml``, compared with that configuration's
accuracy), the second stops at once with one clear error while its data is absent."""
import json
import re
from pathlib import Path

import pytest
from conftest import run_mpi

from ocnet.runs.config import read_toml, resolve

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "mpi_runs" / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.toml"))


def _header(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    config = resolve(["--config", str(path)])
    assert all(config[k] == v for k, v in read_toml(path).items())
    header = _header(path)
    assert ("# Expect: test accuracy >= " in header) != ("# Needs: " in header), path.name


@pytest.fixture(scope="module")
def accuracy(tmp_path_factory):
    """The test accuracy of a configuration trained on its ranks, each trained once."""
    cache: dict[str, float] = {}

    def train(name: str) -> float:
        if name not in cache:
            out = tmp_path_factory.mktemp("run") / name
            ranks = re.search(r"# Ranks: (\d+)", _header(CONFIGS_DIR / name))
            proc = run_mpi(int(ranks.group(1)) if ranks else 2, "ocnet.run", "--config", str(CONFIGS_DIR / name),
                           "--quiet", "--timeline-steps", "0",
                           "--out", str(out), module=True, plain=True, timeout=900)
            assert proc.returncode == 0, proc.stderr
            cache[name] = json.loads((out / "summary.json").read_text())["final_test_acc"]
        return cache[name]
    return train


@pytest.mark.configs
@pytest.mark.mpi
@pytest.mark.parametrize("path", [p for p in CONFIGS if "# Expect:" in _header(p)], ids=lambda p: p.name)
def test_config_reaches_what_it_promises(accuracy, path):
    promised = float(re.search(r"# Expect: test accuracy >= ([0-9.]+) %", _header(path)).group(1)) / 100
    assert accuracy(path.name) >= promised
    within = re.search(r"# Within: ([0-9.]+) points? of (\S+)", _header(path))
    if within:  # as close to another configuration's accuracy as the header says
        assert abs(accuracy(path.name) - accuracy(within.group(2))) <= float(within.group(1)) / 100


@pytest.mark.parametrize("path", [p for p in CONFIGS if "# Needs:" in _header(p)], ids=lambda p: p.name)
def test_config_without_its_data_stops_clearly(tmp_path, capsys, monkeypatch, path):
    from ocnet.run import main
    monkeypatch.chdir(tmp_path)  # its data_dir, relative, is not there
    assert main(["--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and read_toml(path)["data_dir"] in err, err
    assert not (tmp_path / "run").exists()

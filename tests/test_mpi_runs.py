"""The shipped experiment configurations: each is valid, says in its header either what it
reaches (``# Expect: test accuracy >= X %``) or which data it needs (``# Needs: …``), and
keeps its word: the first kind is trained here on 2 ranks, the second stops at once with
one clear error while its data is absent."""
import json
import re
from pathlib import Path

import pytest

from ocnet.config import read_toml, resolve

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "mpi_runs" / "configs").glob("*.toml"))


def _header(path: Path) -> str:
    return "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    config = resolve(["--config", str(path)])
    assert all(config[k] == v for k, v in read_toml(path).items())
    header = _header(path)
    assert ("# Expect: test accuracy >= " in header) != ("# Needs: " in header), path.name


@pytest.mark.parametrize("path", [p for p in CONFIGS if "# Expect:" in _header(p)], ids=lambda p: p.name)
def test_config_reaches_what_it_promises(mpi, tmp_path, path):
    promised = float(re.search(r"# Expect: test accuracy >= ([0-9.]+) %", _header(path)).group(1)) / 100
    out = tmp_path / "run"
    proc = mpi(2, "ocnet.run", "--config", str(path), "--quiet", "--timeline-steps", "0", "--out", str(out),
               module=True, plain=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "summary.json").read_text())["final_test_acc"] >= promised


@pytest.mark.parametrize("path", [p for p in CONFIGS if "# Needs:" in _header(p)], ids=lambda p: p.name)
def test_config_without_its_data_stops_clearly(tmp_path, capsys, monkeypatch, path):
    from ocnet.run import main
    monkeypatch.chdir(tmp_path)  # its data_dir, relative, is not there
    assert main(["--config", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and read_toml(path)["data_dir"] in err, err
    assert not (tmp_path / "run").exists()

"""The shipped experiment configurations are valid."""
from pathlib import Path

import pytest

from ocnet.config import read_toml, resolve

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "mpi_runs" / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_resolves(path):
    config = resolve(["--config", str(path)])
    assert all(config[k] == v for k, v in read_toml(path).items())

"""The documentation site builds without a warning, its figures drawn by ocnet itself."""
import sys
from pathlib import Path

import pytest

from ocnet.runs.launcher import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.docs
def test_the_site_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    figures = run([sys.executable, str(ROOT / "docs" / "figures.py")],
                  timeout=300, cwd=ROOT)
    assert figures.returncode == 0, figures.stderr
    assert (ROOT / "docs" / "_figures" / "hybrid_constraints.png").stat().st_size > 10_000
    build = run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q",
                str(ROOT / "docs"), str(tmp_path / "html")],
                timeout=300, cwd=ROOT)
    assert build.returncode == 0, build.stderr
    api = (tmp_path / "html" / "api.html").read_text()
    assert "solve_adjoint" in api and "load_run" in api  # the reference is drawn from the docstrings
    for page in ("guide", "theory", "plots", "mgrit", "layer_parallel", "pipeline", "own_solver", "timelines",
                 "performance"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    assert (tmp_path / "html" / "_images" / "mgrit_mgrit_residuals.png").is_file()

"""docs/own_solver.rst's tutorial, run as a user runs it: a solver in a file of its own, the
command line under mpiexec, the launcher script, an entry point, and check_solver at P = 2."""
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import mpiexec

from ocnet.runs.launcher import launch, run

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> dict[str, str]:
    """The tutorial's code blocks by caption (``mine.py``, ``test_mine.py``)."""
    out, lines = {}, (ROOT / "docs" / "own_solver.rst").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(":caption:"):
            body = []
            for text in lines[i + 1:]:
                if text and not text.startswith("    "):
                    break
                body.append(text[4:])
            out[line.split(":caption:")[1].strip()] = "\n".join(body).strip() + "\n"
    return out


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def _write(tmp_path):
    for name, code in _blocks().items():
        (tmp_path / name).write_text(code)


@pytest.mark.mpi
def test_tutorial_solver_runs_from_the_command_line(tmp_path):
    _write(tmp_path)
    mpiexec()
    cmd = [sys.executable, "-m", "ocnet.run", "--plugin", "mine.py", "--solver", "clipped", "--clip", "0.5",
           "--epochs", "1", "--layers", "4", "--quiet", "--plots", "none", "--out", "run"]
    with ThreadPoolExecutor(1) as beside:  # --help in a process of its own while the job runs
        helped = beside.submit(run, [sys.executable, "-m", "ocnet.run", "--plugin", "mine.py", "--help"],
                               cwd=tmp_path, env=_env(tmp_path), timeout=60)
        # mpiexec -n 2 CMD, in the suite's pool of warm ranks where it has one: each rank loads the plug-in
        proc = launch(2, cmd, cwd=tmp_path, timeout=120,
                      env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "OMP_NUM_THREADS": "1"})
        help_text = helped.result().stdout
    assert proc.returncode == 0, proc.stderr
    assert 'plugin = "mine.py"' in (tmp_path / "run" / "config.toml").read_text()
    iters = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    norms = [r["grad_norm"] for r in iters if r["kind"] == "iter"]
    assert norms and all(n > 0 for n in norms)  # one value per step, not summed over the two ranks
    assert "--clip" in help_text and "clipped" in help_text


@pytest.mark.mpi
def test_tutorial_test_passes_with_check_solver_on_two_ranks(tmp_path):
    _write(tmp_path)
    proc = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mine.py"],
               cwd=tmp_path, env={**_env(tmp_path), "PATH": f"{Path(sys.executable).parent}"
               f"{os.pathsep}{os.environ['PATH']}"}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_plugin_through_the_launcher_and_its_config(tmp_path):
    _write(tmp_path)
    (tmp_path / "mine.toml").write_text(f'plugin = "{tmp_path / "mine.py"}"\nsolver = "clipped"\nlayers = 4\n'
                                        'epochs = 1\nquiet = true\nplots = "none"\n')
    proc = run(["bash", str(ROOT / "mpi_runs" / "local.sh"), "2", "mine.toml", "--out", "run"],
               cwd=tmp_path, env={**_env(tmp_path), "OCNET_BIN": str(Path(sys.executable).parent)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["solver"] == "clipped"


def test_solver_declared_as_an_entry_point(tmp_path):
    _write(tmp_path)
    info = tmp_path / "mine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ocnet.solvers]\nclipped = mine:Clipped\n")
    proc = run([sys.executable, "-m", "ocnet.run", "--solver", "clipped", "--clip", "0.5",
               "--epochs", "1", "--layers", "4", "--quiet", "--plots", "none", "--out", "run"],
               cwd=tmp_path, env=_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_plugin_that_fails_to_import_is_a_configuration_error(tmp_path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written plug-in')\n")
    proc = run([sys.executable, "-m", "ocnet.run", "--plugin", "broken.py", "--out", "run"],
               cwd=tmp_path, env=_env(tmp_path), timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("ocnet: error: plugin 'broken.py' failed while importing: "
                                   "RuntimeError: half-written plug-in")

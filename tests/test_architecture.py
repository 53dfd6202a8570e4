"""The parts of the package and their order, and what the move into parts had to keep: the
public names, the entry points, and run directories written by the code before it."""
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import ocnet
from ocnet.model.data import load
from ocnet.run import main
from ocnet.runs.launcher import run

ROOT = Path(__file__).resolve().parents[1]
BEFORE_PARTS = Path(__file__).resolve().parent / "fixtures" / "run_before_parts"
# The flags the fixture was written with (config.toml holds them too).
FIXTURE_FLAGS = ["--layers", "4", "--width", "8", "--limit-batches", "6", "--checkpoint-every", "1", "--quiet",
                 "--timeline-steps", "0"]


def lint_imports(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache", *args], cwd=cwd,
               env={"PYTHONPATH": str(cwd)}, timeout=300)


def test_the_parts_keep_their_order():
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_an_import_against_the_order_fails_naming_it(tmp_path):
    shutil.copytree(ROOT / "ocnet", tmp_path / "ocnet", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    grid = tmp_path / "ocnet" / "model" / "grid.py"
    grid.write_text(grid.read_text() + "\nfrom ..runs import config  # noqa: E402,F401\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "BROKEN" in proc.stdout and "ocnet.model.grid -> ocnet.runs.config" in proc.stdout


def test_the_public_names_and_entry_points_stay():
    assert set(ocnet.__all__) >= {"ConfigError", "Field", "LocalNetwork", "Option", "ParallelSolver", "Problem",
                                  "Solver", "SolverError", "check_solver", "load_run", "register", "solve", "sweep"}
    for name in ocnet.__all__:
        assert getattr(ocnet, name) is not None
    modules = ("ocnet.run", "ocnet.plot", "ocnet.speedup")
    with ThreadPoolExecutor(len(modules)) as side_by_side:  # each process spends seconds importing torch
        procs = side_by_side.map(lambda m: run([sys.executable, "-m", m, "--help"], timeout=120, cwd=ROOT), modules)
        for proc in procs:
            assert proc.returncode == 0 and "--out" in proc.stdout, proc.stderr


def test_a_run_written_before_the_parts_loads_and_resumes(tmp_path):
    """The fixture was written by the code before the package was cut into parts: its network
    loads and scores what its summary says, and it resumes to the parameters and records of an
    uninterrupted run of the code now."""
    old = tmp_path / "old"
    shutil.copytree(BEFORE_PARTS, old)
    run = ocnet.load_run(old)
    data = load("digits", None, 0)
    with torch.no_grad():
        acc = (run.model(data.x_test).argmax(1) == data.y_test).double().mean().item()
    assert acc == pytest.approx(run.summary["final_test_acc"], abs=1e-12)
    assert main([*FIXTURE_FLAGS, "--epochs", "3", "--resume", str(old)]) == 0
    fresh = tmp_path / "fresh"
    assert main([*FIXTURE_FLAGS, "--epochs", "3", "--out", str(fresh)]) == 0

    def records(d):
        return [{k: v for k, v in json.loads(line).items() if k != "wall_time"}
                for line in (d / "history.jsonl").read_text().splitlines()]
    assert records(old) == records(fresh)
    resumed, uninterrupted = ocnet.load_run(old).problem.state_dict(), ocnet.load_run(fresh).problem.state_dict()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)

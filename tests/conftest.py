"""Shared fixtures: the test device and a launcher for scripts under mpiexec."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MPI_SCRIPTS = Path(__file__).resolve().parent / "mpi"


@pytest.fixture
def device() -> torch.device:
    """The device the suite runs on: ``OCNET_TEST_DEVICE`` (default cpu)."""
    return torch.device(os.environ.get("OCNET_TEST_DEVICE", "cpu"))


def mpiexec() -> str:
    """The mpiexec beside this Python (the venv's mpich wheel), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec available")
    return found


def run_mpi(n: int, *args: str, timeout: float = 120, env: dict | None = None,
            module: bool = False, plain: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m mpi4py SCRIPT args`` (or ``-m MODULE`` with ``module=True``) on ``n``
    ranks.  ``-m mpi4py`` turns an exception on one rank into MPI_Abort, and the timeout
    turns a deadlock into a failed test instead of a hung suite.  ``plain=True`` leaves
    ``-m mpi4py`` out, as a user's ``mpirun -n P python -m ocnet.run`` does."""
    cmd = [mpiexec(), "-n", str(n), sys.executable] + ([] if plain else ["-m", "mpi4py"])
    cmd += ["-m", *args] if module else [str(MPI_SCRIPTS / args[0]), *args[1:]]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    # A session of its own, so that a timeout kills every rank, not only mpiexec.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s (deadlock?)\n"
                    f"stdout: {out}\nstderr: {err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.fixture
def mpi():
    return run_mpi

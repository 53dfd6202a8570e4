"""Shared fixtures: the test device and a launcher for scripts under mpiexec."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ocnet.runs import launcher

ROOT = Path(__file__).resolve().parents[1]
MPI_SCRIPTS = Path(__file__).resolve().parent / "mpi"


def one_step(solver: str, problem, x: torch.Tensor, y: torch.Tensor, **options) -> tuple[dict, dict]:
    """One step of the registered ``solver`` on one process, its parameters kept (SGD at rate
    0): ``({name: gradient}, record)`` in the problem's parameter order."""
    from ocnet.model.grid import Partition
    from ocnet.ranks.comm import SelfComm
    from ocnet.solvers import get
    s = get(solver)(problem.local(Partition(problem.n_layers, 1), 0), SelfComm(),
                    lambda p: torch.optim.SGD(p, lr=0.0), **options)
    record = s.step(x, y, torch.arange(len(y)))
    return {k: p.grad.clone() for k, p in problem.named_parameters()}, record


def flat(grads: dict) -> torch.Tensor:
    """The gradients of :func:`one_step` as one vector."""
    return torch.cat([g.flatten() for g in grads.values()])


def _launches_ranks(args) -> bool:
    program = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
    return os.path.basename(str(program)) in ("mpiexec", "mpirun")


def pytest_collection_modifyitems(items):
    """Tests that take the ``device`` fixture are the device-dependent ones (``-m device``:
    what ``make check-gpu`` runs with ``OCNET_TEST_DEVICE=cuda``)."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)


_session_pool = None  # the pool of warm ranks (rank_pool), once it has started


@contextlib.contextmanager
def _no_ranks_unless_marked(item):
    """A test that launches ranks under mpiexec (in its body or its fixtures) must say so
    (``@pytest.mark.mpi``), so that ``make test-fast`` (``-m "not mpi"``) leaves every one out.
    Its jobs go to the pool of warm ranks unless it is also marked ``processes`` (how a job's
    own processes end)."""
    mpi = item.get_closest_marker("mpi") is not None
    # Set, not saved and put back: the session's pool starts inside the first test's set-up.
    launcher.use_pool(_session_pool if mpi and item.get_closest_marker("processes") is None else None)
    if mpi:
        yield
        return

    class Popen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            # The pool's own ranks start with whichever test comes first, or after a job that ended them.
            if _launches_ranks(args) and "ocnet.runs.pool" not in args:
                pytest.fail(f"{item.nodeid} launches ranks under mpiexec: mark it @pytest.mark.mpi")
            super().__init__(args, *rest, **kwargs)

    unguarded, subprocess.Popen = subprocess.Popen, Popen
    try:
        yield
    finally:
        subprocess.Popen = unguarded


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with _no_ranks_unless_marked(item):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with _no_ranks_unless_marked(item):
        return (yield)


@pytest.fixture(scope="session", autouse=True)
def rank_pool(request):
    """Multi-rank jobs of the tests run in a pool of warm ranks (``OCNET_TEST_POOL`` ranks, 4 by
    default; 0: every job under an mpiexec of its own), started with the session when it has
    tests that may use it: most of a small job's time is its ranks importing torch."""
    pooled = any(item.get_closest_marker("mpi") and not item.get_closest_marker("processes")
                 for item in request.session.items)
    if launcher.mpiexec() is None or not pooled:
        yield None
        return
    from ocnet.runs.pool import Pool
    size = int(os.environ.get("OCNET_TEST_POOL", "4"))
    if size < 1:
        yield None
        return
    global _session_pool
    _session_pool = Pool(size, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}).start()  # ready by the first job
    launcher.use_pool(_session_pool)  # for the jobs of this test's later fixtures
    try:
        yield _session_pool
    finally:
        launcher.use_pool(None)
        _session_pool.close()
        _session_pool = None


@pytest.fixture(autouse=True)
def _figures(request, monkeypatch):
    """``ocnet.run.main`` in this process draws no figures unless the test is marked
    ``@pytest.mark.figures`` (the figures' own tests draw them from run directories)."""
    if request.node.get_closest_marker("figures") is None:
        import ocnet.run
        monkeypatch.setattr(ocnet.run, "draw", None)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: on tiny tensors threads only contend (several
    times slower on a loaded machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def device() -> torch.device:
    """The device the suite runs on: ``OCNET_TEST_DEVICE`` (default cpu)."""
    return torch.device(os.environ.get("OCNET_TEST_DEVICE", "cpu"))


def mpiexec() -> str:
    """The mpiexec beside this Python (the venv's mpich wheel), else the one on PATH."""
    found = launcher.mpiexec()
    if found is None:
        pytest.skip("no mpiexec available")
    return found


def run_mpi(n: int, *args: str, timeout: float = 120, env: dict | None = None,
            module: bool = False, plain: bool = False, plots: bool = False) -> subprocess.CompletedProcess:
    """Run ``python -m mpi4py SCRIPT args`` (or ``-m MODULE`` with ``module=True``) on ``n``
    ranks.  ``-m mpi4py`` turns an exception on one rank into MPI_Abort, and the timeout
    turns a deadlock into a failed test instead of a hung suite.  ``plain=True`` leaves
    ``-m mpi4py`` out, as a user's ``mpirun -n P python -m ocnet.run`` does.  A run of
    ``ocnet.run`` draws its figures only with ``plots=True`` (or a ``--plots`` of its own)."""
    mpiexec()
    if module and args[0] == "ocnet.run" and not plots and "--plots" not in args:
        args = (*args, "--plots", "none")
    cmd = [sys.executable] + ([] if plain else ["-m", "mpi4py"])
    cmd += ["-m", *args] if module else [str(MPI_SCRIPTS / args[0]), *args[1:]]
    try:
        return launcher.launch(n, cmd, timeout=timeout, cwd=ROOT,
                              env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})})
    except TimeoutError as e:
        pytest.fail(str(e))


@pytest.fixture
def mpi():
    return run_mpi

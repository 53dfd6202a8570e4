"""The pool of warm ranks runs a job as mpiexec would, and leaves nothing of it for the next."""
import sys
import textwrap
import time

import pytest

from ocnet.runs import launcher
from ocnet.runs.pool import Pool

PROBE = """
import os, sys
from mpi4py import MPI
import torch
comm = MPI.COMM_WORLD
total = comm.allreduce(comm.Get_rank() + 1)
for r in range(comm.Get_size()):  # in turn: mpiexec may cut lines written at once into pieces
    if r == comm.Get_rank():
        print(f"rank {r} of {comm.Get_size()} argv {sys.argv[1:]} cwd {os.getcwd()} "
              f"var {os.environ.get('OMP_NUM_THREADS')} dtype {torch.get_default_dtype()} sum {total}", flush=True)
    comm.Barrier()
"""

MESS = """
import os, signal, sys, warnings
import torch
from ocnet.ranks import store
from ocnet.solvers import SOLVERS
from ocnet.solvers.serial import Serial
os.environ["OCNET_LEFT"] = "1"
os.chdir("/")
torch.set_default_dtype(torch.float64)
torch.set_num_threads(2)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
warnings.simplefilter("error")
SOLVERS["left-behind"] = Serial
store.number_samples(1, 2)  # a module-level name of ocnet's
sys.path.insert(0, "/nowhere")
import helper_module
print("messed", helper_module.VALUE, flush=True)
"""

LOOK = """
import os, signal, sys, warnings
import torch
from ocnet.ranks import store
from ocnet.solvers import SOLVERS
print(os.environ.get("OCNET_LEFT"), store._NUMBERING, torch.get_default_dtype(), torch.get_num_threads(),
      signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, "left-behind" in SOLVERS, "/nowhere" in sys.path,
      "helper_module" in sys.modules, any(f[0] == "error" and f[2] is Warning for f in warnings.filters), flush=True)
"""


@pytest.fixture
def pool():
    with Pool(2, env={"OMP_NUM_THREADS": "1"}, warm=("ocnet.solvers",)) as p:
        yield p


def _launch(n, script, *args, timeout=60.0, env=None, cwd=None):
    return launcher.launch(n, [sys.executable, "-m", "mpi4py", str(script), *args], timeout=timeout,
                           env={"OMP_NUM_THREADS": "1", **(env or {})}, cwd=cwd)


@pytest.mark.mpi
def test_a_pooled_job_is_what_mpiexec_gives(pool, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    fresh = _launch(2, script, "a", "b c", cwd=tmp_path)
    previous = launcher.use_pool(pool)
    try:
        pooled = [_launch(n, script, "a", "b c", cwd=tmp_path) for n in (2, 1, 2)]
    finally:
        launcher.use_pool(previous)
    assert fresh.returncode == 0, fresh.stderr
    assert pool.jobs == 3 and pool.starts == 1  # one start, three jobs
    lines = sorted(fresh.stdout.splitlines())
    assert lines == [f"rank {r} of 2 argv ['a', 'b c'] cwd {tmp_path} var 1 dtype torch.float32 sum 3"
                     for r in range(2)]
    assert pooled[0].returncode == 0 and pooled[0].stdout.splitlines() == lines  # in rank order
    assert pooled[1].stdout == f"rank 0 of 1 argv ['a', 'b c'] cwd {tmp_path} var 1 dtype torch.float32 sum 1\n"
    assert pooled[2].stdout.splitlines() == lines


@pytest.mark.mpi
def test_the_next_job_finds_nothing_of_the_last(pool, tmp_path):
    (tmp_path / "helper_module.py").write_text("VALUE = 7\n")
    (tmp_path / "mess.py").write_text(MESS)
    (tmp_path / "look.py").write_text(LOOK)
    env = {"PYTHONPATH": str(tmp_path)}
    before = pool.launch(pool.task(2, [sys.executable, str(tmp_path / "look.py")], env, tmp_path), 60)
    messed = pool.launch(pool.task(2, [sys.executable, str(tmp_path / "mess.py")], env, tmp_path), 60)
    after = pool.launch(pool.task(2, [sys.executable, str(tmp_path / "look.py")], {}, tmp_path), 60)
    assert messed.stdout == "messed 7\n" * 2, messed.stderr
    assert before.stdout == "None (0, 1) torch.float32 1 False False False False False\n" * 2, before.stderr
    assert after.stdout == before.stdout, after.stderr
    assert pool.starts == 1


@pytest.mark.mpi
def test_exit_status_exceptions_and_hangs(pool, tmp_path):
    def job(body, n=2, timeout=60.0):
        script = tmp_path / "job.py"
        script.write_text(textwrap.dedent(body))
        return pool.launch(pool.task(n, [sys.executable, "-m", "mpi4py", str(script)], {}, tmp_path), timeout)

    exits = job("import sys\nfrom mpi4py import MPI\nsys.exit(3 + MPI.COMM_WORLD.Get_rank())")
    assert exits.returncode == 4 and pool.starts == 1  # the largest status; the ranks stay warm

    failed = job("""
        from mpi4py import MPI
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise ValueError("broken on one rank")
        MPI.COMM_WORLD.Barrier()
    """)
    assert failed.returncode != 0 and "ValueError: broken on one rank" in failed.stderr
    assert job("print('again', flush=True)", n=1).stdout == "again\n"
    assert pool.starts == 2  # the exception ended the ranks (as python -m mpi4py does); new ones ran the next job

    with pytest.raises(TimeoutError, match="hung") as hung:
        job("""
            import time
            def waits_for_ever():
                while True:
                    time.sleep(0.1)
            waits_for_ever()
        """, timeout=2)  # warm ranks reach the loop in milliseconds: the timeout is all the test waits
    assert "waits_for_ever" in str(hung.value)  # each rank's stack
    assert job("print('alive', flush=True)", n=1).stdout == "alive\n" and pool.starts == 3


def test_what_the_pool_leaves_to_mpiexec():
    p = Pool(2)
    py = sys.executable
    assert p.task(2, [py, "-m", "mpi4py", "x.py"], {"OMP_NUM_THREADS": "1"}, None)["argv"] == ["x.py"]
    run = [py, "-m", "ocnet.run", "--epochs", "1"]
    assert p.task(2, run, None, None)["argv"] == run[1:]
    assert p.task(3, [py, "x.py"], None, None) is None  # more ranks than the pool
    assert p.task(2, [py, "x.py"], {"OCNET_FAULT": "step:1:hang:3"}, None)["env"] == {"OCNET_FAULT": "step:1:hang:3"}
    assert p.task(2, [py, "x.py"], {"MALLOC_ARENA_MAX": "2"}, None) is None  # read as the process starts
    assert p.task(2, ["/bin/sh", "x.sh"], None, None) is None
    assert p.task(2, [py, "-c", "print(1)"], None, None) is None


@pytest.mark.mpi
def test_a_pool_that_cannot_start_leaves_every_job_to_mpiexec():
    p = Pool(2, warm=("no_such_module_anywhere",))
    task = p.task(1, [sys.executable, "x.py"], None, None)
    with pytest.raises(RuntimeError, match="(?s)did not start.*no_such_module_anywhere"):
        p.launch(task, 60)
    assert p.task(1, [sys.executable, "x.py"], None, None) is None
    p.close()


@pytest.mark.mpi
def test_the_ranks_leave_when_their_client_has_gone(tmp_path):
    """A client that dies without closing its pool (a killed pytest) leaves no ranks behind."""
    client = launcher.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from ocnet.runs.pool import Pool
        p = Pool(2, warm=()).start()
        p._start()  # until the ranks are ready
        print(p._proc.pid, flush=True)
        """)], timeout=120)
    assert client.returncode == 0, client.stderr
    pid = int(client.stdout.split()[-1])
    deadline = launcher.Stopwatch().start()
    while launcher._tree(pid, launcher._processes()) - {pid} or _running(pid):
        assert deadline.elapsed < 30, "the pool's ranks outlived their client"
        time.sleep(0.2)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

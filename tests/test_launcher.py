"""Deadlines that only a hang can miss: the quiet-machine clock, and a hung job's stacks."""
import os
import sys
import textwrap

import pytest

from ocnet.runs import launcher

pytestmark = pytest.mark.processes  # how jobs end: each under an mpiexec of its own


def table(job: int, others: int, root: int = 100) -> dict[int, tuple[int, bool]]:
    """A process table: ``root`` with a child mpiexec and ``job`` runnable ranks under it, and
    ``others`` runnable processes elsewhere, plus sleeping ones on both sides."""
    procs = {root: (1, False), root + 1: (root, False)}
    procs.update({root + 10 + i: (root + 1, True) for i in range(job)})
    procs.update({root + 50: (root + 1, False), 900: (1, False)})
    procs.update({1000 + i: (1, True) for i in range(others)})
    return procs


@pytest.mark.parametrize("cores,job,others,rate", [
    (2, 2, 0, 1.0),    # quiet: the wall clock
    (2, 1, 0, 1.0),
    (2, 2, 2, 0.5),    # as many busy processes beside the job: half speed
    (2, 2, 6, 0.25),
    (2, 8, 0, 1.0),    # the job's own oversubscription is its own time
    (2, 8, 8, 0.5),
    (4, 1, 2, 1.0),    # cores to spare
    (4, 2, 6, 0.5),
])
def test_the_quiet_clock_runs_at_the_share_the_job_gets(monkeypatch, cores, job, others, rate):
    now = [0.0]
    monkeypatch.setattr(launcher.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(launcher, "_processes", lambda: table(job, others))
    clock = launcher.QuietClock(100, cores=cores)
    now[0] = 10.0
    assert clock.tick() == pytest.approx(10.0 * rate)
    now[0] = 12.0
    assert clock.tick() == pytest.approx(12.0 * rate)


def test_the_tree_follows_children_across_sessions():
    procs = table(3, 2)
    assert launcher._tree(100, procs) == {100, 101, 110, 111, 112, 150}


def test_the_process_table_of_this_machine_holds_this_process():
    procs = launcher._processes()
    if not procs:
        pytest.skip("no /proc")
    assert procs[os.getpid()][0] == os.getppid()
    assert os.getpid() in launcher._tree(os.getppid(), procs)


def test_a_command_runs_like_subprocess_run(tmp_path):
    proc = launcher.run([sys.executable, "-c", "import sys; print(input()); sys.exit(3)"], timeout=60,
                        input="hello\n", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (3, "hello\n")


@pytest.mark.mpi
def test_a_hung_job_fails_with_each_ranks_stack(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent("""
        import time
        def waits_for_ever():
            time.sleep(3600)
        waits_for_ever()
    """))
    with pytest.raises(TimeoutError) as info:
        launcher.launch(2, [sys.executable, str(script)], timeout=2)
    message = str(info.value)
    assert "did not finish within 2 s of a quiet machine's time" in message
    assert message.count("in waits_for_ever") == 2, message  # both ranks' stacks
    assert not [pid for pid, _ in launcher._processes().items() if _cmdline(pid).endswith(str(script))]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""

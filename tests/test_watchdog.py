"""The stall watchdog, dead peers, and the lines that say why a job ended."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocnet.ranks.watchdog import Progress, Watchdog, process_end, ranks_text, summary
from ocnet.runs import launcher
from ocnet.runs.launcher import Stopwatch, run

pytestmark = pytest.mark.processes  # how jobs end: each under an mpiexec of its own

SCRIPTS = Path(__file__).resolve().parent / "mpi"
ROOT = SCRIPTS.parents[1]
ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
# where watchdog_pipeline.py hangs
HANG = next(f"mpi/watchdog_pipeline.py:{i} in <module>" for i, line in
            enumerate((SCRIPTS / "watchdog_pipeline.py").read_text().splitlines(), 1) if "time.sleep(1)" in line)


def _status(where="epoch 0, step 3", waiting=None, idle=5.0, dead=None):
    return {"where": where, "waiting": waiting, "idle": idle, "dead": dead}


def test_ranks_text():
    assert ranks_text([1]) == "rank 1"
    assert ranks_text([3, 2]) == "ranks 2, 3"
    assert ranks_text([0, 2, 3, 4, 6, 7]) == "ranks 0, 2-4, 6, 7"


def test_summary_names_the_stuck_rank_first_and_groups_the_waiting_ones():
    statuses = {0: _status(waiting=("recv", 1, 11)), 1: {**_status(), "line": "ocnet/runs/faults.py:81 in inject"},
                2: _status(waiting=("allreduce",)), 3: _status(waiting=("allreduce",))}
    assert summary(statuses, 5, 5.0) == (
        "ocnet: error: no progress for 5 s in epoch 0, step 3: "
        "rank 1 is stuck (not communicating, at ocnet/runs/faults.py:81 in inject); "
        "rank 4 did not answer (frozen, or in a call that holds the interpreter); "
        "rank 0 waits for a message from rank 1 (tag 11); ranks 2, 3 wait in allreduce")


def test_summary_labels_each_rank_when_they_are_at_different_places():
    statuses = {0: _status(where="evaluation of epoch 0", waiting=("bcast", 1)),
                1: _status(where="epoch 1, step 0", waiting=("send", 0, 12)), 2: _status(where=None, idle=1.2)}
    assert summary(statuses, 3, 600) == (
        "ocnet: error: no progress for 600 s: rank 2 is computing (last progress 1 s ago); "
        "rank 0 waits in bcast from rank 1 in evaluation of epoch 0; "
        "rank 1 waits for rank 0 to receive a message (tag 12) in epoch 1, step 0")


def test_summary_of_a_dead_rank():
    statuses = {0: _status(waiting=("recv", 1, 12), dead=(1, "died (killed by SIGKILL)")),
                2: _status(waiting=("recv", 1, 11), dead=(1, "died (killed by SIGKILL)")),
                3: _status(waiting=("recv", 2, 11), idle=1.0)}
    assert summary(statuses, 4, 600, peers=[("h", 10), ("h", 11), ("h", 12), ("h", 13)]) == (
        "ocnet: error: rank 1 (pid 11) died (killed by SIGKILL) while ranks 0, 2 waited for it; "
        "rank 3 waits for a message from rank 2 (tag 11)")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_process_end_reads_how_a_process_ended():
    killed = subprocess.Popen(["sleep", "60"])
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    try:
        assert process_end(killed.pid) is None
        killed.kill()
        deadline = time.monotonic() + 10
        while (process_end(killed.pid) is None or process_end(exited.pid) is None) and time.monotonic() < deadline:
            time.sleep(0.01)
        # not yet collected by their parent: zombies that keep their wait status
        assert process_end(killed.pid) == "died (killed by SIGKILL)"
        assert process_end(exited.pid) == "exited (status 3)"
    finally:
        killed.wait()
        exited.wait()
    assert process_end(killed.pid) == "ended"


def test_progress_keeps_a_watchdog_quiet_and_a_stall_ends_it(capfd):
    """One process (no channel): ticks every 0.1 s for 1 s never trip a 0.3 s timeout; then
    silence does, once, with the rank's label."""
    progress, aborted = Progress(), []
    dog = Watchdog(progress, 0.3, 0, 1, None, aborted.append)
    dog.start()
    try:
        for step in range(10):
            progress.where = f"epoch 0, step {step}"
            progress.ticks += 1
            time.sleep(0.1)
        assert aborted == []
        deadline = time.monotonic() + 5
        while not aborted and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dog.stop()
    assert aborted == [1]
    assert re.fullmatch(r"ocnet: error: no progress for 0.3 s in epoch 0, step 9: rank 0 is stuck "
                        r"\(not communicating, at tests/test_watchdog.py:\d+ in test_progress_\w+\)\n",
                        capfd.readouterr().err)


def _launch(n, script, *args, timeout=60.0):
    if launcher.mpiexec() is None:
        pytest.skip("no mpiexec available")
    try:
        return launcher.launch(n, [sys.executable, str(SCRIPTS / script), *args], timeout=timeout,
                              env=ENV, cwd=ROOT)
    except TimeoutError as e:
        pytest.fail(str(e))


def _stopped_at(stderr):
    return float(re.search(r"stops at ([0-9.]+)", stderr).group(1))


@pytest.mark.parametrize("ranks,mode,culprit,expected", [
    (4, "hang", 1, f"no progress for 3 s in epoch 0, step 3: rank 1 is stuck (not communicating, at {HANG}); "
                   "rank 0 waits for a message from rank 1 (tag 12); rank 2 waits for a message from rank 1 (tag 11); "
                   "rank 3 waits for a message from rank 2 (tag 11)"),
    (2, "hang", 0, f"no progress for 3 s in epoch 0, step 3: rank 0 is stuck (not communicating, at {HANG}); "
                   "rank 1 waits for a message from rank 0 (tag 11)"),
    # rank 0's watchdog cannot run: rank 1 ends the job in its place
    (3, "hold", 0, "no progress for 3 s in epoch 0, step 3: rank 0 did not answer (frozen, or in a call that "
                   "holds the interpreter); rank 1 waits for a message from rank 0 (tag 11); "
                   "rank 2 waits for a message from rank 1 (tag 11)"),
])
@pytest.mark.mpi
def test_a_stall_ends_the_job_with_one_line(ranks, mode, culprit, expected):
    proc = _launch(ranks, "watchdog_pipeline.py", "3", mode, str(culprit))
    ended = time.time()
    assert proc.returncode != 0
    assert proc.stderr.count("ocnet: error:") == 1, proc.stderr
    assert f"ocnet: error: {expected}\n" in proc.stderr, proc.stderr
    assert ended - _stopped_at(proc.stderr) <= 3 + 10
    assert "done" not in proc.stdout


@pytest.mark.mpi
def test_no_false_alarm_while_every_wait_is_shorter_than_the_timeout():
    """Rank 0 computes 0.6 x 1 s before each of 6 steps while rank 1 waits: the run
    outlives the timeout three times over and finishes."""
    t = time.perf_counter()
    proc = _launch(2, "watchdog_pipeline.py", "1", "slow", "0")
    assert proc.returncode == 0, proc.stderr
    assert "ocnet:" not in proc.stderr
    assert proc.stdout.count("done") == 2
    assert time.perf_counter() - t > 3 * 1


@pytest.mark.mpi
def test_a_dead_peer_is_named_without_waiting_for_the_timeout():
    """A launcher that leaves the job running when a rank is killed: the ranks that wait
    for it notice within seconds.  (hydra's -disable-auto-cleanup does not keep the others
    alive in every MPICH version: slow_reaper.py stands between the launcher and the rank.)"""
    proc = _launch(3, "slow_reaper.py", sys.executable, str(SCRIPTS / "watchdog_pipeline.py"), "600", "kill", "1")
    ended = time.time()
    assert proc.returncode != 0
    line = re.search(r"ocnet: error: .*", proc.stderr)
    assert line is not None, proc.stderr
    assert re.fullmatch(r"ocnet: error: rank 1 \(pid \d+\) died \(killed by SIGKILL\) while ranks 0, 2 waited for it",
                        line.group(0)), line.group(0)
    assert proc.stderr.count("ocnet: error:") == 1
    assert ended - _stopped_at(proc.stderr) <= 10


def test_one_process_reports_a_stall_too():
    watch = Stopwatch().start()
    proc = run([sys.executable, str(SCRIPTS / "watchdog_pipeline.py"), "1", "hang", "0"], timeout=60, cwd=ROOT,
               env=ENV)
    assert proc.returncode == 1
    assert proc.stderr.endswith("ocnet: error: no progress for 1 s in epoch 0, step 3: "
                                f"rank 0 is stuck (not communicating, at {HANG})\n"), proc.stderr
    assert watch.stop() < 30


@pytest.mark.mpi
def test_an_exception_gets_its_line_out_even_without_sys_stderr():
    proc = _launch(3, "signal_crash.py", "raise", "1")
    assert proc.returncode != 0
    assert proc.stderr.count("ocnet: rank 1 failed: RuntimeError: boom at step 3\n") == 1, proc.stderr


@pytest.mark.mpi
def test_a_segmentation_fault_shows_the_python_stack():
    proc = _launch(2, "signal_crash.py", "segv", "1")
    assert proc.returncode != 0
    assert "Fatal Python error: Segmentation fault" in proc.stderr, proc.stderr
    assert 'signal_crash.py", line' in proc.stderr
    assert "Segmentation fault (signal 11)" in proc.stdout  # hydra's own report, with the pid


@pytest.mark.mpi
def test_ctrl_c_at_mpiexec_ends_the_job_with_one_line():
    """hydra forwards SIGINT to every rank: one of them (rank 0) says so."""
    exe = launcher.mpiexec()
    if exe is None:
        pytest.skip("no mpiexec available")
    cmd = [exe, "-n", "3", sys.executable, str(SCRIPTS / "signal_crash.py"), "loop", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **ENV}, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "running\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode != 0
    assert err.count("failed: KeyboardInterrupt") == 1, err
    assert "ocnet: rank 0 failed: KeyboardInterrupt\n" in err

"""However a job ends, it says so in one line: a rank that leaves before the job has finished
(``os._exit``, ``SystemExit`` of any status), a rank killed by a signal, a signal while rank 0
writes the run's files — through the supervisor of each rank (``ocnet.ranks.supervisor``) that
``python -m ocnet.run`` starts, and with no MPICH notes after a stop."""
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ocnet.ranks import supervisor
from ocnet.ranks.supervisor import clean, verdict
from ocnet.run import main
from ocnet.runs.job import EXIT_SETUP
from ocnet.runs.launcher import Stopwatch, mpiexec
from ocnet.solvers import SOLVERS
from ocnet.solvers.serial import Serial

pytestmark = pytest.mark.processes  # how jobs end: each under an mpiexec of its own

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--layers", "4", "--width", "8", "--quiet", "--timeline-steps", "0", "--limit-batches", "2"]
PID = r"\(pid \d+\)"
# the launcher's own report of a rank it saw die (MPICH's banner), which the supervisor replaces
BANNER = "BAD TERMINATION"
# What MPICH's mpiexec may report instead of the status of the rank that ended the job: the
# other ranks it kills it sometimes reaps before their output has closed, and then reports one
# of them as killed by SIGKILL, with its banner (plain MPI programs of 3 or more ranks meet the
# same race in its clean-up).
CLEAN_UP_RACE = 9


def _exited(code):
    return code << 8


def _killed(signum):
    return signum


# -- the supervisor's verdict and its filter ----------------------------------------------------
@pytest.mark.parametrize("status,state,code,place,line,exit_status", [
    # ended as the job came to: nothing to add
    (_exited(0), 3, 0, "in epoch 0, step 3", None, 0),
    (_exited(2), 3, 2, "during set-up", None, 2),
    # said why, then aborted
    (_exited(1), 2, 0, "in epoch 0, step 3", None, 1),
    # left before the job finished, whatever its status
    (_exited(0), 1, 0, "during set-up", "exited with status 0 during set-up, before the job finished", 1),
    (_exited(4), 1, 0, "in epoch 1, step 7", "exited with status 4 in epoch 1, step 7, before the job finished", 4),
    (_exited(0), 0, 0, "", "exited with status 0 while starting, before the job finished", 1),
    # killed
    (_killed(9), 1, 0, "in epoch 0, step 3", "was killed by SIGKILL in epoch 0, step 3", 137),
    (_killed(15), 1, 0, "while writing the model, summary and figures",
     "was killed by SIGTERM while writing the model, summary and figures", 143),
    (_killed(15), 3, 0, "in epoch 0, step 3", "was killed by SIGTERM after the job had finished on it", 143),
    (_exited(5), 3, 0, "in epoch 0, step 3", "exited with status 5 after the job had finished on it", 5),
])
def test_verdict(status, state, code, place, line, exit_status):
    got_line, got_status = verdict(status, state, code, place, 3, 4242)
    assert got_status == exit_status
    assert got_line == (None if line is None else f"ocnet: error: rank 3 (pid 4242) {line}")


NOTE = b"MPICH: Builtin communicator 44000000 has pending 1 references.\n"


@pytest.mark.parametrize("chunks,expected", [
    ([b"a\n" + NOTE + b"b\n"], b"a\nb\n"),
    ([NOTE, NOTE], b""),
    ([NOTE[:9], NOTE[9:] + b"c"], b"c"),  # a note split across reads
    ([b"MPICH: something else\n"], b"MPICH: something else\n"),
    ([b"x MPICH: Builtin communicator 44000000 has pending 1 references.\n"],  # not at a line's start
     b"x MPICH: Builtin communicator 44000000 has pending 1 references.\n"),
    ([b"\rstep 3", b" loss 2.3"], b"\rstep 3 loss 2.3"),  # a progress bar passes at once
    ([b"M"], b""),  # might become a note: held back until the line ends (or the pipe closes)
])
def test_the_relay_leaves_out_mpich_notes(chunks, expected):
    out, held, start = [], b"", True
    for chunk in chunks:
        text, held, start = clean(held + chunk, start)
        out.append(text)
    assert b"".join(out) == expected


def test_without_a_supervisor_the_notes_cost_nothing():
    assert not supervisor.supervised()  # this process: nothing is written anywhere
    supervisor.note("in epoch 0, step 1")
    supervisor.reported()
    assert supervisor.finished(3) == 3


# -- SystemExit, on one process ------------------------------------------------------------------
class _Exiting(Serial):
    """Serial, but its second step raises SystemExit(CODE)."""

    name = "test-exiting"
    code = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, x, y, index):
        self.steps += 1
        if self.steps == 2:
            raise SystemExit(self.code)
        return super().step(x, y, index)


@pytest.mark.parametrize("code,status", [(0, 1), (5, 5)])
def test_system_exit_in_a_step_is_a_failure_with_one_line(tmp_path, capsys, monkeypatch, code, status):
    monkeypatch.setitem(SOLVERS, _Exiting.name, _Exiting)
    monkeypatch.setattr(_Exiting, "code", code)
    out = tmp_path / "run"
    assert main(["--out", str(out), "--solver", _Exiting.name, "--epochs", "2", *TINY]) == status
    err = capsys.readouterr().err
    assert re.fullmatch(rf"ocnet: error: rank 0 {PID} raised SystemExit\({code}\) in epoch 0, step 2, "
                        r"before the job finished\n", err), err
    assert not (out / "summary.json").exists()


def test_system_exit_during_set_up_is_a_set_up_error(tmp_path, capsys):
    plugin = tmp_path / "leaving.py"
    plugin.write_text("raise SystemExit(0)\n")
    assert main(["--out", str(tmp_path / "run"), "--plugin", str(plugin), *TINY]) == EXIT_SETUP
    assert capsys.readouterr().err == \
        "ocnet: error: raised SystemExit(0) during set-up (a plug-in that exits?)\n"
    assert not (tmp_path / "run").exists()


# -- whole jobs ---------------------------------------------------------------------------------
def _lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("ocnet:")]


def _ended_with(proc, status):
    """The job's exit status is ``status`` without mpiexec's banner, or mpiexec's clean-up race."""
    assert proc.returncode in (status, CLEAN_UP_RACE), proc.stderr
    if proc.returncode == status:
        assert BANNER not in proc.stdout, proc.stdout


def test_one_process_killed_says_so(tmp_path):
    """Without a launcher the supervisor runs too (and passes the terminal through)."""
    proc = subprocess.run([sys.executable, "-m", "ocnet.run", "--out", str(tmp_path / "run"), "--epochs", "1", *TINY],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "OCNET_FAULT": "step:0:kill:2"})
    assert proc.returncode == 128 + signal.SIGKILL
    assert re.fullmatch(rf"ocnet: error: rank 0 {PID} was killed by SIGKILL in epoch 0, step 2\n", proc.stderr), \
        proc.stderr


@pytest.mark.mpi
def test_a_rank_that_leaves_while_starting_fails_the_job(mpi, tmp_path):
    """A plug-in that calls os._exit(0) on rank 1 while it is imported: MPICH's mpiexec would
    end the job with status 0 and no word."""
    plugin = tmp_path / "leaving.py"
    plugin.write_text("import os\nfrom ocnet.ranks import supervisor\n"
                      "if supervisor.launched_rank() == 1:\n    os._exit(0)\n")
    proc = mpi(2, "ocnet.run", "--out", str(tmp_path / "run"), "--plugin", str(plugin), *TINY, module=True,
               plain=True, timeout=120)
    _ended_with(proc, 1)
    assert len(_lines(proc.stderr)) == 1, proc.stderr
    assert re.search(rf"^ocnet: error: rank 1 {PID} exited with status 0 during set-up, before the job finished$",
                     proc.stderr, re.M), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.mpi
def test_system_exit_on_one_rank_ends_the_job_at_once(mpi, tmp_path):
    """SystemExit(0) in rank 1's second step: the job ends at once, not after the stall
    timeout (600 s) with rank 1 taken for a frozen one."""
    plugin = tmp_path / "exiting.py"
    plugin.write_text(
        "from ocnet import register\nfrom ocnet.solvers.serial import Serial\n\n"
        "@register\nclass Exiting(Serial):\n    name = 'exiting'\n    steps = 0\n\n"
        "    def step(self, x, y, index):\n        Exiting.steps += 1\n"
        "        if self.comm.rank == 1 and Exiting.steps == 2:\n            raise SystemExit(0)\n"
        "        return super().step(x, y, index)\n")
    with Stopwatch() as watch:
        proc = mpi(2, "ocnet.run", "--out", str(tmp_path / "run"), "--plugin", str(plugin), "--solver", "exiting",
                   "--epochs", "1", *TINY, module=True, plain=True, timeout=300)
    _ended_with(proc, 1)
    assert watch.elapsed < 60, f"{watch.elapsed:.0f} s on a quiet machine, start-up included"
    assert len(_lines(proc.stderr)) == 1, proc.stderr
    assert re.search(rf"^ocnet: error: rank 1 {PID} raised SystemExit\(0\) in epoch 0, step 2, "
                     r"before the job finished$", proc.stderr, re.M), proc.stderr
    assert "did not answer" not in proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("fault,status,line", [
    ("step:1:kill:2", 128 + signal.SIGKILL, "rank 1 {pid} was killed by SIGKILL in epoch 0, step 2"),
    ("finish:0:term", 128 + signal.SIGTERM,
     "rank 0 {pid} was killed by SIGTERM while writing the model, summary and figures"),
])
def test_a_rank_killed_by_a_signal_is_named(mpi, tmp_path, fault, status, line):
    proc = mpi(2, "ocnet.run", "--out", str(tmp_path / "run"), "--epochs", "1", *TINY, module=True, plain=True,
               timeout=120, env={"OCNET_FAULT": fault})
    _ended_with(proc, status)
    assert len(_lines(proc.stderr)) == 1, proc.stderr
    assert re.search("^ocnet: error: " + line.format(pid=PID) + "$", proc.stderr, re.M), proc.stderr
    assert "MPICH" not in proc.stderr


@pytest.mark.mpi
def test_a_stop_leaves_no_mpich_notes(mpi, tmp_path):
    """A stop by SIGTERM completes the step check every rank had posted, so that
    MPI_Finalize has no pending reference to report: even without the supervisor's filter."""
    proc = mpi(2, "ocnet.run", "--out", str(tmp_path / "run"), "--epochs", "2", *TINY, module=True, plain=True,
               timeout=120, env={"OCNET_FAULT": "step:1:term:1", "OCNET_SUPERVISOR": "0"})
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
    assert _lines(proc.stderr) == proc.stderr.splitlines(), proc.stderr
    assert len(_lines(proc.stderr)) == 1 and "stopped by SIGTERM at epoch 0, step 2" in proc.stderr


@pytest.mark.mpi
def test_ctrl_c_at_mpiexec_reaches_the_workers(tmp_path):
    """mpiexec passes Ctrl-C to the processes it started, the supervisors; they pass it on."""
    exe = mpiexec()
    if exe is None:
        pytest.skip("no mpiexec available")
    out = tmp_path / "run"
    cmd = [exe, "-n", "2", sys.executable, "-m", "ocnet.run", "--out", str(out), "--epochs", "1000",
           "--layers", "4", "--width", "8", "--timeline-steps", "0", "--limit-batches", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            start_new_session=True)
    hung = threading.Timer(600, os.killpg, (proc.pid, signal.SIGKILL))  # a start-up that hangs fails
    hung.start()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        while line and not line.startswith("epoch 2/"):  # training, past the first epoch
            line = proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        hung.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert len(_lines(err)) == 1 and "ocnet: stopped by SIGINT at epoch " in err, err
    assert "ocnet: error" not in err


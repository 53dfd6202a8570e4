"""One job per run directory: the claim (two jobs into one directory, a resume of a live job,
a stale claim, a claim from another host, no flock), --out checked before set-up, --overwrite
removing only ocnet's files, and how a job ends on a full disk, a second signal, Ctrl-C while
starting; plotting a run in progress; ``~`` in paths."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ocnet.results.plot import main as plot_main
from ocnet.results.plot import plot_runs
from ocnet.run import main
from ocnet.runs import claim, directory, launcher
from ocnet.runs.config import resolve
from ocnet.runs.job import EXIT_SETUP, EXIT_WRITE
from ocnet.runs.launcher import mpiexec
from ocnet.runs.train import Interrupt

ROOT = Path(__file__).resolve().parents[1]
# No figures: no assertion here looks at them, and drawing them is seconds of matplotlib per job.
TINY = ["--layers", "4", "--width", "8", "--quiet", "--timeline-steps", "0", "--limit-batches", "2", "--plots", "none"]
TIMEOUT = 300  # catches a hang; no assertion depends on how fast the machine is


# -- jobs started side by side ------------------------------------------------------------------
def start(ranks: int, *args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    """``mpiexec -n ranks python -m ocnet.run ARGS``, as a user starts a job, not waited for, in
    a session of its own."""
    exe = mpiexec()
    if exe is None:
        pytest.skip("no mpiexec available")
    cmd = [exe, "-n", str(ranks), sys.executable, "-m", "ocnet.run", *args]
    base = {k: v for k, v in os.environ.items() if k != "OCNET_FAULT"}
    env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{proc.args} did not finish in {timeout} s (a hang?)\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(ranks: int, *args: str, **kw) -> subprocess.CompletedProcess:
    return finish(start(ranks, *args, **kw))


def pooled(ranks: int, *args: str) -> subprocess.CompletedProcess:
    """``mpiexec -n ranks python -m ocnet.run ARGS`` waited for, in the pool of warm ranks where
    the suite has one: for the jobs whose processes are not what a test studies (a resume after
    the fault), which then cost no start of their own."""
    try:
        return launcher.launch(ranks, [sys.executable, "-m", "ocnet.run", *args], timeout=TIMEOUT, cwd=ROOT,
                               env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    except TimeoutError as e:
        pytest.fail(str(e))


def wait_for(ready, proc: subprocess.Popen, what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``ready()`` until it holds; fail if ``proc`` ends first."""
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the job ended ({proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.02)


def _latest(out: Path) -> dict | None:
    try:
        return json.loads((out / "checkpoints" / "latest.json").read_text())
    except (OSError, ValueError):
        return None


def _epochs(out: Path) -> list[int]:
    return [r["epoch"] for r in map(json.loads, (out / "history.jsonl").read_text().splitlines())
            if r["kind"] == "epoch"]


def _one_error(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("ocnet:")]
    assert len(lines) == 1 and "Traceback" not in stderr and "failed:" not in stderr, stderr
    return lines[0]


# -- 1. two jobs into one run directory -----------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("offset", ["together", "once the first has claimed"])
def test_two_new_runs_into_one_out_keep_one_whole_run(tmp_path, offset):
    """The issue's reproduction: of two jobs into one --out, started at the same moment or while
    the first is still setting up, one runs and the other stops before set-up with exit 2; the
    directory holds the one run, none of the other's files."""
    out = tmp_path / "d"
    flags = [*TINY, "--checkpoint-every", "1", "--out", str(out)]
    first = start(1, *flags, "--seed", "4", "--epochs", "3")
    if offset != "together":  # the claim is the first thing a job writes: set-up comes after it
        wait_for(lambda: (out / claim.NAME).exists(), first, "the first job's claim")
    second = start(1, *flags, "--seed", "3", "--epochs", "2")
    a, b = finish(first), finish(second)
    assert sorted([a.returncode, b.returncode]) == [0, EXIT_SETUP], (a.stderr, b.stderr)
    won, lost = (a, b) if a.returncode == 0 else (b, a)
    if offset != "together":
        assert won is a
    line = _one_error(lost.stderr)
    assert f"run directory {out} is in use by the job on host {socket.gethostname()}, pid " in line \
        or f"run directory {out} is not empty" in line, line  # (the first may be done already)
    seed, epochs = (4, 3) if won is a else (3, 2)
    assert f"seed = {seed}\n" in (out / "config.toml").read_text()
    assert _epochs(out) == list(range(epochs))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        [*(f"epoch_{e:04d}" for e in range(epochs)), "latest.json"]
    assert _latest(out)["epoch"] == epochs - 1
    assert not (out / claim.NAME).exists()  # released when the job ended


@pytest.mark.mpi
def test_two_jobs_without_out_take_the_next_free_names(tmp_path):
    """Two jobs started together on 2 ranks each: runs/…-P2 and runs/…-P2-2, one run each."""
    jobs = [start(2, *TINY, "--epochs", "1", cwd=tmp_path) for _ in range(2)]
    done = [finish(p) for p in jobs]
    assert [p.returncode for p in done] == [0, 0], [p.stderr for p in done]
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["digits-serial-P2", "digits-serial-P2-2"]
    assert sorted(p.stdout.split("-> ")[-1].strip() for p in done) == \
        ["runs/digits-serial-P2", "runs/digits-serial-P2-2"]
    for d in runs.iterdir():
        assert _epochs(d) == [0] and not (d / claim.NAME).exists()


# -- 2. resume takes the same claim ---------------------------------------------------------------
@pytest.mark.mpi
def test_a_resume_of_a_live_job_is_refused_and_works_once_it_is_killed(tmp_path):
    """A job that hangs in epoch 2 (its checkpoint of epoch 1 written) is alive: a resume is
    refused with exit 2 and deletes nothing of what the live job may be writing.  After the
    job is killed with SIGKILL (its claim file left behind) the same resume command runs."""
    out = tmp_path / "d"
    flags = [*TINY, "--checkpoint-every", "1", "--epochs", "4"]
    live = start(1, *flags, "--out", str(out), env={"OCNET_FAULT": "step:0:hang:5"})
    wait_for(lambda: (_latest(out) or {}).get("epoch") == 1, live, "the checkpoint of epoch 1")
    # what a live job writes at this moment: a temporary file, a checkpoint not yet complete
    writing = [out / ".history.jsonl.0123456789ab.tmp", out / "checkpoints" / "epoch_0002_batch_00001"]
    writing[0].write_text("half")
    writing[1].mkdir()
    resume = ["--resume", str(out), *flags]
    rank = json.loads((out / claim.NAME).read_text())["pid"]  # the job's rank 0, which claimed
    refused = pooled(1, *resume)
    assert refused.returncode == EXIT_SETUP
    line = _one_error(refused.stderr)
    assert f"run directory {out} is in use by the job on host {socket.gethostname()}, pid {rank}, " \
           "started at " in line, line
    assert all(p.exists() for p in writing)  # the clean-up runs only under the claim
    os.kill(rank, signal.SIGKILL)
    finish(live)  # mpiexec ends the job
    assert (out / claim.NAME).exists()  # a stale claim: its flock went with the process
    resumed = pooled(1, *resume)
    assert resumed.returncode == 0, resumed.stderr
    assert not any(p.exists() for p in writing)  # leftovers of the killed job, cleaned under the claim
    assert _epochs(out) == [0, 1, 2, 3] and not (out / claim.NAME).exists()


# -- 3. --out checked before set-up -----------------------------------------------------------------
@pytest.mark.parametrize("case", ["under a file", "dangling link", "a file"])
def test_an_out_that_cannot_be_made_stops_before_set_up(tmp_path, capsys, case):
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    out, message = {
        "under a file": (tmp_path / "file" / "run", f"cannot create --out {tmp_path}/file/run: "
                                                    f"{tmp_path}/file is a file, not a directory"),
        "dangling link": (tmp_path / "link", f"--out {tmp_path}/link is a symbolic link to {tmp_path}/nowhere, "
                                             "which does not exist"),
        "a file": (tmp_path / "file", f"--out {tmp_path}/file is a file, not a directory"),
    }[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*TINY, "--out", str(out)]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.mpi
def test_an_out_under_a_file_gives_one_line_on_two_ranks(tmp_path):
    """At P = 2: exit 2 with one line, no rank failure, no MPI_Abort.  Rank 1 would hang at
    the set-up step after the run directory's: the check comes before it."""
    (tmp_path / "file").write_text("x")
    proc = run(2, *TINY, "--out", str(tmp_path / "file" / "run"), env={"OCNET_FAULT": "setup:1:hang:3"})
    assert proc.returncode == EXIT_SETUP
    line = _one_error(proc.stderr)  # the job's error, not one of rank 0's own ("rank 0: …")
    assert line == f"ocnet: error: cannot create --out {tmp_path}/file/run: {tmp_path}/file is a file, not a directory"
    assert "MPI_Abort" not in proc.stderr + proc.stdout


def _unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.mpi
@pytest.mark.skipif(not shutil.which("unshare") or not _unshare(), reason="needs unshare -m (a mount namespace)")
def test_an_out_on_a_read_only_file_system_stops_before_set_up(tmp_path):
    """A read-only tmpfs mounted in a mount namespace of the test's own: a new --out under it and
    the existing empty directory itself both give one line and exit 2."""
    if mpiexec() is None:
        pytest.skip("no mpiexec available")
    ro = tmp_path / "ro"
    ro.mkdir()
    job = f"{mpiexec()} -n 1 {sys.executable} -m ocnet.run {' '.join(TINY)} --out"
    script = (f"mount -t tmpfs -o ro tmpfs {ro} || exit 99; "
              f"{job} {ro}/new; echo rc=$?; {job} {ro}; echo rc=$?")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    if proc.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    assert proc.stdout.split() == ["rc=2", "rc=2"], proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"ocnet: error: cannot create --out {ro}/new: {ro} is on a read-only file system",
                     f"ocnet: error: cannot write in --out {ro}: {ro} is on a read-only file system"], proc.stderr


# -- 4. --overwrite removes only what ocnet wrote ---------------------------------------------------
def test_overwrite_keeps_the_users_files(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "2", "--checkpoint-every", "1", "--out", str(out)]) == 0
    plot_runs([out])  # the figures, as python -m ocnet.run draws them
    mine = {"figure.png": b"\x89PNG mine", "settings.toml": b"a = 1\n", "log.jsonl": b"{}\n", "notes.txt": b"x"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    (out / ".history.jsonl.0123456789ab.tmp").write_text("an interrupted write")
    assert main([*TINY, "--epochs", "1", "--overwrite", "--out", str(out)]) == 0
    assert {name: (out / name).read_bytes() for name in mine} == mine
    assert _epochs(out) == [0] and not (out / "checkpoints").exists()
    assert not (out / ".history.jsonl.0123456789ab.tmp").exists()


def test_overwrite_removes_every_figure_ocnet_draws(tmp_path):
    """Each figure one run can have (MGRIT, penalty, accuracy control, bytes, timeline) is in
    directory.FIGURES, so that --overwrite removes it."""
    from test_plot import mgrit_extra, penalty_extra, write_run
    d = write_run(tmp_path, "all", solver="mgrit",
                  extra=lambda s: {**mgrit_extra(s), **penalty_extra(s), "inexactness": 0.1})
    drawn = {p.name for p in plot_runs([d])}
    assert drawn <= {f"{f}.png" for f in directory.FIGURES}, drawn
    assert len(drawn) >= 5
    (d / "mine.png").write_bytes(b"mine")
    directory.remove_run_files(d)
    assert sorted(p.name for p in d.iterdir()) == ["mine.png"]


# -- 5. the minor findings --------------------------------------------------------------------------
@pytest.mark.mpi
def test_a_full_disk_at_a_checkpoint_ends_with_one_line(tmp_path):
    """ENOSPC on rank 1's shard of the epoch-1 checkpoint: one line naming the file, the free
    space and the resume command, exit 1; the epoch-0 checkpoint stays the newest and resumes."""
    out = tmp_path / "run"
    flags = [*TINY, "--checkpoint-every", "1", "--epochs", "3"]
    proc = run(2, *flags, "--out", str(out), env={"OCNET_FAULT": "checkpoint:1:nospace:2"})
    assert proc.returncode == EXIT_WRITE
    line = _one_error(proc.stderr)
    shard = out / "checkpoints" / "epoch_0001" / "rank_001.pt"
    assert line.startswith(f"ocnet: error: cannot write {shard}: No space left on device ("), line
    assert " free there); the checkpoint after epoch 0 is kept; once there is room, continue with: " \
           f"mpirun -n 2 python -m ocnet.run --resume {out}" in line, line
    assert _latest(out)["epoch"] == 0 and not (out / "checkpoints" / "epoch_0001").exists()
    resumed = pooled(2, "--resume", str(out), *flags)
    assert resumed.returncode == 0, resumed.stderr
    assert _epochs(out) == [0, 1, 2]


@pytest.mark.mpi
def test_a_second_signal_during_the_stop_checkpoint_changes_nothing(tmp_path):
    """SIGTERM on rank 1 in its 4th step, then SIGINT while rank 1 writes the stop checkpoint's
    shard: exit 143 as for SIGTERM alone, no traceback, the checkpoint intact."""
    out = tmp_path / "run"
    flags = [*TINY, "--epochs", "3"]
    proc = run(2, *flags, "--out", str(out), env={"OCNET_FAULT": "step:1:term:4,checkpoint:1:int"})
    assert proc.returncode == 143, proc.stderr
    assert "ocnet: stopped by SIGTERM at epoch 1, step 4 (batch 2 of 2) with a checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr
    assert (_latest(out)["epoch"], _latest(out)["batch"]) == (1, 2)
    resumed = pooled(2, "--resume", str(out), *flags)
    assert resumed.returncode == 0, resumed.stderr


def test_a_second_signal_within_a_second_is_the_same_request():
    """SIGTERM, then SIGINT 10 ms later: the loop stops for SIGTERM.  While the stop checkpoint
    is written any signal is ignored; otherwise a later second one stops at once."""
    with Interrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert interrupt.signum == signal.SIGTERM
        interrupt._at -= 2.0  # as if the first came two seconds ago
        interrupt.finishing = True
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        interrupt.finishing = False
        with pytest.raises(KeyboardInterrupt, match="SIGINT again"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)


def test_plotting_a_run_in_progress_says_so(tmp_path, capsys):
    d = tmp_path / "run"
    d.mkdir()
    held = claim.take(d)
    try:  # set-up, then the first epoch: a claim (and a config.toml), no history yet
        assert plot_main([str(d)]) == 2
        (d / "config.toml").write_text('solver = "serial"\n')
        assert plot_main([str(d)]) == 2
    finally:
        held.release()
    assert plot_main([str(d)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "not a run directory" not in "".join(err[:2]), err
    for line in err[:2]:
        assert line.startswith(f"ocnet.plot: error: {d}: the run is in progress and has not finished an "
                               f"epoch yet (the job on host {socket.gethostname()}, pid {os.getpid()}, "), line
    assert err[2] == f"ocnet.plot: error: {d}: the run has no finished epoch (it stopped before its first epoch ended)"


def test_tilde_in_paths_is_the_home_directory(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    (cwd / "c.toml").write_text('out = "~/from-toml"\ndata_dir = "~/data"\n')
    assert resolve(["--out=~/x"])["out"] == str(home / "x")
    assert resolve(["--resume=~/r"])["resume"] == str(home / "r")
    config = resolve(["--config", "c.toml"])
    assert (config["out"], config["data_dir"]) == (str(home / "from-toml"), str(home / "data"))
    assert resolve(["--config=~/../cwd/c.toml"])["out"] == str(home / "from-toml")
    assert main([*TINY, "--epochs", "1", "--config", "c.toml"]) == 0
    assert _epochs(home / "from-toml") == [0]
    assert not (cwd / "~").exists()


@pytest.mark.mpi
def test_ctrl_c_while_the_ranks_import_prints_one_line(tmp_path):
    """Ctrl-C reaches mpiexec (as a terminal sends it) while both ranks import torch (held
    there by an import hook of the test's): one line for the job, exit 130."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "class Slow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            sys.meta_path.remove(self)\n"
        f"            open(os.path.join({str(tmp_path)!r}, f'importing.{{os.getpid()}}'), 'w').close()\n"
        "            time.sleep(600)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Slow())\n")
    job = start(2, *TINY, "--out", str(tmp_path / "run"), env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}"})
    wait_for(lambda: len(list(tmp_path.glob("importing.*"))) == 2, job, "both ranks importing torch")
    os.kill(job.pid, signal.SIGINT)
    proc = finish(job)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines() == ["ocnet: interrupted while starting"], proc.stderr


# -- the claim itself -----------------------------------------------------------------------------
def test_a_claim_is_one_jobs_until_released(tmp_path):
    first = claim.take(tmp_path)
    record = json.loads((tmp_path / claim.NAME).read_text())
    assert (record["host"], record["pid"]) == (socket.gethostname(), os.getpid())
    with pytest.raises(claim.Held, match=f"run directory {tmp_path} is in use by the job on host "
                                         f"{socket.gethostname()}, pid {os.getpid()}, started at "):
        claim.take(tmp_path)
    first.release()
    assert not (tmp_path / claim.NAME).exists()
    claim.take(tmp_path).release()
    assert sorted(tmp_path.iterdir()) == []


def _claim_and_die(directory: Path) -> None:
    """A process of its own takes the claim and is killed with SIGKILL, holding it (the module
    loaded alone: importing ocnet would take seconds)."""
    code = ("import importlib.util, os, signal, sys; from pathlib import Path\n"
            f"spec = importlib.util.spec_from_file_location('claim', {str(ROOT / 'ocnet/runs/claim.py')!r})\n"
            "claim = sys.modules['claim'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(claim)\n"
            f"claim.take(Path({str(directory)!r}))\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL and (directory / claim.NAME).exists()


@pytest.mark.parametrize("flock", ["flock", "no flock"])
def test_the_claim_of_a_killed_job_is_taken_over(tmp_path, monkeypatch, flock):
    """With flock the lock went with the process; without (a file system that refuses it) its
    pid is gone."""
    _claim_and_die(tmp_path)
    if flock == "no flock":
        monkeypatch.setattr(claim.fcntl, "flock", _no_flock)
    claim.take(tmp_path).release()
    assert sorted(tmp_path.iterdir()) == []


def _no_flock(fd, op):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def test_without_flock_a_live_pid_holds_and_a_reused_one_does_not(tmp_path, monkeypatch):
    monkeypatch.setattr(claim.fcntl, "flock", _no_flock)
    held = claim.take(tmp_path)
    with pytest.raises(claim.Held, match=f"pid {os.getpid()}"):
        claim.take(tmp_path)
    record = json.loads((tmp_path / claim.NAME).read_text())
    record["ticks"] += 1  # the same pid, but a process started at another time: a reused pid
    (tmp_path / claim.NAME).write_text(json.dumps(record))
    claim.take(tmp_path).release()
    held.release()  # its file was taken over: nothing of it is left to remove
    assert sorted(tmp_path.iterdir()) == []


def test_a_claim_from_another_host_is_honoured_until_removed(tmp_path, capsys):
    """On a shared file system the lock may be the node's own and the pid cannot be checked:
    a claim from another host holds, whatever its lock and pid, until removed by hand."""
    (tmp_path / claim.NAME).write_text(json.dumps({"host": "node-7", "pid": 1, "started": "2026-01-02 03:04:05"}))
    out = tmp_path
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.strip() == (f"ocnet: error: run directory {out} is in use by the job on host node-7, pid 1, "
                           f"started at 2026-01-02 03:04:05; if that job is over, remove {out / claim.NAME} "
                           "and start again")
    (out / claim.NAME).unlink()
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0

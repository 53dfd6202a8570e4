"""How runs fail and resume: one run per directory, checked resumes, faults injected on one
rank (set-up, steps, signals), non-finite values, strict JSON."""
import hashlib
import json
import threading

import pytest
import torch

from ocnet.run import main
from ocnet.runs.job import EXIT_SETUP, EXIT_SOLVER
from ocnet.runs.launcher import Stopwatch

# digits: 1,437 training samples, batches of 512 give 3 steps per epoch
TINY = ["--layers", "4", "--quiet", "--dtype", "float64", "--batch-size", "512"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _strict(text):
    """Parse JSON refusing NaN / Infinity, as strict parsers do."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _digest(run_dir):
    """Every file of a run directory and its bytes' hash."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 2-epoch run with a checkpoint after each epoch."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["--out", str(out), "--epochs", "2", "--checkpoint-every", "1", *TINY]) == 0
    return out


def test_a_new_run_refuses_a_used_directory(finished, capsys):
    before = _digest(finished)
    assert main(["--out", str(finished), "--epochs", "2", *TINY]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and f"run directory {finished} is not empty" in err
    assert "--overwrite" in err and f"--resume {finished}" in err
    assert _digest(finished) == before


def test_overwrite_replaces_the_old_run(finished, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("history.jsonl", "summary.json", "config.toml"):
        (out / name).write_bytes((finished / name).read_bytes())
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "stale").write_text("old")
    (out / "notes.txt").write_text("mine")
    assert main(["--out", str(out), "--epochs", "1", "--overwrite", *TINY]) == 0
    assert [r["epoch"] for r in _records(out) if r["kind"] == "epoch"] == [0]
    assert not (out / "checkpoints").exists()  # the old run's checkpoints are gone with it
    assert (out / "notes.txt").read_text() == "mine"  # files that are not a run's are left alone


def test_default_directories_are_numbered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["--epochs", "1", *TINY]) == 0
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["digits-serial-P1", "digits-serial-P1-2"]


def test_resume_continues_in_its_own_directory_exactly(finished, tmp_path):
    full = tmp_path / "full"
    assert main(["--out", str(full), "--epochs", "4", *TINY]) == 0
    part = tmp_path / "part"
    part.mkdir()
    for p in finished.rglob("*"):  # a copy of the 2-epoch run, which then goes on to 4
        if p.is_file():
            (part / p.relative_to(finished)).parent.mkdir(parents=True, exist_ok=True)
            (part / p.relative_to(finished)).write_bytes(p.read_bytes())
    assert main(["--resume", str(part), "--epochs", "4", "--checkpoint-every", "1", *TINY]) == 0
    a, b = _records(full), _records(part)
    assert [(r["kind"], r["epoch"], r["step"], r["loss"]) for r in a] == \
           [(r["kind"], r["epoch"], r["step"], r["loss"]) for r in b]
    ma, mb = torch.load(full / "model.pt"), torch.load(part / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    summary = json.loads((part / "summary.json").read_text())
    assert summary["epochs"] == 4 and summary["final_test_acc"] == b[-1]["test_acc"]
    assert summary["bytes_sent"] == sum(r["bytes_sent"] for r in b if r["kind"] == "epoch")


def test_resuming_a_finished_run_changes_nothing(finished, capsys):
    before = _digest(finished)
    assert main(["--resume", str(finished), "--epochs", "2", *TINY]) == 0
    assert "has finished its 2 epochs; nothing to do" in capsys.readouterr().out
    assert _digest(finished) == before
    assert json.loads((finished / "summary.json").read_text())["final_test_acc"] > 0.5


@pytest.mark.parametrize("flags,message", [
    (["--seed", "1"], "seed: 0 → 1"),
    (["--dtype", "float32", "--batch-size", "64"], "batch_size: 512 → 64; dtype: float64 → float32"),
    (["--out", "{tmp}/elsewhere"], "--resume continues in its run directory"),
    (["--epochs", "1"], "has trained 2 epochs already; --epochs must be at least 2"),
])
def test_resume_refuses_another_configuration(finished, tmp_path, capsys, flags, message):
    before = _digest(finished)
    flags = [f.format(tmp=tmp_path) for f in flags]
    argv = ["--resume", str(finished), "--epochs", "3", *TINY]
    for key, value in zip(flags[::2], flags[1::2]):  # later flags override TINY's
        argv += [key, value]
    assert main(argv) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1 and message in err, err
    assert _digest(finished) == before


def test_resume_refuses_a_run_without_its_history(finished, tmp_path, capsys):
    part = tmp_path / "part"
    part.mkdir()
    for p in finished.rglob("*"):
        if p.is_file() and p.name != "history.jsonl":
            (part / p.relative_to(finished)).parent.mkdir(parents=True, exist_ok=True)
            (part / p.relative_to(finished)).write_bytes(p.read_bytes())
    before = _digest(part)
    assert main(["--resume", str(part), "--epochs", "3", *TINY]) == EXIT_SETUP
    assert f"cannot read the run's history {part / 'history.jsonl'}" in capsys.readouterr().err
    assert _digest(part) == before


def test_a_nan_stops_the_run_in_its_step(tmp_path, capsys, monkeypatch):
    """The 5th step (epoch 1) turns nan: exit 3 at once, naming epoch, step, solver and
    rank; the epoch-0 checkpoint stays the newest; no model; strict JSON."""
    import importlib

    from ocnet.runs import faults
    monkeypatch.setenv("OCNET_FAULT", "step:0:nan:5")
    monkeypatch.setattr(faults, "_reached", {})
    out = tmp_path / "run"
    assert main(["--out", str(out), "--epochs", "4", "--checkpoint-every", "1", *TINY]) == EXIT_SOLVER
    err = capsys.readouterr().err
    assert err.count("ocnet: error:") == 1
    assert "loss is not finite at epoch 1, step 5 on rank 0 (solver serial)" in err, err
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["epoch"] == 0
    assert not (out / "model.pt").exists() and not (out / "summary.json").exists()
    records = [_strict(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "iter"] == [1, 2, 3, 4, 5]
    assert records[-1]["loss"] is None  # nan is written as null
    importlib.reload(faults)


def test_a_large_learning_rate_is_caught_before_a_model_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--optimizer", "sgd", "--lr", "1e3", "--activation", "relu"]
    code = main(["--out", str(out), "--epochs", "3", *flags, *TINY])
    assert code == EXIT_SOLVER
    assert "loss is not finite at epoch " in capsys.readouterr().err
    assert not (out / "model.pt").exists()
    for line in (out / "history.jsonl").read_text().splitlines():
        _strict(line)
    # the run's stall watchdog ended with it: left running, it would end this process once
    # its timeout passed without a tick
    assert not any(t.name == "ocnet-watchdog" for t in threading.enumerate())


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,fault", [(2, "raise"), (2, "memory"), (4, "raise"), (4, "memory")])
def test_a_fault_at_set_up_ends_every_rank(mpi, tmp_path, ranks, fault):
    """Rank 1 fails while loading the data (the 4th set-up step)."""
    watch = Stopwatch().start()
    proc = mpi(ranks, "ocnet.run", "--out", str(tmp_path / "run"), *TINY, module=True, plain=True,
               timeout=60, env={"OCNET_FAULT": f"setup:1:{fault}:4"})
    assert proc.returncode == EXIT_SETUP
    assert watch.stop() < 20  # start-up of the ranks included
    assert proc.stderr.count("ocnet: error:") == 1, proc.stderr
    kind = "InjectedFault: injected fault" if fault == "raise" else "MemoryError: injected out-of-memory"
    assert f"ocnet: error: rank 1: {kind} at setup #4 on rank 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,signal_name,code", [(1, "int", 130), (2, "term", 143)])
def test_a_signal_stops_at_a_step_boundary_and_resumes_exactly(mpi, tmp_path, ranks, signal_name, code):
    """SIGTERM / SIGINT on the last rank in its 4th step (epoch 1): every rank stops at the end
    of the next step (the check lags one step) with a checkpoint there, a resume hint, and a
    resume equal to the uninterrupted run."""
    full, part = tmp_path / "full", tmp_path / "part"
    flags = ["--epochs", "3", *TINY]
    assert mpi(ranks, "ocnet.run", "--out", str(full), *flags, module=True, plain=True).returncode == 0
    proc = mpi(ranks, "ocnet.run", "--out", str(part), *flags, module=True, plain=True,
               env={"OCNET_FAULT": f"step:{ranks - 1}:{signal_name}:4"})
    assert proc.returncode == code, proc.stderr
    name = {"int": "SIGINT", "term": "SIGTERM"}[signal_name]
    assert f"stopped by {name} at epoch 1, step 5 (batch 2 of 3) with a checkpoint" in proc.stderr
    assert f"python -m ocnet.run --resume {part}" in proc.stderr and "Traceback" not in proc.stderr
    latest = json.loads((part / "checkpoints" / "latest.json").read_text())
    assert (latest["epoch"], latest["batch"]) == (1, 2)
    proc = mpi(ranks, "ocnet.run", "--resume", str(part), *flags, module=True, plain=True)
    assert proc.returncode == 0, proc.stderr
    a, b = _records(full), _records(part)
    assert [(r["kind"], r["step"], r["loss"]) for r in a] == [(r["kind"], r["step"], r["loss"]) for r in b]
    ma, mb = torch.load(full / "model.pt"), torch.load(part / "model.pt")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.mark.mpi
def test_a_stuck_rank_ends_the_job_naming_it(mpi, tmp_path):
    """Rank 1 hangs in its 3rd step; with --stall-timeout 5 the job ends within 15 s of
    the hang, naming rank 1 as stuck and what the others wait for."""
    watch = Stopwatch().start()
    proc = mpi(4, "ocnet.run", "--out", str(tmp_path / "run"), "--stall-timeout", "5", "--epochs", "1",
               *TINY, module=True, plain=True, timeout=90, env={"OCNET_FAULT": "step:1:hang:3"})
    wall = watch.stop()  # seconds of a quiet machine
    assert proc.returncode != 0
    assert wall < 15 + 15, f"{wall:.0f} s, start-up included"  # start-up of 4 ranks: ~3-10 s here
    assert proc.stderr.count("ocnet: error:") == 1, proc.stderr
    assert "ocnet: error: no progress for 5 s in epoch 0, step 3: rank 1 is stuck" in proc.stderr
    assert "ranks 0, 2, 3 wait" in proc.stderr

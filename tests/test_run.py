"""python -m ocnet.run end to end: the default run, the run directory, errors, resuming."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import ocnet
from ocnet.run import main
from ocnet.runs.launcher import Stopwatch


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


@pytest.mark.mpi
def test_default_run_on_eight_ranks(mpi, tmp_path):
    """The built-in default (digits, serial) on 8 ranks: >= 95 % test accuracy, about a minute."""
    out = tmp_path / "default"
    watch = Stopwatch().start()
    proc = mpi(8, "ocnet.run", "--out", str(out), module=True, plain=True, plots=True, timeout=240)
    wall = watch.stop()  # seconds of a quiet machine
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_acc"] >= 0.95, summary
    assert summary["ranks"] == 8 and summary["solver"] == "serial"
    assert wall < 150, f"the default run took {wall:.0f} s"
    for name in ("config.toml", "history.jsonl", "summary.json", "model.pt", "convergence.png"):
        assert (out / name).exists(), name
    records = _records(out)
    epochs = [r for r in records if r["kind"] == "epoch"]
    iters = [r for r in records if r["kind"] == "iter"]
    assert [r["epoch"] for r in epochs] == list(range(20))
    assert [r["step"] for r in iters] == list(range(1, len(iters) + 1))
    for r in records:
        assert {"kind", "epoch", "step", "loss", "wall_time", "bytes_sent"} <= r.keys()
    # forward states and adjoints cross 7 boundaries each step: (batch, width) float32 each way
    width, boundaries = 32, 7
    first = iters[0]
    assert first["bytes_sent"] == 2 * boundaries * 64 * width * 4
    assert proc.stdout.count("ocnet: serial P=8") == 1


def test_exported_model_reproduces_test_accuracy(tmp_path):
    out = tmp_path / "run"
    assert main(["--out", str(out), "--epochs", "2", "--quiet", "--layers", "4"]) == 0
    from ocnet.model.data import load
    from ocnet.model.problem import build
    data = load("digits")
    problem = build(data.input_shape, data.n_classes, net="dense", layers=4)
    problem.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    with torch.no_grad():
        acc = (problem.to_torch()(data.x_test).argmax(1) == data.y_test).double().mean().item()
    assert acc == pytest.approx(json.loads((out / "summary.json").read_text())["final_test_acc"], abs=1e-9)


@pytest.mark.parametrize("ranks,flags,message", [
    (2, ["--epochz", "3"], "unknown key 'epochz'; did you mean 'epochs'?"),
    (2, ["--lr", "-1"], "lr must be positive"),
    (4, ["--layers", "2"], "4 ranks but only 2 layers"),
    (2, ["--problem", "mnist", "--data-dir", "{tmp}"], "train-images-idx3-ubyte"),
    # errors raised while the solver is built go through the same agreement
    (4, ["--solver", "mgrit", "--coarsening", "4", "--mgrit-levels", "3", "--layers", "30"],
     "multiple of c^(levels-1) = 16"),
    (4, ["--solver", "penalty", "--blocks", "2"], "2 blocks for 4 ranks"),
    (2, ["--solver", "mgrit", "--filter", "downsample2"], "mgrit does not support communication filters"),
    (2, ["--solver", "hybrid", "--parallel", "serial"], "'serial' is not a parallel solver"),
])
@pytest.mark.mpi
def test_bad_input_stops_every_rank_with_one_message(mpi, tmp_path, ranks, flags, message):
    flags = [f.format(tmp=tmp_path) for f in flags]
    watch = Stopwatch().start()
    proc = mpi(ranks, "ocnet.run", *flags, "--out", str(tmp_path / "run"), module=True, plain=True, timeout=60)
    assert proc.returncode != 0
    assert watch.stop() < 30
    assert proc.stderr.count("ocnet: error:") == 1, proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "run" / "history.jsonl").exists()


@pytest.mark.mpi
@pytest.mark.processes
def test_a_crash_on_one_rank_ends_the_job(mpi, tmp_path):
    watch = Stopwatch().start()
    proc = mpi(4, "crash.py", "--solver", "crashing", "--out", str(tmp_path / "run"), "--quiet",
               plain=True, timeout=60)
    assert proc.returncode != 0
    assert watch.stop() < 30
    assert "injected failure on rank 1" in proc.stderr


def test_help_lists_solver_options(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--batch-size" in text and "--micro-batches" in text


def test_multistage_cifar_run_with_augmentation(tmp_path):
    """A format-faithful CIFAR-10 directory, three stages, augmentation on, micro-batches."""
    from fixtures_data import write_cifar10
    write_cifar10(tmp_path / "data", per_batch=6, n_test=8)
    out = tmp_path / "run"
    assert main(["--problem", "cifar10", "--data-dir", str(tmp_path / "data"), "--channels", "4,8,8",
                 "--layers", "3", "--epochs", "2", "--batch-size", "8", "--micro-batches", "2",
                 "--out", str(out), "--quiet"]) == 0
    config = (out / "config.toml").read_text()
    assert 'augment = "auto"' in config and "channels = [4, 8, 8]" in config
    records = _records(out)
    assert len([r for r in records if r["kind"] == "iter"]) == 2 * 4  # 30 samples, batches of 8
    assert 0.0 <= records[-1]["test_acc"] <= 1.0


@pytest.mark.parametrize("env,net,expected", [("3", "dense", 3), ("3", "conv", 3), ("", "dense", 1),
                                              (None, "dense", 1), ("zero", "dense", 1), ("0", "dense", 1)])
def test_default_threads(monkeypatch, env, net, expected):
    from ocnet.ranks.comm import SelfComm
    from ocnet.runs.job import default_threads
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert default_threads(SelfComm(), net) == expected


def test_default_threads_of_a_conv_net_are_the_cores(monkeypatch):
    import os

    from ocnet.ranks.comm import SelfComm
    from ocnet.runs.job import default_threads
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(SelfComm(), "conv") == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("flags", [["--layers", "4"], ["--net", "conv", "--layers", "4", "--channels", "4,8"]])
def test_load_run_gives_the_trained_network(tmp_path, flags):
    """The module load_run rebuilds reaches the run's own test accuracy on the test set,
    also without the shape in the summary (a run written before it held one)."""
    import ocnet
    from ocnet.model.data import load
    out = tmp_path / "run"
    assert main([*flags, "--epochs", "2", "--quiet", "--timeline-steps", "0", "--out", str(out)]) == 0
    data = load("digits", None, 0)
    for attempt in range(2):
        run = ocnet.load_run(out)
        with torch.no_grad():
            acc = (run.model(data.x_test).argmax(1) == data.y_test).double().mean().item()
        assert acc == pytest.approx(run.summary["final_test_acc"], abs=1e-12)
        assert run.history[-1]["kind"] == "epoch" and run.config["layers"] == 4
        if attempt == 0:
            summary = json.loads((out / "summary.json").read_text())
            assert summary["input_shape"] == list(data.input_shape) and summary["n_classes"] == 10
            for key in ("net", "input_shape", "n_classes"):
                summary.pop(key)
            (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(FileNotFoundError, match="model.pt is missing"):
        (out / "model.pt").unlink()
        _ = ocnet.load_run(out).model


@pytest.mark.figures
def test_plots_none_leaves_the_figures_to_ocnet_plot(tmp_path):
    out = tmp_path / "run"
    flags = ["--problem", "peaks", "--layers", "2", "--width", "4", "--limit-batches", "2", "--quiet",
             "--timeline-steps", "0", "--checkpoint-every", "1"]
    assert main([*flags, "--epochs", "1", "--plots", "none", "--out", str(out)]) == 0
    assert not list(out.glob("*.png"))
    assert 'plots = "none"' in (out / "config.toml").read_text().splitlines()
    assert main([*flags, "--epochs", "2", "--plots", "true", "--resume", str(out)]) == 0  # a key it may change
    assert sorted(p.name for p in out.glob("*.png")) == ["convergence.png"]


def test_resume_alone_continues_the_run_as_it_was_set_up(tmp_path):
    """``--resume RUN_DIR`` with no other flag (the command an interrupted job prints) takes
    every key the run's config.toml holds, also where today's defaults differ from those
    written there, and ends where the uninterrupted run ends; a flag that changes the method
    is still refused."""
    flags = ["--problem", "peaks", "--layers", "3", "--width", "4", "--limit-batches", "3", "--lr", "0.01",
             "--quiet", "--plots", "false", "--timeline-steps", "0", "--checkpoint-every", "1"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*flags, "--epochs", "2", "--out", str(whole)]) == 0
    assert main([*flags, "--epochs", "1", "--out", str(cut)]) == 0
    written = (cut / "config.toml").read_text()
    (cut / "config.toml").write_text(re.sub(r"(?m)^channels = .*$", "channels = [8]", written))  # an older default
    assert "channels = [8]" in (cut / "config.toml").read_text()
    assert main(["--resume", str(cut), "--epochs", "2"]) == 0
    a, b = (ocnet.load_run(d) for d in (whole, cut))
    assert b.config["channels"] == [8] and b.config["layers"] == 3 and b.config["lr"] == 0.01
    losses = [[r["loss"] for r in run.history if r["kind"] == "epoch"] for run in (a, b)]
    assert losses[0] == losses[1]
    assert main(["--resume", str(cut), "--epochs", "3", "--layers", "4"]) == 2


def test_a_run_without_figures_never_imports_matplotlib(tmp_path):
    """Plotting is imported where figures are drawn, not with the entry point: ``import
    ocnet.run`` and a whole run with ``--plots none`` load neither matplotlib nor ocnet's
    figure modules (about a second of every short job)."""
    out = tmp_path / "run"
    code = f"""
import sys
def plotting():
    return sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib"
                  or m.startswith(("ocnet.results.plot", "ocnet.results.gantt", "ocnet.plot", "ocnet.perf")))
from ocnet.run import main
assert not plotting(), plotting()
assert main(["--problem", "peaks", "--layers", "2", "--width", "4", "--epochs", "1", "--limit-batches", "2",
             "--quiet", "--plots", "none", "--out", {str(out)!r}]) == 0
assert not plotting(), plotting()
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "summary.json").is_file() and not list(out.glob("*.png"))

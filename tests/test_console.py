"""What rank 0 prints during and after a run: epoch lines through a pipe, step lines whose
losses are the history's, per-iteration residuals, the statistics block, --quiet, and the
summary of a resumed run."""
import io
import json
import re

import pytest

from ocnet.runs.console import WIDTH, Console, statistics
from ocnet.solvers import get
from ocnet.solvers.records import FIELDS

SMALL = ["--layers", "4", "--width", "8", "--epochs", "2", "--timeline-steps", "0"]


def _records(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


@pytest.mark.mpi
def test_one_line_per_epoch_from_rank_0_through_a_pipe(mpi, tmp_path):
    out = tmp_path / "run"
    proc = mpi(2, "ocnet.run", *SMALL, "--log-every", "5", "--out", str(out), module=True, plain=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    records = _records(out)
    epochs = [r for r in records if r["kind"] == "epoch"]
    epoch_lines = [x for x in lines if re.match(r"epoch \d/2  loss", x)]
    assert len(epoch_lines) == 2  # rank 0 alone
    for line, r in zip(epoch_lines, epochs):
        assert f"loss {r['loss']:.4g}" in line and f"test {100 * r['test_acc']:.2f} %" in line, line
    # a line every 5 steps (23 steps an epoch), with the step's loss from the last rank
    losses = {r["step"]: r["loss"] for r in records if r["kind"] == "iter"}
    step_lines = [re.match(r"epoch (\d)/2  step (\d+)/23 \((\d+)\)  loss (\S+)", x) for x in lines]
    step_lines = [m for m in step_lines if m]
    assert [int(m.group(2)) for m in step_lines] == [5, 10, 15, 20] * 2
    for m in step_lines:
        assert float(m.group(4)) == pytest.approx(losses[int(m.group(3))], rel=1e-3)
    # the statistics block: a row per rank, whose bytes add up to the run's
    start = lines.index(next(x for x in lines if x.startswith("statistics: 2 epochs, 46 steps")))
    assert lines[start + 1].split() == ["rank", "compute", "s", "waiting", "for", "messages", "s", "in",
                                        "collectives", "s", "MB", "sent"]
    rows = [x.split() for x in lines[start + 2:start + 4]]
    assert [int(r[0]) for r in rows] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert sum(float(r[4]) for r in rows) == pytest.approx(summary["bytes_sent"] / 1e6, abs=0.011)
    assert lines[-1].startswith("ocnet: serial P=2 on digits")


@pytest.mark.mpi
def test_quiet_prints_only_the_summary(mpi, tmp_path):
    proc = mpi(2, "ocnet.run", *SMALL, "--quiet", "--out", str(tmp_path / "run"), module=True, plain=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [next(x for x in proc.stdout.splitlines() if x.startswith("ocnet: serial"))]
    assert proc.stderr == ""


def test_verbose_prints_each_steps_residuals(tmp_path, capsys):
    from ocnet.run import main
    out = tmp_path / "run"
    assert main([*SMALL, "--layers", "16", "--solver", "mgrit", "--mgrit-mode", "one_shot", "--mgrit-iters", "2",
                 "--verbose", "--epochs", "1", "--out", str(out)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  step ")]
    iters = [r for r in _records(out) if r["kind"] == "iter"]
    assert len(lines) == len(iters) == 23
    for line, r in zip(lines, iters):
        fwd = r["residual"]["forward"]
        assert len(fwd) == 3 and fwd[2] > 0
        assert line.startswith(f"  step {r['step']} residual norm: fwd {fwd[0]:.4g} "), line
        assert f"{fwd[2]:.4g} ({fwd[2] / fwd[1]:.3g})" in line, line


def test_statistics_block():
    records = [{"kind": "iter", "residual": {"forward": [1.0, 0.1], "adjoint": [1.0, 0.1, 0.01]}},
               {"kind": "epoch", "wall_time": 2.0},
               {"kind": "iter", "residual": {"forward": [1.0, 0.1, 0.01, 0.001], "adjoint": [1.0, 0.5]}},
               {"kind": "epoch", "wall_time": 5.0}, {"kind": "epoch", "wall_time": 9.0}]
    ranks = [{"train": 9.0, "waiting_messages": 1.5, "waiting_collectives": 0.5, "bytes": 2_500_000},
             {"train": 9.0, "waiting_messages": 3.0, "waiting_collectives": 0.25, "bytes": 0}]
    text = statistics(records, ranks, 8.5).splitlines()
    assert text[0] == "statistics: 3 epochs, 2 steps, 3.00 s per epoch (median), this job 8.5 s of training"
    assert text[2].split() == ["0", "7.00", "1.50", "0.50", "2.50"]
    assert text[3].split() == ["1", "5.75", "3.00", "0.25", "0.00"]
    assert text[4] == "  iterations per solve (mean): forward 2.00, adjoint 1.50"
    # a job that trained no epoch (nothing to take a median of) still gets its block
    assert statistics([], ranks, 0.0).splitlines()[0] == "statistics: 0 epochs, 0 steps, this job 0.0 s of training"


@pytest.mark.mpi
def test_a_resumed_runs_summary_covers_the_whole_run(mpi, tmp_path):
    """2 epochs, then resumed to 3 on the same 2 ranks: the summary's epochs and bytes are the
    uninterrupted 3-epoch run's, its wall time the two jobs' together; the resumed job goes
    on checkpointing at its frequency."""
    flags = ["--layers", "4", "--width", "8", "--timeline-steps", "0", "--quiet", "--checkpoint-every", "1"]
    full, part = tmp_path / "full", tmp_path / "part"
    for out, epochs in ((full, "3"), (part, "2")):
        proc = mpi(2, "ocnet.run", *flags, "--epochs", epochs, "--out", str(out), module=True, plain=True)
        assert proc.returncode == 0, proc.stderr
    first = json.loads((part / "summary.json").read_text())
    proc = mpi(2, "ocnet.run", *flags, "--epochs", "3", "--resume", str(part), module=True, plain=True)
    assert proc.returncode == 0, proc.stderr
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full, part))
    assert (b["epochs"], b["bytes_sent"]) == (a["epochs"], a["bytes_sent"]) == (3, a["bytes_sent"])
    assert a["bytes_sent"] > 0
    last_job = b["wall_time"] - first["wall_time"]
    assert 0 < last_job < b["wall_time"]
    assert re.search(rf"{b['wall_time']:.1f} s \(\d+\.\d s in this job\), {b['bytes_sent'] / 1e6:.2f} MB sent",
                     proc.stdout), proc.stdout
    assert sorted(p.name for p in (part / "checkpoints").iterdir() if p.is_dir()) == \
        ["epoch_0000", "epoch_0001", "epoch_0002"]


# The last step's record of each solver and what its epoch record adds, as runs of 2 and 4
# ranks on digits write them (an epoch's own fields come from ``begin_epoch`` / ``end_epoch``).
_PENALTY = {"constraint_violation": 0.03712, "penalized_objective": 2.181, "rho": 3.0}
_EXACT = {"residual": {"forward": [27.98, 4.728, 0.3228, 0.01786, 0.0005996, 2.09e-05],
                       "adjoint": [0.101, 0.01408, 0.0009879, 4.969e-05, 2.085e-06, 7.89e-08, 7.092e-09]},
          "inexactness": 2.57e-07, "step_evals": 400,
          "conv_factor": {"forward": 0.06146, "adjoint": 0.07073}, "n_layers": 16,
          "tolerance": {"forward": 2.798e-05, "adjoint": 1.01e-07}}
_ONE_SHOT = {"residual": {"forward": [3.808, 0.6163], "adjoint": [0.01614, 0.002557]}, "inexactness": 0.1045,
             "step_evals": 112, "conv_factor": {"forward": 0.1618, "adjoint": 0.1584}, "n_layers": 16,
             "mgrit_iters": 1}
SOLVERS = {  # name: (solver, last step, the epoch record's own fields)
    "serial": ("serial", {}, {}),
    "penalty": ("penalty", _PENALTY, {"rho": 3.0}),
    "al": ("al", {**_PENALTY, "mu_sq": 3.341e-05}, {"rho": 3.0, "mu_norm": 0.005782}),
    "hybrid": ("penalty", {**_PENALTY, "phase": "parallel"}, {"rho": 3.0, "phase": "parallel"}),
    "hybrid-serial": ("penalty", {"phase": "serial"}, {"phase": "serial"}),
    "hybrid-mgrit": ("mgrit", {**_ONE_SHOT, "phase": "parallel"}, {"phase": "parallel"}),
    "mgrit": ("mgrit", _EXACT, {}),
    "mgrit-one-shot": ("mgrit", _ONE_SHOT, {}),
}
SCORES = {"test": {"test_acc": 0.9722, "test_loss": 0.1012},
          "val": {"val_acc": 0.9444, "val_loss": 0.2133},
          "val+test": {"val_acc": 0.9444, "val_loss": 0.2133, "test_acc": 0.9722, "test_loss": 0.1012}}


@pytest.mark.parametrize("scores", SCORES)
@pytest.mark.parametrize("name", SOLVERS)
def test_every_solvers_epoch_line_fits_80_columns(name, scores):
    """The line per epoch of every solver, with a test or validation set or both (--val-split
    with --epoch-test), at a hundred epochs and ten minutes of training: at most 80 columns;
    --verbose adds the solver's fields under their full labels, and the megabytes sent, on
    lines of at most 80 columns too."""
    solver, last_step, own = SOLVERS[name]
    fields = {**FIELDS, **get(solver).fields}
    record = {"kind": "epoch", "epoch": 99, "step": 2300, **own, "loss": 0.01433, "wall_time": 612.3,
              "bytes_sent": 92_890_000, "train_acc": 0.9993, **SCORES[scores], "lr": 0.003}
    step = {"kind": "iter", "epoch": 99, "step": 2300, **last_step, "bytes_sent": 40_000, "loss": 0.0121,
            "wall_time": 612.2}
    lines = Console(100, 23, fields, stream=io.StringIO()).epoch_lines(record, step)
    assert len(lines) == 1
    line = lines[0]
    assert len(line) <= WIDTH, line
    assert line.startswith("epoch 100/100  loss 0.01433  train 99.93 %") and line.endswith("  612.3 s"), line
    for key, label in (("val", "val 94.44 %"), ("test", "test 97.22 %")):
        assert (label in line) == (key in scores.split("+")), line
    headline = {"penalty": "viol 0.0371", "al": "viol 0.0371", "hybrid": "parallel",
                "hybrid-serial": "serial", "hybrid-mgrit": "parallel", "mgrit": "conv 0.0707",
                "mgrit-one-shot": "conv 0.162"}.get(name)
    if headline is not None and scores != "val+test":  # with both, the solver's figure may not fit
        assert f"  {headline}  " in line, line
    verbose = Console(100, 23, fields, verbose=True, stream=io.StringIO()).epoch_lines(record, step)
    assert verbose[0] == line and all(len(x) <= WIDTH and x.startswith("  ") for x in verbose[1:]), verbose
    details = "  ".join(verbose[1:])
    assert details.endswith("92.89 MB sent")
    for key in {**last_step, **own}:
        if key not in ("n_layers", "tolerance"):
            assert f"{fields[key].label} " in details, (key, details)

"""Data groups × layer ranks (``--data-parallel D``): the trained weights depend on the global
batch, not on D or P; records, checkpoints and batch norm's running statistics span the groups."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_mpi

from ocnet.ranks import store
from ocnet.ranks.replicas import GradientAverage, Grid, average_running_statistics, reduction_bytes
from ocnet.runs import launcher
from ocnet.solvers.records import FIELDS, combine_groups

CASES = ["serial", "mgrit", "penalty", "al", "serial_dropout", "oneshot", "hybrid", "local"]


# -- the pieces, on one process ------------------------------------------------------------------
class _OtherGroup:
    """A data communicator of two groups whose other group contributes ``other``."""

    size, rank = 2, 0

    def __init__(self, other: torch.Tensor) -> None:
        self.other, self.bytes_sent, self.sent = other, 0, None

    def allreduce(self, value, op="sum"):
        self.sent = value.clone()
        return value + self.other


def test_gradients_are_weighted_by_the_groups_shares_and_keep_none_where_no_group_had_one():
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1, bias=False))
    w, b, v = net.parameters()
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    # the other group: 1 in w's gradient, nothing of b, 2 in v's; presence flags 1, 0, 1
    other = torch.cat([torch.ones(6), torch.zeros(2), 2 * torch.ones(2), torch.tensor([1.0, 0.0, 1.0])])
    data = _OtherGroup(other)
    average = GradientAverage(net, [opt], data)
    average.weight = 0.25
    w.grad, b.grad, v.grad = torch.full_like(w, 4.0), None, torch.full_like(v, 8.0)
    before = [p.detach().clone() for p in net.parameters()]
    opt.step()
    assert torch.equal(data.sent[:6], torch.ones(6)) and torch.equal(data.sent[-3:], torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(w.grad, torch.full_like(w, 2.0)) and b.grad is None
    assert torch.equal(v.grad, torch.full_like(v, 4.0))
    assert torch.equal(net[0].bias, before[1])  # no gradient anywhere: not stepped
    assert data.bytes_sent == 13 * 4 == reduction_bytes(net)


def test_a_group_without_samples_still_counts_a_parameter_another_group_reached():
    net = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    GradientAverage(net, [opt], _OtherGroup(torch.tensor([3.0, 5.0, 1.0]))).weight = 0.0
    opt.step()
    assert torch.equal(net.weight.grad, torch.tensor([[3.0, 5.0]]))


def test_running_statistics_become_the_mean_over_the_groups():
    net = torch.nn.BatchNorm1d(2)
    net.running_mean.fill_(1.0)
    net.running_var.fill_(3.0)
    average_running_statistics(net, _OtherGroup(torch.tensor([3.0, 5.0, 1.0, 1.0])))
    assert torch.equal(net.running_mean, torch.tensor([2.0, 3.0]))
    assert torch.equal(net.running_var, torch.tensor([2.0, 2.0]))


def test_records_weight_per_sample_means_by_the_groups_shares_and_add_the_rest():
    records = [{"loss": 1.0, "bytes_sent": 10, "rho": 2.0, "constraint_violation": 4.0},
               {"loss": 4.0, "bytes_sent": 30, "rho": 2.0, "constraint_violation": 1.0}]
    out = combine_groups(records, [0.75, 0.25], FIELDS)
    assert out == {"loss": 1.75, "bytes_sent": 40, "rho": 2.0, "constraint_violation": 3.25}
    # a group without samples reports no loss and weighs nothing
    assert combine_groups([{"bytes_sent": 5}, {"loss": 2.0, "bytes_sent": 5}], [0.0, 1.0])["loss"] == 2.0


def test_per_sample_rows_move_between_numberings_of_the_groups():
    """Rows kept by 2 groups (group g's row j is sample 2j + g) load into 1 group and into
    3 groups as the samples they are."""
    rows = torch.arange(7.0).repeat(3, 1).T  # sample i's row is (i, i, i), 7 samples
    state = {}
    try:
        for g in (0, 1):
            store.number_samples(g, 2)
            s = store.SampleStore()
            s.set(4, torch.arange(len(range(g, 7, 2))), rows[g::2])
            state.update(s.state_dict())
        assert sorted(state) == ["4@0/2", "4@1/2"]
        for group, groups in ((0, 1), (0, 3), (2, 3)):
            store.number_samples(group, groups)
            s = store.SampleStore()
            s.load_state_dict(state, keys=[4])
            assert torch.equal(s.rows[4], rows[group::groups])
    finally:
        store.number_samples(0, 1)


def test_groups_must_divide_the_ranks():
    Grid.check(2, 4)
    with pytest.raises(ValueError, match="--data-parallel 3 does not divide the job's 4 ranks"):
        Grid.check(3, 4)


# -- the grid equalities, on 4 ranks ---------------------------------------------------------------
@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """tests/mpi/grid_equal.py: every case at P = 1, 2, 4 in one group and at 2 × 2."""
    root = tmp_path_factory.mktemp("grid")
    proc = run_mpi(4, "grid_equal.py", str(root), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


@pytest.mark.mpi
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("job", ["P2_D1", "P4_D1", "P4_D2"])
def test_the_weights_depend_on_the_global_batch_not_on_the_grid(library, case, job):
    """Two epochs, float64, each ending with a batch of one sample (an idle group at D = 2):
    serial with 2 micro-batches, MGRIT exact, penalty and AL with 4 blocks, dropout 0.1,
    one-shot MGRIT with per-sample warm starts, and the hybrid with a serial step every
    second step equal their one-rank run; so do the history's losses and accuracies."""
    ref = torch.load(library / case / "P1_D1.pt", weights_only=True)
    got = torch.load(library / case / f"{job}.pt", weights_only=True)
    for name, value in ref["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=1e-10, atol=1e-14)
    assert [(r["kind"], r["step"]) for r in got["records"]] == [(r["kind"], r["step"]) for r in ref["records"]]
    for mine, theirs in zip(got["records"], ref["records"]):
        for key in ("loss", "constraint_violation", "mu_sq", "test_acc", "train_acc"):
            if theirs.get(key) is not None:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-10, abs=1e-20), (key, mine["step"])


@pytest.mark.mpi
def test_batch_norms_running_statistics_are_the_same_in_every_group(library):
    """Each group normalises its own share, so the run is not one group's; but the running
    statistics that evaluation uses end the same in both groups, and they have moved."""
    groups = torch.load(library / "batchnorm" / "P4_D2.pt", weights_only=True)["groups"]
    stats = [k for k in groups[0] if k.endswith(("running_mean", "running_var"))]
    assert stats
    for k in stats:
        assert torch.equal(groups[0][k], groups[1][k]), k
    assert all(float(groups[0][k].abs().max()) > 1e-3 for k in stats if k.endswith("running_mean"))


# -- the command line ------------------------------------------------------------------------------
def _run(tmp_path: Path, name: str, *flags: str, n: int = 4, env: dict | None = None):
    out = tmp_path / name
    args = ["ocnet.run", "--layers", "4", "--epochs", "2", "--batch-size", "128", "--dtype", "float64",
            "--quiet", "--timeline-steps", "0", *flags]
    if "--resume" not in flags:
        args += ["--out", str(out)]
    return out, run_mpi(n, *args, module=True, plain=True, timeout=180, env=env)


@pytest.mark.mpi
def test_a_grid_run_stopped_inside_an_epoch_resumes_exactly(tmp_path):
    """Penalty with batch norm at 2 × 2, stopped by SIGTERM on the second group's last rank
    inside epoch 1 and resumed, ends where the run that was never stopped ends — each group's
    auxiliary states from its own shards, the running statistics averaged at the stop."""
    flags = ("--solver", "penalty", "--blocks", "2", "--net", "conv", "--norm", "batch", "--channels", "4",
             "--data-parallel", "2")
    whole, proc = _run(tmp_path, "whole", *flags)
    assert proc.returncode == 0, proc.stderr
    cut, proc = _run(tmp_path, "cut", *flags, env={"OCNET_FAULT": "step:3:term:15"})
    assert proc.returncode == 143 and "stopped by SIGTERM at epoch 1, step 16 (batch 4 of 12)" in proc.stderr, \
        proc.stderr
    latest = json.loads((cut / "checkpoints" / "latest.json").read_text())
    assert (latest["epoch"], latest["batch"], latest["groups"]) == (1, 4, 2)
    assert (cut / "checkpoints" / "epoch_0001_batch_00004" / "group_001" / "rank_001.pt").is_file()
    _, proc = _run(tmp_path, "cut", *flags, "--resume", str(cut))
    assert proc.returncode == 0, proc.stderr
    a, b = torch.load(whole / "model.pt"), torch.load(cut / "model.pt")
    assert a.keys() == b.keys() and any("running_mean" in k for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-10, atol=1e-14)
    losses = [[json.loads(line)["loss"] for line in (run / "history.jsonl").read_text().splitlines()]
              for run in (whole, cut)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["ranks"] == 4 and summary["data_parallel"] == 2


@pytest.mark.mpi
def test_a_grid_run_resumes_on_another_grid(tmp_path):
    """Penalty (SGD, 2 blocks) at 2 × 2, stopped inside epoch 1, resumes at 1 × 2 and at
    4 × 1 to the uninterrupted run: the auxiliary states of each sample travel from the
    group that kept them to the group that owns the sample now."""
    flags = ("--solver", "penalty", "--blocks", "2", "--optimizer", "sgd", "--lr", "0.05")
    whole, proc = _run(tmp_path, "whole", *flags, "--data-parallel", "2")
    assert proc.returncode == 0, proc.stderr
    cut, proc = _run(tmp_path, "cut", *flags, "--data-parallel", "2", env={"OCNET_FAULT": "step:3:term:15"})
    assert proc.returncode == 143, proc.stderr
    shutil.copytree(cut, tmp_path / "cut4")
    expected = torch.load(whole / "model.pt")
    for run, n, groups in ((cut, 2, "1"), (tmp_path / "cut4", 4, "4")):
        _, proc = _run(tmp_path, run.name, *flags, "--data-parallel", groups, "--resume", str(run), n=n)
        assert proc.returncode == 0, proc.stderr
        got = torch.load(run / "model.pt")
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-14)


@pytest.mark.mpi
def test_groups_that_do_not_divide_the_ranks_are_refused_on_every_rank(tmp_path):
    _, proc = _run(tmp_path, "bad", "--data-parallel", "3")
    assert proc.returncode == 2
    assert proc.stderr.count("ocnet: error: --data-parallel 3 does not divide the job's 4 ranks") == 1, proc.stderr


@pytest.mark.mpi
def test_the_tutorial_plugin_clips_the_whole_batchs_gradient_on_the_grid(tmp_path):
    """docs/own_solver.rst's solver clips the gradient's norm after ``average_gradients()``: at
    2 × 2 it trains as on one rank (a clip of each group's share would not)."""
    from test_own_solver import _write
    _write(tmp_path)
    runs = {}
    for n, groups in ((1, 1), (4, 2)):
        out = tmp_path / f"D{groups}"
        proc = run_mpi(n, "ocnet.run", "--plugin", str(tmp_path / "mine.py"), "--solver", "clipped", "--clip", "0.5",
                       "--layers", "4", "--epochs", "1", "--dtype", "float64", "--data-parallel", str(groups),
                       "--quiet", "--timeline-steps", "0", "--out", str(out), module=True, plain=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
        runs[groups] = torch.load(out / "model.pt"), [r["grad_norm"] for r in history if r["kind"] == "iter"]
    (one, norms_one), (grid, norms_grid) = runs[1], runs[2]
    assert max(norms_one) > 0.5  # the clip acts
    assert norms_grid == pytest.approx(norms_one, rel=1e-10)
    for k in one:
        torch.testing.assert_close(grid[k], one[k], rtol=1e-10, atol=1e-14)


def test_the_slurm_grid_script_launches_d_groups_and_refuses_a_d_that_does_not_divide(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\necho "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "mpi_runs" / "slurm_grid.sbatch"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "7"}
    ok = launcher.run(["bash", str(script), "4", "cifar10_serial.toml", "--epochs", "3"], env=env, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["--mpi=pmix", "python", "-m", "ocnet.run", "--config", "cifar10_serial.toml",
                                 "--data-parallel", "4", "--out", "runs/cifar10_serial-D4-7", "--quiet",
                                 "--epochs", "3"]
    bad = launcher.run(["bash", str(script), "3", "cifar10_serial.toml"], env=env, timeout=30)
    assert bad.returncode == 2 and "3 data groups do not divide the job's 16 tasks" in bad.stderr

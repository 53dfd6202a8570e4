"""Nested iteration in depth (``--nested``): the options refused before training, the levels'
records and summary, the hand-over to a finer level (the interpolation in layer time of the
coarser level's trained network), independence of the rank count, and a resumed run that
crosses a level change bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_mpi

from ocnet.model import depth
from ocnet.model.data import load
from ocnet.model.problem import from_config
from ocnet.results.plot import figures
from ocnet.results.rundir import load_run
from ocnet.results.series import level_changes
from ocnet.run import main
from ocnet.runs import nested
from ocnet.runs.config import ConfigError, resolve
from ocnet.runs.job import EXIT_SETUP

# 3 steps an epoch; 8 layers: the levels of --nested 2,1 have 4 and 8
TINY = ["--layers", "8", "--width", "8", "--limit-batches", "3", "--dtype", "float64", "--quiet",
        "--timeline-steps", "0", "--plots", "none"]
NESTED = ["--nested", "2,1", "--nested-epochs", "1", "--epochs", "2"]


def _model(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def _mpi(n: int, out: Path, *flags: str, env: dict | None = None):
    args = [*flags] if "--resume" in flags else [*TINY, *flags, "--out", str(out)]
    return run_mpi(n, "ocnet.run", *args, module=True, plain=True, timeout=120, env=env)


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--nested", "4,2"], "nested: the factors 4,2 must be positive and end in 1"),
    (["--nested", "2,4,1", "--nested-epochs", "1,1"], "nested: the factors 2,4,1 must decrease strictly"),
    (["--nested", "2,2,1", "--nested-epochs", "1,1"], "nested: the factors 2,2,1 must decrease strictly"),
    (["--nested", "1"], "nested: one level (1) is plain training"),
    (["--nested", "3,1", "--nested-epochs", "1"], "nested: factor 3 does not divide the 16 layers"),
    (["--nested", "4,2,1", "--nested-epochs", "1"], "nested_epochs: the 3 levels 4,2,1 need 2 of them"),
    (["--nested", "2,1", "--nested-epochs", "1,1"], "nested_epochs: the 2 levels 2,1 need 1 of them"),
    (["--nested", "2,1"], "nested_epochs: the 2 levels 2,1 need 1 of them"),
    (["--nested", "4,2,1", "--nested-epochs", "3,2", "--epochs", "5"],
     "nested_epochs: the coarse levels' 5 epochs leave none of the 5 epochs"),
    (["--nested", "2,1", "--nested-epochs", "0"], "nested_epochs must be at least 1"),
    (["--nested-epochs", "2"], "nested_epochs: --nested-epochs needs --nested"),
    (["--nested", "2,1", "--nested-epochs", "1", "--nested-interpolate", "cubic"],
     "nested_interpolate must be one of constant, linear"),
])
def test_bad_levels_are_refused_before_training(flags, message):
    with pytest.raises(ConfigError) as e:
        resolve(flags)
    assert str(e.value).startswith(message), str(e.value)


def test_the_plan_counts_epochs_on_across_levels():
    config = resolve(["--nested", "4,2,1", "--nested-epochs", "2,3", "--epochs", "8", "--layers", "16"])
    levels = nested.plan(config, n_stages=1)
    assert [(lv.layers, lv.first, lv.end) for lv in levels] == [(4, 0, 2), (8, 2, 5), (16, 5, 8)]
    assert [nested.level_of(levels, e) for e in range(8)] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [(lv.layers, lv.first, lv.end) for lv in nested.plan(resolve([]), 1)] == [(16, 0, 20)]
    # 12 layers over 2 stages are 6 + 6: the factor 4 divides 12 but neither stage
    config = resolve(["--nested", "4,1", "--nested-epochs", "1", "--layers", "12", "--epochs", "2"])
    with pytest.raises(ConfigError, match="nested: coarsening factor c = 4 does not divide stage 0's 6 layers"):
        nested.plan(config, n_stages=2)


def test_a_bad_level_on_the_command_line_exits_2_with_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--nested", "8,3,1", "--nested-epochs", "1,1", "--out", str(out)]) == EXIT_SETUP
    err = capsys.readouterr().err
    assert err == "ocnet: error: nested: factor 3 does not divide the 8 layers\n", err
    assert not out.exists()
    # a stage the factor does not divide: known once the network is (conv: one stage a channel count)
    code = main([*TINY, "--net", "conv", "--channels", "4,4", "--layers", "6", "--nested", "2,1",
                 "--nested-epochs", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_SETUP and err.count("\n") == 1, err
    assert err.startswith("ocnet: error: nested: coarsening factor c = 2 does not divide stage 0's 3 layers"), err
    assert not out.exists()


@pytest.mark.mpi
def test_a_coarse_level_with_fewer_layers_than_ranks_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    proc = _mpi(4, out, "--nested", "4,1", "--nested-epochs", "1", "--epochs", "2")
    assert proc.returncode == EXIT_SETUP, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ocnet: error:")]
    assert errors == ["ocnet: error: --nested 4,1: the level of 2 layers has no partition on 4 ranks: "
                      "4 ranks but only 2 layers: every rank needs at least one layer; use at most 2 ranks "
                      "or more layers"], proc.stderr
    assert not out.exists()


# -- records ---------------------------------------------------------------------------------------
def test_every_record_carries_its_level_and_the_summary_lists_the_levels(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--layers", "16", "--nested", "4,2,1", "--nested-epochs", "2,1", "--epochs", "4",
                 "--out", str(out)]) == 0
    records = _records(out)
    epochs = [(r["epoch"], r["level"]) for r in records if r["kind"] == "epoch"]
    assert epochs == [(0, 4), (1, 4), (2, 8), (3, 16)]
    iters = [(r["step"], r["level"]) for r in records if r["kind"] == "iter"]
    assert iters == [(s, 4) for s in range(1, 7)] + [(s, 8) for s in range(7, 10)] + [(s, 16) for s in (10, 11, 12)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["levels"] == [{"layers": 4, "epochs": 2}, {"layers": 8, "epochs": 1}, {"layers": 16, "epochs": 1}]
    assert (summary["layers"], summary["epochs"], summary["steps"]) == (16, 4, 12)
    model = _model(out)
    assert max(int(k.split(".")[1]) for k in model if k.startswith("layers.")) == 15  # the finest network
    # the loss plot marks the level changes
    run = load_run(out)
    assert level_changes(run) == [(7, 8), (10, 16)]
    fig = figures([run])["convergence"]
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["N=8", "N=16"]


def test_a_plain_run_has_no_levels(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert all("level" not in r for r in _records(out))
    assert "levels" not in json.loads((out / "summary.json").read_text())


def test_best_pt_holds_the_network_of_the_best_epochs_level(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--nested", "2,1", "--nested-epochs", "2", "--epochs", "3", "--val-split", "0.2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    best = next(r for r in _records(out) if r["kind"] == "epoch" and r["epoch"] == summary["best_epoch"])
    steps = {int(k.split(".")[1]) for k in torch.load(out / "best.pt", weights_only=True) if k.startswith("layers.")}
    assert len(steps) == best["level"]
    assert summary["best_test_acc"] is not None  # scored on that level's network


# -- the level change ------------------------------------------------------------------------------
def _interpolated(coarse_run: Path, layers: int, how: str) -> dict[str, torch.Tensor]:
    """The network of ``layers`` layers that interpolates ``coarse_run``'s model.pt."""
    config = resolve([*TINY, "--layers", str(layers)])
    data = load("digits", None, 0, 0.0)
    coarse = from_config(config, data.input_shape, data.n_classes, layers=layers // 2)
    coarse.load_state_dict(_model(coarse_run))
    fine = from_config(config, data.input_shape, data.n_classes)
    depth.interpolate(coarse, fine, how)
    return fine.state_dict()


@pytest.mark.parametrize("how", ["constant", "linear"])
def test_the_next_level_starts_from_the_interpolation_of_the_trained_coarse_network(tmp_path, how):
    """``--max-steps`` stops the run at the end of the coarse level: the exported network is the
    finest level as the hand-over made it, which is the interpolation of a plain run of the
    coarse network (the coarse level trains as a run of that many layers does)."""
    coarse, cut = tmp_path / "coarse", tmp_path / "cut"
    assert main([*TINY, "--layers", "4", "--epochs", "1", "--out", str(coarse)]) == 0
    assert main([*TINY, *NESTED, "--nested-interpolate", how, "--max-steps", "3", "--out", str(cut)]) == 0
    assert [r["loss"] for r in _records(cut)] == [r["loss"] for r in _records(coarse)]
    expected, got = _interpolated(coarse, 8, how), _model(cut)
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    # not the 8-layer network the seed builds: the steps were handed over
    config = resolve([*TINY])
    data = load("digits", None, 0, 0.0)
    seeded = from_config(config, data.input_shape, data.n_classes).state_dict()
    assert not torch.equal(got["layers.1.F.linear.weight"], seeded["layers.1.F.linear.weight"])
    if how == "constant":  # steps 2j and 2j + 1 are coarse step j
        assert torch.equal(got["layers.2.F.linear.weight"], got["layers.3.F.linear.weight"])
    summary = json.loads((cut / "summary.json").read_text())
    assert summary["levels"] == [{"layers": 4, "epochs": 1}, {"layers": 8, "epochs": 0}]


@pytest.mark.mpi
def test_the_fine_level_trains_from_the_interpolation_on_two_ranks(tmp_path):
    """At a learning rate too small to move any parameter (Adam's step ~1e-300), a whole nested
    run on 2 ranks ends at the interpolation of the coarse network: the ranks' slices were
    gathered before the hand-over."""
    coarse, run = tmp_path / "coarse", tmp_path / "run"
    tiny = ("--lr", "1e-300")
    assert main([*TINY, *tiny, "--layers", "4", "--epochs", "1", "--out", str(coarse)]) == 0
    proc = _mpi(2, run, *NESTED, *tiny)
    assert proc.returncode == 0, proc.stderr
    expected, got = _interpolated(coarse, 8, "linear"), _model(run)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=1e-250)
    assert not torch.equal(got["layers.1.F.linear.weight"], got["layers.2.F.linear.weight"])


# -- the rank count and resuming -----------------------------------------------------------------
@pytest.mark.mpi
def test_one_and_two_ranks_train_the_same_nested_network(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*TINY, *NESTED, "--out", str(one)]) == 0
    proc = _mpi(2, two, *NESTED)
    assert proc.returncode == 0, proc.stderr
    a, b = _model(one), _model(two)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-10)
    losses = [[r["loss"] for r in _records(d)] for d in (one, two)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)


@pytest.mark.mpi
@pytest.mark.parametrize("fault,stop", [
    ("step:1:term:2", "stopped by SIGTERM at epoch 0, step 3"),  # a checkpoint of the coarse level
    ("step:1:term:4", "stopped by SIGTERM at epoch 1, step 5"),  # one of the fine level, after the change
])
def test_a_run_stopped_and_resumed_across_a_level_change_is_bit_identical(tmp_path, fault, stop):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    flags = (*NESTED, "--checkpoint-every", "1")
    assert _mpi(2, whole, *flags).returncode == 0
    proc = _mpi(2, cut, *flags, env={"OCNET_FAULT": fault})
    assert proc.returncode == 143 and stop in proc.stderr, proc.stderr
    layers = 4 if fault.endswith(":2") else 8
    assert json.loads((cut / "checkpoints" / "latest.json").read_text())["n_layers"] == layers
    proc = _mpi(2, cut, "--resume", str(cut), "--quiet", "--plots", "none")
    assert proc.returncode == 0, proc.stderr
    a, b = _model(whole), _model(cut)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(b[k], a[k]), k
    strip = ("wall_time",)
    records = [[{k: v for k, v in r.items() if k not in strip} for r in _records(d)] for d in (whole, cut)]
    assert records[1] == records[0]
    assert json.loads((cut / "summary.json").read_text())["levels"] == [{"layers": 4, "epochs": 1},
                                                                       {"layers": 8, "epochs": 1}]

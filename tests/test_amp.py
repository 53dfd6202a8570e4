"""AMP (asynchronous model-parallel training): the serial solver where it must be, one result
whatever the timing, a state that resumes in the middle of the pipeline, the staleness it
reports, its options, the hybrid around it."""
import io
import json

import pytest
import torch
from conftest import run_mpi

from ocnet.run import main
from ocnet.runs.testing import _make, _toy, _train, check_solver
from ocnet.solvers import AMP, Hybrid, Serial


def _batches(solver, steps, first=0):
    x, y = _toy()
    out = []
    for s in range(first, first + steps):
        idx = torch.arange(len(y)).roll(-8 * s)[:24]
        out.append(solver.step(x[idx], y[idx], idx))
    return out


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """tests/mpi/amp_ranks.py's results on 2 and 3 ranks (run once, on first use)."""
    results = {}

    def on(n):
        if n not in results:
            out = tmp_path_factory.mktemp(f"amp{n}") / "out.json"
            proc = run_mpi(n, "amp_ranks.py", str(out), timeout=120)
            assert proc.returncode == 0, proc.stderr[-3000:]
            results[n] = json.loads(out.read_text())
        return results[n]
    return on


# -- exact where it must be --------------------------------------------------------------------
def test_one_in_flight_and_an_update_per_batch_is_the_serial_solver_on_one_rank():
    a, amp = _make(AMP, {"micro_batches": 4, "amp_update_every": 4, "amp_in_flight": 1})
    s, serial = _make(Serial, {"micro_batches": 4})
    assert [r["loss"] for r in _batches(amp, 3)] == [r["loss"] for r in _batches(serial, 3)]
    amp.end_epoch(0)
    for p, q in zip(a.parameters(), s.parameters()):
        assert torch.equal(p, q)


@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_one_in_flight_and_an_update_per_batch_is_the_serial_solver(ranks, n):
    r = ranks(n)["serial"]
    assert r["same"] == [True] * n  # every rank's parameters, bitwise
    amp, serial = r["losses"][-1]
    assert amp == serial and all(isinstance(v, float) for v in amp)


# -- one result whatever the timing -----------------------------------------------------------
@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_one_result_when_a_rank_is_slow(ranks, n):
    r = ranks(n)["repeat"]
    assert r["same"] == [True] * n  # parameters and records, bitwise, with rank P // 2 slowed
    # the ranks before the last ran backwards through weights newer than their forwards'
    assert any(int(k) > 0 for rec in r["records"][0] for k in rec["staleness"])


# -- the state in the middle of the pipeline --------------------------------------------------
def test_state_between_updates_resumes_bitwise_on_one_rank():
    """k = 3, 4 micro-batches: after a step, gradients accumulate towards the next update."""
    opts = {"micro_batches": 4, "amp_update_every": 3}
    a, amp = _make(AMP, opts)
    _batches(amp, 1)
    assert any(p.grad is not None for p in amp.network.parameters())
    buf = io.BytesIO()
    torch.save(amp.state_dict(), buf)
    b, twin = _make(AMP, opts)
    twin.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert _batches(amp, 3, first=1) == _batches(twin, 3, first=1)
    assert amp.end_epoch(0) == twin.end_epoch(0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.mpi
def test_state_with_micro_batches_in_flight_resumes_bitwise(ranks):
    """Saved after a step on 2 ranks, with one micro-batch held on rank 0 and its adjoint
    already sent by rank 1: the restored solver has no graph for it and recomputes, bitwise
    what the graph gives (no update came between its forward and its backward)."""
    r = ranks(2)["resume"]
    assert r["held"] == [1, 0]
    assert r["same"] == [True, True]
    first, twin = r["kinds"][0]
    # the recompute is one forward more, before the same backwards
    assert twin["forward_graph"] == first["forward_graph"] + 1 and twin["backward"] == first["backward"]
    assert r["kinds"][1][0] == r["kinds"][1][1]  # the last rank held nothing


@pytest.mark.mpi
def test_solver_contract():
    check_solver(AMP, exact=True, ranks=(2, 3), layers=4)


# -- staleness ----------------------------------------------------------------------------------
@pytest.mark.mpi
def test_staleness_of_two_ranks_two_in_flight_update_every_backward(ranks):
    """P = 2, m = 2, k = 1, 4 micro-batches a step, 3 steps and the epoch's end.  Rank 1
    runs F(j) B(j) and updates after each: never stale.  Rank 0 runs F(0), then F(j+1) B(j):
    B(0) comes before its first update, every later B(j) after the update that followed
    B(j-1), while F(j) came before it: staleness 1.  It runs 3, 4, 4 backwards in the steps
    and the last one when the epoch ends."""
    rank0, rank1 = ranks(2)["staleness"]
    assert rank0 == [{"0": 1, "1": 2}, {"1": 4}, {"1": 4}, {"1": 1}]
    assert rank1 == [{"0": 4}, {"0": 4}, {"0": 4}, {}]


# -- options ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--amp-update-every", "--micro-batches"])
def test_zero_is_refused_before_training(tmp_path, capsys, flag):
    code = main(["--solver", "amp", flag, "0", "--layers", "4", "--quiet", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("ocnet: error:"), err
    assert flag.lstrip("-").replace("-", "_") in err and "at least 1" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.mpi
def test_resuming_on_another_rank_count_is_refused(tmp_path, capsys):
    flags = ["--solver", "amp", "--layers", "4", "--dtype", "float64", "--quiet", "--threads", "1"]
    proc = run_mpi(2, "ocnet.run", *flags, "--epochs", "1", "--checkpoint-every", "1", "--out", str(tmp_path),
                   module=True, plain=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    code = main(["--resume", str(tmp_path), "--epochs", "2", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "solver 'amp' cannot resume on another rank count or partition (written by 2 ranks, this job has 1)" \
        in err


@pytest.mark.mpi
@pytest.mark.parametrize("batch, code", [(64, 0), (7, 3)])
def test_data_groups_must_run_as_many_micro_batches(tmp_path, batch, code):
    """Two data groups of two ranks: batches that split evenly train; a batch of 7 gives the
    groups 4 and 3 samples, so 4 and 3 micro-batches, and every rank stops with one message."""
    flags = ["--solver", "amp", "--layers", "4", "--dtype", "float64", "--quiet", "--threads", "1",
             "--data-parallel", "2", "--batch-size", str(batch), "--epochs", "1", "--limit-batches", "3",
             "--out", str(tmp_path / "run")]
    proc = run_mpi(4, "ocnet.run", *flags, module=True, plain=True)
    assert proc.returncode == code, proc.stderr[-3000:]
    if code:
        assert proc.stderr.count("ocnet: error:") == 1
        assert "every group must hold as many" in proc.stderr


# -- the hybrid ---------------------------------------------------------------------------------
def test_hybrid_settles_amp_before_a_serial_step():
    _, hybrid = _make(Hybrid, {"parallel": "amp", "serial_every": 2, "micro_batches": 4, "amp_update_every": 3})
    x, y = _toy()
    records = _train(hybrid, x, y, 5)
    assert [r.get("phase") for r in records[1:-1]] == ["parallel", "serial"] * 2 + ["parallel"]
    assert all(isinstance(r["loss"], float) for r in records[1:-1])


@pytest.mark.mpi
def test_hybrid_around_amp_on_two_ranks(ranks):
    rank0, rank1 = ranks(2)["hybrid"]
    assert rank0["empty"] and rank1["empty"] and rank0["finite"] and rank1["finite"]
    phases = [r.get("phase") for r in rank1["records"][:-1]]
    assert phases == ["parallel", "serial"] * 2 + ["parallel"]
    # Rank 0 holds one micro-batch after an amp step: the settle before the serial step runs
    # its backward, reported with the next amp step's own 3 (the pipeline fills anew).
    assert [sum(rank0["records"][i]["staleness"].values()) for i in (0, 2, 4)] == [3, 3 + 1, 3 + 1]
    assert all(isinstance(r["loss"], float) for r in rank1["records"][:-1])

"""The mgrit solver: gradients against the serial solver, rank-count invariance, the solver
contract, clear errors, and one-shot training on digits against serial training."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from conftest import MPI_SCRIPTS, run_mpi

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm
from ocnet.runs.testing import check_solver
from ocnet.solvers.mgrit import MGRIT

pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    spec = importlib.util.spec_from_file_location("mgrit_network", MPI_SCRIPTS / "mgrit_network.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_rank():
    return _script().run(SelfComm())


def test_exact_gradients_match_serial(one_rank):
    # 32 layers, float64, three levels, tolerance 1e-10 relative to |u_0| and |λ_N|
    assert one_rank["grad_rel_err"] < 1e-6
    res = one_rank["exact"]["residual"]
    assert res["forward"][-1] <= 1e-10 * res["forward"][0] * 10 and len(res["forward"]) <= 16
    assert one_rank["exact"]["n_layers"] == 32


@pytest.mark.mpi
def test_four_ranks_same_gradients_and_one_shot_history(one_rank, tmp_path):
    path = tmp_path / "p4.json"
    proc = run_mpi(4, "mgrit_network.py", str(path), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    four = json.loads(path.read_text())
    assert four["grad_rel_err"] < 1e-6
    for a, b in zip(four["one_shot_loss"], one_rank["one_shot_loss"]):
        assert a == pytest.approx(b, rel=1e-12)
    for ra, rb in zip(four["one_shot"], one_rank["one_shot"]):
        for phase in ("forward", "adjoint"):
            assert len(ra["residual"][phase]) == 2  # one iteration: r_0, r_1
            assert ra["residual"][phase] == pytest.approx(rb["residual"][phase], rel=1e-12)


def test_solver_contract():
    check_solver(MGRIT, exact=True, rtol=1e-9, mgrit_tol=1e-13, coarsening=2)
    check_solver(MGRIT, mgrit_mode="one_shot", coarsening=2)
    check_solver(MGRIT, mgrit_mode="one_shot", coarsening=2, mgrit_warm_start="sample")


def test_state_dict_carries_warm_starts():
    problem = build((8,), 3, net="dense", layers=8, width=4, seed=0, dtype=torch.float64)
    solver = MGRIT(problem.local(Partition(8, 1), 0), SelfComm(), lambda p: torch.optim.SGD(p, lr=0.1),
                   mgrit_mode="one_shot", coarsening=2, mgrit_warm_start="sample")
    x, y = torch.randn(6, 8, dtype=torch.float64), torch.arange(6) % 3
    rec = solver.step(x, y, torch.arange(10, 16))
    warm = solver.state_dict()["warm_start"]  # a SampleStore per solve: rows per time point
    assert sorted(map(int, warm["u"])) == list(range(9)) and sorted(map(int, warm["lam"])) == list(range(9))
    assert warm["u"]["8"].shape == (16, 4)  # rows for samples 0 … 15
    assert set(rec) == {"loss", "residual", "conv_factor", "n_layers", "inexactness", "mgrit_iters", "step_evals"}
    assert 0 < rec["conv_factor"]["forward"] < 1


def test_unaligned_partition_and_several_stages_fail_clearly():
    problem = build((8,), 3, net="dense", layers=10, width=4, seed=0)
    network = problem.local(Partition(10, 3), 2)  # layers 7…9: coarse point 8 needs layer 6
    with pytest.raises(ValueError, match="multiple of c\\^\\(levels-1\\)"):
        MGRIT(network, SelfComm(), lambda p: torch.optim.SGD(p, lr=0.1), coarsening=2, mgrit_levels=2)
    staged = build((3, 8, 8), 3, net="conv", layers=4, channels=[4, 8], seed=0)
    with pytest.raises(ValueError, match="single-stage"):
        MGRIT(staged.local(Partition(staged.n_layers, 1), 0), SelfComm(), lambda p: torch.optim.SGD(p, lr=0.1))


@pytest.mark.mpi
def test_one_shot_training_on_digits_matches_serial_accuracy(tmp_path):
    common = ["--epochs", "10", "--layers", "16", "--quiet"]
    serial = run_mpi(1, "ocnet.run", "--solver", "serial", "--out", str(tmp_path / "serial"), *common,
                     module=True, timeout=240)
    assert serial.returncode == 0, serial.stderr[-3000:]
    mgrit = run_mpi(4, "ocnet.run", "--solver", "mgrit", "--mgrit-mode", "one_shot", "--out",
                    str(tmp_path / "mgrit"), *common, module=True, timeout=240)
    assert mgrit.returncode == 0, mgrit.stderr[-3000:]
    acc = {k: json.loads((tmp_path / k / "summary.json").read_text())["final_test_acc"] for k in ("serial", "mgrit")}
    assert acc["serial"] > 0.9
    assert abs(acc["mgrit"] - acc["serial"]) <= 0.02, acc
    records = [json.loads(line) for line in (tmp_path / "mgrit" / "history.jsonl").read_text().splitlines()]
    iters = [r for r in records if r["kind"] == "iter"]
    assert all(len(r["residual"]["forward"]) == 2 and r["n_layers"] == 16 for r in iters)
    factors = [r["conv_factor"]["forward"] for r in iters]
    assert all(f is not None and math.isfinite(f) for f in factors)
    assert sum(factors) / len(factors) < 0.5  # one V-cycle with FCF contracts well


def _storage_script():
    spec = importlib.util.spec_from_file_location("mgrit_storage", MPI_SCRIPTS / "mgrit_storage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_storage(result):
    assert set(result) == set(_storage_script().CASES)
    for case, got in result.items():
        assert got["err"] < 1e-12, case  # graph and states: the same gradients, three steps
        assert got["recompute_graph"] == 0.0 and got["recompute_states"] == 1.0, case
        assert got["graphs_left"] == 0.0, case  # freed after each step
        assert "forward_graph" in got["kinds_graph"], case


def test_graph_storage_gives_the_gradients_of_states_storage():
    _check_storage(_storage_script().run(SelfComm()))


@pytest.mark.mpi
def test_graph_storage_on_three_ranks(tmp_path):
    path = tmp_path / "storage.json"
    proc = run_mpi(3, "mgrit_storage.py", str(path), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_storage(json.loads(path.read_text()))


@pytest.mark.parametrize("reuse,per_solve", [(False, 106), (True, 89)])
def test_torchbraids_settings_evaluate_its_steps(reuse, per_solve):
    # skip, F on the fine level, FCF on the coarse ones, one correction (XBraid's max_iter 2):
    # 106 forward steps per solve at N = 32, c = 4, 3 levels, 89 when no coarse step is
    # evaluated twice from the same state (tests/test_mgrit_work.py counts which); the
    # adjoint's steps are input-gradients of the stored graphs, so no layer runs forward again.
    from ocnet.ranks import timeline
    problem = build((8,), 3, net="dense", layers=32, width=4, seed=0, dtype=torch.float64)
    cfg = {"coarsening": 4, "mgrit_levels": 3}
    network = problem.local(MGRIT.partition(32, 1, cfg), 0)
    solver = MGRIT(network, SelfComm(), lambda p: torch.optim.SGD(p, lr=0.0), mgrit_mode="one_shot",
                   mgrit_warm_start="none", mgrit_iters=1, mgrit_skip=True, mgrit_fine_relax="F",
                   mgrit_reuse=reuse, **cfg)
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 3, (16,))
    rec = timeline.Recorder()
    with timeline.recording(rec):
        solver.step(x, y, torch.arange(16))
    steps = rec.steps()
    assert steps.get("forward", 0) + steps.get("forward_graph", 0) == per_solve
    # the fine adjoint's last pass ("backward") adds the parameter gradients in the same call
    assert steps.get("vjp", 0) + steps.get("backward", 0) == per_solve and steps.get("backward", 0) == 32
    assert "vjp_recompute" not in steps


def test_exact_mode_with_skip_and_fine_f_relaxation_matches_serial():
    check_solver(MGRIT, exact=True, rtol=1e-9, mgrit_tol=1e-13, coarsening=2, mgrit_levels=3, mgrit_skip=True,
                 mgrit_fine_relax="F")


def test_a_default_exact_solve_on_one_rank_iterates_to_its_tolerance():
    """The defaults (16 layers, two levels, c = 2, exact mode: F-relaxation on the fine level)
    on one rank: each solve takes several iterations, each reducing the residual by a factor
    below 1 yet far from round-off, and stops on its tolerance before the N/c iterations
    after which two-level MGRIT with F-relaxation is exact (with c = 4 and FCF it was exact
    after N/(2c) = 2 iterations: a sequential sweep, not a multigrid solve)."""
    from ocnet.model.data import load
    from ocnet.model.problem import from_config
    from ocnet.runs.config import resolve
    from ocnet.runs.job import build_solver
    config = resolve(["--solver", "mgrit", "--problem", "peaks"])
    data = load("peaks", None, 0, 0.0, None)
    problem = from_config(config, data.input_shape, data.n_classes)
    solver = build_solver(MGRIT, problem.local(Partition(problem.n_layers, 1), 0), SelfComm(), config,
                          torch.device("cpu"))
    for batch in range(2):  # from a zero guess, then warm-started from the first batch's states
        rows = torch.arange(64 * batch, 64 * (batch + 1))
        record = solver.step(data.x_train[rows], data.y_train[rows], rows)
        for phase in ("forward", "adjoint"):
            r = record["residual"][phase]
            ratios = [b / a for a, b in zip(r, r[1:])]
            assert 3 <= len(ratios) < config["layers"] // config["coarsening"], r
            assert all(1e-3 < q < 1 for q in ratios), ratios
            assert r[-1] <= record["tolerance"][phase] < r[-2], r
            assert 0 < record["conv_factor"][phase] < 1

"""Penalty and augmented-Lagrangian solvers on one process: the initial sweep, local
gradients against autograd of the whole objective (float64), the schedule, the contract."""
import importlib.util
from pathlib import Path

import pytest
import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm
from ocnet.ranks.filters import FILTERS
from ocnet.runs.testing import check_solver
from ocnet.solvers.al import AugmentedLagrangian
from ocnet.solvers.penalty import Penalty

_spec = importlib.util.spec_from_file_location(
    "penalty_gradients", Path(__file__).parent / "mpi" / "penalty_gradients.py")
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

NETS = {"dense": ((1, 8, 8), dict(net="dense", width=6)),
        "conv": ((2, 8, 8), dict(net="conv", channels=[4]))}


def _setup(net, cls, blocks, device, filter_name="identity", **options):
    shape, spec = NETS[net]
    problem = build(shape, 4, layers=8, seed=5, dtype=torch.float64, **spec).to(device)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(20, *shape, generator=gen, dtype=torch.float64).to(device)
    y = torch.randint(0, 4, (20,), generator=gen).to(device)
    network = problem.local(Partition(problem.n_layers, 1), 0)
    solver = cls(network, SelfComm(), lambda p: torch.optim.SGD(p, lr=0.1), device=device,
                 filter=FILTERS[filter_name], blocks=blocks, **options)
    return problem, solver, x, y


@pytest.mark.parametrize("net", NETS)
def test_initial_sweep_satisfies_constraints(net, device):
    problem, solver, x, y = _setup(net, AugmentedLagrangian, 4, device)
    solver.begin_epoch(0, x, y)
    index = torch.tensor([4, 1, 15, 7, 0])
    record = solver.evaluate(x[index], y[index], index)
    with torch.no_grad():
        J = float(problem.loss(problem(x[index]), y[index]))
    assert record["constraint_violation"] <= 1e-24
    assert record["penalized_objective"] == pytest.approx(J, rel=1e-13, abs=0)
    assert record["loss"] == pytest.approx(J, rel=1e-13, abs=0)
    assert sorted(solver.z.rows) == [1, 2, 3] and solver.z.rows[1].shape[0] == 20


@pytest.mark.parametrize("cls", [Penalty, AugmentedLagrangian])
@pytest.mark.parametrize("net", NETS)
def test_local_gradients_equal_autograd(cls, net, device):
    problem, solver, x, y = _setup(net, cls, 4, device, rho=0.7)
    solver.begin_epoch(0, x, y)
    ref.perturb(solver, 11)
    index = torch.tensor([3, 17, 0, 9, 12, 5])
    piece = ref.local_pieces(solver, problem, x[index], y[index], index)
    result = ref.compare(problem, [piece], x[index], y[index], index, solver.rho, solver.filter,
                         solver.multipliers)
    assert result["all_params"] and result["n_z"] == 3
    assert result["theta_rel_err"] < 1e-10
    assert result["z_rel_err"] < 1e-10
    assert piece["record"]["penalized_objective"] == pytest.approx(result["objective"], rel=1e-12)
    assert piece["record"]["constraint_violation"] > 1e-3  # the perturbation broke the constraints


def test_step_updates_states_by_their_gradient(device):
    problem, solver, x, y = _setup("dense", AugmentedLagrangian, 4, device, rho=2.0, aux_lr=0.5, mu_step=0.1)
    solver.begin_epoch(0, x, y)
    ref.perturb(solver, 1)
    index = torch.tensor([2, 8, 5])
    rows_before = {b: rows.clone() for b, rows in solver.z.rows.items()}
    z_before = {b: solver.z.get(b, index) for b in solver.owned}
    mu_before = {b: solver.mu.get(b, index) for b in solver.owned}
    z, r, _ = solver.gradients(x[index], y[index], index)
    grads = {b: t.grad.clone() for b, t in z.items()}
    solver.step(x[index], y[index], index)
    eta = 0.5 / 2.0
    for b in solver.owned:
        torch.testing.assert_close(solver.z.get(b, index), z_before[b] - eta * 3 * grads[b], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(solver.mu.get(b, index), mu_before[b] + 0.1 * 2.0 * r[b], rtol=1e-12, atol=1e-14)
    others = torch.ones(20, dtype=torch.bool)
    others[index] = False  # the other samples' states stay as they were
    assert all(torch.equal(solver.z.rows[b][others], rows_before[b][others]) for b in solver.owned)


def test_schedule_and_records(device):
    problem, solver, x, y = _setup("dense", AugmentedLagrangian, 2, device, rho=0.5, rho_growth=2.0,
                                   rho_max=3.0, aux_lr=0.6, aux_decay=0.5)
    assert solver.schedule(0) == (0.5, pytest.approx(1.2))
    assert solver.schedule(1) == (1.0, pytest.approx(0.3))
    assert solver.schedule(3)[0] == 3.0  # capped
    rec = solver.begin_epoch(1, x, y)
    assert rec["rho"] == 1.0 and rec["mu_norm"] == 0.0
    out = solver.step(x[:5], y[:5], torch.arange(5))
    assert set(out) >= {"loss", "constraint_violation", "penalized_objective", "rho", "mu_sq"}
    assert not solver.augments(0)


def test_blocks_must_fit():
    problem = build((1, 8, 8), 4, net="dense", layers=3, width=4, seed=0)
    with pytest.raises(ValueError, match="blocks"):
        Penalty(problem.local(Partition(3, 1), 0), SelfComm(), torch.optim.Adam, blocks=5)


@pytest.mark.parametrize("cls", [Penalty, AugmentedLagrangian])
def test_solver_contract(cls):
    check_solver(cls, blocks=2)


def test_rho_continuation_restarts_when_the_network_changes(device):
    problem, solver, x, y = _setup("dense", Penalty, 2, device)  # defaults: ρ = 1·3^epoch
    assert solver.begin_epoch(0, x, y)["rho"] == 1.0
    assert solver.begin_epoch(2, x, y)["rho"] == 9.0
    solver.network_changed()  # the hybrid's serial correction
    assert solver.begin_epoch(3, x, y)["rho"] == 1.0
    assert solver.begin_epoch(4, x, y)["rho"] == 3.0
    _, again, _, _ = _setup("dense", Penalty, 2, device)
    again.load_state_dict(solver.state_dict())  # the start of the continuation is checkpointed
    assert again.begin_epoch(5, x, y)["rho"] == 9.0

"""The serial-parallel hybrid: the plan, exact reproduction of serial, re-initialisation."""
import pytest
import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm
from ocnet.runs.testing import check_solver
from ocnet.solvers.base import ParallelSolver
from ocnet.solvers.hybrid import Hybrid
from ocnet.solvers.serial import Serial


def _data(n=24):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, 8, 8, generator=gen, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=gen))


def _solver(cls, **options):
    problem = build((1, 8, 8), 4, net="conv", layers=4, channels=[4], seed=2, dtype=torch.float64)
    network = problem.local(Partition(problem.n_layers, 1), 0)
    return problem, cls(network, SelfComm(), lambda p: torch.optim.Adam(p, lr=1e-2), **options)


def _epochs(solver, x, y, epochs, batch=8):
    records = []
    for epoch in range(epochs):
        records.append(solver.begin_epoch(epoch, x, y))
        for i in range(0, len(y), batch):
            idx = torch.arange(i, min(len(y), i + batch))
            records.append(solver.step(x[idx], y[idx], idx))
    return records


def test_zero_parallel_epochs_reproduces_serial():
    x, y = _data()
    p1, hybrid = _solver(Hybrid, parallel_epochs=0, serial_epochs=1)
    p2, serial = _solver(Serial)
    rec = _epochs(hybrid, x, y, 3)
    _epochs(serial, x, y, 3)
    for (k, a), b in zip(p1.named_parameters(), p2.parameters()):
        assert torch.equal(a, b), k
    assert {r.get("phase") for r in rec} == {"serial"}
    assert all(hybrid.augments(e) for e in range(3))


def test_plan_and_reinitialisation_after_correction():
    x, y = _data()
    _, hybrid = _solver(Hybrid, parallel="al", parallel_epochs=2, serial_epochs=1, blocks=2)
    assert [hybrid.phase(e) for e in range(6)] == ["parallel", "parallel", "serial"] * 2
    assert [hybrid.augments(e) for e in range(3)] == [False, False, True]
    rec = _epochs(hybrid, x, y, 3)
    assert rec[0]["phase"] == "parallel" and "rho" in rec[0] and "mu_norm" in rec[0]
    assert "constraint_violation" in rec[1] and rec[-1]["phase"] == "serial"
    # the serial epoch changed the network: the next parallel epoch starts from a fresh sweep
    hybrid.begin_epoch(3, x, y)
    idx = torch.arange(8)
    assert hybrid.parallel.evaluate(x[idx], y[idx], idx)["constraint_violation"] <= 1e-24
    assert hybrid.parallel.mu.sq_norm() == 0.0


def test_serial_steps_within_parallel_epochs():
    x, y = _data()
    _, hybrid = _solver(Hybrid, parallel_epochs=1, serial_epochs=0, serial_every=3)
    rec = _epochs(hybrid, x, y, 1)
    assert [r["phase"] for r in rec[1:]] == ["parallel", "parallel", "serial"]
    assert hybrid.parallel._stale


def test_rejects_a_serial_parallel_solver():
    with pytest.raises(ValueError, match="not a parallel solver"):
        _solver(Hybrid, parallel="serial")


def test_solver_contract():
    check_solver(Hybrid, blocks=2, parallel_epochs=1, serial_epochs=1)


class Scripted(Serial, ParallelSolver):
    """A stand-in parallel solver whose records follow a script per epoch."""
    name = "scripted"
    script: dict = {}

    def begin_epoch(self, epoch, x, y):
        self.epoch = epoch
        return {}

    def step(self, x, y, index):
        return {"loss": 1.0, **self.script[self.epoch]}


@pytest.mark.parametrize("script,phases", [
    # the violation halves, then stalls (-2 %): one serial epoch, then parallel again
    ({0: {"constraint_violation": 1.0}, 1: {"constraint_violation": 0.5},
      2: {"constraint_violation": 0.49}, 4: {"constraint_violation": 0.3},
      5: {"constraint_violation": 0.1}},
     ["parallel", "parallel", "parallel", "serial", "parallel", "parallel"]),
    # MGRIT's factor passes 1 in epoch 1
    ({0: {"conv_factor": {"forward": 0.3, "adjoint": 0.2}}, 1: {"conv_factor": {"forward": 1.4}},
      3: {"conv_factor": 0.5}},
     ["parallel", "parallel", "serial", "parallel"]),
    # MGRIT's gradient inexactness exceeds inexact_tol (0.05) in epoch 1; 0.05 itself passes
    ({0: {"inexactness": 0.01}, 1: {"inexactness": 0.2}, 3: {"inexactness": 0.05}, 4: {"inexactness": 0.06}},
     ["parallel", "parallel", "serial", "parallel", "parallel", "serial"]),
])
def test_adaptive_switch_reads_the_parallel_records(monkeypatch, script, phases):
    from ocnet.solvers import SOLVERS
    monkeypatch.setitem(SOLVERS, "scripted", Scripted)
    monkeypatch.setattr(Scripted, "script", script)
    x, y = _data()
    _, hybrid = _solver(Hybrid, parallel="scripted", switch="adaptive", serial_epochs=1, stall_tol=0.05)
    seen = []
    for epoch in range(len(phases)):
        seen.append(hybrid.begin_epoch(epoch, x, y)["phase"])
        assert hybrid.augments(epoch) == (seen[-1] == "serial")
        hybrid.step(x[:8], y[:8], torch.arange(8))
    assert seen == phases
    state = hybrid.state_dict()
    _, twin = _solver(Hybrid, parallel="scripted", switch="adaptive", serial_epochs=1)
    twin.load_state_dict(state)
    assert twin._phase == hybrid._phase and twin._last_violation == hybrid._last_violation

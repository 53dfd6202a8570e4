"""Step kinds: the built-in ``conv1d`` on signals, a user's own ``F(u; θ)`` registered with
``register_step`` and trained by every solver, and ``check_step``, which names the property a
broken step breaks."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import flat, one_step, run_mpi
from torch import nn

from ocnet import check_step, register_step
from ocnet.model import kinds
from ocnet.model.problem import build
from ocnet.run import main

pytestmark = pytest.mark.usefixtures("one_thread")


class Gated(nn.Module):
    """``F(u) = tanh(A u) ⊙ σ(B u)`` on ``(batch, width)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(u)) * torch.sigmoid(self.b(u))


@pytest.fixture(autouse=True)
def _kinds():
    """Each test registers its kinds afresh and leaves none behind."""
    saved = dict(kinds.KINDS)
    register_step("gated", lambda s: Gated(s.width))
    yield
    kinds.KINDS.clear()
    kinds.KINDS.update(saved)


def _data(shape, n=12, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=gen, dtype=torch.float64),
            torch.randint(0, classes, (n,), generator=gen))


@pytest.mark.parametrize("net, shape, sizes", [("conv1d", (2, 16), dict(channels=[4, 8], norm="group")),
                                               ("gated", (5,), dict(width=6))])
def test_the_serial_gradient_is_autograds_and_mgrit_exact_gives_it(net, shape, sizes):
    problem = build(shape, 3, net=net, layers=6, seed=1, dtype=torch.float64, **sizes)
    x, y = _data(shape)
    grads, _ = one_step("serial", problem, x, y)
    model = problem.to_torch()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(flat(grads), torch.cat([p.grad.flatten() for p in model.parameters()]),
                               rtol=1e-12, atol=1e-14)
    if net == "gated":  # one stage: MGRIT's levels coarsen it
        exact, _ = one_step("mgrit", problem, x, y, mgrit_levels=2, coarsening=2, mgrit_tol=1e-13, mgrit_max_iter=30)
        torch.testing.assert_close(flat(exact), flat(grads), rtol=1e-9, atol=1e-12)


def test_conv1d_stages_halve_the_signal_and_refuse_other_shapes():
    problem = build((3, 20), 4, net="conv1d", layers=5, channels=[4, 8, 16], dtype=torch.float64)
    u = problem.opening(torch.zeros(2, 3, 20, dtype=torch.float64))
    shapes = []
    for layer in problem.layers:
        u = layer(u)
        shapes.append(tuple(u.shape[1:]))
    assert shapes[0] == (4, 20) and shapes[-1] == (16, 5) and problem.classifier(u).shape == (2, 4)
    assert len(problem.stages) == 3 and sum(g.N for g in problem.stages) == 5
    with pytest.raises(ValueError, match=r"net 'conv1d' needs signals \(C, L\), got shape \(1, 8, 8\)"):
        build((1, 8, 8), 4, net="conv1d", layers=2)
    check_step("conv1d", (2, 16), channels=[4])  # batch norm couples samples: not the default


@pytest.mark.parametrize("solver", ["serial", "mgrit", "penalty", "al", "hybrid"])
def test_every_solver_trains_a_registered_step(tmp_path, solver):
    out = tmp_path / solver
    assert main(["--net", "gated", "--solver", solver, "--problem", "peaks", "--layers", "4", "--width", "6",
                 "--epochs", "2", "--limit-batches", "4", "--quiet", "--plots", "false", "--timeline-steps", "0",
                 "--out", str(out)]) == 0
    epochs = [r for r in map(json.loads, (out / "history.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert len(epochs) == 2 and all(r["loss"] > 0 for r in epochs)


class _Step(nn.Module):
    def __init__(self, width: int, fault: str) -> None:
        super().__init__()
        self.lin, self.unused, self.fault = nn.Linear(width, width), nn.Linear(width, width), fault

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        f = torch.tanh(self.lin(u)) + (0 if self.fault == "unused" else 0 * self.unused(u))
        if self.fault == "shape":
            return f[:, :-1]
        if self.fault == "random":
            return f + torch.rand_like(f)
        if self.fault == "couples":
            return f - f.mean(0)
        return f.float() if self.fault == "float32" else f


@pytest.mark.parametrize("fault, message", [
    ("shape", "F changes the state's shape: (6, 6) -> (6, 5)"),
    ("random", "F is not deterministic (in training mode)"),
    ("couples", "F couples the samples of a batch: sample 0 alone"),
    ("float32", "F gives torch.float32 states for torch.float64 ones"),
    ("unused", "parameter unused.weight of F gets no gradient"),
])
def test_check_step_names_what_a_broken_step_breaks(fault, message):
    register_step("broken", lambda s: _Step(s.width, fault))
    with pytest.raises(AssertionError) as e:
        check_step("broken", width=6)
    assert message in str(e.value), str(e.value)
    register_step("fine", lambda s: _Step(s.width, "none"))
    check_step("fine", width=6)
    register_step("declared", lambda s: _Step(s.width, "couples"), couples_samples=True)
    check_step("declared", width=6)


def test_names_are_checked():
    with pytest.raises(ValueError, match="'conv' is a built-in step kind"):
        register_step("conv", lambda s: Gated(s.width))
    with pytest.raises(ValueError, match="unknown net 'gatd'"):
        build((5,), 3, net="gatd", layers=2)


PLUGIN = """
import torch
from torch import nn
from ocnet import register_step


class Gated(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, u):
        return torch.tanh(self.a(u)) * torch.sigmoid(self.b(u))


register_step("gated2", lambda s: Gated(s.width))
"""


def test_a_registered_step_from_the_command_line(tmp_path, capsys):
    (tmp_path / "gated2.py").write_text(PLUGIN)
    flags = ["--plugin", str(tmp_path / "gated2.py"), "--quiet", "--plots", "false", "--timeline-steps", "0"]
    assert main([*flags, "--net", "gated2", "--layers", "4", "--epochs", "1", "--out", str(tmp_path / "r")]) == 0
    assert "gated2" in (tmp_path / "r" / "config.toml").read_text()
    assert main([*flags, "--help"]) == 0
    assert "nets: auto, dense, conv, conv1d, transformer, gated, gated2" in capsys.readouterr().out
    assert main([*flags, "--net", "gated22", "--out", str(tmp_path / "s")]) == 2
    assert "unknown net 'gated22'; choose from auto, dense, conv, conv1d, transformer, gated, gated2; " \
        "did you mean 'gated2'?" in capsys.readouterr().err


@pytest.mark.mpi
def test_a_registered_step_trains_the_same_on_one_two_and_four_ranks(tmp_path):
    (tmp_path / "gated2.py").write_text(PLUGIN)
    models, losses = {}, {}
    for n in (1, 2, 4):
        out = tmp_path / f"P{n}"
        proc = run_mpi(n, "ocnet.run", "--plugin", str(tmp_path / "gated2.py"), "--net", "gated2", "--problem", "peaks",
                       "--layers", "8", "--width", "6", "--epochs", "1", "--limit-batches", "4", "--dtype", "float64",
                       "--quiet", "--timeline-steps", "0", "--out", str(out), module=True)
        assert proc.returncode == 0, proc.stderr
        models[n] = torch.load(out / "model.pt")
        losses[n] = [json.loads(line)["loss"] for line in (out / "history.jsonl").read_text().splitlines()]
    for n in (2, 4):
        assert losses[n] == pytest.approx(losses[1], rel=1e-12)
        for k in models[1]:
            torch.testing.assert_close(models[n][k], models[1][k], rtol=1e-12, atol=1e-15)

"""Step kinds: the built-in ``conv1d`` on signals, a user's own ``F(u; θ)`` registered with
``register_step`` and trained by every solver (with stages and transitions of its own too),
and ``check_step``, which names the property a broken step breaks."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import flat, one_step, run_mpi
from torch import nn

from ocnet import check_step, register_step
from ocnet.model import kinds
from ocnet.model.grid import TimeGrid
from ocnet.model.problem import build
from ocnet.model.steps import Residual
from ocnet.run import main
from ocnet.runs.config import resolve, without_effect
from ocnet.runs.loop import Training
from ocnet.runs.memory import LAYER_OVERHEAD, memory_estimate

pytestmark = pytest.mark.usefixtures("one_thread")


class Gated(nn.Module):
    """``F(u) = tanh(A u) ⊙ σ(B u)`` on ``(batch, width)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.a(u)) * torch.sigmoid(self.b(u))


class Dense(nn.Module):
    """``F(u) = tanh(W u + b)`` on ``(batch, c)``."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(u))


def _widening(name="widening", **changes):
    """Register ``name``: stages of the widths ``--channels``, a linear map between two
    (``changes`` replaces the step's, the opening's or the transition's factory)."""
    factories = dict(step=lambda s: Dense(s.stage_channels),
                     opening=lambda s: nn.Sequential(nn.Flatten(), nn.Linear(s.input_shape[0], s.stage_channels)),
                     transition=lambda s, shape: nn.Linear(shape[0], s.stage_channels))
    factories.update(changes)
    register_step(name, **factories)


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
                                               ("gated", (5,), dict(width=6)),
                                               ("widening", (5,), dict(channels=[4, 6, 3]))])
def test_the_serial_gradient_is_autograds_and_mgrit_exact_gives_it(net, shape, sizes):
    _widening()
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
    else:
        with pytest.raises(ValueError, match=f"mgrit needs a single-stage network .* has {len(sizes['channels'])} "
                                             r"stages — use one channels entry"):
            one_step("mgrit", problem, x, y, mgrit_levels=2, coarsening=2)


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


def test_a_kind_of_stages_runs_from_the_command_line_and_its_memory_is_counted_exactly(tmp_path):
    """The memory check before training builds one step of each stage and the transitions:
    on one rank its parameter count is the built network's, and the run trains."""
    _widening()
    sizes = dict(net="widening", layers=7, channels=[4, 6, 3])
    estimate = memory_estimate((2,), 5, **sizes)
    built = sum(p.numel() * p.element_size() for p in build((2,), 5, **sizes).parameters())
    assert estimate.local == built and estimate.network == built + (7 + 2 + 2) * LAYER_OVERHEAD
    assert main(["--net", "widening", "--channels", "4,6", "--problem", "peaks", "--layers", "4", "--epochs", "1",
                 "--limit-batches", "2", "--quiet", "--plots", "none", "--timeline-steps", "0",
                 "--out", str(tmp_path / "run")]) == 0


def test_stages_asked_of_a_kind_without_a_transition_are_warned_of():
    _widening()
    warned = lambda net, flags: without_effect(resolve(["--net", net, *flags]), net=net, image=False,  # noqa: E731
                                               device="cpu")
    assert warned("gated", ["--channels", "8,16"]) == [
        "--channels 8,16 makes no stages: step kind 'gated' registers no transition between stages, "
        "so this run trains one stage"]
    assert warned("gated", []) == warned("gated", ["--channels", "8"]) == []
    assert warned("widening", ["--channels", "8,16"]) == []


def test_a_transition_makes_a_stage_of_every_channels_entry():
    seen = []

    def note(make, what):
        def factory(s, *shape):
            seen.append((what, s.stage, s.stage_channels, *(tuple(a) for a in shape)))
            return make(s, *shape)
        return factory

    _widening()
    plain = kinds.get("widening")
    register_step("noted", note(plain.step, "step"), opening=note(plain.opening, "opening"),
                  transition=note(plain.transition, "transition"),
                  classifier=note(lambda s, shape: nn.Linear(shape[0], s.n_classes), "classifier"))
    problem = build((5,), 3, net="noted", layers=7, channels=[4, 6, 3], T=2.0, seed=1, dtype=torch.float64)
    assert problem.stages == [TimeGrid(3, 2.0), TimeGrid(2, 2.0), TimeGrid(2, 2.0)]  # as conv shares them
    assert [type(layer).__name__ for layer in problem.layers] == ["Residual"] * 3 + ["Linear"] + \
        ["Residual"] * 2 + ["Linear"] + ["Residual"] * 2
    assert [layer.h for layer in problem.layers if isinstance(layer, Residual)] == [2 / 3] * 3 + [1.0] * 4
    assert problem.state_shapes == [(4,)] * 4 + [(6,)] * 3 + [(3,)] * 3
    assert seen == [("opening", 0, 4), *[("step", 0, 4)] * 3, ("transition", 1, 6, (4,)), *[("step", 1, 6)] * 2,
                    ("transition", 2, 3, (6,)), *[("step", 2, 3)] * 2, ("classifier", 2, 3, (3,))]
    assert build((5,), 3, net="noted", layers=2, channels=[8])(torch.zeros(2, 5)).shape == (2, 3)  # one stage
    with pytest.raises(ValueError, match="2 layers cannot fill 3 stages"):
        build((5,), 3, net="noted", layers=2, channels=[4, 6, 3])
    check_step("widening", input_shape=(5,), channels=[4, 6, 3])


def test_a_kind_without_a_transition_has_one_stage_whatever_the_channels():
    """A one-argument step factory without a transition: the opening, the steps, the
    classifier, drawn in this order from the seed, one stage on [0, T] whatever --channels
    holds (the command line's default has two entries)."""
    seen = []
    register_step("plain", lambda s: seen.append(s) or Gated(s.width))
    for channels in ([16], [16, 32]):
        problem = build((5,), 3, net="plain", layers=4, width=6, channels=channels, T=2.0, seed=3)
        torch.manual_seed(3)
        opening = nn.Sequential(nn.Flatten(), nn.Linear(5, 6), nn.Tanh())
        steps = [Gated(6) for _ in range(4)]
        classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, 3))
        assert problem.stages == [TimeGrid(4, 2.0)] and all(layer.h == 0.5 for layer in problem.layers)
        expected = nn.Sequential(opening, *steps, classifier).state_dict().values()
        for a, b in zip(problem.to_torch().state_dict().values(), expected, strict=True):
            assert torch.equal(a, b)
    assert {(s.stage, s.channels) for s in seen} == {(0, (16,)), (0, (16, 32))}


@pytest.mark.parametrize("fault, message", [
    ("step", "check_step('faulty'): F of stage 1 changes the state's shape: (6, 6) -> (6, 5)"),
    ("transition", "check_step('faulty'): the transition into stage 1 couples the samples of a batch: sample 0"),
    ("unused", "check_step('faulty'): parameter unused.weight of the transition into stage 1 gets no gradient"),
])
def test_check_step_names_the_stage_or_the_transition_that_breaks(fault, message):
    class Narrows(Dense):
        def forward(self, u):
            return super().forward(u)[:, :-1]

    class Centres(nn.Linear):
        def forward(self, u):
            v = super().forward(u)
            return v - v.mean(0)

    class Idle(nn.Linear):
        def __init__(self, a, b):
            super().__init__(a, b)
            self.unused = nn.Linear(1, 1)

    changes = {"step": lambda s: (Narrows if s.stage else Dense)(s.stage_channels),
               "transition": lambda s, shape: Centres(shape[0], s.stage_channels),
               "unused": lambda s, shape: Idle(shape[0], s.stage_channels)}[fault]
    _widening("faulty", **{"step" if fault == "step" else "transition": changes})
    with pytest.raises(AssertionError) as e:
        check_step("faulty", input_shape=(5,), channels=[4, 6])
    assert message in str(e.value), str(e.value)


@pytest.mark.parametrize("solver", ["serial", "penalty", "al", "hybrid"])
def test_every_solver_but_mgrit_trains_a_kind_of_two_stages(solver):
    _widening()
    blocks = [] if solver == "serial" else ["--blocks", "2"]  # a constraint at the transition
    t = Training(["--net", "widening", "--channels", "4,6", "--solver", solver, "--problem", "peaks",
                  "--layers", "4", *blocks, "--dtype", "float64"])
    assert len(t.problem.stages) == 2
    t.begin_epoch(0)
    for n, (x, y, index) in enumerate(t.batches(0)):
        assert t.step(x, y, index)["loss"] > 0
        if n == 2:
            break
    t.end_epoch(0)


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


TWO_STAGES = """
import sys

import torch
from torch import nn

from ocnet import Training, register_step


class Dense(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.lin = nn.Linear(c, c)

    def forward(self, u):
        return torch.tanh(self.lin(u))


register_step("widening", lambda s: Dense(s.stage_channels),
              opening=lambda s: nn.Sequential(nn.Flatten(), nn.Linear(s.input_shape[0], s.stage_channels)),
              transition=lambda s, shape: nn.Linear(shape[0], s.stage_channels))
t = Training(["--net", "widening", "--channels", "4,6", "--problem", "peaks", "--layers", "8", "--dtype", "float64"])
t.begin_epoch(0)
for n, (x, y, index) in enumerate(t.batches(0)):
    t.step(x, y, index)
    if n == 3:
        break
accuracy, loss = t.evaluate()
state = t.model_state()
if state is not None:
    torch.save({"loss": loss, "state": state}, sys.argv[1])
"""


@pytest.mark.mpi
def test_a_registered_kind_of_two_stages_trains_the_same_on_one_two_and_four_ranks(tmp_path):
    """The serial solver on 9 layers (4 steps of width 4, the transition, 4 of width 6): on 2
    and 4 ranks a rank's slice ends with the transition, and the ranks send states of both
    widths."""
    (tmp_path / "two_stages.py").write_text(TWO_STAGES)
    runs = {}
    for n in (1, 2, 4):
        proc = run_mpi(n, str(tmp_path / "two_stages.py"), str(tmp_path / f"P{n}.pt"))
        assert proc.returncode == 0, proc.stderr
        runs[n] = torch.load(tmp_path / f"P{n}.pt")
    assert "layers.4.weight" in runs[1]["state"] and runs[1]["state"]["layers.8.F.lin.weight"].shape == (6, 6)
    for n in (2, 4):
        assert runs[n]["loss"] == pytest.approx(runs[1]["loss"], rel=1e-12)
        assert runs[n]["state"].keys() == runs[1]["state"].keys()
        for k in runs[1]["state"]:
            torch.testing.assert_close(runs[n]["state"][k], runs[1]["state"][k], rtol=1e-12, atol=1e-15)

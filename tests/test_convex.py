"""Convex training of two-layer ReLU networks (ocnet.convex): the exact solver and ADMM agree,
the recovered network attains the program's objective, no network trained by Adam from random
starts does better than the certified optimum, one-vs-rest classifies, and bad inputs say what
is wrong."""
import pytest
import torch

from ocnet.convex import ConvexProgram, TwoLayerReLU, one_vs_rest, recover, sample_patterns, solve_admm
from ocnet.convex.admm import solve_admm_together
from ocnet.convex.program import data_loss

pytestmark = pytest.mark.usefixtures("one_thread")

#: ADMM's stopping tolerance in these tests, and the relative agreement with Clarabel it gives.
TOL, AGREE = 1e-6, 1e-5


def _data(n, d, seed, kind):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    if kind == "regression":
        return x, torch.sin(2 * x[:, 0]) + x[:, 1] ** 2
    return x, torch.sign(x[:, 0] * x[:, 1] + 0.1)  # a problem no linear classifier solves


def _program(loss, n=40, d=3, patterns=8, seed=1, beta=0.1):
    x, y = _data(n, d, seed, "regression" if loss == "squared" else "classification")
    return ConvexProgram.build(x, y, beta=beta, loss=loss, patterns=patterns,
                               generator=torch.Generator().manual_seed(seed + 1))


def _positive_first_draw() -> torch.Generator:
    """A generator whose first draw of one direction in 1-D is positive."""
    seed = 0
    while float(torch.randn(1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)) <= 0:
        seed += 1
    return torch.Generator().manual_seed(seed)


def test_patterns_are_distinct_seeded_and_fire():
    x, _ = _data(30, 3, 0, "regression")
    s = sample_patterns(x, 10, torch.Generator().manual_seed(3))
    assert s.shape[0] == 30 and 1 <= s.shape[1] <= 10 and s.dtype == x.dtype
    assert len({tuple(c.tolist()) for c in s.T}) == s.shape[1]  # deduplicated
    assert bool((s.sum(0) > 0).all())  # the pattern of no sample is dropped
    assert torch.equal(s, sample_patterns(x, 10, torch.Generator().manual_seed(3)))
    # on one feature every direction that fires fires everywhere: one pattern, however many drawn
    assert torch.equal(sample_patterns(torch.ones(5, 1), 7, torch.Generator().manual_seed(0)), torch.ones(5, 1))
    with pytest.raises(ValueError, match="fires a neuron on any sample: draw more"):
        sample_patterns(-torch.ones(5, 1), 1, _positive_first_draw())  # x g < 0 on every sample


@pytest.mark.parametrize("loss,n,d,patterns", [("squared", 60, 5, 10), ("squared", 40, 3, 8),
                                               ("logistic", 30, 3, 6)])
def test_cvxpy_and_admm_reach_the_same_optimum(loss, n, d, patterns):
    pytest.importorskip("cvxpy")
    from ocnet.convex import solve_cvxpy
    program = _program(loss, n, d, patterns)
    exact, admm = solve_cvxpy(program), solve_admm(program, tol=TOL)
    assert exact.status in ("optimal", "optimal_inaccurate") and admm.status == "converged"
    assert admm.objective.total == pytest.approx(exact.objective.total, rel=AGREE)
    assert exact.objective.violation < 1e-7 and admm.objective.violation < 1e-5


def test_the_two_linear_solves_of_admm_agree():
    """The u-step is solved directly when 2Pd ≤ n and through Woodbury's identity otherwise:
    the same program both ways gives the same iterates."""
    from ocnet.convex.admm import _Operators
    program = _program("squared", n=40, d=3, patterns=5)
    ops, other = _Operators(program, direct=True), _Operators(program, direct=False)
    b = torch.randn(1, 2, program.patterns.shape[1], program.x.shape[1], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ops.solve(b), other.solve(b), rtol=1e-10, atol=1e-12)
    # and the solve inverts I + GᵀG + FᵀF
    u = ops.solve(b)
    assert torch.allclose(u + ops.gt(ops.g(u)) + ops.ft(ops.f(u)), b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_the_recovered_network_attains_the_programs_objective(loss):
    program = _program(loss, n=30, d=3, patterns=6)
    solution = solve_admm(program, tol=1e-8)
    net = recover(program, solution)
    assert isinstance(net, TwoLayerReLU) and net.hidden.out_features > 0
    x = program.x[:, :-1]  # the network takes the data without the ones column
    with torch.no_grad():
        prediction = net(x)[:, 0]
        network_loss = float(data_loss(prediction, program.y, loss))
        decay = program.beta * float(net.weight_decay())
    assert network_loss == pytest.approx(solution.objective.loss, rel=1e-6)
    assert decay == pytest.approx(solution.objective.penalty, rel=1e-12)
    # where the constraints hold (the predictions' signs agree), the network is the convex model
    assert torch.allclose(prediction, program.predict(solution.v, solution.w), rtol=1e-5, atol=1e-6)


def test_the_convex_optimum_is_no_worse_than_adam_from_random_starts():
    """With every activation pattern of the data sampled the convex program is the training
    problem itself, so its optimum is the global one: Adam, on the network of the same width
    and the same objective, ends above it (or at it)."""
    g = torch.Generator().manual_seed(5)
    x = torch.linspace(-1, 1, 12, dtype=torch.float64)[:, None]
    y = torch.sin(3 * x[:, 0]) + 0.1 * torch.randn(12, dtype=torch.float64, generator=g)
    beta = 0.01
    # 1-D data with a bias: 2000 directions find every threshold pattern between the points
    program = ConvexProgram.build(x, y, beta=beta, patterns=2000, generator=torch.Generator().manual_seed(0))
    assert program.patterns.shape[1] >= 20
    from ocnet.convex import solve_cvxpy
    solution = solve_cvxpy(program)  # the exact optimum (Clarabel)
    optimum, width = solution.objective.total, recover(program, solution).hidden.out_features
    finals = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = TwoLayerReLU(1, width).double()
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(800):
            opt.zero_grad()
            objective = data_loss(net(x)[:, 0], y, "squared") + beta * net.weight_decay()
            objective.backward()
            opt.step()
        finals.append(float(objective.detach()))
    assert min(finals) >= optimum * (1 - 1e-6), (finals, optimum)


def test_one_vs_rest_classifies_three_separable_classes():
    g = torch.Generator().manual_seed(2)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(15)
    x = centres[labels] + 0.3 * torch.randn(45, 2, dtype=torch.float64, generator=g)
    net, solutions = one_vs_rest(x, labels, lambda ps: solve_admm_together(ps, tol=1e-5), beta=0.01, patterns=8,
                                 generator=torch.Generator().manual_seed(0))
    assert len(solutions) == 3 and net.output.out_features == 3
    with torch.no_grad():
        assert bool((net(x).argmax(1) == labels).all())


def test_bad_inputs_say_what_is_wrong():
    x, y = _data(20, 2, 0, "regression")
    with pytest.raises(ValueError, match="scalar-output network"):
        ConvexProgram.build(x, torch.stack([y, y], 1), beta=0.1)
    with pytest.raises(ValueError, match="at least 1"):
        ConvexProgram.build(x, y, beta=0.1, patterns=0)
    with pytest.raises(ValueError, match="β must be ≥ 0"):
        ConvexProgram.build(x, y, beta=-1.0)
    with pytest.raises(ValueError, match="labels ±1"):
        ConvexProgram.build(x, y, beta=0.1, loss="logistic")
    with pytest.raises(ValueError, match="unknown loss"):
        ConvexProgram.build(x, y, beta=0.1, loss="hinge")
    with pytest.raises(ValueError, match="20 samples but 19 labels"):
        ConvexProgram.build(x, y[:-1], beta=0.1)


def test_a_program_too_large_for_cvxpy_is_refused():
    from ocnet.convex import MAX_SIZE, solve_cvxpy
    x = torch.zeros(1, 1, dtype=torch.float64)
    big = ConvexProgram(x=torch.ones(MAX_SIZE // 9 + 1, 3, dtype=torch.float64), y=x, patterns=torch.ones(1, 3),
                        loss="squared", beta=0.1, bias=False)  # n·d·P just over the limit, checked before cvxpy
    with pytest.raises(ValueError, match="too large for CVXPY.*use solve_admm"):
        solve_cvxpy(big)


def test_without_cvxpy_the_error_names_the_extra(monkeypatch):
    import builtins

    from ocnet.convex import solve_cvxpy
    real = builtins.__import__

    def no_cvxpy(name, *args, **kwargs):
        if name == "cvxpy":
            raise ImportError("No module named 'cvxpy'")
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_cvxpy)
    with pytest.raises(ImportError, match=r"pip install ocnet\[convex\]"):
        solve_cvxpy(_program("squared", n=10, d=2, patterns=3))


def test_a_solver_status_other_than_optimal_raises(monkeypatch):
    cp = pytest.importorskip("cvxpy")
    from ocnet.convex import solve_cvxpy

    def infeasible(self, *args, **kwargs):
        self._status = "infeasible"
    monkeypatch.setattr(cp.Problem, "solve", infeasible)
    with pytest.raises(RuntimeError, match="status 'infeasible'"):
        solve_cvxpy(_program("squared", n=10, d=2, patterns=3))


@pytest.mark.device
def test_admm_runs_on_the_data_device(device):
    """Everything ADMM makes lives on the data's device, and it finds the optimum it finds on
    the CPU (the patterns are drawn on the CPU, so one seed gives the same program)."""
    program = _program("squared", n=30, d=3, patterns=6)
    on_device = ConvexProgram.build(program.x[:, :-1].to(device), program.y.to(device), beta=program.beta,
                                    patterns=program.patterns.to(device))
    here, there = solve_admm(program, tol=TOL), solve_admm(on_device, tol=TOL)
    assert there.v.device.type == device.type and recover(on_device, there).hidden.weight.device.type == device.type
    assert there.objective.total == pytest.approx(here.objective.total, rel=AGREE)


def test_a_large_beta_gives_the_network_of_no_neurons():
    """Above some β the optimum is the zero function: a network of width 0, built without
    torch's warning about empty weights, predicting 0."""
    import warnings
    program = _program("squared", n=20, d=2, patterns=4, beta=1e6)
    solution = solve_admm(program, tol=TOL)
    assert solution.status == "converged" and solution.objective.penalty == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = recover(program, solution)
    assert net.hidden.out_features == 0
    with torch.no_grad():
        assert torch.equal(net(program.x[:, :-1]), torch.zeros(20, 1, dtype=torch.float64))


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_programs_solved_together_reach_each_ones_optimum(loss):
    """One-vs-rest's programs in one batched iteration: each reaches the optimum it reaches
    alone, and meets the test at the iteration it meets it alone (each keeps its own ρ)."""
    x, _ = _data(30, 2, 1, "regression")
    labels = torch.arange(30) % 3
    s = sample_patterns(torch.cat([x, torch.ones(30, 1, dtype=x.dtype)], dim=1), 6, torch.Generator().manual_seed(0))
    programs = [ConvexProgram.build(x, torch.where(labels == c, 1.0, -1.0).double(), beta=0.2, loss=loss,
                                    patterns=s) for c in range(3)]
    together = solve_admm_together(programs, tol=1e-5)
    for program, joint in zip(programs, together):
        alone = solve_admm(program, tol=1e-5)
        assert joint.status == alone.status == "converged"
        assert joint.iterations == alone.iterations
        assert joint.objective.total == pytest.approx(alone.objective.total, rel=1e-4)  # ADMM's tolerance
    with pytest.raises(ValueError, match="share their data, patterns, loss and β"):
        solve_admm_together([programs[0], ConvexProgram.build(x, programs[1].y, beta=0.3, loss=loss, patterns=s)])

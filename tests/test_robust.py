"""The ℓ∞-robust convex program (ocnet.convex.robust): at ε = 0 it is the nominal program; its
loss term is the recovered network's loss at the closed-form worst perturbation, which no PGD
attack exceeds; the network's neurons keep their patterns on the attacked inputs; robustness
costs objective and buys attacked accuracy; bad radii are refused."""
import pytest
import torch

from ocnet.convex import MAX_SIZE, ConvexProgram, neurons, one_vs_rest, recover, sample_patterns
from ocnet.convex.adversarial import attacked_accuracy, pgd
from ocnet.convex.program import data_loss
from ocnet.convex.robust import (
    margins,
    robust_objective,
    sensitivity,
    solve_robust_cvxpy,
    with_linear_pattern,
    worst_perturbation,
)

pytestmark = [pytest.mark.usefixtures("one_thread")]
cvxpy = pytest.importorskip("cvxpy")


def _program(loss, n=40, d=3, patterns=8, seed=1, beta=0.1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    y = torch.sin(2 * x[:, 0]) + x[:, 1] ** 2 if loss == "squared" else torch.sign(x[:, 0] * x[:, 1] + 0.1)
    return ConvexProgram.build(x, y, beta=beta, loss=loss, patterns=patterns,
                               generator=torch.Generator().manual_seed(seed + 1))


def _inputs(program):
    return program.x[:, :-1]  # the data without the ones column, what the network takes


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_at_radius_zero_it_is_the_nominal_program(loss):
    from ocnet.convex import solve_cvxpy
    program = _program(loss)
    nominal, robust = solve_cvxpy(program), solve_robust_cvxpy(program, 0.0)
    assert robust.objective.total == pytest.approx(nominal.objective.total, rel=1e-6)
    # and the torch objective of any point is the nominal one at ε = 0
    v, w = torch.randn(2, *robust.v.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert robust_objective(program, v, w, 0.0) == program.objective(v, w)


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_the_loss_term_is_the_networks_loss_at_the_worst_perturbation_and_pgd_finds_no_more(loss):
    """Where the robust cones hold the network is linear on each ball, so the closed-form δ
    attains the program's loss term, and no attack within the ball can exceed it."""
    program, eps = _program(loss), 0.1
    solution = solve_robust_cvxpy(program, eps)
    assert solution.objective.violation < 1e-8
    net, x = recover(program, solution), _inputs(program)
    delta = worst_perturbation(program, solution.v, solution.w, eps)
    assert float(delta.abs().max()) == pytest.approx(eps)
    with torch.no_grad():
        worst = float(data_loss(net(x + delta)[:, 0], program.y, loss))
    assert worst == pytest.approx(solution.objective.loss, rel=1e-6)
    # the closed-form worst case is strictly above the clean loss: the attack is not trivial
    assert worst > float(program.loss_term(program.predict(solution.v, solution.w))) * 1.01
    for steps in (1, 10, 50):
        attacked = pgd(net, x, program.y, eps, loss=loss, steps=steps)
        with torch.no_grad():
            found = float(data_loss(net(attacked)[:, 0], program.y, loss))
        assert found <= solution.objective.loss * (1 + 1e-6)


def test_the_network_keeps_each_neurons_pattern_on_the_attacked_inputs():
    """The sign of each hidden pre-activation at x, at the worst δ, at PGD's δ and at random
    corners of the ball is the neuron's sampled pattern."""
    program, eps = _program("logistic"), 0.1
    solution = solve_robust_cvxpy(program, eps)
    net, x = recover(program, solution), _inputs(program)
    # the neurons come from the nonzero v_i, then the nonzero w_i: which pattern each fires in
    index = torch.arange(solution.v.shape[0])
    which = torch.cat([index[solution.v.norm(dim=1) > 0], index[solution.w.norm(dim=1) > 0]])
    u, _ = neurons(solution)
    assert len(which) == len(u) and len(u) > 0
    pattern = program.patterns[:, which].bool()  # (n, neurons)
    g = torch.Generator().manual_seed(0)
    corners = [eps * torch.sign(torch.randn(x.shape, generator=g, dtype=torch.float64)) for _ in range(20)]
    points = [x, x + worst_perturbation(program, solution.v, solution.w, eps),
              pgd(net, x, program.y, eps, steps=20), *(x + c for c in corners)]
    # each pre-activation times |α| is x̃ᵀv_i: its sign is the neuron's, and its size is what the
    # neuron adds to the output, so the tolerance is relative to the largest v_i
    scale = float(program.x.norm(dim=1).max()) * float(torch.cat([solution.v, solution.w]).norm(dim=1).max())
    assert int((torch.cat([solution.v, solution.w]).norm(dim=1) > 0.1).sum()) >= 2  # not the zero network
    for point in points:
        with torch.no_grad():
            h = net.hidden(point) * net.output.weight.abs()
        assert bool((h[pattern] >= -1e-7 * scale).all())
        assert bool((h[~pattern] <= 1e-7 * scale).all())


def test_the_sensitivity_is_the_input_gradient_of_the_network():
    program, eps = _program("squared"), 0.1
    solution = solve_robust_cvxpy(program, eps)
    net, x = recover(program, solution), _inputs(program).clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(x).sum(), x)
    z = sensitivity(program, solution.v, solution.w)
    torch.testing.assert_close(g, z, rtol=1e-6, atol=1e-7 * float(z.abs().max()))


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_the_robust_objective_grows_with_the_radius(loss):
    """At a fixed point the worst-case loss grows with ε; and the optimum grows too, since a
    larger ε both shrinks the feasible set and raises the loss of every point."""
    program = _program(loss)
    radii = (0.0, 0.05, 0.1, 0.2)
    optima = [solve_robust_cvxpy(program, eps) for eps in radii]
    totals = [s.objective.total for s in optima]
    assert all(b > a * (1 + 1e-4) for a, b in zip(totals, totals[1:])), totals
    v, w = optima[1].v, optima[1].w
    losses = [robust_objective(program, v, w, eps).loss for eps in radii]
    assert all(b > a for a, b in zip(losses, losses[1:])), losses


def test_the_robust_optimum_holds_up_better_under_attack_than_the_nominal_one():
    """Two classes 1.2 apart along the first axis and three weakly informative features, which
    the nominal optimum uses too: at ε = 0.4 the robust optimum keeps at least as many samples
    under PGD on the training data and more on a fresh draw, at the same clean accuracy. Both
    programs have the same patterns, the all-firing one included."""
    def draw(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double()
        weak = [0.3 * y + torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3)]
        return torch.stack([0.6 * y + 0.15 * torch.randn(n, generator=g, dtype=torch.float64), *weak], dim=1), y

    (x, y), (x_test, y_test) = draw(60, 3), draw(200, 4)
    eps = 0.4
    full = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    patterns = with_linear_pattern(sample_patterns(full, 8, torch.Generator().manual_seed(5)))
    program = ConvexProgram.build(x, y, beta=0.1, loss="logistic", patterns=patterns)
    nominal = recover(program, solve_robust_cvxpy(program, 0.0))
    robust = recover(program, solve_robust_cvxpy(program, eps))
    kept = {name: [attacked_accuracy(net, x, y, eps), attacked_accuracy(net, x_test, y_test, eps)]
            for name, net in (("nominal", nominal), ("robust", robust))}
    assert kept["robust"][0] >= kept["nominal"][0] and kept["robust"][1] > kept["nominal"][1] + 0.02, kept
    assert attacked_accuracy(robust, x_test, y_test, 0.0) == attacked_accuracy(nominal, x_test, y_test, 0.0) == 1.0


def test_the_linear_pattern_is_added_once():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(with_linear_pattern(s), torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    assert torch.equal(with_linear_pattern(with_linear_pattern(s)), with_linear_pattern(s))


def test_margins_are_the_half_gaps_of_points_on_a_line():
    """On a line with a bias, the pattern "x ≥ c" between neighbours a < b is held by the
    hyperplane x = (a + b)/2 at ℓ∞ distance (b − a)/2 from both: its margin, beyond which the
    robust program must leave its neurons at 0; the all-firing pattern's margin is the cap."""
    x = torch.tensor([[-1.0], [-0.4], [0.0], [0.9], [1.5]], dtype=torch.float64)
    cuts = [1, 2, 3, 4]  # pattern j fires on the points from index cuts[j] on
    s = torch.stack([(torch.arange(5) >= c).double() for c in cuts] + [torch.ones(5, dtype=torch.float64)], dim=1)
    program = ConvexProgram.build(x, torch.ones(5), beta=0.1, loss="logistic", patterns=s)
    half_gaps = [(float(x[c]) - float(x[c - 1])) / 2 for c in cuts]
    torch.testing.assert_close(margins(program, cap=2.0), torch.tensor([*half_gaps, 2.0], dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)
    solution = solve_robust_cvxpy(program, 0.25)  # the gap 0.4 (half 0.2) closes, the others stay open
    assert float(solution.v[1].norm() + solution.w[1].norm()) == 0 and solution.objective.violation < 1e-8


def test_one_vs_rest_takes_the_robust_solver():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(45, 2, dtype=torch.float64, generator=g)
    labels = torch.arange(45) % 3
    x = 0.5 * x + 3.0 * torch.stack([torch.cos(2.1 * labels), torch.sin(2.1 * labels)], dim=1)
    net, solutions = one_vs_rest(x, labels, lambda ps: [solve_robust_cvxpy(p, 0.1) for p in ps], beta=0.1,
                                 loss="logistic", patterns=6, generator=torch.Generator().manual_seed(8))
    assert len(solutions) == 3 and all(s.objective.violation < 1e-8 for s in solutions)
    with torch.no_grad():
        assert float((net(x).argmax(dim=1) == labels).double().mean()) > 0.9


def test_bad_radii_and_large_programs_are_refused():
    program = _program("logistic", n=20, patterns=4)
    v, w = program.zeros()
    for call in (lambda: solve_robust_cvxpy(program, -0.1), lambda: robust_objective(program, v, w, -0.1),
                 lambda: worst_perturbation(program, v, w, -0.1)):
        with pytest.raises(ValueError, match="radius ε must be at least 0, got -0.1"):
            call()
    big = ConvexProgram.build(torch.randn(4000, 10, dtype=torch.float64), torch.ones(4000), beta=0.1,
                              loss="logistic", patterns=torch.ones(4000, 10))
    assert big.size > MAX_SIZE
    with pytest.raises(ValueError, match="too large for CVXPY"):
        solve_robust_cvxpy(big, 0.1)

"""MGRIT on model problems (one process): exactness, the two-level F-relaxation property,
scalability of V-cycles, and the adjoint."""
from __future__ import annotations

import math

import pytest
import torch

from ocnet.mgrit import Heat1D, Layout, LinearODE, solve, solve_adjoint
from ocnet.mgrit.core import n_levels

D = torch.float64


def sequential(prop, u0, N):
    u = [u0]
    for i in range(N):
        u.append(prop.step(0, i, u[-1]))
    return u


def max_diff(a, b):
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("relaxation,cycle,levels", [("F", "V", 2), ("FCF", "V", 3), ("FCF", "F", 4)])
def test_converged_solution_is_the_sequential_sweep(relaxation, cycle, levels):
    N, c = 64, 2
    prop = LinearODE(-1.5, 1.0 / N, c)
    u0 = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    res = solve(prop, u0, N, levels=levels, relaxation=relaxation, cycle=cycle, tol=1e-14, max_iter=60)
    assert res.converged and res.levels == levels
    assert max_diff(res.u, sequential(prop, u0, N)) < 1e-12
    assert res.residual[-1] <= 1e-14 < res.residual[0]


def test_two_level_f_relaxation_is_exact_after_N_over_c_iterations():
    # λh = -1.9: the coarse step (c = 4) has factor 1 - 7.6 = -6.6, unstable, so MGRIT
    # does not converge by contraction; it still reaches the exact solution, one C-point per
    # iteration, after N/c iterations.
    N, c = 32, 4
    prop = LinearODE(-1.9 * N, 1.0 / N, c)
    u0 = torch.ones((), dtype=D)
    res = solve(prop, u0, N, levels=2, relaxation="F", tol=0.0, max_iter=N // c)
    r = res.residual
    assert len(r) == N // c + 1
    assert r[N // c - 2] > 1e-3 * r[0]  # not converged one iteration before
    assert r[N // c] <= 1e-13 * r[0]
    assert max_diff(res.u, sequential(prop, u0, N)) <= 1e-13


def test_fcf_v_cycle_iterations_do_not_grow_with_N():
    counts = {}
    for N in (64, 256, 1024):
        c = 4
        prop = LinearODE(-1.0, 1.0 / N, c)
        res = solve(prop, torch.ones(4, dtype=D), N, levels=n_levels(N, c, 99), relaxation="FCF",
                    cycle="V", tol=1e-10, max_iter=50)
        assert res.converged
        counts[N] = res.iterations
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert max(counts.values()) <= 8, counts


def test_history_fields_count_work():
    N, c = 64, 4
    res = solve(LinearODE(-1.0, 1.0 / N, c), torch.ones((), dtype=D), N, levels=2, relaxation="F",
                tol=0.0, max_iter=3)
    # per iteration: F-relax (48 steps), 16 C-point residual steps, 16 coarse right-hand-side
    # steps (counted when the residual is), a 16-step coarsest solve; the last iteration only
    # relaxes and measures the residual
    per = 48 + 16 + 16 + 16
    assert res.step_evals == [80, per + 80, 2 * per + 80, 3 * per + 48 + 16]
    assert res.bytes_sent == [0] * 4  # one process sends nothing
    assert all(b >= a for a, b in zip(res.wall_time, res.wall_time[1:]))
    assert res.conv_factor == pytest.approx((res.residual[-1] / res.residual[0]) ** (1 / 3))


def test_warm_start_from_the_solution_is_converged_at_once():
    N, c = 64, 4
    prop = LinearODE(-1.0, 1.0 / N, c)
    u0 = torch.ones(2, dtype=D)
    exact = sequential(prop, u0, N)
    res = solve(prop, u0, N, levels=3, guess=exact, tol=1e-12, max_iter=10)
    assert res.iterations == 0 and res.residual[0] < 1e-14


def test_one_level_is_the_sequential_sweep():
    N = 16
    prop = LinearODE(-1.0, 1.0 / N, 2)
    res = solve(prop, torch.ones((), dtype=D), N, levels=1)
    assert res.levels == 1 and res.step_evals == [N]
    assert max_diff(res.u, sequential(prop, torch.ones((), dtype=D), N)) == 0.0


def test_heat_equation_converges():
    N, m = 64, 15
    prop = Heat1D(m, 1.0, 1.0 / 4096, 2)
    u0 = torch.sin(torch.pi * torch.linspace(0, 1, m + 2, dtype=D)[1:-1])
    res = solve(prop, u0, N, levels=3, tol=1e-12, max_iter=30)
    assert res.converged and res.iterations <= 10
    assert max_diff(res.u, sequential(prop, u0, N)) < 1e-12


def test_adjoint_matches_the_backward_recursion():
    N, c = 64, 4
    prop = LinearODE(-1.0, 1.0 / N, c)
    fwd = solve(prop, torch.ones(3, dtype=D), N, levels=3, tol=1e-13)
    lam_N = torch.tensor([1.0, 2.0, -1.0], dtype=D)
    adj = solve_adjoint(prop, fwd.u, lam_N, N, levels=3, tol=1e-13)
    assert adj.mgrit.converged and adj.mgrit.iterations <= 10
    assert sorted(adj.lam) == list(range(N + 1))
    for n in range(N + 1):
        torch.testing.assert_close(adj.lam[n], prop.factor(0) ** (N - n) * lam_N, rtol=1e-12, atol=1e-14)


def test_layout_owns_points_after_its_steps_and_mirrors():
    lay = Layout.balanced(10, 3)  # steps 0-3, 4-6, 7-9
    assert lay.bounds == ((0, 4), (5, 7), (8, 10))
    assert [lay.owner(0, n, 2) for n in (0, 4, 5, 10)] == [0, 0, 1, 2]
    assert lay.local(1, 1, 2) == (3, 3) and lay.local(1, 2, 2) == (2, 1)  # level 2: no point
    mir = lay.mirror()
    # reversed point m (adjoint of step N - m) lives with the rank holding step N - m
    assert mir.bounds == ((7, 10), (4, 6), (0, 3)) and mir.reverse
    assert mir.mirror() == lay
    with pytest.raises(ValueError, match="contiguous"):
        Layout(10, ((0, 4), (6, 10)))


def test_bad_options_fail_clearly():
    prop = LinearODE(-1.0, 0.1, 2)
    with pytest.raises(ValueError, match="relaxation"):
        solve(prop, torch.ones(()), 8, relaxation="CF")
    with pytest.raises(ValueError, match="cycle"):
        solve(prop, torch.ones(()), 8, cycle="W")
    assert math.isnan(solve(prop, torch.ones(()), 8, levels=1).conv_factor)


def test_the_documented_example_runs_as_documented():
    """docs/mgrit.rst's first example: the iteration count and final state it states."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "mgrit.rst").read_text()
    code = text.split(".. code-block:: python\n", 1)[1].split("\n    result.residual", 1)[0]
    namespace: dict = {}
    exec("\n".join(line[4:] for line in code.splitlines()), namespace)
    result = namespace["result"]
    assert result.iterations == 5
    assert abs(float(result.u[-1]) - (1 - 1 / 64) ** 64) < 1e-12
    assert result.residual[-1] < 1e-10


# -- the F-cycle ------------------------------------------------------------------------------

class CountingODE(LinearODE):
    """``LinearODE`` that counts its steps per level."""

    def __init__(self, lam, h, c):
        super().__init__(lam, h, c)
        self.steps = {}

    def step(self, level, i, u):
        self.steps[level] = self.steps.get(level, 0) + 1
        return super().step(level, i, u)


@pytest.mark.parametrize("levels", [3, 4, 5])
def test_f_cycle_visits_level_l_l_times_per_iteration(levels):
    # textbook F-cycle from level 1: F(l) = relax, restrict, F(l+1), correct, relax, restrict,
    # V(l+1), correct; level l >= 1 is visited l times, the coarsest levels - 1 times.  Each
    # visit of the coarsest level costs its n steps for the right-hand side and n to solve.
    N, c = 64, 2
    n = N // c ** (levels - 1)
    for cycle, visits in (("V", 1), ("F", levels - 1)):
        prop = CountingODE(-1.0, 1.0 / N, c)
        res = solve(prop, torch.ones((), dtype=D), N, levels=levels, cycle=cycle, tol=0.0, max_iter=1)
        assert res.levels == levels and res.iterations == 1
        assert prop.steps[levels - 1] == 2 * n * visits, (cycle, prop.steps)


@pytest.mark.parametrize("problem", ["ode", "heat"])
def test_f_and_v_cycles_differ_at_three_levels(problem):
    N, c = 64, 2
    if problem == "ode":
        prop, u0 = LinearODE(-1.0, 1.0 / N, c), torch.ones(3, dtype=D)
    else:  # stable on every level: c^2 h κ / Δx² = 1/4
        prop = Heat1D(15, 1.0, 1.0 / 4096, c)
        u0 = torch.sin(torch.pi * torch.linspace(0, 1, 17, dtype=D)[1:-1])
    runs = {cycle: solve(prop, u0, N, levels=3, cycle=cycle, tol=1e-13, max_iter=30) for cycle in "VF"}
    v, f = runs["V"].residual, runs["F"].residual
    assert v[0] == f[0]  # the same relaxed initial guess
    assert abs(f[1] - v[1]) > 1e-3 * v[1], (v, f)
    assert f[1] < v[1]  # two coarse-grid corrections on level 1 instead of one
    for res in runs.values():
        assert res.converged and max_diff(res.u, sequential(prop, u0, N)) < 1e-12


@pytest.mark.parametrize("N", [64, 256])
@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("levels", [3, 4])
def test_f_cycle_needs_no_more_iterations_than_v(N, c, levels):
    prop = LinearODE(-1.0, 1.0 / N, c)
    u0 = torch.ones(2, dtype=D)
    tol = 1e-10 * float(torch.linalg.vector_norm(u0))
    its = {}
    for cycle in "VF":
        res = solve(prop, u0, N, levels=levels, cycle=cycle, tol=tol, max_iter=50)
        assert res.converged and res.levels == levels
        its[cycle] = res.iterations
    assert its["F"] <= its["V"], its


# -- divergence -------------------------------------------------------------------------------

@pytest.mark.parametrize("N,levels,cycle,iteration,level", [
    (1024, 2, "V", 1, 1),  # one coarse sweep over 256 points: 6.6^256 ≈ 1e210, squared inf
    (4096, 3, "F", 1, 2),  # level 2 (factor 1 - 1.9 · 16 = -29.4) overflows in the first cycle
    (1024, 3, "F", 8, 0),  # slower growth: the fine residual's sum of squares overflows first
])
def test_overflow_raises_with_iteration_and_level(N, levels, cycle, iteration, level):
    import ocnet.mgrit as mgrit

    # fine factor 1 - 1.9 = -0.9, stable; coarse factor 1 - 1.9 · 4^l, unstable
    c = 4
    prop = LinearODE(-1.9 * N, 1.0 / N, c)
    with pytest.raises(ArithmeticError) as info:
        solve(prop, torch.ones((), dtype=D), N, levels=levels, cycle=cycle, tol=1e-10, max_iter=20)
    err = info.value
    assert isinstance(err, mgrit.MGRITDivergence) and not err.adjoint
    assert (err.iteration, err.level) == (iteration, level)
    r = err.residual
    assert len(r) == iteration + 1 and all(map(math.isfinite, r[:-1])) and not math.isfinite(r[-1])
    assert f"iteration {iteration} " in str(err) and f"level {level})" in str(err) and "unstable" in str(err)


def test_nan_initial_value_raises_at_iteration_zero():
    import ocnet.mgrit as mgrit

    prop = LinearODE(-1.0, 1.0 / 64, 4)
    with pytest.raises(ArithmeticError) as info:
        solve(prop, torch.tensor([1.0, math.nan], dtype=D), 64, levels=3, max_iter=20)
    err = info.value
    assert isinstance(err, mgrit.MGRITDivergence)
    assert (err.iteration, err.level) == (0, 0) and len(err.residual) == 1
    assert "nan at iteration 0" in str(err)


def test_adjoint_divergence_says_adjoint():
    import ocnet.mgrit as mgrit

    N = 64
    prop = LinearODE(-1.0, 1.0 / N, 4)
    fwd = solve(prop, torch.ones((), dtype=D), N, levels=3, tol=1e-12)
    with pytest.raises(ArithmeticError) as info:
        solve_adjoint(prop, fwd.u, torch.tensor(math.inf, dtype=D), N, levels=3)
    assert isinstance(info.value, mgrit.MGRITDivergence) and info.value.adjoint
    assert "adjoint" in str(info.value) and info.value.iteration == 0


# -- the coarsening factor is the propagator's ------------------------------------------------

def test_coarsening_is_not_an_option_of_solve():
    prop = LinearODE(-1.0, 1.0 / 64, 2)
    with pytest.raises(TypeError):
        solve(prop, torch.ones((), dtype=D), 64, c=4, levels=3)
    with pytest.raises(TypeError):
        solve_adjoint(prop, [torch.ones((), dtype=D)] * 65, torch.ones((), dtype=D), 64, c=4)


def test_propagator_without_coarsening_is_rejected():
    class Plain:  # step only: no c
        def step(self, level, i, u):
            return 0.5 * u

    with pytest.raises(TypeError, match="coarsening factor"):
        solve(Plain(), torch.ones((), dtype=D), 16, levels=2)


def test_adjoint_uses_the_propagators_coarsening():
    # the adjoint of u' = λu from λ_N = u_0 is the forward solve in reversed time: the same
    # iterations and work, when both coarsen by the propagator's c = 4
    N, c = 64, 4
    prop = LinearODE(-1.0, 1.0 / N, c)
    u0 = torch.tensor([1.0, 2.0, -1.0], dtype=D)
    fwd = solve(prop, u0, N, levels=99, tol=1e-13)
    adj = solve_adjoint(prop, fwd.u, u0, N, levels=99, tol=1e-13)
    assert fwd.levels == adj.mgrit.levels == n_levels(N, c, 99) == 4  # c = 2 would afford 7
    assert adj.mgrit.iterations == fwd.iterations
    assert adj.mgrit.step_evals == fwd.step_evals
    for n in range(N + 1):
        torch.testing.assert_close(adj.lam[n], prop.factor(0) ** (N - n) * u0, rtol=1e-12, atol=1e-14)


# -- layouts with empty ranks -----------------------------------------------------------------

def test_layout_first_rank_is_the_first_nonempty_one():
    last_empty = Layout(10, ((0, 10), (1, 0)))
    assert last_empty.first_rank == 0
    mir = last_empty.mirror()  # reversed time starts on the empty rank 1
    assert mir.bounds == ((0, 10), (1, 0)) and mir.reverse and mir.first_rank == 0
    assert mir.mirror() == last_empty
    middle = Layout(10, ((0, 4), (1, 0), (5, 10)))
    assert middle.mirror().first_rank == 2 and middle.mirror().bounds == ((7, 10), (1, 0), (0, 6))
    assert Layout(10, ((1, 0), (0, 10))).first_rank == 1
    with pytest.raises(ValueError, match="start at 0"):
        Layout(10, ((1, 0), (1, 10)))


@pytest.mark.parametrize("levels,relaxation,cycle,tol,max_iter,skip", [
    (1, "FCF", "V", 0.0, 0, False), (2, "FCF", "V", 1e-9, 20, False), (3, "FCF", "F", 1e-9, 20, True),
    (3, "F", "V", 0.0, 2, False), (3, "FCF", "V", 0.0, 0, False), (3, "FCF", "V", 0.0, 1, True),
    (4, "FCF", "V", 1e-3, 20, False)])
def test_stored_graphs_are_at_the_final_states(levels, relaxation, cycle, tol, max_iter, skip):
    # the latest recorded evaluation of every fine step is the one from the solution's states
    from ocnet.mgrit.network import NetworkPropagator
    from ocnet.model.grid import Partition
    from ocnet.model.problem import build
    N = 24
    problem = build((4,), 2, net="dense", layers=N, width=4, seed=0, dtype=torch.float64)
    prop = NetworkPropagator(problem.local(Partition(N, 1), 0), c=2)
    u0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = solve(prop, u0, N, levels=levels, relaxation=relaxation, cycle=cycle, tol=tol,
                max_iter=max_iter, skip=skip)
    assert sorted(prop.graphs) == list(range(N))
    linked = [i for i, record in prop.graphs.items() if record.x.grad_fn is not None]
    for i, (x, z, _, _) in prop.graphs.items():
        assert torch.equal(x, res.at(i))
        assert torch.equal(res.at(i) + prop.layers[i].h * z.detach(), prop.step(0, i, res.at(i)))
    # only a pass known to be the last links its steps (one level: the whole sweep); a pass
    # that may be the last keeps each step's graph apart, so that the next pass frees it
    # (several levels, c = 2: the last pass's restriction steps from the F-points it relaxed)
    if levels == 1:
        assert linked == list(range(1, N))
    else:
        assert linked == (list(range(1, N, 2)) if tol == 0 and max_iter > 0 else [])
    assert not prop._record  # the solve said it was done


def _dense_propagator(N, seed=0):
    from ocnet.mgrit.network import NetworkPropagator
    from ocnet.model.grid import Partition
    from ocnet.model.problem import build
    problem = build((4,), 2, net="dense", layers=N, width=4, seed=seed, dtype=torch.float64)
    return problem, NetworkPropagator(problem.local(Partition(N, 1), 0), c=2)


@pytest.mark.parametrize("levels", [1, 3])
def test_the_last_adjoint_pass_differentiates_each_chain_once_as_backpropagation(levels):
    # One level: the sweep records one chain of N steps, and the adjoint's last pass takes it in
    # one backward whose λ_0 and parameter gradients are autograd's through u_N bit for bit.
    # Three levels: the chains are the intervals C → F → C of the last pass.
    from ocnet.ranks import timeline
    N = 16
    problem, prop = _dense_propagator(N)
    u0 = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lam_N = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    rec = timeline.Recorder()
    with timeline.recording(rec):
        fwd = solve(prop, u0, N, levels=levels, max_iter=2, final_fc=True)
        adj = solve_adjoint(prop, fwd.u, lam_N, N, levels=levels, max_iter=2)
        prop.finish_gradients(adj.states, adj.lam)
    backwards = [info["steps"] for kind, _, _, info in rec.events if kind == "backward"]
    assert backwards == ([N] if levels == 1 else [2] * (N // 2))
    assert "weight_grad" not in {kind for kind, *_ in rec.events}  # every layer's gradient came with its chain
    if levels == 1:
        layers = [prop.layers[i] for i in range(N)]
        x = u0.clone().requires_grad_(True)
        u = x
        for layer in layers:
            u = layer(u)
        params = [p for layer in layers for p in layer.parameters()]
        want = torch.autograd.grad(u, [x, *params], lam_N)
        assert torch.equal(adj.lam[0], want[0])
        assert all(torch.equal(p.grad, g) for p, g in zip(params, want[1:]))


def test_a_chain_result_is_refused_for_another_adjoint():
    # A step reached with an adjoint other than the one its chain's backward used gets its vjp
    # from a forward run afresh, and finish_gradients its parameter gradient from λ given then.
    from ocnet.mgrit.levels import DONE, LAST
    N = 4
    problem, prop = _dense_propagator(N, seed=3)
    gen = torch.Generator().manual_seed(4)
    u = [torch.randn(2, 4, dtype=torch.float64, generator=gen)]
    prop.fine_pass(LAST)
    for i in range(N):
        u.append(prop.step(0, i, u[i]))
    prop.fine_pass(DONE)
    lam = torch.randn(2, 4, dtype=torch.float64, generator=gen)
    other = torch.randn(2, 4, dtype=torch.float64, generator=gen)
    prop.adjoint_pass(LAST)
    # λ_4 = lam, then λ_3 = other instead of step 3's result: steps 2, 1, 0 from other on
    out = {4: lam, 3: other}
    got = {3: prop.vjp(0, 3, u[3], lam)}
    for k in (2, 1, 0):
        got[k] = out[k] = prop.vjp(0, k, u[k], out[k + 1])
    prop.adjoint_pass(DONE)
    prop.finish_gradients({k: u[k] for k in range(N)}, {k + 1: out[k + 1] for k in range(N)})
    for k in range(N):
        layer = prop.layers[k]
        x = u[k].clone().requires_grad_(True)
        want = torch.autograd.grad(layer(x), [x, *layer.parameters()], out[k + 1])
        assert torch.allclose(got[k], want[0], rtol=1e-14, atol=0)
        assert all(torch.allclose(p.grad, g, rtol=1e-14, atol=0) for p, g in zip(layer.parameters(), want[1:]))


def test_skip_starts_from_the_coarse_solution():
    # XBraid's skip on u' = λu, 3 levels, c = 2: the coarsest level propagates u_0 with steps
    # of 4h, level 1 F-relaxes from it with steps of 2h, and the fine C-points take level 1's
    # values; max_iter = 0 then only F-relaxes the fine level and measures the residual.
    N, c, lam, h = 16, 2, -1.5, 1.0 / 16
    u0 = torch.tensor(1.0, dtype=torch.float64)
    res = solve(LinearODE(lam, h=h, c=c), u0, N, levels=3, max_iter=0, skip=True, fine_relaxation="F")
    for j in range(0, N + 1, c):  # level-1 point j/c, from the level-2 point at or before it
        K, rest = divmod(j, c * c)
        assert float(res.at(j)) == pytest.approx((1 + lam * 4 * h) ** K * (1 + lam * 2 * h) ** (rest // c),
                                                 rel=1e-14)
        if j + 1 < N:  # the F-point after it: one fine step from it
            assert float(res.at(j + 1)) == pytest.approx(float(res.at(j)) * (1 + lam * h), rel=1e-14)
    # the coarsest solve (4 steps), level 1's F-relaxation (4), the fine F-relaxation and residual (8 + 8)
    assert res.step_evals == [4 + 4 + 8 + 8]


@pytest.mark.parametrize("levels", [2, 3])
def test_final_fc_relaxation_moves_the_c_points_to_their_steps(levels):
    # XBraid's final FC-relaxation on u' = λu: after the last iteration every C-point is one
    # fine step from the F-point before it, the residual is that from before the C-relaxation
    # (so it is the size of the move), and no step is evaluated more.
    N, c, lam = 32, 2, -2.0
    prop = LinearODE(lam, h=1.0 / N, c=c)
    u0 = torch.tensor(1.0, dtype=torch.float64)
    opts = dict(levels=levels, max_iter=1, tol=-1.0, skip=True, fine_relaxation="F")
    plain = solve(prop, u0, N, **opts)
    final = solve(prop, u0, N, final_fc=True, **opts)
    assert final.residual == plain.residual and final.step_evals == plain.step_evals
    moved = 0.0
    for j in range(1, N + 1):
        if j % c == 0:
            assert float(final.at(j)) == pytest.approx(float(plain.at(j - 1)) * (1 + lam / N), rel=1e-15)
            moved += (float(final.at(j)) - float(plain.at(j))) ** 2
        else:  # the F-points keep the relaxation's values
            assert float(final.at(j)) == float(plain.at(j))
    assert moved ** 0.5 == pytest.approx(plain.residual[-1], rel=1e-9) and moved > 0
    exact = (1 + lam / N) ** N
    assert abs(float(final.at(N)) - exact) < abs(float(plain.at(N)) - exact)


def test_a_float32_residual_is_measured_to_float32_round_off():
    # each C-point's sum of squares in float32 (a cascade sum), the points' sums in float64:
    # the norm agrees with the float64 measure of the same float32 states to ~1e-7
    from ocnet.mgrit.fas import restrict
    from ocnet.mgrit.levels import Context
    from ocnet.ranks.comm import SelfComm
    N, c = 8, 2
    prop = LinearODE(-0.5, h=0.1, c=c)
    ctx = Context(prop, SelfComm(), Layout.balanced(N, 1), c, torch.device("cpu"))
    fine = ctx.level(0)
    gen = torch.Generator().manual_seed(0)
    fine.u = [torch.randn(64, 512, generator=gen) * 1e3 for _ in range(N + 1)]
    fine.g = [fine.u[0]] + [None] * N
    _, res_sq = restrict(ctx, fine, build_coarse=False)
    want = sum(float(((prop.step(0, 0, fine.u[j - 1]) - fine.u[j]).double() ** 2).sum()) for j in range(c, N + 1, c))
    assert res_sq.dtype == torch.float64
    assert float(res_sq) == pytest.approx(want, rel=1e-6)

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
    res = solve(prop, u0, N, c=c, levels=levels, relaxation=relaxation, cycle=cycle, tol=1e-14, max_iter=60)
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
    res = solve(prop, u0, N, c=c, levels=2, relaxation="F", tol=0.0, max_iter=N // c)
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
        res = solve(prop, torch.ones(4, dtype=D), N, c=c, levels=n_levels(N, c, 99), relaxation="FCF",
                    cycle="V", tol=1e-10, max_iter=50)
        assert res.converged
        counts[N] = res.iterations
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assert max(counts.values()) <= 8, counts


def test_history_fields_count_work():
    N, c = 64, 4
    res = solve(LinearODE(-1.0, 1.0 / N, c), torch.ones((), dtype=D), N, c=c, levels=2, relaxation="F",
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
    res = solve(prop, u0, N, c=c, levels=3, guess=exact, tol=1e-12, max_iter=10)
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
    res = solve(prop, u0, N, c=2, levels=3, tol=1e-12, max_iter=30)
    assert res.converged and res.iterations <= 10
    assert max_diff(res.u, sequential(prop, u0, N)) < 1e-12


def test_adjoint_matches_the_backward_recursion():
    N, c = 64, 4
    prop = LinearODE(-1.0, 1.0 / N, c)
    fwd = solve(prop, torch.ones(3, dtype=D), N, c=c, levels=3, tol=1e-13)
    lam_N = torch.tensor([1.0, 2.0, -1.0], dtype=D)
    adj = solve_adjoint(prop, fwd.u, lam_N, N, c=c, levels=3, tol=1e-13)
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

"""MGRIT's work: the number of step evaluations, by a formula written independently of the
solver (docs/mgrit.rst, "Work"), against the counter ``MGRITResult.step_evals``."""
from __future__ import annotations

import importlib.util
import itertools
import json

import pytest
import torch
from conftest import MPI_SCRIPTS

from ocnet.mgrit import LinearODE, solve, solve_adjoint
from ocnet.mgrit.core import n_levels


def relax_work(n: int, c: int, kind: str, sweeps: int, first_f: bool = True) -> int:
    """Steps of one relaxation on a level with ``n`` steps: F-relaxation evaluates the
    ``n − ⌊n/c⌋`` steps into F-points, C-relaxation the ``⌊n/c⌋`` into C-points."""
    f, cpts = n - n // c, n // c
    return (f if first_f else 0) + (sweeps * (cpts + f) if kind == "FCF" else 0)


def cycle_work(N: int, c: int, level: int, L: int, kind: str, sweeps: int, cycle: str) -> int:
    """Steps of the V- or F-cycle from ``level`` (≥ 1) on a hierarchy of ``L`` levels."""
    n = N // c ** level
    if level == L - 1:
        return n  # the sequential solve
    down = 2 * (n // c)  # the restriction: τ at the C-points, and one coarse step per coarse point
    correct = n - n // c  # injection, then F-relaxation
    work = relax_work(n, c, kind, sweeps) + down + cycle_work(N, c, level + 1, L, kind, sweeps, cycle) + correct
    if cycle == "F":  # the second half: no leading F-relaxation, a V-cycle below
        work += (relax_work(n, c, kind, sweeps, first_f=False) + down
                 + cycle_work(N, c, level + 1, L, kind, sweeps, "V") + correct)
    return work


def solve_work(N: int, c: int, levels: int, kind: str, sweeps: int, cycle: str, skip: bool,
               iterations: int, max_iter: int, fine: str | None = None) -> list[int]:
    """``step_evals`` of a solve that stops after ``iterations ≤ max_iter`` corrections;
    ``fine`` is the fine level's relaxation (default ``kind``)."""
    L = n_levels(N, c, levels)
    if L == 1:
        return [N]
    out, total = [], 0
    if skip:  # the coarsest solve, and the F-relaxations of the corrections on levels 1 … L-2
        total += N // c ** (L - 1) + sum(N // c ** lvl - N // c ** (lvl + 1) for lvl in range(1, L - 1))
    for k in range(iterations + 1):
        last = k == max_iter
        relaxation = "F" if last and k > 0 else fine or kind
        total += relax_work(N, c, relaxation, sweeps) + N // c  # relaxation, residual at C-points
        if not last:
            total += N // c  # the coarse right-hand side: one coarse step per coarse point
        out.append(total)
        if k < iterations:
            total += cycle_work(N, c, 1, L, kind, sweeps, cycle)  # the fine level's correction: no steps
    return out


GRID = list(itertools.product((8, 27, 32, 50), (2, 3, 4), (1, 2, 3, 4), ("F", "FCF"), (1, 2), ("V", "F"),
                              (False, True), (0, 2)))


@pytest.mark.parametrize("N,c,levels,kind,sweeps,cycle,skip,max_iter",
                         [g for g in GRID if not (g[3] == "F" and g[4] == 2)])
def test_step_evals_follow_the_formula(N, c, levels, kind, sweeps, cycle, skip, max_iter):
    # the fine level relaxes the other way round on every other case
    fine = ("F" if kind == "FCF" else "FCF") if (N + c + levels) % 2 else None
    prop = LinearODE(-1.0, h=1.0 / N, c=c)
    opts = dict(levels=levels, relaxation=kind, cf_sweeps=sweeps, cycle=cycle, skip=skip, max_iter=max_iter,
                fine_relaxation=fine, tol=-1.0)  # never stops early
    fwd = solve(prop, torch.ones((), dtype=torch.float64), N, **opts)
    adj = solve_adjoint(prop, fwd.u, torch.ones((), dtype=torch.float64), N, **opts)
    expected = solve_work(N, c, levels, kind, sweeps, cycle, skip, max_iter, max_iter, fine)
    assert fwd.step_evals == expected
    assert adj.mgrit.step_evals == expected


def test_a_tolerance_stop_counts_the_unused_coarse_problem():
    # stopping on the tolerance at iteration k < max_iter: that restriction built a coarse problem
    N, c = 64, 4
    res = solve(LinearODE(-1.0, h=1.0 / N, c=c), torch.ones((), dtype=torch.float64), N, levels=3, tol=1e-8,
                max_iter=30)
    assert res.converged and res.iterations < 30
    assert res.step_evals == solve_work(N, c, 3, "FCF", 1, "V", False, res.iterations, 30)


def test_torchbraid_settings_count():
    # 3 levels, c = 4, N = 32, FCF, V-cycles, two corrections: 228 forward, the same adjoint
    assert solve_work(32, 4, 3, "FCF", 1, "V", False, 2, 2)[-1] == 228
    assert solve_work(32, 4, 3, "FCF", 1, "V", False, 1, 1)[-1] == 130
    # torchbraid's own: skip, F on the fine level, XBraid's max_iter 2 = the skip cycle and one
    # correction; 106 = 53 N / 16 steps per solve, N = 32 and 64
    assert solve_work(32, 4, 3, "FCF", 1, "V", True, 1, 1, fine="F")[-1] == 106
    assert solve_work(64, 4, 3, "FCF", 1, "V", True, 1, 1, fine="F")[-1] == 212


@pytest.mark.mpi
def test_step_evals_on_several_ranks(mpi, tmp_path):
    spec = importlib.util.spec_from_file_location("mgrit_work", MPI_SCRIPTS / "mgrit_work.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for n in (2, 3):
        path = tmp_path / f"work{n}.json"
        proc = mpi(n, "mgrit_work.py", str(path), timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(path.read_text())
        assert len(got) == len(script.CASES)
        for row in got:
            N, c, levels, kind, sweeps, cycle, skip, max_iter, fine = row["case"]
            expected = solve_work(N, c, levels, kind, sweeps, cycle, skip, max_iter, max_iter, fine)
            assert row["forward"] == expected and row["adjoint"] == expected, row

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
from ocnet.model.problem import build
from ocnet.ranks import timeline
from ocnet.ranks.comm import SelfComm
from ocnet.solvers.mgrit import MGRIT


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
            assert row["same_with_reuse"] and max(row["reuse"]) <= expected[-1], row


# -- reuse: no coarse step evaluated twice from the same state --------------------------------

class TanhODE:
    """``Φ^ℓ_i(u) = u + c^ℓ h tanh(W_i u)``, a different ``W_i`` per step: nonlinear, so a step
    reused at the wrong input would show."""

    def __init__(self, N: int, width: int, c: int) -> None:
        gen = torch.Generator().manual_seed(0)
        self.W = torch.randn(N, width, width, generator=gen, dtype=torch.float64) / width ** 0.5
        self.h, self.c = 1.0 / N, c

    def step(self, level, i, u):
        return u + self.c ** level * self.h * torch.tanh(u @ self.W[i].T)

    def vjp(self, level, i, u, lam):
        s = 1 - torch.tanh(u @ self.W[i].T) ** 2
        return lam + self.c ** level * self.h * (lam * s) @ self.W[i]


def reused(N: int, c: int) -> int:
    """Steps that reuse saves per solve at torchbraid's settings on one rank (3 levels, skip, F
    on the fine level and FCF on the coarse ones, one correction; ``N`` a multiple of c²).
    With ``n = N/c`` level-1 steps: the coarse right-hand side's ``n − n/c`` steps into level-1
    F-points are the skip cycle's F-relaxation, its ``n/c`` out of level-1 C-points the first
    steps of the next F-relaxation; level-1 point 0 never changes, so the first interval's
    second F-relaxation (``c − 1``), its τ at point c (1) and the F-relaxation after the
    correction (``c − 1``) repeat earlier ones, as do ``Φ²(v_0)`` of the level-2 right-hand
    side and of the coarsest solve (2)."""
    n = N // c
    return (n - n // c) + n // c + (c - 1) + 1 + 2 + (c - 1)


TORCHBRAID = dict(levels=3, relaxation="FCF", fine_relaxation="F", skip=True, max_iter=1, final_fc=True, tol=-1.0)


@pytest.mark.parametrize("N,c,levels,kind,cycle,skip,max_iter",
                         [(32, 4, 3, "FCF", "V", True, 1), (64, 4, 3, "FCF", "V", True, 1),
                          (36, 3, 3, "FCF", "V", True, 1), (32, 2, 4, "FCF", "F", False, 2),
                          (27, 3, 3, "F", "V", True, 3), (50, 2, 2, "FCF", "V", False, 2)])
def test_reuse_gives_the_same_states_bit_for_bit_with_fewer_steps(N, c, levels, kind, cycle, skip, max_iter):
    prop = TanhODE(N, 5, c)
    u0, lam_N = torch.linspace(-1, 1, 5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    opts = dict(levels=levels, relaxation=kind, cycle=cycle, skip=skip, max_iter=max_iter, fine_relaxation="F",
                final_fc=True, tol=-1.0)
    runs = {}
    for reuse in (False, True):
        fwd = solve(prop, u0, N, reuse=reuse, **opts)
        runs[reuse] = fwd, solve_adjoint(prop, fwd.u, lam_N, N, reuse=reuse, **opts).mgrit
    for plain, lean in zip(runs[False], runs[True]):
        assert all(torch.equal(a, b) for a, b in zip(plain.u, lean.u))
        assert lean.residual == plain.residual
        assert lean.step_evals[-1] < plain.step_evals[-1]
    if (levels, kind, cycle, skip, max_iter) == (3, "FCF", "V", True, 1) and N % c ** 2 == 0:
        for plain, lean in zip(runs[False], runs[True]):
            assert plain.step_evals[-1] == solve_work(N, c, 3, "FCF", 1, "V", True, 1, 1, fine="F")[-1]
            assert lean.step_evals[-1] == plain.step_evals[-1] - reused(N, c)


def test_reuse_at_torchbraids_settings_counts():
    assert [solve_work(N, 4, 3, "FCF", 1, "V", True, 1, 1, fine="F")[-1] - reused(N, 4) for N in (32, 64)] == [89, 187]


def _step(N: int, reuse: bool) -> tuple[dict[str, int], torch.Tensor, dict[str, torch.Tensor]]:
    """One mgrit training step of a tanh network at torchbraid's settings: its layer steps by
    kind, ``u_N`` and the gradients."""
    problem = build((8,), 3, net="dense", layers=N, width=6, T=2.0, seed=0, dtype=torch.float64)
    cfg = {"coarsening": 4, "mgrit_levels": 3}
    network = problem.local(MGRIT.partition(N, 1, cfg), 0)
    solver = MGRIT(network, SelfComm(), lambda p: torch.optim.SGD(p, lr=0.0), mgrit_mode="one_shot",
                   mgrit_warm_start="none", mgrit_iters=1, mgrit_skip=True, mgrit_fine_relax="F",
                   mgrit_final_fc=True, mgrit_reuse=reuse, **cfg)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen)
    rec = timeline.Recorder()
    with timeline.recording(rec):
        solver.step(x, y, torch.arange(16))
    steps = rec.steps()
    fwd = solve(solver.prop, network.opening(x).detach(), N, **solver.solve_options())
    solver.prop.release()
    return steps, fwd.at(N), {k: p.grad.clone() for k, p in network.named_parameters()}


@pytest.mark.parametrize("N", [32, 64])
def test_reuse_keeps_the_errors_against_the_exact_network(N):
    # fewer layer forwards (89 of 106 at N = 32), the same u_N and gradient bit for bit, so the
    # same errors against back-propagation through the exact network
    problem = build((8,), 3, net="dense", layers=N, width=6, T=2.0, seed=0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 8, generator=gen, dtype=torch.float64), torch.randint(0, 3, (16,), generator=gen)
    with torch.no_grad():
        u = problem.opening(x)
        for layer in problem.layers:
            u = layer(u)
    torch.nn.functional.cross_entropy(problem(x), y).backward()
    exact = torch.cat([p.grad.flatten() for p in problem.parameters()])
    errors = {}
    for reuse in (False, True):
        steps, uN, grads = _step(N, reuse)
        forwards = steps.get("forward", 0) + steps.get("forward_graph", 0) + steps.get("vjp_recompute", 0)
        expected = solve_work(N, 4, 3, "FCF", 1, "V", True, 1, 1, fine="F")[-1] - (reused(N, 4) if reuse else 0)
        assert forwards == expected and steps.get("vjp", 0) + steps.get("backward", 0) == expected
        g = torch.cat([grads[k].flatten() for k, _ in problem.named_parameters()])
        errors[reuse] = (float(torch.linalg.vector_norm(uN - u) / torch.linalg.vector_norm(u)),
                         float(torch.linalg.vector_norm(g - exact) / torch.linalg.vector_norm(exact)))
    assert errors[True] == errors[False]
    # one correction of a cold start: 18 % and 17 % at N = 32 (three corrections: 0.1 %)
    assert 0 < errors[True][0] < 0.25 and 0 < errors[True][1] < 0.25, errors

"""MG/Opt in depth (``--solver mgopt``): plain steps of the inner solver when the correction
is off, first-order coherence of the coarse objective, the line search, rank invariance and
bad input."""
from __future__ import annotations

import pytest
import torch
from conftest import run_mpi

from ocnet.model import depth
from ocnet.model.options import ConfigError
from ocnet.model.problem import build
from ocnet.ranks.comm import SelfComm
from ocnet.runs.config import resolve
from ocnet.runs.testing import check_solver
from ocnet.solvers.mgopt import MGOpt
from ocnet.solvers.serial import Serial


@pytest.mark.parametrize("off", [{"mgopt_coarse_steps": 0}, {"mgopt_alpha": 0.0},
                                 {"mgopt_alpha": 1e6, "mgopt_line_search": 2}])
def test_without_a_correction_a_cycle_is_the_inner_solvers_step_exactly(off):
    """No coarse steps, a step length of 0, or a line search that rejects every step length
    (a correction 10⁶ times too long, three tries): the parameters are plain Adam's, bit for
    bit, and the solver honours the contract."""
    check_solver(MGOpt, exact=True, rtol=0.0, **off)


def test_the_coarse_objective_is_first_order_coherent_with_the_fine_one():
    """At the start of the coarse problem, ∇f_H(θ⁰) = Pᵀ ∇f_h(θ), with Pᵀ applied here by its
    matrix; so along any coarse direction e the coarse objective changes as the fine one does
    along P e (central differences, float64)."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.arange(32) % 3
    seen = []

    class Probe(MGOpt):
        def _cycle(self, level, x, y, index):
            if level == 1:
                seen.append(self._coherence_check(x, y))
            return super()._cycle(level, x, y, index)

        def _coherence_check(self, x, y):
            fine, coarse = self.levels[0], self.levels[1]
            net_h, net_H = fine.solver.network.problem, coarse.whole

            def objective(net, t, direction, v):
                """``J(θ + t direction) − ⟨v, θ + t direction⟩`` of ``net``, which keeps θ."""
                params = dict(net.named_parameters())
                with torch.no_grad():
                    for k in direction:
                        params[k] += t * direction[k]
                    value = net.loss(net(x), y) - sum((v[k] * params[k]).sum() for k in v)
                    for k in direction:
                        params[k] -= t * direction[k]
                return float(value)

            # gradients: the coarse objective's, and the fine loss's restricted by the matrix Pᵀ
            net_H.zero_grad()
            (net_H.loss(net_H(x), y) - sum((coarse.v[k] * p).sum() for k, p in net_H.named_parameters())).backward()
            g_H = {k: p.grad.clone() for k, p in net_H.named_parameters()}
            net_h.zero_grad()
            net_h.loss(net_h(x), y).backward()
            g_h = {k: p.grad.clone() for k, p in net_h.named_parameters()}
            P = depth.interpolation(net_H.stages[0].N, 2, "linear")
            restricted = {}
            for k in g_H:
                if k.startswith("layers."):
                    j, rest = k.split(".", 2)[1:]
                    restricted[k] = sum(P[n, int(j)] * g_h[f"layers.{n}.{rest}"] for n in range(P.shape[0]))
                else:
                    restricted[k] = g_h[k]
            e = {k: torch.randn_like(p) for k, p in net_H.named_parameters()}
            d = {}
            for k in g_h:
                if k.startswith("layers."):
                    n, rest = k.split(".", 2)[1:]
                    d[k] = sum(P[int(n), j] * e[f"layers.{j}.{rest}"] for j in range(P.shape[1]))
                else:
                    d[k] = e[k]
            t = 1e-5
            coarse_slope = (objective(net_H, t, e, coarse.v) - objective(net_H, -t, e, coarse.v)) / (2 * t)
            fine_slope = (objective(net_h, t, d, {}) - objective(net_h, -t, d, {})) / (2 * t)
            return g_H, restricted, coarse_slope, fine_slope

    problem = build((8,), 3, net="dense", layers=8, width=8, seed=1, dtype=torch.float64)
    network = problem.local(Serial.partition(problem.n_layers, 1, {}), 0)
    solver = Probe(network, SelfComm(), lambda p: torch.optim.Adam(p, lr=1e-2), mgopt_interpolate="linear",
                   mgopt_restrict="full_weighting")
    for _ in range(2):  # the second cycle starts from a trained coarse optimiser and v ≠ 0 on the fine level
        solver.step(x, y, torch.arange(32))
    for g_H, restricted, coarse_slope, fine_slope in seen:
        for k in g_H:
            torch.testing.assert_close(g_H[k], restricted[k], rtol=1e-10, atol=1e-13, msg=k)
        assert coarse_slope == pytest.approx(fine_slope, rel=1e-6)
        assert abs(fine_slope) > 1e-3  # a direction along which the objectives do change


def test_three_levels_and_mgrit_inside_train_and_record_the_step_length():
    check_solver(MGOpt, mgopt_levels=3, layers=8, mgopt_post=1)
    check_solver(MGOpt, inner="mgrit", mgrit_mode="exact", mgrit_levels=2)


@pytest.mark.mpi
def test_mgopt_is_rank_invariant():
    check_solver(MGOpt, ranks=(3,), mgopt_post=1)
    check_solver(MGOpt, ranks=(2,), layers=16, mgopt_levels=3, inner="mgrit", mgrit_mode="exact", mgrit_levels=2)


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="inner"):
        resolve(["--solver", "mgopt", "--inner", "penalty"])
    problem = build((1, 8, 8), 10, net="conv", layers=6, channels=[4, 8], dtype=torch.float64)
    network = problem.local(Serial.partition(problem.n_layers, 1, {}), 0)
    with pytest.raises(ValueError, match="coarsening factor c = 2 does not divide stage 0's 3 layers"):
        MGOpt(network, SelfComm(), lambda p: torch.optim.SGD(p, lr=0.1))


@pytest.mark.mpi
@pytest.mark.parametrize("ranks,flags,message", [
    (4, ("--mgopt-levels", "3"), "ocnet: error:"),  # the coarsest level's single layer on 4 ranks
    (2, ("--data-parallel", "2"), "ocnet: error: mgopt does not run on data groups (--data-parallel)")])
def test_bad_levels_and_data_groups_exit_2_before_training(tmp_path, ranks, flags, message):
    proc = run_mpi(ranks, "ocnet.run", "--solver", "mgopt", "--layers", "4", *flags,
                   "--out", str(tmp_path / "bad"), module=True, plain=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count(message) == 1
    assert not (tmp_path / "bad" / "history.jsonl").exists()

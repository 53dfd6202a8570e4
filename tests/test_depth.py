"""Transfer between a network and its twin coarsened in depth (ocnet.model.depth)."""
from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from ocnet.model import depth, kinds
from ocnet.model.problem import build
from ocnet.model.steps import Residual

F64 = torch.float64


def dense(layers: int, seed: int = 0, width: int = 6):
    return build((4,), 3, net="dense", layers=layers, width=width, seed=seed, dtype=F64)


def conv(layers: int, seed: int = 0):
    return build((1, 8, 8), 10, net="conv", layers=layers, channels=[4, 8], norm="batch", seed=seed, dtype=F64)


def constant_in_depth(problem) -> None:
    """Give every step of a stage the parameters and buffers of the stage's first step."""
    for steps in depth.stage_steps(problem):
        for step in steps[1:]:
            step.load_state_dict(steps[0].state_dict())


def stepped(problem, value) -> None:
    """Fill every tensor of stage ``s``'s step ``n`` with ``value(s, n)``."""
    with torch.no_grad():
        for s, steps in enumerate(depth.stage_steps(problem)):
            for n, step in enumerate(steps):
                for t in [*step.parameters(), *step.buffers()]:
                    t.fill_(value(s, n))


def first_value(step: Residual) -> float:
    return next(step.parameters()).flatten()[0].item()


def outside(problem) -> dict[str, torch.Tensor]:
    """Copies of the tensors outside layer time: opening, transitions, classifier."""
    transitions = [m for m in problem.layers if not isinstance(m, Residual)]
    modules = {"opening": problem.opening, "classifier": problem.classifier,
               **{f"transition{s}": m for s, m in enumerate(transitions)}}
    return {f"{name}.{k}": v.clone() for name, m in modules.items() for k, v in m.state_dict().items()}


def outputs(problem, x):
    problem.eval()
    with torch.no_grad():
        return problem(x)


# -- the operators on sequences ---------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 2, 3, 4])
@pytest.mark.parametrize("n_coarse", [1, 3, 5])
def test_the_operators_keep_constants_and_injection_inverts_interpolation(c, n_coarse):
    eye = torch.eye(n_coarse, dtype=F64)
    for how in depth.INTERPOLATIONS:
        P = depth.interpolation(n_coarse, c, how)
        assert P.shape == (c * n_coarse, n_coarse)
        assert torch.allclose(P.sum(1), torch.ones(c * n_coarse, dtype=F64), atol=1e-15)
        assert torch.equal(depth.restriction(n_coarse, c, "injection") @ P, eye)
    for how in ("injection", "full_weighting"):
        R = depth.restriction(n_coarse, c, how)
        assert torch.allclose(R.sum(1), torch.ones(n_coarse, dtype=F64), atol=1e-15)
    assert torch.equal(depth.restriction(n_coarse, c, "sum"), depth.interpolation(n_coarse, c, "constant").T)
    assert torch.equal(depth.restriction(n_coarse, c, "linear_transpose"), depth.interpolation(n_coarse, c, "linear").T)
    # P^T keeps a gradient's total over the stage: each fine step's weights sum to one
    for how in ("sum", "linear_transpose"):
        R = depth.restriction(n_coarse, c, how)
        assert torch.allclose(R.sum(0), torch.ones(c * n_coarse, dtype=F64), atol=1e-15)


def test_the_weights_on_a_grid_of_eight_steps():
    R = depth.restriction(4, 2, "full_weighting")
    assert torch.allclose(R[0, :2], torch.tensor([2 / 3, 1 / 3], dtype=F64), atol=1e-15)
    for j in (1, 2, 3):
        assert torch.allclose(R[j, 2 * j - 1:2 * j + 2], torch.tensor([0.25, 0.5, 0.25], dtype=F64), atol=1e-15)
    assert R.count_nonzero() == 2 + 3 * 3
    R3 = depth.restriction(2, 3, "full_weighting")  # the hat of width 3: (3 - |m|) / 9
    assert torch.allclose(R3[1], torch.tensor([0, 1, 2, 3, 2, 1], dtype=F64) / 9, atol=1e-15)
    P = depth.interpolation(3, 2, "linear")
    assert P.tolist() == [[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1], [0, 0, 1]]


def test_gradients_restrict_as_sums():
    g = [torch.full((2,), n + 1.0, dtype=F64) for n in range(8)]  # g_n = n + 1
    assert [x[0].item() for x in depth.restrict_sequence(g, 2, "sum")] == [3, 7, 11, 15]
    assert [x[0].item() for x in depth.restrict_sequence(g, 2, "linear_transpose")] == [2, 6, 10, 18]
    assert [x[0].item() for x in depth.restrict_sequence(g, 4, "sum")] == [10, 26]
    assert [x[0].item() for x in depth.restrict_sequence(g, 2, "injection")] == [1, 3, 5, 7]


@pytest.mark.parametrize("how", depth.INTERPOLATIONS)
def test_restricting_gradients_is_the_adjoint_of_interpolation(how):
    gen = torch.Generator().manual_seed(1)
    g = [torch.randn(3, 2, generator=gen, dtype=F64) for _ in range(12)]
    e = [torch.randn(3, 2, generator=gen, dtype=F64) for _ in range(4)]
    rule = {"constant": "sum", "linear": "linear_transpose"}[how]
    lhs = sum((a * b).sum() for a, b in zip(depth.restrict_sequence(g, 3, rule), e))
    rhs = sum((a * b).sum() for a, b in zip(g, depth.interpolate_sequence(e, 3, how)))
    assert abs(lhs - rhs) < 1e-12 and abs(lhs) > 1e-3


def l1_in_time(xs, ys, h):
    return h * sum((x - y).abs().max().item() for x, y in zip(xs, ys))


@pytest.mark.parametrize("restriction,interpolation,order", [
    ("injection", "constant", 1), ("injection", "linear", 2), ("full_weighting", "linear", 2)])
def test_a_smooth_field_returns_from_the_coarse_grid_at_the_order_of_its_transfers(restriction, interpolation,
                                                                                   order):
    # θ(t) on t_n = n h, h = 1 / N; the error of P R θ − θ in h Σ_n |·| as N doubles
    def error(N, c=2):
        theta = [torch.tensor([torch.sin(torch.tensor(3.0 * n / N)), (n / N) ** 2], dtype=F64) for n in range(N)]
        back = depth.interpolate_sequence(depth.restrict_sequence(theta, c, restriction), c, interpolation)
        return l1_in_time(back, theta, 1 / N)
    errors = [error(N) for N in (32, 64, 128)]
    for coarse, fine in zip(errors, errors[1:]):
        assert 2**order * 0.9 < coarse / fine < 2**order * 1.1


# -- the operators on networks ----------------------------------------------------------------
@pytest.mark.parametrize("restriction", ["injection", "full_weighting"])
@pytest.mark.parametrize("interpolation", depth.INTERPOLATIONS)
def test_a_network_constant_in_depth_keeps_its_parameters_and_outputs(restriction, interpolation):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    fine = dense(8)
    constant_in_depth(fine)
    theta = fine.layers[0].F.linear.weight.detach().clone()
    expected = outputs(fine, x)

    coarse = dense(4, seed=1)
    depth.restrict(fine, coarse, restriction)
    for step in coarse.layers:  # exactly for injection, to rounding for the weighted sums
        assert torch.allclose(step.F.linear.weight, theta, rtol=0, atol=1e-15)
    back = dense(8, seed=2)
    depth.interpolate(coarse, back, interpolation)
    assert torch.allclose(outputs(back, x), expected, rtol=0, atol=1e-12)
    for a, b in zip(back.state_dict().values(), fine.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-15)

    # 16 steps of h / 2 carry the same field: the network of the same θ on the finer grid
    finer, direct = dense(16, seed=3), dense(16, seed=3)
    depth.interpolate(coarse, finer, interpolation)
    direct.load_state_dict({k: v for k, v in fine.state_dict().items() if not k.startswith("layers.")},
                           strict=False)
    for step in direct.layers:
        step.load_state_dict(fine.layers[0].state_dict())
    assert torch.allclose(outputs(finer, x), outputs(direct, x), rtol=0, atol=1e-12)


def test_the_same_field_on_finer_grids_converges_at_first_order():
    # Forward Euler of one vector field: the networks of 4, 8, 16, 32 steps differ by O(h).
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    nets = [dense(4)]
    constant_in_depth(nets[0])
    with torch.no_grad():
        nets[0].layers[0].F.linear.weight.mul_(4.0)  # a field strong enough for the error to show
    constant_in_depth(nets[0])
    for N in (8, 16, 32):
        nets.append(dense(N, seed=N))
        depth.interpolate(nets[-2], nets[-1], "constant")
    out = [outputs(net, x) for net in nets]
    d = [(a - b).abs().max().item() for a, b in zip(out, out[1:])]
    assert d[0] > 1e-4
    for coarse, fine in zip(d, d[1:]):
        assert 1.7 < coarse / fine < 2.3


def test_a_convolutional_network_keeps_its_stages():
    fine, coarse = conv(8), conv(4, seed=1)
    assert [g.N for g in fine.stages] == [4, 4] and [g.N for g in coarse.stages] == [2, 2]
    stepped(fine, lambda s, n: 100.0 * s + n)
    with torch.no_grad():  # the batch norms' own weights and statistics start alike in both
        for m in [fine.opening, fine.classifier, fine.layers[4]]:
            for t in [*m.parameters(), *m.buffers()]:
                t.add_(torch.rand(t.shape, dtype=F64) + 0.5 if t.is_floating_point() else 7)
    others = outside(fine)
    assert not any(torch.equal(v, outside(coarse)[k]) for k, v in others.items())

    depth.restrict(fine, coarse, "injection")
    steps = depth.stage_steps(coarse)
    assert [[first_value(step) for step in stage] for stage in steps] == [[0, 2], [100, 102]]
    for k, v in others.items():  # opening, transition, classifier as they are
        assert torch.equal(outside(coarse)[k], v), k

    depth.restrict(fine, coarse, "full_weighting")
    values = [[first_value(step) for step in stage] for stage in depth.stage_steps(coarse)]
    # stage 1's first step weighs its own steps 0 and 1 only, not stage 0's last
    expected = [[1 / 3, 0.25 * 1 + 0.5 * 2 + 0.25 * 3], [100 + 1 / 3, 100 + 0.25 * 1 + 0.5 * 2 + 0.25 * 3]]
    assert torch.allclose(torch.tensor(values), torch.tensor(expected), rtol=0, atol=1e-12)
    running = depth.stage_steps(coarse)[1][1].F.norm
    assert torch.allclose(running.running_var, torch.full((8,), 102.0, dtype=F64), rtol=0, atol=1e-12)
    assert running.num_batches_tracked.item() == 102  # an integer buffer: injection's

    back = conv(8, seed=2)
    depth.interpolate(coarse, back, "linear")
    values = [[first_value(step) for step in stage] for stage in depth.stage_steps(back)]
    a, b = expected
    assert torch.allclose(torch.tensor(values), torch.tensor(
        [[a[0], (a[0] + a[1]) / 2, a[1], a[1]], [b[0], (b[0] + b[1]) / 2, b[1], b[1]]]), rtol=0, atol=1e-12)
    for k, v in others.items():
        assert torch.equal(outside(back)[k], v), k


def test_a_transformer_returns_from_its_coarse_twin():
    def net(layers, seed=0):
        return build((1, 8, 8), 10, net="transformer", layers=layers, width=8, heads=2, patch=4,
                     seed=seed, dtype=F64)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    fine, coarse, back = net(4), net(2, seed=1), net(4, seed=2)
    constant_in_depth(fine)
    depth.restrict(fine, coarse, "full_weighting")
    depth.interpolate(coarse, back, "linear")
    assert torch.allclose(outputs(back, x), outputs(fine, x), rtol=0, atol=1e-12)

    fine = net(4)  # steps of their own: injection then interpolation keeps the even ones
    depth.restrict(fine, coarse, "injection")
    depth.interpolate(coarse, back, "constant")
    for n in range(4):
        assert torch.equal(back.layers[n].F.mlp[0].weight, fine.layers[n - n % 2].F.mlp[0].weight)


@pytest.fixture
def widening():
    kind = kinds.register_step(
        "test-depth-widening", lambda s: torch.nn.Sequential(torch.nn.Linear(s.stage_channels, s.stage_channels),
                                                             torch.nn.Tanh()),
        opening=lambda s: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(s.input_shape[0],
                                                                                  s.stage_channels)),
        transition=lambda s, shape: torch.nn.Linear(shape[0], s.stage_channels))
    yield kind
    kinds.KINDS.pop("test-depth-widening")


def test_a_registered_kind_with_stages(widening):
    def net(layers, seed=0):
        return build((4,), 3, net="test-depth-widening", layers=layers, channels=[3, 5], seed=seed, dtype=F64)
    fine, coarse = net(12), net(4, seed=1)
    stepped(fine, lambda s, n: 10.0 * s + n)
    depth.restrict(fine, coarse, "injection")
    assert [[first_value(step) for step in stage] for stage in depth.stage_steps(coarse)] == [[0, 3], [10, 13]]
    assert torch.equal(coarse.layers[2].weight, fine.layers[6].weight)  # the transition


@pytest.mark.parametrize("how,rule", [("constant", "sum"), ("linear", "linear_transpose")])
def test_restricted_gradients_are_the_gradients_of_the_interpolated_network(how, rule):
    # d/dθ_H J_h(P θ_H) = P^T ∇J_h: restricting the fine gradient gives the coarse step's
    gen = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 4, generator=gen, dtype=F64), torch.randint(0, 3, (6,), generator=gen)
    coarse, fine = dense(4), dense(8, seed=1)
    depth.interpolate(coarse, fine, how)
    fine.zero_grad()
    fine.loss(fine(x), y).backward()
    depth.restrict(fine, coarse, rule, which="gradients")

    theta = {k: v.detach().clone().requires_grad_() for k, v in coarse.named_parameters()}
    composed = {k: v for k, v in theta.items() if not k.startswith("layers.")}
    for name in ("F.linear.weight", "F.linear.bias"):
        P = depth.interpolate_sequence([theta[f"layers.{j}.{name}"] for j in range(4)], 2, how)
        composed.update({f"layers.{n}.{name}": p for n, p in enumerate(P)})
    fine.loss(functional_call(fine, composed, (x,)), y).backward()
    for k, p in coarse.named_parameters():
        assert torch.allclose(p.grad, theta[k].grad, rtol=1e-12, atol=1e-14), k
    # the coarse gradient scales like H = 2h: about twice a fine step's, not its average
    fine_step = fine.layers[2].F.linear.weight.grad.abs().sum()
    assert coarse.layers[1].F.linear.weight.grad.abs().sum() > 1.5 * fine_step


def test_missing_gradients_are_zero_and_none_stays_none():
    fine, coarse = dense(4), dense(2, seed=1)
    fine.zero_grad(set_to_none=True)
    for layer in fine.layers[:3]:
        layer.F.linear.weight.grad = torch.ones_like(layer.F.linear.weight)
    depth.restrict(fine, coarse, "sum", which="gradients")
    assert coarse.layers[0].F.linear.weight.grad.flatten()[0].item() == 2
    assert coarse.layers[1].F.linear.weight.grad.flatten()[0].item() == 1
    assert coarse.layers[0].F.linear.bias.grad is None and coarse.opening[1].weight.grad is None


# -- errors -----------------------------------------------------------------------------------
def test_coarsening_needs_a_factor_of_every_stage():
    assert depth.coarsen_layers(8, 2, 2) == 4 and depth.coarsen_layers(12, 3, 4) == 3
    with pytest.raises(ValueError, match=r"c = 2 does not divide stage 0's 5 layers.*\[5, 5\]"):
        depth.coarsen_layers(10, 2, 2)
    with pytest.raises(ValueError, match=r"stage 1's 3 layers.*\[4, 3\]"):
        depth.coarsen_layers(7, 2, 2)
    with pytest.raises(ValueError, match="without layers"):
        depth.coarsen_layers(1, 2, 1)
    with pytest.raises(ValueError, match="positive integer"):
        depth.coarsen_layers(8, 1, 0)
    with pytest.raises(ValueError, match="does not divide 7 steps"):
        depth.restrict_sequence([torch.zeros(1)] * 7, 2)


def test_networks_that_differ_in_more_than_depth_are_refused():
    with pytest.raises(ValueError, match="3 coarse steps do not divide 8"):
        depth.restrict(dense(8), dense(3))
    with pytest.raises(ValueError, match=r"opening: 1.weight has shape \(6, 4\) in one network, \(5, 4\)"):
        depth.restrict(dense(8), dense(4, width=5))
    odd = dense(4)
    odd.layers[1].F.linear = torch.nn.Linear(6, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"stage 0, step 1: F.linear.weight has shape \(6, 6\).*\(5, 6\)"):
        depth.restrict(dense(8), odd)
    with pytest.raises(ValueError, match=r"stage 0, step 1: F.linear.weight has shape \(5, 6\).*\(6, 6\)"):
        depth.interpolate(odd, dense(8))
    with pytest.raises(ValueError, match="1 stages and one of 2"):
        depth.restrict(dense(8), conv(4))
    with pytest.raises(ValueError, match="different factors"):
        depth.restrict(build((1, 8, 8), 10, net="conv", layers=8, channels=[4, 8], dtype=F64),
                       build((1, 8, 8), 10, net="conv", layers=3, channels=[4, 8], dtype=F64))
    with pytest.raises(ValueError, match="unknown restriction 'cubic'"):
        depth.restrict(dense(8), dense(4), "cubic")
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        depth.interpolate(dense(4), dense(8), "cubic")
